//! `payment.delayed`: a CONFIRMED order shows why it waits for its payment, without a status
//! change or a history step; the latest attempt wins, a late or repeated report changes
//! nothing, and the wait is gone once the order moves on.
//!
//! Runs on a fresh SQLite file by default; set `MERCATO_TEST_DATABASE_URL` to run on
//! PostgreSQL.

mod support;

use mercato_kit::contracts::types::PAYMENT_DELAYED;
use mercato_kit::contracts::PaymentDelayed;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::events::Envelope;
use mercato_kit::time::to_rfc3339;
use mercato_order::consumer::CONSUMED;
use mercato_order::domain::{Command, Order, OrderStatus, WaitStep};
use support::*;

const SECOND: i64 = 1_000_000;
/// 2030-01-01T00:00:00Z in µs: the reservation expiry of `reserved`.
const EXPIRY: i64 = 1_893_456_000 * SECOND;

fn delayed(o: &Order, attempt: i64, reason: &str, next_at: i64) -> Envelope {
    Envelope::new(
        "payment",
        PAYMENT_DELAYED,
        uuid::Uuid::nil(),
        &PaymentDelayed {
            order_id: o.id,
            payment_id: uuid::Uuid::nil(),
            reason: reason.into(),
            attempt,
            next_attempt_at: to_rfc3339(next_at),
            retry_until: Some(to_rfc3339(EXPIRY)),
        },
    )
}

async fn confirmed(h: &Harness) -> Order {
    let o = h.simple_order().await;
    h.deliver(&reserved(&o)).await;
    let o = h.order(o.id).await;
    assert_eq!(o.status, OrderStatus::Confirmed);
    o
}

#[tokio::test]
async fn a_confirmed_order_shows_the_latest_reason_it_waits_for_its_payment() {
    assert!(CONSUMED.contains(&PAYMENT_DELAYED));
    let h = harness().await;
    let o = confirmed(&h).await;
    assert_eq!(o.waiting_for(), None, "nothing reported yet");
    let history = h.history(o.id).await;

    let first = delayed(
        &o,
        1,
        "cannot connect to the card processor",
        EXPIRY - 60 * SECOND,
    );
    assert_eq!(h.deliver(&first).await, Outcome::Applied);
    assert_eq!(h.deliver(&first).await, Outcome::Duplicate);
    let w = h.order(o.id).await.waiting_for().cloned().expect("waiting");
    assert_eq!(w.step, WaitStep::Payment);
    assert_eq!(w.reason, "cannot connect to the card processor");
    assert_eq!(w.attempt, 1);
    assert_eq!(w.next_attempt_at, EXPIRY - 60 * SECOND);
    assert_eq!(w.retry_until, Some(EXPIRY));
    let since = w.since;

    // A later attempt replaces it, keeping when the wait began; an older one arriving late
    // (or sent again with a new id) does not.
    let third = delayed(
        &o,
        3,
        "the card processor is unavailable (circuit breaker open)",
        EXPIRY - 30 * SECOND,
    );
    let mut third_later = third.clone();
    third_later.occurred_at = to_rfc3339(since + 10 * SECOND);
    h.deliver(&third_later).await;
    let second = delayed(&o, 2, "no answer within 5000 ms", EXPIRY - 45 * SECOND);
    assert_eq!(h.deliver(&second).await, Outcome::Applied);
    h.deliver(&resent(&third_later)).await;
    let after = h.order(o.id).await;
    let w = after.waiting_for().expect("still waiting");
    assert_eq!(w.attempt, 3);
    assert_eq!(
        w.reason,
        "the card processor is unavailable (circuit breaker open)"
    );
    assert_eq!(w.next_attempt_at, EXPIRY - 30 * SECOND);
    assert_eq!(w.since, since, "one wait, from its first report");

    // Waiting is not a state: no status change, no history step, no event, same version.
    assert_eq!(after.status, OrderStatus::Confirmed);
    assert_eq!(after.version, o.version);
    assert_eq!(h.history(o.id).await, history);
    assert!(!h
        .events_of(o.id)
        .await
        .contains(&PAYMENT_DELAYED.to_owned()));

    // Paid: the wait is over, and a report of it arriving now changes nothing.
    h.deliver(&authorized(&o)).await;
    let paid = h.order(o.id).await;
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(paid.waiting, None, "cleared when the order moved on");
    assert_eq!(
        h.deliver(&delayed(&o, 9, "late", EXPIRY)).await,
        Outcome::Applied
    );
    assert_eq!(h.order(o.id).await.waiting, None);
    assert_eq!(h.dead_letters().await, 0);
}

#[tokio::test]
async fn a_cancelled_order_forgets_its_wait_and_ignores_later_reports() {
    let h = harness().await;
    let o = confirmed(&h).await;
    h.deliver(&delayed(
        &o,
        1,
        "cannot connect to the card processor",
        EXPIRY,
    ))
    .await;
    assert!(h.order(o.id).await.waiting_for().is_some());
    h.command(o.id, Command::Cancel { by_admin: false })
        .await
        .unwrap();
    let cancelled = h.order(o.id).await;
    assert!(matches!(cancelled.status, OrderStatus::Cancelled(_)));
    assert_eq!(cancelled.waiting, None);
    h.deliver(&delayed(&o, 2, "no answer within 5000 ms", EXPIRY))
        .await;
    assert_eq!(h.order(o.id).await.waiting, None);
}

#[tokio::test]
async fn a_report_that_overtakes_the_reservation_is_shown_once_the_order_is_confirmed() {
    // The payment hears of the reservation (and fails an attempt) before the order does.
    let h = harness().await;
    let o = h.simple_order().await;
    h.deliver(&delayed(
        &o,
        1,
        "cannot connect to the card processor",
        EXPIRY,
    ))
    .await;
    let pending = h.order(o.id).await;
    assert_eq!(pending.status, OrderStatus::Pending);
    assert_eq!(pending.waiting_for(), None, "not shown while PENDING");
    h.deliver(&reserved(&o)).await;
    let w = h.order(o.id).await.waiting_for().cloned().expect("shown");
    assert_eq!(w.attempt, 1);
}

#[tokio::test]
async fn a_report_with_bad_times_is_parked_not_guessed_at() {
    let h = harness().await;
    let o = confirmed(&h).await;
    let mut bad = delayed(&o, 1, "cannot connect to the card processor", EXPIRY);
    bad.payload["next_attempt_at"] = "tomorrow".into();
    assert_eq!(h.deliver(&bad).await, Outcome::Parked);
    assert_eq!(h.order(o.id).await.waiting, None);
}
