//! The events the catalog publishes. Their names and payload are a contract with the services
//! that consume them, so they are defined once in `mercato_kit::contracts`; this module maps a
//! product onto that contract and writes the event into the outbox.
//!
//! Every payload carries the product's whole public state after the change, not a diff, so a
//! consumer can upsert its copy from any single event and a lost or reordered `updated` is
//! repaired by the next one.

use crate::domain::{Change, Product};
use mercato_kit::db::Tx;
use mercato_kit::events::{Cause, Envelope};

pub use mercato_kit::contracts::types::{PRODUCT_CREATED, PRODUCT_DEACTIVATED, PRODUCT_UPDATED};
pub use mercato_kit::contracts::ProductChanged;

pub const PRODUCER: &str = "catalog";

pub fn payload(p: &Product) -> ProductChanged {
    ProductChanged {
        product_id: p.id,
        sku: p.sku.clone(),
        name: p.name.clone(),
        category: p.category.clone(),
        price_cents: p.price_cents,
        currency: p.currency.to_string(),
        seller_id: p.seller_id,
        active: p.active,
    }
}

/// Going inactive is announced as its own event, because carts and orders must stop offering
/// the product whatever else changed with it; going active again is an update.
pub fn change_type(change: Change) -> &'static str {
    match change {
        Change::Updated => PRODUCT_UPDATED,
        Change::Deactivated => PRODUCT_DEACTIVATED,
    }
}

/// The envelope announcing `product`'s new state, carrying `cause` (the request that changed
/// it; seeding at start has none: [`Cause::default`]).
pub fn envelope(event_type: &str, product: &Product, cause: &Cause) -> Envelope {
    cause.stamp(Envelope::new(
        PRODUCER,
        event_type,
        product.id,
        &payload(product),
    ))
}

/// Writes the event announcing `product`'s new state into the transaction that made it.
pub async fn announce(
    tx: &mut Tx,
    event_type: &str,
    product: &Product,
    cause: &Cause,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::events::append(tx, &envelope(event_type, product, cause)).await
}
