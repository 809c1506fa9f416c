//! [`OrderEvents`], the handler that turns the events the order service consumes into the
//! same commands a person's request would (what it announces is `events`').
//!
//! Saga events arrive at least once and in any order across producers, so a command the
//! order's status refuses is a late or repeated event: logged at debug and dropped, never an
//! error. Only real failures (the database) are returned, to be retried and then parked.

use crate::domain::{Command, WaitStep, Waiting};
use crate::service::{self, Error, Orders};
use crate::store;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{
    self, InventoryReleased, InventoryReserved, PaymentChanged, PaymentDelayed, PaymentFailed,
    ProductChanged, ReleaseReason, ReservationFailed,
};
use mercato_kit::db::Tx;
use mercato_kit::events::{Cause, Envelope, EventHandler};
use mercato_kit::ids::OrderId;
use std::sync::Arc;

/// Every event type the order service consumes.
pub const CONSUMED: [&str; 9] = [
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PRODUCT_DEACTIVATED,
    INVENTORY_RESERVED,
    INVENTORY_RESERVATION_FAILED,
    INVENTORY_RELEASED,
    PAYMENT_AUTHORIZED,
    PAYMENT_FAILED,
    PAYMENT_DELAYED,
];

/// The time an event happened, in µs: what orders the product announcements.
fn occurred_us(env: &Envelope) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&env.occurred_at)
        .map(|t| t.timestamp_micros())
        .unwrap_or_else(|_| mercato_kit::time::now_us())
}

/// An RFC 3339 time of a payload in µs; a producer sending anything else has a bug, and the
/// event is parked for an admin rather than guessed at.
fn payload_time(field: &str, value: &str) -> anyhow::Result<i64> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_micros())
        .map_err(|e| anyhow::anyhow!("{field} {value:?} is not an RFC 3339 time: {e}"))
}

/// What `payment.delayed` says about the order's wait.
fn payment_wait(env: &Envelope, e: &PaymentDelayed) -> anyhow::Result<Waiting> {
    anyhow::ensure!(e.attempt >= 1, "attempt {} is not from 1", e.attempt);
    Ok(Waiting {
        step: WaitStep::Payment,
        reason: e.reason.chars().take(200).collect(),
        attempt: e.attempt,
        next_attempt_at: payload_time("next_attempt_at", &e.next_attempt_at)?,
        retry_until: e
            .retry_until
            .as_deref()
            .map(|t| payload_time("retry_until", t))
            .transpose()?,
        since: occurred_us(env),
    })
}

/// Consumes product and saga events (consumer name `order`).
pub struct OrderEvents {
    orders: Arc<Orders>,
}

impl OrderEvents {
    pub fn new(orders: Arc<Orders>) -> Self {
        OrderEvents { orders }
    }

    async fn saga(
        &self,
        tx: &mut Tx,
        env: &Envelope,
        id: OrderId,
        command: Command,
    ) -> anyhow::Result<()> {
        match service::apply(
            tx,
            id,
            command,
            &Cause::of_event(env),
            self.orders.metrics(),
        )
        .await
        {
            Ok(applied) => {
                tracing::info!(order_id = %id, event_type = %env.event_type,
                    status = applied.order.status.name(), "order moved");
                // The consumer commits after we return; waiters hear of it after that, and
                // never of a change its rollback undid.
                let (feed, status) = (self.orders.feed().clone(), applied.order.status);
                tx.after_commit(move || feed.publish(id, status));
                Ok(())
            }
            Err(Error::Refused(r)) => {
                tracing::debug!(order_id = %id, event_id = %env.event_id, refusal = %r,
                    "late or repeated event; nothing to do");
                Ok(())
            }
            Err(Error::NotFound(_)) => {
                // Nothing to retry: no order of ours will ever have this id.
                tracing::warn!(order_id = %id, event_id = %env.event_id, event_type = %env.event_type,
                    "event for an unknown order; ignored");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for OrderEvents {
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> anyhow::Result<()> {
        match env.event_type.as_str() {
            PRODUCT_CREATED | PRODUCT_UPDATED | PRODUCT_DEACTIVATED => {
                let p: ProductChanged = contracts::payload(env)?;
                store::upsert_product(tx, &p, occurred_us(env)).await?;
                Ok(())
            }
            INVENTORY_RESERVED => {
                let e: InventoryReserved = contracts::payload(env)?;
                self.saga(tx, env, e.order_id, Command::InventoryReserved)
                    .await
            }
            INVENTORY_RESERVATION_FAILED => {
                let e: ReservationFailed = contracts::payload(env)?;
                self.saga(tx, env, e.order_id, Command::ReservationFailed)
                    .await
            }
            INVENTORY_RELEASED => {
                let e: InventoryReleased = contracts::payload(env)?;
                match e.reason {
                    ReleaseReason::Expired => {
                        self.saga(tx, env, e.order_id, Command::InventoryReleasedExpired)
                            .await
                    }
                    // Inventory confirming a release we asked for by cancelling.
                    ReleaseReason::Cancelled => Ok(()),
                }
            }
            PAYMENT_AUTHORIZED => {
                let e: PaymentChanged = contracts::payload(env)?;
                self.saga(tx, env, e.order_id, Command::PaymentAuthorized)
                    .await
            }
            PAYMENT_FAILED => {
                let e: PaymentFailed = contracts::payload(env)?;
                tracing::info!(order_id = %e.order_id, decline = %e.reason, "payment failed");
                self.saga(tx, env, e.order_id, Command::PaymentFailed).await
            }
            // Not a transition: the order stays CONFIRMED and only shows why it waits. A report
            // for an order that has moved on, or older than the one shown, changes nothing.
            PAYMENT_DELAYED => {
                let e: PaymentDelayed = contracts::payload(env)?;
                let wait = payment_wait(env, &e)?;
                if store::record_wait(tx, e.order_id, &wait).await? {
                    tracing::info!(order_id = %e.order_id, attempt = e.attempt, reason = %e.reason,
                        next_attempt_at = %e.next_attempt_at, "order waits for its payment");
                } else {
                    tracing::debug!(order_id = %e.order_id, event_id = %env.event_id, attempt = e.attempt,
                        "payment delay for an order that moved on, or already known; nothing to do");
                }
                Ok(())
            }
            other => {
                tracing::debug!(event_type = other, "not an event the order service handles");
                Ok(())
            }
        }
    }
}
