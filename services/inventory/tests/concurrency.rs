//! No oversell under concurrency: many orders racing for the last units, through the use case
//! and through the event consumer, while a reader watches the levels.
//!
//! On SQLite the writers queue behind one connection; on PostgreSQL (`MERCATO_TEST_DATABASE_URL`)
//! they really interleave, and the conditional updates are what keeps the count right.

mod support;

use mercato_inventory::domain::{LedgerKind, OrderLines};
use mercato_inventory::service::{Origin, Reserved};
use mercato_inventory::store;
use mercato_kit::contracts::types::*;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::ids::{OrderId, ProductId};
use mercato_kit::time::now_us;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// Watches a product's levels until told to stop; returns how many reads it made, and fails if
/// any read shows negative availability.
fn watch(w: &World, p: ProductId, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    let inv = w.inv.clone();
    tokio::spawn(async move {
        let mut reads = 0;
        while !done.load(Ordering::SeqCst) {
            let s = inv.stock(p).await.unwrap().unwrap();
            assert!(s.levels.available() >= 0, "available went negative: {s:?}");
            reads += 1;
            tokio::task::yield_now().await;
        }
        reads
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_orders_race_for_seven_units_and_exactly_seven_win() {
    let w = World::new().await;
    let p = w.product(7).await;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch(&w, p, done.clone());

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let inv = w.inv.clone();
            let db = w.db.clone();
            tokio::spawn(async move {
                let lines = OrderLines::parse(&[(p, 1)]).unwrap();
                let mut tx = db.begin().await.unwrap();
                let out = inv
                    .reserve(
                        &mut tx,
                        OrderId::new(),
                        &lines,
                        Duration::from_secs(600),
                        now_us(),
                        &Origin::system("test"),
                    )
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                out
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Reserved::Created(_) => won += 1,
            Reserved::Short(lines) => assert_eq!(lines[0].requested, 1),
            Reserved::Existing(_) => panic!("every order is new"),
        }
    }
    done.store(true, Ordering::SeqCst);
    assert!(watcher.await.unwrap() > 0);

    assert_eq!(won, 7);
    let levels = w.levels(p).await;
    assert_eq!((levels.on_hand, levels.reserved), (7, 7));
    w.assert_books().await;
    let ledger = store::ledger(w.db.reader(), p, 0, 1000).await.unwrap();
    let reserves: Vec<_> = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Reserve)
        .collect();
    assert_eq!(reserves.len(), 7);
    // Each row's levels follow from the one before it.
    for pair in ledger.windows(2) {
        assert_eq!(
            pair[1].on_hand_after,
            pair[0].on_hand_after + pair[1].on_hand_delta
        );
        assert_eq!(
            pair[1].reserved_after,
            pair[0].reserved_after + pair[1].reserved_delta
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_order_events_at_once_give_seven_reservations_and_forty_three_failures() {
    let w = World::new().await;
    let (p, q) = (w.product(7).await, w.product(1000).await);
    // Two lines each, in both orders, so the all-or-none savepoints and the lock order are
    // exercised too.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let consumer = w.consumer.clone();
            let lines = if i % 2 == 0 {
                [(p, 1), (q, 1)]
            } else {
                [(q, 1), (p, 1)]
            };
            let env = order_created(OrderId::new(), &lines);
            tokio::spawn(async move { consumer.process(&env).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Outcome::Applied);
    }
    assert_eq!(w.outbox_of(INVENTORY_RESERVED).await.len(), 7);
    assert_eq!(w.outbox_of(INVENTORY_RESERVATION_FAILED).await.len(), 43);
    assert_eq!(w.levels(p).await.reserved, 7);
    assert_eq!(
        w.levels(q).await.reserved,
        7,
        "short orders took nothing of q either"
    );
    w.assert_books().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_releases_commits_and_restocks_keep_the_books() {
    let w = World::new().await;
    let p = w.product(40).await;
    let orders: Vec<OrderId> = (0..20).map(|_| OrderId::new()).collect();
    for o in &orders {
        w.deliver(&order_created(*o, &[(p, 2)])).await;
    }
    // Each order is cancelled and fulfilled at once (one of them wins), while stock is added.
    let mut tasks = Vec::new();
    for o in &orders {
        for env in [order_cancelled(*o), order_ref(ORDER_FULFILLED, *o)] {
            let c = w.consumer.clone();
            tasks.push(tokio::spawn(async move {
                c.process(&env).await.unwrap();
            }));
        }
    }
    for _ in 0..5 {
        let inv = w.inv.clone();
        let db = w.db.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = db.begin().await.unwrap();
            let edit = mercato_inventory::service::StockEdit {
                product_id: p,
                change: mercato_inventory::domain::StockChange::Restock(3),
                note: None,
                seller: None,
            };
            inv.change_stock(&mut tx, &edit, now_us(), &Origin::system("test"))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let committed = w.outbox_of(INVENTORY_COMMITTED).await.len() as i64;
    let released = w.outbox_of(INVENTORY_RELEASED).await.len() as i64;
    assert_eq!(committed + released, 20, "each order ended exactly one way");
    let levels = w.levels(p).await;
    assert_eq!(levels.reserved, 0);
    assert_eq!(levels.on_hand, 40 + 15 - 2 * committed);
    w.assert_books().await;
}
