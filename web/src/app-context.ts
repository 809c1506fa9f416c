// The app's few singletons: the session, the typed API client, the config the gateway hands
// out, the cart count in the header, and navigation that code outside components can use (a
// 401 deep inside a call sends the user to sign in, remembering where they were).

import { signal } from "@preact/signals";
import { Session, browserDeps } from "./auth/session";
import { createApi } from "./api/client";
import { createAdminApi } from "./api/admin";

export const session = new Session(browserDeps());

let navigate: (url: string, replace?: boolean) => void = (url) => {
  window.location.assign(url);
};

/** Set once by the router's provider so calls can navigate without a full reload. */
export function setNavigator(f: (url: string, replace?: boolean) => void) {
  navigate = f;
}

export function go(url: string, replace = false) {
  navigate(url, replace);
}

/** Sends the user to sign in, coming back to `next` (the current page by default). */
export function signInFirst(next = window.location.pathname + window.location.search) {
  if (window.location.pathname === "/signin") return;
  go(`/signin?next=${encodeURIComponent(next)}`);
}

/** Only same-site paths are followed after sign-in (never `//evil.example`). */
export function safeNext(next: string | undefined | null): string {
  return next && next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

export const api = createApi({ session, onUnauthorized: () => signInFirst() });
/** The operator routes the API document leaves out (chaos, dead letters): see api/admin.ts. */
export const adminApi = createAdminApi({ session, onUnauthorized: () => signInFirst() });

export interface DemoCard {
  token: string;
  label: string;
}
export const demoCards = signal<DemoCard[]>([]);

export async function loadConfig() {
  try {
    const res = await fetch("/api/v1/web/config");
    if (res.ok) demoCards.value = (await res.json()).demo_cards ?? [];
  } catch {
    // Checkout then asks for a token by hand.
  }
}

/** Units in the signed-in customer's cart, for the header; null when not known. */
export const cartCount = signal<number | null>(null);
