//! The cart end to end, over HTTP, across the real cart, catalog, order, inventory, payment and
//! psp-mock services: filling and changing a cart at the catalog's current prices, bad input,
//! expiry, checkout placing exactly one order per Idempotency-Key, the cart emptied when the
//! order is PAID and kept when it is CANCELLED, and the services it depends on being down.

mod support;

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use support::*;

const VISA: &str = "pm_card_visa";
const DECLINED: &str = "pm_card_chargeDeclined";

/// A request to the cart service as `token`, with an optional JSON body and Idempotency-Key.
async fn cart_call(
    s: &Shop,
    method: Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut req = s.t.http.request(method, s.t.api("cart", path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn ok(res: Response) -> Value {
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn cart(s: &Shop) -> Value {
    ok(cart_call(s, Method::GET, "/cart", Some(&s.customer), None, None).await).await
}

async fn add(s: &Shop, product: &str, quantity: i64) -> Response {
    cart_call(
        s,
        Method::POST,
        "/cart/items",
        Some(&s.customer),
        None,
        Some(json!({"product_id": product, "quantity": quantity})),
    )
    .await
}

async fn set(s: &Shop, product: &str, quantity: i64) -> Response {
    cart_call(
        s,
        Method::PATCH,
        &format!("/cart/items/{product}"),
        Some(&s.customer),
        None,
        Some(json!({"quantity": quantity})),
    )
    .await
}

async fn remove(s: &Shop, product: &str) -> Response {
    cart_call(
        s,
        Method::DELETE,
        &format!("/cart/items/{product}"),
        Some(&s.customer),
        None,
        None,
    )
    .await
}

async fn checkout(s: &Shop, key: &str, payment_method: &str) -> Response {
    cart_call(
        s,
        Method::POST,
        "/cart/checkout",
        Some(&s.customer),
        Some(key),
        Some(json!({"payment_method": payment_method,
            "shipping_address": {"name": "Casey", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}})),
    )
    .await
}

async fn placed(res: Response) -> Value {
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// (product, quantity) of each line, in cart order.
fn lines(cart: &Value) -> Vec<(String, i64)> {
    cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["product_id"].as_str().unwrap().to_owned(),
                l["quantity"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn line<'a>(cart: &'a Value, product: &str) -> &'a Value {
    cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["product_id"] == product)
        .unwrap_or_else(|| panic!("{product} not in {cart}"))
}

/// Waits until the cart's event consumer has handled every event on the bus.
async fn cart_caught_up(s: &Shop) {
    let bus = s.t.bus().await;
    eventually(WAIT, || async {
        let lag = bus.lag().await;
        lag.iter()
            .any(|(consumer, behind)| consumer == "cart" && *behind == 0)
            .then_some(())
    })
    .await;
}

/// Waits until `event_type` for `order` is on the bus.
async fn published(s: &Shop, event_type: &str, order: &str) {
    let bus = s.t.bus().await;
    eventually(WAIT, || async {
        bus.all()
            .await
            .iter()
            .any(|e| e.event_type == event_type && e.aggregate_id == order)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn customers_fill_change_and_empty_their_cart_at_current_prices() {
    let s = Shop::open(&[]).await;
    let a = s.product(2500, 10).await;
    let b = s.product(1000, 10).await;

    let empty = cart(&s).await;
    assert_eq!(empty["items"], json!([]));
    assert_eq!(empty["total_cents"], 0);
    assert!(
        empty["currency"].is_null() && empty["expires_at"].is_null(),
        "{empty}"
    );

    let c = ok(add(&s, &a, 2).await).await;
    assert_eq!(lines(&c), [(a.clone(), 2)]);
    let l = line(&c, &a);
    assert_eq!(l["name"], "Saga Test Widget");
    assert_eq!(
        (&l["price_cents"], &l["line_total_cents"], &l["available"]),
        (&json!(2500), &json!(5000), &json!(true))
    );
    assert_eq!(
        (&c["total_cents"], &c["currency"]),
        (&json!(5000), &json!("USD"))
    );
    assert!(c["expires_at"].is_string(), "{c}");

    // Adding again merges into the line.
    let c = ok(add(&s, &a, 3).await).await;
    assert_eq!(lines(&c), [(a.clone(), 5)]);
    assert_eq!(c["total_cents"], 12500);
    let c = ok(add(&s, &b, 1).await).await;
    assert_eq!(lines(&c), [(a.clone(), 5), (b.clone(), 1)]);
    assert_eq!(c["total_cents"], 13500);
    let c = ok(set(&s, &a, 1).await).await;
    assert_eq!(lines(&c), [(a.clone(), 1), (b.clone(), 1)]);
    assert_eq!(c["total_cents"], 3500);

    // Prices are the catalog's current ones.
    let res =
        s.t.http
            .put(s.t.api("catalog", &format!("/products/{a}")))
            .bearer_auth(&s.seller)
            .json(&json!({"price_cents": 3000}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let c = cart(&s).await;
    assert_eq!(line(&c, &a)["price_cents"], 3000);
    assert_eq!(c["total_cents"], 4000);

    // A product taken off sale stays in sight, unavailable and out of the total.
    let res =
        s.t.http
            .delete(s.t.api("catalog", &format!("/products/{b}")))
            .bearer_auth(&s.seller)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let c = cart(&s).await;
    assert_eq!(lines(&c), [(a.clone(), 1), (b.clone(), 1)]);
    assert_eq!(line(&c, &b)["available"], false);
    assert_eq!(line(&c, &a)["available"], true);
    assert_eq!(c["total_cents"], 3000);

    let c = ok(remove(&s, &b).await).await;
    assert_eq!(lines(&c), [(a.clone(), 1)]);
    let p = problem(remove(&s, &b).await, 404).await;
    assert_eq!(p["code"], "not_found");

    // A retried add with the same Idempotency-Key adds once.
    let retried = || {
        cart_call(
            &s,
            Method::POST,
            "/cart/items",
            Some(&s.customer),
            Some("add-two-more"),
            Some(json!({"product_id": a, "quantity": 2})),
        )
    };
    let first = retried().await;
    assert!(first.headers().get("idempotency-replayed").is_none());
    assert_eq!(lines(&ok(first).await), [(a.clone(), 3)]);
    let again = retried().await;
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(lines(&ok(again).await), [(a.clone(), 3)]);
    assert_eq!(lines(&cart(&s).await), [(a.clone(), 3)]);

    let c = ok(cart_call(&s, Method::DELETE, "/cart", Some(&s.customer), None, None).await).await;
    assert_eq!(c["items"], json!([]));
    let c = cart(&s).await;
    assert_eq!((&c["items"], &c["total_cents"]), (&json!([]), &json!(0)));
    assert!(c["expires_at"].is_null(), "{c}");

    // Carts are per customer.
    ok(add(&s, &a, 1).await).await;
    let (_, other) = s.t.user("CUSTOMER").await;
    let theirs = ok(cart_call(&s, Method::GET, "/cart", Some(&other), None, None).await).await;
    assert_eq!(theirs["items"], json!([]));
    s.t.stop().await;
}

#[tokio::test]
async fn bad_input_and_wrong_callers_are_refused_and_change_nothing() {
    let s = Shop::open(&[("MERCATO_CART_MAX_LINES", "2")]).await;
    let a = s.product(500, 10).await;
    let b = s.product(700, 10).await;
    let c = s.product(900, 10).await;
    ok(add(&s, &a, 1).await).await;
    ok(add(&s, &b, 1).await).await;
    let before = cart(&s).await;

    let p = problem(add(&s, &uuid::Uuid::now_v7().to_string(), 1).await, 422).await;
    assert_eq!(p["code"], "unknown_product");
    for quantity in [0, -3, 1001] {
        let p = problem(add(&s, &a, quantity).await, 422).await;
        assert_eq!(p["errors"][0]["field"], "quantity", "{p}");
    }
    // 1 + 1000 is over the bound too.
    let p = problem(add(&s, &a, 1000).await, 422).await;
    assert_eq!(p["errors"][0]["field"], "quantity", "{p}");
    let p = problem(add(&s, &c, 1).await, 422).await;
    assert_eq!(p["code"], "too_many_lines");
    // Taken off sale.
    let res =
        s.t.http
            .delete(s.t.api("catalog", &format!("/products/{c}")))
            .bearer_auth(&s.seller)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    ok(remove(&s, &b).await).await;
    let p = problem(add(&s, &c, 1).await, 422).await;
    assert_eq!(p["code"], "product_inactive");
    // Another currency than the cart's.
    let res =
        s.t.http
            .post(s.t.api("catalog", "/products"))
            .bearer_auth(&s.seller)
            .json(
                &json!({"sku": "EUR-CART-1", "name": "Euro Widget", "category": "widgets",
                "price_cents": 800, "currency": "EUR"}),
            )
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let eur = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = problem(add(&s, &eur, 1).await, 422).await;
    assert_eq!(p["code"], "currency_mismatch");
    ok(add(&s, &b, 1).await).await;
    assert_eq!(lines(&cart(&s).await), lines(&before));

    // Setting and removing need the line; quantities are bounded there too.
    problem(set(&s, &c, 2).await, 404).await;
    problem(remove(&s, &c).await, 404).await;
    let p = problem(set(&s, &a, 0).await, 422).await;
    assert_eq!(p["errors"][0]["field"], "quantity", "{p}");
    problem(set(&s, &a, 1001).await, 422).await;
    problem(remove(&s, "not-a-uuid").await, 400).await;
    // Bodies that are not what the route takes.
    let res =
        s.t.http
            .post(s.t.api("cart", "/cart/items"))
            .bearer_auth(&s.customer)
            .header("content-type", "application/json")
            .body("{\"product_id\": ")
            .send()
            .await
            .unwrap();
    problem(res, 400).await;
    problem(
        cart_call(
            &s,
            Method::POST,
            "/cart/items",
            Some(&s.customer),
            None,
            Some(json!({"product_id": a})),
        )
        .await,
        422,
    )
    .await;
    problem(
        cart_call(
            &s,
            Method::POST,
            "/cart/items",
            Some(&s.customer),
            None,
            Some(json!({"product_id": "nope", "quantity": 1})),
        )
        .await,
        422,
    )
    .await;
    // Checkout without an Idempotency-Key.
    let res = cart_call(
        &s,
        Method::POST,
        "/cart/checkout",
        Some(&s.customer),
        None,
        Some(json!({"payment_method": VISA})),
    )
    .await;
    assert_eq!(problem(res, 400).await["code"], "idempotency_key_required");

    // Only customers have carts.
    for token in [&s.seller, &s.admin] {
        for (method, path, body) in [
            (Method::GET, "/cart", None),
            (Method::DELETE, "/cart", None),
            (
                Method::POST,
                "/cart/items",
                Some(json!({"product_id": a, "quantity": 1})),
            ),
            (
                Method::POST,
                "/cart/checkout",
                Some(json!({"payment_method": VISA})),
            ),
        ] {
            let res = cart_call(&s, method, path, Some(token), Some("k"), body).await;
            problem(res, 403).await;
        }
    }
    problem(
        cart_call(&s, Method::GET, "/cart", None, None, None).await,
        401,
    )
    .await;
    problem(
        cart_call(&s, Method::GET, "/cart", Some("not.a.token"), None, None).await,
        401,
    )
    .await;
    problem(
        cart_call(
            &s,
            Method::POST,
            "/cart/items",
            None,
            None,
            Some(json!({"product_id": a, "quantity": 1})),
        )
        .await,
        401,
    )
    .await;

    assert_eq!(lines(&cart(&s).await), lines(&before));
    s.t.stop().await;
}

/// An `expires_at` as printed: RFC 3339 UTC with milliseconds, which sorts as it reads.
fn expiry(cart: &Value) -> String {
    cart["expires_at"].as_str().expect("an expiry").to_owned()
}

#[tokio::test]
async fn a_cart_expires_after_its_last_change_and_reading_does_not_extend_it() {
    let s = Shop::open(&[("MERCATO_CART_TTL_SECS", "1")]).await;
    let a = s.product(500, 10).await;
    let first = ok(add(&s, &a, 1).await).await;
    let e1 = expiry(&first);
    let second = ok(add(&s, &a, 1).await).await;
    let e2 = expiry(&second);
    assert!(e2 > e1, "a change sets a later expiry: {e1} then {e2}");
    // Until it expires, every read shows the expiry of the last change.
    eventually(WAIT, || async {
        let c = cart(&s).await;
        if c["items"] == json!([]) {
            assert!(c["expires_at"].is_null(), "{c}");
            return Some(());
        }
        assert_eq!(expiry(&c), e2, "reading moved the expiry");
        None
    })
    .await;
    // A new cart starts from nothing.
    let fresh = ok(add(&s, &a, 1).await).await;
    assert_eq!(lines(&fresh), [(a.clone(), 1)]);
    s.t.stop().await;
}

#[tokio::test]
async fn checkout_places_one_order_per_key_and_the_paid_order_leaves_the_cart() {
    let s = Shop::open(&[]).await;
    let a = s.product(2500, 10).await;
    let b = s.product(1000, 10).await;
    ok(add(&s, &a, 2).await).await;

    let first = checkout(&s, "checkout-1", VISA).await;
    assert!(first.headers().get("idempotency-replayed").is_none());
    let order = placed(first).await;
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total_cents"], 5000);
    assert_eq!(order["items"][0]["product_id"], a);
    assert_eq!(order["items"][0]["quantity"], 2);
    assert_eq!(order["shipping_address"]["city"], "Springfield");
    let id = order["id"].as_str().unwrap().to_owned();

    // The same checkout again: the first answer, and no second order.
    let again = checkout(&s, "checkout-1", VISA).await;
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(placed(again).await["id"], id);
    // The same key for another checkout is refused.
    let p = problem(checkout(&s, "checkout-1", DECLINED).await, 422).await;
    assert_eq!(p["code"], "idempotency_key_reused");

    // Added after checking out: stays when the order's lines leave.
    ok(add(&s, &b, 1).await).await;
    s.status_becomes(&id, "PAID").await;
    let left = eventually(WAIT, || async {
        let c = cart(&s).await;
        (lines(&c) == [(b.clone(), 1)]).then_some(c)
    })
    .await;
    assert_eq!(left["total_cents"], 1000);

    let mine: Value =
        s.t.http
            .get(s.t.api("order", "/orders"))
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()], "exactly one order");
    // A redelivery of every event changes nothing more.
    s.t.bus().await.rewind_all_consumers().await;
    cart_caught_up(&s).await;
    assert_eq!(lines(&cart(&s).await), [(b.clone(), 1)]);
    s.t.stop().await;
}

#[tokio::test]
async fn a_failed_order_keeps_the_cart_for_another_try() {
    let s = Shop::open(&[]).await;
    let a = s.product(1500, 10).await;
    let scarce = s.product(1000, 1).await;

    let p = problem(checkout(&s, "empty", VISA).await, 409).await;
    assert_eq!(p["code"], "cart_empty");

    // The order service's refusals come through as they are; the cart stays.
    ok(add(&s, &scarce, 3).await).await;
    let p = problem(checkout(&s, "too-many", VISA).await, 409).await;
    assert_eq!(p["code"], "insufficient_stock");
    assert!(p["lines"].is_array(), "{p}");
    assert_eq!(lines(&cart(&s).await), [(scarce.clone(), 3)]);
    ok(remove(&s, &scarce).await).await;
    ok(add(&s, &a, 2).await).await;
    let p = problem(checkout(&s, "bad-card", "visa").await, 422).await;
    assert_eq!(p["errors"][0]["field"], "payment_method", "{p}");

    // Declined: the order is cancelled and the cart is as it was.
    let id = placed(checkout(&s, "declined", DECLINED).await).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = s.status_becomes(&id, "CANCELLED").await;
    assert_eq!(o["cancel_reason"], "payment_declined");
    published(&s, "order.cancelled", &id).await;
    cart_caught_up(&s).await;
    assert_eq!(lines(&cart(&s).await), [(a.clone(), 2)]);

    // Another try, another key: paid, and the cart empties.
    let id = placed(checkout(&s, "second-try", VISA).await).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.status_becomes(&id, "PAID").await;
    eventually(WAIT, || async {
        (cart(&s).await["items"] == json!([])).then_some(())
    })
    .await;
    s.t.stop().await;
}

#[tokio::test]
async fn the_services_the_cart_needs_being_down_are_named() {
    // The order service unreachable: 503 naming it, the cart unchanged, and the key free for
    // the retry.
    let s = Shop::open(&[("MERCATO_ORDER_URL", "http://127.0.0.1:9")]).await;
    let a = s.product(1500, 10).await;
    ok(add(&s, &a, 1).await).await;
    let p = problem(checkout(&s, "while-down", VISA).await, 503).await;
    assert_eq!(p["code"], "order_service_unavailable");
    // The failed attempt's claim on the key is released just after it answers (until then a
    // retry hears 409 `idempotency_key_in_use`); then the retry runs again, not a replay.
    eventually(WAIT, || async {
        let res = checkout(&s, "while-down", VISA).await;
        assert!(res.headers().get("idempotency-replayed").is_none());
        if res.status() == StatusCode::CONFLICT {
            assert_eq!(problem(res, 409).await["code"], "idempotency_key_in_use");
            return None;
        }
        let p = problem(res, 503).await;
        assert_eq!(p["code"], "order_service_unavailable");
        Some(())
    })
    .await;
    assert_eq!(lines(&cart(&s).await), [(a.clone(), 1)]);
    s.t.stop().await;

    // The catalog unreachable: an empty cart still shows; anything to look up is a 503 naming
    // the catalog.
    let s = Shop::open(&[("MERCATO_CATALOG_URL", "http://127.0.0.1:9")]).await;
    assert_eq!(cart(&s).await["items"], json!([]));
    let p = problem(add(&s, &uuid::Uuid::now_v7().to_string(), 1).await, 503).await;
    assert_eq!(p["code"], "catalog_unavailable");
    assert!(p["detail"].as_str().unwrap().contains("catalog"), "{p}");
    s.t.stop().await;
}
