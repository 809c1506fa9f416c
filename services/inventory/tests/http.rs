//! The routes through the kit's full HTTP stack (context, problem layer, extractors,
//! idempotency), with tokens signed by a local key instead of the auth service.

mod support;

use axum::http::StatusCode;
use mercato_inventory::catalog::{Catalog, EventsOnly, Unavailable};
use mercato_inventory::http::{router, AppState};
use mercato_kit::auth::Role;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{payload, InventoryReleased, ProductChanged, ReleaseReason};
use mercato_kit::events::consumer::Outcome;
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::metrics::Metrics;
use mercato_kit::testing::Answer;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

fn token_for(subject: &str, role: Role) -> String {
    mercato_kit::testing::token(subject, role)
}

fn service_token() -> String {
    token_for("service:order", Role::Service)
}

fn admin() -> String {
    token_for(&UserId::new().to_string(), Role::Admin)
}

fn seller(id: UserId) -> String {
    token_for(&id.to_string(), Role::Seller)
}

struct App {
    w: World,
    router: axum::Router,
}

async fn app() -> App {
    app_with(Arc::new(EventsOnly)).await
}

async fn app_with(catalog: Arc<dyn Catalog>) -> App {
    let w = World::new().await;
    let verifier = mercato_kit::testing::verifier();
    let (api, openapi) = router(AppState {
        inv: w.inv.clone(),
        verifier,
        catalog,
    });
    let settings = HttpSettings {
        request_timeout: Duration::from_secs(10),
        body_limit_bytes: 64 * 1024,
        ..Default::default()
    };
    let service = Service::new(
        "inventory",
        api,
        openapi,
        Metrics::new("inventory"),
        vec![],
        &settings,
    );
    App {
        router: service.router(),
        w,
    }
}

impl App {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        mercato_kit::testing::call(&self.router, method, uri, token, key, body).await
    }

    /// An admin restocks a product the catalog does not have: 404, and it stays unknown.
    async fn restock_unknown_product(&self) {
        let uri = format!("/api/v1/inventory/{}", ProductId::new());
        let restock = Some(json!({"restock": 1}));
        self.call("PUT", &uri, Some(&admin()), None, restock)
            .await
            .problem(404, "not_found");
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Answer {
        self.call("GET", uri, token, None, None).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> Answer {
        self.call("POST", uri, Some(token), None, Some(body)).await
    }
}

#[tokio::test]
async fn anyone_reads_stock_one_product_or_a_page_at_a_time() {
    let a = app().await;
    let mut ids = Vec::new();
    for n in [3, 0, 9] {
        ids.push(a.w.product(n).await);
    }
    ids.sort();
    let one = a.get(&format!("/api/v1/inventory/{}", ids[0]), None).await;
    assert_eq!(one.status, StatusCode::OK);
    let keys: Vec<_> = one.body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["available", "on_hand", "product_id", "reserved", "sku"]
    );

    let first = a.get("/api/v1/inventory?limit=2", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["items"].as_array().unwrap().len(), 2);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = a
        .get(&format!("/api/v1/inventory?limit=2&cursor={cursor}"), None)
        .await;
    let items = second.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["product_id"], ids[2].to_string());
    assert!(second.body["next_cursor"].is_null());

    a.get(&format!("/api/v1/inventory/{}", ProductId::new()), None)
        .await
        .problem(404, "not_found");
    a.get("/api/v1/inventory/not-a-uuid", None)
        .await
        .problem(400, "invalid_path");
    let bad = a.get("/api/v1/inventory?limit=0&cursor=x", None).await;
    bad.problem(422, "validation_failed");
    assert_eq!(bad.fields(), ["limit", "cursor"]);
}

#[tokio::test]
async fn check_answers_services_and_admins_without_reserving() {
    let a = app().await;
    let (p, q) = (a.w.product(5).await, a.w.product(1).await);
    let uri =
        format!("/api/v1/inventory/check?product_id={p}&quantity=5&product_id={q}&quantity=2");
    a.get(&uri, None).await.problem(401, "unauthorized");
    a.get(
        &uri,
        Some(&token_for(&UserId::new().to_string(), Role::Customer)),
    )
    .await
    .problem(403, "forbidden");
    let res = a.get(&uri, Some(&service_token())).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["available"], false);
    let lines = res.body["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    for l in lines {
        let want = if l["product_id"] == p.to_string() {
            (5, 5)
        } else {
            (2, 1)
        };
        assert_eq!(
            (
                l["requested"].as_i64().unwrap(),
                l["available"].as_i64().unwrap()
            ),
            want
        );
    }
    let ok = a
        .get(
            &format!("/api/v1/inventory/check?product_id={p}&quantity=5"),
            Some(&admin()),
        )
        .await;
    assert_eq!(ok.body["available"], true);
    assert_eq!(a.w.levels(p).await.reserved, 0);
    let bad = a
        .get(
            &format!("/api/v1/inventory/check?product_id={p}&quantity=0"),
            Some(&admin()),
        )
        .await;
    bad.problem(422, "validation_failed");
    assert_eq!(bad.fields(), ["quantity[0]"]);
}

#[tokio::test]
async fn reserve_is_all_or_none_idempotent_per_order_and_emits_no_reserved_event() {
    let a = app().await;
    let (p, q) = (a.w.product(5).await, a.w.product(1).await);
    let order = OrderId::new();
    let svc = service_token();
    let body =
        json!({"order_id": order, "items": [{"product_id": p, "quantity": 2}], "ttl_seconds": 60});
    let made = a
        .post("/api/v1/inventory/reserve", &svc, body.clone())
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.body["status"], "active");
    assert_eq!(
        made.body["items"],
        json!([{"product_id": p, "quantity": 2}])
    );
    let expires =
        chrono::DateTime::parse_from_rfc3339(made.body["expires_at"].as_str().unwrap()).unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(made.body["created_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 60);

    // The same order again (other lines even): its reservation, unchanged.
    let again = a
        .post(
            "/api/v1/inventory/reserve",
            &svc,
            json!({"order_id": order, "items": [{"product_id": p, "quantity": 5}]}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["items"], made.body["items"]);
    assert_eq!(a.w.levels(p).await.reserved, 2);

    // Short on one line: nothing reserved, and the short lines named.
    let short = a
        .post(
            "/api/v1/inventory/reserve",
            &svc,
            json!({"order_id": OrderId::new(), "items": [{"product_id": p, "quantity": 3}, {"product_id": q, "quantity": 2}]}),
        )
        .await;
    short.problem(409, "insufficient_stock");
    assert_eq!(
        short.body["lines"],
        json!([{"product_id": q, "requested": 2, "available": 1}])
    );
    assert_eq!(a.w.levels(p).await.reserved, 2);
    assert_eq!(a.w.levels(q).await.reserved, 0);

    // The HTTP reserve has no order facts to put in inventory.reserved, so it says nothing.
    assert!(a.w.outbox().await.is_empty());
    a.w.assert_books().await;
}

#[tokio::test]
async fn reserve_names_every_bad_field_and_checks_the_caller() {
    let a = app().await;
    let p = a.w.product(5).await;
    let bad = a
        .post(
            "/api/v1/inventory/reserve",
            &admin(),
            json!({"order_id": OrderId::new(), "items": [{"product_id": p, "quantity": 0}, {"product_id": p, "quantity": 1001}], "ttl_seconds": 0}),
        )
        .await;
    bad.problem(422, "validation_failed");
    assert_eq!(
        bad.fields(),
        ["items[0].quantity", "items[1].quantity", "ttl_seconds"]
    );
    let empty = a
        .post(
            "/api/v1/inventory/reserve",
            &admin(),
            json!({"order_id": OrderId::new(), "items": []}),
        )
        .await;
    assert_eq!(empty.fields(), ["items"]);
    let not_uuid = a
        .post(
            "/api/v1/inventory/reserve",
            &admin(),
            json!({"order_id": "x", "items": []}),
        )
        .await;
    not_uuid.problem(422, "validation_failed");
    assert!(
        not_uuid.body["detail"]
            .as_str()
            .unwrap()
            .contains("order_id"),
        "{}",
        not_uuid.body
    );
    let seller_says = a
        .post(
            "/api/v1/inventory/reserve",
            &seller(SELLER),
            json!({"order_id": OrderId::new(), "items": [{"product_id": p, "quantity": 1}]}),
        )
        .await;
    seller_says.problem(403, "forbidden");
    assert_eq!(a.w.levels(p).await.reserved, 0);
}

#[tokio::test]
async fn a_retried_request_with_the_same_key_gets_the_first_answer() {
    let a = app().await;
    let p = a.w.product(5).await;
    let svc = service_token();
    let body = json!({"order_id": OrderId::new(), "items": [{"product_id": p, "quantity": 1}]});
    let first = a
        .call(
            "POST",
            "/api/v1/inventory/reserve",
            Some(&svc),
            Some("k-1"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = a
        .call(
            "POST",
            "/api/v1/inventory/reserve",
            Some(&svc),
            Some("k-1"),
            Some(body),
        )
        .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers["idempotency-replayed"], "true");
    assert_eq!(replay.body, first.body);
    let restock = json!({"restock": 4});
    let uri = format!("/api/v1/inventory/{p}");
    for _ in 0..2 {
        let r = a
            .call(
                "PUT",
                &uri,
                Some(&admin_fixed()),
                Some("k-2"),
                Some(restock.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(a.w.levels(p).await.on_hand, 9, "restocked once");
}

fn admin_fixed() -> String {
    token_for("0193a000-0000-7000-8000-00000000000a", Role::Admin)
}

#[tokio::test]
async fn release_and_commit_move_stock_and_announce_it() {
    let a = app().await;
    let p = a.w.product(5).await;
    let svc = service_token();
    let (kept, dropped) = (OrderId::new(), OrderId::new());
    for o in [kept, dropped] {
        let r = a
            .post(
                "/api/v1/inventory/reserve",
                &svc,
                json!({"order_id": o, "items": [{"product_id": p, "quantity": 2}]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let released = a
        .post(
            "/api/v1/inventory/release",
            &svc,
            json!({"order_id": dropped}),
        )
        .await;
    assert_eq!(released.status, StatusCode::OK);
    assert_eq!(
        (
            released.body["status"].as_str(),
            released.body["release_reason"].as_str()
        ),
        (Some("released"), Some("cancelled"))
    );
    let again = a
        .post(
            "/api/v1/inventory/release",
            &svc,
            json!({"order_id": dropped}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    a.post(
        "/api/v1/inventory/commit",
        &svc,
        json!({"order_id": dropped}),
    )
    .await
    .problem(409, "reservation_released");

    let committed = a
        .post("/api/v1/inventory/commit", &svc, json!({"order_id": kept}))
        .await;
    assert_eq!(committed.body["status"], "committed");
    assert_eq!(
        a.post("/api/v1/inventory/commit", &svc, json!({"order_id": kept}))
            .await
            .status,
        StatusCode::OK
    );
    a.post("/api/v1/inventory/release", &svc, json!({"order_id": kept}))
        .await
        .problem(409, "reservation_committed");
    a.post(
        "/api/v1/inventory/commit",
        &svc,
        json!({"order_id": OrderId::new()}),
    )
    .await
    .problem(404, "not_found");

    assert_eq!(
        a.w.levels(p).await,
        mercato_inventory::domain::Levels {
            on_hand: 3,
            reserved: 0
        }
    );
    let types: Vec<_> =
        a.w.outbox()
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect();
    assert_eq!(types, [INVENTORY_RELEASED, INVENTORY_COMMITTED]);
    let rel = &a.w.outbox_of(INVENTORY_RELEASED).await[0];
    let body: InventoryReleased = payload(rel).unwrap();
    assert_eq!(
        (body.order_id, body.reason),
        (dropped, ReleaseReason::Cancelled)
    );
    assert!(rel.correlation_id.is_some() && rel.traceparent.is_some());

    let r = a
        .get(
            &format!("/api/v1/inventory/reservations/{kept}"),
            Some(&svc),
        )
        .await;
    assert_eq!(r.body["status"], "committed");
    a.w.assert_books().await;
}

/// The kinds of a ledger page's entries, in order.
fn kinds(page: &Answer) -> Vec<String> {
    page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// A catalog that knows the products it is given and counts the questions; or is down.
struct FakeCatalog {
    products: Mutex<Vec<ProductChanged>>,
    asked: Mutex<usize>,
    down: bool,
}

#[async_trait::async_trait]
impl Catalog for FakeCatalog {
    async fn product(
        &self,
        id: ProductId,
        _ctx: Option<&mercato_kit::http::RequestContext>,
    ) -> Result<Option<ProductChanged>, Unavailable> {
        *self.asked.lock().unwrap() += 1;
        if self.down {
            return Err(Unavailable("down".into()));
        }
        Ok(self
            .products
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.product_id == id)
            .cloned())
    }
}

fn fake_catalog(products: Vec<ProductChanged>, down: bool) -> Arc<FakeCatalog> {
    Arc::new(FakeCatalog {
        products: Mutex::new(products),
        asked: Mutex::new(0),
        down,
    })
}

#[tokio::test]
async fn a_product_is_stocked_before_its_event_arrives_with_ownership_checked() {
    let id = ProductId::new();
    let event = product_event(PRODUCT_CREATED, id, "NEW-0001", true);
    let facts: ProductChanged = payload(&event).unwrap();
    let catalog = fake_catalog(vec![facts], false);
    let a = app_with(catalog.clone()).await;
    let uri = format!("/api/v1/inventory/{id}");
    let put = |token: String, body: Value| {
        let uri = uri.clone();
        let a = &a;
        async move { a.call("PUT", &uri, Some(&token), None, Some(body)).await }
    };

    // Another seller is refused and nothing is written: the row is still unknown.
    put(seller(UserId::new()), json!({"on_hand": 3}))
        .await
        .problem(403, "forbidden");
    a.get(&uri, None).await.problem(404, "not_found");

    // The owner stocks it at once; the row is made from the catalog's answer.
    let set = put(seller(SELLER), json!({"on_hand": 7})).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(
        (set.body["on_hand"].as_i64(), set.body["sku"].as_str()),
        (Some(7), Some("NEW-0001"))
    );
    let asked = *catalog.asked.lock().unwrap();
    // Now the row exists: the catalog is not asked again, and ownership still holds.
    put(seller(SELLER), json!({"restock": 1})).await;
    put(seller(UserId::new()), json!({"restock": 1}))
        .await
        .problem(403, "forbidden");
    assert_eq!(*catalog.asked.lock().unwrap(), asked);

    // The event arriving afterwards applies over the row and keeps its stock.
    assert_eq!(a.w.deliver(&event).await, Outcome::Applied);
    let taken_off = product_event(PRODUCT_UPDATED, id, "NEW-0001", false);
    assert_eq!(a.w.deliver(&taken_off).await, Outcome::Applied);
    assert_eq!(a.w.levels(id).await.on_hand, 8);
    let ledger = a.get(&format!("{uri}/ledger"), Some(&admin())).await;
    assert_eq!(kinds(&ledger), ["initial", "adjust", "restock"]);

    // Admins may stock any product; one the catalog does not have stays unknown.
    assert_eq!(
        put(admin(), json!({"restock": 1})).await.status,
        StatusCode::OK
    );
    a.restock_unknown_product().await;
    a.w.assert_books().await;
}

#[tokio::test]
async fn a_new_product_cannot_be_stocked_while_the_catalog_is_down() {
    let a = app_with(fake_catalog(vec![], true)).await;
    let id = ProductId::new();
    let down = a
        .call(
            "PUT",
            &format!("/api/v1/inventory/{id}"),
            Some(&seller(SELLER)),
            None,
            Some(json!({"on_hand": 1})),
        )
        .await;
    down.problem(503, "catalog_unavailable");
    a.get(&format!("/api/v1/inventory/{id}"), None)
        .await
        .problem(404, "not_found");
    // A product whose event arrived needs no catalog.
    let known = a.w.product(0).await;
    let ok = a
        .call(
            "PUT",
            &format!("/api/v1/inventory/{known}"),
            Some(&seller(SELLER)),
            None,
            Some(json!({"on_hand": 1})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

#[tokio::test]
async fn sellers_set_and_restock_their_own_products_and_read_their_ledger() {
    let a = app().await;
    let p = a.w.product(0).await;
    let mine = seller(SELLER);
    let uri = format!("/api/v1/inventory/{p}");
    let put = |token: String, body: Value| {
        let uri = uri.clone();
        let a = &a;
        async move { a.call("PUT", &uri, Some(&token), None, Some(body)).await }
    };
    let set = put(mine.clone(), json!({"on_hand": 10, "note": "stocktake"})).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["on_hand"], 10);
    let more = put(mine.clone(), json!({"restock": 5})).await;
    assert_eq!(
        (
            more.body["on_hand"].as_i64(),
            more.body["available"].as_i64()
        ),
        (Some(15), Some(15))
    );

    put(seller(UserId::new()), json!({"restock": 5}))
        .await
        .problem(403, "forbidden");
    put(
        token_for(&UserId::new().to_string(), Role::Customer),
        json!({"restock": 5}),
    )
    .await
    .problem(403, "forbidden");
    put(service_token(), json!({"restock": 5}))
        .await
        .problem(403, "forbidden");
    let both = put(mine.clone(), json!({"on_hand": 1, "restock": 1})).await;
    both.problem(422, "validation_failed");
    assert_eq!(both.fields(), ["on_hand"]);
    assert_eq!(
        put(mine.clone(), json!({"restock": 0})).await.fields(),
        ["restock"]
    );
    assert_eq!(
        put(mine.clone(), json!({"on_hand": -1})).await.fields(),
        ["on_hand"]
    );
    assert_eq!(
        put(mine.clone(), json!({"on_hand": 1_000_000_001}))
            .await
            .fields(),
        ["on_hand"]
    );
    assert_eq!(
        put(mine.clone(), json!({"restock": 999_999_990}))
            .await
            .fields(),
        ["restock"]
    );
    put(mine.clone(), json!({"size": 3}))
        .await
        .problem(422, "validation_failed");

    // Not below what is reserved.
    a.post(
        "/api/v1/inventory/reserve",
        &service_token(),
        json!({"order_id": OrderId::new(), "items": [{"product_id": p, "quantity": 6}]}),
    )
    .await;
    let below = put(admin(), json!({"on_hand": 5})).await;
    below.problem(409, "below_reserved");
    assert_eq!(below.body["reserved"], 6);
    assert_eq!(
        put(admin(), json!({"on_hand": 6})).await.body["available"],
        0
    );
    put(admin(), json!({"on_hand": 1})).await;
    a.restock_unknown_product().await;

    // The ledger, oldest first, a page at a time.
    let page = a.get(&format!("{uri}/ledger?limit=3"), Some(&mine)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(kinds(&page), ["initial", "adjust", "restock"]);
    assert_eq!(page.body["items"][1]["note"], "stocktake");
    assert_eq!(page.body["items"][1]["actor"], SELLER.to_string());
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = a
        .get(&format!("{uri}/ledger?cursor={cursor}"), Some(&admin()))
        .await;
    assert_eq!(kinds(&rest), ["reserve", "adjust"]);
    assert_eq!(rest.body["items"][1]["on_hand_delta"], -9);
    a.get(&format!("{uri}/ledger"), Some(&seller(UserId::new())))
        .await
        .problem(403, "forbidden");
    a.get(&format!("{uri}/ledger"), None)
        .await
        .problem(401, "unauthorized");
    a.w.assert_books().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let a = app().await;
    let doc = a.get("/openapi.json", None).await;
    let paths: Vec<_> = doc.body["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for p in [
        "/api/v1/inventory",
        "/api/v1/inventory/check",
        "/api/v1/inventory/reserve",
        "/api/v1/inventory/release",
        "/api/v1/inventory/commit",
        "/api/v1/inventory/reservations/{order_id}",
        "/api/v1/inventory/{product_id}",
        "/api/v1/inventory/{product_id}/ledger",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
}
