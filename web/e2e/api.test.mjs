// The typed client is generated from a snapshot of the gateway's /openapi.json; this fails
// when the running code's document has moved on (run `npm run api:update`, then fix what
// the compiler then finds).

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { start } from "./harness.mjs";

test("the client's API snapshot is the running gateway's /openapi.json", async () => {
  const w = await start({ browser: false });
  try {
    const live = await w.openapi();
    const snapshot = readFileSync(new URL("../src/api/openapi.json", import.meta.url), "utf8");
    assert.ok(live === snapshot, "src/api/openapi.json is stale: run `npm run api:update` in web/");
  } finally {
    await w.stop();
  }
});
