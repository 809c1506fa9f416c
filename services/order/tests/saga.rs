//! The order service against a real database, driven the way production drives it: orders
//! placed through the service functions, products and saga events delivered through the
//! consumer (`Consumer::process`), every event twice and in every order the producers can
//! send them.
//!
//! Runs on a fresh SQLite file by default; set `MERCATO_TEST_DATABASE_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`) to run the same tests on PostgreSQL.

mod support;

use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{
    CancelReason, OrderCancelled, OrderCreated, OrderRef, OrderRefunded, ReleaseReason,
};
use mercato_kit::events::consumer::Outcome;
use mercato_kit::events::Envelope;
use mercato_kit::ids::{ProductId, UserId};
use mercato_kit::testing::until;
use mercato_order::domain::{Command, OrderStatus, StockCheck};
use mercato_order::inventory::StockAnswer;
use mercato_order::service::Error;
use std::time::{Duration, Instant};
use support::*;

/// How long a test waits for something another task does.
const WAIT: Duration = Duration::from_secs(5);

fn cancelled(r: CancelReason) -> OrderStatus {
    OrderStatus::Cancelled(r)
}

/// Delivers `env` twice as the bus may (same event id), then once more as a producer that
/// sent it again (new id); only the first can change anything.
async fn deliver_thrice(h: &Harness, env: &Envelope) {
    h.deliver(env).await;
    assert_eq!(
        h.deliver(env).await,
        Outcome::Duplicate,
        "the inbox catches a redelivery"
    );
    assert_eq!(h.deliver(&resent(env)).await, Outcome::Applied);
}

#[tokio::test]
async fn orders_are_priced_from_the_read_model_that_product_events_feed() {
    let h = harness().await;
    let seller = UserId::new();
    let customer = UserId::new();
    let mut p = h.seed_product(seller, 1000).await;

    // A price change reaches the read model; a late, older announcement does not undo it.
    let stale = catalog_event(PRODUCT_UPDATED, &p);
    p.price_cents = 1200;
    h.deliver(&catalog_event(PRODUCT_UPDATED, &p)).await;
    let mut older = stale;
    older.occurred_at = "2001-01-01T00:00:00.000Z".into();
    assert_eq!(h.deliver(&older).await, Outcome::Applied);

    let q = h.seed_product(UserId::new(), 300).await;
    let order = h
        .place(
            customer,
            &[(p.product_id, 2), (q.product_id, 1), (p.product_id, 1)],
        )
        .await;
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.items.len(), 2, "duplicate lines are merged");
    assert_eq!(order.items[0].quantity, 3);
    assert_eq!(order.items[0].price_cents, 1200);
    assert_eq!(order.total_cents, 3 * 1200 + 300);
    assert_eq!(order.stock_check, StockCheck::Passed);
    assert_eq!(
        h.stock.calls.lock().unwrap().last().unwrap(),
        &vec![(p.product_id, 3), (q.product_id, 1)]
    );
    assert_eq!(
        h.order(order.id).await,
        order,
        "what was answered is what was stored"
    );

    // order.created carries each line's seller and price snapshot, and the request's trace.
    let created: Vec<_> = h
        .outbox()
        .await
        .into_iter()
        .filter(|e| e.event_type == ORDER_CREATED)
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].correlation_id.as_deref(), Some("corr-1"));
    let payload: OrderCreated = mercato_kit::contracts::payload(&created[0]).unwrap();
    assert_eq!(payload.order_id, order.id);
    assert_eq!(payload.customer_id, customer);
    assert_eq!(payload.total_cents, 3900);
    assert_eq!(payload.currency, "USD");
    assert_eq!(payload.items[0].seller_id, seller);
    assert_eq!(payload.items[0].price_cents, 1200);
    let history = h.history(order.id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].event_type, "order.created");
    assert_eq!(history[0].from_status, None);

    // Deactivated, unknown, or in another currency: refused, naming the line.
    h.deliver(&catalog_event(
        PRODUCT_DEACTIVATED,
        &mercato_kit::contracts::ProductChanged {
            active: false,
            ..q.clone()
        },
    ))
    .await;
    let unknown = ProductId::new();
    let err = h
        .try_place(
            customer,
            &[(p.product_id, 1), (q.product_id, 1), (unknown, 1)],
        )
        .await
        .unwrap_err();
    let Error::Invalid(invalid) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        invalid.fields(),
        ["items[1].product_id", "items[2].product_id"]
    );
    assert!(invalid.0[1].message.contains(&unknown.to_string()));
    let euro = product(seller, 500, "EUR");
    h.deliver(&catalog_event(PRODUCT_CREATED, &euro)).await;
    let err = h
        .try_place(customer, &[(p.product_id, 1), (euro.product_id, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid(ref i) if i.fields() == ["items"]),
        "{err:?}"
    );

    // The pre-check: short stock refuses with inventory's lines; no answer defers.
    let lines = vec![mercato_kit::contracts::ShortLine {
        product_id: p.product_id,
        requested: 3,
        available: 1,
    }];
    *h.stock.answer.lock().unwrap() = StockAnswer::Short(lines.clone());
    let err = h
        .try_place(customer, &[(p.product_id, 3)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InsufficientStock(ref l) if *l == lines),
        "{err:?}"
    );
    *h.stock.answer.lock().unwrap() = StockAnswer::Unknown("down".into());
    let deferred = h.place(customer, &[(p.product_id, 3)]).await;
    assert_eq!(deferred.stock_check, StockCheck::Deferred);
    assert_eq!(h.order(deferred.id).await.stock_check, StockCheck::Deferred);

    // Nothing refused left a trace.
    let created = h
        .outbox()
        .await
        .iter()
        .filter(|e| e.event_type == ORDER_CREATED)
        .count();
    assert_eq!(created, 2);
}

#[tokio::test]
async fn reservation_then_payment_each_delivered_again_pays_once() {
    let h = harness().await;
    let o = h.simple_order().await;

    let reservation = reserved(&o);
    deliver_thrice(&h, &reservation).await;
    assert_eq!(h.status(o.id).await, OrderStatus::Confirmed);
    let payment = authorized(&o);
    deliver_thrice(&h, &payment).await;
    // A reservation arriving again after payment changes nothing either.
    h.deliver(&resent(&reservation)).await;
    assert_eq!(h.status(o.id).await, OrderStatus::Paid);

    let history = h.history(o.id).await;
    let types: Vec<_> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["order.created", "inventory.reserved", "payment.authorized"]
    );
    assert_eq!(h.events_of(o.id).await, [ORDER_CREATED, ORDER_PAID]);
    h.assert_history_folds(o.id).await;

    // order.paid is traced to the event that caused it.
    let paid = h.outbox().await.pop().unwrap();
    assert_eq!(paid.causation_id, Some(payment.event_id));
    assert_eq!(paid.correlation_id, payment.correlation_id);
    let body: OrderRef = mercato_kit::contracts::payload(&paid).unwrap();
    assert_eq!(body.order_id, o.id);
}

#[tokio::test]
async fn payment_before_reservation_pays_and_the_late_reservation_changes_nothing() {
    let h = harness().await;
    let o = h.simple_order().await;

    deliver_thrice(&h, &authorized(&o)).await;
    assert_eq!(h.status(o.id).await, OrderStatus::Paid);
    deliver_thrice(&h, &reserved(&o)).await;
    assert_eq!(h.status(o.id).await, OrderStatus::Paid);

    let types = h.history_types(o.id).await;
    assert_eq!(types, ["order.created", "payment.authorized"]);
    assert_eq!(h.events_of(o.id).await, [ORDER_CREATED, ORDER_PAID]);
    h.assert_history_folds(o.id).await;
}

#[tokio::test]
async fn a_failed_reservation_cancels_once_and_late_events_change_nothing() {
    let h = harness().await;
    let o = h.simple_order().await;

    deliver_thrice(&h, &reservation_failed(&o)).await;
    assert_eq!(h.status(o.id).await, cancelled(CancelReason::OutOfStock));
    for late in [
        reserved(&o),
        authorized(&o),
        payment_failed(&o),
        released(&o, ReleaseReason::Expired),
        released(&o, ReleaseReason::Cancelled),
    ] {
        deliver_thrice(&h, &late).await;
    }
    let customer_cancel = h
        .command(o.id, Command::Cancel { by_admin: false })
        .await
        .unwrap();
    assert!(
        !customer_cancel.changed,
        "cancelling a cancelled order is answered, not applied"
    );
    assert_eq!(
        customer_cancel.order.status,
        cancelled(CancelReason::OutOfStock)
    );

    assert_eq!(h.status(o.id).await, cancelled(CancelReason::OutOfStock));
    assert_eq!(h.history(o.id).await.len(), 2);
    assert_eq!(h.events_of(o.id).await, [ORDER_CREATED, ORDER_CANCELLED]);
    let cancel = h.outbox().await.pop().unwrap();
    let body: OrderCancelled = mercato_kit::contracts::payload(&cancel).unwrap();
    assert_eq!(body.reason, CancelReason::OutOfStock);
    h.assert_history_folds(o.id).await;
    assert_eq!(h.dead_letters().await, 0, "late events are not failures");
}

#[tokio::test]
async fn a_declined_payment_and_an_expiry_cancel_once_whichever_comes_first() {
    let h = harness().await;
    for payment_first in [true, false] {
        let o = h.simple_order().await;
        h.deliver(&reserved(&o)).await;
        let (first, second, reason) = if payment_first {
            (
                payment_failed(&o),
                released(&o, ReleaseReason::Expired),
                CancelReason::PaymentDeclined,
            )
        } else {
            (
                released(&o, ReleaseReason::Expired),
                payment_failed(&o),
                CancelReason::ReservationExpired,
            )
        };
        deliver_thrice(&h, &first).await;
        deliver_thrice(&h, &second).await;
        assert_eq!(h.status(o.id).await, cancelled(reason));
        assert_eq!(
            h.events_of(o.id).await,
            [ORDER_CREATED, ORDER_CANCELLED],
            "payment first: {payment_first}"
        );
        assert_eq!(h.history(o.id).await.len(), 3);
        h.assert_history_folds(o.id).await;
    }
}

#[tokio::test]
async fn an_expiry_after_payment_cancels_and_a_release_we_caused_does_not() {
    let h = harness().await;
    let expired = h.simple_order().await;
    h.deliver(&reserved(&expired)).await;
    h.deliver(&authorized(&expired)).await;
    deliver_thrice(&h, &released(&expired, ReleaseReason::Expired)).await;
    assert_eq!(
        h.status(expired.id).await,
        cancelled(CancelReason::ReservationExpired)
    );

    let by_customer = h.simple_order().await;
    h.deliver(&authorized(&by_customer)).await;
    let applied = h
        .command(by_customer.id, Command::Cancel { by_admin: false })
        .await
        .unwrap();
    assert!(applied.changed);
    // Inventory confirms the release the cancel asked for; then its late expiry arrives.
    deliver_thrice(&h, &released(&by_customer, ReleaseReason::Cancelled)).await;
    deliver_thrice(&h, &released(&by_customer, ReleaseReason::Expired)).await;
    assert_eq!(
        h.status(by_customer.id).await,
        cancelled(CancelReason::CustomerCancelled)
    );
    assert_eq!(
        h.events_of(by_customer.id).await,
        [ORDER_CREATED, ORDER_PAID, ORDER_CANCELLED]
    );
    for id in [expired.id, by_customer.id] {
        h.assert_history_folds(id).await;
    }
}

#[tokio::test]
async fn sellers_process_and_fulfil_then_admins_refund() {
    let h = harness().await;
    let o = h.simple_order().await;
    let refused = h.command(o.id, Command::Process).await.unwrap_err();
    assert!(
        matches!(refused, Error::Refused(r) if r.from == OrderStatus::Pending),
        "{refused:?}"
    );
    h.deliver(&reserved(&o)).await;
    h.deliver(&authorized(&o)).await;
    h.command(o.id, Command::Process).await.unwrap();
    h.command(o.id, Command::Fulfill).await.unwrap();
    let err = h
        .command(o.id, Command::Cancel { by_admin: true })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Refused(_)),
        "fulfilled orders are not cancelled"
    );

    let too_much = h
        .command(
            o.id,
            Command::Refund {
                amount_cents: Some(o.total_cents + 1),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(too_much, Error::Invalid(ref i) if i.fields() == ["amount_cents"]),
        "{too_much:?}"
    );
    let refunded = h
        .command(
            o.id,
            Command::Refund {
                amount_cents: Some(500),
            },
        )
        .await
        .unwrap();
    assert_eq!(refunded.order.status, OrderStatus::Refunded);
    assert_eq!(
        h.events_of(o.id).await,
        [ORDER_CREATED, ORDER_PAID, ORDER_FULFILLED, ORDER_REFUNDED]
    );
    let refund = h.outbox().await.pop().unwrap();
    let body: OrderRefunded = mercato_kit::contracts::payload(&refund).unwrap();
    assert_eq!(body.amount_cents, Some(500));
    // Late saga events after the end change nothing.
    deliver_thrice(&h, &released(&o, ReleaseReason::Expired)).await;
    assert_eq!(h.status(o.id).await, OrderStatus::Refunded);
    let types = h.history_types(o.id).await;
    assert_eq!(
        types,
        [
            "order.created",
            "inventory.reserved",
            "payment.authorized",
            "order.processing",
            "order.fulfilled",
            "order.refunded"
        ]
    );
    h.assert_history_folds(o.id).await;
}

#[tokio::test]
async fn every_cancelled_order_has_exactly_one_order_cancelled_and_every_history_folds() {
    let h = harness().await;
    let mut ids = Vec::new();
    // Every way an order can end or stop, with every event delivered twice on the way.
    for path in 0..8 {
        let o = h.simple_order().await;
        ids.push(o.id);
        let events: Vec<Envelope> = match path {
            0 => vec![reservation_failed(&o)],
            1 => vec![reserved(&o), payment_failed(&o)],
            2 => vec![payment_failed(&o), reserved(&o)],
            3 => vec![reserved(&o), released(&o, ReleaseReason::Expired)],
            4 => vec![
                authorized(&o),
                released(&o, ReleaseReason::Expired),
                reserved(&o),
            ],
            5 | 6 => vec![reserved(&o), authorized(&o)],
            _ => vec![],
        };
        for e in &events {
            deliver_thrice(&h, e).await;
        }
        match path {
            5 => {
                h.command(o.id, Command::Cancel { by_admin: true })
                    .await
                    .unwrap();
            }
            6 => {
                h.command(o.id, Command::Fulfill).await.unwrap();
            }
            7 => {
                h.command(o.id, Command::Cancel { by_admin: false })
                    .await
                    .unwrap();
            }
            _ => {}
        }
        // A second cancel of any of them adds nothing.
        let _ = h.command(o.id, Command::Cancel { by_admin: false }).await;
    }
    let outbox = h.outbox().await;
    for id in &ids {
        let status = h.status(*id).await;
        let cancels: Vec<OrderCancelled> = outbox
            .iter()
            .filter(|e| e.event_type == ORDER_CANCELLED && e.aggregate_id == id.to_string())
            .map(|e| mercato_kit::contracts::payload(e).unwrap())
            .collect();
        match status {
            OrderStatus::Cancelled(reason) => {
                assert_eq!(cancels.len(), 1, "{id}: {status:?}");
                assert_eq!(cancels[0].reason, reason);
            }
            _ => assert!(cancels.is_empty(), "{id}: {status:?}"),
        }
        h.assert_history_folds(*id).await;
    }
    let statuses: Vec<_> = futures::future::join_all(ids.iter().map(|id| h.status(*id))).await;
    assert_eq!(
        statuses,
        [
            cancelled(CancelReason::OutOfStock),
            cancelled(CancelReason::PaymentDeclined),
            cancelled(CancelReason::PaymentDeclined),
            cancelled(CancelReason::ReservationExpired),
            cancelled(CancelReason::ReservationExpired),
            cancelled(CancelReason::AdminCancelled),
            OrderStatus::Fulfilled,
            cancelled(CancelReason::CustomerCancelled),
        ]
    );
}

#[tokio::test]
async fn racing_commands_on_one_order_apply_one_transition_each() {
    let h = harness().await;
    let o = h.simple_order().await;
    h.deliver(&reserved(&o)).await;
    // Payment, cancel and expiry race; whichever wins, the others are refused, not applied.
    let racers: Vec<_> = (0..12)
        .map(|i| {
            let h = &h;
            let o = &o;
            async move {
                match i % 3 {
                    0 => {
                        h.deliver(&authorized(o)).await;
                    }
                    1 => {
                        let _ = h.command(o.id, Command::Cancel { by_admin: false }).await;
                    }
                    _ => {
                        h.deliver(&released(o, ReleaseReason::Expired)).await;
                    }
                }
            }
        })
        .collect();
    futures::future::join_all(racers).await;
    let history = h.history(o.id).await;
    let seqs: Vec<_> = history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=history.len() as i64).collect::<Vec<_>>());
    assert!(history.len() <= 4, "{history:?}");
    assert!(matches!(h.status(o.id).await, OrderStatus::Cancelled(_)));
    let cancels = h
        .events_of(o.id)
        .await
        .into_iter()
        .filter(|t| t == ORDER_CANCELLED)
        .count();
    assert_eq!(cancels, 1);
    h.assert_history_folds(o.id).await;
}

#[tokio::test]
async fn events_for_unknown_orders_are_dropped_and_malformed_ones_parked() {
    let h = harness().await;
    let o = h.simple_order().await;
    let mut stranger = o.clone();
    stranger.id = mercato_kit::ids::OrderId::new();
    assert_eq!(h.deliver(&authorized(&stranger)).await, Outcome::Applied);
    let mut broken = authorized(&o);
    broken.payload = serde_json::json!({"order_id": "not an id"});
    assert_eq!(h.deliver(&broken).await, Outcome::Parked);
    assert_eq!(h.dead_letters().await, 1);
    assert_eq!(h.status(o.id).await, OrderStatus::Pending);
}

#[tokio::test]
async fn a_waiter_is_woken_by_a_change_an_event_commits() {
    let h = harness().await;
    let o = h.simple_order().await;
    let feed = h.orders.feed().clone();
    let orders = h.orders.clone();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let waiter = tokio::spawn(async move { orders.wait_while_in_saga(o.id, deadline).await });
    until("the waiter listens", WAIT, || async {
        feed.watchers() == 1
    })
    .await;

    // Still waiting through a change that keeps the order in the saga...
    h.deliver(&reserved(&o)).await;
    // ...and answered by the one that takes it out, long before the deadline.
    h.deliver(&authorized(&o)).await;
    let answer = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(answer.status, OrderStatus::Paid);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_waiter_is_woken_by_a_change_a_request_commits() {
    let h = harness().await;
    let o = h.simple_order().await;
    let feed = h.orders.feed().clone();
    let orders = h.orders.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let waiter = tokio::spawn(async move { orders.wait_while_in_saga(o.id, deadline).await });
    until("the waiter listens", WAIT, || async {
        feed.watchers() == 1
    })
    .await;
    h.command(o.id, Command::Cancel { by_admin: true })
        .await
        .unwrap();
    let answer = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(answer.status, cancelled(CancelReason::AdminCancelled));
}

#[tokio::test]
async fn a_waiter_answers_at_its_deadline_when_nothing_happens() {
    let h = harness().await;
    let o = h.simple_order().await;
    // Another order's changes wake it, but do not answer it.
    let other = h.simple_order().await;
    let orders = h.orders.clone();
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(300);
    let waiter = tokio::spawn(async move { orders.wait_while_in_saga(o.id, deadline).await });
    until("the waiter listens", WAIT, || async {
        h.orders.feed().watchers() == 1
    })
    .await;
    h.deliver(&authorized(&other)).await;
    let answer = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(answer.status, OrderStatus::Pending);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // An order that has already left the saga answers at once; an unknown one is None.
    let now = tokio::time::Instant::now();
    let paid = h
        .orders
        .wait_while_in_saga(other.id, now + Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paid.status, OrderStatus::Paid);
    assert!(now.elapsed() < Duration::from_secs(5));
    let missing = h
        .orders
        .wait_while_in_saga(
            mercato_kit::ids::OrderId::new(),
            now + Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(missing.is_none());
}

/// Not a check: how fast orders are placed and moved on this machine. Run with
/// `cargo test -p mercato-order --release --test saga -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check: run it by hand, as above"]
async fn measure_placing_and_saga_throughput() {
    let h = harness().await;
    let p = h.seed_product(UserId::new(), 1000).await;
    let n = 500;
    let mut place = Vec::with_capacity(n);
    let started = Instant::now();
    let mut orders = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        orders.push(h.place(UserId::new(), &[(p.product_id, 1)]).await);
        place.push(t.elapsed());
    }
    let placing = started.elapsed();
    let started = Instant::now();
    for o in &orders {
        h.deliver(&reserved(o)).await;
        h.deliver(&authorized(o)).await;
    }
    let saga = started.elapsed();
    place.sort();
    eprintln!(
        "placed {n} orders in {placing:?} ({:.0}/s; p50 {:?}, p99 {:?}); {} saga events in {saga:?} ({:.0}/s)",
        n as f64 / placing.as_secs_f64(),
        place[n / 2],
        place[n * 99 / 100],
        2 * n,
        (2 * n) as f64 / saga.as_secs_f64(),
    );
    let started = Instant::now();
    for o in orders.iter().take(100) {
        assert_eq!(h.status(o.id).await, OrderStatus::Paid);
    }
    eprintln!("100 order reads in {:?}", started.elapsed());
}
