// The operator console's frame: its own navigation, and the one gate every console page sits
// behind. Only an ADMIN sees any of it; anyone else gets "Not allowed" and the page never asks
// the API for anything (which would refuse them anyway: 401/403).

import type { ComponentChildren } from "preact";
import { useLocation } from "preact-iso";
import { go, session } from "../../app-context";

const SECTIONS = [
  { href: "/console", label: "Overview" },
  { href: "/console/orders", label: "Orders" },
  { href: "/console/chaos", label: "Chaos" },
  { href: "/console/dead-letters", label: "Dead letters" },
  { href: "/console/users", label: "Users" },
];

export function ConsoleFrame({ title, children }: { title: string; children: ComponentChildren }) {
  const { path } = useLocation();
  const user = session.user.value;
  if (!session.ready.value) return <p role="status">Checking your sign-in…</p>;
  if (!user) {
    queueMicrotask(() => go(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, true));
    return <p role="status">Taking you to sign in…</p>;
  }
  if (user.role !== "ADMIN") {
    return (
      <div class="empty" data-testid="not-allowed">
        <h1 class="page-title">Not allowed</h1>
        <p>The operator console is for admin accounts. You are signed in as a {user.role.toLowerCase()}.</p>
        <p>
          <a href="/">Back to the shop</a>
        </p>
      </div>
    );
  }
  const current = (href: string) =>
    href === "/console" ? path === "/console" : path === href || path.startsWith(href + "/");
  return (
    <div class="console">
      <nav aria-label="Console" class="console-nav">
        <ul>
          {SECTIONS.map((s) => (
            <li>
              <a href={s.href} aria-current={current(s.href) ? "page" : undefined}>
                {s.label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <h1 class="page-title">{title}</h1>
      {children}
    </div>
  );
}
