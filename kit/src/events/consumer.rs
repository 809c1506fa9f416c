//! Idempotent event consumers.
//!
//! A consumer handles each event in one transaction of its own service's database that also
//! records the event id in the `inbox`; a redelivered event finds its id there and changes
//! nothing. A handler that fails is retried with exponential backoff; after `max_attempts` the
//! event is parked in `dead_letters` (and acknowledged, so it does not block the ones behind
//! it). An admin lists parked events and replays them through the same path ([`Consumer::replay`];
//! the routes are [`crate::http::admin::dead_letters_router`]).
//!
//! Batches. A consumer takes what the bus has ready (up to [`BATCH`] events, waiting only for the
//! first) and handles it in one transaction: each event's inbox row and effect, in the order the
//! bus gave them, then one commit and one acknowledgement for all. Events of one order reach a
//! consumer in order, so handling them in sequence inside the batch keeps that order; what costs
//! is the commit, and a busy saga now pays it once per batch instead of once per event. When
//! anything in a batch fails, the transaction rolls back as a whole and the batch is handled
//! again one event at a time, with the retries and parking below, so one bad event never holds
//! up or undoes the others for longer than that.
//!
//! Those retries happen inside one delivery. An event whose handling never returns an error
//! because it kills the process, or hangs until the bus hands it to another replica, is
//! redelivered instead; the bus counts those deliveries ([`Delivery::attempt`]), and once the
//! count passes `max_deliveries` the event is parked without running the handler again.

use super::{Bus, Delivery, Envelope};
use crate::backoff::Backoff;
use crate::db::{Db, Tx};
use crate::time::{now_us, to_rfc3339};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What a service does with an event, inside the transaction the consumer opened.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> anyhow::Result<()>;
}

#[derive(Clone)]
pub struct Consumer {
    name: String,
    db: Db,
    handler: Arc<dyn EventHandler>,
    max_attempts: u32,
    max_deliveries: u32,
    backoff: Duration,
    batch: usize,
    faults: TestFaults,
}

/// Event types a consumer is told to fail, so a test can make a dead letter on purpose and
/// then replay it. Only `MERCATO_TEST_HOOKS=true` ([`Consumer::with_test_hooks`]) arms it and
/// mounts its admin route (in [`crate::http::admin`]); otherwise the set stays empty and nothing can fill it.
#[derive(Clone, Default)]
struct TestFaults {
    armed: bool,
    failing: Arc<parking_lot::RwLock<std::collections::BTreeSet<String>>>,
}

impl TestFaults {
    fn check(&self, env: &Envelope) -> anyhow::Result<()> {
        if self.armed && self.failing.read().contains(&env.event_type) {
            anyhow::bail!(
                "told to fail {} events (test hook, MERCATO_TEST_HOOKS)",
                env.event_type
            );
        }
        Ok(())
    }
}

/// The most events handled in one transaction. Big enough that a burst costs a handful of
/// commits; small enough that a batch holds the writer for a few milliseconds at most.
pub const BATCH: usize = 128;

/// Deliveries of one event before it is parked unhandled: enough for a few crashes or
/// redeliveries of ordinary bad luck (a deploy, a lost replica), few enough that a poison event
/// stops taking replicas down soon.
pub const MAX_DELIVERIES: u32 = 10;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Parked,
}

impl Consumer {
    pub fn new(name: &str, db: Db, handler: Arc<dyn EventHandler>) -> Consumer {
        Consumer {
            name: name.to_owned(),
            db,
            handler,
            max_attempts: 5,
            max_deliveries: MAX_DELIVERIES,
            backoff: Duration::from_millis(50),
            batch: BATCH,
            faults: TestFaults::default(),
        }
    }

    /// With `on` (the service's `MERCATO_TEST_HOOKS`), an admin may tell this consumer to fail
    /// events of some types (`PUT /api/v1/admin/test/failing-events`).
    pub fn with_test_hooks(mut self, on: bool) -> Self {
        self.faults.armed = on;
        self
    }

    /// Handles at most `max` events per transaction (1: one transaction per event).
    pub fn with_batch(mut self, max: usize) -> Self {
        self.batch = max.max(1);
        self
    }

    pub fn with_retries(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Parks an event delivered more than `max_deliveries` times without running its handler
    /// again (see the module doc).
    pub fn with_delivery_limit(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries.max(1);
        self
    }

    /// Records the event in the inbox within `tx`; false when it was handled before.
    async fn claim(&self, tx: &mut Tx, env: &Envelope, now: i64) -> anyhow::Result<bool> {
        Ok(crate::db::query(
            "INSERT INTO inbox (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(&self.name)
        .bind(env.event_id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1)
    }

    fn committed(&self) {
        self.db.outbox_waker().wake();
    }

    async fn attempt(&self, env: &Envelope) -> anyhow::Result<Outcome> {
        let mut tx = self.db.begin().await?;
        if !self.claim(&mut tx, env, now_us()).await? {
            return Ok(Outcome::Duplicate);
        }
        self.faults.check(env)?;
        self.handler.handle(&mut tx, env).await?;
        tx.commit().await?;
        self.committed();
        Ok(Outcome::Applied)
    }

    /// Handles every event of `batch` in one transaction, in order. Any failure rolls the
    /// whole batch back and is returned; nothing of it is then applied.
    pub async fn process_batch(&self, batch: &[&Envelope]) -> anyhow::Result<Vec<Outcome>> {
        let mut tx = self.db.begin().await?;
        let now = now_us();
        let mut outcomes = Vec::with_capacity(batch.len());
        for env in batch {
            if self.claim(&mut tx, env, now).await? {
                // Each event keeps its own trace, a child of the span that wrote it.
                let span = super::process_span(&self.name, env);
                self.faults.check(env)?;
                self.handler.handle(&mut tx, env).instrument(span).await?;
                outcomes.push(Outcome::Applied);
            } else {
                outcomes.push(Outcome::Duplicate);
            }
        }
        tx.commit().await?;
        self.committed();
        Ok(outcomes)
    }

    /// Handles one event: applied once, skipped when already applied, parked when it keeps
    /// failing.
    pub async fn process(&self, env: &Envelope) -> anyhow::Result<Outcome> {
        let mut last_error = String::new();
        for attempt in 1..=self.max_attempts {
            match self.attempt(env).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    last_error = format!("{e:#}");
                    tracing::warn!(consumer = %self.name, event_id = %env.event_id, event_type = %env.event_type,
                        attempt, error = %last_error, "event handler failed");
                    if attempt < self.max_attempts {
                        let wait = Backoff::new(self.backoff, MAX_HANDLER_BACKOFF)
                            .random_delay(attempt - 1);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        self.park(env, &last_error, self.max_attempts).await?;
        Ok(Outcome::Parked)
    }

    /// Handles one delivery from the bus: as [`process`](Self::process), unless the bus has
    /// delivered it more than `max_deliveries` times already; then the handler, which
    /// evidently never finished with it, is not run again and the event is parked.
    pub async fn deliver(&self, delivery: &Delivery) -> anyhow::Result<Outcome> {
        let env = &delivery.envelope;
        if delivery.attempt <= self.max_deliveries {
            return self.process(env).await;
        }
        // Applied by a handler whose acknowledgement was lost: nothing to park.
        let seen =
            crate::db::query("SELECT 1 AS seen FROM inbox WHERE consumer = $1 AND event_id = $2")
                .bind(&self.name)
                .bind(env.event_id.to_string())
                .fetch_optional(self.db.reader())
                .await?
                .is_some();
        if seen {
            return Ok(Outcome::Duplicate);
        }
        let error = format!(
            "delivered {} times without being acknowledged (the limit is {}): its handling \
             crashed or hung every time, so it was not handled again",
            delivery.attempt, self.max_deliveries
        );
        self.park(env, &error, delivery.attempt).await?;
        Ok(Outcome::Parked)
    }

    async fn park(&self, env: &Envelope, error: &str, attempts: u32) -> anyhow::Result<()> {
        tracing::error!(consumer = %self.name, event_id = %env.event_id, event_type = %env.event_type, error,
            "event parked in dead letters");
        // Once: parked but not acknowledged (the ack was lost), the event comes again and may
        // be parked again; an open dead letter for it is enough.
        crate::db::query(
            "INSERT INTO dead_letters (id, consumer, event_id, event_type, envelope, error, attempts, parked_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE NOT EXISTS \
             (SELECT 1 FROM dead_letters WHERE consumer = $2 AND event_id = $3 AND replayed_at IS NULL)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&self.name)
        .bind(env.event_id.to_string())
        .bind(&env.event_type)
        .bind(serde_json::to_string(env)?)
        .bind(error)
        .bind(attempts as i64)
        .bind(now_us())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Consumes `event_types` from the bus until `stop`.
    pub async fn run(
        self,
        bus: Arc<dyn Bus>,
        event_types: Vec<&'static str>,
        stop: CancellationToken,
    ) {
        let mut sub = loop {
            match bus.subscribe(&self.name, &event_types).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "subscribing failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let batch = tokio::select! {
                _ = stop.cancelled() => return,
                b = sub.next_batch(self.batch) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "receiving from the bus failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    continue;
                }
            };
            // Not acknowledged unless handled (or parked): a stop mid-way redelivers it.
            if self.handle_batch(&batch).await {
                if let Err(e) = sub.ack_batch(&batch).await {
                    tracing::warn!(consumer = %self.name, error = %e, "ack failed; the events will come again");
                }
                continue;
            }
            for delivery in &batch {
                // When not even parking worked (the database is down), the same delivery is
                // tried again here rather than asked for anew, so an outage does not count as
                // deliveries towards the limit.
                loop {
                    let span = super::process_span(&self.name, &delivery.envelope);
                    match self.deliver(delivery).instrument(span).await {
                        Ok(_) => {
                            if let Err(e) = sub.ack_batch(std::slice::from_ref(delivery)).await {
                                tracing::warn!(consumer = %self.name, error = %e, "ack failed; the event will come again");
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(consumer = %self.name, error = %e, "could not handle or park an event; will retry");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    /// The fast path: the whole batch in one transaction. False when the batch needs the slow
    /// path (one event at a time): a handler failed, or an event comes again. An event that
    /// killed the process comes again with the batch it was in; one at a time, the others are
    /// handled before it takes the process down again, instead of counting its deliveries.
    async fn handle_batch(&self, batch: &[Delivery]) -> bool {
        if batch.len() < 2 || batch.iter().any(|d| d.attempt > 1) {
            return false;
        }
        let envelopes: Vec<&Envelope> = batch.iter().map(|d| &d.envelope).collect();
        match self.process_batch(&envelopes).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(consumer = %self.name, events = batch.len(), error = %format!("{e:#}"),
                    "a batch failed and was rolled back; handling its events one at a time");
                false
            }
        }
    }
}

/// The longest wait between two attempts at one event: longer only holds up the events
/// behind it.
const MAX_HANDLER_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Serialize, utoipa::ToSchema, Debug)]
pub struct DeadLetter {
    pub id: String,
    pub consumer: String,
    pub event_id: String,
    pub event_type: String,
    pub error: String,
    pub attempts: i64,
    pub parked_at: String,
    pub replayed_at: Option<String>,
    #[schema(value_type = Object)]
    pub envelope: serde_json::Value,
}

pub async fn dead_letters(db: &Db) -> Result<Vec<DeadLetter>, crate::db::Error> {
    dead_letters_where(db, None, i64::MAX).await
}

/// The dead letters whose envelope mentions `id` (an order's, a payment's), at most `limit`.
pub async fn dead_letters_mentioning(
    db: &Db,
    id: uuid::Uuid,
    limit: i64,
) -> Result<Vec<DeadLetter>, crate::db::Error> {
    dead_letters_where(db, Some(format!("%{id}%")), limit).await
}

async fn dead_letters_where(
    db: &Db,
    pattern: Option<String>,
    limit: i64,
) -> Result<Vec<DeadLetter>, crate::db::Error> {
    let rows = crate::db::query(
        "SELECT id, consumer, event_id, event_type, envelope, error, attempts, parked_at, replayed_at \
         FROM dead_letters WHERE ($1 IS NULL OR envelope LIKE $1) ORDER BY parked_at LIMIT $2",
    )
    .bind(pattern)
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                id: r.try_get("id")?,
                consumer: r.try_get("consumer")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                error: r.try_get("error")?,
                attempts: r.try_get("attempts")?,
                parked_at: to_rfc3339(r.try_get("parked_at")?),
                replayed_at: r.try_get::<Option<i64>, _>("replayed_at")?.map(to_rfc3339),
                envelope: serde_json::from_str(&r.try_get::<String, _>("envelope")?)
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Why a dead letter was not replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayRefused {
    #[error("no dead letter {0}")]
    NotFound(uuid::Uuid),
    #[error("this dead letter was replayed already")]
    AlreadyReplayed,
    /// The parked envelope no longer parses: stored data is damaged, nothing a caller did.
    #[error("the parked envelope does not parse: {0}")]
    Unreadable(serde_json::Error),
    #[error("the handler failed again: {0:#}")]
    FailedAgain(anyhow::Error),
    #[error(transparent)]
    Storage(#[from] crate::db::Error),
}

impl Consumer {
    /// Whether this consumer was built with test hooks (see [`Consumer::with_test_hooks`]).
    pub fn has_test_hooks(&self) -> bool {
        self.faults.armed
    }

    /// The event types this consumer fails on purpose (test hooks only).
    pub fn failing_events(&self) -> std::collections::BTreeSet<String> {
        self.faults.failing.read().clone()
    }

    /// Makes this consumer fail events of these types from now on (test hooks only: without
    /// them the set is never read).
    pub fn fail_events(&self, event_types: std::collections::BTreeSet<String>) {
        tracing::warn!(consumer = %self.name, ?event_types,
            "test hook: this consumer now fails these event types");
        *self.faults.failing.write() = event_types;
    }

    /// Hands the dead letter `id` to the handler once more, and marks it replayed when the
    /// handler took it. One attempt: an admin replaying wants the answer now, not after a
    /// backoff series.
    pub async fn replay(&self, id: uuid::Uuid) -> Result<Outcome, ReplayRefused> {
        let row = crate::db::query("SELECT envelope, replayed_at FROM dead_letters WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.reader())
            .await?
            .ok_or(ReplayRefused::NotFound(id))?;
        if row.try_get::<Option<i64>, _>("replayed_at")?.is_some() {
            return Err(ReplayRefused::AlreadyReplayed);
        }
        let env: Envelope = serde_json::from_str(&row.try_get::<String, _>("envelope")?)
            .map_err(ReplayRefused::Unreadable)?;
        let outcome = self
            .attempt(&env)
            .await
            .map_err(ReplayRefused::FailedAgain)?;
        crate::db::query("UPDATE dead_letters SET replayed_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(now_us())
            .execute(self.db.writer())
            .await?;
        Ok(outcome)
    }

    /// The events this consumer parked, oldest first, replayed or not.
    pub async fn parked(&self) -> Result<Vec<DeadLetter>, crate::db::Error> {
        dead_letters(&self.db).await
    }
}
