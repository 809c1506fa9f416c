//! Two processes of the payment service on one database (each with its own connections, worker
//! and in-process signals): the processor is called once per attempt of each call however the
//! workers race, and a webhook reaching both at once is applied once.
//!
//! SQLite by default, where one process owns the file, so there the "replicas" share it; set
//! `MERCATO_TEST_DATABASE_URL` to run on PostgreSQL, where they are separate handles and their
//! transactions really interleave.

mod support;

use mercato_kit::contracts::types::*;
use mercato_kit::ids::{OrderId, UserId};
use mercato_kit::time::now_us;
use mercato_payment::domain::Status;
use mercato_payment::service::WebhookEvent;
use mercato_payment::store;
use mercato_payment::worker::Worker;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_of_two_replicas_call_the_processor_once_per_attempt() {
    // Short backoffs, so the retried calls come due while both workers are looking.
    let mut h = Harness::start_with(Options {
        run_service: false,
        psp_retry_max_ms: 20,
        ..Options::default()
    })
    .await;
    // Half the calls fail here on purpose, which would open the processor's circuit breaker
    // and add attempts refused without a call; this test counts attempts, so it keeps the
    // breaker closed (the breaker has tests of its own).
    h.processor_policy.breaker.min_calls = u32::MAX;
    // On SQLite one process owns the file (a second one's writes fail with "database is
    // locked"), so there the two workers run in one process, sharing its connections.
    let (a, b) = if h.on_postgres() {
        (h.replica().await, h.replica().await)
    } else {
        let same = || Replica {
            payments: h.payments.clone(),
            worker: Worker::new(
                h.payments.clone(),
                processor(&h.psp_url, h.processor_policy.clone()),
            ),
        };
        (same(), same())
    };
    // Half of them fail twice with a transient error before they succeed (psp-mock's
    // `pm_card_processingError`): each is put back twice, and a worker holding a stale picture
    // of it must not take it again.
    let orders: Vec<(OrderId, bool)> = (0..24).map(|i| (OrderId::new(), i % 2 == 0)).collect();
    for (order, flaky) in &orders {
        let method = if *flaky {
            "pm_card_processingError"
        } else {
            "pm_card_visa"
        };
        h.consumer
            .process(&reserved(*order, UserId::new(), 700, method))
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    let workers = [a, b].map(|r| {
        let stop = stop.clone();
        tokio::spawn(async move {
            r.worker.run(stop).await;
            r.payments
        })
    });
    for (order, _) in &orders {
        h.settled(*order, Status::Authorized).await;
    }
    stop.cancel();
    for w in workers {
        let payments = w.await.unwrap();
        if h.on_postgres() {
            payments.db.close().await;
        }
    }
    let flaky = orders.iter().filter(|(_, f)| *f).count() as u64;
    let stats = h.psp_stats().await;
    assert_eq!(stats["authorizations"], orders.len() as u64, "{stats}");
    assert_eq!(
        stats["authorization_attempts"],
        orders.len() as u64 + 2 * flaky,
        "one request per attempt: {stats}"
    );
    for (order, flaky) in &orders {
        let p = h.payment_of(*order).await.unwrap();
        let attempts: Vec<i64> = h.calls(&p).await.iter().map(|c| c.attempt).collect();
        let expected: &[i64] = if *flaky { &[1, 2, 3] } else { &[1] };
        assert_eq!(attempts, expected, "{order}");
        assert_eq!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.len(), 1);
    }
    h.stop().await;
}

#[tokio::test]
async fn a_worker_whose_read_of_a_call_is_stale_claims_nothing() {
    let h = Harness::start_with(Options {
        run_service: false,
        ..Options::default()
    })
    .await;
    let other = h.replica().await;
    let order = OrderId::new();
    h.consumer
        .process(&reserved(order, UserId::new(), 700, "pm_card_visa"))
        .await
        .unwrap();
    let pool = h.payments.db.writer();
    let now = now_us();
    let lease = now + 60_000_000;
    // This worker reads the queue ...
    let stale = store::due_jobs(h.payments.db.reader(), now, 10)
        .await
        .unwrap()
        .pop()
        .expect("the authorization is queued");
    // ... while the other replica takes the call, fails and puts it back, due again at once.
    let fresh = store::due_jobs(other.payments.db.reader(), now, 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        store::claim_job(other.payments.db.writer(), &fresh, now, lease)
            .await
            .unwrap()
    );
    let mut tx = other.payments.db.begin().await.unwrap();
    let retry = store::Retry {
        not_before: now,
        give_up_at: fresh.give_up_at,
        ambiguous: true,
        error: "no answer within 2000 ms",
    };
    assert!(store::reschedule_job(&mut tx, fresh.seq, &retry)
        .await
        .unwrap());
    tx.commit().await.unwrap();
    // Claimed on the old picture (first attempt, not ambiguous), it would be sent as that.
    assert!(!store::claim_job(pool, &stale, now, lease).await.unwrap());
    // Read again, it is this worker's to take.
    let reread = store::due_jobs(h.payments.db.reader(), now, 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((reread.attempts, reread.ambiguous), (1, true));
    assert!(store::claim_job(pool, &reread, now, lease).await.unwrap());
    // And nobody else while the lease runs.
    assert!(
        !store::claim_job(other.payments.db.writer(), &reread, now, lease)
            .await
            .unwrap()
    );
    other.payments.db.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_webhook_reaching_two_replicas_at_once_is_applied_once() {
    let h = Harness::start().await;
    // On SQLite one process owns the file: there the two are one process's two requests.
    let replicas = if h.on_postgres() {
        [h.replica().await.payments, h.replica().await.payments]
    } else {
        [h.payments.clone(), h.payments.clone()]
    };
    let mut orders = Vec::new();
    for _ in 0..5 {
        let order = OrderId::new();
        h.deliver(&reserved(order, UserId::new(), 1500, "pm_card_pending"))
            .await;
        orders.push(order);
    }
    for order in orders {
        let p = h
            .wait_payment(order, "a provider reference", |p| p.provider_ref.is_some())
            .await;
        let event: WebhookEvent = serde_json::from_value(serde_json::json!({
            "id": format!("evt_{order}"),
            "type": "payment.succeeded",
            "created": chrono::Utc::now().timestamp(),
            "data": {"provider_ref": p.provider_ref.clone().unwrap(), "status": "authorized",
                     "amount_cents": 1500, "currency": "USD", "reference": p.id.to_string()}
        }))
        .unwrap();
        // What the webhook route does, on both replicas at the same moment.
        let handled: Vec<_> = replicas
            .iter()
            .map(|payments| {
                let (payments, event) = (payments.clone(), event.clone());
                tokio::spawn(async move {
                    let mut tx = payments.db.begin().await.unwrap();
                    let outcome = payments.webhook(&mut tx, &event).await.unwrap();
                    tx.commit().await.unwrap();
                    outcome
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in handled {
            outcomes.push(t.await.unwrap());
        }
        outcomes.sort();
        assert_eq!(outcomes, ["authorized", "duplicate"], "{order}");
        let p = h.payment_of(order).await.unwrap();
        assert_eq!(p.money.status, Status::Authorized);
        assert_eq!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.len(), 1);
    }
    if h.on_postgres() {
        for payments in replicas {
            payments.db.close().await;
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancellations_racing_pending_answers_void_every_hold() {
    // The cancellation's transaction and the one recording the processor's "pending" answer
    // run side by side (on PostgreSQL really so); whichever commits second must see the other,
    // or the hold is never voided and the payment stays PENDING.
    let h = Harness::start().await;
    let orders: Vec<OrderId> = (0..40).map(|_| OrderId::new()).collect();
    for order in &orders {
        h.deliver(&reserved(*order, UserId::new(), 1500, "pm_card_pending"))
            .await;
        tokio::task::yield_now().await;
        h.deliver(&cancelled(*order)).await;
    }
    for order in &orders {
        let p = h.settled(*order, Status::Voided).await;
        assert!(h.emitted_of(PAYMENT_AUTHORIZED, &p).await.is_empty());
        assert_eq!(h.emitted_of(PAYMENT_VOIDED, &p).await.len(), 1);
    }
    h.stop().await;
}
