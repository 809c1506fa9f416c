//! The service as `mercato` runs it: `build` with an embedded bus, served on a real socket, its
//! consumer fed from the bus and its relay publishing to it.

mod support;

use mercato_kit::config::Env;
use mercato_kit::contracts::types::*;
use mercato_kit::events::Cause;
use mercato_kit::events::{Bus, EmbeddedBus};
use mercato_kit::ids::UserId;
use mercato_order::domain::{CreateOrder, LineRequest, OrderStatus};
use mercato_order::service::{self, Orders};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;

/// Polls `f` until it holds; fails after ten seconds.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    mercato_kit::testing::until(what, Duration::from_secs(10), f).await
}

#[tokio::test]
async fn the_built_service_consumes_from_the_bus_and_publishes_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut env = Env::from_pairs([
        ("MERCATO_DATA_DIR", data),
        // Nobody listens there: the pre-check is deferred, and nothing here needs auth.
        ("MERCATO_INVENTORY_URL", "http://127.0.0.1:9"),
        ("MERCATO_INVENTORY_TIMEOUT_MS", "200"),
    ]);
    let config = mercato_order::Config::read(&mut env);
    env.check().unwrap();
    let bus = EmbeddedBus::open(&format!("sqlite://{data}/bus.db?mode=rwc"))
        .await
        .unwrap();
    let service = mercato_order::build(&config, Arc::new(bus.clone()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(service.run(listener, stop.clone()));

    let ready = reqwest::get(format!("http://{addr}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let unauthenticated = reqwest::get(format!("http://{addr}/api/v1/orders"))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // The catalog announces a product on the bus; the read model learns it.
    let p = product(UserId::new(), 999, "USD");
    bus.publish(&catalog_event(PRODUCT_CREATED, &p))
        .await
        .unwrap();
    let db = mercato_order::connect(config.database_url.as_str(), 2)
        .await
        .unwrap();
    let orders = Orders::new(
        db.clone(),
        Arc::new(mercato_order::inventory::InventoryClient::new(
            &config.inventory_url,
            mercato_kit::client::Dependency::new(
                "inventory",
                mercato_order::inventory::policy(
                    config.inventory_timeout,
                    config.inventory_breaker_reset,
                ),
                &prometheus::Registry::new(),
            )
            .unwrap(),
            None,
        )),
    );
    let input = CreateOrder {
        items: vec![LineRequest {
            product_id: p.product_id,
            quantity: 1,
        }],
        payment_method: "pm_card_visa".into(),
        shipping_address: None,
    };
    eventually("the product reaches the read model", || async {
        orders.prepare(&input, None).await.is_ok()
    })
    .await;

    // An order placed beside the running service (as another replica would place it).
    let priced = orders.prepare(&input, None).await.unwrap();
    assert_eq!(
        priced.stock_check,
        mercato_order::domain::StockCheck::Deferred
    );
    let ctx = ctx();
    let mut tx = db.begin().await.unwrap();
    let order = service::create(
        &mut tx,
        UserId::new(),
        &priced,
        &Cause::of_request(&ctx),
        orders.metrics(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // Payment authorizes on the bus; the service's consumer moves the order, and its relay
    // publishes order.created and order.paid.
    bus.publish(&authorized(&order)).await.unwrap();
    eventually("the order is paid", || async {
        orders.get(order.id).await.unwrap().unwrap().status == OrderStatus::Paid
    })
    .await;
    eventually("order.created and order.paid are on the bus", || async {
        let types: Vec<_> = bus
            .all()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.aggregate_id == order.id.to_string())
            .map(|e| e.event_type)
            .collect();
        types.contains(&ORDER_CREATED.to_owned()) && types.contains(&ORDER_PAID.to_owned())
    })
    .await;

    stop.cancel();
    running.await.unwrap().unwrap();
    db.close().await;
    bus.close().await;
}
