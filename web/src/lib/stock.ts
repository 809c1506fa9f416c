// Stock as a shopper sees it: a word, not a number to game.

export const LOW_STOCK = 5;

export type Availability = "in_stock" | "low" | "out";

export function availability(available: number | null | undefined): Availability {
  if (available == null || available <= 0) return "out";
  return available <= LOW_STOCK ? "low" : "in_stock";
}

export function availabilityLabel(a: Availability, available?: number | null): string {
  switch (a) {
    case "in_stock":
      return "In stock";
    case "low":
      return `Low stock: only ${available} left`;
    case "out":
      return "Out of stock";
  }
}
