//! The outbox relay: publishes a service's committed outbox rows to the bus, in `seq` order.
//!
//! It wakes when a transaction that wrote an outbox row commits ([`OutboxWaker::wake`]), so an
//! event leaves within milliseconds, not at the next tick of a timer. A slow safety sweep
//! catches anything committed without a wake (for example by a process that died just after
//! committing). Publishing is at-least-once: a crash between publish and marking the row
//! publishes it again, which the bus (dedup by event id) and the consumers (inbox) absorb.

use super::{pending, Bus};
use crate::db::Db;
use crate::time::now_us;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SAFETY_SWEEP: Duration = Duration::from_secs(5);
const BATCH: i64 = 200;

/// Tells the relay that an outbox row was committed.
#[derive(Clone, Default)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    pub fn wake(&self) {
        // notify_one keeps a permit when the relay is busy, so no wake is ever lost.
        self.0.notify_one();
    }
}

pub struct Relay {
    db: Db,
    bus: Arc<dyn Bus>,
    waker: OutboxWaker,
}

impl Relay {
    pub fn new(db: Db, bus: Arc<dyn Bus>, waker: OutboxWaker) -> Relay {
        Relay { db, bus, waker }
    }

    /// Publishes every pending row; returns how many.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let batch = pending(self.db.reader(), BATCH).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            for (seq, env) in &batch {
                self.bus.publish(env).await?;
                sqlx::query("UPDATE outbox SET published_at = $2 WHERE seq = $1")
                    .bind(seq)
                    .bind(now_us())
                    .execute(self.db.writer())
                    .await?;
                total += 1;
            }
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let pause = match self.drain().await {
                Ok(_) => {
                    failures = 0;
                    SAFETY_SWEEP
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "outbox relay failed; retrying");
                    Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.waker.0.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}
