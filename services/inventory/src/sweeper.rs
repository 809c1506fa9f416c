//! The expiry sweeper: releases reservations whose time ran out before the order was paid, and
//! announces each with `inventory.released` {reason: expired}.
//!
//! It sleeps until the earliest `expires_at` of the active reservations (read from the
//! database, or heard from [`SweepSignal`](crate::service::SweepSignal) when a reservation is
//! made here), for at most [`SAFETY_NET`] (reservations made by another replica are seen at the
//! next look), or until shutdown. It never polls at a short fixed interval.
//!
//! Any number of sweepers (replicas) may run: each due reservation is expired in a transaction
//! of its own that starts with `UPDATE ... SET status = 'released' WHERE order_id = $1 AND
//! status = 'active' AND expires_at <= $now`, and only the sweeper whose update changed the row
//! releases the stock and emits the event, in that same transaction. On PostgreSQL (where
//! replicas really run side by side) each transaction first claims its reservation with
//! `FOR UPDATE SKIP LOCKED`, so two sweepers take different reservations rather than one
//! waiting for the other's row lock only to find the work done; the conditional update stays
//! the guarantee. On SQLite one writer at a time makes claiming pointless.

use crate::service::{Error, Inventory, Transition};
use crate::store;
use mercato_kit::db::Backend;
use mercato_kit::time::{now_us, Micros};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The longest the sweeper sleeps without looking at the database.
pub const SAFETY_NET: Duration = Duration::from_secs(30);
/// Due reservations handled per query.
const BATCH: i64 = 100;
/// Pause when something is due but another sweeper is still committing it.
const SETTLE: Duration = Duration::from_millis(100);

impl Inventory {
    /// Expires every reservation due at `now`; returns how many this call expired (another
    /// sweeper may have taken some, and an order paid meanwhile keeps its reservation).
    pub async fn sweep(&self, now: Micros) -> Result<usize, Error> {
        if self.db.backend() == Backend::Postgres {
            return self.sweep_claiming(now).await;
        }
        let mut expired = 0;
        loop {
            let due = store::due(self.db.reader(), now, BATCH).await?;
            let mut progressed = 0;
            for d in &due {
                let tx = self.db.begin().await?;
                if let Transition::Applied(_) = self.expire_due(tx, d, now).await? {
                    progressed += 1;
                }
            }
            expired += progressed;
            if (due.len() as i64) < BATCH || progressed == 0 {
                return Ok(expired);
            }
        }
    }

    /// Expires one due reservation in `tx`, committing when it expired now and rolling back
    /// otherwise, in a span of the trace that made the reservation (the checkout): the
    /// `inventory.released` that [`Inventory::expire`] writes, and so the cancellation that
    /// follows, are found there.
    async fn expire_due(
        &self,
        mut tx: mercato_kit::db::Tx,
        due: &store::Due,
        now: Micros,
    ) -> Result<Transition, Error> {
        let order_id = due.order_id;
        let span = mercato_kit::telemetry::job_span(
            crate::SERVICE,
            "reservation expired",
            &order_id.to_string(),
            due.traceparent.as_deref(),
        );
        async {
            let t = self.expire(&mut tx, order_id, now).await?;
            if let Transition::Applied(_) = t {
                tx.commit().await?;
                self.db.outbox_waker().wake();
                tracing::info!(%order_id, "reservation expired; stock released");
            } else {
                tx.rollback().await?;
            }
            Ok(t)
        }
        .instrument(span)
        .await
    }

    /// [`sweep`](Self::sweep) on PostgreSQL: one claimed reservation per transaction.
    async fn sweep_claiming(&self, now: Micros) -> Result<usize, Error> {
        let mut expired = 0;
        loop {
            let mut tx = self.db.begin().await?;
            let Some(due) = store::claim_due(&mut tx, now).await? else {
                tx.rollback().await?;
                return Ok(expired);
            };
            match self.expire_due(tx, &due, now).await? {
                Transition::Applied(_) => expired += 1,
                other => {
                    // Claimed while active and due, under its lock: this cannot happen. Stop
                    // rather than claim the same row forever.
                    tracing::error!(order_id = %due.order_id, outcome = ?other, "a claimed reservation did not expire");
                    return Ok(expired);
                }
            }
        }
    }

    /// How long to sleep after a sweep: until the earliest expiry known, at most [`SAFETY_NET`].
    pub async fn next_wake(&self, now: Micros) -> Result<Duration, Error> {
        let stored = store::next_expiry(self.db.reader()).await?;
        let heard = self.sweep.upcoming(now);
        let next = match (stored, heard) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(match next {
            None => SAFETY_NET,
            Some(t) if t <= now => SETTLE,
            // One millisecond past the deadline, so the reservation is due when we look.
            Some(t) => Duration::from_micros((t - now) as u64 + 1_000).min(SAFETY_NET),
        })
    }
}

/// The sweeper as a background task, until `stop`.
pub async fn run(inv: Arc<Inventory>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let pause = match sweep_once(&inv).await {
            Ok(pause) => {
                failures = 0;
                pause
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "reservation sweeper failed; retrying");
                Duration::from_millis(200 * 2u64.pow(failures.min(7))).min(SAFETY_NET)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inv.sweep.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn sweep_once(inv: &Inventory) -> Result<Duration, Error> {
    inv.sweep(now_us()).await?;
    inv.next_wake(now_us()).await
}
