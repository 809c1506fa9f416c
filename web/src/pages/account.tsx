// Sign in and register. After either, the user lands on the page they wanted (`?next=`).

import { useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { api } from "../app-context";
import type { Problem } from "../api/problem";
import { useAction } from "../lib/use-action";
import { go, safeNext, session } from "../app-context";
import { refreshCartCount } from "../lib/cart-store";
import { Button, Field, PageTitle, ProblemNotice } from "../components/ui";

function useNext() {
  const { query } = useLocation();
  return safeNext(query.next);
}

async function signedIn(next: string) {
  await refreshCartCount();
  const role = session.user.value?.role;
  go(next === "/" && (role === "SELLER" || role === "ADMIN") ? "/seller" : next, true);
}

export function SignInPage() {
  const next = useNext();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const { busy, problem, run } = useAction();

  function submit(e: Event) {
    e.preventDefault();
    run(async () => {
      const r = await session.signIn(email.trim(), password);
      if (!r.ok) return r.problem;
      await signedIn(next);
    });
  }

  return (
    <section class="narrow" aria-labelledby="signin-title">
      <PageTitle>
        <span id="signin-title">Sign in</span>
      </PageTitle>
      {next !== "/" && <p class="hint">Sign in to continue.</p>}
      <form class="stack" onSubmit={submit}>
        <Field label="Email" name="email" type="email" autoComplete="username" value={email} onInput={setEmail} problem={problem} required />
        <Field label="Password" name="password" type="password" autoComplete="current-password" value={password} onInput={setPassword} problem={problem} required />
        <ProblemNotice problem={problem} shown={["email", "password"]} />
        <Button type="submit" busy={busy}>
          Sign in
        </Button>
      </form>
      <p>
        New here? <a href={`/register?next=${encodeURIComponent(next)}`}>Create an account</a>
      </p>
    </section>
  );
}

export function RegisterPage() {
  const next = useNext();
  const [name, setName] = useState("");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const { busy, problem, run } = useAction();

  function submit(e: Event) {
    e.preventDefault();
    run(async () => {
      const { error } = await api.POST("/api/v1/auth/register", {
        body: { email: email.trim(), password, name: name.trim() },
      });
      if (error) return error as Problem;
      const r = await session.signIn(email.trim(), password);
      if (!r.ok) return r.problem;
      await signedIn(next);
    });
  }

  return (
    <section class="narrow" aria-labelledby="register-title">
      <PageTitle>
        <span id="register-title">Create an account</span>
      </PageTitle>
      <form class="stack" onSubmit={submit} noValidate>
        <Field label="Name" name="name" autoComplete="name" value={name} onInput={setName} problem={problem} />
        <Field label="Email" name="email" type="email" autoComplete="email" value={email} onInput={setEmail} problem={problem} />
        <Field
          label="Password"
          name="password"
          type="password"
          autoComplete="new-password"
          value={password}
          onInput={setPassword}
          problem={problem}
          hint="10 to 128 characters, with at least two kinds (letters, digits, symbols)."
        />
        <ProblemNotice problem={problem} shown={["name", "email", "password"]} />
        <Button type="submit" busy={busy}>
          Register
        </Button>
      </form>
      <p>
        Have an account? <a href={`/signin?next=${encodeURIComponent(next)}`}>Sign in</a>
      </p>
    </section>
  );
}
