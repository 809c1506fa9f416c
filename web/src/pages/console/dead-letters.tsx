// Dead letters: per consuming service, the events its handler gave up on, with their error
// and attempts, and "Replay" (one, or all still open) with what came of it.

import { useEffect, useState } from "preact/hooks";
import { ConsoleFrame } from "./frame";
import { adminApi } from "../../app-context";
import { Button, Empty, Loading, Notice } from "../../components/ui";
import type { DeadLetter } from "../../api/admin";
import type { Problem } from "../../api/problem";

/** The services that consume events (and so may park them). */
export const CONSUMERS = ["order", "inventory", "payment", "cart"];

type Result = { ok: boolean; text: string };

function Consumer({ service }: { service: string }) {
  const [items, setItems] = useState<DeadLetter[] | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const [results, setResults] = useState<Record<string, Result>>({});
  const [busy, setBusy] = useState<string | null>(null);

  async function load() {
    const { data, error } = await adminApi.GET("/api/v1/admin/{service}/dead-letters", { params: { path: { service } } });
    if (error) setProblem((error as Problem).detail ?? "the dead letters could not be read");
    setItems(data?.items ?? []);
  }
  useEffect(() => {
    load();
  }, []);

  async function replay(d: DeadLetter): Promise<Result> {
    const { data, error } = await adminApi.POST("/api/v1/admin/{service}/dead-letters/{id}/replay", {
      params: { path: { service, id: d.id } },
    });
    const result = data
      ? { ok: true, text: `Replayed: ${data.outcome}` }
      : { ok: false, text: (error as Problem)?.detail ?? "the replay failed" };
    setResults((r) => ({ ...r, [d.id]: result }));
    return result;
  }

  const open = (items ?? []).filter((d) => !d.replayed_at);
  return (
    <section class="panel" data-testid={`dead-letters-${service}`} aria-label={`Dead letters of ${service}`}>
      <div class="title-row">
        <h2>
          {service} <span class="meta">{items ? `${open.length} open, ${items.length - open.length} replayed` : ""}</span>
        </h2>
        <div class="actions">
          <Button variant="secondary" onClick={() => load()}>
            Refresh
          </Button>
          <Button
            busy={busy === "all"}
            disabled={open.length === 0}
            onClick={async () => {
              setBusy("all");
              for (const d of open) await replay(d);
              setBusy(null);
              await load();
            }}
          >
            Replay all
          </Button>
        </div>
      </div>
      {problem && <Notice>{problem}</Notice>}
      {items === null ? (
        <Loading />
      ) : items.length === 0 ? (
        <Empty title="Nothing parked" />
      ) : (
        <table class="table">
          <thead>
            <tr>
              <th>Event</th>
              <th>Error</th>
              <th class="num">Attempts</th>
              <th>Parked</th>
              <th>Result</th>
            </tr>
          </thead>
          <tbody>
            {items.map((d) => (
              <tr data-testid="dead-letter" data-event-id={d.event_id} data-replayed={d.replayed_at ? "true" : "false"}>
                <td>
                  <strong>{d.event_type}</strong>
                  <div class="meta mono">{d.event_id}</div>
                </td>
                <td class="error-text">{d.error}</td>
                <td class="num">{d.attempts}</td>
                <td>{new Date(d.parked_at).toLocaleString()}</td>
                <td>
                  {results[d.id] ? (
                    <span class={results[d.id].ok ? "ok" : "reason"} data-testid="replay-result">
                      {results[d.id].text}
                    </span>
                  ) : d.replayed_at ? (
                    <span class="meta">replayed {new Date(d.replayed_at).toLocaleTimeString()}</span>
                  ) : (
                    <Button
                      variant="secondary"
                      busy={busy === d.id}
                      onClick={async () => {
                        setBusy(d.id);
                        await replay(d);
                        setBusy(null);
                      }}
                    >
                      Replay
                    </Button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function ConsoleDeadLetters() {
  return (
    <ConsoleFrame title="Dead letters">
      <p class="meta">Events a consumer could not handle after its retries, parked instead of dropped. Fix the cause, then replay.</p>
      <div class="stack">
        {CONSUMERS.map((s) => (
          <Consumer service={s} />
        ))}
      </div>
    </ConsoleFrame>
  );
}
