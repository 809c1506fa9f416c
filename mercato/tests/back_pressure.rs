//! Back-pressure (invariant 7): once more orders are in the saga than the bound allows, new
//! orders and checkouts are refused with 503 `overloaded` and `Retry-After`, directly and
//! through the gateway, counted in a metric, without opening anyone's circuit breaker; and
//! they are taken again once the saga catches up.

mod support;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use support::*;

async fn overloaded(res: Response) -> Value {
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    assert_eq!(
        res.headers()
            .get(mercato_kit::problem::OVERLOADED_HEADER)
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("true".to_owned())
    );
    let p = problem(res, 503).await;
    assert_eq!(p["code"], "overloaded", "{p}");
    p
}

#[tokio::test]
async fn orders_past_the_backlog_bound_are_refused_until_the_saga_catches_up() {
    let s = Shop::open(&[("MERCATO_ORDER_BACKLOG_MAX", "2")]).await;
    let product = s.product(700, 100).await;
    // Two orders whose cards wait for the processor's webhook: they stay CONFIRMED, in the saga.
    let waiting = [
        s.place(&product, 1, "pm_card_pending").await,
        s.place(&product, 1, "pm_card_pending").await,
    ];
    for id in &waiting {
        s.status_becomes(id, "CONFIRMED").await;
    }
    let line = json!([{"product_id": product, "quantity": 1}]);
    // The gauge is refreshed in the background: refused within a refresh or two.
    let p = eventually(WAIT, || async {
        let res = s.order(line.clone(), "pm_card_visa").await;
        (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(res)
    })
    .await;
    let p = overloaded(p).await;
    assert!(p["detail"].as_str().unwrap().contains("bound is 2"), "{p}");
    // Nothing was placed: still two orders for this customer.
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
    assert_eq!(mine["items"].as_array().unwrap().len(), 2, "{mine}");

    // The cart's checkout passes the refusal on as it came.
    let res =
        s.t.http
            .post(s.t.api("cart", "/cart/items"))
            .bearer_auth(&s.customer)
            .json(&json!({"product_id": product, "quantity": 1}))
            .send()
            .await
            .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let checkout = |key: &'static str| {
        s.t.http
            .post(s.t.api("gateway", "/cart/checkout"))
            .bearer_auth(&s.customer)
            .header("Idempotency-Key", key)
            .json(&json!({"payment_method": "pm_card_visa"}))
            .send()
    };
    overloaded(checkout("bp-checkout-1").await.unwrap()).await;

    // Through the gateway, refusal after refusal, and the gateway's breaker for the order
    // service stays closed: reads keep working.
    for _ in 0..12 {
        let res =
            s.t.http
                .post(s.t.api("gateway", "/orders"))
                .bearer_auth(&s.customer)
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&json!({"items": line, "payment_method": "pm_card_visa"}))
                .send()
                .await
                .unwrap();
        overloaded(res).await;
    }
    let res =
        s.t.http
            .get(s.t.api("gateway", "/orders"))
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let refused = metric(
        &s.t.http,
        &s.t.base("order"),
        "orders_overloaded_total",
        &[("reason", "backlog")],
    )
    .await;
    assert!(refused >= 14.0, "orders_overloaded_total {refused}");
    // The gauge shows what the database holds at its next refresh.
    eventually(WAIT, || async {
        let backlog = metric(&s.t.http, &s.t.base("order"), "orders_backlog", &[]).await;
        (backlog == 2.0).then_some(())
    })
    .await;
    let opened = metric(
        &s.t.http,
        &s.t.base("gateway"),
        "circuit_breaker_state",
        &[("dependency", "order")],
    )
    .await;
    assert_eq!(opened, 0.0, "the gateway's breaker for order is closed");

    // The cards are settled: the saga catches up and orders are taken again.
    for id in &waiting {
        // The payment worker asks the processor on its own time (on Kafka the payment service
        // hears of the order by its own group's fetch): wait for the processor's reference.
        let reference = eventually(WAIT, || async {
            let pay = s.payment(id).await?;
            pay["provider_ref"].as_str().map(str::to_owned)
        })
        .await;
        let res =
            s.t.http
                .post(format!(
                    "{}/v1/test/payments/{reference}/settle",
                    s.t.base("psp-mock")
                ))
                .json(&json!({"outcome": "succeeded"}))
                .send()
                .await
                .unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        s.status_becomes(id, "PAID").await;
    }
    let accepted = eventually(WAIT, || async {
        let res = s.order(line.clone(), "pm_card_visa").await;
        (res.status() == StatusCode::CREATED).then_some(res)
    })
    .await;
    let id = accepted.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.status_becomes(&id, "PAID").await;
    // The same checkout key is taken now too.
    let res = checkout("bp-checkout-1").await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    s.t.stop().await;
}
