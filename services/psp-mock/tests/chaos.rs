//! Processor chaos over real HTTP: each fault psp-mock can inject, and what it may not break —
//! a timed-out or refused request retried with its key authorizes exactly once, and a
//! duplicated or reordered webhook still carries its one event id. Rates are 0 or 1 so every
//! outcome is certain; waits poll against a deadline.

mod support;

use mercato_kit::testing::eventually;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

const CHAOS: &str = "/v1/test/chaos";
const HTTP_CHAOS: &str = "/v1/test/chaos/http";

async fn set_chaos(psp: &Psp, profile: Value) -> Value {
    let (status, body) = read(psp.put(CHAOS, profile).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn events(psp: &Psp, kind: &str) -> f64 {
    psp.metric("chaos_events_total", &format!("kind=\"{kind}\""))
        .await
        .unwrap_or(0.0)
}

async fn chaos_enabled(psp: &Psp) -> f64 {
    psp.metric("chaos_enabled", "")
        .await
        .expect("chaos_enabled is exported")
}

/// The id of a pending payment, settled as succeeded (which queues its webhook).
async fn settle_pending(psp: &Psp, key: &str) -> String {
    let (status, pending) = read(psp.authorize(key, "pm_card_pending", 500).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    let id = pending["id"].as_str().unwrap().to_owned();
    let (status, settled) = read(
        psp.post(
            &format!("/v1/test/payments/{id}/settle"),
            None,
            json!({"outcome": "succeeded"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{settled}");
    id
}

fn event_of(d: &Delivery) -> Value {
    signature::verify(SECRET.as_bytes(), &d.signature, &d.body, now(), 300)
        .unwrap_or_else(|e| panic!("{e}: {}", d.signature));
    serde_json::from_slice(&d.body).unwrap()
}

#[tokio::test]
async fn a_timed_out_authorization_is_done_and_replayed_to_the_retry() {
    let psp = start(None).await;
    assert_eq!(chaos_enabled(&psp).await, 0.0);
    // Every kind is exported from zero, so a rate over it exists before the first fault.
    for kind in [
        "timeout",
        "server_error",
        "webhook_duplicate",
        "webhook_reorder",
    ] {
        let zero = psp
            .metric("chaos_events_total", &format!("kind=\"{kind}\""))
            .await;
        assert_eq!(zero, Some(0.0), "{kind}");
    }
    let view = set_chaos(&psp, json!({"timeout_rate": 1, "timeout_ms": 300})).await;
    assert_eq!(
        view,
        json!({"enabled": true, "timeout_rate": 1.0, "timeout_ms": 300, "error_rate": 0.0,
               "duplicate_webhook_rate": 0.0, "reorder_webhooks": false, "reorder_window_ms": 200})
    );
    assert_eq!(chaos_enabled(&psp).await, 1.0);

    // A caller that waits 100 ms gives up without an answer...
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = impatient
        .post(format!("{}/v1/authorizations", psp.url))
        .header("Idempotency-Key", "k-timeout")
        .json(&json!({"amount_cents": 1500, "currency": "USD",
                      "payment_method": "pm_card_visa", "reference": "order-42"}))
        .send()
        .await
        .expect_err("the answer is held past the caller's timeout");
    assert!(err.is_timeout(), "{err}");
    // ...but the processor authorized.
    eventually(WAIT, || async {
        (psp.stats().await["authorizations"] == 1).then_some(())
    })
    .await;

    // The retry with the same key is held as well, and replays the one authorization.
    let started = Instant::now();
    let held = psp.authorize("k-timeout", "pm_card_visa", 1500).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(held.headers()["idempotency-replayed"], "true");
    let (status, payment) = read(held).await;
    assert_eq!(
        (status, payment["status"].as_str()),
        (StatusCode::CREATED, Some("authorized")),
        "{payment}"
    );

    // With chaos off the key still replays the same payment, at once.
    assert_eq!(psp.delete(CHAOS).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(chaos_enabled(&psp).await, 0.0);
    let (_, view) = read(psp.get(CHAOS).await).await;
    assert_eq!(view["enabled"], false, "{view}");
    let again = psp.authorize("k-timeout", "pm_card_visa", 1500).await;
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    let (status, replay) = read(again).await;
    assert_eq!((status, &replay), (StatusCode::CREATED, &payment));
    let stats = psp.stats().await;
    assert_eq!(stats["authorizations"], 1, "{stats}");
    assert_eq!(stats["authorization_attempts"], 3, "{stats}");
    assert_eq!(events(&psp, "timeout").await, 2.0);
}

#[tokio::test]
async fn a_server_error_does_nothing_and_the_retry_authorizes_once() {
    let psp = start(None).await;
    let (_, earlier) = read(psp.authorize("k-earlier", "pm_card_visa", 800).await).await;
    let earlier = earlier["id"].as_str().unwrap().to_owned();
    set_chaos(&psp, json!({"error_rate": 1})).await;

    let body = problem(
        psp.authorize("k-503", "pm_card_visa", 1200).await,
        503,
        "processor_unavailable",
    )
    .await;
    assert_eq!(body["retryable"], true, "{body}");
    problem(
        psp.post(
            &format!("/v1/authorizations/{earlier}/capture"),
            Some("cap-503"),
            json!({}),
        )
        .await,
        503,
        "processor_unavailable",
    )
    .await;
    // Nothing happened: no new payment, no capture, and the keys are still free.
    let stats = psp.stats().await;
    assert_eq!(
        (
            stats["authorizations"].as_i64(),
            stats["captures"].as_i64(),
            stats["authorization_attempts"].as_i64()
        ),
        (Some(1), Some(0), Some(2)),
        "{stats}"
    );
    // Tokenization and the test controls are not the payment API: chaos leaves them alone.
    let (status, _) = read(
        psp.post(
            "/v1/payment_methods",
            None,
            json!({"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    assert_eq!(psp.delete(CHAOS).await.status(), StatusCode::NO_CONTENT);
    let first = psp.authorize("k-503", "pm_card_visa", 1200).await;
    assert!(
        first.headers().get("idempotency-replayed").is_none(),
        "the refused request was never recorded under its key"
    );
    let (status, payment) = read(first).await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    let (status, _) = read(
        psp.post(
            &format!("/v1/authorizations/{earlier}/capture"),
            Some("cap-503"),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let stats = psp.stats().await;
    assert_eq!(
        (stats["authorizations"].as_i64(), stats["captures"].as_i64()),
        (Some(2), Some(1)),
        "exactly one payment for the key that was refused: {stats}"
    );
    assert_eq!(events(&psp, "server_error").await, 2.0);
}

#[tokio::test]
async fn a_duplicated_webhook_arrives_twice_with_one_event_id() {
    let (hook_url, mut deliveries, hook_stop) = receiver(0).await;
    let psp = start(Some(&hook_url)).await;
    set_chaos(&psp, json!({"duplicate_webhook_rate": 1})).await;
    let id = settle_pending(&psp, "k-dup").await;

    let first = event_of(&next_delivery(&mut deliveries).await);
    let second = event_of(&next_delivery(&mut deliveries).await);
    assert_eq!(first, second, "the same event, body and all");
    assert_eq!(first["data"]["provider_ref"], id.as_str());
    assert!(first["id"].as_str().unwrap().starts_with("evt_"), "{first}");
    eventually(WAIT, || async {
        (psp.stats().await["webhooks_sent"] == 2).then_some(())
    })
    .await;
    assert_eq!(events(&psp, "webhook_duplicate").await, 1.0);
    hook_stop.cancel();
}

#[tokio::test]
async fn reordered_webhooks_arrive_newest_first() {
    let (hook_url, mut deliveries, hook_stop) = receiver(0).await;
    let psp = start(Some(&hook_url)).await;
    // A window long enough that the three settlements below are held together.
    set_chaos(
        &psp,
        json!({"reorder_webhooks": true, "reorder_window_ms": 1000}),
    )
    .await;
    let mut settled = Vec::new();
    for n in 0..3 {
        settled.push(settle_pending(&psp, &format!("k-reorder-{n}")).await);
    }
    let mut arrived = Vec::new();
    for _ in 0..3 {
        let event = event_of(&next_delivery(&mut deliveries).await);
        arrived.push(event["data"]["provider_ref"].as_str().unwrap().to_owned());
    }
    let position = |id: &String| settled.iter().position(|s| s == id).unwrap();
    let order: Vec<usize> = arrived.iter().map(position).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2], "every event once: {order:?}");
    assert!(
        order.windows(2).any(|w| w[0] > w[1]),
        "settled in order, delivered in order {order:?}"
    );
    assert!(events(&psp, "webhook_reorder").await >= 2.0);
    hook_stop.cancel();
}

#[tokio::test]
async fn bad_profiles_are_refused_naming_each_field() {
    let psp = start(None).await;
    let body = problem(
        psp.put(
            CHAOS,
            json!({"timeout_rate": 1.5, "timeout_ms": 120001, "error_rate": -1,
                   "duplicate_webhook_rate": 2, "reorder_window_ms": 0,
                   "routes": ["/v1/payment_methods"]}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in [
        "timeout_rate",
        "timeout_ms",
        "error_rate",
        "duplicate_webhook_rate",
        "reorder_window_ms",
        "routes",
    ] {
        assert!(fields.contains(&field), "{field} missing from {body}");
    }
    let body = problem(
        psp.put(CHAOS, json!({"timeout_rate": 0.1, "latency_ms": 5}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("latency_ms"),
        "{body}"
    );
    problem(
        psp.put(CHAOS, json!({"reorder_webhooks": 0.5})).await,
        422,
        "validation_failed",
    )
    .await;
    // The generic profile has its own checks, and may not cover the chaos controls.
    let body = problem(
        psp.put(HTTP_CHAOS, json!({"error_rate": 2})).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "error_rate", "{body}");
    let body = problem(
        psp.put(HTTP_CHAOS, json!({"error_rate": 1, "routes": ["/v1"]}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "routes", "{body}");
    // Nothing was switched on.
    let (_, view) = read(psp.get(CHAOS).await).await;
    assert_eq!(view["enabled"], false, "{view}");
    let (_, view) = read(psp.get(HTTP_CHAOS).await).await;
    assert_eq!(view["enabled"], false, "{view}");
    assert_eq!(chaos_enabled(&psp).await, 0.0);
}

#[tokio::test]
async fn the_generic_profile_spares_the_test_controls() {
    let psp = start(None).await;
    let (status, view) = read(psp.put(HTTP_CHAOS, json!({"error_rate": 1})).await).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["enabled"], true, "{view}");
    assert_eq!(
        view["routes"],
        json!(["/v1/payment_methods", "/v1/authorizations"])
    );
    assert_eq!(chaos_enabled(&psp).await, 1.0);
    problem(
        psp.authorize("k-generic", "pm_card_visa", 100).await,
        500,
        "chaos_error",
    )
    .await;
    // The controls and counters answer, and switch it off.
    let (status, _) = read(psp.get("/v1/test/stats").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        psp.delete(HTTP_CHAOS).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(chaos_enabled(&psp).await, 0.0);
    let (status, _) = read(psp.authorize("k-generic", "pm_card_visa", 100).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(events(&psp, "error").await, 1.0);
}

#[tokio::test]
async fn profiles_from_the_environment_apply_from_the_start() {
    let psp = start_with(
        None,
        &[
            ("MERCATO_PSP_CHAOS", r#"{"error_rate": 1}"#),
            ("CHAOS_MODE", "true"),
        ],
    )
    .await;
    assert_eq!(chaos_enabled(&psp).await, 1.0);
    let (_, view) = read(psp.get(CHAOS).await).await;
    assert_eq!(
        (view["enabled"].as_bool(), view["error_rate"].as_f64()),
        (Some(true), Some(1.0)),
        "{view}"
    );
    // CHAOS_MODE's generic profile is kept to the processor's API too.
    let (_, generic) = read(psp.get(HTTP_CHAOS).await).await;
    assert_eq!(
        (generic["error_rate"].as_f64(), &generic["routes"]),
        (
            Some(0.05),
            &json!(["/v1/payment_methods", "/v1/authorizations"])
        ),
        "{generic}"
    );
    // 503 from the processor profile, or now and then the generic profile's 500 first.
    let refused = psp.authorize("k-env", "pm_card_visa", 100).await;
    assert!(refused.status().is_server_error(), "{:?}", refused.status());
    assert_eq!(psp.stats().await["authorizations"], 0);
    // Switching the processor profile off leaves the generic one on: the gauge stays up.
    assert_eq!(psp.delete(CHAOS).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(chaos_enabled(&psp).await, 1.0);
    assert_eq!(
        psp.delete(HTTP_CHAOS).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(chaos_enabled(&psp).await, 0.0);
}
