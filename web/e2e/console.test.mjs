// The operator console in real headless Chromium against a real `mercato up`: an admin turns
// chaos on from the console, watches the overview go red, turns it off and sees every order
// complete; reads one order's saga; replays a dead letter; changes a role. A customer who
// types the console's address sees "Not allowed" and no data, and the API refuses them too.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { DEMO, screenshot, start } from "./harness.mjs";

const WAIT = { timeout: 20_000 };
let w;
let customer;
let admin;
let productId;

before(async () => {
  w = await start();
  customer = await w.api.login(DEMO.customer);
  admin = await w.api.login(DEMO.admin);
  const products = await w.api.call("GET", "/products?limit=20");
  productId = products.body.items[0].id;
});
after(async () => {
  await w?.stop();
});

async function signIn(page, who) {
  await page.getByLabel("Email").fill(who.email);
  await page.getByLabel("Password").fill(who.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor(WAIT);
}

async function adminPage(path) {
  const page = await w.page({ width: 1440, height: 1000 });
  await page.goto(`/signin?next=${encodeURIComponent(path)}`);
  await signIn(page, DEMO.admin);
  await page.waitForURL((u) => u.pathname === path.split("?")[0], WAIT);
  return page;
}

/** An order placed through the API as the demo customer; its id. */
async function placeOrder() {
  const r = await w.api.call("POST", "/orders", {
    token: customer,
    key: crypto.randomUUID(),
    body: { items: [{ product_id: productId, quantity: 1 }], payment_method: "pm_card_visa" },
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.id;
}

async function statusOf(id) {
  return (await w.api.call("GET", `/orders/${id}`, { token: admin })).body.status;
}

describe("operator console", () => {
  test("a customer at the console's address sees Not allowed and no data; the API refuses them", async () => {
    const page = await w.page();
    const asked = [];
    page.on("request", (r) => {
      if (new URL(r.url()).pathname.startsWith("/api/v1/admin")) asked.push(r.url());
    });
    await page.goto("/signin?next=/console");
    await signIn(page, DEMO.customer);
    await page.waitForURL(/\/console$/, WAIT);
    await page.getByTestId("not-allowed").getByRole("heading", { name: "Not allowed" }).waitFor(WAIT);
    await screenshot(page, "console-not-allowed");
    for (const path of ["/console/chaos", "/console/dead-letters", "/console/orders", "/console/users"]) {
      await page.goto(path);
      await page.getByTestId("not-allowed").waitFor(WAIT);
    }
    assert.equal(await page.getByRole("link", { name: "Console" }).count(), 0, "no console link for a customer");
    assert.deepEqual(asked, [], "the console asked the API for nothing");
    await page.context().close();

    const order = await placeOrder();
    for (const path of ["/admin/summary", `/admin/orders/${order}/timeline`, "/admin/psp-mock/chaos"]) {
      assert.equal((await w.api.call("GET", path)).status, 401, path);
      const refused = await w.api.call("GET", path, { token: customer });
      assert.equal(refused.status, 403, path);
      assert.equal(refused.body.status, 403);
    }
    assert.equal((await w.api.call("PUT", "/admin/psp-mock/chaos", { token: customer, body: { error_rate: 1 } })).status, 403);
  });

  test("100% errors on inventory from the chaos page: tile degraded, breaker open; stop chaos, every order is PAID", async () => {
    const chaos = await adminPage("/console/chaos");
    const card = chaos.getByTestId("chaos-inventory");
    await card.getByTestId("chaos-current").getByText("off").waitFor(WAIT);
    await card.getByLabel("Error rate (%)").fill("100");
    await card.getByRole("button", { name: "Apply" }).click();
    await card.getByTestId("chaos-current").getByText("100% errors").waitFor(WAIT);
    await screenshot(chaos, "console-chaos-page");

    // The order service's stock pre-check now fails; past ten failed calls (half of at least
    // ten) its breaker opens, and orders are still accepted (the saga catches up by events).
    const orders = [];
    const overview = await w.page({ width: 1440, height: 1000 });
    try {
      await overview.goto("/signin?next=/console");
      await signIn(overview, DEMO.admin);
      const tile = overview.getByTestId("tile-inventory");
      await tile.waitFor(WAIT);
      for (let i = 0; i < 12; i++) orders.push(await placeOrder());

      await overview.locator('[data-testid="tile-inventory"][data-status="degraded"]').waitFor(WAIT);
      assert.match(await tile.innerText(), /chaos injected: 100% errors/);
      await overview.locator('[data-testid="breaker-order-inventory"][data-state="open"]').waitFor(WAIT);
      assert.match(await tile.innerText(), /order's circuit breaker to inventory is open/);
      // The charts move: orders are coming in, and inventory answers errors.
      await overview.getByText(/accepted\/s: 0*[1-9]|accepted\/s: 0\.\d*[1-9]/).waitFor(WAIT);
      await overview.getByText(/inventory: [1-9][0-9.]* %/).waitFor(WAIT);
      // A few more samples with orders still coming in, so the lines have a past.
      const readAt = overview.getByTestId("read-at");
      const end = Date.now() + 40_000;
      while (Number(await readAt.getAttribute("data-samples")) < 12) {
        assert.ok(Date.now() < end, "the overview keeps sampling");
        orders.push(await placeOrder());
        await readAt.locator(`xpath=self::*[@data-samples != "${await readAt.getAttribute("data-samples")}"]`).waitFor(WAIT);
      }
      const shot = await screenshot(overview, "console-overview-chaos");
      if (process.env.MERCATO_E2E_README_SHOT) copyFileSync(shot, process.env.MERCATO_E2E_README_SHOT);

      await chaos.getByRole("button", { name: "Stop all chaos" }).click();
      await chaos.getByText("All chaos stopped.").waitFor(WAIT);
      await card.getByTestId("chaos-current").getByText("off").waitFor(WAIT);
    } finally {
      // Whatever failed above, the tests after this one run without chaos.
      await w.api.call("DELETE", "/admin/inventory/chaos", { token: admin });
    }
    // The breaker lets trial calls through once its reset time (10 s) is over and closes when
    // they succeed: orders keep coming until the overview shows inventory healthy again.
    const healthy = overview.locator('[data-testid="tile-inventory"][data-status="healthy"]');
    const end = Date.now() + 60_000;
    while (!(await healthy.waitFor({ timeout: 2000 }).then(() => true, () => false))) {
      assert.ok(Date.now() < end, `inventory is healthy again: ${await overview.getByTestId("tile-inventory").innerText()}`);
      orders.push(await placeOrder());
    }
    await overview.locator('[data-testid="breaker-order-inventory"][data-state="closed"]').waitFor(WAIT);
    for (const id of orders) {
      await w.api.until(`order ${id} to be PAID`, 30_000, async () => (await statusOf(id)) === "PAID");
    }

    // The console's order list shows them PAID, over as many cursor pages as it takes.
    await chaos.goto("/console/orders?status=PAID");
    const rows = chaos.getByTestId("console-order-row");
    await rows.first().waitFor(WAIT);
    for (;;) {
      const seen = await rows.evaluateAll((els) => els.map((e) => e.dataset.orderId));
      const missing = orders.filter((id) => !seen.includes(id));
      if (missing.length === 0) break;
      const more = chaos.getByRole("button", { name: "Load more" });
      assert.ok((await more.count()) > 0, `listed as PAID: ${missing}`);
      await more.click();
      await chaos.waitForFunction((n) => document.querySelectorAll('[data-testid="console-order-row"]').length > n, seen.length, WAIT);
    }
    await overview.context().close();
    await chaos.context().close();
  });

  test("an order's timeline shows its reservation, payment and events in order", async () => {
    const id = await placeOrder();
    await w.api.until("the order to be PAID", 20_000, async () => (await statusOf(id)) === "PAID");
    const page = await adminPage(`/console/orders/${id}`);
    await page.getByTestId("console-order-status").getByText("PAID", { exact: true }).waitFor(WAIT);
    const entries = page.getByTestId("timeline-entry");
    await page.locator('[data-testid="timeline-entry"]', { hasText: "payment.authorized" }).first().waitFor(WAIT);
    const rows = await entries.evaluateAll((els) =>
      els.map((e) => ({ kind: e.dataset.kind, service: e.dataset.service, text: e.textContent, at: e.querySelector("time").dateTime })),
    );
    const find = (f, what) => {
      const i = rows.findIndex(f);
      assert.ok(i >= 0, `${what} in ${JSON.stringify(rows, null, 1)}`);
      return i;
    };
    const created = find((r) => r.kind === "published" && r.text.includes("order.created"), "order.created published");
    const handled = find((r) => r.kind === "consumed" && r.service === "inventory" && r.text.includes("order.created"), "inventory handling order.created");
    const reservation = find((r) => r.kind === "reservation" && r.text.includes("reservation "), "the reservation");
    // A paid order's reservation is held until fulfilment: it no longer expires.
    assert.equal(rows.filter((r) => r.text.includes("reservation expires")).length, 0);
    const payment = find((r) => r.kind === "payment", "the payment");
    const authorized = find((r) => r.kind === "published" && r.text.includes("payment.authorized"), "payment.authorized published");
    const paid = find((r) => r.kind === "history" && r.text.includes("→ PAID"), "the step to PAID");
    assert.ok(created < handled, "published before handled");
    assert.ok(rows[created].at <= rows[reservation].at, "order.created before the reservation");
    assert.ok(reservation < payment, "reserved before the payment was made");
    assert.ok(payment < authorized, "the payment before its authorization was announced");
    assert.ok(authorized < paid || rows[authorized].at === rows[paid].at, "authorized, then PAID");
    const times = rows.map((r) => r.at);
    assert.deepEqual(times, [...times].sort((a, b) => Date.parse(a) - Date.parse(b)), "oldest first");
    await screenshot(page, "console-timeline");
    await page.context().close();
  });

  test("why an order is not paid: its timeline shows each payment.delayed, and an admin cancels it", async () => {
    const down = await w.api.call("PUT", "/admin/psp-mock/chaos", { token: admin, body: { error_rate: 1 } });
    assert.equal(down.status, 200, JSON.stringify(down.body));
    let page;
    try {
      const id = await placeOrder();
      page = await adminPage(`/console/orders/${id}`);
      await page.getByTestId("console-waiting-for").waitFor(WAIT);
      assert.match(await page.getByTestId("console-waiting-for").innerText(), /^Waiting for payment: .+/);
      // Followed every 3 s while it waits: the processor's refusals appear as they come.
      await page.locator('[data-testid="timeline-entry"][data-kind="published"]', { hasText: /payment\.delayed.*attempt 1 failed/ }).waitFor(WAIT);
      await screenshot(page, "console-timeline-waiting");
      await page.getByRole("button", { name: "Cancel order" }).click();
      await page.getByTestId("console-order-status").getByText("CANCELLED", { exact: true }).waitFor(WAIT);
      await page.getByText("Cancelled: cancelled by the shop").waitFor(WAIT);
      assert.equal(await statusOf(id), "CANCELLED");
    } finally {
      await w.api.call("DELETE", "/admin/psp-mock/chaos", { token: admin });
      await page?.context().close();
    }
  });

  test("a dead letter is replayed from the console and its order completes", async () => {
    // Test hook (MERCATO_TEST_HOOKS): inventory fails every order.created until told otherwise.
    const fail = await w.api.call("PUT", "/admin/inventory/test/failing-events", { token: admin, body: { event_types: ["order.created"] } });
    assert.equal(fail.status, 200, JSON.stringify(fail.body));
    let id;
    let parked;
    try {
      id = await placeOrder();
      parked = await w.api.until("the order.created to be parked", 30_000, async () => {
        const list = await w.api.call("GET", "/admin/inventory/dead-letters", { token: admin });
        return list.body.items.find((d) => d.envelope.aggregate_id === id && !d.replayed_at);
      });
    } finally {
      await w.api.call("PUT", "/admin/inventory/test/failing-events", { token: admin, body: { event_types: [] } });
    }
    assert.equal(await statusOf(id), "PENDING", "nothing reserved it");

    const page = await adminPage("/console/dead-letters");
    const row = page.getByTestId("dead-letters-inventory").locator(`[data-testid="dead-letter"][data-event-id="${parked.event_id}"]`);
    await row.waitFor(WAIT);
    assert.match(await row.innerText(), /told to fail order\.created/);
    await screenshot(page, "console-dead-letter");
    await row.getByRole("button", { name: "Replay" }).click();
    await row.getByTestId("replay-result").getByText("Replayed: applied").waitFor(WAIT);
    await screenshot(page, "console-dead-letter-replayed");

    await w.api.until("the replayed order to be PAID", 20_000, async () => (await statusOf(id)) === "PAID");
    await page.goto(`/console/orders/${id}`);
    await page.getByTestId("console-order-status").getByText("PAID", { exact: true }).waitFor(WAIT);
    await page.locator('[data-testid="timeline-entry"][data-kind="dead_letter"]', { hasText: "replayed since" }).waitFor(WAIT);
    await page.context().close();
  });

  test("an admin finds a user and changes their role; it shows at their next sign-in", async () => {
    const email = `role-${Date.now().toString(36)}@example.com`;
    const password = "Correct-horse-42";
    const reg = await w.api.call("POST", "/auth/register", { key: crypto.randomUUID(), body: { email, password, name: "Rolling Stone" } });
    assert.equal(reg.status, 201, JSON.stringify(reg.body));
    const page = await adminPage("/console/users");
    await page.getByLabel("Search email or name").fill(email.slice(0, 12));
    await page.getByRole("button", { name: "Search" }).click();
    const row = page.locator(`[data-testid="user-row"][data-email="${email}"]`);
    await row.waitFor(WAIT);
    assert.equal(await page.getByTestId("user-row").count(), 1, "the search narrows the list");
    await row.getByLabel(`Role of ${email}`).selectOption("SELLER");
    await row.getByRole("button", { name: "Change role" }).click();
    await row.getByTestId("role-result").getByText(/Now SELLER/).waitFor(WAIT);
    const token = await w.api.login({ email, password });
    assert.equal((await w.api.call("GET", "/auth/me", { token })).body.role, "SELLER");
    await page.context().close();
  });
});

test("no console page had a script error or a CSP violation", () => {
  assert.deepEqual(w.problems, []);
});
