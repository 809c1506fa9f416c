import { describe, expect, test, vi } from "vitest";
import { Session, type SessionDeps, EARLY_REFRESH_SECS } from "../src/auth/session";
import { authMiddleware } from "../src/api/client";

function jwt(claims: object) {
  const b64 = (o: object) => btoa(JSON.stringify(o)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return `${b64({ alg: "RS256" })}.${b64(claims)}.sig`;
}

const tokenA = jwt({ sub: "u1", role: "CUSTOMER", email: "a@example.com" });
const tokenB = jwt({ sub: "u1", role: "CUSTOMER", email: "a@example.com", n: 2 });

/** A gateway that answers the session routes from a script of answers. */
function fakeDeps(answers: Array<() => Response>, clock = { now: 0 }) {
  const calls: string[] = [];
  const deps: SessionDeps = {
    fetch: vi.fn(async (url: any, init?: RequestInit) => {
      calls.push(`${init?.method ?? "GET"} ${url}`);
      const next = answers.shift();
      if (!next) throw new Error(`unexpected call ${url}`);
      return next();
    }) as any,
    now: () => clock.now,
    exclusive: (f) => f(),
  };
  return { deps, calls, clock };
}

const tokens = (t: string, expires_in = 900) => () => Response.json({ access_token: t, token_type: "Bearer", expires_in });
const status = (s: number) => () => new Response(null, { status: s });

describe("token refresh", () => {
  test("a reload restores the session from the cookie, once however many callers ask", async () => {
    const { deps, calls } = fakeDeps([tokens(tokenA)]);
    const s = new Session(deps);
    const [a, b, c] = await Promise.all([s.restore(), s.current(), s.refresh()]);
    expect([a, b, c]).toEqual([tokenA, tokenA, tokenA]);
    expect(calls).toEqual(["POST /api/v1/session/refresh"]);
    expect(s.user.value).toEqual({ id: "u1", role: "CUSTOMER", email: "a@example.com" });
    expect(s.ready.value).toBe(true);
  });

  test("no cookie: signed out, and not asked again for every call", async () => {
    const { deps, calls } = fakeDeps([status(401)]);
    const s = new Session(deps);
    expect(await s.restore()).toBeNull();
    expect(await s.current()).toBeNull();
    expect(calls).toHaveLength(1);
    expect(s.user.value).toBeNull();
  });

  test("a token about to expire is refreshed before it is used", async () => {
    const { deps, calls, clock } = fakeDeps([tokens(tokenA, 120), tokens(tokenB, 900)]);
    const s = new Session(deps);
    await s.restore();
    clock.now = (120 - EARLY_REFRESH_SECS - 1) * 1000;
    expect(await s.current()).toBe(tokenA);
    clock.now = (120 - EARLY_REFRESH_SECS + 1) * 1000;
    expect(await s.current()).toBe(tokenB);
    expect(calls).toHaveLength(2);
  });

  test("refreshes in other tabs wait for each other (one lock for all)", async () => {
    const order: string[] = [];
    const { deps } = fakeDeps([tokens(tokenA), tokens(tokenB)]);
    const inner = deps.fetch;
    deps.fetch = (async (...a: Parameters<typeof fetch>) => {
      order.push("fetch");
      await new Promise((r) => setTimeout(r, 5));
      return inner(...a);
    }) as any;
    // A mutex like navigator.locks: each holder runs after the one before let go.
    let tail: Promise<unknown> = Promise.resolve();
    deps.exclusive = (f) => {
      const run = tail.then(async () => {
        order.push("lock");
        try {
          return await f();
        } finally {
          order.push("unlock");
        }
      });
      tail = run.catch(() => undefined);
      return run;
    };
    const tab1 = new Session(deps);
    const tab2 = new Session(deps);
    const [t1, t2] = await Promise.all([tab1.refresh(), tab2.refresh()]);
    expect(order).toEqual(["lock", "fetch", "unlock", "lock", "fetch", "unlock"]);
    // The second tab refreshed with the cookie the first one received.
    expect([t1, t2]).toEqual([tokenA, tokenB]);
  });

  test("the access token is never written to storage", async () => {
    const setItem = vi.fn();
    (globalThis as any).localStorage = { setItem, getItem: vi.fn(), length: 0 };
    const { deps } = fakeDeps([tokens(tokenA)]);
    const s = new Session(deps);
    const signIn = await s.signIn("a@example.com", "pw");
    expect(signIn.ok).toBe(true);
    expect(setItem).not.toHaveBeenCalled();
    delete (globalThis as any).localStorage;
  });
});

describe("the API client's rules", () => {
  function middleware(session: Session, fetchImpl: typeof fetch, onUnauthorized = vi.fn()) {
    return { mw: authMiddleware({ session, onUnauthorized, fetch: fetchImpl }), onUnauthorized };
  }
  const run = async (mw: any, request: Request) => {
    const r = (await mw.onRequest({ request })) ?? request;
    return r as Request;
  };

  test("POST, PATCH and PUT carry an Idempotency-Key; a caller's own key is kept", async () => {
    const { deps } = fakeDeps([tokens(tokenA)]);
    const s = new Session(deps);
    const { mw } = middleware(s, vi.fn() as any);
    for (const method of ["POST", "PATCH", "PUT"]) {
      const r = await run(mw, new Request("http://x/api/v1/cart/items", { method, body: "{}" }));
      expect(r.headers.get("idempotency-key"), method).toMatch(/^[0-9a-f-]{36}$/);
      expect(r.headers.get("authorization")).toBe(`Bearer ${tokenA}`);
    }
    const get = await run(mw, new Request("http://x/api/v1/cart"));
    expect(get.headers.has("idempotency-key")).toBe(false);
    const own = await run(mw, new Request("http://x/api/v1/cart/checkout", { method: "POST", headers: { "idempotency-key": "mine" }, body: "{}" }));
    expect(own.headers.get("idempotency-key")).toBe("mine");
  });

  test("a 401 refreshes once and sends the same request again with the new token", async () => {
    const { deps } = fakeDeps([tokens(tokenA), tokens(tokenB)]);
    const s = new Session(deps);
    const resent: Request[] = [];
    const { mw, onUnauthorized } = middleware(s, (async (r: Request) => {
      resent.push(r);
      return new Response("{}", { status: 200 });
    }) as any);
    const sent = await run(mw, new Request("http://x/api/v1/cart/items", { method: "POST", body: '{"quantity":1}' }));
    const res = await mw.onResponse!({ request: sent, response: new Response(null, { status: 401 }) } as any);
    expect(res!.status).toBe(200);
    expect(resent).toHaveLength(1);
    expect(resent[0].headers.get("authorization")).toBe(`Bearer ${tokenB}`);
    expect(resent[0].headers.get("idempotency-key")).toBe(sent.headers.get("idempotency-key"));
    expect(await resent[0].text()).toBe('{"quantity":1}');
    expect(onUnauthorized).not.toHaveBeenCalled();
  });

  test("a 401 that survives the refresh sends the user to sign in", async () => {
    const { deps } = fakeDeps([tokens(tokenA), status(401)]);
    const s = new Session(deps);
    const again = vi.fn();
    const { mw, onUnauthorized } = middleware(s, again as any);
    const sent = await run(mw, new Request("http://x/api/v1/orders"));
    await mw.onResponse!({ request: sent, response: new Response(null, { status: 401 }) } as any);
    expect(again).not.toHaveBeenCalled();
    expect(onUnauthorized).toHaveBeenCalledOnce();
    expect(s.token.value).toBeNull();
  });

  test("a 401 to a signed-out caller sends them to sign in without a refresh", async () => {
    const { deps, calls } = fakeDeps([status(401)]);
    const s = new Session(deps);
    await s.restore();
    const { mw, onUnauthorized } = middleware(s, vi.fn() as any);
    const sent = await run(mw, new Request("http://x/api/v1/cart"));
    expect(sent.headers.has("authorization")).toBe(false);
    await mw.onResponse!({ request: sent, response: new Response(null, { status: 401 }) } as any);
    expect(onUnauthorized).toHaveBeenCalledOnce();
    expect(calls).toHaveLength(1);
  });
});
