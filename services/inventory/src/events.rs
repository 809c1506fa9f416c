//! The inventory's side of the checkout saga: the events it consumes, mapped onto the use cases
//! in `service`, and the events it emits, written to the outbox in the same transaction as the
//! change they announce.
//!
//! Every handler is idempotent twice over: the kit's inbox skips a redelivered event, and the
//! use cases themselves are no-ops when their effect is already there, so a second event with
//! the same meaning (another event id, an out-of-order or late saga step) changes nothing
//! either. Only real failures (storage, books that disagree) are errors, to be retried and then
//! parked in dead letters.

use crate::domain::OrderLines;
use crate::service::{Inventory, Origin, Reserved, Transition};
use crate::store::Reservation;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{
    payload, InventoryCommitted, InventoryReleased, InventoryReserved, OrderCancelled,
    OrderCreated, OrderRef, ProductChanged, ReleaseReason, ReservationFailed, ShortLine,
};
use mercato_kit::db::Tx;
use mercato_kit::events::{Cause, Envelope, EventHandler};
use mercato_kit::ids::OrderId;
use mercato_kit::time::{now_us, to_rfc3339, Micros};
use serde::Serialize;
use std::sync::Arc;

/// The producer name on the events this service emits.
pub const PRODUCER: &str = "inventory";
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

/// Appends an event about `order_id` to the outbox in `tx`, continuing the cause: a request's
/// correlation id and trace context, or an incoming event's (which also becomes the causation
/// id).
pub async fn emit<P: Serialize>(
    tx: &mut Tx,
    event_type: &str,
    order_id: OrderId,
    payload: &P,
    cause: &Cause,
) -> Result<(), mercato_kit::db::Error> {
    let env = cause.stamp(Envelope::new(PRODUCER, event_type, order_id, payload));
    mercato_kit::events::append(tx, &env).await
}

/// `inventory.released` for a reservation that was released now (written by the use cases in
/// `service`, in the transaction that released it).
pub(crate) async fn released(
    tx: &mut Tx,
    order_id: OrderId,
    reason: ReleaseReason,
    cause: &Cause,
) -> Result<(), mercato_kit::db::Error> {
    let p = InventoryReleased { order_id, reason };
    emit(tx, INVENTORY_RELEASED, order_id, &p, cause).await
}

/// `inventory.committed` for a reservation that was committed now (written by
/// [`Inventory::commit`], in the transaction that committed it).
pub(crate) async fn committed(
    tx: &mut Tx,
    order_id: OrderId,
    cause: &Cause,
) -> Result<(), mercato_kit::db::Error> {
    let p = InventoryCommitted { order_id };
    emit(tx, INVENTORY_COMMITTED, order_id, &p, cause).await
}

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

    async fn order_created(&self, tx: &mut Tx, env: &Envelope, now: Micros) -> anyhow::Result<()> {
        let order: OrderCreated = payload(env)?;
        let origin = Origin::event(env);
        let raw: Vec<_> = order
            .items
            .iter()
            .map(|l| (l.product_id, l.quantity))
            .collect();
        let outcome = match OrderLines::parse(&raw) {
            Ok(lines) => {
                self.inv
                    .reserve(
                        tx,
                        order.order_id,
                        &lines,
                        self.inv.settings.reservation_ttl,
                        now,
                        &origin,
                    )
                    .await?
            }
            // The order service checks its lines, so this is a bug upstream; answering with a
            // failure still lets the order reach a final state instead of waiting forever.
            Err(errors) => {
                tracing::warn!(order_id = %order.order_id, ?errors, "order.created with invalid lines refused");
                if !self
                    .inv
                    .record_refusal(tx, order.order_id, now, &origin)
                    .await?
                {
                    return Ok(());
                }
                let mut lines = Vec::with_capacity(order.items.len());
                for l in &order.items {
                    lines.push(ShortLine {
                        product_id: l.product_id,
                        requested: l.quantity,
                        available: self.inv.available(tx, l.product_id).await?,
                    });
                }
                return self.failed(tx, order.order_id, lines, &origin.cause).await;
            }
        };
        match outcome {
            Reserved::Created(r) => {
                let p = InventoryReserved {
                    order_id: order.order_id,
                    customer_id: order.customer_id,
                    items: r.lines.clone(),
                    expires_at: to_rfc3339(r.expires_at.unwrap_or(now)),
                    amount_cents: order.total_cents,
                    currency: order.currency.clone(),
                    payment_method: order.payment_method.clone(),
                };
                emit(tx, INVENTORY_RESERVED, order.order_id, &p, &origin.cause).await?;
            }
            Reserved::Existing(r) => {
                tracing::debug!(order_id = %order.order_id, status = r.status.as_str(), "order already reserved; nothing to do");
            }
            Reserved::Short(lines) => {
                self.inv
                    .record_refusal(tx, order.order_id, now, &origin)
                    .await?;
                self.failed(tx, order.order_id, lines, &origin.cause)
                    .await?;
            }
        }
        Ok(())
    }

    async fn failed(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        lines: Vec<ShortLine>,
        cause: &Cause,
    ) -> anyhow::Result<()> {
        let p = ReservationFailed { order_id, lines };
        emit(tx, INVENTORY_RESERVATION_FAILED, order_id, &p, cause).await?;
        Ok(())
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
            ORDER_CREATED => self.order_created(tx, env, now).await?,
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
