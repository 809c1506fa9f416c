// The frame every page sits in: a skip link, the header with the shop's navigation (the
// cart's count for customers, the back office for sellers, sign in or out), and the page.
// The operator console (pages/console/) is one NAV entry; its sections have their own menu.

import type { ComponentChildren } from "preact";
import { useLocation } from "preact-iso";
import { cartCount, session, go } from "../app-context";
import type { Role } from "../auth/session";

interface NavItem {
  href: string;
  label: string;
  /** Shown to these roles only; to everyone when absent. */
  roles?: Role[];
}

export const NAV: NavItem[] = [
  { href: "/", label: "Shop" },
  { href: "/orders", label: "My orders", roles: ["CUSTOMER"] },
  { href: "/seller", label: "My products", roles: ["SELLER", "ADMIN"] },
  { href: "/seller/orders", label: "Seller orders", roles: ["SELLER", "ADMIN"] },
  { href: "/console", label: "Console", roles: ["ADMIN"] },
];

export function Layout({ children }: { children: ComponentChildren }) {
  const { path } = useLocation();
  const user = session.user.value;
  const items = NAV.filter((n) => !n.roles || (user && n.roles.includes(user.role)));
  // The one item whose address is the longest prefix of this page's is the current one.
  const matches = (href: string) =>
    href === "/" ? path === "/" || path.startsWith("/products") : path === href || path.startsWith(href + "/");
  const currentHref = items
    .filter((n) => matches(n.href))
    .sort((a, b) => b.href.length - a.href.length)[0]?.href;
  const current = (href: string) => href === currentHref;
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="header">
        <a class="brand" href="/" aria-label="Mercato home">
          <img src="/favicon.svg" alt="" width="28" height="28" />
          <span>Mercato</span>
        </a>
        <nav aria-label="Main">
          <ul>
            {items.map((n) => (
              <li>
                <a href={n.href} aria-current={current(n.href) ? "page" : undefined}>
                  {n.label}
                </a>
              </li>
            ))}
            {(!user || user.role === "CUSTOMER") && (
              <li>
                <a href="/cart" aria-current={path === "/cart" ? "page" : undefined} class="cart-link">
                  Cart{" "}
                  <span class="count" aria-label={`${cartCount.value ?? 0} items`}>
                    {cartCount.value ?? 0}
                  </span>
                </a>
              </li>
            )}
          </ul>
        </nav>
        <div class="account">
          {user ? (
            <>
              <span class="who" title={user.email ?? user.id}>
                {user.email ?? "Signed in"} <span class="role">{user.role.toLowerCase()}</span>
              </span>
              <button
                type="button"
                class="btn btn-secondary"
                onClick={async () => {
                  await session.signOut();
                  cartCount.value = null;
                  go("/");
                }}
              >
                Sign out
              </button>
            </>
          ) : (
            <>
              <a class="btn btn-secondary" href={`/signin?next=${encodeURIComponent(path)}`}>
                Sign in
              </a>
              <a class="btn btn-primary" href="/register">
                Register
              </a>
            </>
          )}
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {children}
      </main>
      <footer class="footer">
        <p>
          Mercato · <a href="/docs">API</a>
        </p>
      </footer>
    </>
  );
}

/** Shows `children` to the given roles; sends anyone signed out to sign in first. */
export function RequireRole({ roles, children }: { roles: Role[]; children: ComponentChildren }) {
  const user = session.user.value;
  if (!session.ready.value) return <p role="status">Checking your sign-in…</p>;
  if (!user) {
    queueMicrotask(() => go(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, true));
    return <p role="status">Taking you to sign in…</p>;
  }
  if (!roles.includes(user.role)) {
    return (
      <div class="notice notice-info" role="status">
        This page is for {roles.map((r) => r.toLowerCase()).join(" or ")} accounts. You are signed in as a{" "}
        {user.role.toLowerCase()}.
      </div>
    );
  }
  return <>{children}</>;
}
