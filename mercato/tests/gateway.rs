//! The gateway as a client sees it: one address for the whole API, edge rules, problems that
//! name a failing service, streams passed through, and one API document.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{eventually, problem, Shop, TestStack, WAIT};

fn gw(t: &TestStack, path: &str) -> String {
    format!("{}/api/v1{path}", t.base("gateway"))
}

/// A port nothing listens on, below the kernel's ephemeral range: a port 0 bind hands out
/// ports from that range only, so a service the stack starts afterwards cannot take this one
/// (a just-closed ephemeral port was, and the "dead" service answered 404).
fn closed_port() -> u16 {
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(10_000).max(1);
    let pid = std::process::id();
    (0..1000u32)
        .map(|i| (10_000 + (pid + i * 7) % span) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A server that accepts connections and never answers.
async fn silent_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn every_route_family_answers_through_the_gateway() {
    let shop = Shop::open(&[]).await;
    let t = &shop.t;
    let product = shop.product(1500, 5).await;
    let order = shop.place(&product, 1, "pm_card_visa").await;
    shop.status_becomes(&order, "PAID").await;

    let get = |path: String, token: Option<String>| {
        let req = t.http.get(path);
        let req = match token {
            Some(tok) => req.bearer_auth(tok),
            None => req,
        };
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            (status, body)
        }
    };
    let customer = Some(shop.customer.clone());
    let admin = Some(shop.admin.clone());
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("/auth/me", customer.clone(), "auth"),
        ("/admin/users", admin.clone(), "auth"),
        ("/products?limit=5", None, "catalog"),
        ("/categories", None, "catalog"),
        ("/cart", customer.clone(), "cart"),
        ("/orders", customer.clone(), "order"),
        ("/inventory?limit=5", None, "inventory"),
    ];
    for (path, token, service) in cases {
        let (status, via_gateway) = get(gw(t, path), token.clone()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {via_gateway}");
        let (_, direct) = get(t.api(service, path), token).await;
        assert_eq!(
            via_gateway, direct,
            "{path} is the {service} service's answer"
        );
    }
    let (status, one) = get(gw(t, &format!("/orders/{order}")), customer.clone()).await;
    assert_eq!(
        (status, one["status"].as_str()),
        (StatusCode::OK, Some("PAID"))
    );
    let (status, payments) =
        get(gw(t, &format!("/payments?order_id={order}")), admin.clone()).await;
    assert_eq!(status, StatusCode::OK, "{payments}");
    assert!(payments.to_string().contains(&order));
    let (status, jwks) = get(format!("{}/.well-known/jwks.json", t.base("gateway")), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    // A service's own admin routes, addressed by name.
    let (status, dead) = get(gw(t, "/admin/order/dead-letters"), admin.clone()).await;
    assert_eq!(status, StatusCode::OK, "{dead}");

    let res = t.http.get(gw(t, "/nothing-here")).send().await.unwrap();
    problem(res, 404).await;
    shop.t.stop().await;
}

#[tokio::test]
async fn a_missing_service_gets_a_quick_problem_naming_it_and_the_rest_keeps_working() {
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let silent = silent_server().await;
    let t = TestStack::start_with(&[
        ("MERCATO_INVENTORY_URLS", &dead),
        ("MERCATO_CART_URLS", &silent),
        ("MERCATO_GATEWAY_TIMEOUT_MS", "300"),
    ])
    .await;

    let started = Instant::now();
    let res = t.http.get(gw(&t, "/inventory")).send().await.unwrap();
    let p = problem(res, 502).await;
    assert_eq!(
        (p["code"].as_str(), p["service"].as_str()),
        (Some("upstream_unreachable"), Some("inventory"))
    );
    // "Quickly" here means it does not wait for any timeout: a refused connection is known at
    // once. The bound is loose on purpose; it only catches a hang.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let res = t.http.get(gw(&t, "/cart")).send().await.unwrap();
    let p = problem(res, 504).await;
    assert_eq!(
        (p["code"].as_str(), p["service"].as_str()),
        (Some("upstream_timeout"), Some("cart"))
    );

    let res = t.http.get(gw(&t, "/products")).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "other services are unaffected"
    );

    // The gateway stays ready (taking it out would take the whole shop down) and says which
    // service is not.
    let ready = t
        .http
        .get(format!("{}/health/ready", t.base("gateway")))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let deep: Value = t
        .http
        .get(format!("{}/health/deep", t.base("gateway")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status_of = |name: &str| {
        deep["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["status"].clone())
    };
    assert_eq!(status_of("inventory"), Some(json!("down")), "{deep}");
    assert_eq!(status_of("catalog"), Some(json!("up")), "{deep}");

    let metrics = t
        .http
        .get(format!("{}/metrics", t.base("gateway-ops")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_upstream_requests_total")
                && l.contains(r#"outcome="unreachable""#)
                && l.contains(r#"upstream="inventory""#)),
        "{metrics}"
    );
    t.stop().await;
}

/// A stand-in catalog replica that answers every request with its own name.
async fn named_replica(name: &'static str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app =
        axum::Router::new().fallback(move || async move { axum::Json(json!({"replica": name})) });
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn requests_are_spread_over_replicas_and_a_dead_replica_is_passed_over() {
    let a = named_replica("a").await;
    let b = named_replica("b").await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let t = TestStack::start_with(&[("MERCATO_CATALOG_URLS", &format!("{a},{dead},{b}"))]).await;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..12 {
        let res = t.http.get(gw(&t, "/categories")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "the dead replica never shows");
        let v: Value = res.json().await.unwrap();
        *counts
            .entry(v["replica"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    let (ca, cb) = (counts["a"], counts["b"]);
    assert_eq!(ca + cb, 12);
    assert!(ca >= 4 && cb >= 4, "both replicas serve: {counts:?}");
    // A request with a body is never sent twice, so a dead replica costs that one request a
    // 502 at most; requests without a body always find a live replica.
    t.stop().await;
}

/// A stand-in catalog replica that answers every request 503 (draining, or cut off from its
/// database), counting them.
async fn unwell_replica() -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"replica": "unwell"})),
            )
        }
    });
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_replica_answering_503_is_passed_over_by_requests_that_may_be_repeated() {
    let good = named_replica("good").await;
    let (unwell, seen) = unwell_replica().await;
    let t = TestStack::start_with(&[("MERCATO_CATALOG_URLS", &format!("{unwell},{good}"))]).await;
    for _ in 0..6 {
        let res = t.http.get(gw(&t, "/categories")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.json::<Value>().await.unwrap()["replica"], "good");
    }
    assert!(
        seen.load(Ordering::SeqCst) >= 3,
        "the unwell replica was asked in its turn"
    );
    // A POST without an Idempotency-Key may not be sent twice: its 503 is the answer.
    let mut answers = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let res = t
            .http
            .post(gw(&t, "/categories"))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        answers.insert(res.status().as_u16());
    }
    assert!(answers.contains(&503), "{answers:?}");
    let retries = t
        .http
        .get(format!("{}/metrics", t.base("gateway-ops")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .find(|l| {
            l.starts_with("http_client_retries_total") && l.contains("dependency=\"catalog\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retries >= 3.0, "{retries}");
    t.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_recover() {
    let t = TestStack::start_with(&[
        ("MERCATO_RATE_LIMIT_IP_PER_SEC", "2"),
        ("MERCATO_RATE_LIMIT_IP_BURST", "3"),
    ])
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let res = t.http.get(gw(&t, "/categories")).send().await.unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = limited.expect("the address is limited after its burst");
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    problem(res, 429).await;
    // Tokens come back: the address is served again.
    eventually(WAIT, || async {
        let res = t.http.get(gw(&t, "/categories")).send().await.unwrap();
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;
    // The services' own ports are not the gateway's business.
    for _ in 0..10 {
        let res = t
            .http
            .get(t.api("catalog", "/categories"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    t.stop().await;
}

#[tokio::test]
async fn each_user_has_a_bucket_of_their_own() {
    let t = TestStack::start_with(&[
        ("MERCATO_RATE_LIMIT_USER_PER_SEC", "1"),
        ("MERCATO_RATE_LIMIT_USER_BURST", "2"),
    ])
    .await;
    let (_, first) = t.user("CUSTOMER").await;
    let (_, second) = t.user("CUSTOMER").await;
    let me = |token: &str| t.http.get(gw(&t, "/auth/me")).bearer_auth(token).send();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(me(&first).await.unwrap().status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let res = me(&second).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "another user is not held back"
    );
    let res = t.http.get(gw(&t, "/categories")).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "anonymous traffic is limited per address only"
    );
    t.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_stopped_at_the_edge() {
    // The order service is not there at all: an answer other than 502 came from the gateway.
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let t = TestStack::start_with(&[("MERCATO_ORDER_URLS", &dead)]).await;
    let (_, token) = t.user("CUSTOMER").await;
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in ["not-a-jwt", tampered.as_str()] {
        let res = t
            .http
            .get(gw(&t, "/orders"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        let p = problem(res, 401).await;
        assert_eq!(p["rejected_by"], "gateway", "{p}");
    }
    let res = t
        .http
        .get(gw(&t, "/orders"))
        .header("authorization", "Basic dXNlcjpwdw==")
        .send()
        .await
        .unwrap();
    problem(res, 401).await;
    // A good token passes the edge and reaches the (missing) service.
    let res = t
        .http
        .get(gw(&t, "/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(res, 502).await;
    t.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_headers_are_set() {
    let t = TestStack::start_with(&[("MERCATO_BODY_LIMIT_BYTES", "2048")]).await;
    let big = "x".repeat(4096);
    let res = t
        .http
        .post(gw(&t, "/auth/register"))
        .json(&json!({"email": "big@test.local", "password": big, "name": "Big"}))
        .send()
        .await
        .unwrap();
    let p = problem(res, 413).await;
    assert_eq!(p["code"], "payload_too_large");

    // On the services' answers it forwards and on its own (a 413, a 404, health) alike.
    // An unknown API path: the gateway answers it itself (other paths are the web app's).
    let own_404 = format!("{}/api/nothing-here", t.base("gateway"));
    let health = format!("{}/health/ready", t.base("gateway"));
    for url in [gw(&t, "/categories"), own_404, health] {
        let res = t.http.get(&url).send().await.unwrap();
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{url}");
        assert_eq!(h["x-frame-options"], "DENY", "{url}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'"),
            "{url}"
        );
    }
    let res = t
        .http
        .post(gw(&t, "/auth/register"))
        .json(&json!({"email": "big@test.local", "password": "x".repeat(4096), "name": "Big"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    // The gateway's metrics are on its operator port, not where strangers connect.
    let public = t
        .http
        .get(format!("{}/metrics", t.base("gateway")))
        .send()
        .await
        .unwrap();
    problem(public, 404).await;
    let ops = t
        .http
        .get(format!("{}/metrics", t.base("gateway-ops")))
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), StatusCode::OK);
    assert!(ops.text().await.unwrap().contains("http_requests_total"));
    t.stop().await;
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let t = TestStack::start_with(&[("MERCATO_CORS_ORIGINS", "https://shop.example")]).await;
    let preflight = |origin: &'static str| {
        t.http
            .request(reqwest::Method::OPTIONS, gw(&t, "/cart/items"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let res = preflight("https://shop.example").await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key"), "{allowed}");
    let res = preflight("https://evil.example").await.unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    t.stop().await;
}

#[tokio::test]
async fn the_context_of_a_request_reaches_the_service_and_its_events() {
    let shop = Shop::open(&[]).await;
    let t = &shop.t;
    let product = shop.product(700, 3).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = t
        .http
        .post(gw(t, "/orders"))
        .bearer_auth(&shop.customer)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", "checkout-42")
        .header("traceparent", trace)
        .json(&json!({"items": [{"product_id": product, "quantity": 1}], "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-correlation-id"], "checkout-42");
    let order: Value = res.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let bus = t.bus().await;
    let created = eventually(WAIT, || async {
        bus.all()
            .await
            .into_iter()
            .find(|e| e.event_type == "order.created" && e.payload["order_id"] == id.as_str())
    })
    .await;
    assert_eq!(created.correlation_id.as_deref(), Some("checkout-42"));
    let tp = created.traceparent.unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace, the gateway's span: {tp}"
    );
    shop.t.stop().await;
}

#[tokio::test]
async fn one_api_document_and_an_offline_explorer() {
    let t = TestStack::start().await;
    let base = t.base("gateway");
    let doc: Value = t
        .http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["info"]["title"], "Mercato API");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/login",
        "/api/v1/products",
        "/api/v1/cart",
        "/api/v1/cart/checkout",
        "/api/v1/orders/{id}",
        "/api/v1/inventory/{product_id}",
        "/api/v1/payments/{id}",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the merged document"
        );
    }
    // Every reference resolves inside the merged document.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling reference to {name}");
    }

    let page = t.http.get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("http"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(!html.contains("https://"), "nothing from a CDN: {html}");
    for asset in [
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
        "/docs/init.js",
    ] {
        assert!(html.contains(asset), "{asset} linked");
        let res = t.http.get(format!("{base}{asset}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
        assert!(
            res.bytes().await.unwrap().len() > 100,
            "{asset} has content"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn a_customer_journey_through_the_front_door_only() {
    let t = TestStack::start().await;
    let base = t.base("gateway");
    let api = |p: &str| format!("{base}/api/v1{p}");
    let http = &t.http;
    // A seller puts a product on sale and stocks it, all through the gateway.
    let admin = {
        let res = http
            .post(api("/auth/login"))
            .json(&json!({"email": support::ADMIN_EMAIL, "password": support::ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let res = http
        .post(api("/products"))
        .bearer_auth(&admin)
        .header("Idempotency-Key", "journey-product")
        .json(&json!({"sku": "JOURNEY-1", "name": "Journey Lantern", "category": "outdoor", "price_cents": 2450}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let product = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(WAIT, || async {
        let r = http
            .put(api(&format!("/inventory/{product}")))
            .bearer_auth(&admin)
            .json(&json!({"on_hand": 5}))
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    // Each service reads the catalog's events on its own: inventory knowing the product says
    // nothing of order, whose read model prices the checkout.
    let (catalog, order) = (t.base("catalog"), t.base("order"));
    support::consumed_by(http, &admin, &catalog, &order, &product, WAIT).await;

    // The customer: register, log in, search, fill the cart, check out, watch it get paid.
    let res = http
        .post(api("/auth/register"))
        .json(&json!({"email": "journey@test.local", "password": support::PASSWORD, "name": "Jo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = http
        .post(api("/auth/login"))
        .json(&json!({"email": "journey@test.local", "password": support::PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let found: Value = http
        .get(api("/products?q=journey%20lantern"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"][0]["id"], product.as_str(), "{found}");
    let res = http
        .post(api("/cart/items"))
        .bearer_auth(&token)
        .json(&json!({"product_id": product, "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let cart: Value = http
        .get(api("/cart"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["total_cents"], 4900, "{cart}");
    let res = http
        .post(api("/cart/checkout"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "journey-checkout")
        .json(&json!({"payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let order = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The order's stream, through the gateway, until it reports PAID.
    let mut stream = http
        .get(api(&format!("/orders/{order}/stream")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while !seen.contains("PAID") {
        assert!(Instant::now() < deadline, "no PAID on the stream: {seen}");
        match tokio::time::timeout(WAIT, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("stream ended before PAID ({other:?}): {seen}"),
        }
    }
    // Paid: the cart empties itself.
    eventually(WAIT, || async {
        let cart: Value = http
            .get(api("/cart"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (cart["items"].as_array().is_some_and(|i| i.is_empty())).then_some(())
    })
    .await;
    t.stop().await;
}
