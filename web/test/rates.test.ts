import { describe, expect, test } from "vitest";
import { delta, errorShare, quantile, rate } from "../src/lib/rates";

describe("rates over two summaries", () => {
  test("a counter's rate, and none across a restart", () => {
    expect(rate(10, 40, 2)).toBe(15);
    expect(rate(undefined, 40, 2)).toBeNull();
    expect(rate(50, 3, 2)).toBeNull();
  });

  test("percentiles of the observations between two histograms", () => {
    const prev = { count: 10, buckets: [{ le: 0.1, count: 10 }, { le: 1, count: 10 }, { le: 5, count: 10 }] };
    // 10 more: 5 between 0.1 and 1 s, 5 between 1 and 5 s.
    const cur = { count: 20, buckets: [{ le: 0.1, count: 10 }, { le: 1, count: 15 }, { le: 5, count: 20 }] };
    const d = delta(prev, cur)!;
    expect(d.count).toBe(10);
    expect(quantile(0.5, d)).toBeCloseTo(1);
    expect(quantile(0.95, d)).toBeCloseTo(1 + 4 * (4.5 / 5));
    expect(quantile(0.5, delta(cur, cur))).toBeNull();
  });

  test("beyond the last bucket the answer is its bound", () => {
    expect(quantile(0.99, { count: 4, buckets: [{ le: 0.5, count: 1 }] })).toBe(0.5);
  });

  test("the error share is 5xx over all requests in the window", () => {
    expect(errorShare({ requests_total: 10, errors_total: 1 }, { requests_total: 30, errors_total: 6 })).toBe(0.25);
    expect(errorShare({ requests_total: 10, errors_total: 1 }, { requests_total: 10, errors_total: 1 })).toBe(0);
    expect(errorShare(undefined, { requests_total: 10, errors_total: 1 })).toBeNull();
  });
});
