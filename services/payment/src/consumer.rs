//! The saga events the payment service consumes, mapped onto its use cases.
//!
//! Each event is handled in the consumer's transaction (with its inbox row), so a redelivery
//! changes nothing. Late or out-of-order events are no-ops by construction: every use case
//! judges the payment as it is (a capture for a voided payment is ignored, an order cancelled
//! before its reservation arrives is remembered so the reservation opens no payment).
//!
//! The handler only queues processor calls; the worker makes them once the transaction has
//! committed: queueing a call wakes the worker after the commit (`Tx::after_commit`).

use crate::service::{Open, Opened, Payments};
use mercato_kit::contracts::types::{
    INVENTORY_RELEASED, INVENTORY_RESERVED, ORDER_CANCELLED, ORDER_CREATED, ORDER_FULFILLED,
    ORDER_REFUNDED,
};
use mercato_kit::contracts::{
    payload, InventoryReleased, InventoryReserved, OrderCancelled, OrderCreated, OrderRef,
    OrderRefunded, ReleaseReason,
};
use mercato_kit::db::Tx;
use mercato_kit::events::{Cause, Envelope, EventHandler};
use mercato_kit::ids::Currency;
use mercato_kit::time::now_us;
use std::sync::Arc;

/// The consumer name, shared by every replica.
pub const CONSUMER: &str = "payment";

/// The event types this service consumes.
pub const CONSUMED: [&str; 6] = [
    ORDER_CREATED,
    INVENTORY_RESERVED,
    ORDER_CANCELLED,
    INVENTORY_RELEASED,
    ORDER_FULFILLED,
    ORDER_REFUNDED,
];

pub struct Handler {
    payments: Arc<Payments>,
}

impl Handler {
    pub fn new(payments: Arc<Payments>) -> Handler {
        Handler { payments }
    }

    async fn reserved(&self, tx: &mut Tx, env: &Envelope, cause: &Cause) -> anyhow::Result<()> {
        let e: InventoryReserved = payload(env)?;
        // A producer bug, not a customer's mistake: parked for an admin, never guessed at.
        anyhow::ensure!(
            (1..=crate::domain::MAX_AMOUNT_CENTS).contains(&e.amount_cents),
            "amount_cents {} is out of range",
            e.amount_cents
        );
        let currency: Currency = e
            .currency
            .parse()
            .map_err(|m| anyhow::anyhow!("currency {:?} {m}", e.currency))?;
        let give_up_at = chrono::DateTime::parse_from_rfc3339(&e.expires_at)
            .map(|t| t.timestamp_micros())
            .unwrap_or_else(|_| {
                tracing::warn!(order = %e.order_id, expires_at = %e.expires_at, "reservation expiry unreadable; using the default patience");
                now_us() + self.payments.settings.authorize_patience.as_micros() as i64
            });
        // The order's terms, in case its order.created has not arrived (another stream).
        let terms = crate::store::OrderTerms {
            customer_id: Some(e.customer_id),
            amount_cents: e.amount_cents,
            currency: currency.as_str().to_owned(),
        };
        self.payments.order_created(tx, e.order_id, &terms).await?;
        let open = Open {
            order_id: e.order_id,
            customer_id: Some(e.customer_id),
            amount_cents: e.amount_cents,
            currency,
            payment_method: e.payment_method,
            give_up_at,
        };
        match self.payments.open(tx, &open, cause).await? {
            Opened::Created(_) => {}
            Opened::Existing(p) => {
                tracing::debug!(order = %e.order_id, payment = %p.id, "reservation for an order that has a payment; ignored")
            }
            Opened::OrderCancelled => {
                tracing::info!(order = %e.order_id, "reservation for a cancelled order; never authorized")
            }
        }
        Ok(())
    }
}

fn reason_text<T: serde::Serialize>(reason: &T) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "cancelled".into())
}

#[async_trait::async_trait]
impl EventHandler for Handler {
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> anyhow::Result<()> {
        tracing::debug!(event_type = %env.event_type, event_id = %env.event_id, aggregate = %env.aggregate_id, "handling event");
        // The handler's span when there is one, so the work it queues hangs under it.
        let cause = Cause::of_event(env).in_current_span();
        let p = &self.payments;
        match env.event_type.as_str() {
            // A free order is never charged: no terms to hold a payment to.
            ORDER_CREATED => {
                let e: OrderCreated = payload(env)?;
                if e.total_cents <= 0 {
                    return Ok(());
                }
                let terms = crate::store::OrderTerms {
                    customer_id: Some(e.customer_id),
                    amount_cents: e.total_cents,
                    currency: e.currency,
                };
                p.order_created(tx, e.order_id, &terms).await?;
            }
            INVENTORY_RESERVED => self.reserved(tx, env, &cause).await?,
            ORDER_CANCELLED => {
                let e: OrderCancelled = payload(env)?;
                p.cancel_order(tx, e.order_id, &reason_text(&e.reason), &cause)
                    .await?;
            }
            INVENTORY_RELEASED => {
                let e: InventoryReleased = payload(env)?;
                match e.reason {
                    // For the money an expired reservation is a cancellation, whether or not
                    // the order's own cancellation has arrived yet.
                    ReleaseReason::Expired => {
                        p.cancel_order(tx, e.order_id, "reservation_expired", &cause)
                            .await?
                    }
                    // Released because the order was cancelled: order.cancelled handles it.
                    ReleaseReason::Cancelled => {
                        tracing::debug!(order = %e.order_id, "stock released for a cancellation; nothing to do")
                    }
                }
            }
            ORDER_FULFILLED => {
                let e: OrderRef = payload(env)?;
                p.order_fulfilled(tx, e.order_id, &cause).await?;
            }
            ORDER_REFUNDED => {
                let e: OrderRefunded = payload(env)?;
                p.order_refunded(tx, e.order_id, e.amount_cents, &cause)
                    .await?;
            }
            other => tracing::debug!(event_type = other, "event not for payment; ignored"),
        }
        Ok(())
    }
}
