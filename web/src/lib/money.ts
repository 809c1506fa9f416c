// Money is integer minor units plus an ISO 4217 currency everywhere in Mercato; it becomes
// text only here.

const formats = new Map<string, Intl.NumberFormat>();

export function formatMoney(cents: number, currency = "USD"): string {
  let f = formats.get(currency);
  if (!f) {
    f = new Intl.NumberFormat("en-US", { style: "currency", currency });
    formats.set(currency, f);
  }
  const digits = f.resolvedOptions().maximumFractionDigits ?? 2;
  return f.format(cents / 10 ** digits);
}

/** "12.50" → 1250; null when it is not an amount with at most two decimals. */
export function parseMoney(text: string): number | null {
  const m = /^\s*(\d{1,9})(?:[.,](\d{1,2}))?\s*$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * 100 + Number((m[2] ?? "0").padEnd(2, "0"));
}
