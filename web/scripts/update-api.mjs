// Refreshes the typed API client from the code: starts `mercato up` (the workspace's debug
// binary), saves the gateway's /openapi.json as src/api/openapi.json and regenerates
// src/api/schema.d.ts from it. Run after changing a service's API: `npm run api:update`.

import { writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { start } from "../e2e/harness.mjs";

const w = await start({ browser: false });
try {
  writeFileSync(new URL("../src/api/openapi.json", import.meta.url), await w.openapi());
} finally {
  await w.stop();
}
execFileSync("npx", ["openapi-typescript", "src/api/openapi.json", "-o", "src/api/schema.d.ts"], { stdio: "inherit" });
