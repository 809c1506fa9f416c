import { describe, expect, test } from "vitest";
import { follow, reconnectDelay, MAX_DELAY_MS, BASE_DELAY_MS } from "../src/lib/sse";

function stream(text: string, status = 200) {
  return new Response(
    new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode(text));
        c.close();
      },
    }),
    { status, headers: { "content-type": "text/event-stream" } },
  );
}

/** Runs `follow` against scripted answers until it ends; returns what happened. */
async function scripted(answers: Array<() => Response | Promise<Response>>) {
  const requests: Array<Record<string, string>> = [];
  const events: string[] = [];
  const sleeps: number[] = [];
  let refreshes = 0;
  const ended = await new Promise<string>((done) => {
    const stop = follow({
      url: "/api/v1/orders/o1/stream",
      token: async () => "t1",
      refresh: async () => {
        refreshes += 1;
        return "t2";
      },
      onEvent: (e) => events.push(`${e.event}:${e.id}:${e.data}`),
      onEnd: (why) => done(why),
      fetch: (async (_url: string, init: RequestInit) => {
        requests.push({ ...(init.headers as Record<string, string>) });
        const next = answers.shift();
        if (!next) {
          stop();
          done("script ended");
          return new Promise(() => {});
        }
        return next();
      }) as any,
      sleep: async (ms) => {
        sleeps.push(ms);
      },
      random: () => 0.5,
    });
  });
  return { requests, events, sleeps, ended, refreshes };
}

describe("SSE reconnect", () => {
  test("a stream that ends is followed again after the server's retry, with Last-Event-ID", async () => {
    const r = await scripted([
      () => stream('retry: 1000\nevent: status\nid: PENDING\ndata: {"status":"PENDING"}\n\n'),
      () => stream('event: status\nid: CONFIRMED\ndata: {"status":"CONFIRMED"}\n\nevent: status\nid: PAID\ndata: {"status":"PAID"}\n\n'),
      () => new Response(null, { status: 204 }),
    ]);
    expect(r.events).toEqual(['status:PENDING:{"status":"PENDING"}', 'status:CONFIRMED:{"status":"CONFIRMED"}', 'status:PAID:{"status":"PAID"}']);
    expect(r.requests.map((h) => h["last-event-id"])).toEqual([undefined, "PENDING", "PAID"]);
    expect(r.requests.every((h) => h.authorization === "Bearer t1")).toBe(true);
    expect(r.sleeps).toEqual([1000, 1000]);
    expect(r.ended).toBe("done");
  });

  test("failures back off exponentially and start over after a good connection", async () => {
    const down = () => Promise.reject(new TypeError("network down"));
    const r = await scripted([
      down,
      down,
      () => new Response("oops", { status: 503 }),
      () => stream("event: status\nid: PAID\ndata: {}\n\n"),
      down,
      () => new Response(null, { status: 204 }),
    ]);
    const [d1, d2, d3] = [1, 2, 3].map((n) => reconnectDelay(n, null, () => 0.5));
    expect(r.sleeps).toEqual([d1, d2, d3, 1000, d1]);
    expect(d1).toBeLessThan(d2);
    expect(d2).toBeLessThan(d3);
    expect(r.ended).toBe("done");
  });

  test("the delay is capped and jittered within [ceiling/2, ceiling]", () => {
    for (const n of [1, 5, 20, 100]) {
      const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (n - 1));
      expect(reconnectDelay(n, null, () => 0)).toBe(ceiling / 2);
      expect(reconnectDelay(n, null, () => 1)).toBe(ceiling);
    }
    expect(reconnectDelay(50, null, () => 1)).toBe(MAX_DELAY_MS);
    expect(reconnectDelay(0, 250, () => 1)).toBe(250);
    expect(reconnectDelay(0, null, () => 1)).toBe(1000);
  });

  test("a 401 refreshes the token once; a second one stops", async () => {
    const r = await scripted([() => new Response(null, { status: 401 }), () => stream("event: status\nid: PAID\ndata: {}\n\n"), () => new Response(null, { status: 401 }), () => new Response(null, { status: 401 })]);
    expect(r.requests.map((h) => h.authorization)).toEqual(["Bearer t1", "Bearer t2", "Bearer t1", "Bearer t2"]);
    expect(r.refreshes).toBe(2);
    expect(r.ended).toBe("unauthorized");
  });

  test("a 404 (not this user's order) stops at once", async () => {
    const r = await scripted([() => new Response("{}", { status: 404 })]);
    expect(r.ended).toBe("gone");
    expect(r.sleeps).toEqual([]);
  });
});
