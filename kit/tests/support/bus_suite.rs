//! The guarantees every broker-backed bus gives, written once against `Bus` and run by each
//! adapter's suite (`kafka_bus.rs`, `nats_bus.rs`) on its own broker: a second adapter that
//! passes these behaves as the services expect. What differs between brokers (how to tell
//! that a consumer is caught up, how long things take) is asked of the adapter.

use super::{effects, effects_db, event, next, nothing_within, until, Poisoned};
use mercato_kit::events::{Bus, Consumer, Delivery, Envelope, Subscription};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One adapter's bus, under a prefix of its own, with what `Bus` does not say.
#[async_trait::async_trait]
pub trait BusUnderTest: Sync {
    fn bus(&self) -> Arc<dyn Bus>;

    /// How long a delivery or an awaited condition may take on this broker.
    fn patience(&self) -> Duration;

    /// Whether `consumer` has nothing left to receive or acknowledge on `domains`.
    async fn is_caught_up(&self, consumer: &str, domains: &[&str]) -> bool;

    /// Fails the test unless `consumer` is caught up on `domains`: at once where the broker
    /// settles an acknowledgement before answering it, within the patience otherwise.
    async fn caught_up(&self, consumer: &str, domains: &[&str]);
}

async fn subscribe(t: &impl BusUnderTest, consumer: &str, types: &[&str]) -> Box<dyn Subscription> {
    t.bus().subscribe(consumer, types).await.unwrap()
}

/// A relay that crashed before marking its outbox row publishes the same event again: it is
/// delivered once, and the event behind it (same aggregate) still comes. Returns the
/// subscription, everything on it acknowledged.
pub async fn one_event_id_published_twice_is_delivered_once(
    t: &impl BusUnderTest,
) -> Box<dyn Subscription> {
    let bus = t.bus();
    let e = event("order.created", 1);
    bus.publish(&e).await.unwrap();
    bus.publish(&e).await.unwrap();
    let after = event("order.created", 4);
    bus.publish(&after).await.unwrap();
    let mut sub = subscribe(t, "shipping", &["order.created"]).await;
    let first = next(&mut sub, t.patience()).await;
    assert_eq!(first.envelope, e);
    sub.ack(&first).await.unwrap();
    let second = next(&mut sub, t.patience()).await;
    assert_eq!(
        second.envelope, after,
        "the copy took the place of the next one"
    );
    sub.ack(&second).await.unwrap();
    sub
}

/// Two replicas of one consumer take `n` events between them, each taking up to `batch` at a
/// time (one: `next` and `ack`; more: `next_batch` and `ack_batch`). Returns what was sent,
/// and who handled what in the order they noted it, once every event is handled and
/// acknowledged.
pub async fn replicas_share(
    t: &impl BusUnderTest,
    n: i64,
    batch: usize,
) -> (Vec<Envelope>, Vec<(usize, Envelope)>) {
    let replicas = [
        subscribe(t, "inventory", &["order.created"]).await,
        subscribe(t, "inventory", &["order.created"]).await,
    ];
    let sent: Vec<Envelope> = (1..=n).map(|n| event("order.created", n)).collect();
    for e in &sent {
        t.bus().publish(e).await.unwrap();
    }
    // Both note what they got in one shared log before acknowledging it.
    let log: Arc<Mutex<Vec<(usize, Envelope)>>> = Default::default();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (r, mut sub) in replicas.into_iter().enumerate() {
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let taken = tokio::select! {
                    _ = stop.cancelled() => return,
                    b = take(&mut sub, batch) => b.unwrap(),
                };
                log.lock()
                    .unwrap()
                    .extend(taken.iter().map(|d| (r, d.envelope.clone())));
                if batch == 1 {
                    sub.ack(&taken[0]).await.unwrap();
                } else {
                    sub.ack_batch(&taken).await.unwrap();
                }
            }
        }));
    }
    until(&format!("{n} events handled"), t.patience(), || async {
        log.lock().unwrap().len() >= n as usize
    })
    .await;
    until("every event acknowledged", t.patience(), || async {
        t.is_caught_up("inventory", &["order"]).await
    })
    .await;
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    (sent, log)
}

async fn take(sub: &mut Box<dyn Subscription>, batch: usize) -> anyhow::Result<Vec<Delivery>> {
    if batch == 1 {
        Ok(vec![sub.next().await?])
    } else {
        sub.next_batch(batch).await
    }
}

/// An event taken by a replica that then dies without a word comes again to the next
/// subscriber of that consumer; returns that second delivery, acknowledged.
pub async fn an_unacknowledged_event_comes_to_the_next_subscriber(
    t: &impl BusUnderTest,
) -> Delivery {
    let e = event("payment.authorized", 1);
    t.bus().publish(&e).await.unwrap();
    let mut crashed = subscribe(t, "order", &["payment.authorized"]).await;
    assert_eq!(next(&mut crashed, t.patience()).await.envelope, e);
    drop(crashed);
    let mut replica = subscribe(t, "order", &["payment.authorized"]).await;
    let again = next(&mut replica, t.patience()).await;
    assert_eq!(again.envelope, e);
    replica.ack(&again).await.unwrap();
    t.caught_up("order", &["payment"]).await;
    again
}

/// Asking for the next event without acknowledging the last hands the last back at once,
/// counted as a second attempt, and still before the one behind it (same aggregate).
pub async fn the_unacknowledged_one_is_handed_back_first(t: &impl BusUnderTest) {
    let first = event("payment.authorized", 1);
    let second = event("payment.authorized", 4);
    t.bus().publish(&first).await.unwrap();
    t.bus().publish(&second).await.unwrap();
    let mut sub = subscribe(t, "order", &["payment.authorized"]).await;
    let d = next(&mut sub, t.patience()).await;
    assert_eq!((&d.envelope, d.attempt), (&first, 1));
    // The handler failed: no ack.
    let again = next(&mut sub, t.patience()).await;
    assert_eq!((&again.envelope, again.attempt), (&first, 2));
    sub.ack(&again).await.unwrap();
    let d = next(&mut sub, t.patience()).await;
    assert_eq!(d.envelope, second);
    sub.ack(&d).await.unwrap();
}

/// One subscription reads the events of several producers, and only the types it asked for.
pub async fn one_subscription_reads_several_producers(t: &impl BusUnderTest) {
    let mut sub = subscribe(t, "order", &["inventory.reserved", "payment.authorized"]).await;
    let reserved = event("inventory.reserved", 1);
    let not_asked_for = event("payment.captured", 2);
    let authorized = event("payment.authorized", 3);
    for e in [&reserved, &not_asked_for, &authorized] {
        t.bus().publish(e).await.unwrap();
    }
    let mut got = std::collections::HashSet::new();
    for _ in 0..2 {
        let d = next(&mut sub, t.patience()).await;
        got.insert(d.envelope.event_id);
        sub.ack(&d).await.unwrap();
    }
    let want = std::collections::HashSet::from([reserved.event_id, authorized.event_id]);
    assert_eq!(got, want);
    assert!(nothing_within(&mut sub, Duration::from_millis(500)).await);
    t.caught_up("order", &["inventory", "payment"]).await;
}

/// After the adapter put a message that is not an envelope on `payment`'s partition of
/// "agg-1" (in its own raw way), `sub` ("order" on `payment.failed`) still gets the good
/// event behind it, and the consumer is caught up past both.
pub async fn the_event_behind_garbage_comes(t: &impl BusUnderTest, mut sub: Box<dyn Subscription>) {
    let good = event("payment.failed", 1);
    t.bus().publish(&good).await.unwrap();
    let d = next(&mut sub, t.patience()).await;
    assert_eq!(d.envelope, good);
    sub.ack(&d).await.unwrap();
    t.caught_up("order", &["payment"]).await;
}

/// Consumer and event type names the broker cannot carry are refused, not mangled.
pub async fn names_it_cannot_carry_are_refused(t: &impl BusUnderTest) {
    let bus = t.bus();
    assert!(bus.subscribe("a.b", &["order.created"]).await.is_err());
    assert!(bus.subscribe("order", &["order.*"]).await.is_err());
    assert!(bus.subscribe("order", &[]).await.is_err());
    assert!(bus.publish(&event("nodomain", 1)).await.is_err());
}

/// The kit's consumer on the bus: an event whose handling never ends (the replica dies each
/// time) is parked unhandled once it comes a third time with a limit of two, and the event
/// behind it on its aggregate is then handled.
pub async fn a_never_ending_event_is_parked_after_the_delivery_limit(t: &impl BusUnderTest) {
    let dir = tempfile::tempdir().unwrap();
    let db = effects_db(&dir, "c").await;
    let handler = Arc::new(Poisoned {
        poison_calls: AtomicU32::new(0),
    });
    let consumer = Consumer::new("order", db.clone(), handler.clone()).with_delivery_limit(2);
    let poison = Envelope::new(
        "payment",
        "payment.authorized",
        "agg",
        &serde_json::json!({"n": 1, "poison": true}),
    );
    // Behind it: the same aggregate, so the same partition.
    let mut behind = event("payment.authorized", 2);
    behind.aggregate_id = poison.aggregate_id.clone();
    t.bus().publish(&poison).await.unwrap();
    t.bus().publish(&behind).await.unwrap();
    let types = vec!["payment.authorized"];
    for crash in 1..=2 {
        let run = consumer
            .clone()
            .run(t.bus(), types.clone(), CancellationToken::new());
        let task = tokio::spawn(run);
        until("the poison handled once more", t.patience(), || async {
            handler.poison_calls.load(Ordering::SeqCst) == crash
        })
        .await;
        task.abort();
        let _ = task.await;
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.clone().run(t.bus(), types, stop.clone()));
    until(
        "the next event handled and all acknowledged",
        t.patience(),
        || async { effects(&db).await == vec![2] && t.is_caught_up("order", &["payment"]).await },
    )
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(handler.poison_calls.load(Ordering::SeqCst), 2);
    let parked = mercato_kit::events::consumer::dead_letters(&db)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_id, poison.event_id.to_string());
    assert_eq!(parked[0].attempts, 3);
}
