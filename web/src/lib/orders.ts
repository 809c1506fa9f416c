// Order states as the storefront and back office name them. The state machine itself lives
// in the order service (services/order/src/domain.rs); these are only its labels and which
// buttons a state allows, so a button never offers what the service would refuse.

export type OrderStatus =
  | "PENDING"
  | "CONFIRMED"
  | "PAID"
  | "PROCESSING"
  | "FULFILLED"
  | "CANCELLED"
  | "REFUNDED";

export const STATUSES: OrderStatus[] = [
  "PENDING",
  "CONFIRMED",
  "PAID",
  "PROCESSING",
  "FULFILLED",
  "CANCELLED",
  "REFUNDED",
];

/** The happy path, for the progress bar. */
export const PROGRESS: OrderStatus[] = ["PENDING", "CONFIRMED", "PAID", "PROCESSING", "FULFILLED"];

export const FINAL: OrderStatus[] = ["FULFILLED", "CANCELLED", "REFUNDED"];

const REASONS: Record<string, string> = {
  payment_declined: "the card was declined",
  out_of_stock: "not enough stock",
  reservation_expired: "the stock reservation expired before payment",
  customer_cancelled: "cancelled by the customer",
  admin_cancelled: "cancelled by the shop",
};

export function cancelReason(code: string | null | undefined): string {
  if (!code) return "no reason given";
  return REASONS[code] ?? code.replace(/_/g, " ");
}

/** Cancel is offered before fulfilment (the service refunds a paid order). */
export function canCancel(s: OrderStatus): boolean {
  return s === "PENDING" || s === "CONFIRMED" || s === "PAID" || s === "PROCESSING";
}

export function canProcess(s: OrderStatus): boolean {
  return s === "PAID";
}

export function canFulfil(s: OrderStatus): boolean {
  return s === "PAID" || s === "PROCESSING";
}

export function isFinal(s: OrderStatus): boolean {
  return FINAL.includes(s);
}
