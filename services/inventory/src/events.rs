//! What the inventory announces: the saga's stock answers (`inventory.reserved`,
//! `reservation_failed`, `released`, `committed`), each written to the outbox in the
//! transaction that made the change it announces. What the inventory consumes is `consumer`'s.

use crate::store::Reservation;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{
    InventoryCommitted, InventoryReleased, InventoryReserved, OrderCreated, ReleaseReason,
    ReservationFailed, ShortLine,
};
use mercato_kit::db::Tx;
use mercato_kit::events::{Cause, Envelope};
use mercato_kit::ids::OrderId;
use mercato_kit::time::{to_rfc3339, Micros};
use serde::Serialize;

/// The producer name on the events this service emits.
pub const PRODUCER: &str = "inventory";

/// Appends an event about `order_id` to the outbox in `tx`, continuing the cause: a request's
/// correlation id and trace context, or an incoming event's (which also becomes the causation
/// id).
async fn emit<P: Serialize>(
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
/// [`crate::service::Inventory::commit`], in the transaction that committed it).
pub(crate) async fn committed(
    tx: &mut Tx,
    order_id: OrderId,
    cause: &Cause,
) -> Result<(), mercato_kit::db::Error> {
    let p = InventoryCommitted { order_id };
    emit(tx, INVENTORY_COMMITTED, order_id, &p, cause).await
}

/// `inventory.reserved` for `order`'s reservation `r`, made now, carrying what the payment
/// service needs to open the payment (customer, amount, currency, method).
pub(crate) async fn reserved(
    tx: &mut Tx,
    order: &OrderCreated,
    r: &Reservation,
    now: Micros,
    cause: &Cause,
) -> Result<(), mercato_kit::db::Error> {
    let p = InventoryReserved {
        order_id: order.order_id,
        customer_id: order.customer_id,
        items: r.lines.clone(),
        expires_at: to_rfc3339(r.expires_at.unwrap_or(now)),
        amount_cents: order.total_cents,
        currency: order.currency.clone(),
        payment_method: order.payment_method.clone(),
    };
    emit(tx, INVENTORY_RESERVED, order.order_id, &p, cause).await
}

/// `inventory.reservation_failed`: the order's `lines` that were short.
pub(crate) async fn reservation_failed(
    tx: &mut Tx,
    order_id: OrderId,
    lines: Vec<ShortLine>,
    cause: &Cause,
) -> Result<(), mercato_kit::db::Error> {
    let p = ReservationFailed { order_id, lines };
    emit(tx, INVENTORY_RESERVATION_FAILED, order_id, &p, cause).await
}
