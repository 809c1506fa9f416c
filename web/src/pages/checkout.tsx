// Checkout: a payment method (psp-mock's test cards when the shop runs on it, else a token),
// the shipping address, and "Place order".
//
// One checkout attempt is one Idempotency-Key: made on the first press, sent again by any
// repeat of the same attempt (a double click, a retry after the network failed), so the cart
// service places one order however often it is asked. A definite refusal (4xx) ends the
// attempt: the corrected form is a new request and gets a new key.

import { useRef, useState } from "preact/hooks";
import { newKey } from "../api/client";
import { api } from "../app-context";
import { type Problem, offline, fieldError } from "../api/problem";
import { demoCards, go } from "../app-context";
import { RequireRole } from "../components/layout";
import { refreshCartCount } from "../lib/cart-store";
import { summarize } from "../lib/cart";
import { formatMoney } from "../lib/money";
import { Button, Empty, Field, Loading, PageTitle, ProblemNotice } from "../components/ui";
import { useCart } from "./cart";

const ADDRESS = [
  { name: "name", label: "Full name", autoComplete: "name" },
  { name: "line1", label: "Address line 1", autoComplete: "address-line1" },
  { name: "line2", label: "Address line 2 (optional)", autoComplete: "address-line2" },
  { name: "city", label: "City", autoComplete: "address-level2" },
  { name: "postal_code", label: "Postal code", autoComplete: "postal-code" },
  { name: "country", label: "Country (two letters, like US)", autoComplete: "country" },
] as const;

type Address = Record<(typeof ADDRESS)[number]["name"], string>;

export function CheckoutPage() {
  return (
    <RequireRole roles={["CUSTOMER"]}>
      <Checkout />
    </RequireRole>
  );
}

export interface Attempt {
  key: string;
}

/** The key of the current attempt, made on first use. */
export function attemptKey(current: Attempt | null): Attempt {
  return current ?? { key: newKey() };
}

function Checkout() {
  const { cart, problem: cartProblem } = useCart();
  const cards = demoCards.value;
  const [method, setMethod] = useState<string>("");
  const [address, setAddress] = useState<Address>({ name: "", line1: "", line2: "", city: "", postal_code: "", country: "" });
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);
  const attempt = useRef<Attempt | null>(null);
  const inFlight = useRef(false);
  const payment = method || cards[0]?.token || "";

  async function place() {
    // A second press while the first is on its way is the same attempt: it sends nothing.
    if (inFlight.current) return;
    inFlight.current = true;
    attempt.current = attemptKey(attempt.current);
    setBusy(true);
    setProblem(null);
    const { line2, ...rest } = address;
    try {
      const { data, error, response } = await api.POST("/api/v1/cart/checkout", {
        params: { header: { "Idempotency-Key": attempt.current.key } },
        body: {
          payment_method: payment,
          shipping_address: { ...rest, ...(line2.trim() ? { line2 } : {}) },
        } as any,
      });
      if (error) {
        setProblem(error as Problem);
        // Refused for what was sent: the next press is a new attempt. A 5xx may have been
        // placed after all, so it keeps the key and the retry gets the first answer.
        if (response.status < 500) attempt.current = null;
        return;
      }
      attempt.current = null;
      // The cart keeps its lines until the order is paid (and keeps them if it is not).
      refreshCartCount();
      go(`/orders/${(data as any).id}`);
    } catch (e) {
      setProblem(offline(e));
    } finally {
      inFlight.current = false;
      setBusy(false);
    }
  }

  if (!cart) return cartProblem ? <ProblemNotice problem={cartProblem} /> : <Loading what="Loading your cart" />;
  const s = summarize(cart);
  if (s.count === 0)
    return (
      <Empty title="Your cart is empty">
        <p>
          <a href="/">Find something in the shop</a>
        </p>
      </Empty>
    );
  const currency = cart.currency ?? "USD";
  const shown = ["payment_method", ...ADDRESS.map((a) => `shipping_address.${a.name}`)];
  return (
    <section aria-labelledby="checkout-title">
      <PageTitle>
        <span id="checkout-title">Checkout</span>
      </PageTitle>
      <div class="checkout">
        <form
          class="stack"
          noValidate
          onSubmit={(e) => {
            e.preventDefault();
            place();
          }}
        >
          <fieldset>
            <legend>Payment method</legend>
            {cards.length > 0 ? (
              <div class="radios" role="radiogroup" aria-label="Payment method">
                {cards.map((c) => (
                  <label class="radio">
                    <input type="radio" name="payment_method" value={c.token} checked={payment === c.token} onChange={() => setMethod(c.token)} />
                    <span>
                      {c.label} <code>{c.token}</code>
                    </span>
                  </label>
                ))}
                <p class="hint">These are the test processor's cards: nothing is charged.</p>
              </div>
            ) : (
              <Field label="Payment method token" name="payment_method" value={method} onInput={setMethod} problem={problem} hint="The token your card processor gave for the card." />
            )}
            {cards.length > 0 && fieldError(problem, "payment_method") && <p class="field-error">{fieldError(problem, "payment_method")}</p>}
          </fieldset>
          <fieldset>
            <legend>Shipping address</legend>
            {ADDRESS.map((a) => (
              <Field
                label={a.label}
                name={`shipping_address.${a.name}`}
                autoComplete={a.autoComplete}
                value={address[a.name]}
                onInput={(v) => setAddress({ ...address, [a.name]: v })}
                problem={problem}
              />
            ))}
          </fieldset>
          <ProblemNotice problem={problem} shown={shown} />
          <Button type="submit" busy={busy}>
            Place order
          </Button>
        </form>
        <aside class="summary" aria-label="Order summary">
          <h2>Summary</h2>
          <ul>
            {s.lines
              .filter((l) => l.orderable)
              .map((l) => (
                <li>
                  <span>
                    {l.quantity} × {l.name}
                  </span>
                  <span>{formatMoney(l.lineTotalCents, currency)}</span>
                </li>
              ))}
          </ul>
          <p class="total">
            Total <strong>{formatMoney(s.totalCents, currency)}</strong>
          </p>
        </aside>
      </div>
    </section>
  );
}
