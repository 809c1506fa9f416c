//! The order routes through the kit's HTTP stack (`tower::ServiceExt::oneshot`, no socket),
//! with tokens signed by a test RSA key and verified by `Verifier::local`: who may see and do
//! what, the answers' shapes, idempotency, `?wait`, and the status stream.

mod support;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use futures::StreamExt;
use mercato_kit::auth::Role;
use mercato_kit::contracts::ReleaseReason;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::ids::UserId;
use mercato_kit::metrics::Metrics;
use mercato_kit::testing::until;
use mercato_order::domain::OrderStatus;
use mercato_order::http::{router, AppState};
use mercato_order::inventory::StockAnswer;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;
use tower::ServiceExt;

fn token(subject: &str, role: Role) -> String {
    mercato_kit::testing::token(subject, role)
}

struct Api {
    h: Harness,
    app: axum::Router,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn api() -> Api {
    let h = harness().await;
    let verifier = mercato_kit::testing::verifier();
    let (routes, openapi) = router(AppState {
        orders: h.orders.clone(),
        verifier,
        max_wait: Duration::from_secs(10),
    });
    let service = Service::new(
        "order",
        routes,
        openapi,
        Metrics::new("order"),
        vec![],
        &HttpSettings {
            request_timeout: Duration::from_secs(15),
            body_limit_bytes: 256 * 1024,
            ..Default::default()
        },
    );
    Api {
        app: service.router(),
        h,
    }
}

struct User {
    id: UserId,
    token: String,
}

fn user(role: Role) -> User {
    let id = UserId::new();
    User {
        token: token(&id.to_string(), role),
        id,
    }
}

/// A request as a client would send it; `who` signs it with their bearer token.
fn request(
    method: Method,
    uri: &str,
    who: Option<&User>,
    body: Option<Value>,
    key: Option<&str>,
) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(u) = who {
        req = req.header("authorization", format!("Bearer {}", u.token));
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

/// A GET from `who`, for the routes that answer by waiting or streaming.
fn get_request(uri: &str, who: &User) -> Request<Body> {
    request(Method::GET, uri, Some(who), None, None)
}

/// Reads a `text/event-stream` body one event (up to its blank line) at a time; `None` once
/// the server ends the stream.
struct EventReader {
    body: axum::body::BodyDataStream,
    text: String,
}

impl EventReader {
    fn new(res: axum::response::Response) -> EventReader {
        EventReader {
            body: res.into_body().into_data_stream(),
            text: String::new(),
        }
    }

    async fn next(&mut self) -> Option<String> {
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.body.next())
                .await
                .expect("an event in time");
            let chunk = chunk?;
            self.text
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if self.text.ends_with("\n\n") {
                return Some(std::mem::take(&mut self.text));
            }
        }
    }
}

impl Api {
    async fn send(&self, req: Request<Body>) -> Answer {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        who: Option<&User>,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Answer {
        self.send(request(method, uri, who, body, key)).await
    }

    async fn place(&self, who: Option<&User>, body: Value, key: Option<&str>) -> Answer {
        self.call(Method::POST, "/api/v1/orders", who, Some(body), key)
            .await
    }

    async fn get(&self, uri: &str, who: &User) -> Answer {
        self.call(Method::GET, uri, Some(who), None, None).await
    }

    /// A POST with a fresh Idempotency-Key, as every client sends (placing an order needs
    /// one).
    async fn post(&self, uri: &str, who: &User, body: Option<Value>) -> Answer {
        let key = uuid::Uuid::new_v4().to_string();
        self.call(Method::POST, uri, Some(who), body, Some(&key))
            .await
    }

    /// A PENDING order of `customer` for 2 × a product of `seller` at 1250.
    async fn order(&self, customer: &User, seller: &User) -> Value {
        let p = self.h.seed_product(seller.id, 1250).await;
        let a = self
            .post(
                "/api/v1/orders",
                customer,
                Some(json!({"items": [{"product_id": p.product_id, "quantity": 2}], "payment_method": "pm_card_visa"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body
    }
}

fn id_of(order: &Value) -> mercato_kit::ids::OrderId {
    order["id"].as_str().unwrap().parse().unwrap()
}

/// Requests racing with one Idempotency-Key (a client retrying before its first answer
/// came) place one order between them, and every one of them is answered with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_with_one_key_place_one_order() {
    let api = api().await;
    let (customer, seller) = (user(Role::Customer), user(Role::Seller));
    let p = api.h.seed_product(seller.id, 1250).await;
    let body = json!({"items": [{"product_id": p.product_id, "quantity": 1}],
                      "payment_method": "pm_card_visa"});
    let answers = futures::future::join_all(
        (0..8).map(|_| api.place(Some(&customer), body.clone(), Some("race"))),
    )
    .await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let ids: std::collections::BTreeSet<_> =
        answers.iter().map(|a| a.body["id"].to_string()).collect();
    assert_eq!(
        ids.len(),
        1,
        "one order for the key, answered to all: {ids:?}"
    );
    let created = api
        .h
        .outbox()
        .await
        .into_iter()
        .filter(|e| e.event_type == "order.created")
        .count();
    assert_eq!(created, 1, "the losers' orders were rolled back");
    let replayed = answers
        .iter()
        .filter(|a| a.headers.get("idempotency-replayed").is_some())
        .count();
    assert_eq!(replayed, 7, "all but the first are replays");
}

#[tokio::test]
async fn placing_an_order_checks_the_caller_the_input_and_the_stock() {
    let api = api().await;
    let (customer, seller) = (user(Role::Customer), user(Role::Seller));
    let p = api.h.seed_product(seller.id, 1250).await;
    let good = json!({
        "items": [{"product_id": p.product_id, "quantity": 2}],
        "payment_method": "pm_card_visa",
        "shipping_address": {"name": "Casey", "line1": "1 Main St", "city": "Springfield",
                             "postal_code": "12345", "country": "us"}
    });

    let a = api.place(None, good.clone(), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = api
        .post("/api/v1/orders", &seller, Some(good.clone()))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Without an Idempotency-Key (API.md requires one): refused, naming it.
    let a = api.place(Some(&customer), good.clone(), None).await;
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("idempotency_key_required"))
    );
    assert!(a.body["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));

    let a = api.place(Some(&customer), good.clone(), Some("k1")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let o = &a.body;
    assert_eq!(o["status"], "PENDING");
    assert_eq!(o["customer_id"], customer.id.to_string());
    assert_eq!(o["cancel_reason"], Value::Null);
    assert_eq!(o["total_cents"], 2500);
    assert_eq!(o["currency"], "USD");
    assert_eq!(o["payment_method"], "pm_card_visa");
    assert_eq!(o["stock_check"], "passed");
    assert_eq!(o["shipping_address"]["country"], "US");
    assert_eq!(o["items"][0]["product_id"], p.product_id.to_string());
    assert_eq!(o["items"][0]["quantity"], 2);
    assert_eq!(o["items"][0]["price_cents"], 1250);
    assert_eq!(o["items"][0]["name"], p.name);
    assert!(o["created_at"].as_str().unwrap().ends_with('Z'));

    // The same key and body: the same order, replayed; another body: refused.
    let again = api.place(Some(&customer), good.clone(), Some("k1")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body["id"], o["id"]);
    assert_eq!(again.headers["idempotency-replayed"], "true");
    let mut other = good.clone();
    other["items"][0]["quantity"] = json!(3);
    let a = api.place(Some(&customer), other, Some("k1")).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        api.h.events_of(id_of(o)).await.len(),
        1,
        "one order.created"
    );

    // Bad input: 422 naming the field.
    for (body, field) in [
        (
            json!({"items": [{"product_id": p.product_id, "quantity": 0}], "payment_method": "pm_card_visa"}),
            "items[0].quantity",
        ),
        (
            json!({"items": [{"product_id": p.product_id, "quantity": 1001}], "payment_method": "pm_card_visa"}),
            "items[0].quantity",
        ),
        (
            json!({"items": [], "payment_method": "pm_card_visa"}),
            "items",
        ),
        (
            json!({"items": [{"product_id": p.product_id, "quantity": 1}], "payment_method": "4242424242424242"}),
            "payment_method",
        ),
        (
            json!({"items": [{"product_id": uuid::Uuid::now_v7(), "quantity": 1}], "payment_method": "pm_card_visa"}),
            "items[0].product_id",
        ),
        (
            json!({"items": [{"product_id": p.product_id, "quantity": 1}], "payment_method": "pm_card_visa",
                "shipping_address": {"name": "C", "line1": "x", "city": "y", "postal_code": "1", "country": "USA"}}),
            "shipping_address.country",
        ),
    ] {
        let a = api.post("/api/v1/orders", &customer, Some(body)).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
        assert_eq!(a.headers["content-type"], "application/problem+json");
        assert_eq!(a.body["errors"][0]["field"], field, "{}", a.body);
    }
    let a = api
        .post("/api/v1/orders", &customer, Some(json!({"items": [{"product_id": p.product_id, "quantity": 1}], "payment_method": "pm_card_visa", "coupon": "x"})))
        .await;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );

    // Short stock: 409 with inventory's lines; inventory down: accepted, deferred.
    let lines = json!([{"product_id": p.product_id, "requested": 2, "available": 1}]);
    *api.h.stock.answer.lock().unwrap() =
        StockAnswer::Short(serde_json::from_value(lines.clone()).unwrap());
    let a = api
        .post("/api/v1/orders", &customer, Some(good.clone()))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.body["code"], "insufficient_stock");
    assert_eq!(a.body["lines"], lines);
    *api.h.stock.answer.lock().unwrap() = StockAnswer::Unknown("down".into());
    let a = api.post("/api/v1/orders", &customer, Some(good)).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.body["stock_check"], "deferred");
}

#[tokio::test]
async fn only_the_customer_its_sellers_admins_and_services_see_an_order() {
    let api = api().await;
    let (customer, seller) = (user(Role::Customer), user(Role::Seller));
    let o = api.order(&customer, &seller).await;
    let uri = format!("/api/v1/orders/{}", o["id"].as_str().unwrap());
    for who in [
        &customer,
        &seller,
        &user(Role::Admin),
        &User {
            id: UserId::new(),
            token: token("service:payment", Role::Service),
        },
    ] {
        let a = api.get(&uri, who).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["id"], o["id"]);
    }
    for who in [&user(Role::Customer), &user(Role::Seller)] {
        let a = api.get(&uri, who).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "existence is not revealed");
        let a = api.get(&format!("{uri}/events"), who).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        let a = api.post(&format!("{uri}/cancel"), who, None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    let a = api
        .get(
            &format!("/api/v1/orders/{}", uuid::Uuid::now_v7()),
            &customer,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = api.get("/api/v1/orders/not-an-id", &customer).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn lists_show_each_caller_its_own_orders_newest_first_page_by_page() {
    let api = api().await;
    let (alice, bob) = (user(Role::Customer), user(Role::Customer));
    let (seller, other_seller) = (user(Role::Seller), user(Role::Seller));
    let a1 = api.order(&alice, &seller).await;
    let b1 = api.order(&bob, &other_seller).await;
    let a2 = api.order(&alice, &other_seller).await;

    let ids = |a: &Answer| -> Vec<Value> {
        a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].clone())
            .collect()
    };
    let a = api.get("/api/v1/orders", &alice).await;
    assert_eq!(ids(&a), [a2["id"].clone(), a1["id"].clone()]);
    let a = api
        .get(&format!("/api/v1/orders?customer_id={}", bob.id), &alice)
        .await;
    assert!(
        ids(&a).is_empty(),
        "a customer cannot list another's orders"
    );
    let a = api.get("/api/v1/orders", &other_seller).await;
    assert_eq!(ids(&a), [a2["id"].clone(), b1["id"].clone()]);
    let admin = user(Role::Admin);
    let a = api
        .get(&format!("/api/v1/orders?customer_id={}", alice.id), &admin)
        .await;
    assert_eq!(ids(&a), [a2["id"].clone(), a1["id"].clone()]);

    // Pages of one, following the cursor to the end.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/orders?limit=1".to_owned();
    loop {
        let a = api.get(&uri, &admin).await;
        assert_eq!(a.status, StatusCode::OK);
        seen.extend(ids(&a));
        match a.body["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/orders?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, [a2["id"].clone(), b1["id"].clone(), a1["id"].clone()]);

    api.post(
        &format!("/api/v1/orders/{}/cancel", a1["id"].as_str().unwrap()),
        &alice,
        None,
    )
    .await;
    let a = api.get("/api/v1/orders?status=CANCELLED", &admin).await;
    assert_eq!(ids(&a), [a1["id"].clone()]);
    for bad in [
        "status=LOST",
        "limit=0",
        "limit=101",
        "cursor=nope",
        "customer_id=x",
    ] {
        let a = api.get(&format!("/api/v1/orders?{bad}"), &admin).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let a = api.get("/api/v1/orders?colour=red", &admin).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_order_moves_only_as_the_state_machine_and_the_roles_allow() {
    let api = api().await;
    let (customer, seller, admin) = (user(Role::Customer), user(Role::Seller), user(Role::Admin));
    let o = api.order(&customer, &seller).await;
    let id = o["id"].as_str().unwrap().to_owned();
    let at = |path: &str| format!("/api/v1/orders/{id}{path}");

    let a = api.post(&at("/process"), &customer, None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = api.post(&at("/process"), &seller, None).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.body["code"], "invalid_transition");
    assert_eq!(
        (a.body["from"].as_str(), a.body["to"].as_str()),
        (Some("PENDING"), Some("PROCESSING"))
    );

    let order = api.h.order(id_of(&o)).await;
    api.h.deliver(&reserved(&order)).await;
    api.h.deliver(&authorized(&order)).await;
    let a = api.post(&at("/process"), &seller, None).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (StatusCode::OK, Some("PROCESSING"))
    );
    // A retried fulfil replays its answer.
    for attempt in ["first", "retried"] {
        let a = api
            .call(
                Method::POST,
                &at("/fulfill"),
                Some(&admin),
                None,
                Some("f1"),
            )
            .await;
        assert_eq!(
            (a.status, a.body["status"].as_str()),
            (StatusCode::OK, Some("FULFILLED")),
            "{attempt} fulfil"
        );
    }
    let a = api.post(&at("/cancel"), &customer, None).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.body["code"], "invalid_transition");
    assert_eq!(a.body["from"], "FULFILLED");
    let a = api
        .call(Method::PATCH, &at(""), Some(&customer), Some(json!({"shipping_address": {"name": "C", "line1": "x", "city": "y", "postal_code": "1", "country": "DE"}})), None)
        .await;
    assert_eq!(
        a.status,
        StatusCode::CONFLICT,
        "no address change after fulfilment"
    );

    let a = api.post(&at("/refund"), &seller, None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = api
        .post(&at("/refund"), &admin, Some(json!({"amount_cents": 2501})))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = api
        .post(&at("/refund"), &admin, Some(json!({"amount": 1})))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = api
        .post(&at("/refund"), &admin, Some(json!({"amount_cents": 1000})))
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (StatusCode::OK, Some("REFUNDED"))
    );

    let a = api.get(&at("/events"), &customer).await;
    assert_eq!(a.status, StatusCode::OK);
    let steps: Vec<_> = a.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap().to_owned(),
                e["to_status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = [
        (1, "order.created", "PENDING"),
        (2, "inventory.reserved", "CONFIRMED"),
        (3, "payment.authorized", "PAID"),
        (4, "order.processing", "PROCESSING"),
        (5, "order.fulfilled", "FULFILLED"),
        (6, "order.refunded", "REFUNDED"),
    ];
    assert_eq!(
        steps,
        expect.map(|(n, t, s)| (n, t.to_owned(), s.to_owned()))
    );
    assert_eq!(a.body["items"][0]["from_status"], Value::Null);
    assert_eq!(a.body["items"][1]["from_status"], "PENDING");
}

#[tokio::test]
async fn customers_and_admins_cancel_and_cancelling_twice_answers_the_same() {
    let api = api().await;
    let (customer, seller, admin) = (user(Role::Customer), user(Role::Seller), user(Role::Admin));
    let o = api.order(&customer, &seller).await;
    let uri = format!("/api/v1/orders/{}", o["id"].as_str().unwrap());

    let a = api
        .call(Method::PATCH, &uri, Some(&customer), Some(json!({"shipping_address": {"name": "Casey", "line1": "2 Side St", "city": "Berlin", "postal_code": "10115", "country": "de"}})), Some("p1"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["shipping_address"]["country"], "DE");
    let a = api
        .call(Method::PATCH, &uri, Some(&seller), Some(json!({"shipping_address": {"name": "S", "line1": "x", "city": "y", "postal_code": "1", "country": "DE"}})), None)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    let a = api.post(&format!("{uri}/cancel"), &seller, None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "sellers do not cancel");
    let a = api
        .call(Method::DELETE, &uri, Some(&customer), None, None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        (a.body["status"].as_str(), a.body["cancel_reason"].as_str()),
        (Some("CANCELLED"), Some("customer_cancelled"))
    );
    let a = api.post(&format!("{uri}/cancel"), &customer, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["cancel_reason"], "customer_cancelled");
    let a = api.post(&format!("{uri}/cancel"), &admin, None).await;
    assert_eq!(
        a.body["cancel_reason"], "customer_cancelled",
        "the first cancel stands"
    );
    let cancels = api
        .h
        .events_of(id_of(&o))
        .await
        .into_iter()
        .filter(|t| t == "order.cancelled")
        .count();
    assert_eq!(cancels, 1);

    let other = api.order(&customer, &seller).await;
    let a = api
        .post(
            &format!("/api/v1/orders/{}/cancel", other["id"].as_str().unwrap()),
            &admin,
            None,
        )
        .await;
    assert_eq!(a.body["cancel_reason"], "admin_cancelled");
}

#[tokio::test]
async fn wait_holds_the_answer_until_the_saga_moves_the_order() {
    let api = api().await;
    let (customer, seller) = (user(Role::Customer), user(Role::Seller));
    let o = api.order(&customer, &seller).await;
    let uri = format!("/api/v1/orders/{}", o["id"].as_str().unwrap());
    let a = api.get(&format!("{uri}?wait=31"), &customer).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);

    let started = Instant::now();
    let waiting = api.send(get_request(&format!("{uri}?wait=20"), &customer));
    let order = api.h.order(id_of(&o)).await;
    let h = &api.h;
    let saga = async {
        let feed = h.orders.feed().clone();
        until("the request waits", Duration::from_secs(5), || async {
            feed.watchers() > 0
        })
        .await;
        h.deliver(&reservation_failed(&order)).await;
    };
    let (a, ()) = tokio::join!(waiting, saga);
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "CANCELLED");
    assert_eq!(a.body["cancel_reason"], "out_of_stock");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Out of the saga already: answered at once.
    let started = Instant::now();
    let a = api.get(&format!("{uri}?wait=20"), &customer).await;
    assert_eq!(a.body["status"], "CANCELLED");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The `data:` of each `status` event in an SSE text.
fn status_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l == "event: status"))
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn the_stream_sends_the_current_status_then_each_change_and_ends_at_the_last() {
    let api = api().await;
    let (customer, seller) = (user(Role::Customer), user(Role::Seller));
    let o = api.order(&customer, &seller).await;
    let uri = format!("/api/v1/orders/{}/stream", o["id"].as_str().unwrap());
    let a = api.get(&uri, &user(Role::Customer)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    let res = api
        .app
        .clone()
        .oneshot(get_request(&uri, &customer))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut events = EventReader::new(res);
    let first = status_events(&events.next().await.unwrap());
    assert_eq!(first[0]["status"], "PENDING");
    assert_eq!(first[0]["order_id"], o["id"]);

    let order = api.h.order(id_of(&o)).await;
    api.h.deliver(&reserved(&order)).await;
    let second = status_events(&events.next().await.unwrap());
    assert_eq!(second[0]["status"], "CONFIRMED");
    api.h
        .deliver(&released(&order, ReleaseReason::Expired))
        .await;
    let third = status_events(&events.next().await.unwrap());
    assert_eq!(third[0]["status"], "CANCELLED");
    assert_eq!(third[0]["cancel_reason"], "reservation_expired");
    assert!(
        events.next().await.is_none(),
        "the stream ends after a final status"
    );
    assert_eq!(
        api.h.status(order.id).await,
        OrderStatus::Cancelled(mercato_kit::contracts::CancelReason::ReservationExpired)
    );

    // Connecting to a finished order: its status, then the end; reconnecting after it: 204.
    let a = api.get(&uri, &customer).await;
    let events = status_events(a.body.as_str().unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "CANCELLED");
    let mut req = get_request(&uri, &customer);
    req.headers_mut()
        .insert("last-event-id", "CANCELLED".parse().unwrap());
    assert_eq!(api.send(req).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_wait_and_a_stream_on_one_replica_hear_of_changes_another_replica_makes() {
    // Replica A answers the requests; replica B, on the same database with a status feed of
    // its own, consumes the saga's events, so A's feed never hears of them.
    let api = api().await;
    let b = api.h.replica().await;
    let (customer, seller) = (user(Role::Customer), user(Role::Seller));
    let o = api.order(&customer, &seller).await;
    let order = api.h.order(id_of(&o)).await;
    let uri = format!("/api/v1/orders/{}", order.id);

    let res = api
        .app
        .clone()
        .oneshot(get_request(&format!("{uri}/stream"), &customer))
        .await
        .unwrap();
    let mut events = EventReader::new(res);
    assert_eq!(
        status_events(&events.next().await.unwrap())[0]["status"],
        "PENDING"
    );

    let started = Instant::now();
    let waiting = api.send(get_request(&format!("{uri}?wait=20"), &customer));
    let feed = api.h.orders.feed().clone();
    let saga = async {
        // The stream and the wait are both listening on A.
        until("the request waits", Duration::from_secs(5), || async {
            feed.watchers() >= 2
        })
        .await;
        assert_eq!(b.deliver(&reserved(&order)).await, Outcome::Applied);
        let confirmed = status_events(&events.next().await.unwrap());
        assert_eq!(confirmed[0]["status"], "CONFIRMED");
        assert_eq!(
            b.deliver(&released(&order, ReleaseReason::Expired)).await,
            Outcome::Applied
        );
        let cancelled = status_events(&events.next().await.unwrap());
        assert_eq!(cancelled[0]["status"], "CANCELLED");
        assert!(events.next().await.is_none(), "the stream ends");
    };
    let (a, ()) = tokio::join!(waiting, saga);
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "CANCELLED", "{}", a.body);
    assert_eq!(a.body["cancel_reason"], "reservation_expired");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let api = api().await;
    let a = api
        .call(Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let paths = a.body["paths"].as_object().unwrap();
    for p in [
        "/api/v1/orders",
        "/api/v1/orders/{id}",
        "/api/v1/orders/{id}/cancel",
        "/api/v1/orders/{id}/process",
        "/api/v1/orders/{id}/fulfill",
        "/api/v1/orders/{id}/refund",
        "/api/v1/orders/{id}/events",
        "/api/v1/orders/{id}/stream",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    assert!(paths["/api/v1/orders/{id}"].get("delete").is_some());
    assert!(paths["/api/v1/orders/{id}"].get("patch").is_some());
    // Every schema a route refers to is in the document.
    let text = a.body.to_string();
    let schemas = a.body["components"]["schemas"].as_object().unwrap();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            schemas.contains_key(name),
            "{name} is referred to but missing"
        );
    }
}
