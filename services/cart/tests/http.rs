//! The cart's HTTP API with stand-ins for the catalog and the order service, so what crosses to
//! them can be checked: checkout forwards the customer's own token, a key derived from theirs
//! and the request's correlation id; the order service's answers come back as they went out;
//! either service being down is a 503 naming it and changes nothing; so is Redis, when carts
//! are kept there, which also takes the service out of readiness.
//!
//! Runs on SQLite (the scenario tests in `mercato/tests/cart.rs` cover PostgreSQL and Redis
//! end to end).

use mercato_cart::catalog::{self, Catalog};
use mercato_cart::domain::{checkout_key, CheckoutRecord, Limits, ProductInfo, Products};
use mercato_cart::orders::{self, OrderAnswer, OrderService};
use mercato_cart::redis_store::RedisKv;
use mercato_cart::service::{Carts, Settings};
use mercato_cart::store::{get_typed, KvStore, SqlKv};
use mercato_cart::{http, SERVICE};
use mercato_kit::auth::Role;
use mercato_kit::db::Db;
use mercato_kit::health::HealthCheck;
use mercato_kit::http::{HttpSettings, RequestContext, Service};
use mercato_kit::ids::{Currency, OrderId, ProductId, UserId};
use mercato_kit::metrics::Metrics;
use mercato_kit::redis::{self as redis_store, RedisCheck};
use mercato_kit::testing::{call, token, until_some, verifier};
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A catalog that knows one product, or cannot be reached.
struct FakeCatalog {
    product: ProductId,
    down: AtomicBool,
}

#[async_trait::async_trait]
impl Catalog for FakeCatalog {
    async fn products(
        &self,
        ids: &[ProductId],
        _: Option<&RequestContext>,
    ) -> Result<Products, catalog::Unavailable> {
        if self.down.load(Ordering::SeqCst) {
            return Err(catalog::Unavailable("connection refused".into()));
        }
        Ok(ids
            .iter()
            .map(|id| {
                let info = (*id == self.product).then(|| ProductInfo {
                    name: "Lamp".into(),
                    price_cents: 1250,
                    currency: Currency::USD,
                    active: true,
                });
                (*id, info)
            })
            .collect())
    }
}

/// What the order service was sent.
#[derive(Clone, Debug)]
struct Sent {
    order: Value,
    key: String,
    authorization: String,
    correlation_id: String,
}

/// An order service that answers what it is told to, and remembers what it was sent.
struct FakeOrders {
    answer: Mutex<Result<OrderAnswer, orders::Unavailable>>,
    sent: Mutex<Vec<Sent>>,
}

#[async_trait::async_trait]
impl OrderService for FakeOrders {
    async fn place(
        &self,
        order: &Value,
        key: &str,
        authorization: &str,
        ctx: &RequestContext,
    ) -> Result<OrderAnswer, orders::Unavailable> {
        self.sent.lock().unwrap().push(Sent {
            order: order.clone(),
            key: key.into(),
            authorization: authorization.into(),
            correlation_id: ctx.correlation_id.clone(),
        });
        self.answer.lock().unwrap().clone()
    }
}

struct Harness {
    app: axum::Router,
    store: Arc<dyn KvStore>,
    catalog: Arc<FakeCatalog>,
    orders: Arc<FakeOrders>,
    product: ProductId,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(|db| Arc::new(SqlKv::new(db)), vec![]).await
}

/// The cart service with carts in the store `store` makes, and these readiness checks.
async fn harness_with(
    store: impl FnOnce(Db) -> Arc<dyn KvStore>,
    checks: Vec<Arc<dyn HealthCheck>>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cart.db?mode=rwc", dir.path().display());
    let db = mercato_cart::connect(&url, 4).await.unwrap();
    let store = store(db.clone());
    let product = ProductId::new();
    let catalog = Arc::new(FakeCatalog {
        product,
        down: AtomicBool::new(false),
    });
    let orders = Arc::new(FakeOrders {
        answer: Mutex::new(Err(orders::Unavailable("not told".into()))),
        sent: Mutex::new(Vec::new()),
    });
    let carts = Arc::new(Carts::new(
        db,
        store.clone(),
        catalog.clone(),
        orders.clone(),
        Settings {
            ttl: Duration::from_secs(3600),
            limits: Limits { max_lines: 50 },
        },
    ));
    let (router, openapi) = http::router(http::AppState {
        carts,
        verifier: verifier(),
    });
    // The kit's layers, as in production: the handlers need the request context.
    let service = Service::new(
        SERVICE,
        router,
        openapi,
        Metrics::new(SERVICE),
        checks,
        &HttpSettings {
            request_timeout: Duration::from_secs(10),
            body_limit_bytes: 64 * 1024,
            ..Default::default()
        },
    );
    Harness {
        app: service.router(),
        store,
        catalog,
        orders,
        product,
        _dir: dir,
    }
}

impl Harness {
    /// A POST as the customer holding `t`, with an Idempotency-Key when `key` is given.
    async fn post(
        &self,
        uri: &str,
        t: &str,
        key: Option<&str>,
        body: Value,
    ) -> mercato_kit::testing::Answer {
        call(&self.app, "POST", uri, Some(t), key, Some(body)).await
    }
}

const CHECKOUT: &str = "/api/v1/cart/checkout";

#[tokio::test]
async fn checkout_forwards_the_customer_and_passes_the_order_services_answers_on() {
    let h = harness().await;
    let customer = UserId::new();
    let t = token(&customer.to_string(), Role::Customer);
    let body =
        json!({"payment_method": "pm_card_visa", "shipping_address": {"city": "Springfield"}});

    let a = h
        .post(
            "/api/v1/cart/items",
            &t,
            None,
            json!({"product_id": h.product, "quantity": 3}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["total_cents"], 3750);

    // A refusal comes back exactly as it went out, Retry-After included, and keeps nothing:
    // the same key tries again.
    let refusal = json!({"type": "https://mercato.dev/problems/insufficient_stock", "title": "x",
        "status": 409, "code": "insufficient_stock", "lines": [{"available": 1}]});
    *h.orders.answer.lock().unwrap() = Ok(OrderAnswer::Refused {
        status: StatusCode::CONFLICT,
        body: refusal.to_string(),
        retry_after: Some(HeaderValue::from_static("2")),
    });
    let a = h.post(CHECKOUT, &t, Some("k1"), body.clone()).await;
    a.problem(409, "insufficient_stock");
    assert_eq!(a.body, refusal);
    assert_eq!(a.headers["retry-after"], "2");

    // Placed: 201 and the order service's body.
    let order_id = OrderId::new();
    let order = json!({"id": order_id, "status": "PENDING", "total_cents": 3750});
    *h.orders.answer.lock().unwrap() = Ok(OrderAnswer::Placed {
        status: StatusCode::CREATED,
        order_id,
        body: order.clone(),
    });
    let placed = once_the_key_is_free(&h, CHECKOUT, &t, "k1", &body).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    assert_eq!(placed.body, order);
    let sent = h.orders.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent.key, "cart-checkout:k1");
    assert_eq!(sent.authorization, format!("Bearer {t}"));
    assert_eq!(
        sent.correlation_id,
        placed.headers["x-correlation-id"].to_str().unwrap()
    );
    assert_eq!(
        sent.order,
        json!({"items": [{"product_id": h.product, "quantity": 3}],
            "payment_method": "pm_card_visa", "shipping_address": {"city": "Springfield"}})
    );
    // The checkout is recorded for the order's events; the cart itself is as it was.
    let (record, _, _) = get_typed::<CheckoutRecord>(&*h.store, &checkout_key(order_id))
        .await
        .unwrap()
        .expect("a checkout record");
    assert!(
        matches!(&record, CheckoutRecord::Placed { customer_id, lines } if *customer_id == customer && lines.len() == 1 && lines[0].quantity == 3),
        "{record:?}"
    );
    let cart = call(&h.app, "GET", "/api/v1/cart", Some(&t), None, None).await;
    assert_eq!(cart.body["items"][0]["quantity"], 3);

    // Retried: the stored answer, without asking the order service again.
    let calls = h.orders.sent.lock().unwrap().len();
    let again = h.post(CHECKOUT, &t, Some("k1"), body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotency-replayed"], "true");
    assert_eq!(again.body, order);
    assert_eq!(h.orders.sent.lock().unwrap().len(), calls);

    // Unreachable: a 503 naming the order service.
    *h.orders.answer.lock().unwrap() = Err(orders::Unavailable("connection refused".into()));
    let a = h.post(CHECKOUT, &t, Some("k2"), body).await;
    a.problem(503, "order_service_unavailable");
    assert!(a.body["detail"].as_str().unwrap().contains("order service"));
    assert!(
        !a.body.to_string().contains("connection refused"),
        "internal causes stay in the log"
    );
}

/// Sends `body` to `uri` with `key`, waiting out the moment the key is still held by an
/// earlier failed attempt (its claim is released just after it answered).
async fn once_the_key_is_free(
    h: &Harness,
    uri: &str,
    t: &str,
    key: &str,
    body: &Value,
) -> mercato_kit::testing::Answer {
    until_some("the key to be freed", Duration::from_secs(5), || async {
        let a = h.post(uri, t, Some(key), body.clone()).await;
        (a.body["code"] != "idempotency_key_in_use").then_some(a)
    })
    .await
}

#[tokio::test]
async fn a_catalog_that_cannot_answer_is_named_and_nothing_changes() {
    let h = harness().await;
    let t = token(&UserId::new().to_string(), Role::Customer);
    let add = json!({"product_id": h.product, "quantity": 1});
    let a = h.post("/api/v1/cart/items", &t, None, add.clone()).await;
    assert_eq!(a.status, StatusCode::OK);

    h.catalog.down.store(true, Ordering::SeqCst);
    let a = h.post("/api/v1/cart/items", &t, None, add).await;
    a.problem(503, "catalog_unavailable");
    assert!(a.headers.contains_key("retry-after"));
    let a = call(&h.app, "GET", "/api/v1/cart", Some(&t), None, None).await;
    a.problem(503, "catalog_unavailable");
    let path = format!("/api/v1/cart/items/{}", h.product);
    let a = call(&h.app, "DELETE", &path, Some(&t), None, None).await;
    a.problem(503, "catalog_unavailable");

    h.catalog.down.store(false, Ordering::SeqCst);
    let a = call(&h.app, "GET", "/api/v1/cart", Some(&t), None, None).await;
    assert_eq!(a.body["items"][0]["quantity"], 1, "{}", a.body);
}

#[tokio::test]
async fn a_redis_out_of_reach_is_named_and_takes_the_service_out_of_readiness() {
    // A port nothing listens on.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let conn = redis_store::connect(&format!("redis://127.0.0.1:{port}")).unwrap();
    let h = harness_with(
        |_| Arc::new(RedisKv::new(conn.clone(), "mercato:")),
        vec![Arc::new(RedisCheck {
            conn: conn.clone(),
            required: true,
        })],
    )
    .await;
    let t = token(&UserId::new().to_string(), Role::Customer);
    let a = call(&h.app, "GET", "/api/v1/cart", Some(&t), None, None).await;
    a.problem(503, "store_unavailable");
    assert!(a.headers.contains_key("retry-after"));
    let add = json!({"product_id": h.product, "quantity": 1});
    let a = h
        .post("/api/v1/cart/items", &t, Some("add-1"), add.clone())
        .await;
    a.problem(503, "store_unavailable");
    // Nothing was kept of it: the same key tries again (once the failed attempt let go of
    // it) rather than replaying the 503.
    let a = once_the_key_is_free(&h, "/api/v1/cart/items", &t, "add-1", &add).await;
    a.problem(503, "store_unavailable");
    assert!(a.headers.get("idempotency-replayed").is_none());
    let a = call(&h.app, "DELETE", "/api/v1/cart", Some(&t), None, None).await;
    a.problem(503, "store_unavailable");

    let a = call(&h.app, "GET", "/health/ready", None, None, None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.body["checks"][0]["name"], "redis", "{}", a.body);
    assert_eq!(a.body["checks"][0]["status"], "down", "{}", a.body);
    let a = call(&h.app, "GET", "/health/live", None, None, None).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_lists_every_cart_route() {
    let h = harness().await;
    let a = call(&h.app, "GET", "/openapi.json", None, None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let paths = a.body["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/cart", &["get", "delete"][..]),
        ("/api/v1/cart/items", &["post"]),
        ("/api/v1/cart/items/{product_id}", &["patch", "delete"]),
        ("/api/v1/cart/checkout", &["post"]),
    ] {
        for m in methods {
            assert!(paths[path].get(*m).is_some(), "{m} {path} missing");
        }
    }
}
