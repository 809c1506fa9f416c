//! The operator console's API through the gateway: the summary, an order's timeline, psp-mock's
//! chaos, the services' event trails and the new list filters. ADMIN only (401 without a token,
//! 403 for other roles), problem+json on bad input. SQLite by default; PostgreSQL + NATS with
//! the `MERCATO_TEST_*` variables.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{eventually, problem, Shop, TestStack, WAIT};

fn gw(t: &TestStack, path: &str) -> String {
    format!("{}/api/v1{path}", t.base("gateway"))
}

async fn get(t: &TestStack, path: &str, token: &str) -> reqwest::Response {
    t.http
        .get(gw(t, path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn json_of(t: &TestStack, path: &str, token: &str) -> Value {
    let res = get(t, path, token).await;
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn service<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} in {summary}"))
}

#[tokio::test]
async fn the_console_routes_are_for_admins_only_and_say_what_is_wrong() {
    let s = Shop::open(&[]).await;
    let t = &s.t;
    let p = s.product(900, 5).await;
    let id = s.place(&p, 1, "pm_card_visa").await;
    let routes = [
        (Method::GET, "/admin/summary".to_owned()),
        (Method::GET, format!("/admin/orders/{id}/timeline")),
        (Method::GET, "/admin/psp-mock/chaos".to_owned()),
        (Method::PUT, "/admin/psp-mock/chaos".to_owned()),
        (Method::DELETE, "/admin/psp-mock/chaos".to_owned()),
        (
            Method::GET,
            format!("/admin/inventory/audit/trail?mentions={id}"),
        ),
    ];
    for (method, path) in &routes {
        let anon = t
            .http
            .request(method.clone(), gw(t, path))
            .send()
            .await
            .unwrap();
        problem(anon, 401).await;
        for token in [&s.customer, &s.seller] {
            let res = t
                .http
                .request(method.clone(), gw(t, path))
                .bearer_auth(token)
                .json(&json!({"error_rate": 1.0}))
                .send()
                .await
                .unwrap();
            problem(res, 403).await;
        }
    }
    // Nothing the refused callers sent reached psp-mock.
    let chaos = json_of(t, "/admin/psp-mock/chaos", &s.admin).await;
    assert_eq!(chaos["error_rate"], 0.0, "{chaos}");

    // Bad input: 4xx problems that name what is wrong, never a 500.
    problem(
        get(t, "/admin/orders/not-a-uuid/timeline", &s.admin).await,
        400,
    )
    .await;
    let unknown = uuid::Uuid::now_v7();
    problem(
        get(t, &format!("/admin/orders/{unknown}/timeline"), &s.admin).await,
        404,
    )
    .await;
    for (path, field) in [
        ("/admin/order/audit/trail?mentions=%25", "mentions"),
        (
            &*format!("/admin/order/audit/trail?mentions={id}&consumed=x"),
            "consumed",
        ),
        ("/orders?created_from=yesterday", "created_from"),
        ("/orders?stuck_minutes=0", "stuck_minutes"),
        (&*format!("/admin/users?q={}", "x".repeat(101)), "q"),
    ] {
        let p = problem(get(t, path, &s.admin).await, 422).await;
        assert_eq!(p["errors"][0]["field"], field, "{path}: {p}");
    }
    problem(get(t, "/admin/order/audit/trail", &s.admin).await, 400).await;
    let bad = t
        .http
        .put(gw(t, "/admin/psp-mock/chaos"))
        .bearer_auth(&s.admin)
        .json(&json!({"error_rate": 7}))
        .send()
        .await
        .unwrap();
    assert!(bad.status().is_client_error(), "{}", bad.status());

    // The test hooks are not there unless asked for.
    let hook = t
        .http
        .put(gw(t, "/admin/inventory/test/failing-events"))
        .bearer_auth(&s.admin)
        .json(&json!({"event_types": ["order.created"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), StatusCode::NOT_FOUND);
    s.t.stop().await;
}

#[tokio::test]
async fn the_summary_shows_health_breakers_chaos_and_the_sagas_flow() {
    let s = Shop::open(&[]).await;
    let t = &s.t;
    let p = s.product(1200, 20).await;
    let id = s.place(&p, 1, "pm_card_visa").await;
    s.status_becomes(&id, "PAID").await;

    let summary = json_of(t, "/admin/summary", &s.admin).await;
    for name in [
        "gateway",
        "auth",
        "catalog",
        "order",
        "payment",
        "cart",
        "inventory",
        "psp-mock",
    ] {
        let svc = service(&summary, name);
        assert_eq!(svc["status"], "healthy", "{svc}");
        assert_eq!(svc["replicas_up"], 1);
    }
    let order = service(&summary, "order");
    assert!(order["orders"]["created_total"].as_f64().unwrap() >= 1.0);
    assert!(order["orders"]["paid_total"].as_f64().unwrap() >= 1.0);
    assert!(order["orders"]["time_to_paid"]["count"].as_f64().unwrap() >= 1.0);
    assert!(order["requests_total"].as_f64().unwrap() >= 1.0, "{order}");
    assert!(order["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["dependency"] == "inventory" && b["state"] == "closed"));

    // Chaos on inventory: its checks still pass, yet the console calls it degraded and says why.
    let res = t
        .http
        .put(gw(t, "/admin/inventory/chaos"))
        .bearer_auth(&s.admin)
        .json(&json!({"error_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let summary = json_of(t, "/admin/summary", &s.admin).await;
    let inventory = service(&summary, "inventory");
    assert_eq!(inventory["status"], "degraded");
    assert_eq!(inventory["chaos"]["error_rate"], 1.0);
    assert!(
        inventory["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("chaos injected: 100% errors")),
        "{inventory}"
    );
    // psp-mock's chaos through the gateway, shown on its tile.
    let res = t
        .http
        .put(gw(t, "/admin/psp-mock/chaos"))
        .bearer_auth(&s.admin)
        .json(&json!({"duplicate_webhook_rate": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let summary = json_of(t, "/admin/summary", &s.admin).await;
    assert_eq!(service(&summary, "psp-mock")["status"], "degraded");
    for path in ["/admin/inventory/chaos", "/admin/psp-mock/chaos"] {
        let res = t
            .http
            .delete(gw(t, path))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
    }
    let summary = json_of(t, "/admin/summary", &s.admin).await;
    assert_eq!(service(&summary, "inventory")["status"], "healthy");
    s.t.stop().await;
}

#[tokio::test]
async fn an_orders_timeline_and_the_new_filters() {
    let s = Shop::open(&[]).await;
    let t = &s.t;
    let p = s.product(700, 5).await;
    let id = s.place(&p, 1, "pm_card_visa").await;
    s.status_becomes(&id, "PAID").await;

    // Consumed events are recorded after the effect commits: poll until the trail has them.
    let timeline = eventually(WAIT, || async {
        let v = json_of(t, &format!("/admin/orders/{id}/timeline"), &s.admin).await;
        let kinds: Vec<String> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        let has = |k: &str| kinds.iter().any(|x| x == k);
        (has("history")
            && has("reservation")
            && has("payment")
            && has("published")
            && has("consumed"))
        .then_some(v)
    })
    .await;
    assert_eq!(timeline["order"]["status"], "PAID");
    assert_eq!(timeline["missing"], json!([]));
    let entries = timeline["entries"].as_array().unwrap();
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(entries[i]["at"].as_str().unwrap()).unwrap()
    };
    assert!(
        (1..entries.len()).all(|i| at(i - 1) <= at(i)),
        "oldest first"
    );
    let titles: Vec<&str> = entries
        .iter()
        .map(|e| e["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "order.created published",
        "inventory.reserved published",
        "payment.authorized published",
        "CONFIRMED → PAID",
    ] {
        assert!(titles.contains(&wanted), "{wanted} in {titles:?}");
    }

    // The new filters: placed before now, not after; a fresh PAID order is not stuck.
    let now = chrono::Utc::now();
    let from =
        (now + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to =
        (now + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let later = json_of(t, &format!("/orders?created_from={from}"), &s.admin).await;
    assert_eq!(later["items"], json!([]));
    let before = json_of(t, &format!("/orders?created_to={to}"), &s.admin).await;
    assert!(before["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == id.as_str()));
    let stuck = json_of(t, "/orders?stuck_minutes=1", &s.admin).await;
    assert_eq!(stuck["items"], json!([]));

    // Users: found by part of the email or name, any case; LIKE's wildcards are literal.
    let all = json_of(t, "/admin/users?q=ROOT%40Test", &s.admin).await;
    let emails: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert!(
        !emails.is_empty() && emails.iter().all(|e| e.contains("root@test")),
        "{emails:?}"
    );
    let none = json_of(t, "/admin/users?q=%25", &s.admin).await;
    assert_eq!(none["items"], json!([]));
    s.t.stop().await;
}
