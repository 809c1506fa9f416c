// The app's routes. Every page is a component under pages/ (the operator console's under
// pages/console/); an area adds its pages here and its links to NAV in components/layout.tsx.

import { useEffect } from "preact/hooks";
import { LocationProvider, Router, Route, useLocation } from "preact-iso";
import { Layout } from "./components/layout";
import { loadConfig, session, setNavigator } from "./app-context";
import { refreshCartCount } from "./lib/cart-store";
import { Catalog } from "./pages/catalog";
import { ProductPage } from "./pages/product";
import { CartPage } from "./pages/cart";
import { CheckoutPage } from "./pages/checkout";
import { OrdersPage } from "./pages/orders";
import { OrderPage } from "./pages/order";
import { SignInPage, RegisterPage } from "./pages/account";
import { SellerProducts } from "./pages/seller/products";
import { SellerProduct } from "./pages/seller/product";
import { SellerOrders } from "./pages/seller/orders";
import { ConsoleOverview } from "./pages/console/overview";
import { ConsoleChaos } from "./pages/console/chaos";
import { ConsoleDeadLetters } from "./pages/console/dead-letters";
import { ConsoleOrders } from "./pages/console/orders";
import { ConsoleOrder } from "./pages/console/order";
import { ConsoleUsers } from "./pages/console/users";

function NotFound() {
  return (
    <div class="empty">
      <h1 class="page-title">Page not found</h1>
      <p>
        <a href="/">Back to the shop</a>
      </p>
    </div>
  );
}

/** Lets code outside components navigate through the router (no full reload). */
function Navigator() {
  const { route } = useLocation();
  useEffect(() => setNavigator(route), [route]);
  return null;
}

export function App() {
  useEffect(() => {
    loadConfig();
    session.restore().then(() => refreshCartCount());
  }, []);
  return (
    <LocationProvider>
      <Navigator />
      <Layout>
        <Router>
          <Route path="/" component={Catalog} />
          <Route path="/products/:id" component={ProductPage} />
          <Route path="/cart" component={CartPage} />
          <Route path="/checkout" component={CheckoutPage} />
          <Route path="/orders" component={OrdersPage} />
          <Route path="/orders/:id" component={OrderPage} />
          <Route path="/signin" component={SignInPage} />
          <Route path="/register" component={RegisterPage} />
          <Route path="/seller" component={SellerProducts} />
          <Route path="/seller/products/new" component={SellerProduct} />
          <Route path="/seller/products/:id" component={SellerProduct} />
          <Route path="/seller/orders" component={SellerOrders} />
          <Route path="/console" component={ConsoleOverview} />
          <Route path="/console/chaos" component={ConsoleChaos} />
          <Route path="/console/dead-letters" component={ConsoleDeadLetters} />
          <Route path="/console/orders" component={ConsoleOrders} />
          <Route path="/console/orders/:id" component={ConsoleOrder} />
          <Route path="/console/users" component={ConsoleUsers} />
          <Route default component={NotFound} />
        </Router>
      </Layout>
    </LocationProvider>
  );
}
