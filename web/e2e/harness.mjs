// The browser tests' world: a real `mercato up` (the binary the workspace built) on a fresh
// data dir and free ports, and Debian's Chromium driven by playwright-core. Each test user
// gets a browser context of their own (their own cookies); Playwright launches Chromium with
// a fresh temporary profile every run.
//
// MERCATO_BIN names the binary (default: ../target/debug/mercato, or under CARGO_TARGET_DIR);
// MERCATO_E2E_SHOTS the folder for screenshots (default ../target/web-e2e).

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, createWriteStream } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const here = new URL("..", import.meta.url).pathname;
const targetDir = process.env.CARGO_TARGET_DIR ?? resolve(here, "..", "target");
export const BIN = process.env.MERCATO_BIN ?? join(targetDir, "debug", "mercato");
export const SHOTS = process.env.MERCATO_E2E_SHOTS ?? resolve(here, "..", "target", "web-e2e");
const SERVICES = ["gateway", "auth", "catalog", "order", "payment", "cart", "inventory", "psp_mock"];

export const DEMO = {
  customer: { email: "customer@mercato.local", password: "Customer-demo-2026" },
  seller: { email: "seller@mercato.local", password: "Seller-demo-2026" },
  admin: { email: "admin@mercato.local", password: "Admin-demo-2026" },
};

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.unref();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function until(what, deadlineMs, f) {
  const end = Date.now() + deadlineMs;
  let last;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} did not happen within ${deadlineMs} ms${last ? `: ${last}` : ""}`);
}

/** Starts Mercato and (unless `browser: false`) Chromium; `stop()` ends both and removes the
 * data dir. */
export async function start({ browser: withBrowser = true } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), "mercato-e2e-"));
  // Processor retries at most 1 s apart, so an outage the tests end is over quickly. Test
  // hooks on: the console's tests tell a consumer to fail, to make a dead letter to replay.
  const env = {
    ...process.env,
    MERCATO_LOG: "warn",
    MERCATO_LOG_FORMAT: "json",
    MERCATO_PSP_RETRY_MAX_MS: "1000",
    MERCATO_TEST_HOOKS: "true",
  };
  for (const s of SERVICES) env[`MERCATO_${s.toUpperCase()}_PORT`] = String(await freePort());
  const base = `http://127.0.0.1:${env.MERCATO_GATEWAY_PORT}`;
  mkdirSync(SHOTS, { recursive: true });
  const log = createWriteStream(join(SHOTS, "mercato.log"));
  const proc = spawn(BIN, ["up", "--data-dir", dataDir], { env, stdio: ["ignore", "pipe", "pipe"] });
  proc.stdout.pipe(log);
  proc.stderr.pipe(log);
  let exited = null;
  proc.on("exit", (code) => (exited = code));
  await until("the gateway being ready", 60_000, async () => {
    if (exited !== null) throw new Error(`mercato up exited with ${exited} (see ${SHOTS}/mercato.log)`);
    const r = await fetch(`${base}/health/ready`);
    if (!r.ok) return false;
    // The demo catalog is seeded at start; the tests shop from it.
    const p = await fetch(`${base}/api/v1/products?limit=1`).then((r) => r.json());
    return p.items?.length > 0;
  });
  let browser;
  try {
    browser = withBrowser && await chromium.launch({
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      headless: true,
      // Without the background-networking flags Chromium keeps trying to reach hosts this closed
      // network refuses. Playwright gives every launch a fresh temporary --user-data-dir.
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
    });
  } catch (e) {
    // Without a browser the run fails; the stack must not outlive it (the runner would wait).
    proc.kill("SIGTERM");
    throw e;
  }
  const problems = [];
  return {
    base,
    /** Script errors and CSP violations seen on any page: the tests end by asserting none. */
    problems,
    /** psp-mock, whose test routes (chaos, settling) the tests drive. */
    psp: `http://127.0.0.1:${env.MERCATO_PSP_MOCK_PORT}`,
    browser,
    api: apiClient(base),
    /** The gateway's API document, keys sorted, as the client snapshot keeps it. */
    async openapi() {
      const doc = await fetch(`${base}/openapi.json`).then((r) => r.json());
      return JSON.stringify(sortKeys(doc), null, 2) + "\n";
    },
    async page(viewport = { width: 1280, height: 860 }) {
      const context = await browser.newContext({ baseURL: base, viewport });
      const page = await context.newPage();
      page.on("pageerror", (e) => {
        console.error("page error:", e.message);
        problems.push(`page error: ${e.message}`);
      });
      page.on("console", (m) => {
        if (m.text().includes("Content Security Policy")) problems.push(m.text());
      });
      return page;
    },
    async stop() {
      if (browser) await browser.close().catch(() => {});
      proc.kill("SIGTERM");
      await new Promise((r) => (exited !== null ? r() : proc.once("exit", r)));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}

let shot = 0;
/** A numbered screenshot under SHOTS, named after the step. */
export async function screenshot(page, name) {
  shot += 1;
  const file = join(SHOTS, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Plain API calls, for what the tests check behind the browser's back. */
function apiClient(base) {
  async function call(method, path, { token, body, key } = {}) {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    if (key) headers["idempotency-key"] = key;
    const r = await fetch(`${base}/api/v1${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }
  return {
    call,
    async login({ email, password }) {
      const r = await call("POST", "/auth/login", { body: { email, password } });
      if (r.status !== 200) throw new Error(`login ${email}: ${r.status}`);
      return r.body.access_token;
    },
    until,
  };
}
