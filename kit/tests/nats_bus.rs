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
use mercato_kit::events::{Bus, Consumer, Delivery, Envelope, NatsBus, NatsOptions, Subscription};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::bus_suite::{self, BusUnderTest};
use support::{effects, effects_db, event, nothing_within, Recorder};
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

#[async_trait::async_trait]
impl BusUnderTest for TestBus {
    async fn is_caught_up(&self, consumer: &str, domains: &[&str]) -> bool {
        for d in domains {
            if self.consumer_state(d, consumer).await != (0, 0) {
                return false;
            }
        }
        true
    }

    fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.bus.clone())
    }

    fn patience(&self) -> Duration {
        PATIENCE
    }

    /// An acknowledgement is settled by the server before it answers (double ack), so the
    /// state must be clean the moment the acknowledgements returned.
    async fn caught_up(&self, consumer: &str, domains: &[&str]) {
        for d in domains {
            assert_eq!(
                self.consumer_state(d, consumer).await,
                (0, 0),
                "{consumer} on {d}"
            );
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
    bus_suite::one_event_id_published_twice_is_delivered_once(&t).await;
    let stream =
        t.js.get_stream(t.bus.stream_name("order"))
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
    assert_eq!(stream.state.messages, 2, "the duplicate was not stored");
    t.cleanup(&["order"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn replicas_with_one_consumer_name_share_the_events_in_publish_order_per_aggregate() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    let (sent, log) = bus_suite::replicas_share(&t, 50, 1).await;
    let handled: Vec<Envelope> = log.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(handled.len(), sent.len(), "each exactly once");
    let ids: HashSet<_> = handled.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), sent.len(), "each exactly once");
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
    bus_suite::an_unacknowledged_event_comes_to_the_next_subscriber(&t).await;
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn asking_for_the_next_event_without_acknowledging_hands_the_last_one_back_at_once() {
    let url = nats_url();
    // ack_wait far beyond the patience of `next`: only the hand-back can bring it again in time.
    let t = TestBus::new(&url, |o| o.ack_wait = Duration::from_secs(120)).await;
    bus_suite::the_unacknowledged_one_is_handed_back_first(&t).await;
    t.cleanup(&["payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn one_subscription_reads_the_streams_of_several_producers() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    bus_suite::one_subscription_reads_several_producers(&t).await;
    t.cleanup(&["inventory", "payment"]).await;
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_NATS_URL (CI's backend tier)"]
async fn a_message_that_is_not_an_envelope_does_not_hold_up_the_ones_behind_it() {
    let url = nats_url();
    let t = TestBus::new(&url, |_| {}).await;
    let sub = t.bus.subscribe("order", &["payment.failed"]).await.unwrap();
    // On the partition of the good event behind it.
    t.js.publish(t.bus.subject("payment.failed", "agg-1"), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    bus_suite::the_event_behind_garbage_comes(&t, sub).await;
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
    bus_suite::names_it_cannot_carry_are_refused(&TestBus::new(&url, |_| {}).await).await;
}

// The kit's consumer on top of the bus.

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
    let db = effects_db(&dir, "c").await;
    let recorder = Arc::new(Recorder::default());
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
    // NATS hands an unacknowledged event out again after ack_wait.
    let t = TestBus::new(&url, |o| {
        o.ack_wait = Duration::from_secs(1);
        o.redelivery_backoff = vec![];
    })
    .await;
    bus_suite::a_never_ending_event_is_parked_after_the_delivery_limit(&t).await;
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
