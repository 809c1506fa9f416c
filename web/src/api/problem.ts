// problem+json (RFC 9457) as every Mercato service answers errors: a stable `code`, a
// `detail` for people, and `errors[]` naming the fields that were wrong.

export interface FieldError {
  field: string;
  message: string;
}

export interface Problem {
  type?: string;
  code?: string;
  title?: string;
  status?: number;
  detail?: string;
  errors?: FieldError[];
  [extension: string]: unknown;
}

export function isProblem(v: unknown): v is Problem {
  return typeof v === "object" && v !== null && ("code" in v || "title" in v || "detail" in v);
}

/** The message for one field, when the problem names it. */
export function fieldError(p: Problem | null | undefined, field: string): string | undefined {
  return p?.errors?.find((e) => e.field === field)?.message;
}

/** What to say above the form: the detail, unless every complaint is shown at its field. */
export function summary(p: Problem | null | undefined, shownFields: string[] = []): string | undefined {
  if (!p) return undefined;
  const unshown = (p.errors ?? []).filter((e) => !shownFields.includes(e.field));
  if (p.errors?.length && unshown.length === 0) return undefined;
  if (unshown.length) return unshown.map((e) => `${e.field}: ${e.message}`).join("; ");
  return p.detail ?? p.title ?? "Something went wrong";
}

/** A network failure as a problem, so pages handle one shape. */
export function offline(e: unknown): Problem {
  return { code: "network_error", detail: `The shop could not be reached (${String(e)}). Try again.` };
}
