//! The outbox → relay → bus → consumer path on the embedded bus: ordered delivery, exactly-once
//! effects under redelivery, parking and replay, and redelivery of unacknowledged events after a
//! restart.

mod support;

use mercato_kit::db::Tx;
use mercato_kit::events::consumer::{dead_letters, Outcome};
use mercato_kit::events::{
    append, pending, Bus, Consumer, EmbeddedBus, Envelope, EventHandler, Relay,
};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{effects, effects_db, Poisoned, Recorder};
use tokio_util::sync::CancellationToken;

/// The embedded bus in its file `bus.db` of `dir`.
async fn embedded_bus(dir: &tempfile::TempDir) -> EmbeddedBus {
    let url = format!("sqlite://{}/bus.db?mode=rwc", dir.path().display());
    EmbeddedBus::open(&url).await.unwrap()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    support::until(what, Duration::from_secs(5), f).await
}

fn event(n: i64) -> Envelope {
    Envelope::new(
        "producer",
        "thing.happened",
        format!("agg-{}", n % 2),
        &serde_json::json!({"n": n}),
    )
}

#[tokio::test]
async fn committed_events_reach_the_consumer_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let producer = effects_db(&dir, "producer").await;
    let consumer_db = effects_db(&dir, "consumer").await;
    let bus: Arc<dyn Bus> = Arc::new(embedded_bus(&dir).await);
    let waker = producer.outbox_waker();
    let stop = CancellationToken::new();
    tokio::spawn(Relay::new(producer.clone(), bus.clone()).run(stop.clone()));
    let recorder = Arc::new(Recorder {
        fail: AtomicBool::new(false),
        calls: AtomicU32::new(0),
    });
    let consumer = Consumer::new("consumer", consumer_db.clone(), recorder.clone());
    tokio::spawn(
        consumer
            .clone()
            .run(bus.clone(), vec!["thing.happened"], stop.clone()),
    );

    // A rolled-back transaction's event never leaves.
    let mut tx = producer.begin().await.unwrap();
    append(&mut tx, &event(999)).await.unwrap();
    tx.rollback().await.unwrap();
    let mut sent = Vec::new();
    for n in 1..=20 {
        let e = event(n);
        let mut tx = producer.begin().await.unwrap();
        append(&mut tx, &e).await.unwrap();
        tx.commit().await.unwrap();
        waker.wake();
        sent.push(e);
    }
    until("all 20 effects", || async {
        effects(&consumer_db).await.len() == 20
    })
    .await;
    assert_eq!(effects(&consumer_db).await, (1..=20).collect::<Vec<_>>());

    // Every one of them again, as a redelivering bus would: nothing changes.
    for e in &sent {
        assert_eq!(consumer.process(e).await.unwrap(), Outcome::Duplicate);
    }
    // And published twice: stored once.
    bus.publish(&sent[0]).await.unwrap();
    assert_eq!(effects(&consumer_db).await.len(), 20);
    stop.cancel();
}

#[tokio::test]
async fn a_failing_handler_parks_the_event_and_an_admin_replay_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let consumer_db = effects_db(&dir, "consumer").await;
    let recorder = Arc::new(Recorder {
        fail: AtomicBool::new(true),
        calls: AtomicU32::new(0),
    });
    let consumer = Consumer::new("c", consumer_db.clone(), recorder.clone())
        .with_retries(3, Duration::from_millis(1));
    let e = event(7);
    assert_eq!(consumer.process(&e).await.unwrap(), Outcome::Parked);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 3);
    assert!(
        effects(&consumer_db).await.is_empty(),
        "failed attempts left nothing behind"
    );
    let parked = dead_letters(&consumer_db).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_id, e.event_id.to_string());
    assert!(parked[0].error.contains("told to fail"));
    // Fixed; processing it again applies it exactly once.
    recorder.fail.store(false, Ordering::SeqCst);
    assert_eq!(consumer.process(&e).await.unwrap(), Outcome::Applied);
    assert_eq!(consumer.process(&e).await.unwrap(), Outcome::Duplicate);
    assert_eq!(effects(&consumer_db).await, vec![7]);
}

#[tokio::test]
async fn unacknowledged_events_come_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bus.db?mode=rwc", dir.path().display());
    let bus = EmbeddedBus::open(&url).await.unwrap();
    for n in 1..=3 {
        bus.publish(&event(n)).await.unwrap();
    }
    bus.publish(&Envelope::new("p", "other.type", "x", &1))
        .await
        .unwrap();
    let mut sub = bus.subscribe("c", &["thing.happened"]).await.unwrap();
    let first = sub.next().await.unwrap();
    sub.ack(&first).await.unwrap();
    let second = sub.next().await.unwrap();
    assert_eq!(second.envelope.payload["n"], 2);
    drop(sub);
    bus.close().await;
    // "Restart": a new bus on the same file, a new subscription under the same name.
    let bus = EmbeddedBus::open(&url).await.unwrap();
    let mut sub = bus.subscribe("c", &["thing.happened"]).await.unwrap();
    let again = sub.next().await.unwrap();
    assert_eq!(
        again.envelope.event_id, second.envelope.event_id,
        "the unacked event is delivered again"
    );
    sub.ack(&again).await.unwrap();
    assert_eq!(sub.next().await.unwrap().envelope.payload["n"], 3);
    // Another consumer has its own position from the start.
    let mut other = bus
        .subscribe("d", &["thing.happened", "other.type"])
        .await
        .unwrap();
    assert_eq!(other.next().await.unwrap().envelope.payload["n"], 1);
    assert_eq!(bus.all().await.unwrap().len(), 4);
}

#[tokio::test]
async fn an_idle_consumer_shows_no_lag_and_a_rewind_delivers_everything_again() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded_bus(&dir).await;
    bus.publish(&event(1)).await.unwrap();
    bus.publish(&Envelope::new("p", "other.type", "x", &1))
        .await
        .unwrap();
    let mut sub = bus.subscribe("c", &["thing.happened"]).await.unwrap();
    let d = sub.next().await.unwrap();
    sub.ack(&d).await.unwrap();
    assert_eq!(
        bus.lag().await.unwrap(),
        [("c".to_owned(), 1)],
        "the other type is still ahead"
    );
    // Looking again finds nothing of ours and moves past the rest.
    assert!(tokio::time::timeout(Duration::from_millis(200), sub.next())
        .await
        .is_err());
    assert_eq!(bus.lag().await.unwrap(), [("c".to_owned(), 0)]);
    bus.rewind_all_consumers().await.unwrap();
    assert_eq!(bus.lag().await.unwrap(), [("c".to_owned(), 2)]);
    let mut again = bus.subscribe("c", &["thing.happened"]).await.unwrap();
    assert_eq!(
        again.next().await.unwrap().envelope.event_id,
        d.envelope.event_id
    );
}

#[tokio::test]
async fn an_idle_consumer_passes_other_types_without_missing_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded_bus(&dir).await;
    let mut sub = bus.subscribe("c", &["thing.happened"]).await.unwrap();
    for n in 0..3 {
        bus.publish(&Envelope::new("p", "other.type", format!("x{n}"), &n))
            .await
            .unwrap();
        // It looks, finds nothing of its own, and remembers that instead of writing its cursor.
        assert!(tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_err());
        assert_eq!(bus.lag().await.unwrap(), [("c".to_owned(), 0)], "round {n}");
    }
    let ours = event(7);
    bus.publish(&ours).await.unwrap();
    assert_eq!(bus.lag().await.unwrap(), [("c".to_owned(), 1)]);
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("its own event comes")
        .unwrap();
    assert_eq!(d.envelope.event_id, ours.event_id);
    sub.ack(&d).await.unwrap();
    assert_eq!(bus.lag().await.unwrap(), [("c".to_owned(), 0)]);
}

#[tokio::test]
async fn an_event_whose_handling_never_ends_is_parked_after_the_delivery_limit() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bus.db?mode=rwc", dir.path().display());
    let consumer_db = effects_db(&dir, "consumer").await;
    let handler = Arc::new(Poisoned {
        poison_calls: AtomicU32::new(0),
    });
    let consumer = Consumer::new("c", consumer_db.clone(), handler.clone()).with_delivery_limit(2);
    let poison = Envelope::new(
        "p",
        "thing.happened",
        "agg",
        &serde_json::json!({"n": 1, "poison": true}),
    );
    {
        let bus = EmbeddedBus::open(&url).await.unwrap();
        bus.publish(&poison).await.unwrap();
        bus.publish(&event(2)).await.unwrap();
        bus.close().await;
    }
    // Twice the process dies while handling it; each restart opens the bus afresh, so the
    // count must be the bus's durable one.
    for crash in 1..=2 {
        let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&url).await.unwrap());
        let task = tokio::spawn(consumer.clone().run(
            bus,
            vec!["thing.happened"],
            CancellationToken::new(),
        ));
        until("the poisoned event handled again", || async {
            handler.poison_calls.load(Ordering::SeqCst) == crash
        })
        .await;
        task.abort();
        let _ = task.await;
    }
    // The third delivery passes the limit: parked without running the handler, and the event
    // behind it is handled.
    let bus = EmbeddedBus::open(&url).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.clone().run(
        Arc::new(bus.clone()),
        vec!["thing.happened"],
        stop.clone(),
    ));
    until("the effect after the poisoned event", || async {
        effects(&consumer_db).await == vec![2]
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(handler.poison_calls.load(Ordering::SeqCst), 2);
    let parked = dead_letters(&consumer_db).await.unwrap();
    assert_eq!(parked.len(), 1, "parked once");
    assert_eq!(parked[0].event_id, poison.event_id.to_string());
    assert_eq!(parked[0].attempts, 3);
    assert!(
        parked[0].error.contains("delivered 3 times"),
        "{}",
        parked[0].error
    );
    assert_eq!(bus.lag().await.unwrap(), [("c".to_owned(), 0)]);
}

#[tokio::test]
async fn the_embedded_bus_counts_deliveries_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let bus = embedded_bus(&dir).await;
    bus.publish(&event(1)).await.unwrap();
    bus.publish(&event(2)).await.unwrap();
    let mut sub = bus.subscribe("c", &["thing.happened"]).await.unwrap();
    let first = sub.next().await.unwrap();
    assert_eq!(first.attempt, 1);
    // Not acknowledged: it comes again, counted, also to another subscription of the name.
    assert_eq!(sub.next().await.unwrap().attempt, 2);
    let mut other = bus.subscribe("c", &["thing.happened"]).await.unwrap();
    let again = other.next().await.unwrap();
    assert_eq!(
        (again.envelope.event_id, again.attempt),
        (first.envelope.event_id, 3)
    );
    other.ack(&again).await.unwrap();
    let second = other.next().await.unwrap();
    assert_eq!(
        (second.envelope.payload["n"].as_i64(), second.attempt),
        (Some(2), 1)
    );
    // Another consumer counts on its own.
    let mut d = bus.subscribe("d", &["thing.happened"]).await.unwrap();
    assert_eq!(d.next().await.unwrap().attempt, 1);
    // A rewind starts every count again.
    other.ack(&second).await.unwrap();
    bus.rewind_all_consumers().await.unwrap();
    assert_eq!(other.next().await.unwrap().attempt, 1);
}

/// Emits one event of its own for each event it handles, as saga handlers do.
struct Forwards;

#[async_trait::async_trait]
impl EventHandler for Forwards {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> anyhow::Result<()> {
        let next = Envelope::new("service", "thing.forwarded", &event.aggregate_id, &());
        append(tx, &next).await?;
        Ok(())
    }
}

/// A service has one outbox waker, its database's: the relay over the database listens to it,
/// and a consumer's commit (like an idempotent handler's) wakes it, so the handler's event
/// leaves at once. The relay here would look on its own only after an hour.
#[tokio::test]
async fn a_commit_that_wakes_the_databases_waker_is_published_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = effects_db(&dir, "service").await;
    let bus: Arc<dyn Bus> = Arc::new(embedded_bus(&dir).await);
    let empty = || async { pending(db.reader(), 10).await.unwrap().is_empty() };
    // One row committed before the relay starts: once its first look has published it, the
    // relay waits for a wake (or the hour).
    let mut tx = db.begin().await.unwrap();
    append(&mut tx, &event(0)).await.unwrap();
    tx.commit().await.unwrap();
    let stop = CancellationToken::new();
    let relay = Relay::new(db.clone(), bus.clone()).with_poll(Duration::from_secs(3600));
    let running = tokio::spawn(relay.run(stop.clone()));
    until("the first look published the row", empty).await;

    let consumer = Consumer::new("service", db.clone(), Arc::new(Forwards));
    assert_eq!(consumer.process(&event(1)).await.unwrap(), Outcome::Applied);
    until("the handler's event published without a poll", empty).await;
    stop.cancel();
    running.await.unwrap();
}
