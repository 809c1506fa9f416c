// "My orders": the customer's orders, newest first, filtered by status, a page at a time.

import { useLocation } from "preact-iso";
import type { Schemas } from "../api/client";
import { api } from "../app-context";
import { RequireRole } from "../components/layout";
import { formatMoney } from "../lib/money";
import { STATUSES } from "../lib/orders";
import { Empty, LoadMore, Loading, PageTitle, ProblemNotice, Select, StatusBadge } from "../components/ui";
import { usePages } from "../lib/use-pages";

type Order = Schemas["OrderBody"];

export function OrdersPage() {
  return (
    <RequireRole roles={["CUSTOMER", "ADMIN"]}>
      <OrderList title="My orders" />
    </RequireRole>
  );
}

/** The list both the customer's and the seller's pages show; `actions` adds buttons per row. */
export function OrderList({ title, actions }: { title: string; actions?: (o: Order, reload: () => void) => preact.ComponentChildren }) {
  const { query, route, path } = useLocation();
  const status = query.status ?? "";
  const { items, next, busy, problem, loadMore, reload } = usePages<Order>(
    (cursor) =>
      api.GET("/api/v1/orders", {
        params: { query: { status: status || undefined, cursor: cursor ?? undefined, limit: 20 } as any },
      }),
    [status],
  );

  return (
    <section aria-labelledby="orders-title">
      <PageTitle>
        <span id="orders-title">{title}</span>
      </PageTitle>
      <div class="filters">
        <Select
          label="Status"
          value={status}
          onChange={(v) => route(v ? `${path}?status=${v}` : path, true)}
          options={[{ value: "", label: "Any status" }, ...STATUSES.map((s) => ({ value: s, label: s }))]}
        />
      </div>
      <ProblemNotice problem={problem} />
      {items === null ? (
        <Loading what="Loading orders" />
      ) : items.length === 0 ? (
        <Empty title={status ? `No ${status} orders` : "No orders yet"} />
      ) : (
        <>
          <table class="table">
            <thead>
              <tr>
                <th scope="col">Order</th>
                <th scope="col">Placed</th>
                <th scope="col">Status</th>
                <th scope="col">Items</th>
                <th scope="col" class="num">
                  Total
                </th>
                {actions && (
                  <th scope="col">
                    <span class="visually-hidden">Actions</span>
                  </th>
                )}
              </tr>
            </thead>
            <tbody>
              {items.map((o) => (
                <tr data-testid="order-row" data-order-id={o.id}>
                  <th scope="row">
                    <a href={`/orders/${o.id}`}>{o.id.slice(-8)}</a>
                  </th>
                  <td>{new Date(o.created_at).toLocaleString()}</td>
                  <td>
                    <StatusBadge status={o.status} />
                  </td>
                  <td>{o.items.map((i) => `${i.quantity} × ${i.name}`).join(", ")}</td>
                  <td class="num">{formatMoney(o.total_cents, o.currency)}</td>
                  {actions && (
                    <td>
                      <div class="actions">{actions(o, reload)}</div>
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
          <LoadMore next={next} busy={busy} onLoad={loadMore} />
        </>
      )}
    </section>
  );
}
