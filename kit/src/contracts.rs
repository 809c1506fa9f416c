//! The events services exchange: names and payloads, version 1. This is the one place a
//! producer and its consumers agree on; each service keeps its own model of the data inside.
//!
//! The checkout saga (ARCHITECTURE.md) in these terms:
//! `order.created` → inventory reserves → `inventory.reserved` (order CONFIRMED; payment
//! authorizes) or `inventory.reservation_failed` (order CANCELLED out_of_stock).
//! `payment.authorized` → order PAID → `order.paid` (inventory holds the stock past the TTL).
//! `payment.failed` → order CANCELLED payment_declined → `order.cancelled` (inventory releases).
//! Expiry → `inventory.released` (reason expired) → order CANCELLED reservation_expired →
//! `order.cancelled` (payment voids). Fulfil → `order.fulfilled` → inventory commits, payment
//! captures. Admin refund → `order.refunded` → payment refunds.
//! While the processor cannot be reached, every failed authorization attempt announces
//! `payment.delayed` (the CONFIRMED order shows why it waits; nothing changes state), until an
//! attempt gets an answer or the reservation expires.

pub mod webhook;

use crate::ids::{OrderId, ProductId, UserId};
use serde::{Deserialize, Serialize};

pub mod types {
    pub const PRODUCT_CREATED: &str = "product.created";
    pub const PRODUCT_UPDATED: &str = "product.updated";
    pub const PRODUCT_DEACTIVATED: &str = "product.deactivated";
    pub const ORDER_CREATED: &str = "order.created";
    pub const ORDER_PAID: &str = "order.paid";
    pub const ORDER_CANCELLED: &str = "order.cancelled";
    pub const ORDER_FULFILLED: &str = "order.fulfilled";
    pub const ORDER_REFUNDED: &str = "order.refunded";
    pub const INVENTORY_RESERVED: &str = "inventory.reserved";
    pub const INVENTORY_RESERVATION_FAILED: &str = "inventory.reservation_failed";
    pub const INVENTORY_RELEASED: &str = "inventory.released";
    pub const INVENTORY_COMMITTED: &str = "inventory.committed";
    pub const PAYMENT_AUTHORIZED: &str = "payment.authorized";
    pub const PAYMENT_FAILED: &str = "payment.failed";
    pub const PAYMENT_CAPTURED: &str = "payment.captured";
    pub const PAYMENT_VOIDED: &str = "payment.voided";
    pub const PAYMENT_REFUNDED: &str = "payment.refunded";
    pub const PAYMENT_DELAYED: &str = "payment.delayed";
}

/// `product.created`, `product.updated`, `product.deactivated` (catalog).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProductChanged {
    pub product_id: ProductId,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price_cents: i64,
    pub currency: String,
    pub seller_id: UserId,
    pub active: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: ProductId,
    pub quantity: i64,
    pub price_cents: i64,
    pub seller_id: UserId,
}

/// `order.created` (order).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderCreated {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_method: String,
}

/// Why an order was cancelled.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    OutOfStock,
    PaymentDeclined,
    ReservationExpired,
    CustomerCancelled,
    AdminCancelled,
}

/// `order.cancelled` (order): inventory releases; payment voids an authorization or refunds a
/// capture.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub reason: CancelReason,
}

/// `order.paid`, `order.fulfilled` (order).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderRef {
    pub order_id: OrderId,
}

/// `order.refunded` (order): payment refunds `amount_cents` (the whole capture when absent).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderRefunded {
    pub order_id: OrderId,
    pub amount_cents: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StockLine {
    pub product_id: ProductId,
    pub quantity: i64,
}

/// `inventory.reserved` (inventory). It carries the order's amount and payment method so the
/// payment service can authorize on this event alone, whatever order events from another
/// stream arrive in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InventoryReserved {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub items: Vec<StockLine>,
    /// RFC 3339.
    pub expires_at: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_method: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShortLine {
    pub product_id: ProductId,
    pub requested: i64,
    pub available: i64,
}

/// `inventory.reservation_failed` (inventory).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReservationFailed {
    pub order_id: OrderId,
    pub lines: Vec<ShortLine>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    Expired,
    Cancelled,
}

/// `inventory.released` (inventory).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InventoryReleased {
    pub order_id: OrderId,
    pub reason: ReleaseReason,
}

/// `inventory.committed` (inventory).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InventoryCommitted {
    pub order_id: OrderId,
}

/// `payment.authorized`, `payment.captured`, `payment.voided`, `payment.refunded` (payment).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PaymentChanged {
    pub order_id: OrderId,
    pub payment_id: uuid::Uuid,
    pub amount_cents: i64,
    pub currency: String,
}

/// `payment.failed` (payment).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PaymentFailed {
    pub order_id: OrderId,
    pub payment_id: uuid::Uuid,
    /// The processor's decline code (`generic_decline`, `insufficient_funds`, ...).
    pub reason: String,
}

/// `payment.delayed` (payment): an authorization attempt ended without an answer worth keeping
/// (the processor unreachable, too slow, overloaded, or its circuit breaker open), and the
/// payment will try again. One per failed attempt; it changes no state anywhere, it only says
/// why the order is still waiting, so a consumer keeps the one with the highest `attempt`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PaymentDelayed {
    pub order_id: OrderId,
    pub payment_id: uuid::Uuid,
    /// For people, short: "the card processor is unavailable (circuit breaker open)".
    pub reason: String,
    /// The attempt that failed, from 1.
    pub attempt: i64,
    /// RFC 3339: when the next attempt is due.
    pub next_attempt_at: String,
    /// RFC 3339: the last moment an attempt is made (the reservation's expiry), when known;
    /// past it the payment fails and the order is cancelled.
    pub retry_until: Option<String>,
}

/// Reads an event's payload as `T`, refusing versions this build does not know.
pub fn payload<T: serde::de::DeserializeOwned>(env: &crate::events::Envelope) -> anyhow::Result<T> {
    anyhow::ensure!(
        env.version == 1,
        "{} version {} is not supported",
        env.event_type,
        env.version
    );
    Ok(serde_json::from_value(env.payload.clone())?)
}
