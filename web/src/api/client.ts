// The one way the app talks to the gateway: a typed client generated from its /openapi.json
// (`npm run api` regenerates src/api/schema.d.ts from the snapshot in src/api/openapi.json),
// with the rules every call follows in one place:
// - the access token from the session, refreshed once and the call retried on a 401;
// - a 401 that survives the refresh signs the user out and sends them to sign in, with the
//   page they wanted remembered;
// - an Idempotency-Key on every POST, PATCH and PUT (a caller that must repeat a call, as
//   checkout does, passes its own key so a retry is the same request).

import createClient, { type Middleware } from "openapi-fetch";
import type { paths } from "./schema";
import type { Session } from "../auth/session";

export type { paths } from "./schema";
export type { components } from "./schema";
export type Schemas = import("./schema").components["schemas"];

export function newKey(): string {
  return crypto.randomUUID();
}

const KEYED = new Set(["POST", "PATCH", "PUT"]);

export interface ApiOptions {
  session: Session;
  /** Called when a request stays unauthorized after a refresh. */
  onUnauthorized: () => void;
  fetch?: typeof fetch;
  baseUrl?: string;
}

/** Adds the token and the key, and retries once after refreshing on a 401. */
export function authMiddleware(opts: ApiOptions): Middleware {
  const retried = new WeakSet<Request>();
  const originals = new WeakMap<Request, Request>();
  return {
    async onRequest({ request }) {
      if (KEYED.has(request.method) && !request.headers.has("idempotency-key")) {
        request.headers.set("idempotency-key", newKey());
      }
      const token = await opts.session.current();
      if (token && !request.headers.has("authorization")) {
        request.headers.set("authorization", `Bearer ${token}`);
      }
      // Kept to send again after a refresh: the body of the sent one is used up.
      originals.set(request, request.clone());
      return request;
    },
    async onResponse({ request, response }) {
      if (response.status !== 401) return response;
      const original = originals.get(request);
      if (!request.headers.has("authorization") || retried.has(request) || !original) {
        // Signed out, or still refused with a fresh token: sign in again.
        opts.session.drop();
        opts.onUnauthorized();
        return response;
      }
      const fresh = await opts.session.refresh();
      if (!fresh) {
        opts.onUnauthorized();
        return response;
      }
      const again = new Request(original, { headers: new Headers(original.headers) });
      again.headers.set("authorization", `Bearer ${fresh}`);
      retried.add(again);
      const res = await (opts.fetch ?? fetch)(again);
      if (res.status === 401) {
        opts.session.drop();
        opts.onUnauthorized();
      }
      return res;
    },
  };
}

export function createApi(opts: ApiOptions) {
  const client = createClient<paths>({
    baseUrl: opts.baseUrl ?? "",
    fetch: opts.fetch,
  });
  client.use(authMiddleware(opts));
  return client;
}

export type Api = ReturnType<typeof createApi>;
