//! The outbox relay: publishes a service's committed outbox rows to the bus, in `seq` order.
//!
//! It wakes when a transaction that wrote an outbox row commits ([`OutboxWaker::wake`]), so an
//! event leaves within milliseconds, not at the next tick of a timer. It also polls: a row
//! committed without a wake (by a process that died just after committing, or by another
//! replica whose relay is gone) is published at the next look. Publishing is at-least-once: a
//! crash between publish and marking the row publishes it again, which the bus (dedup by event
//! id) and the consumers (inbox) absorb.
//!
//! Replicas. On SQLite one process owns the database, so the relay reads pending rows and marks
//! each after publishing it. On PostgreSQL every replica of a service runs a relay over the same
//! outbox, and a relay claims its batch in a transaction with `FOR UPDATE SKIP LOCKED`,
//! publishes it, marks it and commits: two relays never hold the same row, so a row is
//! published once (a relay that dies mid-batch rolls back and the rows are published again).
//!
//! Order. One relay publishes in `seq` order, so events leave in the order their transactions
//! wrote them (per aggregate that is the order of its changes: a change holds the aggregate's
//! row lock until it commits). SKIP LOCKED alone would let a second relay publish the rows
//! *behind* the batch another relay is still publishing, overtaking them. So a relay publishes
//! only the part of its claim that no other relay's rows precede: it compares its claim with
//! every pending row up to the claim's end and stops at the first one it does not hold. When
//! that cuts its claim short, it releases the rest and looks again shortly; the relay ahead of
//! it usually publishes them first anyway. Relays therefore take turns rather than work side by
//! side, and events leave in `seq` order across replicas, which costs nothing that matters: a
//! service's outbox is small and publishing is cheap. (Handlers tolerate out-of-order events,
//! but order keeps the saga from taking detours.)

use super::{pending, Bus, Envelope};
use crate::db::{Backend, Db, OutboxWaker};
use crate::time::now_us;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a relay looks without being woken. One process owns a SQLite database, so there
/// it only catches commits that forgot to wake it.
const POLL_SQLITE: Duration = Duration::from_secs(5);
/// On PostgreSQL another replica's commit cannot wake this relay.
const POLL_POSTGRES: Duration = Duration::from_secs(1);
/// How soon to look again after finding the head of the outbox held by another relay.
const BUSY_RETRY: Duration = Duration::from_millis(100);
const BATCH: i64 = 200;

pub struct Relay {
    db: Db,
    bus: Arc<dyn Bus>,
    waker: OutboxWaker,
    poll: Duration,
}

/// What one drain did.
#[derive(Debug, Default)]
struct Drained {
    published: usize,
    /// Stopped behind rows another relay holds.
    behind_another: bool,
}

/// Marks exactly these outbox rows published. Not a range: on PostgreSQL a row inside the
/// range that was still uncommitted when the batch was read (a lower `seq` committing late)
/// would be visible to the marking statement and marked without ever being published.
async fn mark<'c>(
    on: impl Into<crate::db::Exec<'c>>,
    seqs: &[i64],
) -> Result<(), crate::db::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE outbox SET published_at = $1 WHERE seq IN ({}) AND published_at IS NULL",
        crate::db::placeholders(2, seqs.len())
    );
    let mut q = crate::db::query(&sql).bind(now_us());
    for seq in seqs {
        q = q.bind(*seq);
    }
    q.execute(on).await?;
    Ok(())
}

impl Relay {
    /// A relay over `db`'s outbox, woken by `db`'s [`OutboxWaker`]: the one waker that every
    /// commit writing to this outbox wakes (consumers, idempotent handlers, the service's own
    /// code), so none of them can wake a different relay or none.
    pub fn new(db: Db, bus: Arc<dyn Bus>) -> Relay {
        let poll = match db.backend() {
            Backend::Sqlite => POLL_SQLITE,
            Backend::Postgres => POLL_POSTGRES,
        };
        Relay {
            waker: db.outbox_waker(),
            db,
            bus,
            poll,
        }
    }

    /// Looks at the outbox at least this often, woken or not.
    pub fn with_poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Publishes every pending row this relay may publish now; returns how many. On PostgreSQL
    /// that stops short of rows another relay is publishing (see the module doc).
    pub async fn drain(&self) -> anyhow::Result<usize> {
        Ok(self.drain_all().await?.published)
    }

    async fn drain_all(&self) -> anyhow::Result<Drained> {
        let mut total = Drained::default();
        loop {
            let round = match self.db.backend() {
                Backend::Sqlite => self.publish_pending().await?,
                Backend::Postgres => self.publish_claimed().await?,
            };
            total.published += round.published;
            if round.behind_another || round.published == 0 {
                total.behind_another = round.behind_another;
                return Ok(total);
            }
        }
    }

    /// One batch, SQLite: this process is the only writer; one statement marks the batch.
    async fn publish_pending(&self) -> anyhow::Result<Drained> {
        let batch = pending(self.db.reader(), BATCH).await?;
        let envs: Vec<Envelope> = batch.iter().map(|(_, e)| e.clone()).collect();
        let stored = if envs.is_empty() {
            0
        } else {
            self.bus.publish_batch(&envs).await?
        };
        let seqs: Vec<i64> = batch[..stored].iter().map(|(seq, _)| *seq).collect();
        mark(self.db.writer(), &seqs).await?;
        Ok(Drained {
            published: stored,
            behind_another: false,
        })
    }

    /// One batch, PostgreSQL: claimed, published and marked in one transaction.
    async fn publish_claimed(&self) -> anyhow::Result<Drained> {
        let mut tx = self.db.begin().await?;
        let claimed = crate::db::query(
            "SELECT seq, envelope FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = claimed.last() else {
            tx.rollback().await?;
            return Ok(Drained::default());
        };
        let last: i64 = last.try_get("seq")?;
        // Every row still pending up to the end of the claim, held by us or not. A row another
        // relay has published and committed meanwhile is no longer here, so it does not stop us.
        let ahead: Vec<i64> = crate::db::query(
            "SELECT seq FROM outbox WHERE published_at IS NULL AND seq <= $1 ORDER BY seq",
        )
        .bind(last)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("seq"))
        .collect::<Result<_, _>>()?;
        // The part of the claim no other relay's row precedes: publishing past it would
        // overtake that row.
        let mut ours = Vec::new();
        for (row, seq_ahead) in claimed.iter().zip(&ahead) {
            let seq: i64 = row.try_get("seq")?;
            if seq != *seq_ahead {
                break;
            }
            let env: Envelope = serde_json::from_str(&row.try_get::<String, _>("envelope")?)?;
            ours.push((seq, env));
        }
        let envs: Vec<Envelope> = ours.iter().map(|(_, e)| e.clone()).collect();
        let published = match self.bus.publish_batch(&envs).await {
            Ok(n) => n,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        // What was published is marked even when the bus failed part-way.
        let seqs: Vec<i64> = ours[..published].iter().map(|(seq, _)| *seq).collect();
        mark(&mut *tx, &seqs).await?;
        tx.commit().await?;
        Ok(Drained {
            published,
            behind_another: published < claimed.len(),
        })
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let pause = match self.drain_all().await {
                Ok(d) => {
                    failures = 0;
                    if d.behind_another {
                        BUSY_RETRY
                    } else {
                        self.poll
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "outbox relay failed; retrying");
                    Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.waker.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}
