import { describe, expect, test } from "vitest";
import { checkQuantity, expiresIn, summarize } from "../src/lib/cart";
import { formatMoney, parseMoney } from "../src/lib/money";

const line = (id: string, price: number, quantity: number, available = true) => ({
  product_id: id,
  name: id,
  price_cents: price,
  quantity,
  available,
});

describe("cart totals", () => {
  test("line totals and the total are integer cents of the lines on sale", () => {
    const s = summarize({ items: [line("a", 1999, 2), line("b", 5, 3)], total_cents: 4013 });
    expect(s.lines.map((l) => l.lineTotalCents)).toEqual([3998, 15]);
    expect(s.totalCents).toBe(4013);
    expect(s.count).toBe(5);
    expect(s.agrees).toBe(true);
    expect(s.hasUnavailable).toBe(false);
  });

  test("a line off sale stays visible but counts for nothing", () => {
    const s = summarize({ items: [line("a", 1000, 1), line("gone", 700, 4, false)], total_cents: 1000 });
    expect(s.lines).toHaveLength(2);
    expect(s.lines[1]).toMatchObject({ orderable: false, lineTotalCents: 0 });
    expect(s.totalCents).toBe(1000);
    expect(s.count).toBe(1);
    expect(s.hasUnavailable).toBe(true);
  });

  test("a total that disagrees with the service's is noticed", () => {
    expect(summarize({ items: [line("a", 1000, 2)], total_cents: 1500 }).agrees).toBe(false);
  });

  test("an empty or missing cart is zero", () => {
    expect(summarize(null)).toMatchObject({ count: 0, totalCents: 0, agrees: true });
    expect(summarize({ items: [], total_cents: 0 }).count).toBe(0);
  });

  test("quantities are whole numbers from 1 to 1000", () => {
    expect(checkQuantity("3")).toEqual({ ok: true, value: 3 });
    expect(checkQuantity(" 1000 ")).toEqual({ ok: true, value: 1000 });
    for (const bad of ["0", "1001", "1.5", "-2", "", "two"]) expect(checkQuantity(bad).ok, bad).toBe(false);
  });

  test("expiry reads as time left", () => {
    const now = Date.parse("2026-01-01T10:00:00Z");
    expect(expiresIn("2026-01-01T10:30:00Z", now)).toBe("expires in 30 min");
    expect(expiresIn("2026-01-01T09:59:00Z", now)).toBe("expired");
    expect(expiresIn("2026-01-01T10:00:20Z", now)).toBe("expires in less than a minute");
    expect(expiresIn("2026-01-02T10:00:00Z", now)).toBe("expires in 24 h");
    expect(expiresIn(null, now)).toBeNull();
  });

  test("money is formatted from minor units and parsed back exactly", () => {
    expect(formatMoney(123456, "USD")).toBe("$1,234.56");
    expect(formatMoney(5, "USD")).toBe("$0.05");
    expect(formatMoney(1500, "JPY")).toBe("¥1,500");
    expect(parseMoney("49.90")).toBe(4990);
    expect(parseMoney("49.9")).toBe(4990);
    expect(parseMoney("0.07")).toBe(7);
    expect(parseMoney("12")).toBe(1200);
    for (const bad of ["", "abc", "1.234", "-1", "1e3"]) expect(parseMoney(bad), bad).toBeNull();
  });
});
