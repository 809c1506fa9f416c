//! Reservations that run out of time: the sweeper releases them, says so once, however many
//! sweepers (replicas) run, and sleeps until the next expiry instead of polling.

mod support;

use mercato_inventory::domain::{Levels, ReleaseReason, ReservationStatus};
use mercato_inventory::sweeper::{self, SAFETY_NET};
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{payload, InventoryReleased, ReleaseReason as Because};
use mercato_kit::ids::OrderId;
use mercato_kit::time::now_us;
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;

const SECOND: i64 = 1_000_000;

#[tokio::test]
async fn a_one_second_reservation_is_released_by_two_running_sweepers_and_announced_once() {
    let w = World::with(Duration::from_secs(1), false).await;
    let p = w.product(10).await;
    let orders: Vec<OrderId> = (0..5).map(|_| OrderId::new()).collect();
    let mut created = Vec::new();
    for o in &orders {
        let env = order_created(*o, &[(p, 2)]);
        w.deliver(&env).await;
        created.push(env);
    }
    assert_eq!(w.levels(p).await.reserved, 10);

    // Two replicas' sweepers, each over its own database handle, racing for the same rows.
    let other = w.replica().await;
    let stop = CancellationToken::new();
    let a = tokio::spawn(sweeper::run(w.inv.clone(), stop.clone()));
    let b = tokio::spawn(sweeper::run(other, stop.clone()));

    eventually(Duration::from_secs(15), || async {
        (w.levels(p).await.reserved == 0).then_some(())
    })
    .await;
    for o in &orders {
        let r = w.reservation(*o).await.unwrap();
        assert_eq!(
            (r.status, r.release_reason),
            (ReservationStatus::Released, Some(ReleaseReason::Expired))
        );
    }
    stop.cancel();
    a.await.unwrap();
    b.await.unwrap();

    let released = w.outbox_of(INVENTORY_RELEASED).await;
    assert_eq!(
        released.len(),
        orders.len(),
        "exactly one event per reservation"
    );
    for (o, env) in orders.iter().zip(&created) {
        let mine: Vec<_> = released
            .iter()
            .filter(|e| e.aggregate_id == o.to_string())
            .collect();
        assert_eq!(mine.len(), 1);
        let body: InventoryReleased = payload(mine[0]).unwrap();
        assert_eq!((body.order_id, body.reason), (*o, Because::Expired));
        // The expiry continues the order's trace.
        assert_eq!(mine[0].correlation_id, env.correlation_id);
        assert_eq!(mine[0].traceparent, env.traceparent);
    }
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 10,
            reserved: 0
        }
    );
    w.assert_books().await;
}

#[tokio::test]
async fn two_sweeps_at_the_same_instant_expire_each_reservation_once() {
    let w = World::new().await;
    let p = w.product(100).await;
    for _ in 0..20 {
        w.deliver(&order_created(OrderId::new(), &[(p, 3)])).await;
    }
    let other = w.replica().await;
    let later = now_us() + 3600 * SECOND;
    let (x, y) = tokio::join!(w.inv.sweep(later), other.sweep(later));
    assert_eq!(x.unwrap() + y.unwrap(), 20);
    assert_eq!(w.outbox_of(INVENTORY_RELEASED).await.len(), 20);
    assert_eq!(w.levels(p).await.reserved, 0);
    // And again: nothing left to do.
    assert_eq!(w.inv.sweep(later).await.unwrap(), 0);
    w.assert_books().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweepers_of_two_processes_racing_over_many_reservations_expire_each_once() {
    // Two handles on one database stand for two processes; on PostgreSQL their transactions
    // really run side by side.
    let w = World::new().await;
    let products = [w.product(1_000).await, w.product(1_000).await];
    let orders: Vec<OrderId> = (0..60).map(|_| OrderId::new()).collect();
    for (i, o) in orders.iter().enumerate() {
        // Two lines each, in both orders, so releases cross products both ways.
        let (a, b) = (products[i % 2], products[(i + 1) % 2]);
        w.deliver(&order_created(*o, &[(a, 2), (b, 1)])).await;
    }
    let replicas = [w.inv.clone(), w.replica().await, w.replica().await];
    let later = now_us() + 3600 * SECOND;
    let sweeps: Vec<_> = replicas
        .iter()
        .map(|inv| {
            let inv = inv.clone();
            tokio::spawn(async move { inv.sweep(later).await.unwrap() })
        })
        .collect();
    let mut expired = 0;
    for s in sweeps {
        expired += s.await.unwrap();
    }
    assert_eq!(expired, orders.len(), "each reservation counted once");

    let released = w.outbox_of(INVENTORY_RELEASED).await;
    assert_eq!(released.len(), orders.len());
    for o in &orders {
        assert_eq!(
            released
                .iter()
                .filter(|e| e.aggregate_id == o.to_string())
                .count(),
            1,
            "one event for {o}"
        );
        // One release per line: the stock went back once.
        let releases: i64 = mercato_kit::db::query(
            "SELECT COUNT(*) AS n FROM stock_ledger WHERE order_id = $1 AND kind = 'release'",
        )
        .bind(o.to_string())
        .fetch_one(w.db.reader())
        .await
        .unwrap()
        .get("n");
        assert_eq!(releases, 2, "{o}");
    }
    for p in products {
        assert_eq!(
            w.levels(p).await,
            Levels {
                on_hand: 1_000,
                reserved: 0
            }
        );
    }
    w.assert_books().await;
}

#[tokio::test]
async fn only_active_reservations_that_are_due_expire() {
    let w = World::new().await;
    let p = w.product(10).await;
    let (due, paid, fresh) = (OrderId::new(), OrderId::new(), OrderId::new());
    w.deliver(&order_created(due, &[(p, 1)])).await;
    w.deliver(&order_created(paid, &[(p, 2)])).await;
    w.deliver(&order_ref(ORDER_PAID, paid)).await;
    let half_hour = w.reservation(due).await.unwrap().expires_at.unwrap();

    // Just before its time: nothing.
    assert_eq!(w.inv.sweep(half_hour - 1).await.unwrap(), 0);
    // At its time exactly it expires; one made after it is not due yet.
    w.deliver(&order_created(fresh, &[(p, 4)])).await;
    assert!(w.reservation(fresh).await.unwrap().expires_at.unwrap() > half_hour);
    assert_eq!(w.inv.sweep(half_hour).await.unwrap(), 1);
    assert_eq!(
        w.reservation(fresh).await.unwrap().status,
        ReservationStatus::Active
    );
    assert_eq!(
        w.reservation(due).await.unwrap().status,
        ReservationStatus::Released
    );
    assert_eq!(
        w.reservation(paid).await.unwrap().status,
        ReservationStatus::Held
    );
    // The paid one holds its stock past any expiry.
    assert_eq!(w.inv.sweep(now_us() + 86_400 * SECOND).await.unwrap(), 1);
    assert_eq!(
        w.reservation(paid).await.unwrap().status,
        ReservationStatus::Held
    );
    assert_eq!(w.levels(p).await.reserved, 2);
    w.assert_books().await;
}

#[tokio::test]
async fn the_sweeper_sleeps_until_the_next_expiry_at_most_its_safety_net() {
    let w = World::with(Duration::from_secs(10), false).await;
    let now = now_us();
    assert_eq!(w.inv.next_wake(now).await.unwrap(), SAFETY_NET);

    let p = w.product(10).await;
    w.deliver(&order_created(OrderId::new(), &[(p, 1)])).await;
    let wake = w.inv.next_wake(now_us()).await.unwrap();
    assert!(
        wake > Duration::from_secs(8) && wake <= Duration::from_secs(11),
        "{wake:?}"
    );

    // A reservation heard of (not yet committed) shortens the sleep too.
    w.inv.sweep.schedule(now_us() + 2 * SECOND);
    let wake = w.inv.next_wake(now_us()).await.unwrap();
    assert!(
        wake > Duration::from_secs(1) && wake <= Duration::from_secs(3),
        "{wake:?}"
    );

    // Far-off expiries are looked at again after the safety net.
    let far = World::with(Duration::from_secs(3600), false).await;
    let q = far.product(1).await;
    far.deliver(&order_created(OrderId::new(), &[(q, 1)])).await;
    assert_eq!(far.inv.next_wake(now_us()).await.unwrap(), SAFETY_NET);
}
