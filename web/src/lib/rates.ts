// The console's arithmetic over the gateway's summaries (GET /api/v1/admin/summary): its
// counters and histograms are totals since each service started, so a rate or a percentile
// "now" is the difference between two summaries a few seconds apart, as Prometheus's rate()
// and histogram_quantile() compute them.

export interface Bucket {
  le: number;
  count: number;
}

export interface Hist {
  count: number;
  buckets: Bucket[];
}

/** Per second between two readings of a counter; null across a restart (it went down). */
export function rate(prev: number | undefined, cur: number, seconds: number): number | null {
  if (prev === undefined || seconds <= 0 || cur < prev) return null;
  return (cur - prev) / seconds;
}

/** The observations of `cur` not yet in `prev`, bucket by bucket. */
export function delta(prev: Hist | undefined, cur: Hist): Hist | null {
  if (!prev) return null;
  if (cur.count < prev.count) return null;
  const before = new Map(prev.buckets.map((b) => [b.le, b.count]));
  return {
    count: cur.count - prev.count,
    buckets: cur.buckets.map((b) => ({ le: b.le, count: b.count - (before.get(b.le) ?? 0) })),
  };
}

/**
 * The q-quantile (0..1) of a histogram's observations, in the histogram's unit: linear
 * within the bucket it falls in, the last finite bound when it falls beyond it; null when
 * nothing was observed.
 */
export function quantile(q: number, h: Hist | null): number | null {
  if (!h || h.count <= 0) return null;
  const rank = q * h.count;
  let lower = 0;
  let below = 0;
  for (const b of h.buckets) {
    if (b.count >= rank) {
      const inBucket = b.count - below;
      if (inBucket <= 0) return b.le;
      return lower + ((b.le - lower) * (rank - below)) / inBucket;
    }
    lower = b.le;
    below = b.count;
  }
  return h.buckets.length ? h.buckets[h.buckets.length - 1].le : null;
}

/** Share of requests answered 5xx between two readings; null when there were none. */
export function errorShare(
  prev: { requests_total: number; errors_total: number } | undefined,
  cur: { requests_total: number; errors_total: number },
): number | null {
  if (!prev) return null;
  const requests = cur.requests_total - prev.requests_total;
  const errors = cur.errors_total - prev.errors_total;
  if (requests <= 0 || errors < 0) return requests === 0 ? 0 : null;
  return errors / requests;
}
