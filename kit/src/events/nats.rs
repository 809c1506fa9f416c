//! The event bus on NATS JetStream, for distributed mode: the same [`Bus`] as the embedded one,
//! shared by every process of every service.
//!
//! Layout, for a prefix `mercato`:
//! - an event of type `order.created` travels on the subject `mercato.events.order.created`;
//! - the first token of a type names its domain (the producing service: `order`, `payment`, and
//!   `product` for the catalog), and each domain has a stream of its own, `MERCATO_ORDER`
//!   capturing `mercato.events.order.>`. Streams are created on demand by whoever publishes or
//!   subscribes first: file storage, kept by limits (seven days by default), and a duplicate
//!   window in which a second publish of the same `Nats-Msg-Id` (the event id) is dropped. A
//!   relay that crashed between publishing and marking its outbox row publishes again; the
//!   window absorbs that, and consumers' inboxes absorb anything older.
//! - streams are partitioned as Kafka topics are: an event travels on
//!   `mercato.events.order.created.<p>`, `p` a stable hash of its aggregate id modulo
//!   [`NatsOptions::partitions`];
//! - a consumer name is one durable pull consumer per partition (`<name>_p<p>`) on each stream
//!   whose types it reads; the replicas of a service subscribe with the same name and so share
//!   those consumers: each event is handed to one of them, and one that dies holding an event
//!   loses it to another after `ack_wait`.
//!
//! Order. Each partition's durable consumer lets one event be outstanding at a time
//! (`max_ack_pending` 1), which gives every consumer the events of an aggregate in publish
//! order, across all its replicas and through redeliveries, while events of different
//! partitions are handled side by side (and batched into one transaction by the kit's
//! consumer). One outstanding event per stream, as before partitions, held every consumer to
//! one event per round trip and commit (48 paid orders/s draining on PostgreSQL, measured).
//! Handlers tolerate out-of-order events, but order per aggregate keeps the saga from taking
//! detours. JetStream 2.9 has no partitioned consumer groups, hence a consumer per partition;
//! the subjects without a partition, which earlier releases used, are drained (see
//! `legacy_drain`).
//!
//! Acknowledgements are double acks, confirmed by the server before the consumer moves on. An
//! event the subscriber received but did not acknowledge before asking for the next one is
//! handed back at once (a negative ack), so a consumer whose handling failed sees it again
//! without waiting for `ack_wait`, as it would on the embedded bus.
//!
//! NATS does not cap deliveries by default ([`NatsOptions::max_deliver`] is unlimited): the
//! kit's [`Consumer`](super::Consumer) parks an event that keeps failing in its own dead
//! letters and acknowledges it, so a cap on the server would only ever drop events whose
//! consumer could not even park them (its database down), silently. An event held by a replica
//! that died comes again after `ack_wait` (30 s); NATS refuses a redelivery backoff without a
//! cap, so there is none by default. The server's delivery count travels with each delivery
//! ([`Delivery::attempt`]), and the consumer parks an event delivered more often than its
//! limit without handling it again: that is what stops an event whose handling kills the
//! process, or hangs past `ack_wait`, from coming back forever.
//!
//! Servers before 2.10 filter a consumer by one subject only; there a consumer reads all the
//! types of a domain's stream and acknowledges the ones it did not ask for without handing them
//! out. Newer servers filter by the exact subjects.

use super::bus::{Bus, Delivery, Subscription};
use super::{domain_of, is_name_part, subscription_domains, Envelope};
use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Enough partitions that one consumer keeps 16 events of different orders in flight per
/// stream, few enough that the server's consumers stay in the hundreds for a whole shop.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// The partition of an aggregate: FNV-1a over its id, which stays the same across processes,
/// releases and languages (std's hasher is seeded per process).
pub fn partition_of(aggregate_id: &str, partitions: u32) -> u32 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(aggregate_id.as_bytes());
    (h.finish() % u64::from(partitions.max(1))) as u32
}

/// How a [`NatsBus`] names and configures what it creates on the server.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// The root of every subject (`<prefix>.events.<type>`) and, upper-cased, of every stream
    /// name (`<PREFIX>_<DOMAIN>`). Tests use a unique one to keep to themselves.
    pub prefix: String,
    /// How long a delivered event may go unacknowledged before NATS hands it out again.
    pub ack_wait: Duration,
    /// The waits for the second, third, … delivery of an event; the last one repeats. Empty:
    /// `ack_wait` every time. NATS takes a backoff only with a finite `max_deliver` above its
    /// length.
    pub redelivery_backoff: Vec<Duration>,
    /// Deliveries of one event before NATS gives up on it; -1 for no limit (see the module doc).
    pub max_deliver: i64,
    /// Events outstanding at once per consumer, stream and partition; 1 keeps each partition's
    /// events, and so each aggregate's, in publish order.
    pub max_ack_pending: i64,
    /// Partitions of every stream: an event travels on `<prefix>.events.<type>.<partition>`,
    /// the partition a hash of its aggregate id, and each consuming service has one durable
    /// consumer per partition. Part of the layout on the server: changing it moves aggregates
    /// between partitions, so their order holds only for events published after the change.
    pub partitions: u32,
    /// How long a stream keeps an event.
    pub max_age: Duration,
    /// How long a stream remembers event ids to drop duplicate publishes.
    pub duplicate_window: Duration,
    /// Copies of each stream in a JetStream cluster.
    pub replicas: usize,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            prefix: "mercato".to_owned(),
            ack_wait: Duration::from_secs(30),
            redelivery_backoff: Vec::new(),
            max_deliver: -1,
            max_ack_pending: 1,
            partitions: DEFAULT_PARTITIONS,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// The [`Bus`] on NATS JetStream. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    options: Arc<NatsOptions>,
    /// Streams known to exist, so a publish does not ask the server each time.
    streams: Arc<Mutex<HashSet<String>>>,
    /// Whether the server filters a consumer by several subjects (2.10 and later).
    multi_filter: bool,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("server", &self.client.server_info().version)
            .field("options", &self.options)
            .finish()
    }
}

impl NatsBus {
    /// Connects with the default options (prefix `mercato`).
    pub async fn connect(url: &str) -> anyhow::Result<NatsBus> {
        NatsBus::connect_with(url, NatsOptions::default()).await
    }

    /// Connects, and checks that the server has JetStream: failing here beats failing at the
    /// first publish. The client reconnects on its own afterwards.
    pub async fn connect_with(url: &str, options: NatsOptions) -> anyhow::Result<NatsBus> {
        anyhow::ensure!(
            is_name_part(&options.prefix),
            "the NATS prefix {:?} is not a subject token (letters, digits, '-' and '_')",
            options.prefix
        );
        anyhow::ensure!(
            options.max_ack_pending >= 1,
            "max_ack_pending must be at least 1"
        );
        anyhow::ensure!(
            (1..=1024).contains(&options.partitions),
            "partitions must be between 1 and 1024, not {}",
            options.partitions
        );
        anyhow::ensure!(
            options.redelivery_backoff.is_empty()
                || options.max_deliver > options.redelivery_backoff.len() as i64 + 1,
            "a redelivery backoff needs a max_deliver above its length + 1 (NATS refuses it otherwise)"
        );
        let client = async_nats::ConnectOptions::new()
            .name("mercato")
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting")
                    }
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            })
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let js = jetstream::new(client.clone());
        // A plain request rather than `query_account`, whose answer type follows the newest
        // servers and fails to parse what older ones send.
        let reply = client
            .request("$JS.API.INFO", Default::default())
            .await
            .with_context(|| format!("JetStream is not available at {url}"))?;
        let info: serde_json::Value = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("JetStream at {url} answered something else"))?;
        if let Some(error) = info.get("error") {
            bail!("JetStream is not available at {url}: {error}");
        }
        let multi_filter = server_at_least(&client.server_info().version, (2, 10));
        Ok(NatsBus {
            client,
            js,
            options: Arc::new(options),
            streams: Default::default(),
            multi_filter,
        })
    }

    pub fn options(&self) -> &NatsOptions {
        &self.options
    }

    /// The subject an event of this type about this aggregate travels on.
    pub fn subject(&self, event_type: &str, aggregate_id: &str) -> String {
        let p = partition_of(aggregate_id, self.options.partitions);
        format!("{}.events.{event_type}.{p}", self.options.prefix)
    }

    /// The durable consumers a consumer name stands for on each stream it reads: one per
    /// partition, and the drain of an earlier release's unpartitioned one where that existed.
    pub fn durable_names(&self, consumer: &str) -> Vec<String> {
        (0..self.options.partitions)
            .map(|p| Part::Partition(p).durable(consumer))
            .chain(std::iter::once(Part::Legacy.durable(consumer)))
            .collect()
    }

    /// The event type a subject carries, when it is one of ours.
    fn type_of<'s>(&self, subject: &'s str) -> Option<&'s str> {
        let rest = subject
            .strip_prefix(self.options.prefix.as_str())?
            .strip_prefix(".events.")?;
        let mut dots = rest.match_indices('.').map(|(i, _)| i);
        let _domain_end = dots.next()?;
        Some(match dots.next() {
            Some(type_end) => &rest[..type_end],
            None => rest,
        })
    }

    /// The stream that keeps the events of this domain (the first token of their types).
    pub fn stream_name(&self, domain: &str) -> String {
        format!("{}_{}", self.options.prefix, domain).to_uppercase()
    }

    /// Creates the domain's stream unless it exists. A stream that exists is left as it is,
    /// even with other settings: an operator may have tuned it.
    async fn ensure_stream(&self, domain: &str) -> anyhow::Result<String> {
        let name = self.stream_name(domain);
        if self.streams.lock().contains(&name) {
            return Ok(name);
        }
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("Mercato {domain} events")),
            subjects: vec![format!("{}.events.{domain}.>", self.options.prefix)],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: self.options.max_age,
            duplicate_window: self.options.duplicate_window,
            num_replicas: self.options.replicas,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .with_context(|| format!("creating the NATS stream {name}"))?;
        self.streams.lock().insert(name.clone());
        Ok(name)
    }

    fn consumer_config(
        &self,
        consumer: &str,
        domain: &str,
        types: &[&str],
        part: Part,
    ) -> pull::Config {
        let backoff = if self.options.redelivery_backoff.is_empty() {
            Vec::new()
        } else {
            // The server takes the first backoff as the wait for the first delivery.
            std::iter::once(self.options.ack_wait)
                .chain(self.options.redelivery_backoff.iter().copied())
                .collect()
        };
        let mut config = pull::Config {
            durable_name: Some(part.durable(consumer)),
            description: Some(format!("Mercato consumer {consumer}")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.options.ack_wait,
            max_deliver: self.options.max_deliver,
            backoff,
            max_ack_pending: self.options.max_ack_pending,
            num_replicas: self.options.replicas,
            ..Default::default()
        };
        let prefix = &self.options.prefix;
        let tail = match part {
            Part::Partition(p) => format!(".{p}"),
            Part::Legacy => String::new(),
        };
        if self.multi_filter {
            config.filter_subjects = types
                .iter()
                .map(|t| format!("{prefix}.events.{t}{tail}"))
                .collect();
        } else {
            // One filter subject only, and changing it is refused before 2.10: every type of
            // the domain, so the consumer stays the same whatever types a new release reads.
            config.filter_subject = format!("{prefix}.events.{domain}.*{tail}");
        }
        config
    }

    /// The pull of a source's consumer, made when missing; `None` for the drain of the old
    /// layout once it is gone.
    async fn ensure_consumer(&self, source: &Source) -> anyhow::Result<Option<pull::Stream>> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound;
        let stream = self.ensure_stream(&source.domain).await?;
        let name = source.config.durable_name.as_deref().unwrap_or_default();
        let consumer: PullConsumer = if source.legacy {
            let found = self
                .js
                .get_stream(&stream)
                .await
                .with_context(|| format!("reading the NATS stream {stream}"))?
                .consumer_info(name)
                .await;
            match found {
                Ok(_) => {}
                Err(e) if e.kind() == NotFound => return Ok(None),
                Err(e) => return Err(anyhow!(e).context(format!("asking for {name} on {stream}"))),
            }
            self.js
                .get_consumer_from_stream(name, stream.as_str())
                .await
                .with_context(|| format!("finding the NATS consumer {name} on {stream}"))?
        } else {
            self.js
                .create_consumer_on_stream(source.config.clone(), &stream)
                .await
                .with_context(|| format!("creating the NATS consumer {name} on {stream}"))?
        };
        let batch = usize::try_from(self.options.max_ack_pending)
            .unwrap_or(1)
            .clamp(1, 200);
        consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map(Some)
            .with_context(|| format!("pulling from the NATS stream {stream}"))
    }
}

impl NatsBus {
    /// Releases before partitions had one durable consumer per stream, named as the consumer,
    /// reading the subjects without a partition. Where one exists, what it has not acknowledged
    /// may still wait there (and older replicas may still publish there): a second consumer,
    /// `<name>_legacy`, reads those subjects from where the old one stopped, so nothing is lost
    /// across an upgrade. It is never made again once an operator deletes it (RUNBOOK).
    async fn legacy_drain(
        &self,
        consumer: &str,
        domain: &str,
        types: &[&str],
    ) -> anyhow::Result<Option<Source>> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound;
        let stream_name = self.ensure_stream(domain).await?;
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .with_context(|| format!("reading the NATS stream {stream_name}"))?;
        let mut config = self.consumer_config(consumer, domain, types, Part::Legacy);
        let name = Part::Legacy.durable(consumer);
        let drain = |config| Source {
            domain: domain.to_owned(),
            config,
            legacy: true,
            messages: None,
        };
        match stream.consumer_info(&name).await {
            Ok(_) => return Ok(Some(drain(config))),
            Err(e) if e.kind() == NotFound => {}
            Err(e) => return Err(anyhow!(e).context(format!("asking for {name} on {stream_name}"))),
        }
        let old = match stream.consumer_info(consumer).await {
            Ok(info) => info,
            Err(e) if e.kind() == NotFound => return Ok(None),
            Err(e) => {
                return Err(anyhow!(e).context(format!("asking for {consumer} on {stream_name}")))
            }
        };
        config.deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: old.ack_floor.stream_sequence + 1,
        };
        self.js
            .create_consumer_on_stream(config.clone(), &stream_name)
            .await
            .with_context(|| format!("creating the NATS consumer {name} on {stream_name}"))?;
        tracing::warn!(%consumer, stream = %stream_name, drain = %name,
            from = old.ack_floor.stream_sequence + 1,
            "an unpartitioned consumer of an earlier release exists; reading what it left through the drain");
        Ok(Some(drain(config)))
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn ping(&self) -> anyhow::Result<()> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            bail!("NATS is not connected");
        }
        // Connected is the client's belief; JetStream answering is the fact.
        let reply = self
            .client
            .request("$JS.API.INFO", Default::default())
            .await
            .context("JetStream does not answer")?;
        let info: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        if let Some(error) = info.get("error") {
            bail!("JetStream refuses: {error}");
        }
        Ok(())
    }

    async fn lag(&self, consumer: &str) -> anyhow::Result<Option<i64>> {
        // Durable consumers per partition of every stream the service reads.
        let prefix = format!("{}_", self.options.prefix.to_uppercase());
        let mut names = Vec::new();
        let mut listed = self.js.stream_names();
        while let Some(name) = listed.next().await {
            let name = name?;
            if name.starts_with(&prefix) {
                names.push(name);
            }
        }
        let mut total = None;
        for name in names {
            let Ok(stream) = self.js.get_stream(&name).await else {
                continue;
            };
            for durable in self.durable_names(consumer) {
                if let Ok(info) = stream.consumer_info(&durable).await {
                    *total.get_or_insert(0) +=
                        (info.num_pending + info.num_ack_pending as u64) as i64;
                }
            }
        }
        Ok(total)
    }

    async fn publish(&self, env: &Envelope) -> anyhow::Result<()> {
        let domain = domain_of(&env.event_type)?;
        let subject = self.subject(&env.event_type, &env.aggregate_id);
        let payload = serde_json::to_vec(env)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            env.event_id.to_string().as_str(),
        );
        let stream = self.ensure_stream(domain).await?;
        let send = || async {
            self.js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone().into())
                .await?
                .await
        };
        let acked = match send().await {
            // Someone deleted the stream since we saw it: create it again, once.
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.streams.lock().remove(&stream);
                self.ensure_stream(domain).await?;
                send().await
            }
            other => other,
        };
        let ack = acked.map_err(|e| {
            anyhow!(e).context(format!(
                "publishing {} {} to NATS",
                env.event_type, env.event_id
            ))
        })?;
        if ack.duplicate {
            tracing::debug!(event_id = %env.event_id, stream = %ack.stream,
                "NATS dropped a duplicate publish");
        }
        Ok(())
    }

    /// Sends the whole batch before waiting for any acknowledgement (one connection keeps
    /// them in order on each stream), then waits for them all: a round trip per batch, not per
    /// event. What is stored is the prefix acknowledged before the first failure; when not even
    /// the first is, the error goes back to the relay, which tries again (a stream deleted
    /// meanwhile is created again then).
    async fn publish_batch(&self, envs: &[Envelope]) -> anyhow::Result<usize> {
        let mut sent = Vec::with_capacity(envs.len());
        for env in envs {
            let stream = self.ensure_stream(domain_of(&env.event_type)?).await?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                env.event_id.to_string().as_str(),
            );
            let payload = serde_json::to_vec(env)?;
            match self
                .js
                .publish_with_headers(
                    self.subject(&env.event_type, &env.aggregate_id),
                    headers,
                    payload.into(),
                )
                .await
            {
                Ok(ack) => sent.push((env, stream, ack)),
                Err(e) if sent.is_empty() => {
                    return Err(anyhow!(e).context(format!(
                        "publishing {} {} to NATS",
                        env.event_type, env.event_id
                    )))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sending to NATS failed part-way; the rest waits");
                    break;
                }
            }
        }
        let mut stored = 0;
        for (env, stream, ack) in sent {
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(event_id = %env.event_id, stream = %ack.stream,
                            "NATS dropped a duplicate publish");
                    }
                    stored += 1;
                }
                Err(e) => {
                    if e.kind() == PublishErrorKind::StreamNotFound {
                        self.streams.lock().remove(&stream);
                    }
                    if stored == 0 {
                        return Err(anyhow!(e).context(format!(
                            "publishing {} {} to NATS",
                            env.event_type, env.event_id
                        )));
                    }
                    tracing::warn!(error = %e, stored, "NATS did not store part of a batch; the rest is published again");
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
        let by_domain = subscription_domains("NATS", consumer, event_types)?;
        let mut sources = Vec::new();
        for (domain, types) in by_domain {
            for p in 0..self.options.partitions {
                let mut source = Source {
                    domain: domain.to_owned(),
                    config: self.consumer_config(consumer, domain, &types, Part::Partition(p)),
                    legacy: false,
                    messages: None,
                };
                source.messages = self.ensure_consumer(&source).await?;
                sources.push(source);
            }
            if let Some(source) = self.legacy_drain(consumer, domain, &types).await? {
                sources.push(source);
            }
        }
        Ok(Box::new(NatsSubscription {
            bus: self.clone(),
            consumer: consumer.to_owned(),
            wanted: event_types.iter().map(|t| t.to_string()).collect(),
            sources,
            turn: 0,
            counter: 0,
            unacked: HashMap::new(),
        }))
    }
}

/// Which durable consumer of a stream a source reads.
#[derive(Clone, Copy, Debug)]
enum Part {
    Partition(u32),
    /// The subjects without a partition, which releases before partitions published on.
    Legacy,
}

impl Part {
    fn durable(self, consumer: &str) -> String {
        match self {
            Part::Partition(p) => format!("{consumer}_p{p}"),
            Part::Legacy => format!("{consumer}_legacy"),
        }
    }
}

/// One stream partition a subscription reads, through its durable consumer there.
struct Source {
    domain: String,
    config: pull::Config,
    /// The drain of an earlier release's consumer: used while it exists, never made again.
    legacy: bool,
    /// `None` once the pull ended (its consumer was deleted, say): made again on the next `next`.
    messages: Option<pull::Stream>,
}

struct NatsSubscription {
    bus: NatsBus,
    consumer: String,
    /// The wanted types; others reach us only from servers before 2.10.
    wanted: BTreeSet<String>,
    sources: Vec<Source>,
    /// The source polled first next time, so a busy stream cannot starve the others.
    turn: usize,
    /// Numbers deliveries: stream sequences are not unique across the streams we read.
    counter: i64,
    unacked: HashMap<i64, jetstream::Message>,
}

impl NatsSubscription {
    /// Pulls again from every source whose pull ended.
    async fn revive(&mut self) -> anyhow::Result<()> {
        let mut i = 0;
        while i < self.sources.len() {
            let source = &mut self.sources[i];
            if source.messages.is_none() {
                match self.bus.ensure_consumer(source).await? {
                    Some(messages) => {
                        source.messages = Some(messages);
                        tracing::info!(consumer = %self.consumer, domain = %source.domain, "NATS pull resumed");
                    }
                    // An operator deleted the drain of the old layout: it is done.
                    None => {
                        tracing::info!(consumer = %self.consumer, domain = %source.domain,
                            "the drain of the unpartitioned consumer is gone; no longer reading it");
                        self.sources.remove(i);
                        self.turn = 0;
                        continue;
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// The next message of any source, trying them in turn.
    async fn receive(
        &mut self,
    ) -> (
        usize,
        Option<Result<jetstream::Message, pull::MessagesError>>,
    ) {
        let sources = &mut self.sources;
        let turn = &mut self.turn;
        futures::future::poll_fn(|cx| {
            let n = sources.len();
            for k in 0..n {
                let i = (*turn + k) % n;
                if let Some(messages) = sources[i].messages.as_mut() {
                    if let Poll::Ready(item) = messages.poll_next_unpin(cx) {
                        *turn = (i + 1) % n;
                        return Poll::Ready((i, item));
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Turns a message into a delivery, or settles it here when it is not for the handler.
    async fn accept(&mut self, msg: jetstream::Message) -> Option<Delivery> {
        let (stream, stream_seq, delivered) = msg
            .info()
            .map(|i| (i.stream.to_owned(), i.stream_sequence, i.delivered))
            .unwrap_or_default();
        let wanted = self
            .bus
            .type_of(msg.subject.as_str())
            .is_some_and(|t| self.wanted.contains(t));
        if !wanted {
            // Not confirmed: one that is lost comes back after ack_wait and is dropped again,
            // and waiting here would hold up every partition for a round trip.
            if let Err(e) = msg.ack().await {
                tracing::debug!(consumer = %self.consumer, error = %e, "acknowledging an unwanted event failed");
            }
            return None;
        }
        match serde_json::from_slice::<Envelope>(&msg.payload) {
            Ok(envelope) => {
                self.counter += 1;
                self.unacked.insert(self.counter, msg);
                Some(Delivery {
                    envelope,
                    seq: self.counter,
                    // Counted by the server across every replica sharing the consumer.
                    attempt: u32::try_from(delivered.max(1)).unwrap_or(u32::MAX),
                })
            }
            Err(e) => {
                // Not an envelope: no handler can ever take it, and redelivering it would hold
                // up every event behind it.
                tracing::error!(consumer = %self.consumer, subject = %msg.subject, %stream, stream_seq,
                    error = %e, "dropping a NATS message that is not an event envelope");
                if let Err(e) = msg.double_ack_with(AckKind::Term).await {
                    tracing::warn!(consumer = %self.consumer, error = %e, "terminating a malformed message failed");
                }
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        // An event handed out and not acknowledged goes back now rather than after ack_wait.
        for (_, msg) in self.unacked.drain() {
            if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(consumer = %self.consumer, error = %e,
                    "handing back an unacknowledged event failed; it returns after ack_wait");
            }
        }
        loop {
            self.revive().await?;
            let (i, item) = self.receive().await;
            match item {
                Some(Ok(msg)) => {
                    if let Some(delivery) = self.accept(msg).await {
                        return Ok(delivery);
                    }
                }
                Some(Err(e)) => {
                    // A failed pull request is retried by the client itself. Anything else
                    // (missed heartbeats: the consumer is gone or the server lost it) ends
                    // this pull, and `revive` makes the consumer and the pull again next time;
                    // nothing arrived for a while, so nothing waiting is dropped with it.
                    if e.kind() != MessagesErrorKind::Pull {
                        self.sources[i].messages = None;
                    }
                    let stream = self.bus.stream_name(&self.sources[i].domain);
                    return Err(
                        anyhow!(e).context(format!("pulling from the NATS stream {stream}"))
                    );
                }
                None => {
                    self.sources[i].messages = None;
                    let stream = self.bus.stream_name(&self.sources[i].domain);
                    bail!("the pull from the NATS stream {stream} ended; it will be made again");
                }
            }
        }
    }

    /// The first event as `next` waits for it, then whatever the pull has already brought,
    /// without waiting for more.
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        use futures::FutureExt;
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            let Some((i, item)) = self.receive().now_or_never() else {
                break;
            };
            match item {
                Some(Ok(msg)) => {
                    if let Some(d) = self.accept(msg).await {
                        batch.push(d);
                    }
                }
                // Left for the next `next` to report and revive.
                Some(Err(e)) => {
                    if e.kind() != MessagesErrorKind::Pull {
                        self.sources[i].messages = None;
                    }
                    break;
                }
                None => {
                    self.sources[i].messages = None;
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Acknowledges the batch with every double ack in flight at once.
    async fn ack_batch(&mut self, batch: &[Delivery]) -> anyhow::Result<()> {
        let msgs: Vec<(i64, jetstream::Message)> = batch
            .iter()
            .filter_map(|d| self.unacked.remove(&d.seq).map(|m| (d.seq, m)))
            .collect();
        let results = futures::future::join_all(msgs.iter().map(|(_, m)| m.double_ack())).await;
        let mut failed = None;
        for ((seq, msg), result) in msgs.into_iter().zip(results) {
            if let Err(e) = result {
                // Kept, so the next `next` hands it back instead of leaving it to ack_wait.
                self.unacked.insert(seq, msg);
                failed.get_or_insert(e);
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => Err(anyhow!(e).context("acknowledging a batch of events on NATS")),
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> anyhow::Result<()> {
        let msg = self.unacked.remove(&delivery.seq).ok_or_else(|| {
            anyhow!(
                "event {} is not outstanding on this subscription",
                delivery.envelope.event_id
            )
        })?;
        match msg.double_ack().await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Kept, so the next `next` hands it back instead of leaving it to ack_wait.
                self.unacked.insert(delivery.seq, msg);
                Err(anyhow!(e).context(format!(
                    "acknowledging event {} on NATS",
                    delivery.envelope.event_id
                )))
            }
        }
    }
}

/// Whether a server version such as `2.10.3` is at least `major.minor`.
fn server_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_name_their_domain() {
        assert_eq!(domain_of("order.created").unwrap(), "order");
        assert_eq!(
            domain_of("inventory.reservation_failed").unwrap(),
            "inventory"
        );
        for bad in [
            "order", "order.", ".created", "order.*", "order.>", "a b.c", "",
        ] {
            assert!(domain_of(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn server_versions_compare_by_major_and_minor() {
        assert!(!server_at_least("2.9.10", (2, 10)));
        assert!(server_at_least("2.10.0", (2, 10)));
        assert!(server_at_least("2.11.1-beta", (2, 10)));
        assert!(server_at_least("3.0.0", (2, 10)));
        assert!(!server_at_least("", (2, 10)));
    }
}
