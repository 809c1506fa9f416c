//! What the payment service announces: a payment authorized, captured, voided, refunded or
//! failed, and an authorization delayed. The use cases in `service` write them to the outbox
//! in the transaction that records the change; what the service consumes is `consumer`'s.

use crate::store::Payment;
use mercato_kit::contracts::types::{PAYMENT_DELAYED, PAYMENT_FAILED};
use mercato_kit::contracts::{PaymentChanged, PaymentDelayed, PaymentFailed};
use mercato_kit::events::Envelope;
use mercato_kit::time::{to_rfc3339, Micros};

pub const PRODUCER: &str = "payment";

/// `event_type` for `payment` (a `payment.failed` carries the payment's failure reason; the
/// others the amount that moved).
pub fn changed(payment: &Payment, event_type: &str, amount_cents: i64) -> Envelope {
    if event_type == PAYMENT_FAILED {
        Envelope::new(
            PRODUCER,
            event_type,
            payment.id,
            &PaymentFailed {
                order_id: payment.order_id,
                payment_id: payment.id,
                reason: payment.failure_reason.clone().unwrap_or_default(),
            },
        )
    } else {
        Envelope::new(
            PRODUCER,
            event_type,
            payment.id,
            &PaymentChanged {
                order_id: payment.order_id,
                payment_id: payment.id,
                amount_cents,
                currency: payment.currency.clone(),
            },
        )
    }
}

/// `payment.delayed`: attempt `attempt` failed for `reason`; the next is due at
/// `next_attempt_at`, and the processor is given up on at `give_up_at`, if ever.
pub fn delayed(
    payment: &Payment,
    give_up_at: Option<Micros>,
    attempt: i64,
    reason: &str,
    next_attempt_at: Micros,
) -> Envelope {
    Envelope::new(
        PRODUCER,
        PAYMENT_DELAYED,
        payment.id,
        &PaymentDelayed {
            order_id: payment.order_id,
            payment_id: payment.id,
            reason: reason.chars().take(200).collect(),
            attempt,
            next_attempt_at: to_rfc3339(next_attempt_at),
            retry_until: give_up_at.map(to_rfc3339),
        },
    )
}
