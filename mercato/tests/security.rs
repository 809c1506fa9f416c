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
        mercato_kit::contracts::webhook::sign(secret.as_bytes(), chrono_now(), body.as_bytes());
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

/// Polls until `url` answers `status` to `token` (GET), for what other services learn from
/// the revocation list within seconds.
async fn refused_within_seconds(t: &TestStack, url: &str, token: &str, status: u16) {
    support::eventually(std::time::Duration::from_secs(15), || async {
        let r = t.http.get(url).bearer_auth(token).send().await.ok()?;
        (r.status().as_u16() == status).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_demoted_admins_old_token_stops_working_everywhere() {
    let t = TestStack::start().await;
    let root = t.admin().await;
    let root_id = me(&t, &root).await["id"].as_str().unwrap().to_owned();
    let (x_id, x) = t.user("ADMIN").await;
    let order_admin = t.api("order", "/admin/dead-letters");
    let via_gateway = t.api("gateway", "/admin/order/dead-letters");
    for url in [&order_admin, &via_gateway] {
        let r = t.http.get(url).bearer_auth(&x).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "X is an admin: {url}");
    }

    // The real admin demotes X.
    let demoted = set_role(&t, &root, &x_id, "CUSTOMER").await;
    assert_eq!(demoted.status(), StatusCode::OK);

    // X's token, still signed ADMIN and unexpired, can neither undo it nor strike back.
    let undo = set_role(&t, &x, &x_id, "ADMIN").await;
    problem(undo, 401).await;
    let strike = set_role(&t, &x, &root_id, "CUSTOMER").await;
    problem(strike, 401).await;
    assert_eq!(
        me(&t, &root).await["role"],
        "ADMIN",
        "the real admin is untouched"
    );
    // Every other service, and the gateway, stop honouring it within seconds.
    refused_within_seconds(&t, &order_admin, &x, 401).await;
    refused_within_seconds(&t, &via_gateway, &x, 401).await;
    refused_within_seconds(&t, &t.api("inventory", "/admin/dead-letters"), &x, 401).await;
    // Signed in again, X is what it is now.
    let x_email = me_by_id(&t, &root, &x_id).await["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = t.login(&x_email, support::PASSWORD).await.access;
    let r = t
        .http
        .get(&order_admin)
        .bearer_auth(&again)
        .send()
        .await
        .unwrap();
    problem(r, 403).await;

    // No admin changes its own role, not even to the role it has.
    let own = set_role(&t, &root, &root_id, "ADMIN").await;
    problem(own, 403).await;
    t.stop().await;
}

/// `PATCH /admin/users/{id}` `{"role": role}` as `token`.
async fn set_role(t: &TestStack, token: &str, id: &str, role: &str) -> reqwest::Response {
    t.http
        .patch(t.api("auth", &format!("/admin/users/{id}")))
        .bearer_auth(token)
        .json(&json!({ "role": role }))
        .send()
        .await
        .unwrap()
}

async fn me(t: &TestStack, token: &str) -> Value {
    let r = t
        .http
        .get(t.api("auth", "/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn me_by_id(t: &TestStack, admin: &str, id: &str) -> Value {
    t.http
        .get(t.api("auth", &format!("/admin/users/{id}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn signing_out_and_changing_the_password_end_access_tokens_too() {
    let t = TestStack::start().await;
    let email = format!("leaving-{}@test.local", uuid::Uuid::new_v4().simple());
    assert_eq!(
        t.register(&email, support::PASSWORD, "Leaving")
            .await
            .status(),
        StatusCode::CREATED
    );
    // Sign-out: the access token of that sign-in goes with its refresh token.
    let session = t.login(&email, support::PASSWORD).await;
    let other = t.login(&email, support::PASSWORD).await;
    let out = t
        .http
        .post(t.api("auth", "/auth/logout"))
        .json(&json!({"refresh_token": session.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let r = t
        .http
        .get(t.api("auth", "/auth/me"))
        .bearer_auth(&session.access)
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
    refused_within_seconds(&t, &t.api("order", "/orders"), &session.access, 401).await;
    refused_within_seconds(&t, &t.api("gateway", "/cart"), &session.access, 401).await;
    // The other sign-in is not affected.
    let r = t
        .http
        .get(t.api("order", "/orders"))
        .bearer_auth(&other.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A new password ends every sign-in, the one that changed it included.
    let new_password = "An0ther-str0ng-pw";
    let changed = t
        .http
        .patch(t.api("auth", "/auth/me"))
        .bearer_auth(&other.access)
        .json(&json!({"password": new_password, "current_password": support::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let r = t
        .http
        .get(t.api("auth", "/auth/me"))
        .bearer_auth(&other.access)
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
    refused_within_seconds(&t, &t.api("order", "/orders"), &other.access, 401).await;
    let fresh = t.login(&email, new_password).await;
    assert_eq!(me(&t, &fresh.access).await["email"], email.as_str());
    t.stop().await;
}

#[tokio::test]
async fn eight_strangers_failing_cannot_keep_the_owner_out() {
    let t = TestStack::start().await;
    let email = format!("owner-{}@test.local", uuid::Uuid::new_v4().simple());
    assert_eq!(
        t.register(&email, support::PASSWORD, "Owner")
            .await
            .status(),
        StatusCode::CREATED
    );
    // Each client comes through the gateway from its own address.
    let login = |from: &str, password: &str| {
        t.http
            .post(t.api("gateway", "/auth/login"))
            .header("x-forwarded-for", from)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    let home = "198.51.100.7";
    assert_eq!(
        login(home, support::PASSWORD).await.unwrap().status(),
        StatusCode::OK,
        "the owner has signed in from home before"
    );
    let mut throttled = 0;
    for i in 1..=8 {
        for _ in 0..2 {
            let r = login(&format!("203.0.113.{i}"), "Wr0ng-guess-123")
                .await
                .unwrap();
            match r.status().as_u16() {
                401 => {}
                429 => {
                    let wait: u64 = r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(wait >= 1);
                    problem(r, 429).await;
                    throttled += 1;
                }
                other => panic!("a stranger's guess was answered {other}"),
            }
        }
    }
    assert!(throttled > 0, "the guessing is slowed down");
    // The owner, from home, with the right password: in at once.
    let r = login(home, support::PASSWORD).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    // From a new address the owner may be asked to wait, briefly, never locked out.
    let r = login("192.0.2.50", support::PASSWORD).await.unwrap();
    match r.status().as_u16() {
        200 => {}
        429 => {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=30).contains(&wait), "{wait}");
        }
        other => panic!("the owner from a new address was answered {other}"),
    }
    t.stop().await;
}

#[tokio::test]
async fn money_moves_only_as_the_order_decides_so_nothing_ships_unpaid() {
    let s = support::Shop::open(&[]).await;
    let product = s.product(2500, 10).await;
    let order = s.place(&product, 2, "pm_card_visa").await;
    s.status_becomes(&order, "PAID").await;
    let payment = s.payment_becomes(&order, "AUTHORIZED").await;
    let pid = payment["id"].as_str().unwrap().to_owned();
    let admin_post = |path: String| {
        s.t.http
            .post(s.t.api("gateway", &path))
            .bearer_auth(&s.admin)
            .send()
    };
    // Voiding (or refunding, or capturing) a PAID order's payment behind its back is refused:
    // the order would stay PAID with its stock held and could be fulfilled unpaid.
    for (action, code) in [
        ("void", "order_not_cancelled"),
        ("refund", "order_not_refunded"),
        ("capture", "order_not_fulfilled"),
    ] {
        let p = problem(
            admin_post(format!("/payments/{pid}/{action}"))
                .await
                .unwrap(),
            409,
        )
        .await;
        assert_eq!(p["code"], code, "{action}: {p}");
    }
    assert_eq!(s.get_order(&order).await["status"], "PAID");
    assert_eq!(s.stock(&product).await["reserved"], 2);
    assert_eq!(s.payment(&order).await.unwrap()["status"], "AUTHORIZED");

    // Fulfilment finds its money: the stock is committed and the payment captured.
    assert_eq!(
        s.seller_post(&order, "process").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        s.seller_post(&order, "fulfill").await.status(),
        StatusCode::OK
    );
    let captured = s.payment_becomes(&order, "CAPTURED").await;
    assert_eq!(captured["captured_cents"], 5000);
    support::eventually(support::WAIT, || async {
        let st = s.stock(&product).await;
        (st["on_hand"] == 8 && st["reserved"] == 0).then_some(())
    })
    .await;
    // After fulfilment the money goes back only through the order's refund.
    let p = problem(
        admin_post(format!("/payments/{pid}/void")).await.unwrap(),
        409,
    )
    .await;
    assert_eq!(p["code"], "order_not_cancelled");
    let p = problem(
        admin_post(format!("/payments/{pid}/refund")).await.unwrap(),
        409,
    )
    .await;
    assert_eq!(p["code"], "order_not_refunded");
    let refunded = admin_post(format!("/orders/{order}/refund")).await.unwrap();
    assert_eq!(
        refunded.status(),
        StatusCode::OK,
        "{}",
        refunded.text().await.unwrap()
    );
    let p = s.payment_becomes(&order, "REFUNDED").await;
    assert_eq!(p["refunded_cents"], 5000);
    assert_eq!(s.get_order(&order).await["status"], "REFUNDED");

    // No payment for an order that does not exist.
    let ghost = uuid::Uuid::now_v7();
    let r = s
        .t
        .http
        .post(s.t.api("gateway", "/payments/authorize"))
        .bearer_auth(&s.admin)
        .json(&json!({"order_id": ghost, "amount_cents": 100, "currency": "USD", "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    let p = problem(r, 404).await;
    assert_eq!(p["code"], "unknown_order");
    // Nor one on other terms than the order's.
    let other = s.place(&product, 1, "pm_card_pending").await;
    support::eventually(support::WAIT, || async { s.payment(&other).await }).await;
    let r = s
        .t
        .http
        .post(s.t.api("gateway", "/payments/authorize"))
        .bearer_auth(&s.admin)
        .json(&json!({"order_id": other, "amount_cents": 1, "currency": "USD", "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 409).await["code"], "order_mismatch");
    s.t.stop().await;
}

#[tokio::test]
async fn an_order_without_an_idempotency_key_is_refused_and_places_nothing() {
    let s = support::Shop::open(&[]).await;
    let product = s.product(900, 3).await;
    for url in [s.t.api("order", "/orders"), s.t.api("gateway", "/orders")] {
        let r = s
            .t
            .http
            .post(&url)
            .bearer_auth(&s.customer)
            .json(&json!({"items": [{"product_id": product, "quantity": 1}], "payment_method": "pm_card_visa"}))
            .send()
            .await
            .unwrap();
        let p = problem(r, 400).await;
        assert_eq!(p["code"], "idempotency_key_required", "{url}");
        assert!(p["detail"].as_str().unwrap().contains("Idempotency-Key"));
    }
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
    assert!(mine["items"].as_array().unwrap().is_empty(), "{mine}");
    assert_eq!(s.stock(&product).await["reserved"], 0);
    s.t.stop().await;
}
