//! What the order service announces (`mercato_kit::contracts`): `order.created` for a new
//! order and the event each [`Effect`] of a transition stands for. The use cases in `service`
//! write them to the outbox in the transaction that made the change; what the service
//! consumes is `consumer`'s.

use crate::domain::{Effect, PricedOrder};
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{OrderCancelled, OrderCreated, OrderLine, OrderRef, OrderRefunded};
use mercato_kit::events::Envelope;
use mercato_kit::ids::{OrderId, UserId};

pub const PRODUCER: &str = "order";

/// `order.created`, with each line's seller and price snapshot, so inventory and payment need
/// nothing else from us.
pub fn created(id: OrderId, customer: UserId, o: &PricedOrder) -> Envelope {
    let payload = OrderCreated {
        order_id: id,
        customer_id: customer,
        items: o
            .items
            .iter()
            .map(|i| OrderLine {
                product_id: i.product_id,
                quantity: i.quantity,
                price_cents: i.price_cents,
                seller_id: i.seller_id,
            })
            .collect(),
        total_cents: o.total_cents,
        currency: o.currency.to_string(),
        payment_method: o.payment_method.clone(),
    };
    Envelope::new(PRODUCER, ORDER_CREATED, id, &payload)
}

/// The event a transition's effect announces.
pub fn announce(id: OrderId, effect: Effect) -> Envelope {
    let order_ref = OrderRef { order_id: id };
    match effect {
        Effect::OrderPaid => Envelope::new(PRODUCER, ORDER_PAID, id, &order_ref),
        Effect::OrderFulfilled => Envelope::new(PRODUCER, ORDER_FULFILLED, id, &order_ref),
        Effect::OrderCancelled(reason) => Envelope::new(
            PRODUCER,
            ORDER_CANCELLED,
            id,
            &OrderCancelled {
                order_id: id,
                reason,
            },
        ),
        Effect::OrderRefunded { amount_cents } => Envelope::new(
            PRODUCER,
            ORDER_REFUNDED,
            id,
            &OrderRefunded {
                order_id: id,
                amount_cents,
            },
        ),
    }
}
