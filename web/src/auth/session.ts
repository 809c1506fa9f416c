// The signed-in user's session, as a security review would accept it: the access token lives
// in this module's memory only (never in localStorage or a readable cookie); the refresh
// token is an HttpOnly, SameSite=Strict cookie that only the gateway reads
// (services/gateway/src/session.rs). A reload calls `restore()`, which trades the cookie for a
// new access token.
//
// Refresh tokens rotate and a spent one ends the whole sign-in, so two refreshes must never
// race: within a tab they share one promise (single flight), and across tabs they take a Web
// Lock, so the second tab refreshes with the cookie the first one just received.

import { signal, computed } from "@preact/signals";

export type Role = "CUSTOMER" | "SELLER" | "ADMIN" | "SERVICE";

export interface User {
  id: string;
  email?: string;
  role: Role;
}

export interface Tokens {
  access_token: string;
  expires_in: number;
}

/** What the session needs from the outside world; tests pass fakes. */
export interface SessionDeps {
  fetch: typeof fetch;
  now: () => number;
  /** Runs `f` while holding a lock shared by every tab of this site. */
  exclusive: <T>(f: () => Promise<T>) => Promise<T>;
}

const SESSION = "/api/v1/session";

/** Seconds before expiry at which a token counts as stale and is refreshed first. */
export const EARLY_REFRESH_SECS = 30;

export function decodeUser(token: string): User | null {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json);
    if (typeof claims.sub !== "string" || typeof claims.role !== "string") return null;
    return { id: claims.sub, email: claims.email, role: claims.role as Role };
  } catch {
    return null;
  }
}

export function browserDeps(): SessionDeps {
  return {
    fetch: (...a) => fetch(...a),
    now: () => Date.now(),
    exclusive: (f) =>
      typeof navigator !== "undefined" && navigator.locks
        ? (navigator.locks.request("mercato-session-refresh", f) as Promise<any>)
        : f(),
  };
}

export class Session {
  readonly token = signal<string | null>(null);
  readonly user = computed(() => (this.token.value ? decodeUser(this.token.value) : null));
  /** False until the first restore has answered: pages wait before deciding "signed out". */
  readonly ready = signal(false);
  private expiresAt = 0;
  private inFlight: Promise<string | null> | null = null;

  constructor(private deps: SessionDeps) {}

  private accept(t: Tokens): string {
    this.token.value = t.access_token;
    this.expiresAt = this.deps.now() + t.expires_in * 1000;
    return t.access_token;
  }

  /** A token that is good for a while yet, refreshing first when it is about to expire. */
  async current(): Promise<string | null> {
    const t = this.token.value;
    if (t && this.deps.now() < this.expiresAt - EARLY_REFRESH_SECS * 1000) return t;
    if (!t && this.ready.value) return null;
    return this.refresh();
  }

  /** Exchanges the cookie for a new access token; null when there is no session. One at a
   * time, however many callers ask. */
  refresh(): Promise<string | null> {
    if (!this.inFlight) {
      this.inFlight = this.deps
        .exclusive(async () => {
          const res = await this.deps.fetch(`${SESSION}/refresh`, {
            method: "POST",
            credentials: "same-origin",
          });
          if (!res.ok) {
            this.token.value = null;
            return null;
          }
          return this.accept(await res.json());
        })
        .catch(() => {
          // Offline or the gateway is down: keep what we have, try again next time.
          return this.token.value;
        })
        .finally(() => {
          this.inFlight = null;
          this.ready.value = true;
        });
    }
    return this.inFlight;
  }

  /** At start: signed in again from the cookie when there is one. */
  restore(): Promise<string | null> {
    return this.refresh();
  }

  /** Signs in; resolves to the problem document when refused. */
  async signIn(email: string, password: string): Promise<{ ok: true } | { ok: false; problem: any }> {
    const res = await this.deps.fetch(SESSION, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email, password }),
    });
    if (!res.ok) {
      return { ok: false, problem: await res.json().catch(() => ({ detail: res.statusText })) };
    }
    this.accept(await res.json());
    this.ready.value = true;
    return { ok: true };
  }

  async signOut(): Promise<void> {
    this.token.value = null;
    this.expiresAt = 0;
    await this.deps
      .fetch(SESSION, { method: "DELETE", credentials: "same-origin" })
      .catch(() => undefined);
  }

  /** Forgets the token without asking the server (its answer said it is no longer good). */
  drop(): void {
    this.token.value = null;
    this.expiresAt = 0;
  }
}
