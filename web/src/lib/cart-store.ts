// The header's cart count, kept from the last cart the service answered.

import { api, cartCount, session } from "../app-context";
import { summarize, type CartView } from "./cart";

export function setCart(cart: CartView | null | undefined) {
  cartCount.value = cart ? summarize(cart).count : 0;
}

export async function refreshCartCount() {
  const user = session.user.value;
  if (!user || user.role !== "CUSTOMER") {
    cartCount.value = null;
    return;
  }
  const { data } = await api.GET("/api/v1/cart", {});
  if (data) setCart(data as CartView);
}
