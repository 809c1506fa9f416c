// Chaos control: every service's current fault profile, a form and presets to change it,
// the card processor's own chaos, and one button that stops all of it.

import { signal } from "@preact/signals";
import { useEffect, useState } from "preact/hooks";
import { ConsoleFrame } from "./frame";
import { adminApi } from "../../app-context";
import { Button, Field, Notice, ProblemNotice } from "../../components/ui";
import { useAction } from "../../lib/use-action";
import type { Problem } from "../../api/problem";
import type { ChaosProfile, ProcessorProfile } from "../../api/admin";
import { describe, describeProcessor, fromForm, PRESETS, toForm, type ChaosForm } from "../../lib/chaos";

/** The services whose API the kit's chaos switch sits in front of. */
export const CHAOS_SERVICES = ["auth", "catalog", "cart", "order", "inventory", "payment"];

/** One card's "Stop": clears its chaos, then says so and reads the profile again. */
function StopButton({
  action,
  stop,
  done,
}: {
  action: ReturnType<typeof useAction>;
  stop: () => Promise<{ error?: unknown }>;
  done: () => Promise<void>;
}) {
  return (
    <Button
      variant="danger"
      busy={action.busy}
      onClick={() =>
        action.run(async () => {
          const { error } = await stop();
          if (error) return error as Problem;
          await done();
        })
      }
    >
      Stop
    </Button>
  );
}

/** Bumped when every profile changed at once, so each card reads its own again. */
const generation = signal(0);

function ServiceChaos({ service }: { service: string }) {
  const [current, setCurrent] = useState<ChaosProfile | null | undefined>(undefined);
  const [form, setForm] = useState<ChaosForm>(toForm(null));
  const [note, setNote] = useState<string | null>(null);
  const [check, setCheck] = useState<string | undefined>(undefined);
  const action = useAction();

  async function load() {
    const { data } = await adminApi.GET("/api/v1/admin/{service}/chaos", { params: { path: { service } } });
    setCurrent(data ?? null);
    if (data) setForm(toForm(data));
  }
  useEffect(() => {
    load();
  }, [generation.value]);

  const put = (profile: ChaosProfile, what: string) =>
    action.run(async () => {
      setNote(null);
      const { data, error } = await adminApi.PUT("/api/v1/admin/{service}/chaos", {
        params: { path: { service } },
        body: profile,
      });
      if (error) return error as Problem;
      setCurrent(data);
      setForm(toForm(data));
      setNote(`${what}: ${describe(data)}`);
    });

  const set = (k: keyof ChaosForm) => (v: string) => setForm({ ...form, [k]: v });
  return (
    <section class="panel chaos-card" data-testid={`chaos-${service}`} aria-label={`Chaos for ${service}`}>
      <div class="title-row">
        <h2>{service}</h2>
        <span class={`health ${current && describe(current) !== "off" ? "health-degraded" : "health-healthy"}`} data-testid="chaos-current">
          {current === undefined ? "…" : current === null ? "unknown" : describe(current)}
        </span>
      </div>
      <form
        class="chaos-form"
        onSubmit={(e) => {
          e.preventDefault();
          const { profile, error } = fromForm(form);
          setCheck(error);
          if (profile) put(profile, "Applied");
        }}
      >
        <Field label="Error rate (%)" name="error_rate" value={form.error} onInput={set("error")} problem={action.problem} inputMode="decimal" />
        <Field label="Partial failures (%)" name="partial_failure_rate" value={form.partial} onInput={set("partial")} problem={action.problem} inputMode="decimal" />
        <Field label="Delayed requests (%)" name="latency_rate" value={form.latencyRate} onInput={set("latencyRate")} problem={action.problem} inputMode="decimal" />
        <Field label="Latency (ms)" name="latency_ms" value={form.latencyMs} onInput={set("latencyMs")} problem={action.problem} inputMode="numeric" />
        <Field label="Latency up to (ms)" name="latency_max_ms" value={form.latencyMaxMs} onInput={set("latencyMaxMs")} problem={action.problem} inputMode="numeric" hint="Empty: fixed latency" />
        <Field label="Routes" name="routes" value={form.routes} onInput={set("routes")} problem={action.problem} hint="Path prefixes, comma-separated; empty: every API route" />
        {check && <Notice>{check}</Notice>}
        <ProblemNotice problem={action.problem} shown={["error_rate", "partial_failure_rate", "latency_rate", "latency_ms", "latency_max_ms", "routes"]} />
        {note && <Notice kind="success">{note}</Notice>}
        <div class="actions">
          <Button type="submit" busy={action.busy}>
            Apply
          </Button>
          {(Object.keys(PRESETS) as Array<keyof typeof PRESETS>).map((p) => (
            <Button variant="secondary" busy={action.busy} onClick={() => put(PRESETS[p], `Preset ${p}`)}>
              {p[0].toUpperCase() + p.slice(1)}
            </Button>
          ))}
          <StopButton
            action={action}
            stop={() => adminApi.DELETE("/api/v1/admin/{service}/chaos", { params: { path: { service } } })}
            done={() => {
              setNote("Stopped");
              return load();
            }}
          />
        </div>
      </form>
    </section>
  );
}

interface ProcessorForm {
  error: string;
  timeout: string;
  timeoutMs: string;
  duplicates: string;
  reorder: boolean;
}

function toProcessorForm(p: ProcessorProfile | null): ProcessorForm {
  return {
    error: String(Math.round((p?.error_rate ?? 0) * 100)),
    timeout: String(Math.round((p?.timeout_rate ?? 0) * 100)),
    timeoutMs: String(p?.timeout_ms ?? 10000),
    duplicates: String(Math.round((p?.duplicate_webhook_rate ?? 0) * 100)),
    reorder: p?.reorder_webhooks ?? false,
  };
}

function ProcessorChaos() {
  const [current, setCurrent] = useState<ProcessorProfile | null | undefined>(undefined);
  const [absent, setAbsent] = useState(false);
  const [form, setForm] = useState<ProcessorForm>(toProcessorForm(null));
  const [note, setNote] = useState<string | null>(null);
  const action = useAction();

  async function load() {
    const { data, response } = await adminApi.GET("/api/v1/admin/psp-mock/chaos");
    setAbsent(response.status === 404);
    setCurrent(data ?? null);
    if (data) setForm(toProcessorForm(data));
  }
  useEffect(() => {
    load();
  }, [generation.value]);

  if (absent) {
    return (
      <section class="panel" data-testid="chaos-psp-mock">
        <h2>Card processor</h2>
        <p class="meta">No test card processor (psp-mock) runs behind this gateway: a real processor has no chaos switch.</p>
      </section>
    );
  }
  const share = (s: string) => Number(s || "0") / 100;
  return (
    <section class="panel chaos-card" data-testid="chaos-psp-mock" aria-label="Chaos for the card processor">
      <div class="title-row">
        <h2>Card processor (psp-mock)</h2>
        <span class={`health ${current && describeProcessor(current) !== "off" ? "health-degraded" : "health-healthy"}`} data-testid="chaos-current">
          {current === undefined ? "…" : describeProcessor(current)}
        </span>
      </div>
      <form
        class="chaos-form"
        onSubmit={(e) => {
          e.preventDefault();
          action.run(async () => {
            setNote(null);
            const { data, error } = await adminApi.PUT("/api/v1/admin/psp-mock/chaos", {
              body: {
                error_rate: share(form.error),
                timeout_rate: share(form.timeout),
                timeout_ms: Number(form.timeoutMs || "10000"),
                duplicate_webhook_rate: share(form.duplicates),
                reorder_webhooks: form.reorder,
              },
            });
            if (error) return error as Problem;
            setCurrent(data);
            setNote(`Applied: ${describeProcessor(data)}`);
          });
        }}
      >
        <Field label="Unavailable (%)" name="error_rate" value={form.error} onInput={(v) => setForm({ ...form, error: v })} problem={action.problem} inputMode="decimal" />
        <Field label="Timeouts (%)" name="timeout_rate" value={form.timeout} onInput={(v) => setForm({ ...form, timeout: v })} problem={action.problem} inputMode="decimal" />
        <Field label="Timeout after (ms)" name="timeout_ms" value={form.timeoutMs} onInput={(v) => setForm({ ...form, timeoutMs: v })} problem={action.problem} inputMode="numeric" />
        <Field label="Duplicate webhooks (%)" name="duplicate_webhook_rate" value={form.duplicates} onInput={(v) => setForm({ ...form, duplicates: v })} problem={action.problem} inputMode="decimal" />
        <label class="check">
          <input type="checkbox" checked={form.reorder} onChange={(e) => setForm({ ...form, reorder: (e.currentTarget as HTMLInputElement).checked })} />{" "}
          Webhooks out of order
        </label>
        <ProblemNotice problem={action.problem} shown={["error_rate", "timeout_rate", "timeout_ms", "duplicate_webhook_rate"]} />
        {note && <Notice kind="success">{note}</Notice>}
        <div class="actions">
          <Button type="submit" busy={action.busy}>
            Apply
          </Button>
          <StopButton
            action={action}
            stop={() => adminApi.DELETE("/api/v1/admin/psp-mock/chaos")}
            done={() => {
              setNote("Stopped");
              return load();
            }}
          />
        </div>
      </form>
    </section>
  );
}

export function ConsoleChaos() {
  const stopAll = useAction();
  const [stopped, setStopped] = useState<string | null>(null);
  return (
    <ConsoleFrame title="Chaos">
      <div class="title-row">
        <p class="meta">Faults each service injects into its own API (never into health, metrics or admin routes). Watch the overview while they run.</p>
        <Button
          variant="danger"
          busy={stopAll.busy}
          onClick={() =>
            stopAll.run(async () => {
              setStopped(null);
              const results = await Promise.all([
                ...CHAOS_SERVICES.map((service) =>
                  adminApi.DELETE("/api/v1/admin/{service}/chaos", { params: { path: { service } } }).then((r) => (r.error ? service : null)),
                ),
                adminApi.DELETE("/api/v1/admin/psp-mock/chaos").then((r) => (r.error && r.response.status !== 404 ? "psp-mock" : null)),
              ]);
              generation.value += 1;
              const failed = results.filter(Boolean);
              if (failed.length) return { detail: `Chaos could not be stopped on ${failed.join(", ")}` };
              setStopped("All chaos stopped.");
            })
          }
        >
          Stop all chaos
        </Button>
      </div>
      <ProblemNotice problem={stopAll.problem} />
      {stopped && <Notice kind="success">{stopped}</Notice>}
      <div class="chaos-grid">
        {CHAOS_SERVICES.map((s) => (
          <ServiceChaos service={s} />
        ))}
        <ProcessorChaos />
      </div>
    </ConsoleFrame>
  );
}
