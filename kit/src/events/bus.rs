//! The event bus interface, and the embedded bus behind it.
//!
//! A bus keeps published events durably and delivers them to named consumers, each of which
//! acknowledges an event only after its handler's transaction committed. An event that was not
//! acknowledged is delivered again, also after a restart. Publishing the same `event_id` twice
//! stores it once. NATS JetStream (distributed mode) implements the same interface.
//!
//! The embedded bus is a small durable log in its own SQLite file: one table of messages and
//! one cursor per consumer. Consumers handle events one at a time in publish order, which is
//! all the embedded mode needs and keeps per-aggregate order for free. It counts how often it
//! handed out each event a consumer has not acknowledged yet (`bus_deliveries`), durably, so a
//! handler that crashes the process every time is noticed after the restarts too.

use super::Envelope;
use crate::db::Db;
use crate::time::now_us;
use std::sync::Arc;
use tokio::sync::watch;

#[async_trait::async_trait]
pub trait Bus: Send + Sync {
    /// Stores the event for delivery. Idempotent per `event_id`.
    async fn publish(&self, env: &Envelope) -> anyhow::Result<()>;

    /// Stores events in this order; returns how many of them, from the first, are stored
    /// (all of them, or an error when not even the first is). A relay hands its whole batch,
    /// so a bus that can store several at once (one transaction, pipelined acknowledgements)
    /// should.
    async fn publish_batch(&self, envs: &[Envelope]) -> anyhow::Result<usize> {
        for (i, env) in envs.iter().enumerate() {
            if let Err(e) = self.publish(env).await {
                if i == 0 {
                    return Err(e);
                }
                tracing::warn!(error = %e, stored = i, "publishing a batch stopped part-way");
                return Ok(i);
            }
        }
        Ok(envs.len())
    }

    /// A durable subscription of `consumer` to these event types. Replicas of one service use
    /// the same consumer name and share the work.
    async fn subscribe(
        &self,
        consumer: &str,
        event_types: &[&str],
    ) -> anyhow::Result<Box<dyn Subscription>>;

    /// Whether the bus answers now (readiness): a round trip, not a cached state.
    async fn ping(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Whether `consumer`'s subscription in this process receives events yet (readiness). A
    /// bus whose subscriptions first join a group (Kafka) says no until the group has given
    /// them their partitions; the others deliver from the moment a subscription exists, and
    /// what was published before waits for it, so they say yes.
    async fn receiving(&self, consumer: &str) -> anyhow::Result<bool> {
        let _ = consumer;
        Ok(true)
    }

    /// Events stored for `consumer` that it has not finished yet (the consumer-lag metric);
    /// `None` when the consumer does not exist (yet).
    async fn lag(&self, consumer: &str) -> anyhow::Result<Option<i64>> {
        let _ = consumer;
        Ok(None)
    }

    /// The same lag per topic and partition, for a bus that has partitions (Kafka).
    async fn lag_by_partition(
        &self,
        consumer: &str,
    ) -> anyhow::Result<Option<Vec<(String, i32, i64)>>> {
        let _ = consumer;
        Ok(None)
    }
}

#[async_trait::async_trait]
pub trait Subscription: Send {
    /// The next event to handle; waits until there is one.
    async fn next(&mut self) -> anyhow::Result<Delivery>;

    /// Acknowledges the event last returned by `next`: it will not be delivered again.
    async fn ack(&mut self, delivery: &Delivery) -> anyhow::Result<()>;

    /// Up to `max` events in the order this subscription must see them: waits for the first,
    /// then takes only what is ready without waiting. A consumer handles a batch in one
    /// transaction, so a bus that can hand out several at once should (the default hands out
    /// one).
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        let _ = max;
        Ok(vec![self.next().await?])
    }

    /// Acknowledges every delivery of a batch from `next_batch`, each of which was handled or
    /// parked.
    async fn ack_batch(&mut self, batch: &[Delivery]) -> anyhow::Result<()> {
        for d in batch {
            self.ack(d).await?;
        }
        Ok(())
    }
}

/// One delivery of an event to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub envelope: Envelope,
    /// The bus's position of this event, for acknowledging it.
    pub seq: i64,
    /// How many times this event has been handed to this consumer, this time included (1 the
    /// first time). A consumer that died or hung while handling it raises the count, and the
    /// kit's [`Consumer`](super::Consumer) parks an event whose count passes its limit.
    pub attempt: u32,
}

/// The embedded bus: a durable log in a SQLite (or any) database of its own.
#[derive(Clone)]
pub struct EmbeddedBus {
    db: Db,
    published: Arc<watch::Sender<u64>>,
    /// Publishes one at a time, so events become visible in `seq` order and a consumer's
    /// cursor can never pass an event that commits late. On PostgreSQL an advisory lock does
    /// the same across processes; they are woken only by a one-second safety poll, though,
    /// so several processes are better served by NATS JetStream.
    publish_lock: Arc<tokio::sync::Mutex<()>>,
    /// Per consumer, the stretch of the log past its stored cursor that its subscription in
    /// this process found empty of its types (see `EmbeddedSubscription::none_for`), so
    /// the lag counts from where the consumer really is.
    none_for: NoneFor,
}

type NoneFor = Arc<parking_lot::Mutex<std::collections::HashMap<String, (i64, i64)>>>;

impl EmbeddedBus {
    pub async fn open(url: &str) -> anyhow::Result<EmbeddedBus> {
        let none = crate::db::Migrations {
            sqlite: sqlx::migrate::Migrator::DEFAULT,
            postgres: sqlx::migrate::Migrator::DEFAULT,
        };
        let db = Db::connect(url, "bus", 4, &none).await?;
        // Created here rather than by a migration: this table belongs to the bus alone, and a
        // migration version of its own would trip any other migrator opening the same file.
        let mut tx = db.begin().await?;
        if db.backend() == crate::db::Backend::Postgres {
            // Two processes opening the bus at once would race on the catalog.
            crate::db::query("SELECT pg_advisory_xact_lock(7243017002)")
                .execute(&mut *tx)
                .await?;
        }
        crate::db::query(
            "CREATE TABLE IF NOT EXISTS bus_deliveries (consumer TEXT NOT NULL, seq BIGINT NOT NULL, \
             delivered BIGINT NOT NULL, PRIMARY KEY (consumer, seq))",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(EmbeddedBus {
            db,
            published: Arc::new(watch::channel(0).0),
            publish_lock: Default::default(),
            none_for: Default::default(),
        })
    }

    /// Every stored event, oldest first (for tests and audits).
    pub async fn all(&self) -> anyhow::Result<Vec<Envelope>> {
        let rows = crate::db::query("SELECT envelope FROM bus_messages ORDER BY seq")
            .fetch_all(self.db.reader())
            .await?;
        rows.iter()
            .map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>("envelope")?)?))
            .collect()
    }

    /// Moves every consumer back to the start of the log, so every event is delivered again:
    /// what a bus that lost its acknowledgements would do. For tests and drills.
    pub async fn rewind_all_consumers(&self) -> anyhow::Result<()> {
        crate::db::query("UPDATE bus_cursors SET last_seq = 0, handed_out = 0")
            .execute(self.db.writer())
            .await?;
        crate::db::query("DELETE FROM bus_deliveries")
            .execute(self.db.writer())
            .await?;
        self.published.send_modify(|n| *n += 1);
        Ok(())
    }

    /// How many stored events each consumer has yet to acknowledge (of the types it reads,
    /// or not: a consumer skips the others as it passes them).
    pub async fn lag(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = crate::db::query("SELECT consumer, last_seq FROM bus_cursors ORDER BY consumer")
            .fetch_all(self.db.reader())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let consumer: String = r.try_get("consumer")?;
            let cursor: i64 = r.try_get("last_seq")?;
            let from = skip_known(self.none_for.lock().get(&consumer).copied(), cursor);
            let behind: i64 =
                crate::db::query("SELECT COUNT(*) AS behind FROM bus_messages WHERE seq > $1")
                    .bind(from)
                    .fetch_one(self.db.reader())
                    .await?
                    .try_get("behind")?;
            out.push((consumer, behind));
        }
        Ok(out)
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}

#[async_trait::async_trait]
impl Bus for EmbeddedBus {
    async fn ping(&self) -> anyhow::Result<()> {
        self.db.ping().await?;
        Ok(())
    }

    async fn lag(&self, consumer: &str) -> anyhow::Result<Option<i64>> {
        Ok(EmbeddedBus::lag(self)
            .await?
            .into_iter()
            .find(|(c, _)| c == consumer)
            .map(|(_, n)| n))
    }

    async fn publish(&self, env: &Envelope) -> anyhow::Result<()> {
        self.publish_batch(std::slice::from_ref(env)).await?;
        Ok(())
    }

    async fn publish_batch(&self, envs: &[Envelope]) -> anyhow::Result<usize> {
        if envs.is_empty() {
            return Ok(0);
        }
        let _one_at_a_time = self.publish_lock.lock().await;
        let mut tx = self.db.begin().await?;
        if self.db.backend() == crate::db::Backend::Postgres {
            // Other processes may publish to the same log: a transaction-scoped advisory lock
            // makes them take turns, so sequence numbers become visible in order everywhere.
            crate::db::query("SELECT pg_advisory_xact_lock(7243017001)")
                .execute(&mut *tx)
                .await?;
        }
        let now = now_us();
        for env in envs {
            crate::db::query(
                "INSERT INTO bus_messages (event_id, event_type, envelope, stored_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(env.event_id.to_string())
            .bind(&env.event_type)
            .bind(serde_json::to_string(env)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.published.send_modify(|n| *n += 1);
        Ok(envs.len())
    }

    async fn subscribe(
        &self,
        consumer: &str,
        event_types: &[&str],
    ) -> anyhow::Result<Box<dyn Subscription>> {
        crate::db::query("INSERT INTO bus_cursors (consumer, last_seq) VALUES ($1, 0) ON CONFLICT (consumer) DO NOTHING")
            .bind(consumer)
            .execute(self.db.writer())
            .await?;
        // Types are few and fixed, so they are inlined as a list of placeholders.
        let marks = crate::db::placeholders(3, event_types.len());
        Ok(Box::new(EmbeddedSubscription {
            db: self.db.clone(),
            consumer: consumer.to_owned(),
            types: event_types.iter().map(|s| s.to_string()).collect(),
            select: format!(
                "SELECT seq, envelope FROM bus_messages WHERE seq > $1 AND event_type IN ({marks}) \
                 ORDER BY seq LIMIT $2"
            ),
            published: self.published.subscribe(),
            none_for: self.none_for.clone(),
            advanced_at: std::time::Instant::now(),
        }))
    }
}

struct EmbeddedSubscription {
    db: Db,
    consumer: String,
    types: Vec<String>,
    select: String,
    published: watch::Receiver<u64>,
    /// Per consumer, a stretch of the log `(from, to]` known to hold no event of its types.
    /// The log only grows, in order, so that stays true; a look from a cursor inside it
    /// starts at its end. It lets an idle consumer skip the stored cursor's move on most
    /// wake-ups (every publish wakes every consumer) without scanning the other types' events
    /// again. Shared with the bus, whose lag counts from there too.
    none_for: NoneFor,
    /// When the stored cursor was last moved past other types' events.
    advanced_at: std::time::Instant,
}

/// Where a look past `cursor` starts: past a stretch known to hold none of a consumer's
/// types, when the cursor is inside it. A cursor before it (rewound) starts where it is.
fn skip_known(none: Option<(i64, i64)>, cursor: i64) -> i64 {
    match none {
        Some((from, to)) if from <= cursor && cursor < to => to,
        _ => cursor,
    }
}

/// How often, at most, an idle consumer moves its stored cursor past events of other types.
/// The cursor says how far behind the consumer is (the lag metric, audits); a second late is
/// soon enough for that, and it saves a write on the bus's single writer per publish per idle
/// consumer.
const IDLE_ADVANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl EmbeddedSubscription {
    async fn advance(&mut self, seq: i64) -> anyhow::Result<()> {
        crate::db::query(
            "UPDATE bus_cursors SET last_seq = $2 WHERE consumer = $1 AND last_seq < $2",
        )
        .bind(&self.consumer)
        .bind(seq)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Counts one more delivery of `seq`, an event handed out before, to this consumer;
    /// returns the count. The first count is 2: the batch that first handed it out was the
    /// first delivery, uncounted.
    async fn count_delivery(&self, seq: i64) -> anyhow::Result<u32> {
        let delivered: i64 = crate::db::query(
            "INSERT INTO bus_deliveries (consumer, seq, delivered) VALUES ($1, $2, 2) \
             ON CONFLICT (consumer, seq) DO UPDATE SET delivered = bus_deliveries.delivered + 1 \
             RETURNING delivered",
        )
        .bind(&self.consumer)
        .bind(seq)
        .fetch_one(self.db.writer())
        .await?
        .try_get("delivered")?;
        Ok(u32::try_from(delivered).unwrap_or(u32::MAX))
    }
}

#[async_trait::async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        let mut one = self.next_batch(1).await?;
        one.pop()
            .ok_or_else(|| anyhow::anyhow!("the bus handed out an empty batch"))
    }

    async fn ack(&mut self, delivery: &Delivery) -> anyhow::Result<()> {
        self.ack_batch(std::slice::from_ref(delivery)).await
    }

    /// Waits for the first event of this consumer's types past its cursor, then takes up to
    /// `max` of them. Before handing a batch out it records how far it reached
    /// (`handed_out`): a batch that was never acknowledged (the process stopped or died while
    /// handling it) is then handed out again one event at a time, each delivery counted in
    /// `bus_deliveries`, until past that mark; an event whose handling kills the process every
    /// time is found that way and parked. Fresh batches cost one write, not one per event.
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        loop {
            // Mark the current publish count as seen *before* looking, so a publish that
            // lands after the look still wakes us.
            self.published.borrow_and_update();
            // The stored cursor is the truth (an operator may have rewound it).
            let at = crate::db::query(
                "SELECT last_seq, handed_out FROM bus_cursors WHERE consumer = $1",
            )
            .bind(&self.consumer)
            .fetch_one(self.db.reader())
            .await?;
            let cursor: i64 = at.try_get("last_seq")?;
            let handed_out: i64 = at.try_get("handed_out")?;
            // The end of the log is read *before* looking for our next events: everything up
            // to it is then covered by the look, so moving the cursor there skips nothing.
            let end: Option<i64> = crate::db::query("SELECT MAX(seq) AS end_seq FROM bus_messages")
                .fetch_one(self.db.reader())
                .await?
                .try_get("end_seq")?;
            let from = skip_known(self.none_for.lock().get(&self.consumer).copied(), cursor);
            let mut q = crate::db::query(&self.select)
                .bind(from)
                .bind(max.max(1) as i64);
            for t in &self.types {
                q = q.bind(t);
            }
            let rows = q.fetch_all(self.db.reader()).await?;
            if let Some(first) = rows.first() {
                let seq: i64 = first.try_get("seq")?;
                if seq <= handed_out {
                    let attempt = self.count_delivery(seq).await?;
                    let envelope: Envelope =
                        serde_json::from_str(&first.try_get::<String, _>("envelope")?)?;
                    return Ok(vec![Delivery {
                        envelope,
                        seq,
                        attempt,
                    }]);
                }
                let mut batch = Vec::with_capacity(rows.len());
                for r in &rows {
                    batch.push(Delivery {
                        envelope: serde_json::from_str(&r.try_get::<String, _>("envelope")?)?,
                        seq: r.try_get("seq")?,
                        attempt: 1,
                    });
                }
                let last = batch.last().map(|d| d.seq).unwrap_or(seq);
                crate::db::query("UPDATE bus_cursors SET handed_out = $2 WHERE consumer = $1")
                    .bind(&self.consumer)
                    .bind(last)
                    .execute(self.db.writer())
                    .await?;
                return Ok(batch);
            }
            // Nothing for us up to that end: move past the events of other types, so the
            // cursor shows how far behind this consumer really is; at most once a second,
            // remembering the stretch meanwhile.
            if let Some(end) = end.filter(|e| *e > cursor) {
                if self.advanced_at.elapsed() >= IDLE_ADVANCE_EVERY {
                    self.advance(end).await?;
                    self.advanced_at = std::time::Instant::now();
                    self.none_for.lock().remove(&self.consumer);
                } else {
                    // Scanned from `from`, and `(cursor, from]` was known empty already.
                    self.none_for
                        .lock()
                        .insert(self.consumer.clone(), (cursor, end));
                }
            }
            // Publishes in this process wake us at once. The timeout is only a safety net for
            // a log shared through PostgreSQL by several processes, which cannot wake us.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), self.published.changed())
                    .await;
        }
    }

    async fn ack_batch(&mut self, batch: &[Delivery]) -> anyhow::Result<()> {
        let Some(last) = batch.iter().map(|d| d.seq).max() else {
            return Ok(());
        };
        // One commit for both: every write waits for the bus file's single writer, and an
        // acknowledgement is made for every batch by every consumer.
        let mut tx = self.db.begin().await?;
        crate::db::query(
            "UPDATE bus_cursors SET last_seq = $2 WHERE consumer = $1 AND last_seq < $2",
        )
        .bind(&self.consumer)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        // Behind the cursor a count means nothing (a rewind starts them all again).
        crate::db::query("DELETE FROM bus_deliveries WHERE consumer = $1 AND seq <= $2")
            .bind(&self.consumer)
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
