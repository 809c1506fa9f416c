import { describe, expect, test } from "vitest";
import { describe as say, fromForm, PRESETS, toForm } from "../src/lib/chaos";

describe("chaos in the console", () => {
  test("a profile in words", () => {
    expect(say({ latency_ms: 0, latency_rate: 0, error_rate: 1, partial_failure_rate: 0 })).toBe("100% errors");
    expect(say(PRESETS.moderate)).toBe("10% errors, 2% dropped answers, 30% +200-800 ms");
    expect(say(null)).toBe("off");
  });

  test("the form's percentages become shares, and back", () => {
    const { profile } = fromForm({ ...toForm(null), error: "100", routes: "/api/v1/inventory, " });
    expect(profile).toMatchObject({ error_rate: 1, latency_rate: 0, routes: ["/api/v1/inventory"] });
    expect(toForm(PRESETS.severe).error).toBe("30");
    expect(fromForm({ ...toForm(null), error: "150" }).error).toMatch(/percentage/);
  });
});
