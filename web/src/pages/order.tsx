// One order, followed live: the page listens to /orders/{id}/stream (Server-Sent Events) and
// re-reads the order and its history whenever the status moves, so PENDING → CONFIRMED →
// PAID (or CANCELLED with its reason) appears without a reload. While CONFIRMED the order may
// be waiting for the card processor; that shows as "waiting for payment: <reason>", re-read
// every few seconds since it changes without a status change.

import { useEffect, useState } from "preact/hooks";
import { useRoute } from "preact-iso";
import type { Schemas } from "../api/client";
import { api } from "../app-context";
import { type Problem, offline } from "../api/problem";
import { session } from "../app-context";
import { refreshCartCount } from "../lib/cart-store";
import { formatMoney } from "../lib/money";
import { PROGRESS, canCancel, cancelReason, isFinal, type OrderStatus } from "../lib/orders";
import { follow } from "../lib/sse";
import { Button, Loading, Notice, PageTitle, ProblemNotice, StatusBadge } from "../components/ui";

type Order = Schemas["OrderBody"];
type Step = Schemas["HistoryBody"];

const WAITING_REREAD_MS = 3000;

export function OrderPage() {
  const { params } = useRoute();
  const id = params.id;
  const [order, setOrder] = useState<Order | null>(null);
  const [history, setHistory] = useState<Step[]>([]);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [live, setLive] = useState(false);
  const [busy, setBusy] = useState(false);

  async function reload() {
    try {
      const [o, h] = await Promise.all([
        api.GET("/api/v1/orders/{id}", { params: { path: { id } } }),
        api.GET("/api/v1/orders/{id}/events", { params: { path: { id } } }),
      ]);
      if (o.error) return setProblem(o.error as Problem);
      setOrder(o.data);
      if (h.data) setHistory(h.data.items);
      if (o.data.status === "PAID" || o.data.status === "CANCELLED") refreshCartCount();
    } catch (e) {
      setProblem(offline(e));
    }
  }

  useEffect(() => {
    setOrder(null);
    setHistory([]);
    reload();
    const stop = follow({
      url: `/api/v1/orders/${id}/stream`,
      token: () => session.current(),
      refresh: () => session.refresh(),
      onEvent: (e) => {
        if (e.event === "status") reload();
      },
      onConnection: setLive,
      onEnd: () => setLive(false),
    });
    return stop;
  }, [id]);

  const status = order?.status as OrderStatus | undefined;
  useEffect(() => {
    if (status !== "CONFIRMED" && status !== "PENDING") return;
    const t = setInterval(reload, WAITING_REREAD_MS);
    return () => clearInterval(t);
  }, [status, id]);

  async function cancel() {
    setBusy(true);
    setProblem(null);
    try {
      const { error } = await api.POST("/api/v1/orders/{id}/cancel", { params: { path: { id } } });
      if (error) setProblem(error as Problem);
      await reload();
    } catch (e) {
      setProblem(offline(e));
    } finally {
      setBusy(false);
    }
  }

  if (!order) return problem ? <ProblemNotice problem={problem} /> : <Loading what="Loading the order" />;
  const s = order.status as OrderStatus;
  const user = session.user.value;
  const mine = user?.id === order.customer_id;
  const step = PROGRESS.indexOf(s);
  return (
    <section aria-labelledby="order-title">
      <PageTitle>
        <span id="order-title">Order {order.id.slice(-8)}</span>
      </PageTitle>
      <div class="order-status">
        <p aria-live="polite" data-testid="order-status">
          Status: <StatusBadge status={s} />
          {s === "CANCELLED" && <span class="reason"> — {cancelReason(order.cancel_reason)}</span>}
        </p>
        <span class={`live ${live && !isFinal(s) ? "on" : ""}`}>{isFinal(s) ? "final" : live ? "live" : "reconnecting…"}</span>
      </div>
      {order.waiting_for && (
        <Notice kind="info">
          <span data-testid="waiting-for">
            Waiting for {order.waiting_for.step}: {order.waiting_for.reason}
          </span>{" "}
          (attempt {order.waiting_for.attempt}, next try {new Date(order.waiting_for.next_attempt_at).toLocaleTimeString()})
        </Notice>
      )}
      {s !== "CANCELLED" && s !== "REFUNDED" && (
        <ol class="progress" aria-label="Progress">
          {PROGRESS.map((p, i) => (
            <li class={i <= step ? "done" : ""} aria-current={i === step ? "step" : undefined}>
              {p}
            </li>
          ))}
        </ol>
      )}
      <ProblemNotice problem={problem} />
      <div class="order-grid">
        <div>
          <h2>Items</h2>
          <table class="table">
            <thead>
              <tr>
                <th scope="col">Product</th>
                <th scope="col">Quantity</th>
                <th scope="col" class="num">
                  Line total
                </th>
              </tr>
            </thead>
            <tbody>
              {order.items.map((i) => (
                <tr>
                  <th scope="row">
                    <a href={`/products/${i.product_id}`}>{i.name}</a>
                  </th>
                  <td>{i.quantity}</td>
                  <td class="num">{formatMoney(i.price_cents * i.quantity, order.currency)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <p class="total">
            Total <strong>{formatMoney(order.total_cents, order.currency)}</strong>
          </p>
          {order.shipping_address && (
            <p class="address">
              Ships to {order.shipping_address.name}, {order.shipping_address.line1}
              {order.shipping_address.line2 ? `, ${order.shipping_address.line2}` : ""}, {order.shipping_address.postal_code}{" "}
              {order.shipping_address.city}, {order.shipping_address.country}
            </p>
          )}
          {mine && canCancel(s) && (
            <Button variant="danger" busy={busy} onClick={cancel}>
              Cancel order
            </Button>
          )}
        </div>
        <div>
          <h2>History</h2>
          <ol class="timeline" aria-label="Order history">
            {history.map((h) => (
              <li>
                <time dateTime={h.at}>{new Date(h.at).toLocaleString()}</time>
                <span class="step">
                  {h.from_status ? `${h.from_status} → ` : ""}
                  <strong>{h.to_status}</strong>
                </span>
                <span class="cause">
                  {h.event_type}
                  {h.reason ? ` (${cancelReason(h.reason)})` : ""}
                </span>
              </li>
            ))}
          </ol>
        </div>
      </div>
      <p>
        <a href={user?.role === "CUSTOMER" ? "/orders" : "/seller/orders"}>All orders</a>
      </p>
    </section>
  );
}
