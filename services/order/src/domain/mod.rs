//! The order's rules, free of HTTP and SQL. This is where an order changes state: the one
//! function [`transition`] decides, for every status and every command, the next status and
//! the events to announce, or refuses. Nothing else in the crate compares statuses to decide
//! what may happen.
//!
//! Beside it: what a new order must look like (lines, payment method, address), how it is
//! priced from the product snapshots, who may see an order, and the list cursor.
//!
//! One file per seam: `machine` (statuses, commands, [`transition`], [`fold`]), `order` (an
//! order as stored and what it waits on), `new_order` (what a new order must look like),
//! `pricing`, `backlog` (back-pressure) and `cursor` (the list position). Everything public is
//! re-exported here, so callers name `domain::X` whatever file `X` lives in.

mod backlog;
mod cursor;
mod machine;
mod new_order;
mod order;
mod pricing;

pub use backlog::*;
pub use cursor::*;
pub use machine::*;
pub use new_order::*;
pub use order::*;
pub use pricing::*;

/// What the tests of several seams build their cases from.
#[cfg(test)]
mod testing {
    use super::*;
    use mercato_kit::ids::ProductId;
    use mercato_kit::validate::Errors;
    use OrderStatus as S;

    pub(super) fn all_statuses() -> Vec<OrderStatus> {
        let mut v = vec![
            S::Pending,
            S::Confirmed,
            S::Paid,
            S::Processing,
            S::Fulfilled,
        ];
        v.extend(CANCEL_REASONS.map(S::Cancelled));
        v.push(S::Refunded);
        v
    }

    pub(super) fn input(items: Vec<(ProductId, i64)>) -> CreateOrder {
        CreateOrder {
            items: items
                .into_iter()
                .map(|(product_id, quantity)| LineRequest {
                    product_id,
                    quantity,
                })
                .collect(),
            payment_method: "pm_card_visa".into(),
            shipping_address: None,
        }
    }

    pub(super) fn fields(errors: Errors) -> Vec<String> {
        errors
            .finish()
            .err()
            .map(|p| p.errors.into_iter().map(|e| e.field).collect())
            .unwrap_or_default()
    }
}
