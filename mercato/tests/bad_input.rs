//! Bad input on every order, inventory and payment endpoint, over HTTP: malformed JSON, wrong
//! types, missing and unknown fields, out-of-range numbers, hostile strings and oversized
//! bodies are 4xx problem documents that name the problem, and nothing is written.

mod support;

use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn every_saga_endpoint_refuses_bad_input_and_writes_nothing() {
    let s = Shop::open(&[("MERCATO_BODY_LIMIT_BYTES", "8192")]).await;
    let p = s.product(1000, 5).await;
    let before = s.stock(&p).await;
    let o = format!("/orders/{}", uuid::Uuid::now_v7());
    let huge = format!(
        r#"{{"items":[{{"product_id":"{p}","quantity":1}}],"payment_method":"pm_card_visa","pad":"{}"}}"#,
        "x".repeat(10_000)
    );
    let hostile = [
        "'; DROP TABLE orders;--",
        "a\u{0}b",
        "😀😀😀",
        &"n".repeat(5000),
    ];
    // (service, method, path, token, raw body)
    let mut cases: Vec<(&str, &str, String, &str, String)> = vec![
        ("order", "POST", "/orders".into(), &s.customer, "{not json".into()),
        ("order", "POST", "/orders".into(), &s.customer, r#"{"items": "all", "payment_method": "pm_card_visa"}"#.into()),
        ("order", "POST", "/orders".into(), &s.customer, r#"{"payment_method": "pm_card_visa"}"#.into()),
        ("order", "POST", "/orders".into(), &s.customer, json!({"items": [], "payment_method": "pm_card_visa"}).to_string()),
        ("order", "POST", "/orders".into(), &s.customer, json!({"items": [{"product_id": p, "quantity": -1}], "payment_method": "pm_card_visa"}).to_string()),
        ("order", "POST", "/orders".into(), &s.customer, json!({"items": [{"product_id": "nope", "quantity": 1}], "payment_method": "pm_card_visa"}).to_string()),
        ("order", "POST", "/orders".into(), &s.customer, json!({"items": [{"product_id": p, "quantity": 1}], "payment_method": "visa"}).to_string()),
        ("order", "POST", "/orders".into(), &s.customer, json!({"items": [{"product_id": p, "quantity": 1}], "payment_method": "pm_card_visa", "shipping_address": {"country": "USA"}}).to_string()),
        ("order", "POST", "/orders".into(), &s.customer, json!({"items": [{"product_id": p, "quantity": 1}], "payment_method": "pm_card_visa", "total_cents": 1}).to_string()),
        ("order", "POST", "/orders".into(), &s.seller, json!({"items": [{"product_id": p, "quantity": 1}], "payment_method": "pm_card_visa"}).to_string()),
        ("order", "POST", "/orders".into(), &s.customer, huge),
        ("order", "PATCH", o.clone(), &s.customer, r#"{"shipping_address": 7}"#.into()),
        ("order", "POST", format!("{o}/cancel"), &s.customer, String::new()),
        ("order", "GET", "/orders?status=LOST".into(), &s.customer, String::new()),
        ("order", "GET", "/orders?limit=0".into(), &s.customer, String::new()),
        ("order", "GET", "/orders/not-a-uuid".into(), &s.customer, String::new()),
        ("inventory", "PUT", format!("/inventory/{p}"), &s.seller, r#"{"on_hand": "lots"}"#.into()),
        ("inventory", "PUT", format!("/inventory/{p}"), &s.seller, r#"{"on_hand": -1}"#.into()),
        ("inventory", "PUT", format!("/inventory/{p}"), &s.seller, r#"{"on_hand": 5, "restock": 5}"#.into()),
        ("inventory", "PUT", format!("/inventory/{p}"), &s.seller, r#"{}"#.into()),
        ("inventory", "PUT", format!("/inventory/{p}"), &s.customer, r#"{"restock": 5}"#.into()),
        ("inventory", "POST", "/inventory/reserve".into(), &s.admin, r#"{"order_id": "x", "items": []}"#.into()),
        ("inventory", "POST", "/inventory/reserve".into(), &s.customer, json!({"order_id": uuid::Uuid::now_v7(), "items": [{"product_id": p, "quantity": 1}]}).to_string()),
        ("inventory", "POST", "/inventory/release".into(), &s.admin, "{".into()),
        ("inventory", "GET", "/inventory/check?product_id=x&quantity=1".into(), &s.admin, String::new()),
        ("inventory", "GET", "/inventory/not-a-uuid".into(), &s.admin, String::new()),
        ("payment", "POST", "/payments/authorize".into(), &s.admin, r#"{"order_id": 5}"#.into()),
        ("payment", "POST", "/payments/authorize".into(), &s.admin, json!({"order_id": uuid::Uuid::now_v7(), "amount_cents": 0, "currency": "USD", "payment_method": "pm_card_visa"}).to_string()),
        ("payment", "POST", "/payments/authorize".into(), &s.admin, json!({"order_id": uuid::Uuid::now_v7(), "amount_cents": 100, "currency": "dollars", "payment_method": "pm_card_visa"}).to_string()),
        ("payment", "POST", "/payments/authorize".into(), &s.customer, json!({"order_id": uuid::Uuid::now_v7(), "amount_cents": 100, "currency": "USD", "payment_method": "pm_card_visa"}).to_string()),
        ("payment", "POST", format!("/payments/{}/refund", uuid::Uuid::now_v7()), &s.admin, r#"{"amount_cents": "all"}"#.into()),
        ("payment", "POST", "/payments/webhook".into(), "", r#"{"id": "evt_1", "type": "payment.succeeded"}"#.into()),
    ];
    for h in hostile {
        cases.push((
            "order",
            "POST",
            "/orders".into(),
            &s.customer,
            json!({"items": [{"product_id": p, "quantity": 1}], "payment_method": h}).to_string(),
        ));
        cases.push((
            "inventory",
            "PUT",
            format!("/inventory/{p}"),
            &s.seller,
            json!({"restock": 1, "note": h.repeat(if h.len() > 100 { 1 } else { 200 })})
                .to_string(),
        ));
    }
    for (service, method, path, token, body) in cases {
        let mut req =
            s.t.http
                .request(method.parse().unwrap(), s.t.api(service, &path));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if !body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(body.clone());
        }
        // With a key, as clients send one: what is refused is the input, not its absence.
        if method != "GET" {
            req = req.header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        assert!(
            (400..500).contains(&status),
            "{method} {service}{path} {body:.80}: {status}"
        );
        let prob = problem(res, status).await;
        assert!(
            prob["detail"].is_string() || prob["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "names the problem: {prob}"
        );
    }
    // Nothing was written: no order, no payment, the stock as it was.
    let orders: Value =
        s.t.http
            .get(s.t.api("order", "/orders"))
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(orders["items"].as_array().unwrap().is_empty(), "{orders}");
    assert_eq!(s.stock(&p).await, before);
    assert_eq!(s.psp_stats().await["authorization_attempts"], 0);
    s.t.stop().await;
}
