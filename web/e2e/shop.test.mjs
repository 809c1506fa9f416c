// The storefront and the back office in real headless Chromium against a real `mercato up`:
// what a shopper and a seller do, step by step, with a screenshot of each step, and what the
// API says happened behind the pages.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { DEMO, screenshot, start } from "./harness.mjs";

const WAIT = { timeout: 20_000 };
let w;

before(async () => {
  w = await start();
});
after(async () => {
  await w?.stop();
});

function unique(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
}

/** A new customer, registered through the page; leaves the page signed in. */
async function register(page, name = "Robin Shopper") {
  const email = `${unique("shopper")}@example.com`;
  const password = "Correct-horse-42";
  await page.goto("/register");
  await page.getByLabel("Name").fill(name);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Register" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor(WAIT);
  return { email, password };
}

async function signIn(page, who) {
  await page.getByLabel("Email").fill(who.email);
  await page.getByLabel("Password").fill(who.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor(WAIT);
}

async function search(page, words) {
  await page.getByRole("searchbox", { name: "Search" }).fill(words);
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForURL((u) => u.searchParams.get("q") === words, WAIT);
  await page.locator(".card").first().waitFor(WAIT);
}

async function addFirstResult(page, quantity = 1) {
  await page.locator(".card-link").first().click();
  await page.getByTestId("availability").waitFor(WAIT);
  await page.getByLabel("Quantity").fill(String(quantity));
  await page.getByRole("button", { name: "Add to cart" }).click();
  await page.getByText(/Added \d+ to your cart/).waitFor(WAIT);
}

async function fillAddress(page) {
  await page.getByLabel("Full name").fill("Robin Shopper");
  await page.getByLabel("Address line 1").fill("1 Market Street");
  await page.getByLabel("City").fill("Springfield");
  await page.getByLabel("Postal code").fill("12345");
  await page.getByLabel(/^Country/).fill("US");
}

async function cartCount(page) {
  return Number(await page.locator(".cart-link .count").innerText());
}

/** Marks the document, so a later check can tell the page was never reloaded. */
async function markDocument(page) {
  await page.evaluate(() => (window.__sameDocument = true));
}
async function sameDocument(page) {
  return page.evaluate(() => window.__sameDocument === true);
}

describe("storefront", () => {
  test("register, search, add two products, pay with pm_card_visa and watch the order get PAID live", async () => {
    const page = await w.page();
    await page.goto("/");
    await page.locator(".card").first().waitFor(WAIT);
    await screenshot(page, "storefront");
    const customer = await register(page);
    await screenshot(page, "registered");

    await page.goto("/");
    await search(page, "headphones");
    await screenshot(page, "search-headphones");
    await addFirstResult(page, 1);
    await screenshot(page, "product-added");
    await page.goto("/");
    await page.getByRole("combobox", { name: "Category" }).selectOption("home-kitchen");
    await page.waitForURL(/category=home-kitchen/, WAIT);
    await page.getByRole("combobox", { name: "Sort by" }).selectOption("price_asc");
    await page.waitForURL(/sort=price_asc/, WAIT);
    await page.locator(".card").first().waitFor(WAIT);
    await addFirstResult(page, 2);
    assert.equal(await cartCount(page), 3, "the header counts the units in the cart");

    await page.getByRole("link", { name: /^Cart/ }).click();
    await page.getByTestId("cart-line").nth(1).waitFor(WAIT);
    assert.equal(await page.getByTestId("cart-line").count(), 2);
    await screenshot(page, "cart");
    await page.getByRole("link", { name: "Checkout" }).click();
    await page.getByRole("radio", { name: /pm_card_visa$/ }).check();
    await fillAddress(page);
    await screenshot(page, "checkout");
    await markDocument(page);
    await page.getByRole("button", { name: "Place order" }).click();
    await page.waitForURL(/\/orders\/[0-9a-f-]{36}$/, WAIT);
    const orderId = page.url().split("/").pop();
    await page.getByTestId("order-status").getByText("PAID", { exact: true }).waitFor(WAIT);
    assert.ok(await sameDocument(page), "the order page followed the order without a reload");
    await page.locator(".timeline li", { hasText: "payment.authorized" }).waitFor(WAIT);
    await screenshot(page, "order-paid-live");

    // The API agrees, and the cart was emptied once the order was paid.
    const token = await w.api.login(customer);
    const order = await w.api.call("GET", `/orders/${orderId}`, { token });
    assert.equal(order.body.status, "PAID");
    assert.equal(order.body.items.length, 2);
    await w.api.until("the paid cart to be emptied", 10_000, async () => (await w.api.call("GET", "/cart", { token })).body.items.length === 0);

    // A reload keeps the user signed in (the refresh cookie, not localStorage).
    await page.reload();
    await page.getByTestId("order-status").getByText("PAID", { exact: true }).waitFor(WAIT);
    assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing is kept in localStorage");
    const cookies = await page.context().cookies();
    const refresh = cookies.find((c) => c.name === "mercato_refresh");
    assert.ok(refresh?.httpOnly && refresh.sameSite === "Strict" && refresh.path === "/api/v1/session", JSON.stringify(cookies));

    // "My orders" lists it, and its status filter works.
    await page.getByRole("link", { name: "My orders" }).click();
    await page.getByTestId("order-row").first().waitFor(WAIT);
    await page.getByRole("combobox", { name: "Status" }).selectOption("CANCELLED");
    await page.getByText("No CANCELLED orders").waitFor(WAIT);
    await page.getByRole("combobox", { name: "Status" }).selectOption("PAID");
    await page.locator(`[data-order-id="${orderId}"]`).waitFor(WAIT);
    await screenshot(page, "my-orders");

    // Signed out, a deep link asks for sign-in and comes back to the page wanted.
    const stranger = await w.page();
    await stranger.goto(`/orders/${orderId}`);
    await stranger.waitForURL(/\/signin\?next=/, WAIT);
    await screenshot(stranger, "sign-in-remembers-page");
    await signIn(stranger, customer);
    await stranger.waitForURL(new RegExp(`/orders/${orderId}$`), WAIT);
    await stranger.getByTestId("order-status").getByText("PAID", { exact: true }).waitFor(WAIT);
    await stranger.context().close();
    await page.context().close();
  });

  test("a declined card shows CANCELLED with its reason and keeps the cart", async () => {
    const page = await w.page();
    await register(page);
    await page.goto("/");
    await search(page, "power bank");
    await addFirstResult(page, 1);
    await page.goto("/checkout");
    await page.getByRole("radio", { name: /pm_card_chargeDeclined$/ }).check();
    await fillAddress(page);
    await page.getByRole("button", { name: "Place order" }).click();
    await page.waitForURL(/\/orders\//, WAIT);
    await page.getByTestId("order-status").getByText("CANCELLED", { exact: true }).waitFor(WAIT);
    await page.getByText("the card was declined").first().waitFor(WAIT);
    await screenshot(page, "order-declined");
    await page.goto("/cart");
    await page.getByTestId("cart-line").first().waitFor(WAIT);
    assert.equal(await page.getByTestId("cart-line").count(), 1, "the cart is kept for another try");
    assert.equal(await cartCount(page), 1);
    await page.context().close();
  });

  test("a processor outage shows as waiting for payment, then the order is paid", async () => {
    const page = await w.page();
    await register(page);
    await page.goto("/");
    await search(page, "keyboard");
    await addFirstResult(page, 1);
    await page.goto("/checkout");
    await fillAddress(page);
    const down = await fetch(`${w.psp}/v1/test/chaos`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ error_rate: 1.0 }),
    });
    assert.equal(down.status, 200, await down.text());
    try {
      await page.getByRole("button", { name: "Place order" }).click();
      await page.waitForURL(/\/orders\//, WAIT);
      await page.getByTestId("waiting-for").waitFor(WAIT);
      assert.match(await page.getByTestId("waiting-for").innerText(), /^Waiting for payment: .+/);
      await page.getByTestId("order-status").getByText("CONFIRMED", { exact: true }).waitFor(WAIT);
      await screenshot(page, "order-waiting-for-payment");
    } finally {
      await fetch(`${w.psp}/v1/test/chaos`, { method: "DELETE" });
    }
    await page.getByTestId("order-status").getByText("PAID", { exact: true }).waitFor({ timeout: 40_000 });
    assert.equal(await page.getByTestId("waiting-for").count(), 0);
    await page.context().close();
  });

  test("Cancel order while payment is pending cancels it", async () => {
    const page = await w.page();
    await register(page);
    await page.goto("/");
    await search(page, "speaker");
    await addFirstResult(page, 1);
    await page.goto("/checkout");
    await page.getByRole("radio", { name: /pm_card_pending$/ }).check();
    await fillAddress(page);
    await page.getByRole("button", { name: "Place order" }).click();
    await page.waitForURL(/\/orders\//, WAIT);
    await page.getByTestId("order-status").getByText("CONFIRMED", { exact: true }).waitFor(WAIT);
    await page.getByRole("button", { name: "Cancel order" }).click();
    await page.getByTestId("order-status").getByText("CANCELLED", { exact: true }).waitFor(WAIT);
    await page.getByText("cancelled by the customer").first().waitFor(WAIT);
    assert.equal(await page.getByRole("button", { name: "Cancel order" }).count(), 0, "no cancel once cancelled");
    await screenshot(page, "order-cancelled-by-customer");
    await page.context().close();
  });

  test("a double click on Place order places one order", async () => {
    const page = await w.page();
    const customer = await register(page);
    await page.goto("/");
    await search(page, "earbuds");
    await addFirstResult(page, 1);
    await page.goto("/checkout");
    await fillAddress(page);
    await page.getByRole("button", { name: "Place order" }).dblclick();
    await page.waitForURL(/\/orders\//, WAIT);
    await page.getByTestId("order-status").getByText("PAID", { exact: true }).waitFor(WAIT);
    const token = await w.api.login(customer);
    const orders = await w.api.call("GET", "/orders", { token });
    assert.equal(orders.body.items.length, 1, JSON.stringify(orders.body.items.map((o) => o.id)));
    await page.context().close();
  });

  test("a bad field shows its message beside it", async () => {
    const page = await w.page({ width: 390, height: 844 });
    await page.goto("/register");
    await page.getByLabel("Name").fill("Weak Password");
    await page.getByLabel("Email").fill(`${unique("weak")}@example.com`);
    await page.getByLabel("Password").fill("short");
    await page.getByRole("button", { name: "Register" }).click();
    const field = page.locator(".field", { has: page.getByLabel("Password") });
    await field.locator(".field-error").waitFor(WAIT);
    assert.match(await field.locator(".field-error").innerText(), /at least/);
    assert.equal(await page.getByLabel("Password").getAttribute("aria-invalid"), "true");
    await screenshot(page, "bad-field-phone");
    await page.context().close();
  });
});

describe("seller back office", () => {
  test("a seller creates a product, stocks it, sees the customer's order and fulfils it", async () => {
    const seller = await w.page();
    await seller.goto("/signin");
    await signIn(seller, DEMO.seller);
    await seller.waitForURL(/\/seller$/, WAIT);
    await seller.getByTestId("seller-product").first().waitFor(WAIT);
    await screenshot(seller, "seller-products");

    // A bad field first: the server's message appears beside the SKU.
    await seller.getByRole("link", { name: "New product" }).click();
    const sku = unique("LAMP").toUpperCase();
    await seller.getByLabel("SKU").fill("not a sku!");
    await seller.getByLabel("Name").fill("Walnut Desk Lamp");
    await seller.getByLabel("Category").fill("home-kitchen");
    await seller.getByLabel("Price (USD)").fill("49.90");
    await seller.getByLabel("Initial stock (units)").fill("6");
    await seller.getByRole("button", { name: "Create product" }).click();
    const skuField = seller.locator(".field", { has: seller.getByLabel("SKU") });
    await skuField.locator(".field-error").waitFor(WAIT);
    await screenshot(seller, "seller-bad-sku");

    // Created and stocked in one go: the stock is there at once.
    await seller.getByLabel("SKU").fill(sku);
    await seller.getByRole("button", { name: "Create product" }).click();
    await seller.waitForURL(/\/seller\/products\/[0-9a-f-]{36}$/, WAIT);
    const productId = seller.url().split("/").pop();
    await seller.getByTestId("on-hand").getByText("6").waitFor(WAIT);
    await seller.getByLabel("Set on hand to").fill("8");
    await seller.getByLabel("Note for the ledger (optional)").fill("found two more");
    await seller.getByRole("button", { name: "Save stock" }).click();
    await seller.getByTestId("on-hand").getByText("8").waitFor(WAIT);
    await seller.locator(".ledger td", { hasText: "found two more" }).waitFor(WAIT);
    await screenshot(seller, "seller-stocked");

    // A customer buys two.
    const customer = await w.page();
    await customer.goto(`/signin?next=/products/${productId}`);
    await signIn(customer, DEMO.customer);
    await customer.waitForURL(new RegExp(`/products/${productId}$`), WAIT);
    await customer.getByText("In stock").waitFor(WAIT);
    await customer.getByLabel("Quantity").fill("2");
    // The order service learns the product from the catalog's event; until then adding may
    // be refused, so this waits for the page to say it was added.
    await customer.getByRole("button", { name: "Add to cart" }).click();
    await customer.getByText(/Added 2 to your cart/).waitFor(WAIT);
    await customer.goto("/checkout");
    await fillAddress(customer);
    await customer.getByRole("button", { name: "Place order" }).click();
    await customer.waitForURL(/\/orders\//, WAIT);
    const orderId = customer.url().split("/").pop();
    await customer.getByTestId("order-status").getByText("PAID", { exact: true }).waitFor(WAIT);

    // The seller sees it, processes and fulfils it; the customer's page follows.
    await seller.getByRole("link", { name: "Seller orders" }).click();
    const row = seller.locator(`[data-order-id="${orderId}"]`);
    await row.waitFor(WAIT);
    await row.getByText("Walnut Desk Lamp").waitFor(WAIT);
    await screenshot(seller, "seller-orders");
    await row.getByRole("button", { name: /^Process/ }).click();
    await row.getByText("PROCESSING").waitFor(WAIT);
    await row.getByRole("button", { name: /^Fulfil/ }).click();
    await row.getByText("FULFILLED").waitFor(WAIT);
    await screenshot(seller, "seller-fulfilled");
    await customer.getByTestId("order-status").getByText("FULFILLED", { exact: true }).waitFor(WAIT);
    await screenshot(customer, "customer-sees-fulfilled");

    // Fulfilment committed the stock: 8 on hand, 2 shipped.
    const stock = await w.api.until("the stock to be committed", 10_000, async () => {
      const s = (await w.api.call("GET", `/inventory/${productId}`)).body;
      return s.on_hand === 6 && s.reserved === 0 ? s : null;
    });
    assert.equal(stock.available, 6);
    await seller.goto(`/seller/products/${productId}`);
    await seller.getByTestId("on-hand").getByText("6").waitFor(WAIT);
    await customer.context().close();
    await seller.context().close();
  });
});

// Declared last, so it runs after every page above was used.
test("no page had a script error or a CSP violation", () => {
  assert.deepEqual(w.problems, []);
});
