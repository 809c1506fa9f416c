// Following a Server-Sent Events stream that needs a bearer token (EventSource cannot send
// one): fetch the stream, parse it with eventsource-parser, and reconnect as EventSource
// would, plus what the order stream needs:
// - reconnect after the server's `retry:` hint when a stream ends normally (the order service
//   closes streams after 30 s), with `Last-Event-ID` so the server knows what we saw;
// - after a failure (network, 5xx), back off exponentially with jitter, up to a cap, and
//   start over once a connection succeeds;
// - a 401 refreshes the token once before reconnecting; a second one stops (sign in again);
// - 204 (or another 4xx) means there is nothing more to follow: stop.

import { createParser, type EventSourceMessage } from "eventsource-parser";

export interface FollowOptions {
  url: string;
  token: () => Promise<string | null>;
  refresh: () => Promise<string | null>;
  onEvent: (e: EventSourceMessage) => void;
  /** The stream is over (`done`), or cannot be followed (`unauthorized`, `gone`). */
  onEnd?: (why: "done" | "unauthorized" | "gone") => void;
  /** Connected (true) or waiting to reconnect (false), for a "live" indicator. */
  onConnection?: (connected: boolean) => void;
  fetch?: typeof fetch;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  random?: () => number;
}

export const BASE_DELAY_MS = 500;
export const MAX_DELAY_MS = 15_000;

/** The wait before reconnect number `failures` (0 after a stream that ended normally). */
export function reconnectDelay(failures: number, serverRetryMs: number | null, random: () => number): number {
  if (failures === 0) return serverRetryMs ?? 1000;
  const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (failures - 1));
  // "Equal jitter": at least half the ceiling, so reconnects spread out but never hammer.
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

const defaultSleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });

/** Follows the stream until it ends or the returned function is called. */
export function follow(opts: FollowOptions): () => void {
  const stop = new AbortController();
  const doFetch = opts.fetch ?? ((...a: Parameters<typeof fetch>) => fetch(...a));
  const sleep = opts.sleep ?? defaultSleep;
  const random = opts.random ?? Math.random;
  let lastEventId: string | null = null;
  let serverRetry: number | null = null;

  (async () => {
    let failures = 0;
    let refreshed = false;
    while (!stop.signal.aborted) {
      let ended: "normally" | "failed" = "failed";
      try {
        const token = refreshed ? await opts.refresh() : await opts.token();
        const headers: Record<string, string> = { accept: "text/event-stream" };
        if (token) headers.authorization = `Bearer ${token}`;
        if (lastEventId !== null) headers["last-event-id"] = lastEventId;
        const res = await doFetch(opts.url, { headers, signal: stop.signal });
        if (res.status === 401) {
          if (refreshed) {
            opts.onEnd?.("unauthorized");
            return;
          }
          refreshed = true;
          continue;
        }
        refreshed = false;
        if (res.status === 204) {
          opts.onEnd?.("done");
          return;
        }
        if (res.status >= 400 && res.status < 500 && res.status !== 429) {
          opts.onEnd?.("gone");
          return;
        }
        if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
        failures = 0;
        opts.onConnection?.(true);
        const parser = createParser({
          onEvent: (e) => {
            if (e.id !== undefined) lastEventId = e.id;
            opts.onEvent(e);
          },
          onRetry: (ms) => {
            serverRetry = ms;
          },
        });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.feed(value);
        }
        ended = "normally";
      } catch {
        if (stop.signal.aborted) return;
      }
      opts.onConnection?.(false);
      if (ended === "failed") failures += 1;
      await sleep(reconnectDelay(failures, serverRetry, random), stop.signal);
    }
  })();

  return () => stop.abort();
}
