//! The payment service in the checkout saga, against the real psp-mock: each saga event as
//! the consumer delivers it (twice, and out of order), the worker's calls to the processor,
//! and what ends up in the payment, its audit trail, the outbox and the processor's counters.

mod support;

use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{PaymentChanged, PaymentDelayed, PaymentFailed};
use mercato_kit::events::consumer::Outcome;
use mercato_kit::ids::{OrderId, UserId};
use mercato_payment::domain::Status;
use mercato_payment::store;
use mercato_payment::worker::Worker;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn changed(env: &mercato_kit::events::Envelope) -> PaymentChanged {
    mercato_kit::contracts::payload(env).unwrap()
}

#[tokio::test]
async fn visa_authorizes_exactly_once_however_often_the_event_comes() {
    let h = Harness::start().await;
    let (order, customer) = (OrderId::new(), UserId::new());
    let event = reserved(order, customer, 2599, "pm_card_visa");
    assert_eq!(h.deliver(&event).await, Outcome::Applied);
    assert_eq!(h.deliver(&event).await, Outcome::Duplicate);
    let p = h.settled(order, Status::Authorized).await;
    // The same reservation under a new event id (a producer retry) opens nothing new either.
    let again = reserved(order, customer, 2599, "pm_card_visa");
    assert_eq!(h.deliver(&again).await, Outcome::Applied);
    h.settled(order, Status::Authorized).await;

    assert_eq!(p.money.amount_cents, 2599);
    assert_eq!(p.customer_id, Some(customer));
    assert!(p.provider_ref.as_deref().unwrap().starts_with("pi_"));
    let stats = h.psp_stats().await;
    assert_eq!(stats["authorizations"], 1, "{stats}");
    assert_eq!(stats["authorization_attempts"], 1, "{stats}");

    let calls = h.calls(&p).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (
            calls[0].kind.as_str(),
            calls[0].outcome.as_str(),
            calls[0].http_status
        ),
        ("authorize", "succeeded", Some(201))
    );
    assert_eq!(
        calls[0].idempotency_key,
        format!("mercato-pay-{}-authorize", p.id)
    );

    let events = h.emitted_of(PAYMENT_AUTHORIZED, &p).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.producer, "payment");
    assert_eq!(e.causation_id, Some(event.event_id));
    assert_eq!(e.correlation_id, event.correlation_id);
    assert_eq!(
        changed(e),
        PaymentChanged {
            order_id: order,
            payment_id: p.id,
            amount_cents: 2599,
            currency: "USD".into()
        }
    );
    h.stop().await;
}

#[tokio::test]
async fn declines_fail_the_payment_with_the_decline_code() {
    let h = Harness::start().await;
    for (method, code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
    ] {
        let order = OrderId::new();
        h.deliver(&reserved(order, UserId::new(), 1000, method))
            .await;
        let p = h.settled(order, Status::Failed).await;
        assert_eq!(p.failure_reason.as_deref(), Some(code));
        assert!(
            p.provider_ref.is_some(),
            "the declined attempt's reference is kept"
        );
        let failed = h.emitted_of(PAYMENT_FAILED, &p).await;
        assert_eq!(failed.len(), 1);
        let payload: PaymentFailed = mercato_kit::contracts::payload(&failed[0]).unwrap();
        assert_eq!(
            payload,
            PaymentFailed {
                order_id: order,
                payment_id: p.id,
                reason: code.into()
            }
        );
        assert!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.is_empty());
        let calls = h.calls(&p).await;
        assert_eq!(
            (calls.len(), calls[0].outcome.as_str(), calls[0].http_status),
            (1, "declined", Some(402))
        );
    }
    assert_eq!(h.psp_stats().await["authorizations"], 2);
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_token_fails_the_payment() {
    let h = Harness::start().await;
    let order = OrderId::new();
    h.deliver(&reserved(order, UserId::new(), 1000, "pm_card_nonsense"))
        .await;
    let p = h.settled(order, Status::Failed).await;
    assert_eq!(p.failure_reason.as_deref(), Some("invalid_payment_method"));
    assert_eq!(h.emitted_of(PAYMENT_FAILED, &p).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn processing_errors_are_retried_with_the_same_key_into_one_authorization() {
    let h = Harness::start().await;
    let order = OrderId::new();
    h.deliver(&reserved(
        order,
        UserId::new(),
        4200,
        "pm_card_processingError",
    ))
    .await;
    let p = h.settled(order, Status::Authorized).await;
    let stats = h.psp_stats().await;
    assert_eq!(stats["authorizations"], 1, "{stats}");
    assert_eq!(stats["authorization_attempts"], 3, "{stats}");
    let calls = h.calls(&p).await;
    let outcomes: Vec<_> = calls.iter().map(|c| c.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["retryable_error", "retryable_error", "succeeded"]
    );
    let attempts: Vec<_> = calls.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(calls
        .iter()
        .all(|c| c.idempotency_key == calls[0].idempotency_key));
    assert_eq!(calls[0].http_status, Some(503));
    assert_eq!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_pending_authorization_is_decided_by_the_webhook_once() {
    let h = Harness::start().await;
    let (order, p) = h.awaiting_webhook().await;
    let p = h.settled(order, p.money.status).await;
    assert_eq!(p.money.status, Status::Pending);
    assert_eq!(h.calls(&p).await[0].outcome, "pending");

    h.settle(p.provider_ref.as_deref().unwrap(), "succeeded")
        .await;
    let p = h.settled(order, Status::Authorized).await;
    assert_eq!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.len(), 1);
    until_some("the webhook to be acknowledged", DEADLINE, || async {
        (h.psp_stats().await["webhooks_sent"] == 1).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_pending_authorization_that_fails_fails_the_payment() {
    let h = Harness::start().await;
    let (order, p) = h.awaiting_webhook().await;
    h.settle(p.provider_ref.as_deref().unwrap(), "failed").await;
    let p = h.settled(order, Status::Failed).await;
    assert_eq!(p.failure_reason.as_deref(), Some("authorization_failed"));
    assert_eq!(h.emitted_of(PAYMENT_FAILED, &p).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_cancelled_order_releases_its_authorization() {
    let h = Harness::start().await;
    let order = OrderId::new();
    h.deliver(&reserved(order, UserId::new(), 999, "pm_card_visa"))
        .await;
    h.settled(order, Status::Authorized).await;
    let cancel = cancelled(order);
    assert_eq!(h.deliver(&cancel).await, Outcome::Applied);
    assert_eq!(h.deliver(&cancel).await, Outcome::Duplicate);
    // The expired reservation's release arriving too changes nothing more.
    h.deliver(&released_expired(order)).await;
    let p = h.settled(order, Status::Voided).await;
    let stats = h.psp_stats().await;
    assert_eq!(
        (stats["voids"].as_u64(), stats["captures"].as_u64()),
        (Some(1), Some(0))
    );
    let voided = h.emitted_of(PAYMENT_VOIDED, &p).await;
    assert_eq!(voided.len(), 1);
    assert_eq!(voided[0].causation_id, Some(cancel.event_id));
    // Late saga events for the cancelled order change nothing.
    h.deliver(&fulfilled(order)).await;
    h.deliver(&refunded(order, None)).await;
    let p = h.settled(order, Status::Voided).await;
    assert_eq!(p.money.captured_cents, 0);
    let kinds: Vec<_> = h.calls(&p).await.into_iter().map(|c| c.kind).collect();
    assert_eq!(kinds, ["authorize", "void"]);
    h.stop().await;
}

#[tokio::test]
async fn an_expired_reservation_releases_the_authorization() {
    let h = Harness::start().await;
    let order = OrderId::new();
    h.deliver(&reserved(order, UserId::new(), 999, "pm_card_visa"))
        .await;
    h.settled(order, Status::Authorized).await;
    h.deliver(&released_expired(order)).await;
    let p = h.settled(order, Status::Voided).await;
    assert_eq!(h.emitted_of(PAYMENT_VOIDED, &p).await.len(), 1);
    assert_eq!(h.psp_stats().await["voids"], 1);
    h.stop().await;
}

#[tokio::test]
async fn a_cancellation_before_the_reservation_means_no_authorization_ever() {
    let h = Harness::start().await;
    let order = OrderId::new();
    h.deliver(&cancelled(order)).await;
    h.deliver(&reserved(order, UserId::new(), 999, "pm_card_visa"))
        .await;
    assert!(h.payment_of(order).await.is_none());
    h.payments.wake_worker();
    // The worker drained its queue (empty) and nothing reached the processor.
    assert_eq!(h.psp_stats().await["authorization_attempts"], 0);
    assert!(h.emitted().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_cancellation_before_the_call_is_sent_drops_the_call() {
    // The service is not running: the test drives the worker itself, so the cancellation
    // lands while the authorization is queued and not yet sent.
    let h = Harness::start_with(Options {
        run_service: false,
        ..Options::default()
    })
    .await;
    let order = OrderId::new();
    h.consumer
        .process(&reserved(order, UserId::new(), 999, "pm_card_visa"))
        .await
        .unwrap();
    h.consumer.process(&cancelled(order)).await.unwrap();
    let worker = Worker::new(
        h.payments.clone(),
        processor(&h.psp_url, h.processor_policy.clone()),
    );
    assert_eq!(worker.run_due().await.unwrap(), None, "nothing left queued");
    let p = h.payment_of(order).await.unwrap();
    assert_eq!(p.money.status, Status::Voided);
    assert_eq!(p.failure_reason.as_deref(), Some("order_cancelled"));
    assert_eq!(h.psp_stats().await["authorization_attempts"], 0);
    assert_eq!(h.emitted_of(PAYMENT_VOIDED, &p).await.len(), 1);
    assert_eq!(h.calls(&p).await[0].outcome, "skipped");
    h.stop().await;
}

#[tokio::test]
async fn a_cancellation_while_pending_voids_it_at_the_processor_at_once() {
    let h = Harness::start().await;
    let (order, _) = h.awaiting_webhook().await;
    // Nobody settles it: the cancellation alone must release the pending hold.
    h.deliver(&cancelled(order)).await;
    let p = h.settled(order, Status::Voided).await;
    assert_eq!(h.psp_stats().await["voids"], 1);
    // The order never hears of an authorization it would have to undo.
    assert!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.is_empty());
    assert_eq!(h.emitted_of(PAYMENT_VOIDED, &p).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_cancellation_racing_a_pending_authorization_ends_voided() {
    // Whether the cancellation lands before the call, during it, or after its "pending"
    // answer, the pending hold is released without any settlement.
    for _ in 0..5 {
        let h = Harness::start().await;
        let order = OrderId::new();
        h.deliver(&reserved(order, UserId::new(), 1500, "pm_card_pending"))
            .await;
        h.deliver(&cancelled(order)).await;
        let p = h.settled(order, Status::Voided).await;
        assert!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.is_empty());
        h.stop().await;
    }
}

#[tokio::test]
async fn fulfilment_captures_once() {
    let h = Harness::start().await;
    let order = OrderId::new();
    // Fulfilled before anything is authorized: too early, nothing to capture.
    h.deliver(&fulfilled(order)).await;
    h.deliver(&reserved(order, UserId::new(), 3000, "pm_card_visa"))
        .await;
    h.settled(order, Status::Authorized).await;
    let done = fulfilled(order);
    h.deliver(&done).await;
    h.deliver(&done).await;
    h.deliver(&fulfilled(order)).await;
    let p = h.settled(order, Status::Captured).await;
    assert_eq!(p.money.captured_cents, 3000);
    assert_eq!(h.psp_stats().await["captures"], 1);
    let captured = h.emitted_of(PAYMENT_CAPTURED, &p).await;
    assert_eq!(captured.len(), 1);
    assert_eq!(changed(&captured[0]).amount_cents, 3000);
    // A cancellation after capture gives the money back.
    h.deliver(&cancelled(order)).await;
    let p = h.settled(order, Status::Refunded).await;
    assert_eq!(p.money.refunded_cents, 3000);
    assert_eq!(h.psp_stats().await["voids"], 0);
    h.stop().await;
}

#[tokio::test]
async fn a_refund_in_part_then_the_rest() {
    let h = Harness::start().await;
    let order = OrderId::new();
    h.deliver(&reserved(order, UserId::new(), 1000, "pm_card_visa"))
        .await;
    h.settled(order, Status::Authorized).await;
    // Refunded before the capture happened: nothing captured, nothing to refund.
    h.deliver(&refunded(order, Some(1))).await;
    h.deliver(&fulfilled(order)).await;
    h.settled(order, Status::Captured).await;
    let part = refunded(order, Some(300));
    h.deliver(&part).await;
    h.deliver(&part).await;
    let p = h.settled(order, Status::PartiallyRefunded).await;
    assert_eq!(
        (p.money.captured_cents, p.money.refunded_cents),
        (1000, 300)
    );
    h.deliver(&refunded(order, None)).await;
    let p = h.settled(order, Status::Refunded).await;
    assert_eq!(p.money.refunded_cents, 1000);
    // Nothing is left: a further refund is a no-op.
    h.deliver(&refunded(order, Some(5))).await;
    let p = h.settled(order, Status::Refunded).await;
    assert_eq!(h.psp_stats().await["refunds"], 2);
    let amounts: Vec<i64> = h
        .emitted_of(PAYMENT_REFUNDED, &p)
        .await
        .iter()
        .map(|e| changed(e).amount_cents)
        .collect();
    assert_eq!(amounts, [300, 700]);
    let keys: Vec<_> = h
        .calls(&p)
        .await
        .into_iter()
        .filter(|c| c.kind == "refund")
        .map(|c| c.idempotency_key)
        .collect();
    assert_eq!(
        keys,
        [
            format!("mercato-pay-{}-refund-1", p.id),
            format!("mercato-pay-{}-refund-2", p.id)
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_processor_fails_the_payment_when_the_reservation_expires() {
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let h = Harness::start_with(Options {
        psp_url: Some(dead),
        ..Options::default()
    })
    .await;
    let order = OrderId::new();
    let reservation = reserved_until(
        order,
        UserId::new(),
        1000,
        "pm_card_visa",
        Duration::from_millis(1500),
    );
    h.deliver(&reservation).await;
    let p = h.settled(order, Status::Failed).await;
    assert_eq!(p.failure_reason.as_deref(), Some("processor_unavailable"));
    assert_eq!(h.emitted_of(PAYMENT_FAILED, &p).await.len(), 1);
    let calls = h.calls(&p).await;
    assert!(calls.len() >= 2, "{calls:?}");
    assert_eq!(calls.last().unwrap().outcome, "gave_up");
    assert!(calls[..calls.len() - 1]
        .iter()
        .all(|c| c.outcome == "retryable_error" && c.http_status.is_none()));
    // Every failed attempt before the give-up told the order why it waits, once, in the
    // failing attempt's transaction; the give-up itself is told by payment.failed.
    let delayed = h.emitted_of(PAYMENT_DELAYED, &p).await;
    assert_eq!(delayed.len(), calls.len() - 1, "{delayed:?}");
    for (n, e) in delayed.iter().enumerate() {
        let d: PaymentDelayed = mercato_kit::contracts::payload(e).unwrap();
        assert_eq!((d.order_id, d.payment_id), (order, p.id));
        assert_eq!(d.attempt, n as i64 + 1);
        assert_eq!(d.reason, "cannot connect to the card processor");
        assert_eq!(
            d.retry_until.as_deref(),
            reservation.payload["expires_at"].as_str(),
            "retried until the reservation expires"
        );
        assert!(d.next_attempt_at <= d.retry_until.clone().unwrap(), "{d:?}");
        assert_eq!(e.correlation_id, reservation.correlation_id);
    }
    h.stop().await;
}

#[tokio::test]
async fn events_from_the_bus_reach_the_worker_without_help() {
    // The real path: published on the bus, consumed by the service's own consumer task, whose
    // acknowledgement wakes the worker.
    let h = Harness::start().await;
    let order = OrderId::new();
    use mercato_kit::events::Bus;
    h.bus
        .publish(&reserved(order, UserId::new(), 700, "pm_card_visa"))
        .await
        .unwrap();
    let p = h.settled(order, Status::Authorized).await;
    h.bus.publish(&fulfilled(order)).await.unwrap();
    h.settled(order, Status::Captured).await;
    // And the outbox relay publishes what the service emitted.
    until_some("payment events on the bus", DEADLINE, || async {
        let all = h.bus.all().await.unwrap();
        let ours: Vec<_> = all
            .iter()
            .filter(|e| e.aggregate_id == p.id.to_string())
            .map(|e| e.event_type.clone())
            .collect();
        (ours == [PAYMENT_AUTHORIZED, PAYMENT_CAPTURED]).then_some(())
    })
    .await;
    let _ = store::jobs_of(h.payments.db.reader(), p.id).await.unwrap();
    h.stop().await;
}

/// A processor that hangs (so every call times out, and may or may not have taken effect)
/// until told to answer; then it authorizes and voids, counting both.
#[derive(Clone, Default)]
struct Flaky {
    answering: Arc<AtomicBool>,
    authorizations: Arc<AtomicUsize>,
    voids: Arc<AtomicUsize>,
    keys: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn flaky_processor(flaky: Flaky) -> String {
    use axum::routing::post;
    async fn authorize(
        axum::extract::State(f): axum::extract::State<Flaky>,
        headers: axum::http::HeaderMap,
    ) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
        let key = headers["idempotency-key"].to_str().unwrap().to_owned();
        f.keys.lock().unwrap().push(key);
        if !f.answering.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        f.authorizations.fetch_add(1, Ordering::SeqCst);
        (
            axum::http::StatusCode::CREATED,
            axum::Json(serde_json::json!({"id": "pi_lost", "status": "authorized"})),
        )
    }
    async fn void(
        axum::extract::State(f): axum::extract::State<Flaky>,
    ) -> axum::Json<serde_json::Value> {
        f.voids.fetch_add(1, Ordering::SeqCst);
        axum::Json(serde_json::json!({"id": "pi_lost", "status": "voided"}))
    }
    let app = axum::Router::new()
        .route("/v1/authorizations", post(authorize))
        .route("/v1/authorizations/{id}/void", post(void))
        .with_state(flaky);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_hold_placed_by_a_timed_out_attempt_is_found_and_released_after_giving_up() {
    let flaky = Flaky::default();
    let url = flaky_processor(flaky.clone()).await;
    let h = Harness::start_with(Options {
        psp_url: Some(url),
        psp_timeout_ms: 100,
        psp_retry_max_ms: 150,
        // Enough timeouts open the processor's breaker; once it answers again, the next trial
        // call is soon let through.
        processor_breaker_reset_ms: 300,
        ..Options::default()
    })
    .await;
    let order = OrderId::new();
    h.deliver(&reserved_until(
        order,
        UserId::new(),
        1000,
        "pm_card_visa",
        Duration::from_millis(600),
    ))
    .await;
    // Every attempt timed out: failed at the reservation's expiry, like an unreachable
    // processor, but the call stays queued because one of those attempts may have worked.
    let p = h
        .wait_payment(order, "the payment to fail", |p| {
            p.money.status == Status::Failed
        })
        .await;
    assert_eq!(p.failure_reason.as_deref(), Some("processor_unavailable"));
    assert_eq!(h.emitted_of(PAYMENT_FAILED, &p).await.len(), 1);
    assert_eq!(
        store::jobs_of(h.payments.db.reader(), p.id)
            .await
            .unwrap()
            .len(),
        1
    );
    // The processor comes back, and says it did authorize: the hold is released.
    flaky.answering.store(true, Ordering::SeqCst);
    until_some("the orphan hold to be voided", DEADLINE, || async {
        (flaky.voids.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let p = h.settled(order, Status::Failed).await;
    assert_eq!(p.provider_ref.as_deref(), Some("pi_lost"));
    let outcomes: Vec<_> = h
        .calls(&p)
        .await
        .into_iter()
        .map(|c| (c.kind, c.outcome))
        .collect();
    assert!(
        outcomes.contains(&("authorize".into(), "gave_up".into())),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[outcomes.len() - 2..],
        [
            ("authorize".into(), "succeeded".into()),
            ("void".into(), "succeeded".into())
        ]
    );
    let keys = flaky.keys.lock().unwrap().clone();
    assert!(keys.len() >= 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key throughout: {keys:?}"
    );
    // Nothing about this is announced as a payment: the order saw it fail, and that stands.
    assert!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn workers_racing_over_one_queue_call_the_processor_once_per_payment() {
    // Three workers (as three replicas would run) share one queue of twenty authorizations.
    let h = Harness::start_with(Options {
        run_service: false,
        ..Options::default()
    })
    .await;
    let orders: Vec<OrderId> = (0..20).map(|_| OrderId::new()).collect();
    for order in &orders {
        h.consumer
            .process(&reserved(*order, UserId::new(), 100, "pm_card_visa"))
            .await
            .unwrap();
    }
    let workers: Vec<Worker> = (0..3)
        .map(|_| {
            Worker::new(
                h.payments.clone(),
                processor(&h.psp_url, h.processor_policy.clone()),
            )
        })
        .collect();
    let runs = futures::future::join_all(workers.iter().map(|w| w.run_due())).await;
    for r in runs {
        r.unwrap();
    }
    for order in &orders {
        let p = h.payment_of(*order).await.unwrap();
        assert_eq!(p.money.status, Status::Authorized);
        assert_eq!(h.calls(&p).await.len(), 1);
        assert_eq!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.len(), 1);
    }
    let stats = h.psp_stats().await;
    assert_eq!(stats["authorizations"], 20, "{stats}");
    assert_eq!(stats["authorization_attempts"], 20, "{stats}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_makes_a_queue_longer_than_its_slots_while_answers_are_recorded() {
    // More calls than the worker runs at once: it claims them a chunk at a time, one
    // transaction per chunk, and records the answers that came in together in one
    // transaction, while other calls run. (A first version awaited a claim without polling the
    // calls that recorded their own answers, and waited forever for one of them that had its
    // turn at the writer handed over meanwhile.) Another writer keeps taking turns, as the
    // service's consumers and relay do, so turns are handed over.
    let h = Harness::start_with(Options {
        run_service: false,
        ..Options::default()
    })
    .await;
    let busy = Arc::new(AtomicBool::new(true));
    let contender = {
        let (db, busy) = (h.payments.db.clone(), busy.clone());
        tokio::spawn(async move {
            while busy.load(Ordering::Relaxed) {
                let tx = db.begin().await.unwrap();
                tokio::task::yield_now().await;
                drop(tx);
            }
        })
    };
    let n = mercato_payment::worker::CONCURRENCY * 4 + 3;
    let orders: Vec<OrderId> = (0..n).map(|_| OrderId::new()).collect();
    for order in &orders {
        h.consumer
            .process(&reserved(*order, UserId::new(), 100, "pm_card_visa"))
            .await
            .unwrap();
    }
    let worker = Worker::new(
        h.payments.clone(),
        processor(&h.psp_url, h.processor_policy.clone()),
    );
    let next = tokio::time::timeout(Duration::from_secs(60), worker.run_due())
        .await
        .expect("the worker made every due call within a minute")
        .unwrap();
    busy.store(false, Ordering::Relaxed);
    contender.await.unwrap();
    assert_eq!(next, None, "nothing left queued");
    for order in &orders {
        let p = h.payment_of(*order).await.unwrap();
        assert_eq!(p.money.status, Status::Authorized);
        assert_eq!(h.calls(&p).await.len(), 1);
    }
    assert_eq!(h.psp_stats().await["authorization_attempts"], n as u64);
    h.stop().await;
}

#[tokio::test]
async fn answers_recorded_together_keep_going_when_one_of_them_cannot_be() {
    // The worker records the answers that arrived together in one transaction. One that fails
    // (here: its payment is gone) must not take the others' effects with it.
    let h = Harness::start_with(Options {
        run_service: false,
        ..Options::default()
    })
    .await;
    let orders: Vec<OrderId> = (0..3).map(|_| OrderId::new()).collect();
    for order in &orders {
        h.consumer
            .process(&reserved(*order, UserId::new(), 100, "pm_card_visa"))
            .await
            .unwrap();
    }
    let now = mercato_kit::time::now_us();
    let mut jobs = store::due_jobs(h.payments.db.reader(), now, 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3);
    jobs[1].payment_id = uuid::Uuid::new_v4();
    let answer = |n: usize| mercato_payment::psp::Answer {
        reply: mercato_payment::psp::Reply::Authorized {
            provider_ref: format!("ch_batch_{n}"),
        },
        http_status: Some(200),
        elapsed: Duration::from_millis(1),
        retry_in: None,
    };
    let answers: Vec<_> = (0..3).map(answer).collect();
    let batch: Vec<_> = jobs
        .iter()
        .zip(&answers)
        .map(|(j, a)| (j, 1, a, tracing::Span::none()))
        .collect();
    let failed = h.payments.record_answers(&batch).await;
    assert!(failed.is_err(), "the bad answer is reported");
    for (i, order) in orders.iter().enumerate() {
        let p = h.payment_of(*order).await.unwrap();
        if i == 1 {
            assert_eq!(
                p.money.status,
                Status::Pending,
                "its job named another payment"
            );
        } else {
            assert_eq!(p.money.status, Status::Authorized, "order {i}");
            assert_eq!(
                p.provider_ref.as_deref(),
                Some(format!("ch_batch_{i}").as_str())
            );
        }
    }
    let left = store::due_jobs(h.payments.db.reader(), now, 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "only the bad answer's call is still queued");
    assert_eq!(left[0].seq, jobs[1].seq);
    h.stop().await;
}
