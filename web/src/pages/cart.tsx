// The customer's cart: each line with its quantity and total, the total, when the cart
// expires, "Remove", and "Checkout".

import { useEffect, useState } from "preact/hooks";
import { api } from "../app-context";
import { type Problem, offline } from "../api/problem";
import { RequireRole } from "../components/layout";
import { setCart } from "../lib/cart-store";
import { checkQuantity, expiresIn, summarize, type CartView } from "../lib/cart";
import { formatMoney } from "../lib/money";
import { Button, Empty, Loading, PageTitle, ProblemNotice } from "../components/ui";

export function CartPage() {
  return (
    <RequireRole roles={["CUSTOMER"]}>
      <Cart />
    </RequireRole>
  );
}

export function useCart() {
  const [cart, setCartState] = useState<CartView | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const accept = (c: CartView) => {
    setCartState(c);
    setCart(c);
  };
  async function load() {
    try {
      const { data, error } = await api.GET("/api/v1/cart", {});
      if (error) setProblem(error as Problem);
      else accept(data as CartView);
    } catch (e) {
      setProblem(offline(e));
    }
  }
  useEffect(() => {
    load();
  }, []);
  return { cart, problem, setProblem, accept, load };
}

function Cart() {
  const { cart, problem, setProblem, accept } = useCart();
  const [busy, setBusy] = useState<string | null>(null);
  const [edits, setEdits] = useState<Record<string, string>>({});
  const [lineErrors, setLineErrors] = useState<Record<string, string>>({});

  async function change(productId: string, quantity: number | null) {
    setBusy(productId);
    setProblem(null);
    try {
      const { data, error } =
        quantity === null
          ? await api.DELETE("/api/v1/cart/items/{product_id}", { params: { path: { product_id: productId } } })
          : await api.PATCH("/api/v1/cart/items/{product_id}", {
              params: { path: { product_id: productId } },
              body: { quantity },
            });
      if (error) {
        const p = error as Problem;
        const q = p.errors?.find((e) => e.field === "quantity");
        if (q) setLineErrors((l) => ({ ...l, [productId]: q.message }));
        else setProblem(p);
      } else {
        accept(data as CartView);
        setEdits((e) => {
          const { [productId]: _, ...rest } = e;
          return rest;
        });
      }
    } catch (e) {
      setProblem(offline(e));
    } finally {
      setBusy(null);
    }
  }

  if (!cart) return problem ? <ProblemNotice problem={problem} /> : <Loading what="Loading your cart" />;
  const s = summarize(cart);
  const currency = cart.currency ?? "USD";
  const expiry = expiresIn(cart.expires_at, Date.now());
  return (
    <section aria-labelledby="cart-title">
      <PageTitle>
        <span id="cart-title">Your cart</span>
      </PageTitle>
      <ProblemNotice problem={problem} />
      {s.lines.length === 0 ? (
        <Empty title="Your cart is empty">
          <p>
            <a href="/">Find something in the shop</a>
          </p>
        </Empty>
      ) : (
        <>
          <table class="table cart-table">
            <caption class="visually-hidden">Items in your cart</caption>
            <thead>
              <tr>
                <th scope="col">Product</th>
                <th scope="col">Price</th>
                <th scope="col">Quantity</th>
                <th scope="col" class="num">
                  Line total
                </th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {s.lines.map((l) => {
                const text = edits[l.product_id] ?? String(l.quantity);
                const err = lineErrors[l.product_id];
                return (
                  <tr class={l.orderable ? "" : "unavailable"} data-testid="cart-line">
                    <th scope="row" data-label="Product">
                      <a href={`/products/${l.product_id}`}>{l.name}</a>
                      {!l.orderable && <span class="tag">No longer on sale: not ordered</span>}
                    </th>
                    <td data-label="Price">{formatMoney(l.price_cents, currency)}</td>
                    <td data-label="Quantity">
                      <form
                        class="qty"
                        onSubmit={(e) => {
                          e.preventDefault();
                          const q = checkQuantity(text);
                          if (!q.ok) return setLineErrors((x) => ({ ...x, [l.product_id]: q.message }));
                          setLineErrors((x) => ({ ...x, [l.product_id]: "" }));
                          change(l.product_id, q.value);
                        }}
                      >
                        <input
                          type="number"
                          min="1"
                          max="1000"
                          inputMode="numeric"
                          aria-label={`Quantity of ${l.name}`}
                          aria-invalid={err ? true : undefined}
                          value={text}
                          onInput={(e) => setEdits((x) => ({ ...x, [l.product_id]: (e.currentTarget as HTMLInputElement).value }))}
                        />
                        <Button type="submit" variant="secondary" busy={busy === l.product_id} aria-label={`Update quantity of ${l.name}`}>
                          Update
                        </Button>
                        {err && <p class="field-error">{err}</p>}
                      </form>
                    </td>
                    <td class="num" data-label="Line total">
                      {formatMoney(l.lineTotalCents, currency)}
                    </td>
                    <td>
                      <Button variant="secondary" busy={busy === l.product_id} aria-label={`Remove ${l.name}`} onClick={() => change(l.product_id, null)}>
                        Remove
                      </Button>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <div class="cart-footer">
            <p class="total">
              Total <strong data-testid="cart-total">{formatMoney(s.totalCents, currency)}</strong>
            </p>
            {expiry && <p class="hint">Your cart {expiry} unless it changes.</p>}
            {!s.agrees && <p class="hint">Prices changed while you looked; the total is the shop's current one.</p>}
            <a class="btn btn-primary" href="/checkout" aria-disabled={s.count === 0 ? "true" : undefined}>
              Checkout
            </a>
          </div>
        </>
      )}
    </section>
  );
}
