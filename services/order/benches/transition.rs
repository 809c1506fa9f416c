//! An order's hot path through its state machine: the pure transition over the happy path, and
//! the use case that writes it (status compare-and-set, history, outbox event, one transaction)
//! on SQLite as `mercato up` runs it. `cargo bench -p mercato-order`; docs/BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion};
use mercato_kit::events::Cause;
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{ProductId, UserId};
use mercato_order::domain::{self, Command, OrderItem, OrderStatus, PricedOrder, StockCheck};
use mercato_order::service::{self, OrderMetrics};
use std::hint::black_box;

fn pure(c: &mut Criterion) {
    c.bench_function("transition: PENDING -> CONFIRMED -> PAID (pure)", |b| {
        b.iter(|| {
            let (s, _) =
                domain::transition(black_box(OrderStatus::Pending), &Command::InventoryReserved)
                    .unwrap();
            domain::transition(s, &Command::PaymentAuthorized).unwrap()
        })
    });
}

fn priced() -> PricedOrder {
    PricedOrder {
        items: vec![OrderItem {
            product_id: ProductId::new(),
            seller_id: UserId::new(),
            quantity: 2,
            price_cents: 1_250,
            name: "Bench mug".into(),
        }],
        total_cents: 2_500,
        currency: "EUR".parse().unwrap(),
        payment_method: "pm_card_visa".into(),
        shipping_address: None,
        stock_check: StockCheck::Passed,
        idempotency_key: None,
    }
}

fn use_case(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/order.db?mode=rwc", dir.path().display());
    let db = rt.block_on(mercato_order::connect(&url, 4)).unwrap();
    let metrics = OrderMetrics::new(&prometheus::Registry::new());
    let ctx = RequestContext {
        request_id: "bench".into(),
        correlation_id: "bench".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        client_ip: None,
    };
    let order = priced();
    c.bench_function(
        "order created, reserved, paid: 3 transactions (SQLite)",
        |b| {
            b.to_async(&rt).iter(|| async {
                let mut tx = db.begin().await.unwrap();
                let o = service::create(
                    &mut tx,
                    UserId::new(),
                    &order,
                    &Cause::of_request(&ctx),
                    &metrics,
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                for cmd in [Command::InventoryReserved, Command::PaymentAuthorized] {
                    let mut tx = db.begin().await.unwrap();
                    service::apply(&mut tx, o.id, cmd, &Cause::of_request(&ctx), &metrics)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        },
    );
}

criterion_group!(benches, pure, use_case);
criterion_main!(benches);
