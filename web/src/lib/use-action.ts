// A form's submit or a button's action: busy while it runs, and the problem it ended with
// (the service's problem+json, or a network failure as one), for `Field`s and `ProblemNotice`.

import { useState } from "preact/hooks";
import { type Problem, offline } from "../api/problem";

export function useAction() {
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<Problem | null>(null);
  /** Runs `f`; what it returns (a problem, or nothing) is the outcome. */
  async function run(f: () => Promise<Problem | null | void>) {
    setBusy(true);
    setProblem(null);
    try {
      const p = await f();
      if (p) setProblem(p);
    } catch (e) {
      setProblem(offline(e));
    } finally {
      setBusy(false);
    }
  }
  return { busy, problem, setProblem, run };
}
