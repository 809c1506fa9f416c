// Users: every account, searched by email or name and filtered by role, a page at a time; an
// admin changes a role here, and the user's next sign-in (or refresh) carries it.

import { useLocation } from "preact-iso";
import { useState } from "preact/hooks";
import type { Schemas } from "../../api/client";
import { api, session } from "../../app-context";
import { ConsoleFrame } from "./frame";
import { Button, Empty, Field, LoadMore, Loading, Notice, ProblemNotice, Select } from "../../components/ui";
import { usePages } from "../../lib/use-pages";
import type { Problem } from "../../api/problem";

type User = Schemas["User"];
const ROLES = ["CUSTOMER", "SELLER", "ADMIN"] as const;

function UserRow({ user }: { user: User }) {
  const [role, setRole] = useState<string>(user.role);
  const [saved, setSaved] = useState<string>(user.role);
  const [note, setNote] = useState<{ ok: boolean; text: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const me = session.user.value?.id === user.id;
  return (
    <tr data-testid="user-row" data-email={user.email}>
      <td>{user.name}</td>
      <td>{user.email}</td>
      <td>{new Date(user.created_at).toLocaleDateString()}</td>
      <td>
        <div class="row">
          <select aria-label={`Role of ${user.email}`} value={role} disabled={me} onChange={(e) => setRole((e.currentTarget as HTMLSelectElement).value)}>
            {ROLES.map((r) => (
              <option value={r}>{r}</option>
            ))}
          </select>
          <Button
            variant="secondary"
            busy={busy}
            disabled={role === saved || me}
            onClick={async () => {
              setBusy(true);
              setNote(null);
              const { data, error } = await api.PATCH("/api/v1/admin/users/{id}", {
                params: { path: { id: user.id } },
                body: { role: role as User["role"] },
              });
              setBusy(false);
              if (data) {
                setSaved(data.role);
                setNote({ ok: true, text: `Now ${data.role}: from the next sign-in` });
              } else {
                setNote({ ok: false, text: (error as Problem)?.detail ?? "the role could not be changed" });
              }
            }}
          >
            Change role
          </Button>
        </div>
        {me && <p class="meta">Your own role is changed by another admin.</p>}
        {note && <p class={note.ok ? "ok" : "reason"} data-testid="role-result">{note.text}</p>}
      </td>
    </tr>
  );
}

export function ConsoleUsers() {
  return (
    <ConsoleFrame title="Users">
      <Users />
    </ConsoleFrame>
  );
}

function Users() {
  const { query, route, path } = useLocation();
  const search = query.q ?? "";
  const role = query.role ?? "";
  const [text, setText] = useState(search);
  const { items, next, busy, problem, loadMore } = usePages<User>(
    (cursor) =>
      api.GET("/api/v1/admin/users", {
        params: { query: { q: search || undefined, role: role || undefined, cursor: cursor ?? undefined, limit: 50 } },
      }),
    [search, role],
  );
  const go = (q: string, r: string) => {
    const p = new URLSearchParams(Object.entries({ q, role: r }).filter(([, v]) => v) as [string, string][]).toString();
    route(p ? `${path}?${p}` : path, true);
  };
  return (
    <>
      <form
        class="console-filters"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          go(text.trim(), role);
        }}
      >
        <Field label="Search email or name" name="q" type="search" value={text} onInput={setText} problem={problem} />
        <Select
          label="Role"
          value={role}
          onChange={(v) => go(search, v)}
          options={[{ value: "", label: "Any role" }, ...ROLES.map((r) => ({ value: r, label: r }))]}
        />
        <Button type="submit">Search</Button>
      </form>
      <ProblemNotice problem={problem} shown={["q"]} />
      <Notice kind="info">A role change takes effect at the user's next sign-in or token refresh; privileged routes check the current role at once.</Notice>
      {items === null ? (
        <Loading what="Loading users" />
      ) : items.length === 0 ? (
        <Empty title="No users match" />
      ) : (
        <>
          <table class="table">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Email</th>
                <th scope="col">Since</th>
                <th scope="col">Role</th>
              </tr>
            </thead>
            <tbody>
              {items.map((u) => (
                <UserRow key={u.id} user={u} />
              ))}
            </tbody>
          </table>
          <LoadMore next={next} busy={busy} onLoad={loadMore} />
        </>
      )}
    </>
  );
}
