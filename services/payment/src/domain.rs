//! The rules of a payment, free of HTTP, SQL and the clock: its states, what each processor
//! answer does to it ([`next_step`], in `answer`), which capture, void or refund may be asked
//! for now, and how long to wait before asking the processor again.
//!
//! Two views of one payment matter. Its *state* is what the processor has confirmed. Its
//! *projection* is that state with every processor call still queued assumed to succeed; new
//! requests are judged against the projection, so a refund asked for while a capture is still
//! on its way is measured against the amount that capture will take, and two refunds queued one
//! after the other can never add up to more than was captured.

use std::fmt;
use strum::{Display, EnumIter, EnumString, IntoStaticStr};

mod answer;
pub use answer::{
    gave_up, next_step, Answer, Attempt, Effect, Failure, Reconcile, Reply, RetryRules, Standing,
    Step,
};

/// Failure reasons this service sets itself (declines carry the processor's decline code).
pub mod reasons {
    /// The processor could not be reached (or kept failing) until the reservation expired.
    pub const PROCESSOR_UNAVAILABLE: &str = "processor_unavailable";
    /// The processor refused the payment method itself (an unknown token).
    pub const INVALID_PAYMENT_METHOD: &str = "invalid_payment_method";
    /// The processor refused the request for another reason.
    pub const PROCESSOR_REFUSED: &str = "processor_refused";
    /// A pending authorization settled as failed (webhook).
    pub const AUTHORIZATION_FAILED: &str = "authorization_failed";
    /// The order was cancelled before the authorization was ever requested.
    pub const ORDER_CANCELLED: &str = "order_cancelled";
}

/// The largest amount one payment may carry (the processor's own limit).
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000;

/// Where a payment stands, as the processor confirmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE", parse_err_ty = String, parse_err_fn = unknown_status)]
pub enum Status {
    /// Created; the processor has not decided yet (not asked yet, being retried, or pending
    /// until its webhook).
    Pending,
    /// The amount is held on the card; it may be captured or voided.
    Authorized,
    /// Money taken; it may be refunded.
    Captured,
    /// Part of the captured amount returned; more may be.
    PartiallyRefunded,
    /// All of the captured amount returned; final.
    Refunded,
    /// The hold was released before any capture (or never placed); final.
    Voided,
    /// The authorization was declined or could not be obtained; final.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_status(s: &str) -> String {
    format!("{s:?} is not a payment status")
}

/// A call to the processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "snake_case", parse_err_ty = String, parse_err_fn = unknown_job_kind)]
pub enum JobKind {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_job_kind(s: &str) -> String {
    format!("{s:?} is not a processor call")
}

/// The processor's idempotency key for one call. It follows from the payment and the call
/// alone, never from a clock or a random number, so every retry of that call (after a timeout,
/// a crash, a redelivered event) carries the same key and the processor acts at most once.
/// Refunds may happen several times per payment, so each gets its sequence number.
pub fn idempotency_key(payment_id: uuid::Uuid, kind: JobKind, refund_seq: i64) -> String {
    match kind {
        JobKind::Refund => format!("mercato-pay-{payment_id}-refund-{refund_seq}"),
        other => format!("mercato-pay-{payment_id}-{other}"),
    }
}

/// The money of one payment: everything the rules need to see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Money {
    pub status: Status,
    pub amount_cents: i64,
    pub captured_cents: i64,
    pub refunded_cents: i64,
}

impl Money {
    pub fn new(amount_cents: i64) -> Money {
        Money {
            status: Status::Pending,
            amount_cents,
            captured_cents: 0,
            refunded_cents: 0,
        }
    }

    /// What is captured and not refunded yet.
    pub fn refundable(&self) -> i64 {
        self.captured_cents - self.refunded_cents
    }

    /// The amounts can never say something impossible.
    pub fn is_consistent(&self) -> bool {
        0 <= self.refunded_cents
            && self.refunded_cents <= self.captured_cents
            && self.captured_cents <= self.amount_cents
            && self.amount_cents > 0
    }
}

/// Something the processor confirmed (or, for `Dropped`, that we decided without it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    /// The amount is held: a synchronous answer or a `payment.succeeded` webhook.
    Authorized,
    /// No authorization: a decline, a `payment.failed` webhook, a refused request, or the
    /// processor unreachable until the reservation expired.
    Declined,
    /// The authorization was never requested, because the order was cancelled first.
    Dropped,
    Captured {
        amount_cents: i64,
    },
    Voided,
    Refunded {
        amount_cents: i64,
    },
}

/// Why a fact or a request does not apply. The payment is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not in this status (capturing a voided payment, say).
    InvalidState {
        status: Status,
        action: &'static str,
    },
    /// An amount outside `1..=available`.
    AmountOutOfRange { requested: i64, available: i64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InvalidState { status, action } => {
                write!(f, "cannot {action} a payment that is {status}")
            }
            Refusal::AmountOutOfRange {
                requested,
                available,
            } => write!(f, "{requested} is not within 1 to {available}"),
        }
    }
}

fn within(requested: i64, available: i64) -> Result<i64, Refusal> {
    if (1..=available).contains(&requested) {
        Ok(requested)
    } else {
        Err(Refusal::AmountOutOfRange {
            requested,
            available,
        })
    }
}

impl Fact {
    fn name(self) -> &'static str {
        match self {
            Fact::Authorized => "authorize",
            Fact::Declined => "decline",
            Fact::Dropped => "drop",
            Fact::Captured { .. } => "capture",
            Fact::Voided => "void",
            Fact::Refunded { .. } => "refund",
        }
    }
}

impl Money {
    /// The one place a payment's money changes: the payment after `fact`, or why not.
    pub fn apply(&self, fact: Fact) -> Result<Money, Refusal> {
        let mut next = *self;
        match (self.status, fact) {
            (Status::Pending, Fact::Authorized) => next.status = Status::Authorized,
            (Status::Pending, Fact::Declined) => next.status = Status::Failed,
            (Status::Pending, Fact::Dropped) => next.status = Status::Voided,
            (Status::Authorized, Fact::Captured { amount_cents }) => {
                next.captured_cents = within(amount_cents, self.amount_cents)?;
                next.status = Status::Captured;
            }
            // A pending authorization cancelled at the processor before it settled.
            (Status::Authorized | Status::Pending, Fact::Voided) => next.status = Status::Voided,
            (Status::Captured | Status::PartiallyRefunded, Fact::Refunded { amount_cents }) => {
                next.refunded_cents += within(amount_cents, self.refundable())?;
                next.status = if next.refunded_cents == next.captured_cents {
                    Status::Refunded
                } else {
                    Status::PartiallyRefunded
                };
            }
            (status, fact) => {
                return Err(Refusal::InvalidState {
                    status,
                    action: fact.name(),
                })
            }
        }
        Ok(next)
    }

    /// This payment with every queued call assumed to succeed, in queue order. An authorization
    /// still queued proves nothing, so it leaves the projection where it is.
    pub fn project<'a>(&self, queued: impl IntoIterator<Item = &'a Queued>) -> Money {
        queued.into_iter().fold(*self, |m, q| {
            let fact = match q.kind {
                JobKind::Authorize => return m,
                JobKind::Capture => Fact::Captured {
                    amount_cents: q.amount_cents.unwrap_or(m.amount_cents),
                },
                JobKind::Void => Fact::Voided,
                JobKind::Refund => Fact::Refunded {
                    amount_cents: q.amount_cents.unwrap_or(m.refundable()),
                },
            };
            m.apply(fact).unwrap_or(m)
        })
    }
}

/// A processor call waiting in the queue, as the projection needs to see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queued {
    pub kind: JobKind,
    pub amount_cents: Option<i64>,
}

/// A capture, void or refund someone asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// All of the authorized amount when `None`.
    Capture {
        amount_cents: Option<i64>,
    },
    Void,
    /// All that is left when `None`.
    Refund {
        amount_cents: Option<i64>,
    },
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Capture { .. } => "capture",
            Request::Void => "void",
            Request::Refund { .. } => "refund",
        }
    }
}

/// Which call to queue for `request` given the payment's projection, with its exact amount
/// (fixed now, so every retry of the call sends the same body).
pub fn plan(projected: &Money, request: Request) -> Result<Queued, Refusal> {
    let refuse = || Refusal::InvalidState {
        status: projected.status,
        action: request.name(),
    };
    match (projected.status, request) {
        (Status::Authorized, Request::Capture { amount_cents }) => Ok(Queued {
            kind: JobKind::Capture,
            amount_cents: Some(within(
                amount_cents.unwrap_or(projected.amount_cents),
                projected.amount_cents,
            )?),
        }),
        (Status::Authorized, Request::Void) => Ok(Queued {
            kind: JobKind::Void,
            amount_cents: None,
        }),
        (Status::Captured | Status::PartiallyRefunded, Request::Refund { amount_cents }) => {
            let left = projected.refundable();
            Ok(Queued {
                kind: JobKind::Refund,
                amount_cents: Some(within(amount_cents.unwrap_or(left), left)?),
            })
        }
        _ => Err(refuse()),
    }
}

/// What the payment service has heard of an order's life (from the order's own events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderStanding {
    /// Cancelled, or its reservation expired.
    pub cancelled: bool,
    pub fulfilled: bool,
    pub refunded: bool,
}

/// Why a capture, void or refund asked for directly is not the payment service's to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotTheOrders {
    #[error("the order is not cancelled: cancel the order instead (POST /api/v1/orders/{{id}}/cancel), which releases its stock and voids its payment")]
    VoidOfLiveOrder,
    #[error("the order has not been fulfilled: its payment is captured when it is (POST /api/v1/orders/{{id}}/fulfill), never before the goods leave")]
    CaptureBeforeFulfilment,
    #[error("the order is neither cancelled nor refunded: refund the order instead (POST /api/v1/orders/{{id}}/refund), so the order and its money agree")]
    RefundOfLiveOrder,
}

/// Whether a capture, void or refund asked for over HTTP (an admin, another service) may be
/// made, given the order's standing.
///
/// One source of truth for money: the order's state machine decides what happens to an
/// order, and the payment service carries out what that decision means for the money
/// (cancelled: void or refund; fulfilled: capture; refunded: refund). So a direct request is
/// only ever that same step asked for again (a repair after a processor failure); anything
/// else would move money the order does not know of: a void of a PAID order would leave its
/// goods shippable unpaid, a capture before fulfilment would take money for goods not sent,
/// and no later event could take that back once the goods are gone. Because of this rule an
/// order that is PAID or PROCESSING always has its authorization, and fulfilment, allowed only
/// from those states, always finds money to capture.
pub fn direct_request(order: &OrderStanding, request: Request) -> Result<(), NotTheOrders> {
    match request {
        Request::Void if !order.cancelled => Err(NotTheOrders::VoidOfLiveOrder),
        Request::Capture { .. } if !order.fulfilled || order.cancelled => {
            Err(NotTheOrders::CaptureBeforeFulfilment)
        }
        Request::Refund { .. } if !order.cancelled && !order.refunded => {
            Err(NotTheOrders::RefundOfLiveOrder)
        }
        _ => Ok(()),
    }
}

/// What a cancelled order (or an expired reservation) means for its payment's money.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnCancel {
    /// Nothing is held or taken: nothing to do.
    Nothing,
    /// The processor has not decided yet; whatever it decides is undone then.
    AwaitDecision,
    /// Release the hold.
    Void,
    /// Give back what was taken and not yet given back.
    Refund { amount_cents: i64 },
}

pub fn on_cancel(projected: &Money) -> OnCancel {
    match projected.status {
        Status::Pending => OnCancel::AwaitDecision,
        Status::Authorized => OnCancel::Void,
        Status::Captured | Status::PartiallyRefunded if projected.refundable() > 0 => {
            OnCancel::Refund {
                amount_cents: projected.refundable(),
            }
        }
        _ => OnCancel::Nothing,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn direct_requests_only_repeat_what_the_order_decided() {
        let live = OrderStanding::default();
        let cancelled = OrderStanding {
            cancelled: true,
            ..live
        };
        let fulfilled = OrderStanding {
            fulfilled: true,
            ..live
        };
        let refunded = OrderStanding {
            fulfilled: true,
            refunded: true,
            ..live
        };
        let capture = Request::Capture { amount_cents: None };
        let refund = Request::Refund { amount_cents: None };
        assert_eq!(
            direct_request(&live, Request::Void),
            Err(NotTheOrders::VoidOfLiveOrder)
        );
        assert_eq!(
            direct_request(&fulfilled, Request::Void),
            Err(NotTheOrders::VoidOfLiveOrder)
        );
        assert!(direct_request(&cancelled, Request::Void).is_ok());
        assert_eq!(
            direct_request(&live, capture),
            Err(NotTheOrders::CaptureBeforeFulfilment)
        );
        assert_eq!(
            direct_request(&cancelled, capture),
            Err(NotTheOrders::CaptureBeforeFulfilment)
        );
        assert!(direct_request(&fulfilled, capture).is_ok());
        assert_eq!(
            direct_request(&live, refund),
            Err(NotTheOrders::RefundOfLiveOrder)
        );
        assert_eq!(
            direct_request(&fulfilled, refund),
            Err(NotTheOrders::RefundOfLiveOrder)
        );
        assert!(direct_request(&refunded, refund).is_ok());
        assert!(direct_request(&cancelled, refund).is_ok());
    }

    use super::*;
    use proptest::prelude::*;
    use strum::IntoEnumIterator;

    fn money(status: Status) -> Money {
        let (captured, refunded) = match status {
            Status::Captured => (800, 0),
            Status::PartiallyRefunded => (800, 300),
            Status::Refunded => (800, 800),
            _ => (0, 0),
        };
        Money {
            status,
            amount_cents: 1000,
            captured_cents: captured,
            refunded_cents: refunded,
        }
    }

    const FACTS: [Fact; 8] = [
        Fact::Authorized,
        Fact::Declined,
        Fact::Dropped,
        Fact::Captured { amount_cents: 1000 },
        Fact::Captured { amount_cents: 400 },
        Fact::Voided,
        Fact::Refunded { amount_cents: 100 },
        Fact::Refunded { amount_cents: 500 },
    ];

    /// Every legal move with where it leads (status, captured, refunded).
    fn legal(status: Status, fact: Fact) -> Option<(Status, i64, i64)> {
        use Status::*;
        Some(match (status, fact) {
            (Pending, Fact::Authorized) => (Authorized, 0, 0),
            (Pending, Fact::Declined) => (Failed, 0, 0),
            (Pending, Fact::Dropped) => (Voided, 0, 0),
            (Authorized, Fact::Captured { amount_cents }) => (Captured, amount_cents, 0),
            (Authorized, Fact::Voided) => (Voided, 0, 0),
            (Pending, Fact::Voided) => (Voided, 0, 0),
            (Captured, Fact::Refunded { amount_cents: 100 }) => (PartiallyRefunded, 800, 100),
            (Captured, Fact::Refunded { amount_cents: 500 }) => (PartiallyRefunded, 800, 500),
            (PartiallyRefunded, Fact::Refunded { amount_cents: 100 }) => {
                (PartiallyRefunded, 800, 400)
            }
            (PartiallyRefunded, Fact::Refunded { amount_cents: 500 }) => (Refunded, 800, 800),
            _ => return None,
        })
    }

    #[test]
    fn every_fact_from_every_status() {
        let mut legal_moves = 0;
        for status in Status::iter() {
            for fact in FACTS {
                let before = money(status);
                match (legal(status, fact), before.apply(fact)) {
                    (Some((to, captured, refunded)), Ok(after)) => {
                        legal_moves += 1;
                        assert_eq!(
                            (after.status, after.captured_cents, after.refunded_cents),
                            (to, captured, refunded),
                            "{status:?} + {fact:?}"
                        );
                        assert_eq!(after.amount_cents, before.amount_cents);
                        assert!(after.is_consistent());
                    }
                    (None, Err(Refusal::InvalidState { status: s, .. })) => {
                        assert_eq!(s, status)
                    }
                    (expected, got) => panic!("{status:?} + {fact:?}: {expected:?} vs {got:?}"),
                }
            }
        }
        assert_eq!(legal_moves, 11);
    }

    #[test]
    fn final_states_accept_nothing() {
        for status in [Status::Refunded, Status::Voided, Status::Failed] {
            for fact in FACTS {
                assert!(money(status).apply(fact).is_err(), "{status:?} + {fact:?}");
            }
        }
    }

    #[test]
    fn amounts_out_of_range_are_refused() {
        let auth = money(Status::Authorized);
        for bad in [0, -1, 1001] {
            assert_eq!(
                auth.apply(Fact::Captured { amount_cents: bad }),
                Err(Refusal::AmountOutOfRange {
                    requested: bad,
                    available: 1000
                })
            );
        }
        let partly = money(Status::PartiallyRefunded);
        assert_eq!(
            partly.apply(Fact::Refunded { amount_cents: 501 }),
            Err(Refusal::AmountOutOfRange {
                requested: 501,
                available: 500
            })
        );
    }

    #[test]
    fn statuses_and_kinds_round_trip_through_text() {
        // Stored and on the wire: pinned, so renaming a variant cannot rename them.
        assert_eq!(
            Status::iter().map(Status::as_str).collect::<Vec<_>>(),
            [
                "PENDING",
                "AUTHORIZED",
                "CAPTURED",
                "PARTIALLY_REFUNDED",
                "REFUNDED",
                "VOIDED",
                "FAILED"
            ]
        );
        assert_eq!(
            JobKind::iter().map(JobKind::as_str).collect::<Vec<_>>(),
            ["authorize", "capture", "void", "refund"]
        );
        assert_eq!(Status::PartiallyRefunded.to_string(), "PARTIALLY_REFUNDED");
        for s in Status::iter() {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        for k in JobKind::iter() {
            assert_eq!(k.as_str().parse::<JobKind>().unwrap(), k);
        }
        assert_eq!(
            "pending".parse::<Status>(),
            Err("\"pending\" is not a payment status".to_owned())
        );
        assert!("settle".parse::<JobKind>().is_err());
    }

    #[test]
    fn keys_are_deterministic_and_distinct_per_call() {
        let id = uuid::Uuid::now_v7();
        let a = idempotency_key(id, JobKind::Authorize, 0);
        assert_eq!(a, idempotency_key(id, JobKind::Authorize, 7));
        let mut keys: Vec<String> = JobKind::iter().map(|k| idempotency_key(id, k, 1)).collect();
        keys.push(idempotency_key(id, JobKind::Refund, 2));
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        assert_ne!(
            a,
            idempotency_key(uuid::Uuid::now_v7(), JobKind::Authorize, 0)
        );
    }

    #[test]
    fn plans_are_judged_against_the_projection() {
        let auth = money(Status::Authorized);
        let capture = plan(&auth, Request::Capture { amount_cents: None }).unwrap();
        assert_eq!(capture.amount_cents, Some(1000));
        // A second capture while the first is queued is refused; a refund may follow it.
        let projected = auth.project([&capture]);
        assert_eq!(projected.status, Status::Captured);
        assert!(plan(&projected, Request::Capture { amount_cents: None }).is_err());
        assert!(plan(&projected, Request::Void).is_err());
        let r1 = plan(
            &projected,
            Request::Refund {
                amount_cents: Some(600),
            },
        )
        .unwrap();
        let projected = auth.project([&capture, &r1]);
        assert_eq!(projected.refundable(), 400);
        assert_eq!(
            plan(
                &projected,
                Request::Refund {
                    amount_cents: Some(401)
                }
            ),
            Err(Refusal::AmountOutOfRange {
                requested: 401,
                available: 400
            })
        );
        let rest = plan(&projected, Request::Refund { amount_cents: None }).unwrap();
        assert_eq!(rest.amount_cents, Some(400));
        let done = auth.project([&capture, &r1, &rest]);
        assert_eq!(done.status, Status::Refunded);
        assert!(plan(&done, Request::Refund { amount_cents: None }).is_err());
        // Nothing can be planned on a payment the processor has not decided.
        for r in [
            Request::Capture { amount_cents: None },
            Request::Void,
            Request::Refund { amount_cents: None },
        ] {
            assert!(plan(&money(Status::Pending), r).is_err());
        }
        // A queued authorization does not count as one.
        let queued_auth = Queued {
            kind: JobKind::Authorize,
            amount_cents: None,
        };
        assert_eq!(
            money(Status::Pending).project([&queued_auth]).status,
            Status::Pending
        );
    }

    #[test]
    fn cancellation_undoes_whatever_is_held_or_taken() {
        assert_eq!(on_cancel(&money(Status::Pending)), OnCancel::AwaitDecision);
        assert_eq!(on_cancel(&money(Status::Authorized)), OnCancel::Void);
        assert_eq!(
            on_cancel(&money(Status::Captured)),
            OnCancel::Refund { amount_cents: 800 }
        );
        assert_eq!(
            on_cancel(&money(Status::PartiallyRefunded)),
            OnCancel::Refund { amount_cents: 500 }
        );
        for s in [Status::Refunded, Status::Voided, Status::Failed] {
            assert_eq!(on_cancel(&money(s)), OnCancel::Nothing);
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Capture(Option<i64>),
        Void,
        Refund(Option<i64>),
        /// The processor confirms the oldest queued call.
        Confirm,
    }

    fn step() -> impl Strategy<Value = Step> {
        let amount = prop_oneof![Just(None), (-5i64..1200).prop_map(Some)];
        prop_oneof![
            amount.clone().prop_map(Step::Capture),
            Just(Step::Void),
            amount.prop_map(Step::Refund),
            Just(Step::Confirm),
        ]
    }

    proptest! {
        /// Whatever mix of captures, voids and refunds is asked for and confirmed, amounts are
        /// never negative, refunds never exceed the capture, the capture never exceeds the
        /// authorization, and everything that was planned can be confirmed.
        #[test]
        fn money_stays_consistent(amount in 1i64..1000, steps in prop::collection::vec(step(), 0..40)) {
            let mut state = Money::new(amount).apply(Fact::Authorized).unwrap();
            let mut queue: std::collections::VecDeque<Queued> = Default::default();
            for s in steps {
                let projected = state.project(queue.iter());
                prop_assert!(projected.is_consistent());
                let request = match s {
                    Step::Capture(a) => Request::Capture { amount_cents: a },
                    Step::Void => Request::Void,
                    Step::Refund(a) => Request::Refund { amount_cents: a },
                    Step::Confirm => {
                        if let Some(q) = queue.pop_front() {
                            let fact = match q.kind {
                                JobKind::Capture => Fact::Captured { amount_cents: q.amount_cents.unwrap() },
                                JobKind::Void => Fact::Voided,
                                JobKind::Refund => Fact::Refunded { amount_cents: q.amount_cents.unwrap() },
                                JobKind::Authorize => unreachable!(),
                            };
                            state = state.apply(fact).expect("a planned call always applies");
                            prop_assert!(state.is_consistent());
                        }
                        continue;
                    }
                };
                if let Ok(q) = plan(&projected, request) {
                    let a = q.amount_cents.unwrap_or(1);
                    prop_assert!(a > 0);
                    queue.push_back(q);
                    prop_assert!(state.project(queue.iter()).is_consistent());
                }
            }
            // Confirm the rest: the projection was exactly where the state ends up.
            let projected = state.project(queue.iter());
            for q in queue {
                let fact = match q.kind {
                    JobKind::Capture => Fact::Captured { amount_cents: q.amount_cents.unwrap() },
                    JobKind::Void => Fact::Voided,
                    JobKind::Refund => Fact::Refunded { amount_cents: q.amount_cents.unwrap() },
                    JobKind::Authorize => unreachable!(),
                };
                state = state.apply(fact).expect("a planned call always applies");
            }
            prop_assert_eq!(state, projected);
            prop_assert!(state.is_consistent());
        }
    }
}
