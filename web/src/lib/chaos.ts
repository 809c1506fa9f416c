// Chaos as the console offers it: the kit's profile in words, the presets, and the form's
// percentages turned into the API's shares (0..1).

import type { ChaosProfile, ProcessorProfile } from "../api/admin";

export const OFF: ChaosProfile = { latency_ms: 0, latency_rate: 0, error_rate: 0, partial_failure_rate: 0 };

/** Three steps of harm, each a profile any service takes. */
export const PRESETS: Record<"mild" | "moderate" | "severe", ChaosProfile> = {
  mild: { latency_ms: 50, latency_max_ms: 200, latency_rate: 0.2, error_rate: 0.02, partial_failure_rate: 0 },
  moderate: { latency_ms: 200, latency_max_ms: 800, latency_rate: 0.3, error_rate: 0.1, partial_failure_rate: 0.02 },
  severe: { latency_ms: 500, latency_max_ms: 3000, latency_rate: 0.5, error_rate: 0.3, partial_failure_rate: 0.05 },
};

export function isActive(p: ChaosProfile | null | undefined): boolean {
  if (!p) return false;
  return p.error_rate > 0 || p.partial_failure_rate > 0 || (p.latency_rate > 0 && Math.max(p.latency_ms, p.latency_max_ms ?? 0) > 0);
}

const pct = (r: number) => `${Math.round(r * 100)}%`;

/** "100% errors, 30% +200-800 ms" — or "off". */
export function describe(p: ChaosProfile | null | undefined): string {
  if (!isActive(p)) return "off";
  const parts: string[] = [];
  if (p!.error_rate > 0) parts.push(`${pct(p!.error_rate)} errors`);
  if (p!.partial_failure_rate > 0) parts.push(`${pct(p!.partial_failure_rate)} dropped answers`);
  if (p!.latency_rate > 0 && Math.max(p!.latency_ms, p!.latency_max_ms ?? 0) > 0) {
    const ms = p!.latency_max_ms ? `${p!.latency_ms}-${p!.latency_max_ms} ms` : `${p!.latency_ms} ms`;
    parts.push(`${pct(p!.latency_rate)} +${ms}`);
  }
  let out = parts.join(", ");
  if (p!.routes?.length) out += ` on ${p!.routes.join(", ")}`;
  return out;
}

export function describeProcessor(p: ProcessorProfile | null | undefined): string {
  if (!p) return "unknown";
  const parts: string[] = [];
  if (p.error_rate > 0) parts.push(`${pct(p.error_rate)} unavailable`);
  if (p.timeout_rate > 0) parts.push(`${pct(p.timeout_rate)} time out after ${p.timeout_ms} ms`);
  if (p.duplicate_webhook_rate > 0) parts.push(`${pct(p.duplicate_webhook_rate)} duplicate webhooks`);
  if (p.reorder_webhooks) parts.push(`webhooks out of order (${p.reorder_window_ms} ms window)`);
  return parts.length ? parts.join(", ") : "off";
}

/** The form's text fields (percentages, milliseconds) as a profile; the first bad field's message otherwise. */
export interface ChaosForm {
  error: string;
  partial: string;
  latencyRate: string;
  latencyMs: string;
  latencyMaxMs: string;
  routes: string;
}

export function toForm(p: ChaosProfile | null | undefined): ChaosForm {
  const q = p ?? OFF;
  return {
    error: String(Math.round(q.error_rate * 1000) / 10),
    partial: String(Math.round(q.partial_failure_rate * 1000) / 10),
    latencyRate: String(Math.round(q.latency_rate * 1000) / 10),
    latencyMs: String(q.latency_ms),
    latencyMaxMs: q.latency_max_ms ? String(q.latency_max_ms) : "",
    routes: (q.routes ?? []).join(", "),
  };
}

export function fromForm(f: ChaosForm): { profile?: ChaosProfile; error?: string } {
  const share = (s: string, name: string) => {
    const n = Number(s.trim() || "0");
    if (!Number.isFinite(n) || n < 0 || n > 100) throw new Error(`${name} must be a percentage from 0 to 100`);
    return n / 100;
  };
  const ms = (s: string, name: string) => {
    const n = Number(s.trim() || "0");
    if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a whole number of milliseconds`);
    return n;
  };
  try {
    const profile: ChaosProfile = {
      error_rate: share(f.error, "Error rate"),
      partial_failure_rate: share(f.partial, "Partial failures"),
      latency_rate: share(f.latencyRate, "Delayed requests"),
      latency_ms: ms(f.latencyMs, "Latency"),
      routes: f.routes
        .split(",")
        .map((r) => r.trim())
        .filter(Boolean),
    };
    if (f.latencyMaxMs.trim()) profile.latency_max_ms = ms(f.latencyMaxMs, "Latency up to");
    return { profile };
  } catch (e) {
    return { error: (e as Error).message };
  }
}
