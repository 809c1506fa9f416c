//! Chaos scenarios: faults injected into the real services through their chaos admin API, and
//! the claims of the resilience design checked against server-side counts.
//!
//! - The order service's circuit breaker to inventory opens after the threshold and then makes
//!   no call at all (inventory's own fault counter stops), half-opens after its reset time and
//!   closes after successful trials; orders keep being accepted throughout.
//! - The gateway's breaker for a failing service answers 503 fast instead of calling it.
//! - With 20% of answers dropped after the commit on order and inventory, clients retrying with
//!   the same Idempotency-Key get exactly one order, one reservation and one authorization each.
//! - With 30% errors and 3–5 s latency on inventory, every order accepted meanwhile completes
//!   once chaos is off: no duplicate order, no double charge, no oversell.
//!
//! Run on SQLite and the embedded bus by default and on PostgreSQL + NATS + Redis when the
//! `MERCATO_TEST_*` variables are set (CI runs both).

mod support;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::{eventually, problem, Shop, TestStack, ADMIN_EMAIL, ADMIN_PASSWORD};

/// `support::metric` of one service of the stack.
async fn metric(t: &TestStack, service: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    // The gateway's metrics are on its operator port.
    let at = if service == "gateway" {
        "gateway-ops"
    } else {
        service
    };
    support::metric(&t.http, &t.base(at), name, labels).await
}

async fn set_chaos(s: &Shop, service: &str, profile: Value) {
    let res =
        s.t.http
            .put(s.t.api(service, "/admin/chaos"))
            .bearer_auth(&s.admin)
            .json(&profile)
            .send()
            .await
            .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
}

async fn clear_chaos(s: &Shop, service: &str) {
    let res =
        s.t.http
            .delete(s.t.api(service, "/admin/chaos"))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

/// A complete answer: the status and the whole body, read to its end.
struct Answer {
    status: StatusCode,
    body: Value,
    replayed: bool,
}

/// Sends the request built by `build` until a complete answer that is not a 5xx or a 429
/// arrives, as a careful client does: a broken connection or body, or a server error, says
/// nothing about whether the request took effect, so the same request (with the same
/// Idempotency-Key) goes again. Returns the answer and the attempts it took.
async fn until_answered<F>(build: F) -> (Answer, u32)
where
    F: Fn() -> reqwest::RequestBuilder,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        assert!(Instant::now() < deadline, "no complete answer in 60 s");
        attempts += 1;
        if let Ok(res) = build().send().await {
            let status = res.status();
            let replayed = res.headers().contains_key("idempotency-replayed");
            if let Ok(bytes) = res.bytes().await {
                if !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS {
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    return (
                        Answer {
                            status,
                            body,
                            replayed,
                        },
                        attempts,
                    );
                }
            }
        }
        // A client's backoff between tries, not a wait for something to happen.
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempts.min(10)))).await;
    }
}

fn order_body(items: Value) -> Value {
    json!({"items": items, "payment_method": "pm_card_visa",
        "shipping_address": {"name": "Casey", "line1": "1 Main St", "city": "Springfield",
            "postal_code": "12345", "country": "US"}})
}

/// Places one order as `token` with its own key, retrying the key until answered.
async fn place_keyed(s: &Shop, token: &str, items: Value) -> (Answer, u32, String) {
    let key = uuid::Uuid::new_v4().to_string();
    let body = order_body(items);
    let (answer, attempts) = until_answered(|| {
        s.t.http
            .post(s.t.api("order", "/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", &key)
            .json(&body)
    })
    .await;
    (answer, attempts, key)
}

/// Every order `token` can see (a customer: their own), by id.
async fn orders_of(s: &Shop, token: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}?limit=100", s.t.api("order", "/orders"));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value =
            s.t.http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        for o in page["items"].as_array().expect("a page of orders") {
            out.insert(o["id"].as_str().unwrap().to_owned(), o.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Every payment of an order (there must be at most one).
async fn payments_of(s: &Shop, order: &str) -> Vec<Value> {
    let v: Value =
        s.t.http
            .get(format!(
                "{}?order_id={order}",
                s.t.api("payment", "/payments")
            ))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    v.get("items")
        .cloned()
        .unwrap_or(v)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until every order is out of PENDING/CONFIRMED and returns the final ones.
async fn all_settled(s: &Shop, token: &str, expected: usize) -> BTreeMap<String, Value> {
    eventually(Duration::from_secs(60), || async {
        let orders = orders_of(s, token).await;
        let settled = orders.len() == expected
            && orders
                .values()
                .all(|o| !matches!(o["status"].as_str(), Some("PENDING" | "CONFIRMED")));
        settled.then_some(orders)
    })
    .await
}

#[tokio::test]
async fn the_pre_check_breaker_opens_stops_calling_then_half_opens_and_closes() {
    let s = Shop::open(&[("MERCATO_INVENTORY_BREAKER_RESET_MS", "1000")]).await;
    let product = s.product(500, 1000).await;
    let line = json!([{"product_id": product, "quantity": 1}]);
    let calls = |kind: &'static str| {
        let t = &s.t;
        async move { metric(t, "inventory", "chaos_events_total", &[("kind", kind)]).await }
    };
    let breaker = || {
        metric(
            &s.t,
            "order",
            "circuit_breaker_state",
            &[("dependency", "inventory")],
        )
    };
    assert_eq!(breaker().await, 0.0);

    // Every stock check fails; the orders themselves do not.
    set_chaos(
        &s,
        "inventory",
        json!({"error_rate": 1.0, "routes": ["/api/v1/inventory/check"]}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let res = s.order(line.clone(), "pm_card_visa").await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let o: Value = res.json().await.unwrap();
        assert_eq!(o["stock_check"], "deferred");
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    // 10 failures of 10 calls: the threshold (50% of at least 10) is passed.
    assert_eq!(
        calls("error").await,
        10.0,
        "each pre-check reached inventory"
    );
    assert_eq!(breaker().await, 1.0, "open");

    // Open: orders are accepted at once, and inventory is not called at all.
    for _ in 0..5 {
        let started = Instant::now();
        let res = s.order(line.clone(), "pm_card_visa").await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let o: Value = res.json().await.unwrap();
        assert_eq!(o["stock_check"], "deferred");
        ids.push(o["id"].as_str().unwrap().to_owned());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(calls("error").await, 10.0, "no call while open");
    assert_eq!(
        metric(
            &s.t,
            "order",
            "http_client_requests_total",
            &[("dependency", "inventory"), ("outcome", "breaker_open")]
        )
        .await,
        5.0
    );

    // Inventory recovers; after the reset time trial calls go through and close the breaker.
    clear_chaos(&s, "inventory").await;
    let checked_before = metric(
        &s.t,
        "order",
        "http_client_requests_total",
        &[("dependency", "inventory"), ("outcome", "ok")],
    )
    .await;
    // Polled with orders: each one placed before the reset is accepted deferred, the first
    // after it is a trial call.
    let deadline = Instant::now() + Duration::from_secs(15);
    while breaker().await != 0.0 {
        assert!(Instant::now() < deadline, "the breaker never closed");
        let res = s.order(line.clone(), "pm_card_visa").await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let o: Value = res.json().await.unwrap();
        ids.push(o["id"].as_str().unwrap().to_owned());
        // The polling interval, so the wait costs a dozen orders rather than hundreds.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let checked = metric(
        &s.t,
        "order",
        "http_client_requests_total",
        &[("dependency", "inventory"), ("outcome", "ok")],
    )
    .await;
    assert!(
        checked - checked_before >= 3.0,
        "closed after its trial calls succeeded ({checked_before} → {checked})"
    );
    let o = s.order(line.clone(), "pm_card_visa").await;
    let o: Value = o.json().await.unwrap();
    assert_eq!(o["stock_check"], "passed", "closed: checks are made again");
    ids.push(o["id"].as_str().unwrap().to_owned());

    // The deferred orders were never at risk: the saga completes every one.
    for id in &ids {
        s.status_becomes(id, "PAID").await;
    }
    s.t.stop().await;
}

#[tokio::test]
async fn the_gateway_breaker_answers_503_without_calling_a_failing_service() {
    let s = Shop::open(&[]).await;
    let product = s.product(500, 10).await;
    set_chaos(
        &s,
        "inventory",
        json!({"error_rate": 1.0, "routes": ["/api/v1/inventory/"]}),
    )
    .await;
    let through_gateway = || {
        s.t.http
            .get(s.t.api("gateway", &format!("/inventory/{product}")))
            .send()
    };
    for _ in 0..10 {
        let res = through_gateway().await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.json::<Value>().await.unwrap()["code"], "chaos_error");
    }
    let failed = metric(
        &s.t,
        "inventory",
        "chaos_events_total",
        &[("kind", "error")],
    )
    .await;
    assert_eq!(failed, 10.0);
    let res = through_gateway().await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    let p = problem(res, 503).await;
    assert_eq!(p["code"], "upstream_unavailable");
    assert_eq!(p["service"], "inventory");
    assert_eq!(p["reason"], "breaker_open");
    assert_eq!(
        metric(
            &s.t,
            "inventory",
            "chaos_events_total",
            &[("kind", "error")]
        )
        .await,
        failed,
        "the open breaker made no call"
    );
    assert_eq!(
        metric(
            &s.t,
            "gateway",
            "circuit_breaker_state",
            &[("dependency", "inventory")]
        )
        .await,
        1.0
    );
    // Other services are not affected.
    let res =
        s.t.http
            .get(s.t.api("gateway", &format!("/products/{product}")))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.t.stop().await;
}

#[tokio::test]
async fn lost_answers_retried_with_the_same_key_never_duplicate_anything() {
    let s = Shop::open(&[]).await;
    let product = s.product(700, 1000).await;
    let mut customers = Vec::new();
    for _ in 0..3 {
        customers.push(s.t.user("CUSTOMER").await.1);
    }
    for service in ["order", "inventory"] {
        set_chaos(&s, service, json!({"partial_failure_rate": 0.2})).await;
    }
    const EACH: usize = 8;
    let runs = customers.iter().enumerate().map(|(c, token)| {
        let s = &s;
        let product = &product;
        async move {
            let mut placed = Vec::new();
            for i in 0..EACH {
                let quantity = 1 + ((c + i) % 3) as i64;
                let (answer, attempts, key) = place_keyed(
                    s,
                    token,
                    json!([{"product_id": product, "quantity": quantity}]),
                )
                .await;
                assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
                // An answer after a lost one is the first one replayed.
                if attempts > 1 {
                    assert!(answer.replayed || answer.body["id"].is_string());
                }
                placed.push((
                    key,
                    answer.body["id"].as_str().unwrap().to_owned(),
                    quantity,
                    attempts,
                ));
            }
            placed
        }
    });
    let placed: Vec<Vec<(String, String, i64, u32)>> = join_all(runs).await;
    let lost = metric(
        &s.t,
        "order",
        "chaos_events_total",
        &[("kind", "partial_failure")],
    )
    .await;
    let attempts: u32 = placed.iter().flatten().map(|p| p.3).sum();
    println!(
        "partial failures: {} orders in {attempts} attempts, {lost} answers dropped by order",
        placed.iter().flatten().count()
    );
    assert!(
        lost > 0.0,
        "chaos dropped no answer: the test proved nothing"
    );
    for service in ["order", "inventory"] {
        clear_chaos(&s, service).await;
    }

    // Exactly the orders the clients meant, once each, every one paid once.
    let mut reserved = 0;
    for (token, mine) in customers.iter().zip(&placed) {
        let seen = all_settled(&s, token, EACH).await;
        let meant: BTreeSet<&String> = mine.iter().map(|p| &p.1).collect();
        assert_eq!(meant.len(), EACH, "one order per key");
        assert_eq!(seen.keys().collect::<BTreeSet<_>>(), meant);
        for (_, id, quantity, _) in mine {
            assert_eq!(seen[id]["status"], "PAID", "{}", seen[id]);
            assert_eq!(payments_of(&s, id).await.len(), 1);
            reserved += quantity;
        }
    }
    let stock = s.stock(&product).await;
    assert_eq!(stock["reserved"], reserved, "one reservation per order");
    assert_eq!(stock["on_hand"], 1000);
    assert_eq!(
        s.psp_stats().await["authorizations"],
        3 * EACH,
        "one authorization per order"
    );
    s.t.stop().await;
}

#[tokio::test]
async fn orders_accepted_while_inventory_fails_and_crawls_all_complete_without_harm() {
    let s = Shop::open(&[("MERCATO_INVENTORY_BREAKER_RESET_MS", "2000")]).await;
    let plenty = s.product(300, 1000).await;
    let scarce = s.product(900, 5).await;
    set_chaos(
        &s,
        "inventory",
        json!({"error_rate": 0.3, "latency_ms": 3000, "latency_max_ms": 5000, "latency_rate": 1.0}),
    )
    .await;
    const CLIENTS: usize = 4;
    const EACH: usize = 5;
    let runs = (0..CLIENTS).map(|c| {
        let s = &s;
        let (plenty, scarce) = (&plenty, &scarce);
        async move {
            let mut placed = Vec::new();
            for i in 0..EACH {
                let product = if (c + i) % 2 == 0 { plenty } else { scarce };
                let (answer, _, _) = place_keyed(
                    s,
                    &s.customer,
                    json!([{"product_id": product, "quantity": 1}]),
                )
                .await;
                assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
                placed.push((
                    answer.body["id"].as_str().unwrap().to_owned(),
                    product.clone(),
                    answer.body["stock_check"].as_str().unwrap().to_owned(),
                ));
            }
            placed
        }
    });
    let placed: Vec<(String, String, String)> =
        join_all(runs).await.into_iter().flatten().collect();
    let injected = metric(
        &s.t,
        "inventory",
        "chaos_events_total",
        &[("kind", "latency")],
    )
    .await;
    let timeouts = metric(
        &s.t,
        "order",
        "http_client_requests_total",
        &[("dependency", "inventory"), ("outcome", "timeout")],
    )
    .await;
    let deferred = placed.iter().filter(|p| p.2 == "deferred").count();
    println!(
        "inventory chaos: {} orders, {deferred} deferred, {injected} delays injected, {timeouts} pre-check timeouts",
        placed.len()
    );
    assert!(injected > 0.0 && timeouts > 0.0);
    assert!(deferred > 0, "some pre-checks could not be made");
    clear_chaos(&s, "inventory").await;

    // Every order completes: scarce ones are paid while stock lasts, the rest cancelled.
    let orders = all_settled(&s, &s.customer, CLIENTS * EACH).await;
    let ids: BTreeSet<&String> = placed.iter().map(|p| &p.0).collect();
    assert_eq!(ids.len(), placed.len(), "no duplicate order");
    assert_eq!(orders.keys().collect::<BTreeSet<_>>(), ids);
    let (mut paid_plenty, mut paid_scarce, mut scarce_orders) = (0, 0, 0);
    for (id, product, _) in &placed {
        let o = &orders[id];
        if product == &scarce {
            scarce_orders += 1;
        }
        match (o["status"].as_str().unwrap(), product == &scarce) {
            ("PAID", false) => paid_plenty += 1,
            ("PAID", true) => paid_scarce += 1,
            ("CANCELLED", true) => assert_eq!(o["cancel_reason"], "out_of_stock", "{o}"),
            (other, _) => panic!("order {id} ended {other}: {o}"),
        }
        let payments = payments_of(&s, id).await;
        assert!(payments.len() <= 1, "one payment at most: {payments:?}");
    }
    assert_eq!(paid_plenty, placed.len() - scarce_orders);
    assert_eq!(
        paid_scarce,
        scarce_orders.min(5),
        "stock sold while it lasted"
    );
    let scarce_stock = s.stock(&scarce).await;
    assert_eq!(scarce_stock["reserved"], paid_scarce, "no oversell");
    assert!(scarce_stock["reserved"].as_i64() <= scarce_stock["on_hand"].as_i64());
    assert_eq!(s.stock(&plenty).await["reserved"], paid_plenty);
    assert_eq!(
        s.psp_stats().await["authorizations"],
        paid_plenty + paid_scarce,
        "no double charge"
    );
    s.t.stop().await;
}

#[tokio::test]
async fn chaos_is_switched_through_the_gateway_admin_only_and_shows_in_metrics() {
    let s = Shop::open(&[]).await;
    let url = s.t.api("gateway", "/admin/inventory/chaos");
    let res = s.t.http.get(&url).send().await.unwrap();
    problem(res, 401).await;
    let res =
        s.t.http
            .get(&url)
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap();
    problem(res, 403).await;
    let res =
        s.t.http
            .put(&url)
            .bearer_auth(&s.admin)
            .json(&json!({"error_rate": 2, "latency_ms": 999999, "routes": ["nope"]}))
            .send()
            .await
            .unwrap();
    let p = problem(res, 422).await;
    let fields: BTreeSet<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["error_rate", "latency_ms", "routes"])
    );
    let res =
        s.t.http
            .put(&url)
            .bearer_auth(&s.admin)
            .json(&json!({"error_rate": 1, "bogus": 1}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status().as_u16() / 100, 4, "unknown fields are refused");

    let res =
        s.t.http
            .put(&url)
            .bearer_auth(&s.admin)
            .json(&json!({"error_rate": 1.0, "routes": ["/api/v1/inventory"]}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let view: Value = res.json().await.unwrap();
    assert_eq!(view["enabled"], true);
    assert_eq!(view["error_rate"], 1.0);
    assert_eq!(metric(&s.t, "inventory", "chaos_enabled", &[]).await, 1.0);
    assert_eq!(metric(&s.t, "order", "chaos_enabled", &[]).await, 0.0);
    // Health and metrics are never touched by chaos.
    let res =
        s.t.http
            .get(format!("{}/health/ready", s.t.base("inventory")))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res =
        s.t.http
            .get(s.t.api("inventory", "/inventory"))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        metric(
            &s.t,
            "inventory",
            "chaos_events_total",
            &[("kind", "error")]
        )
        .await,
        1.0
    );

    let res =
        s.t.http
            .delete(&url)
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(metric(&s.t, "inventory", "chaos_enabled", &[]).await, 0.0);
    let view: Value =
        s.t.http
            .get(&url)
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(view["enabled"], false);

    // The gateway's own switch.
    let res =
        s.t.http
            .get(s.t.api("gateway", "/admin/chaos"))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.t.stop().await;
}

#[tokio::test]
async fn chaos_mode_starts_every_service_with_five_percent_errors() {
    let t = TestStack::start_with(&[("CHAOS_MODE", "true")]).await;
    // One request in twenty fails, logins included: ask like a careful client.
    let login = until_answered(|| {
        t.http
            .post(t.api("auth", "/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
    })
    .await
    .0;
    assert_eq!(login.status, StatusCode::OK);
    let admin = login.body["access_token"].as_str().unwrap().to_owned();
    for service in [
        "auth",
        "catalog",
        "inventory",
        "order",
        "payment",
        "cart",
        "gateway",
    ] {
        let view = until_answered(|| {
            t.http
                .get(t.api(service, "/admin/chaos"))
                .bearer_auth(&admin)
        })
        .await
        .0
        .body;
        assert_eq!(view["enabled"], true, "{service}: {view}");
        assert_eq!(view["error_rate"], 0.05, "{service}");
        assert_eq!(metric(&t, service, "chaos_enabled", &[]).await, 1.0);
    }
    t.stop().await;
}

#[tokio::test]
async fn a_misbehaving_processor_never_charges_twice() {
    let s = Shop::open(&[
        ("MERCATO_PSP_TIMEOUT_MS", "400"),
        ("MERCATO_PSP_RETRY_MAX_MS", "300"),
        ("MERCATO_PROCESSOR_BREAKER_RESET_MS", "300"),
    ])
    .await;
    let product = s.product(1200, 100).await;
    let psp = s.t.base("psp-mock");
    // Late answers (the call is done, the answer arrives after the caller gave up), 503s,
    // every webhook twice, and webhooks held and delivered newest first.
    let res =
        s.t.http
            .put(format!("{psp}/v1/test/chaos"))
            .json(
                &json!({"timeout_rate": 0.3, "timeout_ms": 800, "error_rate": 0.3,
            "duplicate_webhook_rate": 1.0, "reorder_webhooks": true}),
            )
            .send()
            .await
            .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );

    let mut paid_by_answer = Vec::new();
    for _ in 0..6 {
        paid_by_answer.push(s.place(&product, 1, "pm_card_visa").await);
    }
    let mut paid_by_webhook = Vec::new();
    for _ in 0..3 {
        paid_by_webhook.push(s.place(&product, 1, "pm_card_pending").await);
    }
    // Pending payments are settled by the processor's webhooks, which arrive twice each.
    for id in &paid_by_webhook {
        let pay = eventually(WAIT_LONG, || async {
            s.payment(id)
                .await
                .filter(|p| p["provider_ref"].is_string())
        })
        .await;
        let settle = format!(
            "{psp}/v1/test/payments/{}/settle",
            pay["provider_ref"].as_str().unwrap()
        );
        let res =
            s.t.http
                .post(settle)
                .json(&json!({"outcome": "succeeded"}))
                .send()
                .await
                .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    for id in paid_by_answer.iter().chain(&paid_by_webhook) {
        let o = eventually(WAIT_LONG, || async {
            let o = s.get_order(id).await;
            (o["status"] == "PAID").then_some(o)
        })
        .await;
        assert!(o["waiting_for"].is_null(), "{o}");
        let payments = payments_of(&s, id).await;
        assert_eq!(payments.len(), 1, "{payments:?}");
        assert_eq!(payments[0]["status"], "AUTHORIZED");
    }
    let stats = s.psp_stats().await;
    let chaos = |kind: &'static str| {
        let t = &s.t;
        async move { metric(t, "psp-mock", "chaos_events_total", &[("kind", kind)]).await }
    };
    println!(
        "processor chaos: {stats}, {} late answers, {} 503s, {} duplicated webhooks",
        chaos("timeout").await,
        chaos("server_error").await,
        chaos("webhook_duplicate").await
    );
    assert_eq!(
        stats["authorizations"], 9,
        "one authorization per order: {stats}"
    );
    assert!(chaos("webhook_duplicate").await >= 3.0);
    assert!(
        chaos("timeout").await + chaos("server_error").await > 0.0,
        "the processor misbehaved at least once"
    );
    assert_eq!(s.stock(&product).await["reserved"], 9);
    s.t.stop().await;
}

/// The longest a saga step may take under chaos (retries with backoff included).
const WAIT_LONG: Duration = Duration::from_secs(60);
