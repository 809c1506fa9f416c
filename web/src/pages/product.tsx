// One product: price, whether it is in stock, and "Add to cart" for customers.

import { useEffect, useState } from "preact/hooks";
import { useRoute } from "preact-iso";
import type { Schemas } from "../api/client";
import { api } from "../app-context";
import { type Problem, offline, summary } from "../api/problem";
import { session, signInFirst } from "../app-context";
import { setCart } from "../lib/cart-store";
import { checkQuantity, type CartView } from "../lib/cart";
import { formatMoney } from "../lib/money";
import { availability, availabilityLabel } from "../lib/stock";
import { Button, Field, Loading, Notice, ProblemNotice } from "../components/ui";

type Product = Schemas["ProductBody"];

export function ProductPage() {
  const { params } = useRoute();
  const [product, setProduct] = useState<Product | null>(null);
  const [available, setAvailable] = useState<number | null | undefined>(undefined);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [qty, setQty] = useState("1");
  const [qtyError, setQtyError] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);
  const [added, setAdded] = useState<string | null>(null);

  useEffect(() => {
    setProduct(null);
    setProblem(null);
    api.GET("/api/v1/products/{id}", { params: { path: { id: params.id } } }).then(({ data, error }) => {
      if (error) setProblem(error as Problem);
      else setProduct(data);
    }, (e) => setProblem(offline(e)));
    api
      .GET("/api/v1/inventory/{product_id}", { params: { path: { product_id: params.id } } })
      .then(({ data }) => setAvailable(data ? data.available : null), () => setAvailable(null));
  }, [params.id]);

  async function add() {
    const user = session.user.value;
    if (!user) return signInFirst();
    const q = checkQuantity(qty);
    if (!q.ok) return setQtyError(q.message);
    setQtyError(undefined);
    setBusy(true);
    setAdded(null);
    setProblem(null);
    try {
      const { data, error } = await api.POST("/api/v1/cart/items", {
        body: { product_id: params.id, quantity: q.value },
      });
      if (error) setProblem(error as Problem);
      else {
        setCart(data as CartView);
        setAdded(`Added ${q.value} to your cart.`);
      }
    } catch (e) {
      setProblem(offline(e));
    } finally {
      setBusy(false);
    }
  }

  if (!product) return problem ? <Notice>{summary(problem)}</Notice> : <Loading what="Loading the product" />;
  const a = availability(available);
  const user = session.user.value;
  return (
    <article class="product" aria-labelledby="product-name">
      <p class="crumbs">
        <a href="/">Shop</a> / <a href={`/?category=${product.category}`}>{product.category.replace(/-/g, " ")}</a>
      </p>
      <h1 id="product-name" class="page-title">
        {product.name}
      </h1>
      <p class="price" data-testid="price">
        {formatMoney(product.price_cents, product.currency)}
      </p>
      {available === undefined ? (
        <Loading what="Checking stock" />
      ) : (
        <p class={`stock stock-${a}`} data-testid="availability">
          {availabilityLabel(a, available)}
        </p>
      )}
      {!product.active && <Notice kind="info">This product is no longer on sale.</Notice>}
      <p class="description">{product.description || "No description."}</p>
      {(!user || user.role === "CUSTOMER") && product.active && (
        <form
          class="add"
          onSubmit={(e) => {
            e.preventDefault();
            add();
          }}
        >
          <Field label="Quantity" name="quantity" type="number" inputMode="numeric" value={qty} onInput={setQty} error={qtyError} problem={problem} min="1" max="1000" />
          <Button type="submit" busy={busy} disabled={a === "out"}>
            Add to cart
          </Button>
        </form>
      )}
      {added && (
        <Notice kind="success">
          {added} <a href="/cart">Go to cart</a>
        </Notice>
      )}
      <ProblemNotice problem={problem} shown={["quantity"]} />
      <p class="meta">SKU {product.sku}</p>
    </article>
  );
}
