//! An order as stored, who may see it, and what it waits on.

use super::{OrderItem, OrderStatus, ShippingAddress};
use mercato_kit::auth::{Principal, Role};
use mercato_kit::ids::{OrderId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whether the pre-check at creation saw the stock, or inventory could not be asked and the
/// saga alone decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StockCheck {
    Passed,
    Deferred,
}

impl StockCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            StockCheck::Passed => "passed",
            StockCheck::Deferred => "deferred",
        }
    }

    pub fn parse(s: &str) -> Option<StockCheck> {
        match s {
            "passed" => Some(StockCheck::Passed),
            "deferred" => Some(StockCheck::Deferred),
            _ => None,
        }
    }
}

/// A step of the saga that can keep an order waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitStep {
    /// The payment's authorization: the card processor is unreachable or failing, and the
    /// payment service retries until the reservation expires.
    Payment,
}

impl WaitStep {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitStep::Payment => "payment",
        }
    }

    pub fn parse(s: &str) -> Option<WaitStep> {
        match s {
            "payment" => Some(WaitStep::Payment),
            _ => None,
        }
    }

    /// The status in which an order can be waiting on this step.
    pub fn waits_in(self, status: OrderStatus) -> bool {
        match self {
            WaitStep::Payment => status == OrderStatus::Confirmed,
        }
    }
}

/// Why an order is waiting, as the step it waits on last reported (`payment.delayed`). Not a
/// state: it changes no status, adds no history step, and is forgotten once the order moves
/// on. Times in µs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub step: WaitStep,
    /// For people: "the card processor is unavailable (circuit breaker open)".
    pub reason: String,
    /// The attempt that failed, from 1; a report of an older attempt never replaces a newer one.
    pub attempt: i64,
    pub next_attempt_at: i64,
    /// The step is retried until then (the reservation's expiry), when known.
    pub retry_until: Option<i64>,
    /// When the order started waiting on this step (its first report).
    pub since: i64,
}

/// An order as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: UserId,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_method: String,
    pub shipping_address: Option<ShippingAddress>,
    pub stock_check: StockCheck,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
    /// What the saga last said it is waiting on, if anything; see [`Order::waiting_for`].
    pub waiting: Option<Waiting>,
}

impl Order {
    /// Why the order has not moved on, while that still matters: only a CONFIRMED order waits
    /// for its payment, so a wait recorded before it moved on is not shown.
    pub fn waiting_for(&self) -> Option<&Waiting> {
        self.waiting
            .as_ref()
            .filter(|w| w.step.waits_in(self.status))
    }

    pub fn is_owner(&self, p: &Principal) -> bool {
        p.user_id() == Some(self.customer_id)
    }

    /// A seller with at least one line in this order.
    pub fn is_seller_of(&self, p: &Principal) -> bool {
        p.is(Role::Seller)
            && p.user_id()
                .is_some_and(|id| self.items.iter().any(|i| i.seller_id == id))
    }

    /// Who may see the order at all; anyone else is told it does not exist.
    pub fn visible_to(&self, p: &Principal) -> bool {
        self.is_owner(p) || self.is_seller_of(p) || p.is(Role::Admin) || p.is(Role::Service)
    }

    /// Who may move it along after payment.
    pub fn may_work_on(&self, p: &Principal) -> bool {
        self.is_seller_of(p) || p.is(Role::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::all_statuses;
    use OrderStatus as S;

    #[test]
    fn a_payment_wait_is_shown_only_while_confirmed() {
        for status in all_statuses() {
            assert_eq!(
                WaitStep::Payment.waits_in(status),
                status == S::Confirmed,
                "{status:?}"
            );
        }
        assert_eq!(WaitStep::parse("payment"), Some(WaitStep::Payment));
        assert_eq!(
            WaitStep::parse(WaitStep::Payment.as_str()),
            Some(WaitStep::Payment)
        );
        assert_eq!(WaitStep::parse("stock"), None);
    }
}
