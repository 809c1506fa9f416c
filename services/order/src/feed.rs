//! The in-process feed of committed status changes, for callers who wait on an order
//! (`GET /orders/{id}?wait=`, `GET /orders/{id}/stream`) instead of polling it.
//!
//! One `tokio::sync::broadcast` channel (mini-redis's pub/sub, one topic): every committed status
//! change is published after its commit, and every waiter re-reads the order from the database
//! when woken. A message is only a hint that something changed, so a lagging receiver or a
//! spurious message costs a read, never a wrong answer.
//!
//! The channel is per process, and with several replicas the change a waiter waits for is as
//! likely committed by another one (whichever consumed the event). So waiters also re-read the
//! order every [`REREAD`]: one primary-key read per waiter four times a second, bounded by how
//! long a wait may last, on either engine, with nothing to set up. PostgreSQL `LISTEN/NOTIFY`
//! would wake them sooner but needs a connection of its own per replica held outside the pool,
//! a `NOTIFY` in every transaction that changes a status, and a fallback for SQLite anyway; a
//! quarter of a second on top of a saga that takes longer is not worth that.

use crate::domain::OrderStatus;
use mercato_kit::ids::OrderId;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often a waiter reads the order again without being woken, to notice changes committed
/// by another replica.
pub const REREAD: Duration = Duration::from_millis(250);

/// Enough for bursts; a receiver that falls further behind re-reads (`Lagged`).
const CAPACITY: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub order_id: OrderId,
    pub status: OrderStatus,
}

#[derive(Clone)]
pub struct StatusFeed {
    tx: broadcast::Sender<StatusChange>,
}

impl Default for StatusFeed {
    fn default() -> Self {
        StatusFeed {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl StatusFeed {
    /// Announces a change that is already committed.
    pub fn publish(&self, order_id: OrderId, status: OrderStatus) {
        // No receiver is the common case and not an error.
        let _ = self.tx.send(StatusChange { order_id, status });
    }

    /// Subscribe *before* reading the order, so a change between the read and the wait is
    /// still seen.
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.tx.subscribe()
    }

    /// How many callers are waiting on some order right now (for tests and metrics).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }
}
