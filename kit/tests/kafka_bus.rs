//! The Kafka bus against a real Kafka-protocol broker, through the `Bus` interface only: the
//! guarantees the NATS bus's suite checks (publish once per event id, a consumer shared by
//! replicas, redelivery after a crash, hand-back of what was not acknowledged, several
//! producers' topics in one subscription, a poison payload, the delivery limit parking an event,
//! order per aggregate), as Kafka gives them: order holds per aggregate (one partition), not
//! across a whole topic.
//!
//! Needs `MERCATO_TEST_KAFKA_BROKERS` (`.ci/kafka` starts Tansu and runs these with
//! `--include-ignored`). Each test works under a prefix of its own.

mod support;

use mercato_kit::db::{Db, Migrations};
use mercato_kit::events::{
    Bus, Consumer, Delivery, Envelope, KafkaBus, KafkaOptions, Subscription,
};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::migrate::Migrator;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{effects, event, nothing_within, Poisoned};
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded CI machine and a group rebalance after an aborted member (its
/// session timeout plus Tansu's ~5 s join: 40 s ran out once under CI load), short enough to
/// fail a hung test.
const PATIENCE: Duration = Duration::from_secs(90);
const NEEDS: &str = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)";

fn brokers() -> String {
    std::env::var("MERCATO_TEST_KAFKA_BROKERS").expect(NEEDS)
}

struct TestBus {
    bus: KafkaBus,
    _dir: tempfile::TempDir,
}

async fn test_bus() -> TestBus {
    let dir = tempfile::tempdir().unwrap();
    let options = KafkaOptions {
        prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
        // Short, so a replica that is gone loses its partitions within a test's patience.
        session_timeout: Duration::from_secs(6),
        ..Default::default()
    };
    let ledger = format!("sqlite://{}/bus.db?mode=rwc", dir.path().display());
    let bus = KafkaBus::connect_with(&brokers(), options, &ledger)
        .await
        .unwrap();
    TestBus { bus, _dir: dir }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    support::next(sub, PATIENCE).await
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    support::until(what, PATIENCE, f).await
}

/// `n` events of one order published, then the "shipping" consumer subscribed to them.
async fn published_then_subscribed(
    t: &TestBus,
    n: usize,
) -> (Vec<Envelope>, Box<dyn Subscription>) {
    let events: Vec<Envelope> = (0..n).map(|_| event("order.created", 1)).collect();
    for e in &events {
        t.bus.publish(e).await.unwrap();
    }
    let sub = t
        .bus
        .subscribe("shipping", &["order.created"])
        .await
        .unwrap();
    (events, sub)
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn events_published_before_and_after_subscribing_are_delivered_in_order() {
    let t = test_bus().await;
    let (before, mut sub) = published_then_subscribed(&t, 3).await;
    let after = event("order.created", 1);
    t.bus.publish(&after).await.unwrap();
    for e in before.iter().chain([&after]) {
        let d = next(&mut sub).await;
        assert_eq!(&d.envelope, e);
        assert_eq!(d.attempt, 1);
        sub.ack(&d).await.unwrap();
    }
    until("nothing left for the group", || async {
        t.bus.lag("shipping").await.unwrap() == Some(0)
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn a_consumer_receives_once_its_group_gave_it_partitions_and_a_rewind_delivers_all_again() {
    let t = test_bus().await;
    assert!(
        !t.bus.receiving("shipping").await.unwrap(),
        "before subscribing"
    );
    let (events, mut sub) = published_then_subscribed(&t, 3).await;
    // The assignment reaches the subscription when it is polled, never before.
    assert!(
        !t.bus.receiving("shipping").await.unwrap(),
        "before joining"
    );
    for e in &events {
        let d = next(&mut sub).await;
        assert_eq!(&d.envelope, e);
        sub.ack(&d).await.unwrap();
    }
    assert!(
        t.bus.receiving("shipping").await.unwrap(),
        "after receiving"
    );
    assert_eq!(t.bus.all().await.unwrap(), events);
    assert_eq!(t.bus.consumers(), ["shipping"]);
    until("nothing left", || async {
        t.bus.lag("shipping").await.unwrap() == Some(0)
    })
    .await;

    // A rewind needs the subscription to be waiting for its next event.
    let rewind = {
        let bus = t.bus.clone();
        tokio::spawn(async move { bus.rewind_all_consumers().await })
    };
    let mut again = Vec::new();
    for _ in &events {
        let d = next(&mut sub).await;
        again.push(d.envelope.clone());
        sub.ack(&d).await.unwrap();
    }
    rewind.await.unwrap().unwrap();
    assert_eq!(
        again, events,
        "every event once more, in order, none taken for a copy"
    );
    until("nothing left after the rewind", || async {
        t.bus.lag("shipping").await.unwrap() == Some(0)
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn publishing_one_event_id_twice_delivers_it_once() {
    let t = test_bus().await;
    let e = event("order.created", 1);
    t.bus.publish(&e).await.unwrap();
    // A relay that crashed before marking its outbox row publishes the same event again.
    t.bus.publish(&e).await.unwrap();
    let after = event("order.created", 1);
    t.bus.publish(&after).await.unwrap();
    let mut sub = t
        .bus
        .subscribe("shipping", &["order.created"])
        .await
        .unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.envelope, e);
    sub.ack(&first).await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(second.envelope, after, "the copy was delivered");
    sub.ack(&second).await.unwrap();
    assert!(nothing_within(&mut sub, Duration::from_millis(500)).await);
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn replicas_with_one_consumer_name_share_the_events_each_aggregate_in_order() {
    let t = test_bus().await;
    let replicas = [
        t.bus
            .subscribe("inventory", &["order.created"])
            .await
            .unwrap(),
        t.bus
            .subscribe("inventory", &["order.created"])
            .await
            .unwrap(),
    ];
    let sent: Vec<Envelope> = (1..=60).map(|n| event("order.created", n)).collect();
    for e in &sent {
        t.bus.publish(e).await.unwrap();
    }
    let log: Arc<Mutex<Vec<(usize, Envelope)>>> = Default::default();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (r, mut sub) in replicas.into_iter().enumerate() {
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    _ = stop.cancelled() => return,
                    b = sub.next_batch(8) => b.unwrap(),
                };
                log.lock()
                    .unwrap()
                    .extend(batch.iter().map(|d| (r, d.envelope.clone())));
                sub.ack_batch(&batch).await.unwrap();
            }
        }));
    }
    until("60 events handled", || async {
        log.lock().unwrap().len() >= 60
    })
    .await;
    until("every event committed", || async {
        t.bus.lag("inventory").await.unwrap() == Some(0)
    })
    .await;
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let ids: Vec<_> = log.iter().map(|(_, e)| e.event_id).collect();
    assert_eq!(ids.len(), 60, "each exactly once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 60);
    let mut per_aggregate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (_, e) in &log {
        per_aggregate
            .entry(&e.aggregate_id)
            .or_default()
            .push(e.payload["n"].as_i64().unwrap());
    }
    for (agg, ns) in &per_aggregate {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, &sorted, "{agg} out of order");
    }
    let partitions = t.bus.options().partitions;
    if partitions > 1 {
        for r in 0..2 {
            assert!(
                log.iter().any(|(who, _)| *who == r),
                "replica {r} got nothing"
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn an_event_not_acknowledged_comes_again_to_the_next_subscriber() {
    let t = test_bus().await;
    let e = event("payment.authorized", 1);
    t.bus.publish(&e).await.unwrap();
    let mut crashed = t
        .bus
        .subscribe("order", &["payment.authorized"])
        .await
        .unwrap();
    assert_eq!(next(&mut crashed).await.envelope, e);
    // Gone without a word, as a killed replica would be.
    drop(crashed);
    let mut replica = t
        .bus
        .subscribe("order", &["payment.authorized"])
        .await
        .unwrap();
    let again = next(&mut replica).await;
    assert_eq!(again.envelope, e);
    assert_eq!(again.attempt, 2, "the second delivery is counted");
    replica.ack(&again).await.unwrap();
    until("committed", || async {
        t.bus.lag("order").await.unwrap() == Some(0)
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn asking_for_the_next_event_without_acknowledging_hands_the_last_one_back_at_once() {
    let t = test_bus().await;
    let first = event("payment.authorized", 1);
    let second = event("payment.authorized", 1);
    t.bus.publish(&first).await.unwrap();
    t.bus.publish(&second).await.unwrap();
    let mut sub = t
        .bus
        .subscribe("order", &["payment.authorized"])
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.envelope.event_id, d.attempt), (first.event_id, 1));
    // The handler failed: no ack. The same event comes again, counted, still before the second.
    let again = next(&mut sub).await;
    assert_eq!(
        (again.envelope.event_id, again.attempt),
        (first.event_id, 2)
    );
    sub.ack(&again).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.envelope, second);
    sub.ack(&d).await.unwrap();
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn one_subscription_reads_the_topics_of_several_producers() {
    let t = test_bus().await;
    let mut sub = t
        .bus
        .subscribe("order", &["inventory.reserved", "payment.authorized"])
        .await
        .unwrap();
    let reserved = event("inventory.reserved", 1);
    let not_asked_for = event("payment.captured", 2);
    let authorized = event("payment.authorized", 3);
    for e in [&reserved, &not_asked_for, &authorized] {
        t.bus.publish(e).await.unwrap();
    }
    let mut got = HashSet::new();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        got.insert(d.envelope.event_id);
        sub.ack(&d).await.unwrap();
    }
    assert_eq!(got, HashSet::from([reserved.event_id, authorized.event_id]));
    assert!(nothing_within(&mut sub, Duration::from_millis(500)).await);
    until("nothing left, the other type included", || async {
        t.bus.lag("order").await.unwrap() == Some(0)
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn a_message_that_is_not_an_envelope_does_not_hold_up_the_ones_behind_it() {
    let t = test_bus().await;
    let mut sub = t.bus.subscribe("order", &["payment.failed"]).await.unwrap();
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    raw.send(
        FutureRecord::to(&t.bus.topic("payment"))
            .key("agg-1")
            .payload("{not json"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let good = event("payment.failed", 1);
    t.bus.publish(&good).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.envelope, good);
    sub.ack(&d).await.unwrap();
    until("committed past both", || async {
        t.bus.lag("order").await.unwrap() == Some(0)
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn names_that_are_not_kafka_name_parts_are_refused() {
    let t = test_bus().await;
    assert!(t.bus.subscribe("a.b", &["order.created"]).await.is_err());
    assert!(t.bus.subscribe("order", &["order.*"]).await.is_err());
    assert!(t.bus.subscribe("order", &[]).await.is_err());
    assert!(t.bus.publish(&event("nodomain", 1)).await.is_err());
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn unreachable_brokers_fail_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = KafkaOptions {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let ledger = format!("sqlite://{}/bus.db?mode=rwc", dir.path().display());
    let err = KafkaBus::connect_with(&format!("127.0.0.1:{port}"), options, &ledger)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("does not answer"), "{err:#}");
}

// The kit's consumer on top of the bus.

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn an_event_whose_handling_never_ends_is_parked_after_the_delivery_limit() {
    let t = test_bus().await;
    let dir = tempfile::tempdir().unwrap();
    let none = Migrations {
        sqlite: Migrator::DEFAULT,
        postgres: Migrator::DEFAULT,
    };
    let db = Db::connect(
        &format!("sqlite://{}/c.db?mode=rwc", dir.path().display()),
        "c",
        2,
        &none,
    )
    .await
    .unwrap();
    mercato_kit::db::query("CREATE TABLE effects (event_id TEXT, n BIGINT)")
        .execute(db.writer())
        .await
        .unwrap();
    let handler = Arc::new(Poisoned {
        poison_calls: AtomicU32::new(0),
    });
    let consumer = Consumer::new("order", db.clone(), handler.clone()).with_delivery_limit(2);
    // One aggregate: the event behind the poison waits for it on the same partition.
    let poison = Envelope::new(
        "payment",
        "payment.authorized",
        "agg",
        &serde_json::json!({"n": 1, "poison": true}),
    );
    let behind = Envelope::new(
        "payment",
        "payment.authorized",
        "agg",
        &serde_json::json!({"n": 2}),
    );
    t.bus.publish(&poison).await.unwrap();
    t.bus.publish(&behind).await.unwrap();
    let bus: Arc<dyn Bus> = Arc::new(t.bus.clone());
    // Two replicas in turn take it and die handling it.
    for crash in 1..=2 {
        let task = tokio::spawn(consumer.clone().run(
            bus.clone(),
            vec!["payment.authorized"],
            CancellationToken::new(),
        ));
        until("the poison handled once more", || async {
            handler.poison_calls.load(Ordering::SeqCst) == crash
        })
        .await;
        task.abort();
        let _ = task.await;
    }
    // The third delivery is past the limit: parked unhandled, and the event behind it flows.
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.clone().run(
        bus.clone(),
        vec!["payment.authorized"],
        stop.clone(),
    ));
    until("the next event handled and all committed", || async {
        effects(&db).await == vec![2] && t.bus.lag("order").await.unwrap() == Some(0)
    })
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
