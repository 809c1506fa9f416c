// The live overview: a tile per service (healthy / degraded / down, and why), every circuit
// breaker, and charts that move every few seconds, all from the gateway's summary.

import { useEffect } from "preact/hooks";
import { ConsoleFrame } from "./frame";
import { Chart } from "../../components/chart";
import { Loading, Notice } from "../../components/ui";
import { feedError, samples, series, watch, type ServiceSummary } from "../../lib/feed";
import { describe } from "../../lib/chaos";
import type { ChaosProfile } from "../../api/admin";

const STATE_LABEL: Record<string, string> = { closed: "closed", open: "open", half_open: "half-open" };

function Tile({ s }: { s: ServiceSummary }) {
  const injected = Object.entries(s.chaos_events ?? {}).filter(([, n]) => n > 0);
  return (
    <li class={`tile tile-${s.status}`} data-testid={`tile-${s.service}`} data-status={s.status}>
      <div class="tile-head">
        <strong>{s.service}</strong>
        <span class={`health health-${s.status}`}>{s.status}</span>
      </div>
      <p class="meta">
        {s.replicas_up}/{s.replicas} replica{s.replicas === 1 ? "" : "s"} answering
        {s.chaos ? ` · chaos: ${describe(s.chaos as ChaosProfile)}` : ""}
      </p>
      {s.reasons.length > 0 && (
        <ul class="reasons" data-testid="reasons">
          {s.reasons.map((r) => (
            <li>{r}</li>
          ))}
        </ul>
      )}
      {injected.length > 0 && (
        <p class="meta">Faults injected: {injected.map(([k, n]) => `${k} ${n}`).join(", ")}</p>
      )}
    </li>
  );
}

export function ConsoleOverview() {
  return (
    <ConsoleFrame title="Overview">
      <Overview />
    </ConsoleFrame>
  );
}

function Overview() {
  useEffect(() => watch(), []);
  const all = samples.value;
  const latest = all[all.length - 1]?.summary;
  const s = series(all);
  const breakers = (latest?.services ?? []).flatMap((svc) => svc.breakers.map((b) => ({ from: svc.service, ...b })));
  return (
    <>
      {feedError.value && <Notice>The overview is not current: {feedError.value}</Notice>}
      {!latest ? (
        <Loading what="Reading every service" />
      ) : (
        <>
          <p class="meta" data-testid="read-at" data-samples={all.length}>
            Read at {new Date(latest.at).toLocaleTimeString()} · every 2 s
          </p>
          <ul class="tiles">
            {latest.services.map((svc) => (
              <Tile s={svc} />
            ))}
          </ul>
          <h2>Circuit breakers</h2>
          {breakers.length === 0 ? (
            <p class="meta">No service has called a dependency yet.</p>
          ) : (
            <table class="table breakers">
              <thead>
                <tr>
                  <th>Caller</th>
                  <th>Dependency</th>
                  <th>State</th>
                </tr>
              </thead>
              <tbody>
                {breakers.map((b) => (
                  <tr data-testid={`breaker-${b.from}-${b.dependency}`} data-state={b.state}>
                    <td>{b.from}</td>
                    <td>{b.dependency}</td>
                    <td>
                      <span class={`breaker breaker-${b.state}`}>{STATE_LABEL[b.state] ?? b.state}</span>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <h2>Now</h2>
          <div class="charts">
            <Chart title="Orders per second" unit="/s" xs={s.xs} lines={s.orders} digits={2} />
            <Chart title="Accepted → PAID" unit="s" xs={s.xs} lines={s.timeToPaid} digits={2} />
            <Chart title="HTTP errors (5xx share)" unit="%" xs={s.xs} lines={s.errors} />
            <Chart title="HTTP latency p95" unit="ms" xs={s.xs} lines={s.latency} />
            <Chart title="Outbox backlog and consumer lag" unit="events" xs={s.xs} lines={s.backlog} digits={0} />
            <Chart title="Dead letters" unit="" xs={s.xs} lines={s.deadLetters} digits={0} />
          </div>
        </>
      )}
    </>
  );
}
