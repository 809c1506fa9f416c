// One order's saga timeline: every step across services in one line (its history, the
// reservation and its expiry, payments, the events published and consumed, anything parked),
// so "why is this order not paid?" is answered on one page; and what an admin may do to it.

import { useEffect, useState } from "preact/hooks";
import { useRoute } from "preact-iso";
import type { Schemas } from "../../api/client";
import { api } from "../../app-context";
import { ConsoleFrame } from "./frame";
import { formatMoney, parseMoney } from "../../lib/money";
import { canCancel, cancelReason, isFinal, type OrderStatus } from "../../lib/orders";
import { useAction } from "../../lib/use-action";
import { Button, Field, Loading, Notice, ProblemNotice, StatusBadge } from "../../components/ui";
import type { Problem } from "../../api/problem";

type Timeline = Schemas["Timeline"];
type Order = Schemas["OrderBody"];

const KIND_LABEL: Record<string, string> = {
  history: "order",
  reservation: "reservation",
  payment: "payment",
  published: "published",
  consumed: "consumed",
  dead_letter: "dead letter",
};

export function ConsoleOrder() {
  const id = useRoute().params.id;
  return (
    <ConsoleFrame title={`Order ${id.slice(-8)}`}>
      <OrderSaga id={id} />
    </ConsoleFrame>
  );
}

function OrderSaga({ id }: { id: string }) {
  const [timeline, setTimeline] = useState<Timeline | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [refund, setRefund] = useState("");
  const [done, setDone] = useState<string | null>(null);
  const action = useAction();

  async function load() {
    const { data, error } = await api.GET("/api/v1/admin/orders/{id}/timeline", { params: { path: { id } } });
    if (error) setProblem(error as Problem);
    else {
      setProblem(null);
      setTimeline(data);
    }
  }
  const order = timeline?.order as Order | undefined;
  const status = order?.status as OrderStatus | undefined;
  useEffect(() => {
    load();
  }, [id]);
  // While the saga is still moving, follow it.
  useEffect(() => {
    if (!status || isFinal(status)) return;
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, [id, status]);

  return (
    <>
      <p class="crumbs">
        <a href="/console/orders">All orders</a> · <span class="mono">{id}</span>
      </p>
      <ProblemNotice problem={problem} />
      {!timeline || !order ? (
        !problem && <Loading what="Reading the saga from every service" />
      ) : (
        <>
          <div class="panel order-head">
            <p class="order-status" data-testid="console-order-status">
              <StatusBadge status={order.status} />
              <span>{formatMoney(order.total_cents, order.currency)}</span>
              <span class="meta">customer {order.customer_id}</span>
            </p>
            {order.cancel_reason && <p class="reason">Cancelled: {cancelReason(order.cancel_reason)}</p>}
            {order.waiting_for && (
              <p class="waiting" data-testid="console-waiting-for">
                Waiting for {order.waiting_for.step}: {order.waiting_for.reason} (attempt {order.waiting_for.attempt}, next at{" "}
                {new Date(order.waiting_for.next_attempt_at).toLocaleTimeString()})
              </p>
            )}
            {timeline.missing.length > 0 && <Notice kind="info">Not shown (could not be read): {timeline.missing.join("; ")}</Notice>}
            <div class="actions">
              {status && canCancel(status) && (
                <Button
                  variant="danger"
                  busy={action.busy}
                  onClick={() =>
                    action.run(async () => {
                      const { error } = await api.POST("/api/v1/orders/{id}/cancel", { params: { path: { id } } });
                      if (error) return error as Problem;
                      setDone("Cancelled.");
                      await load();
                    })
                  }
                >
                  Cancel order
                </Button>
              )}
              {status === "FULFILLED" && (
                <form
                  class="row"
                  onSubmit={(e) => {
                    e.preventDefault();
                    action.run(async () => {
                      const amount = refund.trim() ? parseMoney(refund) : null;
                      if (refund.trim() && amount === null) return { detail: "The refund amount is not an amount of money" };
                      const { error } = await api.POST("/api/v1/orders/{id}/refund", {
                        params: { path: { id } },
                        body: amount === null ? {} : { amount_cents: amount },
                      });
                      if (error) return error as Problem;
                      setDone(amount === null ? "Refunded in full." : `Refunded ${formatMoney(amount, order.currency)}.`);
                      await load();
                    });
                  }}
                >
                  <Field label="Refund amount (empty: all)" name="amount_cents" value={refund} onInput={setRefund} problem={action.problem} inputMode="decimal" />
                  <Button type="submit" variant="secondary" busy={action.busy}>
                    Refund
                  </Button>
                </form>
              )}
              <Button variant="secondary" onClick={() => load()}>
                Refresh
              </Button>
            </div>
            <ProblemNotice problem={action.problem} shown={["amount_cents"]} />
            {done && <Notice kind="success">{done}</Notice>}
          </div>
          <h2>Saga timeline</h2>
          <ol class="saga" data-testid="saga-timeline">
            {timeline.entries.map((e) => (
              <li class={`saga-entry saga-${e.kind}`} data-testid="timeline-entry" data-kind={e.kind} data-service={e.service}>
                <time dateTime={e.at}>{new Date(e.at).toLocaleTimeString(undefined, {
                    hour: "2-digit",
                    minute: "2-digit",
                    second: "2-digit",
                    hour12: false,
                    fractionalSecondDigits: 3,
                  } as Intl.DateTimeFormatOptions)}</time>
                <span class="saga-service">{e.service}</span>
                <span class={`saga-kind saga-kind-${e.kind}`}>{KIND_LABEL[e.kind] ?? e.kind}</span>
                <span class="saga-title">{e.title}</span>
                {e.detail && <span class="saga-detail">{e.detail}</span>}
                {e.kind === "dead_letter" && (
                  <a class="saga-link" href="/console/dead-letters">
                    to dead letters
                  </a>
                )}
              </li>
            ))}
          </ol>
        </>
      )}
    </>
  );
}
