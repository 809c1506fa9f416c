//! The processor over real HTTP, as the payment service will see it: the service runs on
//! 127.0.0.1 port 0, webhooks go to a small receiver started per test, and every wait is a
//! channel with a timeout.

mod support;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn the_four_test_cards_tokenize_to_their_tokens() {
    let psp = start(None).await;
    for (number, token) in [
        ("4242424242424242", "pm_card_visa"),
        ("4000000000000002", "pm_card_chargeDeclined"),
        (
            "4000000000009995",
            "pm_card_chargeDeclinedInsufficientFunds",
        ),
        ("4000000000000119", "pm_card_processingError"),
    ] {
        let res = psp
            .post(
                "/v1/payment_methods",
                None,
                json!({"card_number": number, "exp_month": 12, "exp_year": 2040, "cvc": "123"}),
            )
            .await;
        let (status, body) = read(res).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            body,
            json!({"id": token, "brand": "visa", "last4": &number[12..]})
        );
    }
}

#[tokio::test]
async fn any_other_valid_card_gets_a_fresh_token_that_approves() {
    let psp = start(None).await;
    let card = json!({"card_number": "5555 5555 5555 4444", "exp_month": 1, "exp_year": 2040, "cvc": "999"});
    let (_, a) = read(psp.post("/v1/payment_methods", None, card.clone()).await).await;
    let (_, b) = read(psp.post("/v1/payment_methods", None, card).await).await;
    let token = a["id"].as_str().unwrap();
    assert!(token.starts_with("pm_") && token.len() == 35, "{a}");
    assert_ne!(a["id"], b["id"], "each tokenization is a new token");
    assert_eq!(
        (a["brand"].as_str(), a["last4"].as_str()),
        (Some("mastercard"), Some("4444"))
    );
    assert!(!a.to_string().contains("5555555555554444"));
    let (status, body) = read(psp.authorize("k-generated", token, 700).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "authorized");
}

#[tokio::test]
async fn visa_authorize_capture_and_refund_in_two_parts() {
    let psp = start(None).await;
    let (status, auth) = read(psp.authorize("k-visa", "pm_card_visa", 5000).await).await;
    assert_eq!(status, StatusCode::CREATED, "{auth}");
    let id = auth["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pi_") && id.len() == 35, "{id}");
    assert_eq!(
        auth,
        json!({"id": id, "status": "authorized", "amount_cents": 5000, "currency": "USD",
               "captured_cents": 0, "refunded_cents": 0, "reference": "order-42"})
    );

    let (status, captured) = read(
        psp.post(
            &format!("/v1/authorizations/{id}/capture"),
            Some("cap-1"),
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{captured}");
    assert_eq!(
        (
            captured["status"].as_str(),
            captured["captured_cents"].as_i64()
        ),
        (Some("captured"), Some(5000))
    );

    let (_, part) = read(
        psp.post(
            &format!("/v1/authorizations/{id}/refund"),
            Some("ref-1"),
            json!({"amount_cents": 1200}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (part["status"].as_str(), part["refunded_cents"].as_i64()),
        (Some("partially_refunded"), Some(1200))
    );

    // A bare POST refunds whatever is left.
    let res = psp
        .client
        .post(format!("{}/v1/authorizations/{id}/refund", psp.url))
        .send()
        .await
        .unwrap();
    let (status, rest) = read(res).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(
        (rest["status"].as_str(), rest["refunded_cents"].as_i64()),
        (Some("refunded"), Some(5000))
    );

    let (_, fetched) = read(psp.get(&format!("/v1/authorizations/{id}")).await).await;
    assert_eq!(fetched, rest);

    psp.refused(
        &format!("/v1/authorizations/{id}/refund"),
        json!({"amount_cents": 1}),
        409,
        "invalid_state",
    )
    .await;

    let stats = psp.stats().await;
    assert_eq!(
        stats,
        json!({"authorizations": 1, "authorization_attempts": 1, "captures": 1, "voids": 0,
               "refunds": 2, "webhooks_sent": 0})
    );
}

#[tokio::test]
async fn a_keyed_capture_is_replayed_not_repeated() {
    let psp = start(None).await;
    let (_, auth) = read(psp.authorize("k", "pm_card_visa", 1000).await).await;
    let path = format!(
        "/v1/authorizations/{}/capture",
        auth["id"].as_str().unwrap()
    );
    let first = psp
        .post(&path, Some("cap"), json!({"amount_cents": 600}))
        .await;
    assert!(first.headers().get("idempotency-replayed").is_none());
    let (_, first) = read(first).await;
    let again = psp
        .post(&path, Some("cap"), json!({"amount_cents": 600}))
        .await;
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    let (status, again) = read(again).await;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    assert_eq!(psp.stats().await["captures"], 1);
    // Without the key, a second capture is a new request, and an illegal one.
    psp.refused(&path, json!({"amount_cents": 600}), 409, "invalid_state")
        .await;
    problem(
        psp.post(&path, Some("cap"), json!({"amount_cents": 700}))
            .await,
        422,
        "idempotency_key_reused",
    )
    .await;
}

#[tokio::test]
async fn void_releases_an_authorization_only_before_capture() {
    let psp = start(None).await;
    let (_, a) = read(psp.authorize("k-a", "pm_card_visa", 1000).await).await;
    let a = a["id"].as_str().unwrap();
    let (status, voided) = read(
        psp.post(&format!("/v1/authorizations/{a}/void"), None, json!({}))
            .await,
    )
    .await;
    assert_eq!(
        (status, voided["status"].as_str()),
        (StatusCode::OK, Some("voided"))
    );
    psp.refused(
        &format!("/v1/authorizations/{a}/capture"),
        json!({}),
        409,
        "invalid_state",
    )
    .await;

    let (_, b) = read(psp.authorize("k-b", "pm_card_visa", 1000).await).await;
    let b = b["id"].as_str().unwrap();
    read(
        psp.post(
            &format!("/v1/authorizations/{b}/capture"),
            None,
            json!({"amount_cents": 400}),
        )
        .await,
    )
    .await;
    psp.refused(
        &format!("/v1/authorizations/{b}/void"),
        json!({}),
        409,
        "invalid_state",
    )
    .await;
    let body = psp
        .refused(
            &format!("/v1/authorizations/{b}/refund"),
            json!({"amount_cents": 401}),
            422,
            "invalid_amount",
        )
        .await;
    assert_eq!(body["errors"][0]["field"], "amount_cents");
    let stats = psp.stats().await;
    assert_eq!(
        (
            stats["voids"].as_i64(),
            stats["captures"].as_i64(),
            stats["refunds"].as_i64()
        ),
        (Some(1), Some(1), Some(0))
    );
}

#[tokio::test]
async fn declines_carry_their_codes_and_are_recorded() {
    let psp = start(None).await;
    for (token, decline_code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
    ] {
        let body = problem(
            psp.authorize(token, token, 2500).await,
            402,
            "card_declined",
        )
        .await;
        assert_eq!(body["decline_code"], decline_code, "{body}");
        let id = body["payment_id"].as_str().unwrap();
        let (_, payment) = read(psp.get(&format!("/v1/authorizations/{id}")).await).await;
        assert_eq!(payment["status"], "declined");
        assert_eq!(payment["decline_code"], decline_code);
        // The decline is the key's answer: a retry gets it again, not a second record.
        let again = psp.authorize(token, token, 2500).await;
        assert_eq!(again.headers()["idempotency-replayed"], "true");
        assert_eq!(problem(again, 402, "card_declined").await, body);
        let capture = format!("/v1/authorizations/{id}/capture");
        psp.refused(&capture, json!({}), 409, "invalid_state").await;
    }
    let stats = psp.stats().await;
    assert_eq!(
        (
            stats["authorizations"].as_i64(),
            stats["authorization_attempts"].as_i64()
        ),
        (Some(2), Some(4))
    );
}

#[tokio::test]
async fn a_processing_error_retried_with_the_same_key_authorizes_exactly_once() {
    let psp = start(None).await;
    for _ in 0..2 {
        let body = problem(
            psp.authorize("k-retry", "pm_card_processingError", 3000)
                .await,
            503,
            "processing_error",
        )
        .await;
        assert_eq!(body["retryable"], true);
    }
    let (status, first) = read(
        psp.authorize("k-retry", "pm_card_processingError", 3000)
            .await,
    )
    .await;
    assert_eq!(
        (status, first["status"].as_str()),
        (StatusCode::CREATED, Some("authorized")),
        "{first}"
    );
    let (status, replay) = read(
        psp.authorize("k-retry", "pm_card_processingError", 3000)
            .await,
    )
    .await;
    assert_eq!((status, &replay), (StatusCode::CREATED, &first));
    let stats = psp.stats().await;
    assert_eq!(stats["authorizations"], 1, "{stats}");
    assert_eq!(stats["authorization_attempts"], 4, "{stats}");
}

#[tokio::test]
async fn a_key_reused_for_another_body_is_refused() {
    let psp = start(None).await;
    read(psp.authorize("k-same", "pm_card_visa", 1000).await).await;
    problem(
        psp.authorize("k-same", "pm_card_visa", 1001).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    // Also while a processing error is being retried.
    problem(
        psp.authorize("k-err", "pm_card_processingError", 1000)
            .await,
        503,
        "processing_error",
    )
    .await;
    problem(
        psp.authorize("k-err", "pm_card_processingError", 999).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(psp.stats().await["authorizations"], 1);
}

#[tokio::test]
async fn a_pending_payment_settles_by_signed_webhook() {
    let (hook_url, mut deliveries, hook_stop) = receiver(0).await;
    let psp = start(Some(&hook_url)).await;
    let (status, pending) = read(psp.authorize("k-pending", "pm_card_pending", 4200).await).await;
    assert_eq!(
        (status, pending["status"].as_str()),
        (StatusCode::ACCEPTED, Some("pending"))
    );
    let id = pending["id"].as_str().unwrap().to_owned();
    psp.refused(
        &format!("/v1/authorizations/{id}/capture"),
        json!({}),
        409,
        "invalid_state",
    )
    .await;

    let settle = format!("/v1/test/payments/{id}/settle");
    let (status, settled) = read(
        psp.post(&settle, None, json!({"outcome": "succeeded"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, settled["status"].as_str()),
        (StatusCode::OK, Some("authorized"))
    );

    let d = next_delivery(&mut deliveries).await;
    signature::verify(SECRET.as_bytes(), &d.signature, &d.body, now(), 300)
        .unwrap_or_else(|e| panic!("{e}: {}", d.signature));
    assert_eq!(
        signature::verify(b"another secret", &d.signature, &d.body, now(), 300),
        Err(signature::SignatureError::Mismatch)
    );
    let event: Value = serde_json::from_slice(&d.body).unwrap();
    let event_id = event["id"].as_str().unwrap();
    assert!(
        event_id.starts_with("evt_") && event_id.len() == 36,
        "{event}"
    );
    assert_eq!(event["type"], "payment.succeeded");
    assert!(
        (event["created"].as_i64().unwrap() - now()).abs() < 60,
        "{event}"
    );
    assert_eq!(
        event["data"],
        json!({"provider_ref": id, "status": "authorized", "amount_cents": 4200, "currency": "USD", "reference": "order-42"})
    );

    psp.refused(
        &settle,
        json!({"outcome": "succeeded"}),
        409,
        "invalid_state",
    )
    .await;
    // Settled as succeeded, it is an ordinary authorization now.
    let (status, _) = read(
        psp.post(&format!("/v1/authorizations/{id}/capture"), None, json!({}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A failed settlement is a different event with a new id.
    let (_, other) = read(psp.authorize("k-pending-2", "pm_card_pending", 100).await).await;
    let other = other["id"].as_str().unwrap();
    let (_, failed) = read(
        psp.post(
            &format!("/v1/test/payments/{other}/settle"),
            None,
            json!({"outcome": "failed"}),
        )
        .await,
    )
    .await;
    assert_eq!(failed["status"], "failed");
    let d2 = next_delivery(&mut deliveries).await;
    signature::verify(SECRET.as_bytes(), &d2.signature, &d2.body, now(), 300).unwrap();
    let event2: Value = serde_json::from_slice(&d2.body).unwrap();
    assert_eq!(
        (event2["type"].as_str(), event2["data"]["status"].as_str()),
        (Some("payment.failed"), Some("failed"))
    );
    assert_ne!(event2["id"], event["id"]);
    hook_stop.cancel();
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_event() {
    let (hook_url, mut deliveries, hook_stop) = receiver(1).await;
    let psp = start(Some(&hook_url)).await;
    let (_, pending) = read(psp.authorize("k", "pm_card_pending", 900).await).await;
    let id = pending["id"].as_str().unwrap();
    read(
        psp.post(
            &format!("/v1/test/payments/{id}/settle"),
            None,
            json!({"outcome": "failed"}),
        )
        .await,
    )
    .await;
    let first = next_delivery(&mut deliveries).await;
    let retry = next_delivery(&mut deliveries).await;
    assert_eq!(first.body, retry.body, "a retry resends the same event");
    signature::verify(SECRET.as_bytes(), &retry.signature, &retry.body, now(), 300).unwrap();
    hook_stop.cancel();
}

#[tokio::test]
async fn bad_input_gets_a_problem_naming_what_is_wrong() {
    let psp = start(None).await;
    let card = |number: &str, month: i64, year: i64, cvc: &str| json!({"card_number": number, "exp_month": month, "exp_year": year, "cvc": cvc});
    for (body, field) in [
        (card("4242424242424241", 12, 2040, "123"), "card_number"),
        (card("4242", 12, 2040, "123"), "card_number"),
        (card("4242424242424242", 13, 2040, "123"), "exp_month"),
        (card("4242424242424242", 12, 2001, "123"), "exp_year"),
        (card("4242424242424242", 12, 2040, "12"), "cvc"),
    ] {
        let p = psp
            .refused(
                "/v1/payment_methods",
                body.clone(),
                422,
                "validation_failed",
            )
            .await;
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
        assert_eq!(p["errors"].as_array().unwrap().len(), 1, "{p}");
        assert!(!p.to_string().contains("4242424242424241"), "{p}");
    }

    let authz = |amount: Value, currency: &str, token: &str, reference: &str| json!({"amount_cents": amount, "currency": currency, "payment_method": token, "reference": reference});
    for (body, field) in [
        (authz(json!(0), "USD", "pm_card_visa", "r"), "amount_cents"),
        (
            authz(json!(100_000_001), "USD", "pm_card_visa", "r"),
            "amount_cents",
        ),
        (authz(json!(-5), "USD", "pm_card_visa", "r"), "amount_cents"),
        (authz(json!(100), "usd", "pm_card_visa", "r"), "currency"),
        (
            authz(json!(100), "USD", "pm_card_mystery", "r"),
            "payment_method",
        ),
        (authz(json!(100), "USD", "pm_card_visa", " "), "reference"),
    ] {
        let p = problem(
            psp.post("/v1/authorizations", Some("k-bad"), body.clone())
                .await,
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }
    psp.refused(
        "/v1/authorizations",
        authz(json!(100), "USD", "pm_card_visa", "r"),
        400,
        "idempotency_key_required",
    )
    .await;
    let res = psp
        .client
        .post(format!("{}/v1/authorizations", psp.url))
        .header("Idempotency-Key", "k-bad")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(res, 400, "malformed_json").await;
    psp.refused(
        "/v1/payment_methods",
        json!({"card_number": "4242424242424242"}),
        422,
        "validation_failed",
    )
    .await;
    // None of that created anything, and a refused key is free for a good request.
    assert_eq!(psp.stats().await["authorizations"], 0);
    let (status, _) = read(psp.authorize("k-bad", "pm_card_visa", 100).await).await;
    assert_eq!(status, StatusCode::CREATED);

    problem(
        psp.get("/v1/authorizations/pi_unknown").await,
        404,
        "not_found",
    )
    .await;
    psp.refused(
        "/v1/authorizations/pi_unknown/void",
        json!({}),
        404,
        "not_found",
    )
    .await;
    psp.refused(
        "/v1/test/payments/pi_unknown/settle",
        json!({"outcome": "succeeded"}),
        404,
        "not_found",
    )
    .await;
    let (_, a) = read(psp.authorize("k-x", "pm_card_visa", 100).await).await;
    let id = a["id"].as_str().unwrap();
    let settle = format!("/v1/test/payments/{id}/settle");
    let capture = format!("/v1/authorizations/{id}/capture");
    for (path, body, status, code) in [
        (
            &settle,
            json!({"outcome": "maybe"}),
            422,
            "validation_failed",
        ),
        (
            &settle,
            json!({"outcome": "succeeded"}),
            409,
            "invalid_state",
        ),
        (
            &capture,
            json!({"amount_cents": 0}),
            422,
            "validation_failed",
        ),
        (
            &capture,
            json!({"amount_cents": 101}),
            422,
            "invalid_amount",
        ),
        (&capture, json!({"amount": 1}), 422, "validation_failed"),
    ] {
        psp.refused(path, body, status, code).await;
    }
}

#[tokio::test]
async fn operational_routes_come_from_the_kit() {
    let psp = start(None).await;
    let (status, live) = read(psp.get("/health/live").await).await;
    assert_eq!(
        (status, live["service"].as_str()),
        (StatusCode::OK, Some("psp-mock"))
    );
    let (status, _) = read(psp.get("/health/ready").await).await;
    assert_eq!(status, StatusCode::OK);
    let (_, doc) = read(psp.get("/openapi.json").await).await;
    for path in [
        "/v1/payment_methods",
        "/v1/authorizations",
        "/v1/authorizations/{id}",
        "/v1/authorizations/{id}/capture",
        "/v1/authorizations/{id}/void",
        "/v1/authorizations/{id}/refund",
        "/v1/test/payments/{provider_ref}/settle",
        "/v1/test/stats",
        "/v1/test/chaos",
        "/v1/test/chaos/http",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    read(psp.authorize("k", "pm_card_visa", 100).await).await;
    let metrics = psp.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"route="/v1/authorizations""#)
            && metrics.contains(r#"service="psp-mock""#),
        "{metrics}"
    );
}
