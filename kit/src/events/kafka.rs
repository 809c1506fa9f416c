//! The event bus on Kafka (any Kafka-protocol broker): the same [`Bus`] as the embedded log and
//! NATS JetStream, for shops that already run Kafka.
//!
//! Layout, for a prefix `mercato`:
//! - the events of a domain (the first token of their type: `order` of `order.created`) go to
//!   the topic `mercato.order`, keyed by their aggregate id, so one order's events stay in order
//!   on one partition; the event id travels in the `event-id` header. Topics are created when
//!   missing (partitions and replication factor from [`KafkaOptions`]).
//! - a consumer name is one consumer group, `mercato.<name>`, shared by the replicas of that
//!   service: each partition is read by one of them at a time, and one that dies loses its
//!   partitions to the others after the session timeout.
//!
//! Producing is idempotent (`enable.idempotence`, `acks=all`): a retry inside the client never
//! stores an event twice. A relay that crashed between publishing and marking its outbox row
//! publishes the event again, which Kafka cannot recognise; a subscription drops an event id it
//! has already handed out recently (such a copy lands on the same partition, right behind), and
//! consumers' inboxes absorb anything older.
//!
//! Acknowledging commits the offsets past the batch, synchronously, after the handler's
//! transaction. An event handed out and not acknowledged before the next `next` is handed back
//! at once (the partition is rewound to it), as on the other backends.
//!
//! Kafka does not count deliveries, and the broker at hand (Tansu) drops offset-commit metadata,
//! so the count lives in a small ledger table of the bus's own database, kept like the embedded
//! bus's: before a batch goes out, how far it reaches on each partition is recorded (one write);
//! whatever comes again up to that mark (after a crash, a rebalance or a hand-back) comes one
//! event at a time with its count raised, so the kit's [`Consumer`](super::Consumer) parks an
//! event whose handling kills every replica that takes it.

use super::bus::{Bus, Delivery, Subscription};
use super::{domain_of, is_name_part, subscription_domains, Envelope};
use crate::db::Db;
use anyhow::{anyhow, bail, Context as _};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a [`KafkaBus`] names and configures what it creates on the brokers.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// The root of every topic (`<prefix>.<domain>`) and group (`<prefix>.<consumer>`) name.
    pub prefix: String,
    /// Partitions of a topic created here. Events of one aggregate stay on one partition, and a
    /// service's replicas share the partitions: more partitions, more replicas busy at once.
    pub partitions: i32,
    /// Copies of each partition. 1 fits a one-broker test; production wants 3 (with
    /// `min.insync.replicas=2` on the brokers, so `acks=all` means two copies).
    pub replication: i32,
    /// How long a replica may go silent before its partitions go to the others.
    pub session_timeout: Duration,
    /// How long to wait for the brokers on each call (publish, commit, metadata).
    pub timeout: Duration,
    /// librdkafka's `debug` contexts for every client (`cgrp,fetch,topic`...), logged under the
    /// `librdkafka` target: for diagnosing the brokers' answers, never needed otherwise.
    pub debug: Option<String>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            prefix: "mercato".to_owned(),
            partitions: 3,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            debug: None,
        }
    }
}

/// Per consumer name: the topics it reads, and a client of its group that reads its offsets.
type Groups = HashMap<String, (Vec<String>, Arc<BaseConsumer>)>;

/// Per consumer name, whether each of its subscriptions here has been given its partitions.
type Joined = HashMap<String, Vec<std::sync::Weak<AtomicBool>>>;

/// A subscription's client context: notes the group's first assignment (see
/// [`Bus::receiving`]).
struct GroupContext {
    joined: Arc<AtomicBool>,
    group: String,
    since: Instant,
}

impl rdkafka::client::ClientContext for GroupContext {}

impl rdkafka::consumer::ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        // The first assignment, even an empty one (more replicas than partitions), means the
        // group has formed with this member in it. Later rebalances do not make it unready:
        // they pause consuming for a moment, not serving.
        if let rdkafka::consumer::Rebalance::Assign(tpl) = rebalance {
            if !self.joined.swap(true, Ordering::SeqCst) {
                tracing::info!(group = %self.group, partitions = tpl.count(),
                    after_ms = self.since.elapsed().as_millis() as u64, "joined the Kafka consumer group");
            }
        }
    }
}

/// The [`Bus`] on Kafka. Cheap to clone; clones share the producer and the ledger.
#[derive(Clone)]
pub struct KafkaBus {
    brokers: String,
    options: Arc<KafkaOptions>,
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    ledger: Db,
    topics: Arc<Mutex<HashSet<String>>>,
    /// The topics each consumer reads, for its lag; and a client per group to read its offsets.
    groups: Arc<Mutex<Groups>>,
    joined: Arc<Mutex<Joined>>,
    /// Bumped by [`KafkaBus::rewind_all_consumers`]; each subscription rewinds when it moves.
    rewinds: Arc<tokio::sync::watch::Sender<u64>>,
    /// The rewind each live subscription has carried out, to wait for them all.
    rewound: Arc<Mutex<Vec<std::sync::Weak<AtomicU64>>>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .field("options", &self.options)
            .finish()
    }
}

impl KafkaBus {
    /// Connects to `brokers` (`host:port[,host:port]`) and checks they answer; `ledger` is the
    /// database that keeps the delivery counts (a schema or file of the bus's own).
    pub async fn connect_with(
        brokers: &str,
        options: KafkaOptions,
        ledger_url: &str,
    ) -> anyhow::Result<KafkaBus> {
        anyhow::ensure!(
            is_name_part(&options.prefix),
            "the Kafka prefix {:?} is not a topic name part (letters, digits, '-' and '_')",
            options.prefix
        );
        anyhow::ensure!(options.partitions >= 1, "partitions must be at least 1");
        anyhow::ensure!(options.replication >= 1, "replication must be at least 1");
        let timeout_ms = options.timeout.as_millis().to_string();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "mercato")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout_ms)
            .set("linger.ms", "1")
            .set_debug(&options.debug)
            .create()
            .context("configuring the Kafka producer")?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "mercato-admin")
            .create()
            .context("configuring the Kafka admin client")?;
        let none = crate::db::Migrations {
            sqlite: sqlx::migrate::Migrator::DEFAULT,
            postgres: sqlx::migrate::Migrator::DEFAULT,
        };
        let ledger = Db::connect(ledger_url, "bus", 4, &none).await?;
        // Created here rather than by a migration: the table belongs to the bus alone (as the
        // embedded bus's), and a migration version of its own would trip other migrators.
        let create = || {
            crate::db::query(
                "CREATE TABLE IF NOT EXISTS kafka_deliveries (grp TEXT NOT NULL, topic TEXT NOT NULL, \
                 part INTEGER NOT NULL, handed_out BIGINT NOT NULL, at_offset BIGINT NOT NULL, \
                 delivered BIGINT NOT NULL, PRIMARY KEY (grp, topic, part))",
            )
            .execute(ledger.writer())
        };
        if let Err(e) = create().await {
            // Processes starting together race to create it on PostgreSQL: a loser fails on the
            // catalog's unique index once the winner has committed, and then finds it there.
            tracing::debug!(error = %e, "creating the Kafka ledger raced another process; again");
            create()
                .await
                .context("creating the Kafka delivery ledger (bus.kafka_deliveries)")?;
        }
        let bus = KafkaBus {
            brokers: brokers.to_owned(),
            options: Arc::new(options),
            producer,
            admin: Arc::new(admin),
            ledger,
            topics: Default::default(),
            groups: Default::default(),
            joined: Default::default(),
            rewinds: Arc::new(tokio::sync::watch::Sender::new(0)),
            rewound: Default::default(),
        };
        bus.ping()
            .await
            .with_context(|| format!("Kafka at {brokers} does not answer"))?;
        Ok(bus)
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }

    /// The topic of a domain's events.
    pub fn topic(&self, domain: &str) -> String {
        format!("{}.{domain}", self.options.prefix)
    }

    /// The consumer group of a consumer name.
    pub fn group(&self, consumer: &str) -> String {
        format!("{}.{consumer}", self.options.prefix)
    }

    /// The consumer names subscribed through this bus (and its clones) so far.
    pub fn consumers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.groups.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Every event on this prefix's topics, topic by topic, each partition oldest first (for
    /// tests and audits). Reads without a group: no offsets are committed.
    pub async fn all(&self) -> anyhow::Result<Vec<Envelope>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            // librdkafka wants a group even for assigned partitions; this one never commits.
            .set(
                "group.id",
                format!(
                    "{}.reader-{}",
                    self.options.prefix,
                    uuid::Uuid::new_v4().simple()
                ),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let reader: BaseConsumer = config.create().context("configuring a Kafka reader")?;
        let prefix = format!("{}.", self.options.prefix);
        let timeout = self.options.timeout;
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Envelope>> {
            let md = reader.fetch_metadata(None, timeout)?;
            let mut tpl = TopicPartitionList::new();
            // Per partition, the offset of its last message.
            let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
            for t in md.topics().iter().filter(|t| t.name().starts_with(&prefix)) {
                for p in t.partitions() {
                    let (low, high) = reader.fetch_watermarks(t.name(), p.id(), timeout)?;
                    if high > low {
                        tpl.add_partition_offset(t.name(), p.id(), Offset::Offset(low))?;
                        last.insert((t.name().to_owned(), p.id()), high - 1);
                    }
                }
            }
            let mut got: BTreeMap<(String, i32), Vec<Envelope>> = BTreeMap::new();
            if last.is_empty() {
                return Ok(Vec::new());
            }
            reader.assign(&tpl)?;
            let deadline = Instant::now() + timeout;
            let mut open = last.len();
            // Past the watermarks, whatever the fetches already brought is read too: Tansu
            // 0.6.0 answers ListOffsets with the base offset of a partition's last record
            // batch plus one, so the records behind the first of a batch published together
            // lie beyond the end it reports (docs/KAFKA-COMPAT.md). They arrive with that
            // batch, so a short quiet poll after the reported ends finds them.
            loop {
                let wait = if open > 0 {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "reading every Kafka event took longer than {timeout:?}"
                    );
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(250)
                };
                let Some(msg) = reader.poll(wait) else {
                    if open == 0 {
                        break;
                    }
                    continue;
                };
                let msg = msg?;
                let key = (msg.topic().to_owned(), msg.partition());
                let Some(end) = last.get(&key).copied() else {
                    continue;
                };
                if let Some(Ok(env)) = msg.payload().map(serde_json::from_slice::<Envelope>) {
                    got.entry(key).or_default().push(env);
                }
                if msg.offset() == end {
                    open -= 1;
                }
            }
            Ok(got.into_values().flatten().collect())
        })
        .await?
    }

    /// Makes every subscription of this bus (and its clones) start again from the first event
    /// of each partition it holds, its group's commits reset there: what a bus that lost its
    /// acknowledgements would do (operators do the same with `kafka-consumer-groups
    /// --reset-offsets --to-earliest`). For tests and drills. Returns once every live
    /// subscription has done it.
    pub async fn rewind_all_consumers(&self) -> anyhow::Result<()> {
        let mut epoch = 0;
        self.rewinds.send_modify(|e| {
            *e += 1;
            epoch = *e;
        });
        let deadline = Instant::now() + self.options.timeout * 6;
        loop {
            let pending = {
                let mut subs = self.rewound.lock();
                subs.retain(|s| s.strong_count() > 0);
                subs.iter()
                    .filter_map(std::sync::Weak::upgrade)
                    .filter(|done| done.load(Ordering::SeqCst) < epoch)
                    .count()
            };
            if pending == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{pending} Kafka subscriptions did not rewind (no partitions assigned?)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates these topics unless they exist. An existing topic is left as it is: an operator
    /// may have tuned it.
    pub async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let missing: Vec<&String> = {
            let known = self.topics.lock();
            topics.iter().filter(|t| !known.contains(*t)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.options.partitions,
                    TopicReplication::Fixed(self.options.replication),
                )
            })
            .collect();
        let results = self
            .admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(self.options.timeout)),
            )
            .await
            .context("creating Kafka topics")?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("creating the Kafka topic {topic}: {code}"),
            }
        }
        let mut known = self.topics.lock();
        known.extend(missing.into_iter().cloned());
        Ok(())
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("client.id", "mercato")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.options.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.options.session_timeout.as_millis() / 4)
                    .max(100)
                    .to_string(),
            )
            .set_debug(&self.options.debug);
        c
    }
}

#[async_trait::async_trait]
impl Bus for KafkaBus {
    async fn ping(&self) -> anyhow::Result<()> {
        // A metadata round trip: the client's connection state is a belief, the answer a fact.
        let producer = self.producer.clone();
        let timeout = self.options.timeout.min(Duration::from_secs(3));
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            producer.client().fetch_metadata(None, timeout).map(|_| ())
        })
        .await?
        .context("the Kafka brokers do not answer")
    }

    /// How many events of a consumer's topics its group has not committed, per partition.
    async fn lag_by_partition(
        &self,
        consumer: &str,
    ) -> anyhow::Result<Option<Vec<(String, i32, i64)>>> {
        let Some((topics, client)) = self.groups.lock().get(consumer).cloned() else {
            return Ok(None);
        };
        let timeout = self.options.timeout;
        let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let md = client.fetch_metadata(None, timeout)?;
            let mut tpl = TopicPartitionList::new();
            for t in md
                .topics()
                .iter()
                .filter(|t| topics.iter().any(|x| x == t.name()))
            {
                for p in t.partitions() {
                    tpl.add_partition(t.name(), p.id());
                }
            }
            let committed = client.committed_offsets(tpl, timeout)?;
            let mut rows = Vec::new();
            for e in committed.elements() {
                let (low, high) = client.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                rows.push((e.topic().to_owned(), e.partition(), (high - at).max(0)));
            }
            Ok(rows)
        })
        .await??;
        Ok(Some(rows))
    }

    /// True once every subscription of `consumer` here has been given its partitions by the
    /// group the first time. Until then events wait on the brokers (a new group's join and the
    /// rebalances of replicas joining it take seconds), so the service is not ready.
    async fn receiving(&self, consumer: &str) -> anyhow::Result<bool> {
        let all = self.joined.lock();
        let live: Vec<Arc<AtomicBool>> = all
            .get(consumer)
            .map(|subs| subs.iter().filter_map(std::sync::Weak::upgrade).collect())
            .unwrap_or_default();
        Ok(!live.is_empty() && live.iter().all(|j| j.load(Ordering::SeqCst)))
    }

    async fn lag(&self, consumer: &str) -> anyhow::Result<Option<i64>> {
        Ok(self
            .lag_by_partition(consumer)
            .await?
            .map(|rows| rows.iter().map(|r| r.2).sum()))
    }

    async fn publish(&self, env: &Envelope) -> anyhow::Result<()> {
        self.publish_batch(std::slice::from_ref(env)).await?;
        Ok(())
    }

    /// Sends the whole batch before waiting for any acknowledgement (the idempotent producer
    /// keeps them in order per partition), then waits for them all. What is stored is the
    /// prefix acknowledged before the first failure.
    async fn publish_batch(&self, envs: &[Envelope]) -> anyhow::Result<usize> {
        let mut topics = Vec::new();
        for env in envs {
            let t = self.topic(domain_of(&env.event_type)?);
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        self.ensure_topics(&topics).await?;
        let mut sent = Vec::with_capacity(envs.len());
        for env in envs {
            let topic = self.topic(domain_of(&env.event_type)?);
            let payload = serde_json::to_vec(env)?;
            let id = env.event_id.to_string();
            let record = FutureRecord::to(&topic)
                .key(&env.aggregate_id)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(&id),
                }));
            match self.producer.send_result(record) {
                Ok(delivery) => sent.push((env, delivery)),
                Err((e, _)) if sent.is_empty() => {
                    return Err(anyhow!(e).context(format!(
                        "publishing {} {} to Kafka",
                        env.event_type, env.event_id
                    )))
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, "sending to Kafka failed part-way; the rest waits");
                    break;
                }
            }
        }
        let mut stored = 0;
        for (env, delivery) in sent {
            let result = delivery
                .await
                .map_err(|_| anyhow!("the Kafka producer went away"))
                .and_then(|r| r.map_err(|(e, _)| anyhow!(e)));
            match result {
                Ok(_) => stored += 1,
                Err(e) if stored == 0 => {
                    return Err(e.context(format!(
                        "publishing {} {} to Kafka",
                        env.event_type, env.event_id
                    )))
                }
                Err(e) => {
                    tracing::warn!(error = %e, stored, "Kafka did not store part of a batch; the rest is published again");
                    break;
                }
            }
        }
        Ok(stored)
    }

    async fn subscribe(
        &self,
        consumer: &str,
        event_types: &[&str],
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let mut topics = Vec::new();
        for domain in subscription_domains("Kafka", consumer, event_types)?.into_keys() {
            topics.push(self.topic(domain));
        }
        self.ensure_topics(&topics).await?;
        let group = self.group(consumer);
        let joined = Arc::new(AtomicBool::new(false));
        let context = GroupContext {
            joined: joined.clone(),
            group: group.clone(),
            since: Instant::now(),
        };
        let client: StreamConsumer<GroupContext> = self
            .consumer_config(&group)
            .create_with_context(context)
            .context("configuring a Kafka consumer")?;
        {
            let mut all = self.joined.lock();
            let mine = all.entry(consumer.to_owned()).or_default();
            mine.retain(|j| j.strong_count() > 0);
            mine.push(Arc::downgrade(&joined));
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        client
            .subscribe(&names)
            .with_context(|| format!("subscribing {group} to {names:?}"))?;
        {
            let mut groups = self.groups.lock();
            if !groups.contains_key(consumer) {
                let offsets: BaseConsumer = self
                    .consumer_config(&group)
                    .create()
                    .context("configuring a Kafka offsets reader")?;
                groups.insert(consumer.to_owned(), (topics.clone(), Arc::new(offsets)));
            }
        }
        let rewound = Arc::new(AtomicU64::new(*self.rewinds.borrow()));
        self.rewound.lock().push(Arc::downgrade(&rewound));
        let mut rewind = self.rewinds.subscribe();
        rewind.mark_unchanged();
        Ok(Box::new(KafkaSubscription {
            bus: self.clone(),
            rewind,
            rewound,
            group,
            wanted: event_types.iter().map(|t| t.to_string()).collect(),
            client: Some(Arc::new(client)),
            _joined: joined,
            counter: 0,
            unacked: BTreeMap::new(),
            recent: HashMap::new(),
            skipped: HashMap::new(),
            committed: HashMap::new(),
        }))
    }
}

/// Sets librdkafka's `debug` when asked for.
trait SetDebug {
    fn set_debug(&mut self, debug: &Option<String>) -> &mut Self;
}

impl SetDebug for ClientConfig {
    fn set_debug(&mut self, debug: &Option<String>) -> &mut Self {
        match debug {
            Some(contexts) => self.set("debug", contexts),
            None => self,
        }
    }
}

const EVENT_ID_HEADER: &str = "event-id";
/// Event ids a subscription remembers per partition to drop a republished copy.
const RECENT: usize = 4096;

/// One delivery handed out and not acknowledged: where it sits.
struct Held {
    event_id: uuid::Uuid,
    topic: String,
    partition: i32,
    offset: i64,
}

struct KafkaSubscription {
    bus: KafkaBus,
    /// [`KafkaBus::rewind_all_consumers`]'s count, and the last rewind carried out here.
    rewind: tokio::sync::watch::Receiver<u64>,
    rewound: Arc<AtomicU64>,
    group: String,
    wanted: HashSet<String>,
    /// `None` only while dropping (see `Drop`).
    client: Option<Arc<StreamConsumer<GroupContext>>>,
    /// Held for [`Bus::receiving`] (which keeps a weak reference).
    _joined: Arc<AtomicBool>,
    counter: i64,
    unacked: BTreeMap<i64, Held>,
    /// Per partition, the event ids handed out lately, oldest first.
    recent: HashMap<(String, i32), (VecDeque<uuid::Uuid>, HashSet<uuid::Uuid>)>,
    /// Per partition, the offset just past messages skipped (other types, copies, garbage)
    /// whose commit waits for the next acknowledgement there.
    skipped: HashMap<(String, i32), i64>,
    /// Per partition, the offset last committed here: a commit never moves back below it
    /// (only a rewind does, on purpose).
    committed: HashMap<(String, i32), i64>,
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // Closing a consumer leaves its group at once, but freeing the client can hang in
        // librdkafka (rust-rdkafka issue 509; seen against Tansu): it happens on a thread of
        // its own so no task waits for it.
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new()
                .name("kafka-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl KafkaSubscription {
    #[expect(clippy::expect_used, reason = "the client is taken only in drop")]
    fn client(&self) -> &Arc<StreamConsumer<GroupContext>> {
        self.client.as_ref().expect("the client lives until drop")
    }

    /// Rewinds every partition holding an unacknowledged delivery to the first of them.
    fn hand_back(&mut self) -> anyhow::Result<()> {
        let mut first: HashMap<(String, i32), i64> = HashMap::new();
        let held: Vec<((String, i32), uuid::Uuid)> = self
            .unacked
            .values()
            .map(|h| ((h.topic.clone(), h.partition), h.event_id))
            .collect();
        for (key, event_id) in &held {
            // It comes again, and must not pass for a republished copy then.
            self.forget_seen(key, event_id);
        }
        for h in self.unacked.values() {
            let e = first
                .entry((h.topic.clone(), h.partition))
                .or_insert(h.offset);
            *e = (*e).min(h.offset);
        }
        self.unacked.clear();
        for ((topic, partition), offset) in first {
            self.skipped.remove(&(topic.clone(), partition));
            if let Err(e) = self.client().seek(
                &topic,
                partition,
                Offset::Offset(offset),
                self.bus.options.timeout,
            ) {
                // Not ours any more (a rebalance): its new owner starts from the commit.
                tracing::debug!(group = %self.group, %topic, partition, error = %e,
                    "handing back an unacknowledged event failed");
            }
        }
        Ok(())
    }

    /// Forgets that `event_id` was handed out from a partition: it is read there again (a
    /// rewind) and is no republished copy then.
    fn forget_seen(&mut self, key: &(String, i32), event_id: &uuid::Uuid) {
        if let Some((order, seen)) = self.recent.get_mut(key) {
            if seen.remove(event_id) {
                order.retain(|id| id != event_id);
            }
        }
    }

    /// Reads the ledger row of a partition: (handed out up to, offset counted, deliveries).
    async fn ledger(&self, topic: &str, partition: i32) -> anyhow::Result<Option<(i64, i64, i64)>> {
        let row = crate::db::query(
            "SELECT handed_out, at_offset, delivered FROM kafka_deliveries WHERE grp = $1 AND topic = $2 AND part = $3",
        )
        .bind(&self.group)
        .bind(topic)
        .bind(partition)
        .fetch_optional(self.bus.ledger.reader())
        .await?;
        Ok(match row {
            Some(r) => Some((
                r.try_get("handed_out")?,
                r.try_get("at_offset")?,
                r.try_get("delivered")?,
            )),
            None => None,
        })
    }

    async fn record(
        &self,
        topic: &str,
        partition: i32,
        handed_out: i64,
        at: i64,
        delivered: i64,
    ) -> anyhow::Result<()> {
        crate::db::query(
            "INSERT INTO kafka_deliveries (grp, topic, part, handed_out, at_offset, delivered) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (grp, topic, part) DO UPDATE SET \
             handed_out = MAX_OF, at_offset = $5, delivered = $6"
                .replace(
                    "MAX_OF",
                    if self.bus.ledger.backend() == crate::db::Backend::Postgres {
                        "GREATEST(kafka_deliveries.handed_out, $4)"
                    } else {
                        "MAX(kafka_deliveries.handed_out, $4)"
                    },
                )
                .as_str(),
        )
        .bind(&self.group)
        .bind(topic)
        .bind(partition)
        .bind(handed_out)
        .bind(at)
        .bind(delivered)
        .execute(self.bus.ledger.writer())
        .await?;
        Ok(())
    }

    /// Looks at one message: one to hand out, or `None` for one settled here (other types,
    /// copies, garbage) whose offset is committed with the next acknowledgement.
    fn take(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<Delivery> {
        let key = (msg.topic().to_owned(), msg.partition());
        tracing::trace!(group = %self.group, topic = %key.0, partition = key.1, offset = msg.offset(), "read");
        let skip = |s: &mut Self| {
            s.skipped.insert(key.clone(), msg.offset() + 1);
            None
        };
        let envelope = match msg.payload().map(serde_json::from_slice::<Envelope>) {
            Some(Ok(env)) => env,
            other => {
                // Not an envelope: no handler can ever take it, and handing it out again would
                // hold up every event behind it.
                tracing::error!(group = %self.group, topic = %msg.topic(), partition = msg.partition(),
                    offset = msg.offset(), error = ?other.and_then(|r| r.err()).map(|e| e.to_string()),
                    "dropping a Kafka message that is not an event envelope");
                return skip(self);
            }
        };
        if !self.wanted.contains(&envelope.event_type) {
            return skip(self);
        }
        let (order, seen) = self.recent.entry(key.clone()).or_default();
        if seen.contains(&envelope.event_id) {
            tracing::debug!(event_id = %envelope.event_id, "dropping a republished copy");
            return skip(self);
        }
        order.push_back(envelope.event_id);
        seen.insert(envelope.event_id);
        if order.len() > RECENT {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        self.counter += 1;
        self.unacked.insert(
            self.counter,
            Held {
                event_id: envelope.event_id,
                topic: key.0,
                partition: key.1,
                offset: msg.offset(),
            },
        );
        Some(Delivery {
            envelope,
            seq: self.counter,
            attempt: 1,
        })
    }

    async fn receive(&mut self) -> anyhow::Result<Option<Delivery>> {
        let client = self.client().clone();
        let msg = loop {
            let wanted = *self.rewind.borrow();
            if self.rewound.load(Ordering::SeqCst) < wanted && !self.rewind_now(wanted).await? {
                // No partitions yet (the group is still forming): try again in a moment.
                tokio::select! {
                    m = client.recv() => break m,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
            tokio::select! {
                m = client.recv() => break m,
                _ = self.rewind.changed() => continue,
            }
        }
        .with_context(|| format!("reading from Kafka for {}", self.group))?;
        let (topic, partition, offset) = (msg.topic().to_owned(), msg.partition(), msg.offset());
        let taken = self.take(&msg);
        drop(msg);
        Ok(match taken {
            None => {
                self.commit_skipped_if_idle();
                None
            }
            Some(d) => Some(self.count(d, &topic, partition, offset).await?),
        })
    }

    /// Carries out rewind `epoch` (see [`KafkaBus::rewind_all_consumers`]) on the partitions
    /// assigned here: commits their first offsets, moves the reader there and forgets what was
    /// handed out. False while nothing is assigned. Only called between batches: nothing is
    /// handed out then.
    async fn rewind_now(&mut self, epoch: u64) -> anyhow::Result<bool> {
        let client = self.client().clone();
        let timeout = self.bus.options.timeout;
        let rewound = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let assigned = client.assignment()?;
            if assigned.count() == 0 {
                return Ok(false);
            }
            let mut first = TopicPartitionList::new();
            for e in assigned.elements() {
                let (low, _) = client.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                first.add_partition_offset(e.topic(), e.partition(), Offset::Offset(low))?;
            }
            client.commit(&first, CommitMode::Sync)?;
            for e in first.elements() {
                if let Err(err) = client.seek(e.topic(), e.partition(), e.offset(), timeout) {
                    // Not fetching yet: it starts from the commit just made.
                    tracing::debug!(topic = e.topic(), partition = e.partition(), error = %err,
                        "seeking to the start failed");
                }
            }
            Ok(true)
        })
        .await??;
        if !rewound {
            return Ok(false);
        }
        crate::db::query("DELETE FROM kafka_deliveries WHERE grp = $1")
            .bind(&self.group)
            .execute(self.bus.ledger.writer())
            .await?;
        self.recent.clear();
        self.skipped.clear();
        self.committed.clear();
        self.unacked.clear();
        self.rewound.store(epoch, Ordering::SeqCst);
        tracing::info!(group = %self.group, "rewound to the first event of every partition");
        Ok(true)
    }

    /// Partitions holding a delivery handed out and not acknowledged.
    fn busy(&self) -> HashSet<(String, i32)> {
        self.unacked
            .values()
            .map(|h| (h.topic.clone(), h.partition))
            .collect()
    }

    /// Partitions whose only news was skipped messages commit past them now, so their lag
    /// does not show events nobody here reads.
    fn commit_skipped_if_idle(&mut self) {
        let busy = self.busy();
        let next = commit_offsets(BTreeMap::new(), &mut self.skipped, &busy, &self.committed);
        if next.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        // Asynchronous: nothing waits on it, and a lost one is covered by the next commit of
        // these partitions (librdkafka sends a group's commits in order).
        match self.client().commit(&tpl, CommitMode::Async) {
            Ok(()) => self.committed.extend(next),
            Err(e) => {
                tracing::debug!(group = %self.group, error = %e, "committing skipped messages failed")
            }
        }
    }

    /// Sets the delivery count of the first delivery of a partition in a batch from the ledger.
    async fn count(
        &mut self,
        mut d: Delivery,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<Delivery> {
        match self.ledger(topic, partition).await? {
            Some((handed_out, at, delivered)) if offset <= handed_out => {
                d.attempt = if at == offset {
                    u32::try_from(delivered + 1).unwrap_or(u32::MAX)
                } else {
                    2
                };
                self.record(topic, partition, handed_out, offset, i64::from(d.attempt))
                    .await?;
            }
            _ => {}
        }
        Ok(d)
    }
}

#[async_trait::async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        let mut one = self.next_batch(1).await?;
        one.pop()
            .ok_or_else(|| anyhow!("the Kafka bus handed out an empty batch"))
    }

    async fn ack(&mut self, delivery: &Delivery) -> anyhow::Result<()> {
        self.ack_batch(std::slice::from_ref(delivery)).await
    }

    /// Waits for the first event, then takes what the client has already fetched. A
    /// redelivery (an event handed out before and never acknowledged) goes out alone, with
    /// its count; a fresh batch is recorded in the ledger before it goes out.
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        use futures::FutureExt;
        if !self.unacked.is_empty() {
            self.hand_back()?;
        }
        let first = loop {
            if let Some(d) = self.receive().await? {
                break d;
            }
        };
        if first.attempt > 1 {
            return Ok(vec![first]);
        }
        // Partitions whose first event here was fresh: the ones behind it are fresh too.
        let mut fresh: HashSet<(String, i32)> = HashSet::new();
        if let Some(h) = self.unacked.get(&first.seq) {
            fresh.insert((h.topic.clone(), h.partition));
        }
        let mut batch = vec![first];
        while batch.len() < max {
            let client = self.client().clone();
            let Some(msg) = client.recv().now_or_never() else {
                break;
            };
            let Ok(msg) = msg else { break };
            let (topic, partition, offset) =
                (msg.topic().to_owned(), msg.partition(), msg.offset());
            let taken = self.take(&msg);
            drop(msg);
            if let Some(d) = taken {
                let key = (topic.clone(), partition);
                let d = if fresh.contains(&key) {
                    d
                } else {
                    self.count(d, &topic, partition, offset).await?
                };
                if d.attempt > 1 {
                    // A redelivery behind fresh events: it goes out alone, next time. It was
                    // taken, so it must be forgotten as seen too, or it would come back as a
                    // "republished copy", be dropped and committed past: lost.
                    self.unacked.remove(&d.seq);
                    self.forget_seen(&key, &d.envelope.event_id);
                    if let Err(e) = self.client().seek(
                        &topic,
                        partition,
                        Offset::Offset(offset),
                        self.bus.options.timeout,
                    ) {
                        tracing::debug!(error = %e, "rewinding to a redelivery failed");
                    }
                    break;
                }
                fresh.insert(key);
                batch.push(d);
            }
        }
        // How far this batch reaches on each partition, before it goes out.
        let mut reach: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
        for d in &batch {
            let h = &self.unacked[&d.seq];
            let e = reach
                .entry((h.topic.clone(), h.partition))
                .or_insert((h.offset, h.offset));
            e.0 = e.0.min(h.offset);
            e.1 = e.1.max(h.offset);
        }
        for ((topic, partition), (from, to)) in reach {
            self.record(&topic, partition, to, from, 1).await?;
        }
        Ok(batch)
    }

    /// Commits, per partition, the offset past the last delivery of the batch (and past any
    /// message skipped behind it), and waits for the brokers to confirm.
    async fn ack_batch(&mut self, batch: &[Delivery]) -> anyhow::Result<()> {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for d in batch {
            let Some(h) = self.unacked.remove(&d.seq) else {
                continue;
            };
            let e = next.entry((h.topic, h.partition)).or_insert(0);
            *e = (*e).max(h.offset + 1);
        }
        let busy = self.busy();
        let next = commit_offsets(next, &mut self.skipped, &busy, &self.committed);
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        tracing::trace!(group = %self.group, offsets = ?next, "committing");
        let client = self.client().clone();
        // A synchronous commit blocks on the brokers' answer: off the async threads.
        let result =
            tokio::task::spawn_blocking(move || client.commit(&tpl, CommitMode::Sync)).await?;
        if result.is_err() {
            // The partitions may have moved: what comes again is no copy then.
            self.recent.clear();
        }
        match result {
            Ok(()) => {
                self.committed.extend(next);
                Ok(())
            }
            Err(KafkaError::ConsumerCommit(code)) => Err(anyhow!(
                "Kafka refused the commit for {} ({code}): a rebalance moved the partitions; their new owner redelivers",
                self.group
            )),
            Err(e) => Err(anyhow!(e).context(format!("committing offsets for {}", self.group))),
        }
    }
}

/// The offsets an acknowledgement commits: per partition, past the batch's last delivery
/// there (`acked`) and past any message skipped behind it; plus the partitions whose only news
/// since was skipped messages (other types, copies), when nothing is outstanding there (`busy`),
/// or the group's lag would count them until that partition's next event. A skipped mark is
/// used up either way, and nothing goes below what was `committed` already: a stale mark left
/// behind once committed offsets backwards, and the lag stayed up (issue 17).
fn commit_offsets(
    acked: BTreeMap<(String, i32), i64>,
    skipped: &mut HashMap<(String, i32), i64>,
    busy: &HashSet<(String, i32)>,
    committed: &HashMap<(String, i32), i64>,
) -> BTreeMap<(String, i32), i64> {
    let mut next = acked;
    for (key, offset) in next.iter_mut() {
        // Where a delivery is still outstanding (acknowledged one at a time), a mark may lie
        // past it: it waits for the last one, or the commit would skip an unhandled event.
        if busy.contains(key) {
            continue;
        }
        if let Some(s) = skipped.remove(key) {
            *offset = (*offset).max(s);
        }
    }
    let idle: Vec<(String, i32)> = skipped
        .keys()
        .filter(|k| !busy.contains(*k))
        .cloned()
        .collect();
    for key in idle {
        if let Some(offset) = skipped.remove(&key) {
            next.insert(key, offset);
        }
    }
    next.retain(|key, offset| committed.get(key).is_none_or(|c| *offset > *c));
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> (String, i32) {
        ("mercato.order".to_owned(), n)
    }

    #[test]
    fn a_skip_mark_behind_the_acknowledged_event_is_used_up_not_committed_later() {
        // Partition 1: offset 1 skipped (mark 2), offset 2 handed out and acknowledged.
        let mut skipped = HashMap::from([(p(1), 2)]);
        let mut committed = HashMap::new();
        let first = commit_offsets(
            BTreeMap::from([(p(1), 3)]),
            &mut skipped,
            &HashSet::new(),
            &committed,
        );
        assert_eq!(first, BTreeMap::from([(p(1), 3)]));
        assert!(skipped.is_empty(), "the mark was used up");
        committed.extend(first);
        // The next acknowledgement, on another partition, must not carry partition 1 back.
        let second = commit_offsets(
            BTreeMap::from([(p(2), 5)]),
            &mut skipped,
            &HashSet::new(),
            &committed,
        );
        assert_eq!(second, BTreeMap::from([(p(2), 5)]));
    }

    #[test]
    fn skipped_messages_are_committed_past_only_where_nothing_is_outstanding() {
        let mut skipped = HashMap::from([(p(0), 7), (p(2), 4)]);
        let busy = HashSet::from([p(2)]);
        let next = commit_offsets(BTreeMap::new(), &mut skipped, &busy, &HashMap::new());
        assert_eq!(next, BTreeMap::from([(p(0), 7)]));
        assert_eq!(
            skipped,
            HashMap::from([(p(2), 4)]),
            "kept for its partition's ack"
        );
        // Its last outstanding delivery acknowledged, the commit moves past the skip behind it.
        let next = commit_offsets(
            BTreeMap::from([(p(2), 3)]),
            &mut skipped,
            &HashSet::new(),
            &HashMap::new(),
        );
        assert_eq!(next, BTreeMap::from([(p(2), 4)]));
    }

    #[test]
    fn a_skip_mark_never_carries_a_commit_past_an_outstanding_delivery() {
        // Offsets 5 and 6 handed out, 7 skipped; 5 acknowledged alone (the slow path).
        let mut skipped = HashMap::from([(p(0), 8)]);
        let busy = HashSet::from([p(0)]);
        let next = commit_offsets(
            BTreeMap::from([(p(0), 6)]),
            &mut skipped,
            &busy,
            &HashMap::new(),
        );
        assert_eq!(
            next,
            BTreeMap::from([(p(0), 6)]),
            "6 is still to be handled"
        );
        let next = commit_offsets(
            BTreeMap::from([(p(0), 7)]),
            &mut skipped,
            &HashSet::new(),
            &HashMap::new(),
        );
        assert_eq!(next, BTreeMap::from([(p(0), 8)]));
    }

    #[test]
    fn a_commit_never_goes_below_what_was_committed() {
        let committed = HashMap::from([(p(0), 10)]);
        let mut skipped = HashMap::from([(p(0), 8)]);
        let next = commit_offsets(BTreeMap::new(), &mut skipped, &HashSet::new(), &committed);
        assert!(next.is_empty(), "{next:?}");
    }

    #[test]
    fn event_types_name_their_domain() {
        assert_eq!(domain_of("order.created").unwrap(), "order");
        for bad in ["order", "order.", ".created", "order.*", "a b.c", ""] {
            assert!(domain_of(bad).is_err(), "{bad:?} accepted");
        }
    }
}
