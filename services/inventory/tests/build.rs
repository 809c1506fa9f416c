//! The service as `build` wires it, on a socket, fed by the embedded bus: catalog and order
//! events go in, the inventory's answers come out on the bus, and an unpaid reservation expires
//! on its own.

use mercato_inventory::{build, Config};
use mercato_kit::config::Env;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{
    payload, InventoryReleased, InventoryReserved, OrderCreated, OrderLine, ProductChanged,
    ReleaseReason,
};
use mercato_kit::events::{Bus, EmbeddedBus, Envelope};
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::testing::until_some;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn on_bus(bus: &EmbeddedBus, event_type: &str, n: usize) -> Vec<Envelope> {
    until_some(event_type, Duration::from_secs(15), || async {
        let found: Vec<_> = bus
            .all()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect();
        (found.len() >= n).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_answers_out_and_expiry_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&format!(
        "sqlite://{}/bus.db?mode=rwc",
        dir.path().display()
    ))
    .await
    .unwrap();
    let mut env = Env::from_pairs([
        ("MERCATO_DATA_DIR", dir.path().display().to_string()),
        ("MERCATO_SEED_DEMO", "true".into()),
        ("MERCATO_RESERVATION_TTL_SECS", "1".into()),
    ]);
    let config = Config::read(&mut env);
    env.check().unwrap();
    let service = build(&config, Arc::new(bus.clone())).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(service.run(listener, stop.clone()));

    let demo = &mercato_kit::demo::products()[0];
    let product = ProductId::new();
    let changed = ProductChanged {
        product_id: product,
        sku: demo.sku.clone(),
        name: demo.name.clone(),
        category: demo.category.clone(),
        price_cents: demo.price_cents,
        currency: "USD".into(),
        seller_id: mercato_kit::demo::SELLER.id,
        active: true,
    };
    bus.publish(&Envelope::new(
        "catalog",
        PRODUCT_CREATED,
        product,
        &changed,
    ))
    .await
    .unwrap();
    let order = OrderId::new();
    let created = OrderCreated {
        order_id: order,
        customer_id: UserId::new(),
        items: vec![OrderLine {
            product_id: product,
            quantity: 2,
            price_cents: demo.price_cents,
            seller_id: mercato_kit::demo::SELLER.id,
        }],
        total_cents: 2 * demo.price_cents,
        currency: "USD".into(),
        payment_method: "pm_card_visa".into(),
    };
    bus.publish(&Envelope::new("order", ORDER_CREATED, order, &created))
        .await
        .unwrap();

    let reserved = on_bus(&bus, INVENTORY_RESERVED, 1).await;
    let body: InventoryReserved = payload(&reserved[0]).unwrap();
    assert_eq!(
        (body.order_id, body.amount_cents),
        (order, 2 * demo.price_cents)
    );

    // Nobody pays: one second later the sweeper gives the stock back and says so.
    let released = on_bus(&bus, INVENTORY_RELEASED, 1).await;
    let body: InventoryReleased = payload(&released[0]).unwrap();
    assert_eq!(
        (body.order_id, body.reason),
        (order, ReleaseReason::Expired)
    );

    let stock: serde_json::Value =
        reqwest::get(format!("http://{addr}/api/v1/inventory/{product}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(stock["on_hand"], demo.stock);
    assert_eq!(stock["available"], demo.stock);
    let ready = reqwest::get(format!("http://{addr}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    stop.cancel();
    running.await.unwrap().unwrap();
}
