//! The inventory's part of the checkout saga, driven through its event consumer with
//! hand-built events: reserving all lines or none, the events it answers with, every event
//! delivered twice, events out of order, and the product events that keep stock rows current
//! (including demo stock).

mod support;

use mercato_inventory::domain::{
    LedgerKind, Levels, ReleaseReason, ReservationStatus, StockChange,
};
use mercato_inventory::store;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{
    payload, InventoryCommitted, InventoryReleased, InventoryReserved, ReleaseReason as Because,
    ReservationFailed, ShortLine,
};
use mercato_kit::events::consumer::Outcome;
use mercato_kit::ids::{OrderId, ProductId, UserId};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn an_order_reserves_every_line_and_says_so_with_the_order_s_payment_facts() {
    let w = World::new().await;
    let (a, b) = (w.product(10).await, w.product(3).await);
    let order = OrderId::new();
    let created = order_created(order, &[(a, 4), (b, 3)]);
    assert_eq!(w.deliver(&created).await, Outcome::Applied);

    assert_eq!(
        w.levels(a).await,
        Levels {
            on_hand: 10,
            reserved: 4
        }
    );
    assert_eq!(
        w.levels(b).await,
        Levels {
            on_hand: 3,
            reserved: 3
        }
    );
    let r = w.reservation(order).await.unwrap();
    assert_eq!(r.status, ReservationStatus::Active);

    let events = w.outbox_of(INVENTORY_RESERVED).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.aggregate_id, order.to_string());
    assert_eq!(e.causation_id, Some(created.event_id));
    assert_eq!(e.correlation_id, created.correlation_id);
    assert_eq!(e.traceparent, created.traceparent);
    let p: InventoryReserved = payload(e).unwrap();
    assert_eq!(p.customer_id, CUSTOMER);
    assert_eq!(p.amount_cents, 7 * 250);
    assert_eq!(p.currency, "EUR");
    assert_eq!(p.payment_method, "pm_card_visa");
    assert_eq!(p.items.len(), 2);
    let expires = chrono::DateTime::parse_from_rfc3339(&p.expires_at).unwrap();
    let ttl = expires.timestamp_micros() - r.created_at;
    assert!((1_799_000_000..=1_800_000_000).contains(&ttl), "{ttl}");
    w.assert_books().await;
}

#[tokio::test]
async fn an_order_with_one_short_line_reserves_nothing() {
    let w = World::new().await;
    let (a, b) = (w.product(10).await, w.product(2).await);
    let unknown = ProductId::new();
    let order = OrderId::new();
    w.deliver(&order_created(order, &[(a, 5), (b, 3), (unknown, 1)]))
        .await;

    assert_eq!(
        w.levels(a).await,
        Levels {
            on_hand: 10,
            reserved: 0
        }
    );
    assert_eq!(
        w.levels(b).await,
        Levels {
            on_hand: 2,
            reserved: 0
        }
    );
    assert!(w.outbox_of(INVENTORY_RESERVED).await.is_empty());
    let failed = w.outbox_of(INVENTORY_RESERVATION_FAILED).await;
    assert_eq!(failed.len(), 1);
    let p: ReservationFailed = payload(&failed[0]).unwrap();
    let mut lines = p.lines.clone();
    lines.sort_by_key(|l| l.product_id);
    let mut want = vec![
        ShortLine {
            product_id: b,
            requested: 3,
            available: 2,
        },
        ShortLine {
            product_id: unknown,
            requested: 1,
            available: 0,
        },
    ];
    want.sort_by_key(|l| l.product_id);
    assert_eq!(lines, want);
    // The refusal is final for this order: a later delivery (another event id) reserves
    // nothing even once the stock is there.
    let r = w.reservation(order).await.unwrap();
    assert_eq!(
        (r.status, r.release_reason),
        (ReservationStatus::Released, Some(ReleaseReason::Rejected))
    );
    w.set_stock(b, StockChange::Set(50)).await;
    w.deliver(&order_created(order, &[(a, 5), (b, 3)])).await;
    assert_eq!(w.levels(a).await.reserved, 0);
    assert_eq!(w.outbox().await.len(), 1);
    // No ledger row for the attempt that was rolled back.
    let reserves = store::ledger(w.db.reader(), a, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Reserve)
        .count();
    assert_eq!(reserves, 0);
    w.assert_books().await;
}

#[tokio::test]
async fn the_whole_life_of_an_order_paid_then_fulfilled() {
    let w = World::new().await;
    let p = w.product(5).await;
    let order = OrderId::new();
    w.deliver(&order_created(order, &[(p, 2)])).await;
    w.deliver(&order_ref(ORDER_PAID, order)).await;
    let r = w.reservation(order).await.unwrap();
    assert_eq!((r.status, r.expires_at), (ReservationStatus::Held, None));
    // Held reservations never expire.
    assert_eq!(
        w.inv
            .sweep(mercato_kit::time::now_us() + 10 * 86_400_000_000)
            .await
            .unwrap(),
        0
    );

    w.deliver(&order_ref(ORDER_FULFILLED, order)).await;
    assert_eq!(
        w.reservation(order).await.unwrap().status,
        ReservationStatus::Committed
    );
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 3,
            reserved: 0
        }
    );
    let committed = w.outbox_of(INVENTORY_COMMITTED).await;
    assert_eq!(committed.len(), 1);
    assert_eq!(
        payload::<InventoryCommitted>(&committed[0])
            .unwrap()
            .order_id,
        order
    );

    // Cancelling after fulfilment, paying again: nothing moves, nothing is said.
    let before = w.snapshot().await;
    w.deliver(&order_cancelled(order)).await;
    w.deliver(&order_ref(ORDER_PAID, order)).await;
    w.deliver(&order_ref(ORDER_FULFILLED, order)).await;
    assert_eq!(w.snapshot().await, before);

    let kinds: Vec<_> = store::ledger(w.db.reader(), p, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.on_hand_delta, e.reserved_delta))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (LedgerKind::Initial, 0, 0),
            (LedgerKind::Adjust, 5, 0),
            (LedgerKind::Reserve, 0, 2),
            (LedgerKind::Commit, -2, -2),
        ]
    );
    w.assert_books().await;
}

#[tokio::test]
async fn a_cancelled_order_gives_its_stock_back_once() {
    let w = World::new().await;
    let p = w.product(5).await;
    let order = OrderId::new();
    w.deliver(&order_created(order, &[(p, 5)])).await;
    w.deliver(&order_ref(ORDER_PAID, order)).await;
    let cancel = order_cancelled(order);
    w.deliver(&cancel).await;
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 5,
            reserved: 0
        }
    );
    let released = w.outbox_of(INVENTORY_RELEASED).await;
    assert_eq!(released.len(), 1);
    let body: InventoryReleased = payload(&released[0]).unwrap();
    assert_eq!((body.order_id, body.reason), (order, Because::Cancelled));
    assert_eq!(released[0].causation_id, Some(cancel.event_id));

    // Another cancellation (another event id): nothing was released, so nothing is said.
    w.deliver(&order_cancelled(order)).await;
    assert_eq!(w.outbox_of(INVENTORY_RELEASED).await.len(), 1);
    // Fulfilment of a released reservation is refused as a no-op.
    w.deliver(&order_ref(ORDER_FULFILLED, order)).await;
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 5,
            reserved: 0
        }
    );
    assert!(w.outbox_of(INVENTORY_COMMITTED).await.is_empty());
    w.assert_books().await;
}

#[tokio::test]
async fn every_consumed_event_delivered_twice_changes_nothing_the_second_time() {
    let w = World::with(Duration::from_secs(1800), true).await;
    let p = ProductId::new();
    let (o1, o2, o3) = (OrderId::new(), OrderId::new(), OrderId::new());
    let events = vec![
        product_event(PRODUCT_CREATED, p, "ELEC-0001", true),
        product_event(PRODUCT_UPDATED, p, "ELEC-0001", true),
        order_created(o1, &[(p, 2)]),
        order_created(o2, &[(p, 3)]),
        order_created(o3, &[(p, 1000)]),
        order_ref(ORDER_PAID, o1),
        order_ref(ORDER_FULFILLED, o1),
        order_cancelled(o2),
        product_event(PRODUCT_DEACTIVATED, p, "ELEC-0001", false),
    ];
    for e in &events {
        assert_eq!(w.deliver(e).await, Outcome::Applied, "{}", e.event_type);
        let after_first = w.snapshot().await;
        assert_eq!(w.deliver(e).await, Outcome::Duplicate, "{}", e.event_type);
        assert_eq!(w.snapshot().await, after_first, "{} twice", e.event_type);
        w.assert_books().await;
    }
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 40,
            reserved: 0
        }
    );
    let types: Vec<_> = w.outbox().await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        vec![
            INVENTORY_RESERVED,
            INVENTORY_RESERVED,
            INVENTORY_RESERVATION_FAILED,
            INVENTORY_COMMITTED,
            INVENTORY_RELEASED,
        ]
    );
}

#[tokio::test]
async fn a_second_order_created_for_the_same_order_returns_the_reservation_and_changes_nothing() {
    let w = World::new().await;
    let p = w.product(10).await;
    let order = OrderId::new();
    w.deliver(&order_created(order, &[(p, 2)])).await;
    let before = w.snapshot().await;
    // Same order, new event id, even other lines: the order keeps its first reservation.
    w.deliver(&order_created(order, &[(p, 7)])).await;
    assert_eq!(w.snapshot().await, before);
    assert_eq!(w.levels(p).await.reserved, 2);
}

#[tokio::test]
async fn a_cancellation_that_overtakes_its_order_leaves_nothing_reserved() {
    let w = World::new().await;
    let p = w.product(3).await;
    let order = OrderId::new();
    w.deliver(&order_cancelled(order)).await;
    let r = w.reservation(order).await.unwrap();
    assert_eq!(
        (r.status, r.release_reason),
        (ReservationStatus::Released, Some(ReleaseReason::Cancelled))
    );
    assert!(r.lines.is_empty());
    assert!(
        w.outbox().await.is_empty(),
        "nothing was released, so nothing is said"
    );

    // The late order.created finds the tombstone: nothing reserved, nothing said.
    w.deliver(&order_created(order, &[(p, 1)])).await;
    assert_eq!(w.levels(p).await.reserved, 0);
    assert!(w.outbox().await.is_empty());
    // A late payment or fulfilment of it is ignored too.
    w.deliver(&order_ref(ORDER_PAID, order)).await;
    w.deliver(&order_ref(ORDER_FULFILLED, order)).await;
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 3,
            reserved: 0
        }
    );
    assert!(w.outbox().await.is_empty());
    w.assert_books().await;
}

#[tokio::test]
async fn saga_steps_for_unknown_orders_are_no_ops() {
    let w = World::new().await;
    let p = w.product(3).await;
    let before = w.snapshot().await;
    assert_eq!(
        w.deliver(&order_ref(ORDER_PAID, OrderId::new())).await,
        Outcome::Applied
    );
    assert_eq!(
        w.deliver(&order_ref(ORDER_FULFILLED, OrderId::new())).await,
        Outcome::Applied
    );
    assert_eq!(w.snapshot().await, before);
    assert_eq!(w.levels(p).await.on_hand, 3);
}

#[tokio::test]
async fn invalid_lines_are_refused_with_a_failure_event_not_a_stuck_order() {
    let w = World::new().await;
    let p = w.product(10).await;
    let order = OrderId::new();
    w.deliver(&order_created(order, &[(p, 0)])).await;
    w.deliver(&order_created(OrderId::new(), &[(p, -5)])).await;
    w.deliver(&order_created(OrderId::new(), &[(p, 1001)]))
        .await;
    w.deliver(&order_created(OrderId::new(), &[])).await;
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 10,
            reserved: 0
        }
    );
    assert_eq!(w.outbox_of(INVENTORY_RESERVATION_FAILED).await.len(), 4);
    assert!(w.outbox_of(INVENTORY_RESERVED).await.is_empty());
    let parked = mercato_kit::events::consumer::dead_letters(&w.db)
        .await
        .unwrap();
    assert!(parked.is_empty(), "nothing parked");
}

#[tokio::test]
async fn a_product_off_sale_cannot_be_reserved_but_its_reservations_live_on() {
    let w = World::new().await;
    let p = w.product(10).await;
    let held = OrderId::new();
    w.deliver(&order_created(held, &[(p, 2)])).await;
    w.deliver(&product_event(PRODUCT_DEACTIVATED, p, "X-1", false))
        .await;
    let stock = w.inv.stock(p).await.unwrap().unwrap();
    assert!(!stock.active);
    assert_eq!(stock.sku, "X-1");

    let order = OrderId::new();
    w.deliver(&order_created(order, &[(p, 1)])).await;
    let failed = w.outbox_of(INVENTORY_RESERVATION_FAILED).await;
    let body: ReservationFailed = payload(&failed[0]).unwrap();
    assert_eq!(body.lines[0].available, 0);

    w.deliver(&order_ref(ORDER_FULFILLED, held)).await;
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 8,
            reserved: 0
        }
    );
    w.assert_books().await;
}

#[tokio::test]
async fn product_events_keep_the_row_current_and_an_older_one_changes_nothing() {
    let w = World::new().await;
    let p = ProductId::new();
    let other_seller = UserId::new();
    let mut created = product_event(PRODUCT_CREATED, p, "SKU-1", true);
    created.occurred_at = "2020-01-01T00:00:00.000Z".into();
    let mut older = product_event_by(PRODUCT_UPDATED, p, "SKU-OLD", false, other_seller);
    older.occurred_at = "2001-01-01T00:00:00.000Z".into();
    // An update may overtake the creation: it creates the row.
    let newer = product_event_by(PRODUCT_UPDATED, p, "SKU-2", true, other_seller);
    w.deliver(&newer).await;
    w.deliver(&created).await;
    w.deliver(&older).await;
    let s = w.inv.stock(p).await.unwrap().unwrap();
    assert_eq!(
        (s.sku.as_str(), s.seller_id, s.active),
        ("SKU-2", other_seller, true)
    );
    assert_eq!(s.levels, Levels::default());
    let ledger = store::ledger(w.db.reader(), p, 0, 100).await.unwrap();
    assert_eq!(ledger.len(), 1, "one initial row, however many events");
    assert_eq!(
        (ledger[0].kind, ledger[0].on_hand_delta),
        (LedgerKind::Initial, 0)
    );
}

#[tokio::test]
async fn demo_seeding_gives_demo_skus_their_demo_stock_and_nothing_else_any() {
    let demo = mercato_kit::demo::products();
    let first = &demo[0];
    let seeded = World::with(Duration::from_secs(1800), true).await;
    let (d, plain) = (ProductId::new(), ProductId::new());
    seeded
        .deliver(&product_event(PRODUCT_CREATED, d, &first.sku, true))
        .await;
    seeded
        .deliver(&product_event(
            PRODUCT_CREATED,
            plain,
            "NOT-A-DEMO-SKU",
            true,
        ))
        .await;
    assert_eq!(seeded.levels(d).await.on_hand, first.stock);
    assert_eq!(seeded.levels(plain).await.on_hand, 0);
    let ledger = store::ledger(seeded.db.reader(), d, 0, 10).await.unwrap();
    assert_eq!(
        (ledger[0].kind, ledger[0].on_hand_delta),
        (LedgerKind::Initial, first.stock)
    );
    assert_eq!(ledger[0].note.as_deref(), Some("demo stock"));

    // Only when the row is created: a later event (a restart's re-announcement, say) keeps
    // the stock as it is now.
    seeded.set_stock(d, StockChange::Set(1)).await;
    seeded
        .deliver(&product_event(PRODUCT_UPDATED, d, &first.sku, true))
        .await;
    seeded
        .deliver(&product_event(PRODUCT_CREATED, d, &first.sku, true))
        .await;
    assert_eq!(seeded.levels(d).await.on_hand, 1);
    seeded.assert_books().await;

    // Not seeding: demo skus start empty like any other.
    let plain_world = World::new().await;
    let d2 = ProductId::new();
    plain_world
        .deliver(&product_event(PRODUCT_CREATED, d2, &first.sku, true))
        .await;
    assert_eq!(plain_world.levels(d2).await.on_hand, 0);
}

#[tokio::test]
async fn the_use_cases_announce_their_own_commits_and_releases_whoever_calls_them() {
    // Called directly, as a new caller (a tool, a future worker) would: the event comes with
    // the change, in the same transaction, without the caller writing it.
    use mercato_inventory::service::Origin;
    use mercato_kit::time::now_us;
    let w = World::new().await;
    let p = w.product(5).await;
    let (kept, freed) = (OrderId::new(), OrderId::new());
    w.deliver(&order_created(kept, &[(p, 2)])).await;
    w.deliver(&order_created(freed, &[(p, 1)])).await;

    let mut tx = w.db.begin().await.unwrap();
    let origin = Origin::system("test");
    w.inv
        .commit(&mut tx, kept, now_us(), &origin)
        .await
        .unwrap();
    w.inv
        .release(&mut tx, freed, now_us(), &origin)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let committed = w.outbox_of(INVENTORY_COMMITTED).await;
    assert_eq!(committed.len(), 1);
    let body: InventoryCommitted = payload(&committed[0]).unwrap();
    assert_eq!(body.order_id, kept);
    let released = w.outbox_of(INVENTORY_RELEASED).await;
    assert_eq!(released.len(), 1);
    let body: InventoryReleased = payload(&released[0]).unwrap();
    assert_eq!((body.order_id, body.reason), (freed, Because::Cancelled));
    assert_eq!(
        w.levels(p).await,
        Levels {
            on_hand: 3,
            reserved: 0
        }
    );

    // A rolled-back transaction leaves neither the change nor its event.
    let other = OrderId::new();
    w.deliver(&order_created(other, &[(p, 1)])).await;
    let mut tx = w.db.begin().await.unwrap();
    w.inv
        .release(&mut tx, other, now_us(), &origin)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(w.outbox_of(INVENTORY_RELEASED).await.len(), 1);
    assert_eq!(w.levels(p).await.reserved, 1);
}
