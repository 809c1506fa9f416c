// The overview's lines, from the gateway's summaries: rates and windowed percentiles between a
// sample and the one a few back (pure, so it is tested without a browser).

import type { Schemas } from "../api/client";
import { delta, errorShare, quantile, rate, type Hist } from "./rates";

export type Summary = Schemas["Summary"];
export type ServiceSummary = Schemas["ServiceSummary"];

export interface Sample {
  /** Unix seconds. */
  t: number;
  summary: Summary;
}

/** Rates and percentiles are taken over this many samples back (about 6 s): steadier lines. */
export const WINDOW = 3;

function service(s: Sample, name: string): ServiceSummary | undefined {
  return s.summary.services.find((x) => x.service === name);
}

/** The series the overview draws, from the samples. */
export function series(all: Sample[]) {
  const xs = all.map((s) => s.t);
  const back = (i: number) => (i >= WINDOW ? all[i - WINDOW] : undefined);
  const span = (i: number) => (back(i) ? all[i].t - back(i)!.t : 0);
  const order = (s: Sample | undefined) => (s ? service(s, "order")?.orders ?? undefined : undefined);
  const accepted = all.map((s, i) => rate(order(back(i))?.created_total, order(s)?.created_total ?? 0, span(i)));
  const paid = all.map((s, i) => rate(order(back(i))?.paid_total, order(s)?.paid_total ?? 0, span(i)));
  const paidWindow = all.map((s, i) => {
    const cur = order(s)?.time_to_paid as Hist | undefined;
    const prev = order(back(i))?.time_to_paid as Hist | undefined;
    return cur ? delta(prev, cur) : null;
  });
  const names = all.length ? all[all.length - 1].summary.services.map((s) => s.service) : [];
  const perService = (f: (prev: ServiceSummary | undefined, cur: ServiceSummary) => number | null) =>
    names.map((name) => ({
      label: name,
      values: all.map((s, i) => {
        const cur = service(s, name);
        const prev = back(i) && service(back(i)!, name);
        return cur ? f(prev || undefined, cur) : null;
      }),
    }));
  const sum = (f: (s: ServiceSummary) => number | null | undefined) =>
    all.map((s) => s.summary.services.reduce((n, x) => n + (f(x) ?? 0), 0));
  return {
    xs,
    orders: [
      { label: "accepted/s", values: accepted },
      { label: "paid/s", values: paid },
    ],
    timeToPaid: [
      { label: "p50", values: paidWindow.map((h) => quantile(0.5, h)) },
      { label: "p95", values: paidWindow.map((h) => quantile(0.95, h)) },
    ],
    errors: perService((prev, cur) => {
      const share = errorShare(prev, cur);
      return share === null ? null : share * 100;
    }),
    latency: perService((prev, cur) => {
      const q = quantile(0.95, delta(prev?.latency as Hist | undefined, cur.latency as Hist));
      return q === null ? null : q * 1000;
    }),
    backlog: [
      { label: "outbox backlog", values: sum((s) => s.outbox_pending) },
      { label: "consumer lag", values: sum((s) => s.consumer_lag) },
    ],
    deadLetters: [{ label: "open", values: sum((s) => s.dead_letters_open) }],
  };
}
