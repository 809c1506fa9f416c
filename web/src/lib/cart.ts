// The cart as the page shows it. Prices come from the cart service (which asks the catalog
// every time); the rules here are the ones the page applies to what it shows: a line off sale
// stays visible but counts for nothing, quantities are whole numbers 1..=1000, and the header's
// count is the number of units that would be ordered.

export interface CartLine {
  product_id: string;
  name: string;
  price_cents: number;
  quantity: number;
  line_total_cents?: number;
  available?: boolean;
}

export interface CartView {
  items: CartLine[];
  total_cents: number;
  currency?: string;
  expires_at?: string | null;
}

export const MAX_QUANTITY = 1000;

export interface Summary {
  /** Units that would be ordered (lines still on sale). */
  count: number;
  totalCents: number;
  lines: Array<CartLine & { lineTotalCents: number; orderable: boolean }>;
  /** Some line is off sale: checkout orders the others. */
  hasUnavailable: boolean;
  /** The service's total and ours agree (they always should; shown if not). */
  agrees: boolean;
}

export function summarize(cart: CartView | null | undefined): Summary {
  const items = cart?.items ?? [];
  const lines = items.map((l) => {
    const orderable = l.available !== false;
    return { ...l, orderable, lineTotalCents: orderable ? l.price_cents * l.quantity : 0 };
  });
  const totalCents = lines.reduce((s, l) => s + l.lineTotalCents, 0);
  return {
    count: lines.reduce((s, l) => s + (l.orderable ? l.quantity : 0), 0),
    totalCents,
    lines,
    hasUnavailable: lines.some((l) => !l.orderable),
    agrees: cart ? cart.total_cents === totalCents : true,
  };
}

/** A quantity the cart accepts, or the message to show beside the field. */
export function checkQuantity(text: string): { ok: true; value: number } | { ok: false; message: string } {
  if (!/^\d+$/.test(text.trim())) return { ok: false, message: "Enter a whole number" };
  const n = Number(text);
  if (n < 1 || n > MAX_QUANTITY) return { ok: false, message: `Between 1 and ${MAX_QUANTITY}` };
  return { ok: true, value: n };
}

/** "expires in 23 min" from the cart's expiry, for the cart page. */
export function expiresIn(expiresAt: string | null | undefined, now: number): string | null {
  if (!expiresAt) return null;
  const ms = Date.parse(expiresAt) - now;
  if (Number.isNaN(ms)) return null;
  if (ms <= 0) return "expired";
  const min = Math.round(ms / 60_000);
  if (min < 1) return "expires in less than a minute";
  if (min < 120) return `expires in ${min} min`;
  return `expires in ${Math.round(min / 60)} h`;
}
