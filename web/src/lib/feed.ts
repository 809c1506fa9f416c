// The overview's feed: the gateway's summary every few seconds while someone is looking,
// the last few minutes of it kept so the charts have a past (and keep it when the operator
// looks at another console page and comes back).

import { signal } from "@preact/signals";
import { api } from "../app-context";
import type { Sample } from "./series";

export type { Sample, ServiceSummary } from "./series";
export { series } from "./series";

export const EVERY_MS = 2000;
/** Three minutes at one sample every two seconds. */
const KEEP = 90;

export const samples = signal<Sample[]>([]);
export const feedError = signal<string | null>(null);

let watchers = 0;
let timer: ReturnType<typeof setTimeout> | null = null;

async function tick() {
  try {
    const { data, error } = await api.GET("/api/v1/admin/summary");
    if (data) {
      feedError.value = null;
      const next = [...samples.value, { t: Date.parse(data.at) / 1000, summary: data }];
      samples.value = next.slice(-KEEP);
    } else {
      feedError.value = (error as { detail?: string })?.detail ?? "the summary could not be read";
    }
  } catch (e) {
    feedError.value = `the gateway could not be reached (${String(e)})`;
  }
  if (watchers > 0) timer = setTimeout(tick, EVERY_MS);
}

/** Starts the feed for one more watcher; the returned function stops watching. */
export function watch(): () => void {
  watchers += 1;
  if (watchers === 1) tick();
  return () => {
    watchers -= 1;
    if (watchers === 0 && timer) {
      clearTimeout(timer);
      timer = null;
    }
  };
}

