//! The payment service's HTTP API over a real socket: who may do what, the answers and their
//! status codes, Idempotency-Key replays, and the processor's signed webhook.

mod support;

use mercato_kit::auth::Role;
use mercato_kit::contracts::types::PAYMENT_AUTHORIZED;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::ids::{OrderId, UserId};
use mercato_payment::domain::Status;
use serde_json::{json, Value};
use support::*;

struct Reply {
    status: u16,
    body: Value,
    replayed: bool,
}

async fn call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    key: Option<&str>,
) -> Reply {
    let mut req = h.http.request(method, format!("{}/api/v1{path}", h.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let replayed = res.headers().get("idempotency-replayed").is_some();
    let body = res.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        body,
        replayed,
    }
}

async fn authorize(h: &Harness, token: Option<&str>, body: Value) -> Reply {
    let path = "/payments/authorize";
    call(h, reqwest::Method::POST, path, token, Some(body), None).await
}

fn authorize_body(order: OrderId, customer: UserId, amount: i64, method: &str) -> Value {
    json!({"order_id": order, "amount_cents": amount, "currency": "USD", "payment_method": method, "customer_id": customer})
}

#[tokio::test]
async fn authorize_over_http_is_idempotent_per_order_and_guarded() {
    let h = Harness::start().await;
    let svc = h.service_token();
    let (order, customer) = (OrderId::new(), UserId::new());
    let body = authorize_body(order, customer, 1234, "pm_card_visa");

    let r = authorize(&h, None, body.clone()).await;
    assert_eq!(r.status, 401);
    let customer_token = h.token(Role::Customer, &customer.to_string());
    let r = authorize(&h, Some(&customer_token), body.clone()).await;
    assert_eq!(r.status, 403);

    // An order nobody announced is not charged.
    let r = authorize(&h, Some(&svc), body.clone()).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("unknown_order")),
        "{}",
        r.body
    );
    assert_eq!(h.psp_stats().await["authorizations"], 0);
    assert!(h.payment_of(order).await.is_none());

    h.deliver(&created(order, customer, 1234)).await;
    // Only on the order's terms: not another amount, not for someone else.
    for (amount, who) in [(999, customer), (1234, UserId::new())] {
        let r = authorize(
            &h,
            Some(&svc),
            authorize_body(order, who, amount, "pm_card_visa"),
        )
        .await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (409, Some("order_mismatch")),
            "{}",
            r.body
        );
    }
    let first = authorize(&h, Some(&svc), body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["status"], "AUTHORIZED");
    assert_eq!(first.body["amount_cents"], 1234);
    assert_eq!(first.body["captured_cents"], 0);
    assert_eq!(first.body["customer_id"], customer.to_string());
    assert!(first.body["provider_ref"]
        .as_str()
        .unwrap()
        .starts_with("pi_"));

    let again = authorize(&h, Some(&svc), body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], first.body["id"]);
    let other = authorize_body(order, customer, 1234, "pm_card_chargeDeclined");
    let r = authorize(&h, Some(&svc), other).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("payment_exists"))
    );
    assert_eq!(h.psp_stats().await["authorizations"], 1);

    let admin = h.token(Role::Admin, &UserId::new().to_string());
    let bad = json!({"order_id": OrderId::new(), "amount_cents": 0, "currency": "usd", "payment_method": ""});
    let r = authorize(&h, Some(&admin), bad).await;
    assert_eq!(r.status, 422);
    let fields: Vec<_> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["amount_cents", "currency", "payment_method"]);

    // A cancelled order is not charged.
    let gone = OrderId::new();
    h.deliver(&created(gone, customer, 100)).await;
    h.deliver(&cancelled(gone)).await;
    let r = authorize(
        &h,
        Some(&admin),
        authorize_body(gone, customer, 100, "pm_card_visa"),
    )
    .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("order_cancelled"))
    );

    // Pending at the processor: 202. Declined: answered, FAILED with the reason.
    for (method, status, state, reason) in [
        ("pm_card_pending", 202, "PENDING", None),
        (
            "pm_card_chargeDeclined",
            201,
            "FAILED",
            Some("generic_decline"),
        ),
    ] {
        let id = OrderId::new();
        h.deliver(&created(id, customer, 100)).await;
        let r = authorize(&h, Some(&svc), authorize_body(id, customer, 100, method)).await;
        assert_eq!(
            (r.status, r.body["status"].as_str()),
            (status, Some(state)),
            "{method}"
        );
        if let Some(reason) = reason {
            assert_eq!(r.body["failure_reason"], reason);
        }
    }
    h.stop().await;
}

async fn post_as(
    h: &Harness,
    token: &str,
    path: String,
    body: Option<Value>,
    key: Option<&str>,
) -> Reply {
    call(h, reqwest::Method::POST, &path, Some(token), body, key).await
}

/// A capture, void or refund asked for directly only repeats what the order's life decided:
/// the order's cancel voids, its fulfilment captures, its refund refunds.
#[tokio::test]
async fn capture_void_and_refund_follow_the_order() {
    let h = Harness::start().await;
    let svc = h.service_token();
    let post = reqwest::Method::POST;
    let ask = |path: String, body: Option<Value>, key: Option<&'static str>| {
        post_as(&h, &svc, path, body, key)
    };
    let (order, customer) = (OrderId::new(), UserId::new());
    h.deliver(&created(order, customer, 1000)).await;
    let r = ask(
        "/payments/authorize".into(),
        Some(authorize_body(order, customer, 1000, "pm_card_visa")),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "AUTHORIZED", "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();

    // The order is live (PAID): none of these is the payment service's to make.
    for (action, code) in [
        ("void", "order_not_cancelled"),
        ("capture", "order_not_fulfilled"),
        ("refund", "order_not_refunded"),
    ] {
        let r = ask(format!("/payments/{id}/{action}"), None, None).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (409, Some(code)),
            "{action}: {}",
            r.body
        );
        assert!(r.body["detail"]
            .as_str()
            .unwrap()
            .contains(&order.to_string()));
    }
    assert_eq!(
        h.payment_of(order).await.unwrap().money.status,
        Status::Authorized
    );

    // Fulfilled: the saga captures it all; asking again changes nothing.
    h.deliver(&fulfilled(order)).await;
    let p = h.settled(order, Status::Captured).await;
    assert_eq!(p.money.captured_cents, 1000);
    let r = ask(format!("/payments/{id}/capture"), None, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let r = ask(format!("/payments/{id}/void"), None, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("order_not_cancelled"))
    );
    let r = ask(format!("/payments/{id}/refund"), None, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("order_not_refunded"))
    );

    // Refunded in part by the order; the rest may then be refunded here (a repair).
    h.deliver(&refunded(order, Some(100))).await;
    h.settled(order, Status::PartiallyRefunded).await;
    for bad in [0, -5, 901] {
        let r = ask(
            format!("/payments/{id}/refund"),
            Some(json!({"amount_cents": bad})),
            None,
        )
        .await;
        assert_eq!(r.status, 422, "{bad}");
    }
    // A refund with a key, sent twice: one refund, the same answer replayed.
    let first = ask(
        format!("/payments/{id}/refund"),
        Some(json!({"amount_cents": 250})),
        Some("refund-1"),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "PARTIALLY_REFUNDED");
    let second = ask(
        format!("/payments/{id}/refund"),
        Some(json!({"amount_cents": 250})),
        Some("refund-1"),
    )
    .await;
    assert!(second.replayed);
    assert_eq!((second.status, &second.body), (first.status, &first.body));
    assert_eq!(h.psp_stats().await["refunds"], 2);
    let r = ask(
        format!("/payments/{id}/refund"),
        Some(json!({"amount_cents": 651})),
        None,
    )
    .await;
    assert_eq!(r.status, 422);
    let r = ask(format!("/payments/{id}/refund"), None, None).await;
    assert_eq!(
        (r.status, r.body["refunded_cents"].as_i64()),
        (200, Some(1000))
    );
    assert_eq!(r.body["status"], "REFUNDED");

    // Void: only once the order is cancelled, which voids it anyway.
    let order = OrderId::new();
    h.deliver(&created(order, customer, 500)).await;
    let r = ask(
        "/payments/authorize".into(),
        Some(authorize_body(order, customer, 500, "pm_card_visa")),
        None,
    )
    .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let someone = h.token(Role::Customer, &UserId::new().to_string());
    let r = call(
        &h,
        post.clone(),
        &format!("/payments/{id}/void"),
        Some(&someone),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = ask(format!("/payments/{id}/void"), None, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("order_not_cancelled"))
    );
    h.deliver(&cancelled(order)).await;
    h.settled(order, Status::Voided).await;
    let r = ask(format!("/payments/{id}/void"), None, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let r = ask(
        format!("/payments/{}/void", uuid::Uuid::now_v7()),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    h.stop().await;
}

#[tokio::test]
async fn a_payment_is_visible_to_its_customer_admins_and_services_only() {
    let h = Harness::start().await;
    let (order, owner) = (OrderId::new(), UserId::new());
    h.deliver(&reserved(order, owner, 800, "pm_card_visa"))
        .await;
    let p = h.settled(order, Status::Authorized).await;
    let get = reqwest::Method::GET;
    let path = format!("/payments/{}", p.id);

    let mine = h.token(Role::Customer, &owner.to_string());
    let r = call(&h, get.clone(), &path, Some(&mine), None, None).await;
    assert_eq!(r.status, 200);
    let keys: Vec<_> = r.body.as_object().unwrap().keys().cloned().collect();
    for k in [
        "id",
        "order_id",
        "status",
        "amount_cents",
        "captured_cents",
        "refunded_cents",
        "currency",
        "provider_ref",
    ] {
        assert!(keys.contains(&k.to_owned()), "{k} missing: {keys:?}");
    }
    assert_eq!(r.body["order_id"], order.to_string());

    let theirs = h.token(Role::Customer, &UserId::new().to_string());
    let seller = h.token(Role::Seller, &UserId::new().to_string());
    let admin = h.token(Role::Admin, &UserId::new().to_string());
    let service = h.service_token();
    for (who, token, status) in [
        ("another customer", Some(theirs.as_str()), 404),
        ("a seller", Some(seller.as_str()), 404),
        ("an admin", Some(admin.as_str()), 200),
        ("a service", Some(service.as_str()), 200),
        ("nobody", None, 401),
    ] {
        let r = call(&h, get.clone(), &path, token, None, None).await;
        assert_eq!(r.status, status, "{who}");
    }

    let by_order = format!("/payments?order_id={order}");
    let r = call(&h, get.clone(), &by_order, Some(&mine), None, None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["items"][0]["id"], p.id.to_string());
    let r = call(&h, get.clone(), &by_order, Some(&theirs), None, None).await;
    assert_eq!(
        (r.status, r.body["items"].as_array().unwrap().len()),
        (200, 0)
    );
    let r = call(&h, get.clone(), &by_order, Some(&admin), None, None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        call(&h, get.clone(), "/payments", Some(&seller), None, None)
            .await
            .status,
        403
    );
    let r = call(&h, get, "/payments?order_id=nope", Some(&admin), None, None).await;
    assert_eq!(r.status, 422);
    h.stop().await;
}

fn succeeded_body(event_id: &str, provider_ref: &str, reference: &str, amount: i64) -> String {
    json!({
        "id": event_id,
        "type": "payment.succeeded",
        "created": chrono::Utc::now().timestamp(),
        "data": {"provider_ref": provider_ref, "status": "authorized", "amount_cents": amount,
                 "currency": "USD", "reference": reference}
    })
    .to_string()
}

#[tokio::test]
async fn webhooks_must_be_signed_fresh_and_count_once() {
    let h = Harness::start().await;
    let (order, p) = h.awaiting_webhook().await;
    let pref = p.provider_ref.clone().unwrap();
    let body = succeeded_body("evt_test_1", &pref, &p.id.to_string(), 1500);
    let now = chrono::Utc::now().timestamp();

    // Refused before anything is looked at: a wrong secret, a stale or missing signature.
    let (status, problem) = h.send_webhook(&body, "whsec_wrong", now).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    let (status, _) = h.send_webhook(&body, SECRET, now - 301).await;
    assert_eq!(status, 401);
    let res = h
        .http
        .post(format!("{}/api/v1/payments/webhook", h.url))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // A signature over another body does not cover this one.
    let tampered = body.replace("1500", "1");
    let header = mercato_kit::contracts::webhook::sign(SECRET.as_bytes(), now, body.as_bytes());
    let res = h
        .http
        .post(format!("{}/api/v1/payments/webhook", h.url))
        .header("Psp-Signature", header)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        h.payment_of(order).await.unwrap().money.status,
        Status::Pending
    );

    let (status, ack) = h.send_webhook(&body, SECRET, now).await;
    assert_eq!(
        (status, ack["outcome"].as_str()),
        (200, Some("authorized")),
        "{ack}"
    );
    let (status, ack) = h.send_webhook(&body, SECRET, now).await;
    assert_eq!((status, ack["outcome"].as_str()), (200, Some("duplicate")));
    let p = h.payment_of(order).await.unwrap();
    assert_eq!(p.money.status, Status::Authorized);
    assert_eq!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.len(), 1);

    // A contradicting event afterwards is recorded and changes nothing.
    let failed = body
        .replace("evt_test_1", "evt_test_2")
        .replace("payment.succeeded", "payment.failed");
    let (status, ack) = h.send_webhook(&failed, SECRET, now).await;
    assert_eq!((status, ack["outcome"].as_str()), (200, Some("ignored")));
    assert_eq!(
        h.payment_of(order).await.unwrap().money.status,
        Status::Authorized
    );
    assert_eq!(
        mercato_payment::store::webhook_outcome(h.payments.db.reader(), "evt_test_2")
            .await
            .unwrap()
            .as_deref(),
        Some("ignored")
    );
    h.stop().await;
}

/// A processor's success for `p` that comes after its end is recorded as ignored and leaves
/// the payment exactly as it was.
async fn late_success_is_ignored(
    h: &Harness,
    p: &mercato_payment::store::Payment,
    event: &str,
    now: i64,
) {
    let reference = p.provider_ref.as_deref().unwrap();
    let body = succeeded_body(event, reference, &p.id.to_string(), p.money.amount_cents);
    let (status, ack) = h.send_webhook(&body, SECRET, now).await;
    assert_eq!((status, ack["outcome"].as_str()), (200, Some("ignored")));
    assert_eq!(h.payment_of(p.order_id).await.unwrap(), *p);
}

#[tokio::test]
async fn a_late_success_for_a_voided_or_failed_payment_changes_nothing() {
    let h = Harness::start().await;
    let now = chrono::Utc::now().timestamp();
    // Voided: authorized, then the order was cancelled.
    let order = OrderId::new();
    h.deliver(&reserved(order, UserId::new(), 700, "pm_card_visa"))
        .await;
    h.settled(order, Status::Authorized).await;
    assert_eq!(h.deliver(&cancelled(order)).await, Outcome::Applied);
    let p = h.settled(order, Status::Voided).await;
    late_success_is_ignored(&h, &p, "evt_late_1", now).await;
    // Failed: declined.
    let order = OrderId::new();
    h.deliver(&reserved(
        order,
        UserId::new(),
        700,
        "pm_card_chargeDeclined",
    ))
    .await;
    let p = h.settled(order, Status::Failed).await;
    late_success_is_ignored(&h, &p, "evt_late_2", now).await;
    // Unknown payments and mismatched amounts are recorded, not applied.
    let body = succeeded_body("evt_late_3", "pi_unknown", "not-a-payment", 700);
    let (_, ack) = h.send_webhook(&body, SECRET, now).await;
    assert_eq!(ack["outcome"], "unknown_payment");
    let body = succeeded_body(
        "evt_late_4",
        p.provider_ref.as_deref().unwrap(),
        &p.id.to_string(),
        701,
    );
    let (_, ack) = h.send_webhook(&body, SECRET, now).await;
    assert_eq!(ack["outcome"], "mismatch");
    let (status, _) = h.send_webhook("{\"not\": \"an event\"}", SECRET, now).await;
    assert_eq!(status, 400);
    h.stop().await;
}

#[tokio::test]
async fn the_service_documents_and_reports_itself() {
    let h = Harness::start().await;
    let doc: Value = h
        .http
        .get(format!("{}/openapi.json", h.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/payments/authorize",
        "/api/v1/payments/{id}/capture",
        "/api/v1/payments/{id}/void",
        "/api/v1/payments/{id}/refund",
        "/api/v1/payments/{id}",
        "/api/v1/payments",
        "/api/v1/payments/webhook",
    ] {
        assert!(paths.contains_key(p), "{p} undocumented");
    }
    let ready = h
        .http
        .get(format!("{}/health/ready", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    h.stop().await;
}
