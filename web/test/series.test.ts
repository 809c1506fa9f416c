import { describe, expect, test } from "vitest";
import { series, type Sample, type ServiceSummary } from "../src/lib/series";

function svc(name: string, over: Partial<ServiceSummary> = {}): ServiceSummary {
  return {
    service: name,
    status: "healthy",
    reasons: [],
    replicas: 1,
    replicas_up: 1,
    dependencies: [],
    breakers: [],
    chaos_events: {},
    requests_total: 0,
    errors_total: 0,
    latency: { count: 0, sum: 0, buckets: [] },
    ...over,
  } as ServiceSummary;
}

/** Sample `i` of a shop taking 2 orders/s, paying each within 0.1 s, inventory failing half. */
function sample(i: number): Sample {
  const order = svc("order", {
    orders: {
      created_total: 4 * i,
      paid_total: 4 * i,
      in_state: {},
      time_to_paid: { count: 4 * i, sum: 0, buckets: [{ le: 0.05, count: 0 }, { le: 0.1, count: 4 * i }] },
    },
    outbox_pending: 3,
  });
  const inventory = svc("inventory", { requests_total: 10 * i, errors_total: 5 * i, consumer_lag: 2 });
  return { t: 1000 + 2 * i, summary: { at: "", services: [order, inventory] } };
}

describe("the overview's lines", () => {
  test("rates, percentiles and shares over the window, none before it fills", () => {
    const s = series([0, 1, 2, 3, 4].map(sample));
    expect(s.xs).toEqual([1000, 1002, 1004, 1006, 1008]);
    expect(s.orders[0].values).toEqual([null, null, null, 2, 2]);
    expect(s.timeToPaid[0].values[4]).toBeCloseTo(0.075);
    expect(s.errors.find((l) => l.label === "inventory")!.values[4]).toBe(50);
    expect(s.errors.find((l) => l.label === "order")!.values[4]).toBe(0);
    expect(s.backlog[0].values[0]).toBe(3);
    expect(s.backlog[1].values[0]).toBe(2);
  });
});
