//! `mercato audit` against a real shop: clean after every saga branch, then failing, naming
//! the ids, for each violation planted by editing a service's database directly (on SQLite by
//! default, in the PostgreSQL schemas when the backend tier gives one). And its admin routes:
//! ADMIN only, paged, in the OpenAPI documents.

mod support;

use mercato::audit::{self, Options, Report};
use mercato::shop::Shop;
use mercato_kit::time::now_us;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

/// Judges everything at once (settle 0) and reads two records per page, so every list is
/// paged through its cursors.
const STRICT: Options = Options {
    settle: Duration::ZERO,
    pending_deadline: Duration::from_secs(60),
    page: 2,
};

async fn run_audit(s: &Shop, admin: &str) -> Report {
    audit::audit(s, admin, &STRICT)
        .await
        .expect("the audit runs")
}

fn shop_of(s: &support::Shop) -> Shop {
    Shop::at(&s.t.stack.as_ref().expect("running").urls)
}

/// The binary, pointed at the stack's services; its exit code and what it printed. Awaited,
/// not blocked on: the services it talks to run on this test's runtime.
async fn audit_binary(s: &support::Shop, extra: &[&str]) -> (Option<i32>, String) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"));
    c.arg("audit");
    for service in ["auth", "catalog", "order", "inventory", "payment", "cart"] {
        c.arg(format!("--{service}-url")).arg(s.t.base(service));
    }
    c.args([
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
    ])
    .args(extra)
    .env("MERCATO_DATA_DIR", s.t.dir.path());
    let out = c.output().await.expect("mercato runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Audits and asserts the report names `check` with a detail containing every one of `words`.
async fn named(shop: &Shop, admin: &str, check: &str, words: &[&str]) -> Report {
    let r = run_audit(shop, admin).await;
    assert!(
        names(&r, check, words),
        "{check} {words:?}: {:?}",
        r.violations
    );
    r
}

/// The report names `check` with a detail containing every one of `words`.
fn names(report: &Report, check: &str, words: &[&str]) -> bool {
    report
        .of(check)
        .iter()
        .any(|v| words.iter().all(|w| v.detail.contains(w)))
}

#[tokio::test]
async fn a_clean_shop_passes_and_every_planted_violation_is_named() {
    let s = support::Shop::open(&[]).await;
    let product = s.product(1000, 50).await;
    // Every branch of the saga once: paid, fulfilled, declined, cancelled, waiting for a card.
    let paid = s.place(&product, 1, "pm_card_visa").await;
    let fulfilled = s.place(&product, 2, "pm_card_visa").await;
    let declined = s.place(&product, 1, "pm_card_chargeDeclined").await;
    let cancelled = s.place(&product, 1, "pm_card_visa").await;
    let pending = s.place(&product, 1, "pm_card_pending").await;
    s.status_becomes(&paid, "PAID").await;
    s.status_becomes(&fulfilled, "PAID").await;
    s.status_becomes(&cancelled, "PAID").await;
    assert_eq!(s.seller_post(&fulfilled, "fulfill").await.status(), 200);
    let res =
        s.t.http
            .post(s.t.api("order", &format!("/orders/{cancelled}/cancel")))
            .bearer_auth(&s.customer)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    s.status_becomes(&declined, "CANCELLED").await;
    s.status_becomes(&pending, "CONFIRMED").await;
    s.payment_becomes(&fulfilled, "CAPTURED").await;
    s.payment_becomes(&cancelled, "VOIDED").await;
    // An order refused for want of stock leaves nothing behind either.
    let short = s
        .order(
            json!([{"product_id": product, "quantity": 1000}]),
            "pm_card_visa",
        )
        .await;
    assert_eq!(short.status(), StatusCode::CONFLICT);

    let shop = shop_of(&s);
    // Clean once the saga has settled (polled: the last events may still be on their way).
    let clean = eventually(WAIT, || async {
        let r = run_audit(&shop, &s.admin).await;
        r.clean().then_some(r)
    })
    .await;
    assert_eq!(clean.orders, 5, "{clean:?}");
    assert!(clean.reservations >= 4 && clean.payments >= 4, "{clean:?}");
    let (code, out) = audit_binary(&s, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("clean: every invariant holds"), "{out}");

    let order_db = s.t.service_db("order").await;
    let inventory_db = s.t.service_db("inventory").await;
    let payment_db = s.t.service_db("payment").await;
    let an_hour_ago = now_us() - 3_600_000_000;

    // 1. Stock changed behind the ledger's back.
    mercato_kit::db::query("UPDATE stock SET on_hand = on_hand + 5 WHERE product_id = $1")
        .bind(&product)
        .execute(inventory_db.writer())
        .await
        .unwrap();
    named(
        &shop,
        &s.admin,
        "stock",
        &[&product, "but the ledger adds up to"],
    )
    .await;

    // 2. A cancelled order whose reservation is still active.
    mercato_kit::db::query(
        "UPDATE orders SET status = 'CANCELLED', cancel_reason = 'customer_cancelled' WHERE id = $1",
    )
    .bind(&pending)
    .execute(order_db.writer())
    .await
    .unwrap();
    named(
        &shop,
        &s.admin,
        "reservation",
        &[&pending, "reservation left active for a cancelled order"],
    )
    .await;

    // 3. A second live authorization of one order's payment.
    let payment_id = s.payment(&paid).await.expect("a payment")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    mercato_kit::db::query(
        "INSERT INTO payment_transactions (id, payment_id, kind, idempotency_key, amount_cents, attempt, \
         outcome, http_status, provider_ref, summary, duration_ms, created_at) \
         VALUES ($1, $2, 'authorize', 'planted-second-hold', 1000, 1, 'succeeded', 200, 'pi_planted', 'planted', 1, $3)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&payment_id)
    .bind(an_hour_ago)
    .execute(payment_db.writer())
    .await
    .unwrap();
    named(
        &shop,
        &s.admin,
        "payment",
        &[&payment_id, &paid, "authorized it 2 times"],
    )
    .await;

    // 4. A payment for an order that does not exist.
    let ghost = uuid::Uuid::now_v7().to_string();
    mercato_kit::db::query(
        "INSERT INTO payments (id, order_id, status, amount_cents, currency, payment_method, created_at, updated_at) \
         VALUES ($1, $2, 'AUTHORIZED', 500, 'USD', 'pm_card_visa', $3, $3)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&ghost)
    .bind(an_hour_ago)
    .execute(payment_db.writer())
    .await
    .unwrap();
    named(
        &shop,
        &s.admin,
        "payment",
        &[&ghost, "which does not exist"],
    )
    .await;

    // 5. An order stuck in PENDING for an hour.
    let stuck = uuid::Uuid::now_v7().to_string();
    mercato_kit::db::query(
        "INSERT INTO orders (id, customer_id, status, total_cents, currency, payment_method, stock_check, \
         created_at, updated_at, version) VALUES ($1, $2, 'PENDING', 100, 'USD', 'pm_card_visa', 'passed', $3, $3, 1)",
    )
    .bind(&stuck)
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(an_hour_ago)
    .execute(order_db.writer())
    .await
    .unwrap();
    named(&shop, &s.admin, "deadline", &[&stuck, "PENDING for 3600 s"]).await;

    // 6. A second order placed with one customer's Idempotency-Key.
    let copy = uuid::Uuid::now_v7().to_string();
    mercato_kit::db::query(
        "INSERT INTO orders (id, customer_id, status, cancel_reason, total_cents, currency, payment_method, \
         stock_check, created_at, updated_at, version, idempotency_key) \
         SELECT $1, customer_id, 'CANCELLED', 'customer_cancelled', total_cents, currency, payment_method, \
         stock_check, $2, $2, 1, idempotency_key FROM orders WHERE id = $3",
    )
    .bind(&copy)
    .bind(an_hour_ago)
    .bind(&paid)
    .execute(order_db.writer())
    .await
    .unwrap();
    let r = named(&shop, &s.admin, "idempotency", &[&paid, &copy]).await;
    // Every earlier one is still named.
    for check in ["stock", "reservation", "payment", "deadline"] {
        assert!(!r.of(check).is_empty(), "{check}: {:?}", r.violations);
    }

    let (code, out) = audit_binary(&s, &["--settle", "0"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  stock") && out.contains(&stuck), "{out}");
    // An unreachable shop is "could not run".
    let (code, out) = audit_binary(&s, &["--admin-password", "wrong-password-1"]).await;
    assert_eq!(code, Some(2), "{out}");
    for db in [order_db, inventory_db, payment_db] {
        db.close().await;
    }
    s.t.stop().await;
}

#[tokio::test]
async fn audit_routes_are_admin_only_paged_and_documented() {
    let s = support::Shop::open(&[]).await;
    s.product(500, 5).await;
    let routes = [
        ("order", "/admin/audit/orders"),
        ("order", "/admin/audit/order-keys"),
        ("order", "/admin/audit/events"),
        ("inventory", "/admin/audit/stock"),
        ("inventory", "/admin/audit/reservations"),
        ("inventory", "/admin/audit/events"),
        ("payment", "/admin/audit/payments"),
        ("payment", "/admin/audit/events"),
        ("catalog", "/admin/audit/events"),
        ("cart", "/admin/audit/events"),
    ];
    for (service, path) in routes {
        let url = s.t.api(service, path);
        for (token, status) in [
            (None, 401),
            (Some(&s.customer), 403),
            (Some(&s.seller), 403),
        ] {
            let mut req = s.t.http.get(&url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            problem(req.send().await.unwrap(), status).await;
        }
        let res =
            s.t.http
                .get(&url)
                .bearer_auth(&s.admin)
                .send()
                .await
                .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{service} {path}");
        let doc: Value =
            s.t.http
                .get(format!("{}/openapi.json", s.t.base(service)))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert!(
            doc["paths"].get(format!("/api/v1{path}")).is_some(),
            "{service} documents {path}"
        );
    }
    // Bad pages are refused with what is wrong.
    for query in ["limit=0", "limit=1001", "cursor=not-an-id"] {
        let res =
            s.t.http
                .get(format!(
                    "{}?{query}",
                    s.t.api("inventory", "/admin/audit/stock")
                ))
                .bearer_auth(&s.admin)
                .send()
                .await
                .unwrap();
        problem(res, 422).await;
    }
    // Pages follow their cursor to the end.
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    loop {
        let mut url = format!("{}?limit=1", s.t.api("inventory", "/admin/audit/stock"));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value =
            s.t.http
                .get(url)
                .bearer_auth(&s.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        seen += page["items"].as_array().unwrap().len();
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, 1);
    // Through the gateway, as /admin/{service}/...
    let res =
        s.t.http
            .get(s.t.api("gateway", "/admin/payment/audit/payments"))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.t.stop().await;
}
