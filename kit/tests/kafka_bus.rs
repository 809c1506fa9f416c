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

use mercato_kit::events::{Bus, Delivery, Envelope, KafkaBus, KafkaOptions, Subscription};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use support::bus_suite::{self, BusUnderTest};
use support::{event, nothing_within};

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

#[async_trait::async_trait]
impl BusUnderTest for TestBus {
    fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.bus.clone())
    }

    fn patience(&self) -> Duration {
        PATIENCE
    }

    /// Kafka keeps no count per topic for a group: nothing left means a lag of 0 over all of
    /// the group's partitions, whatever the domains.
    async fn is_caught_up(&self, consumer: &str, _domains: &[&str]) -> bool {
        self.bus.lag(consumer).await.unwrap() == Some(0)
    }

    /// Commits reach the broker after the acknowledgement returns, so this waits for them.
    async fn caught_up(&self, consumer: &str, domains: &[&str]) {
        until(&format!("{consumer} caught up"), || async {
            self.is_caught_up(consumer, domains).await
        })
        .await
    }
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
    let mut sub = bus_suite::one_event_id_published_twice_is_delivered_once(&t).await;
    assert!(nothing_within(&mut sub, Duration::from_millis(500)).await);
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn replicas_with_one_consumer_name_share_the_events_each_aggregate_in_order() {
    let t = test_bus().await;
    let (_, log) = bus_suite::replicas_share(&t, 60, 8).await;
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
    let again = bus_suite::an_unacknowledged_event_comes_to_the_next_subscriber(&t).await;
    assert_eq!(again.attempt, 2, "the second delivery is counted");
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn asking_for_the_next_event_without_acknowledging_hands_the_last_one_back_at_once() {
    bus_suite::the_unacknowledged_one_is_handed_back_first(&test_bus().await).await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn one_subscription_reads_the_topics_of_several_producers() {
    bus_suite::one_subscription_reads_several_producers(&test_bus().await).await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn a_message_that_is_not_an_envelope_does_not_hold_up_the_ones_behind_it() {
    let t = test_bus().await;
    let sub = t.bus.subscribe("order", &["payment.failed"]).await.unwrap();
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
    bus_suite::the_event_behind_garbage_comes(&t, sub).await;
}

#[tokio::test]
#[ignore = "needs a Kafka broker in MERCATO_TEST_KAFKA_BROKERS (.ci/kafka)"]
async fn names_that_are_not_kafka_name_parts_are_refused() {
    bus_suite::names_it_cannot_carry_are_refused(&test_bus().await).await;
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
    bus_suite::a_never_ending_event_is_parked_after_the_delivery_limit(&test_bus().await).await;
}
