//! Inventory's hot path: an order's lines reserved (levels checked and moved, ledger, the
//! reservation and its event, in one transaction) on SQLite as `mercato up` runs it, and the
//! pure level arithmetic under it. `cargo bench -p mercato-inventory`; docs/BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion};
use mercato_inventory::domain::{Levels, Movement, OrderLines, StockChange};
use mercato_inventory::service::{Inventory, Origin, Reserved, Settings, StockEdit, SweepSignal};
use mercato_kit::contracts::ProductChanged;
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::time::now_us;
use std::hint::black_box;
use std::time::Duration;

fn pure(c: &mut Criterion) {
    let levels = Levels {
        on_hand: 1_000,
        reserved: 10,
    };
    c.bench_function("levels: reserve 2 (pure)", |b| {
        b.iter(|| black_box(levels).apply(Movement::Reserve(2)).unwrap())
    });
}

fn use_case(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/inventory.db?mode=rwc", dir.path().display());
    let db = rt
        .block_on(mercato_kit::db::Db::connect(
            &url,
            "inventory",
            4,
            &mercato_inventory::migrations(),
        ))
        .unwrap();
    let inv = Inventory::new(
        db.clone(),
        Settings {
            reservation_ttl: Duration::from_secs(1800),
            seed_demo: false,
        },
        SweepSignal::default(),
    );
    let origin = Origin::system("bench");
    let products: Vec<ProductId> = (0..2).map(|_| ProductId::new()).collect();
    rt.block_on(async {
        for (i, &id) in products.iter().enumerate() {
            let p = ProductChanged {
                product_id: id,
                sku: format!("BENCH-{i}"),
                name: "Bench mug".into(),
                category: "bench".into(),
                price_cents: 1_250,
                currency: "EUR".into(),
                seller_id: UserId::new(),
                active: true,
            };
            inv.adopt_product(&p, now_us(), &origin).await.unwrap();
            let mut tx = db.begin().await.unwrap();
            let edit = StockEdit {
                product_id: id,
                change: StockChange::Set(1_000_000_000),
                note: None,
                seller: None,
            };
            inv.change_stock(&mut tx, &edit, now_us(), &origin)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    });
    let lines = OrderLines::parse(&[(products[0], 2), (products[1], 1)]).unwrap();
    c.bench_function("reserve a two-line order: 1 transaction (SQLite)", |b| {
        b.to_async(&rt).iter(|| async {
            let mut tx = db.begin().await.unwrap();
            let r = inv
                .reserve(
                    &mut tx,
                    OrderId::new(),
                    &lines,
                    Duration::from_secs(1800),
                    now_us(),
                    &origin,
                )
                .await
                .unwrap();
            assert!(matches!(r, Reserved::Created(_)));
            tx.commit().await.unwrap();
        })
    });
}

criterion_group!(benches, pure, use_case);
criterion_main!(benches);
