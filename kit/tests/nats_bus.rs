//! The NATS JetStream bus against a real server: publish de-duplication, durable consumers
//! shared by replicas in publish order, redelivery of what was not acknowledged, several streams
//! in one subscription, and the kit's consumer on top of it.
//!
//! Needs `MERCATO_TEST_NATS_URL` naming a server with JetStream: ignored otherwise, run by CI's
//! backend tier with `--include-ignored`. Each test
//! works under a prefix of its own and deletes its streams at the end.

mod support;

use async_nats::jetstream;
use futures::StreamExt;
use mercato_kit::db::{Db, Migrations, Tx};
use mercato_kit::events::{
    Bus, Consumer, Delivery, Envelope, EventHandler, NatsBus, NatsOptions, Subscription,
};
use sqlx::migrate::Migrator;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{effects, event, nothing_within, Poisoned};
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded CI machine, short enough to fail a hung test soon.
const PATIENCE: Duration = Duration::from_secs(15);

fn nats_url() -> String {
    mercato_kit::testing::backend("MERCATO_TEST_NATS_URL")
}

/// A bus under a prefix no other test uses; `tune` adjusts the options.
struct TestBus {
    bus: NatsBus,
    js: jetstream::Context,
}

impl TestBus {
    async fn new(url: &str, tune: impl FnOnce(&mut NatsOptions)) -> TestBus {
        let mut options = NatsOptions {
            prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            // Leftovers of a failed run go away on their own.
            max_age: Duration::from_secs(3600),
            ..Default::default()
        };
        tune(&mut options);
        let bus = NatsBus::connect_with(url, options).await.unwrap();
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        TestBus { bus, js }
    }

    /// Pending and unacknowledged, summed over the consumer's partitions on this stream.
    async fn consumer_state(&self, domain: &str, consumer: &str) -> (u64, usize) {
        let stream = self
            .js
            .get_stream(self.bus.stream_name(domain))
            .await
            .unwrap();
        let mut state = (0, 0);
        let mut found = 0;
        for name in self.bus.durable_names(consumer) {
            if let Ok(info) = stream.consumer_info(&name).await {
                state.0 += info.num_pending;
                state.1 += info.num_ack_pending;
                found += 1;
            }
        }
        assert!(
            found >= self.bus.options().partitions,
            "one consumer per partition"
        );
        state
    }

    /// Deletes the streams of these domains (and their consumers with them).
    async fn cleanup(&self, domains: &[&str]) {
        for d in domains {
            let _ = self.js.delete_stream(self.bus.stream_name(d)).await;
        }
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    support::next(sub, PATIENCE).await
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, f: impl FnMut() -> F) {
    support::until(what, PATIENCE, f).await
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn a_subscription_made_before_any_event_receives_the_ones_published_later() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    // Subscribing creates the (empty) stream and the consumer; nothing is there to read yet.
    let mut sub = t
        .bus
        .subscribe("shipping", &["order.created"])
        .await
        .unwrap();
    assert!(nothing_within(&mut sub, Duration::from_millis(300)).await);

    let e = event("order.created", 1);
    t.bus.publish(&e).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.envelope, e);
    sub.ack(&d).await.unwrap();
    assert_eq!(t.consumer_state("order", "shipping").await, (0, 0));
    t.cleanup(&["order"]).await;
}

/// The events of each aggregate, in the order given.
fn by_aggregate(events: &[Envelope]) -> BTreeMap<String, Vec<uuid::Uuid>> {
    let mut out: BTreeMap<String, Vec<uuid::Uuid>> = BTreeMap::new();
    for e in events {
        out.entry(e.aggregate_id.clone())
            .or_default()
            .push(e.event_id);
    }
    out
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn events_published_before_the_first_subscription_are_delivered_in_order_per_aggregate() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    let sent: Vec<Envelope> = (1..=9).map(|n| event("order.created", n)).collect();
    for e in &sent {
        t.bus.publish(e).await.unwrap();
    }
    let mut sub = t
        .bus
        .subscribe("shipping", &["order.created"])
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in &sent {
        let d = next(&mut sub).await;
        got.push(d.envelope.clone());
        sub.ack(&d).await.unwrap();
    }
    assert_eq!(by_aggregate(&got), by_aggregate(&sent));
    assert!(nothing_within(&mut sub, Duration::from_millis(300)).await);
    t.cleanup(&["order"]).await;
}

#[test]
fn an_aggregate_always_lands_on_the_same_partition() {
    use mercato_kit::events::nats::partition_of;
    // Fixed: other processes and later releases must agree (FNV-1a, 64 bits).
    assert_eq!(partition_of("", 16), (0xcbf29ce484222325u64 % 16) as u32);
    let order = "0190b1c2-7d3e-7a4b-9c5d-6e7f8091a2b3";
    assert_eq!(partition_of(order, 16), partition_of(order, 16));
    assert_eq!(partition_of(order, 1), 0);
    let spread: HashSet<u32> = (0..200)
        .map(|n| partition_of(&format!("order-{n}"), 16))
        .collect();
    assert_eq!(spread.len(), 16, "200 ids reach every partition");
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn publishing_one_event_id_twice_delivers_it_once() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    let e = event("order.created", 1);
    t.bus.publish(&e).await.unwrap();
    // A relay that crashed before marking its outbox row publishes the same event again.
    t.bus.publish(&e).await.unwrap();
    let after = event("order.created", 2);
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
    assert_eq!(second.envelope, after, "the duplicate was stored");
    sub.ack(&second).await.unwrap();
    let stream =
        t.js.get_stream(t.bus.stream_name("order"))
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
    assert_eq!(stream.state.messages, 2);
    t.cleanup(&["order"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn replicas_with_one_consumer_name_share_the_events_in_publish_order_per_aggregate() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
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
    let sent: Vec<Envelope> = (1..=50).map(|n| event("order.created", n)).collect();
    for e in &sent {
        t.bus.publish(e).await.unwrap();
    }

    // Both replicas handle what they get and note it in one shared log, before acknowledging.
    let log: Arc<Mutex<Vec<(usize, uuid::Uuid)>>> = Default::default();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (r, mut sub) in replicas.into_iter().enumerate() {
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    _ = stop.cancelled() => return,
                    d = sub.next() => d.unwrap(),
                };
                log.lock().unwrap().push((r, d.envelope.event_id));
                sub.ack(&d).await.unwrap();
            }
        }));
    }
    until("50 events handled", || async {
        log.lock().unwrap().len() >= 50
    })
    .await;
    until("every event acknowledged", || async {
        t.consumer_state("order", "inventory").await == (0, 0)
    })
    .await;
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }

    let log = log.lock().unwrap().clone();
    let of: HashMap<uuid::Uuid, &Envelope> = sent.iter().map(|e| (e.event_id, e)).collect();
    let handled: Vec<Envelope> = log.iter().map(|(_, id)| of[id].clone()).collect();
    assert_eq!(handled.len(), sent.len(), "each exactly once");
    assert_eq!(
        by_aggregate(&handled),
        by_aggregate(&sent),
        "each aggregate's in publish order"
    );
    for r in 0..2 {
        assert!(
            log.iter().any(|(who, _)| *who == r),
            "replica {r} got nothing: {log:?}"
        );
    }
    t.cleanup(&["order"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn an_event_not_acknowledged_comes_again_to_the_next_subscriber() {
    let url = nats_url();
    let t = TestBus::new(&url, |o| {
        o.ack_wait = Duration::from_secs(1);
        o.redelivery_backoff = vec![];
    })
    .await;
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
    replica.ack(&again).await.unwrap();
    assert_eq!(t.consumer_state("payment", "order").await, (0, 0));
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn asking_for_the_next_event_without_acknowledging_hands_the_last_one_back_at_once() {
    let url = nats_url();
    // ack_wait far beyond the patience of `next`: only the hand-back can bring it again in time.
    let t = TestBus::new(&url, |o| o.ack_wait = Duration::from_secs(120)).await;
    // One aggregate, so one partition: the second waits behind the first.
    let first = event("payment.authorized", 1);
    let second = event("payment.authorized", 4);
    t.bus.publish(&first).await.unwrap();
    t.bus.publish(&second).await.unwrap();

    let mut sub = t
        .bus
        .subscribe("order", &["payment.authorized"])
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.envelope, first);
    // The handler failed: no ack. The same event comes again, still before the second.
    let again = next(&mut sub).await;
    assert_eq!(again.envelope, first);
    sub.ack(&again).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.envelope, second);
    sub.ack(&d).await.unwrap();
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn one_subscription_reads_the_streams_of_several_producers() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
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
    assert!(nothing_within(&mut sub, Duration::from_millis(300)).await);
    assert_eq!(t.consumer_state("inventory", "order").await, (0, 0));
    assert_eq!(t.consumer_state("payment", "order").await, (0, 0));
    t.cleanup(&["inventory", "payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn a_message_that_is_not_an_envelope_does_not_hold_up_the_ones_behind_it() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    let mut sub = t.bus.subscribe("order", &["payment.failed"]).await.unwrap();
    // On the partition of the good event behind it.
    t.js.publish(t.bus.subject("payment.failed", "agg-1"), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let good = event("payment.failed", 1);
    t.bus.publish(&good).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.envelope, good);
    sub.ack(&d).await.unwrap();
    assert_eq!(t.consumer_state("payment", "order").await, (0, 0));
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn a_deleted_consumer_is_reported_and_made_again() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    let mut sub = t.bus.subscribe("order", &["payment.failed"]).await.unwrap();
    let first = event("payment.failed", 1);
    t.bus.publish(&first).await.unwrap();
    let d = next(&mut sub).await;
    sub.ack(&d).await.unwrap();
    let partition =
        mercato_kit::events::nats::partition_of(&first.aggregate_id, t.bus.options().partitions);

    // An operator removes the consumer (or the server lost it). The subscription reports it,
    // then carries on with a new consumer, which starts from the beginning of the stream: the
    // inbox of a real consumer absorbs the replay.
    t.js.get_stream(t.bus.stream_name("payment"))
        .await
        .unwrap()
        .delete_consumer(&format!("order_p{partition}"))
        .await
        .unwrap();
    // The same aggregate, so the same partition.
    let second = event("payment.failed", 4);
    t.bus.publish(&second).await.unwrap();
    // Servers before 2.10 do not tell a pull that its consumer went: missed heartbeats do.
    let patience = Duration::from_secs(40);
    let mut seen = Vec::new();
    let mut errors = 0;
    let deadline = Instant::now() + patience;
    while !seen.contains(&second.event_id) {
        assert!(Instant::now() < deadline, "no recovery: {seen:?}");
        match tokio::time::timeout(patience, sub.next()).await {
            Ok(Ok(d)) => {
                seen.push(d.envelope.event_id);
                sub.ack(&d).await.unwrap();
            }
            Ok(Err(_)) => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(_) => panic!("neither an event nor an error"),
        }
    }
    assert!(errors > 0, "the loss of the consumer went unreported");
    assert_eq!(seen, vec![first.event_id, second.event_id]);
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn what_an_unpartitioned_consumer_of_an_earlier_release_left_is_drained() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    let prefix = t.bus.options().prefix.clone();
    // The layout before partitions: subjects without one, one durable per stream.
    t.js.get_or_create_stream(jetstream::stream::Config {
        name: t.bus.stream_name("payment"),
        subjects: vec![format!("{prefix}.events.payment.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let (handled, left) = (event("payment.failed", 1), event("payment.failed", 2));
    for e in [&handled, &left] {
        t.js.publish(
            format!("{prefix}.events.payment.failed"),
            serde_json::to_vec(e).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let old: jetstream::consumer::PullConsumer =
        t.js.create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some("order".into()),
                filter_subject: format!("{prefix}.events.payment.>"),
                max_ack_pending: 1,
                ..Default::default()
            },
            t.bus.stream_name("payment"),
        )
        .await
        .unwrap();
    let mut batch = old.fetch().max_messages(1).messages().await.unwrap();
    let msg = batch.next().await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<Envelope>(&msg.payload).unwrap(),
        handled
    );
    msg.double_ack().await.unwrap();

    // This release: what the old consumer acknowledged stays handled, what it left comes,
    // and so does what is published in the new layout.
    let mut sub = t.bus.subscribe("order", &["payment.failed"]).await.unwrap();
    let newer = event("payment.failed", 3);
    t.bus.publish(&newer).await.unwrap();
    let mut got = HashSet::new();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        got.insert(d.envelope.event_id);
        sub.ack(&d).await.unwrap();
    }
    assert_eq!(got, HashSet::from([left.event_id, newer.event_id]));
    assert!(nothing_within(&mut sub, Duration::from_millis(300)).await);
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn a_stream_deleted_under_a_publisher_is_made_again() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    t.bus.publish(&event("order.paid", 1)).await.unwrap();
    t.cleanup(&["order"]).await;
    let e = event("order.paid", 2);
    t.bus.publish(&e).await.unwrap();
    let mut sub = t.bus.subscribe("payment", &["order.paid"]).await.unwrap();
    assert_eq!(next(&mut sub).await.envelope, e);
    t.cleanup(&["order"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn names_that_are_not_nats_tokens_are_refused() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    assert!(t.bus.subscribe("a.b", &["order.created"]).await.is_err());
    assert!(t.bus.subscribe("order", &["order.*"]).await.is_err());
    assert!(t.bus.subscribe("order", &[]).await.is_err());
    assert!(t.bus.publish(&event("nodomain", 1)).await.is_err());
}

// The kit's consumer on top of the bus.

/// Records each event it applies; counts how often it was called at all.
struct Recorder {
    calls: AtomicU32,
}

#[async_trait::async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> anyhow::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        mercato_kit::db::query("INSERT INTO effects (event_id, n) VALUES ($1, $2)")
            .bind(event.event_id.to_string())
            .bind(event.payload["n"].as_i64().unwrap_or(0))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn the_kit_consumer_applies_each_event_once_through_duplicates_and_redeliveries() {
    let url = nats_url();
    let t = TestBus::new(&url, |o| {
        o.ack_wait = Duration::from_secs(1);
        o.redelivery_backoff = vec![];
    })
    .await;
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
    let recorder = Arc::new(Recorder {
        calls: AtomicU32::new(0),
    });
    let consumer = Consumer::new("order", db.clone(), recorder.clone());

    let first = event("payment.authorized", 1);
    let second = event("payment.authorized", 2);
    t.bus.publish(&first).await.unwrap();
    t.bus.publish(&first).await.unwrap();

    // A replica handles the first event, then dies before acknowledging it.
    let mut dying = t
        .bus
        .subscribe("order", &["payment.authorized"])
        .await
        .unwrap();
    let d = next(&mut dying).await;
    assert_eq!(d.envelope, first);
    consumer.process(&d.envelope).await.unwrap();
    drop(dying);

    t.bus.publish(&second).await.unwrap();
    let stop = CancellationToken::new();
    let bus: Arc<dyn Bus> = Arc::new(t.bus.clone());
    let running = tokio::spawn(consumer.run(bus, vec!["payment.authorized"], stop.clone()));
    // NATS redelivers the first to the survivor; the inbox turns it away, and it is acked.
    until("both handled and everything acknowledged", || async {
        effects(&db).await.len() >= 2 && t.consumer_state("payment", "order").await == (0, 0)
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(effects(&db).await, vec![1, 2]);
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        2,
        "the handler saw a duplicate"
    );
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn an_event_whose_handling_never_ends_is_parked_after_the_delivery_limit() {
    let url = nats_url();
    let t = TestBus::new(&url, |o| {
        o.ack_wait = Duration::from_secs(1);
        o.redelivery_backoff = vec![];
    })
    .await;
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
    let poison = Envelope::new(
        "payment",
        "payment.authorized",
        "agg",
        &serde_json::json!({"n": 1, "poison": true}),
    );
    t.bus.publish(&poison).await.unwrap();
    // Behind it: the same aggregate, so the same partition.
    let mut behind = event("payment.authorized", 2);
    behind.aggregate_id = poison.aggregate_id.clone();
    t.bus.publish(&behind).await.unwrap();
    let bus: Arc<dyn Bus> = Arc::new(t.bus.clone());

    // Two replicas in turn take it and die handling it; NATS hands it out again after ack_wait.
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
    until("the next event handled and all acknowledged", || async {
        effects(&db).await == vec![2] && t.consumer_state("payment", "order").await == (0, 0)
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
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn a_delivery_carries_the_servers_delivery_count() {
    let url = nats_url();
    let t = TestBus::new(&url, |o| o.ack_wait = Duration::from_secs(120)).await;
    let e = event("payment.authorized", 1);
    t.bus.publish(&e).await.unwrap();
    let mut sub = t
        .bus
        .subscribe("order", &["payment.authorized"])
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.attempt, 1);
    // Not acknowledged: handed back and delivered again, counted by the server.
    let again = next(&mut sub).await;
    assert_eq!((again.envelope.event_id, again.attempt), (e.event_id, 2));
    sub.ack(&again).await.unwrap();
    t.cleanup(&["payment"]).await;
}
