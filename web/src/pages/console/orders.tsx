// Every order, filtered by status, customer, when it was placed and how long the saga has sat
// on it, a cursor page at a time; each opens its saga timeline.

import { useLocation } from "preact-iso";
import { useState } from "preact/hooks";
import type { Schemas } from "../../api/client";
import { api } from "../../app-context";
import { ConsoleFrame } from "./frame";
import { formatMoney } from "../../lib/money";
import { STATUSES } from "../../lib/orders";
import { Button, Empty, Field, LoadMore, Loading, ProblemNotice, Select, StatusBadge } from "../../components/ui";
import { usePages } from "../../lib/use-pages";

type Order = Schemas["OrderBody"];

/** A date-time input's local value as RFC 3339, or undefined when empty. */
function rfc3339(local: string): string | undefined {
  if (!local) return undefined;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

export function ConsoleOrders() {
  return (
    <ConsoleFrame title="Orders">
      <Orders />
    </ConsoleFrame>
  );
}

function Orders() {
  const { query, route, path } = useLocation();
  const filters = {
    status: query.status ?? "",
    customer: query.customer ?? "",
    from: query.from ?? "",
    to: query.to ?? "",
    stuck: query.stuck ?? "",
  };
  const [form, setForm] = useState(filters);
  const { items, next, busy, problem, loadMore } = usePages<Order>(
    (cursor) =>
      api.GET("/api/v1/orders", {
        params: {
          query: {
            status: filters.status || undefined,
            customer_id: filters.customer || undefined,
            created_from: rfc3339(filters.from),
            created_to: rfc3339(filters.to),
            stuck_minutes: filters.stuck ? Number(filters.stuck) : undefined,
            cursor: cursor ?? undefined,
            limit: 25,
          },
        },
      }),
    [filters.status, filters.customer, filters.from, filters.to, filters.stuck],
  );
  const apply = (f: typeof filters) => {
    const q = new URLSearchParams(Object.entries(f).filter(([, v]) => v) as [string, string][]).toString();
    route(q ? `${path}?${q}` : path, true);
  };
  return (
    <>
      <form
        class="console-filters"
        onSubmit={(e) => {
          e.preventDefault();
          apply(form);
        }}
      >
        <Select
          label="Status"
          value={form.status}
          onChange={(v) => {
            setForm({ ...form, status: v });
            apply({ ...form, status: v });
          }}
          options={[{ value: "", label: "Any status" }, ...STATUSES.map((s) => ({ value: s, label: s }))]}
        />
        <Field label="Customer id" name="customer_id" value={form.customer} onInput={(v) => setForm({ ...form, customer: v.trim() })} problem={problem} />
        <Field label="Placed from" name="created_from" type="datetime-local" value={form.from} onInput={(v) => setForm({ ...form, from: v })} problem={problem} />
        <Field label="Placed before" name="created_to" type="datetime-local" value={form.to} onInput={(v) => setForm({ ...form, to: v })} problem={problem} />
        <Field label="Stuck for (minutes)" name="stuck_minutes" value={form.stuck} onInput={(v) => setForm({ ...form, stuck: v.trim() })} problem={problem} inputMode="numeric" hint="PENDING or CONFIRMED, unchanged that long" />
        <Button type="submit">Filter</Button>
      </form>
      <ProblemNotice problem={problem} shown={["customer_id", "created_from", "created_to", "stuck_minutes"]} />
      {items === null ? (
        <Loading what="Loading orders" />
      ) : items.length === 0 ? (
        <Empty title="No orders match" />
      ) : (
        <>
          <table class="table">
            <thead>
              <tr>
                <th scope="col">Order</th>
                <th scope="col">Placed</th>
                <th scope="col">Customer</th>
                <th scope="col">Status</th>
                <th scope="col">Waiting for</th>
                <th scope="col" class="num">
                  Total
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((o) => (
                <tr data-testid="console-order-row" data-order-id={o.id}>
                  <th scope="row">
                    <a href={`/console/orders/${o.id}`}>{o.id.slice(-8)}</a>
                  </th>
                  <td>{new Date(o.created_at).toLocaleString()}</td>
                  <td class="mono">{o.customer_id.slice(-8)}</td>
                  <td>
                    <StatusBadge status={o.status} />
                  </td>
                  <td>{o.waiting_for ? o.waiting_for.reason : ""}</td>
                  <td class="num">{formatMoney(o.total_cents, o.currency)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <LoadMore next={next} busy={busy} onLoad={loadMore} />
        </>
      )}
    </>
  );
}
