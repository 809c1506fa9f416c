//! The inventory's side of the checkout saga: the events it consumes, mapped onto the use cases
//! in `service` (what it emits in answer is `events`').
//!
//! Every handler is idempotent twice over: the kit's inbox skips a redelivered event, and the
//! use cases themselves are no-ops when their effect is already there, so a second event with
//! the same meaning (another event id, an out-of-order or late saga step) changes nothing
//! either. Only real failures (storage, books that disagree) are errors, to be retried and then
//! parked in dead letters.

use crate::service::{Inventory, Origin, Transition};
use crate::store::Reservation;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{payload, OrderCancelled, OrderCreated, OrderRef, ProductChanged};
use mercato_kit::db::Tx;
use mercato_kit::events::{Envelope, EventHandler};
use mercato_kit::ids::OrderId;
use mercato_kit::time::{now_us, Micros};
use std::sync::Arc;

/// The consumer name this service reads the bus under (replicas share it).
pub const CONSUMER: &str = "inventory";

/// Every event type the inventory consumes.
pub const CONSUMED: [&str; 7] = [
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PRODUCT_DEACTIVATED,
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_CANCELLED,
    ORDER_FULFILLED,
];

/// When the catalog made the version an event carries; its arrival time when unreadable.
fn occurred_at(env: &Envelope) -> Micros {
    chrono::DateTime::parse_from_rfc3339(&env.occurred_at)
        .map(|t| t.timestamp_micros())
        .unwrap_or_else(|_| now_us())
}

/// The inventory's [`EventHandler`].
pub struct Handler {
    inv: Arc<Inventory>,
}

impl Handler {
    pub fn new(inv: Arc<Inventory>) -> Handler {
        Handler { inv }
    }
}

fn log_skip(event: &str, order_id: OrderId, t: &Transition) {
    let status = |r: &Reservation| r.status.as_str();
    match t {
        Transition::NoOp(r) => {
            tracing::debug!(event, %order_id, status = status(r), "already done; nothing to do")
        }
        Transition::Conflict(r) => {
            tracing::debug!(event, %order_id, status = status(r), "reservation went the other way; ignored")
        }
        Transition::Unknown => {
            tracing::debug!(event, %order_id, "no reservation for this order; ignored")
        }
        Transition::Applied(_) | Transition::Tombstoned(_) => {}
    }
}

#[async_trait::async_trait]
impl EventHandler for Handler {
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> anyhow::Result<()> {
        let now = now_us();
        let origin = Origin::event(env);
        match env.event_type.as_str() {
            PRODUCT_CREATED | PRODUCT_UPDATED | PRODUCT_DEACTIVATED => {
                let p: ProductChanged = payload(env)?;
                self.inv
                    .product_changed(tx, &p, occurred_at(env), now, &origin)
                    .await?;
            }
            ORDER_CREATED => {
                let order: OrderCreated = payload(env)?;
                self.inv.answer_order(tx, &order, now, &origin).await?;
            }
            ORDER_PAID => {
                let o: OrderRef = payload(env)?;
                let t = self.inv.hold(tx, o.order_id, now, &origin).await?;
                log_skip(ORDER_PAID, o.order_id, &t);
            }
            ORDER_CANCELLED => {
                let o: OrderCancelled = payload(env)?;
                match self.inv.release(tx, o.order_id, now, &origin).await? {
                    Transition::Applied(_) => {}
                    Transition::Tombstoned(_) => {
                        tracing::debug!(order_id = %o.order_id, "cancelled before it was reserved; tombstone recorded")
                    }
                    t => log_skip(ORDER_CANCELLED, o.order_id, &t),
                }
            }
            ORDER_FULFILLED => {
                let o: OrderRef = payload(env)?;
                match self.inv.commit(tx, o.order_id, now, &origin).await? {
                    Transition::Applied(_) => {}
                    Transition::Conflict(r) => {
                        // Goods shipped for an order whose stock went back: the books cannot
                        // say so; an operator must look.
                        tracing::warn!(order_id = %o.order_id, status = r.status.as_str(),
                            "order.fulfilled for a reservation that was released; ignored");
                    }
                    t => log_skip(ORDER_FULFILLED, o.order_id, &t),
                }
            }
            other => tracing::debug!(event_type = other, "event not for the inventory; ignored"),
        }
        Ok(())
    }
}
