// The few building blocks every page uses, so the app has one look and every control has an
// accessible name: a labelled field that shows its problem+json message beside it, buttons,
// notices, loading and empty states, the status badge.

import type { ButtonHTMLAttributes, ComponentChildren, InputHTMLAttributes } from "preact";
import { useId } from "preact/hooks";
import type { Problem } from "../api/problem";
import { fieldError, summary as summaryOf } from "../api/problem";
import type { OrderStatus } from "../lib/orders";

type InputProps = Omit<InputHTMLAttributes<HTMLInputElement>, "label" | "value" | "onInput" | "type"> & {
  label: string;
  /** The field's name in the API, so its error is found in `problem.errors`. */
  name: string;
  value: string;
  onInput: (v: string) => void;
  problem?: Problem | null;
  /** A message from the page's own check, shown like the server's. */
  error?: string;
  hint?: string;
  type?: string;
  required?: boolean;
  autoComplete?: string;
  inputMode?: string;
  multiline?: boolean;
  list?: string;
};

export function Field({ label, name, value, onInput, problem, error, hint, multiline, ...rest }: InputProps) {
  const id = useId();
  const message = error ?? fieldError(problem, name);
  const described = [hint ? `${id}-hint` : null, message ? `${id}-error` : null].filter(Boolean).join(" ");
  const common = {
    id,
    name,
    value,
    "aria-invalid": message ? true : undefined,
    "aria-describedby": described || undefined,
    onInput: (e: Event) => onInput((e.currentTarget as HTMLInputElement).value),
  };
  return (
    <div class={`field${message ? " field-invalid" : ""}`}>
      <label for={id}>{label}</label>
      {multiline ? <textarea {...(common as any)} rows={4} /> : <input {...(rest as any)} {...common} />}
      {hint && (
        <p class="hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
      {message && (
        <p class="field-error" id={`${id}-error`}>
          {message}
        </p>
      )}
    </div>
  );
}

export function Select({
  label,
  value,
  onChange,
  options,
  name,
}: {
  label: string;
  value: string;
  onChange: (v: string) => void;
  options: Array<{ value: string; label: string }>;
  name?: string;
}) {
  const id = useId();
  return (
    <div class="field">
      <label for={id}>{label}</label>
      <select id={id} name={name} value={value} onChange={(e) => onChange((e.currentTarget as HTMLSelectElement).value)}>
        {options.map((o) => (
          <option value={o.value}>{o.label}</option>
        ))}
      </select>
    </div>
  );
}

export function Button({
  busy,
  children,
  variant = "primary",
  ...rest
}: Omit<ButtonHTMLAttributes<HTMLButtonElement>, "type" | "disabled"> & {
  busy?: boolean;
  variant?: "primary" | "secondary" | "danger";
  type?: "button" | "submit";
  disabled?: boolean;
}) {
  return (
    <button
      type="button"
      {...rest}
      class={`btn btn-${variant}`}
      aria-busy={busy ? true : undefined}
      disabled={rest.disabled || busy}
    >
      {children}
    </button>
  );
}

export function Notice({ kind = "error", children }: { kind?: "error" | "info" | "success"; children: ComponentChildren }) {
  return (
    <div class={`notice notice-${kind}`} role={kind === "error" ? "alert" : "status"}>
      {children}
    </div>
  );
}

export function Loading({ what = "Loading" }: { what?: string }) {
  return (
    <p class="loading" role="status">
      <span class="spinner" aria-hidden="true" /> {what}…
    </p>
  );
}

export function Empty({ title, children }: { title: string; children?: ComponentChildren }) {
  return (
    <div class="empty">
      <p class="empty-title">{title}</p>
      {children}
    </div>
  );
}

export function StatusBadge({ status }: { status: OrderStatus | string }) {
  return <span class={`badge badge-${String(status).toLowerCase()}`}>{status}</span>;
}

export function PageTitle({ children }: { children: ComponentChildren }) {
  return <h1 class="page-title">{children}</h1>;
}

/** The part of a problem not already shown beside its field; nothing when all of it is. */
export function ProblemNotice({ problem, shown = [] }: { problem: Problem | null | undefined; shown?: string[] }) {
  const text = summaryOf(problem, shown);
  return text ? <Notice>{text}</Notice> : null;
}

/** The "Load more" button of a cursor-paged list; nothing on the last page. */
export function LoadMore({ next, busy, onLoad }: { next: string | null; busy: boolean; onLoad: () => void }) {
  if (!next) return null;
  return (
    <div class="more">
      <Button variant="secondary" busy={busy} onClick={onLoad}>
        Load more
      </Button>
    </div>
  );
}
