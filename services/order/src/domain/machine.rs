//! The state machine: where an order is in its life, what may be asked of it, and the one
//! function that decides what each command does in each status.

use mercato_kit::contracts::CancelReason;

/// Where an order is in its life. `Cancelled` carries why, because what the other services
/// must undo depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Paid,
    Processing,
    Fulfilled,
    Cancelled(CancelReason),
    Refunded,
}

/// Every cancel reason, for parsing and for the tests that walk the whole table.
pub const CANCEL_REASONS: [CancelReason; 5] = [
    CancelReason::OutOfStock,
    CancelReason::PaymentDeclined,
    CancelReason::ReservationExpired,
    CancelReason::CustomerCancelled,
    CancelReason::AdminCancelled,
];

/// A cancel reason as stored and shown (the contract's snake_case spelling).
pub fn reason_name(r: CancelReason) -> &'static str {
    match r {
        CancelReason::OutOfStock => "out_of_stock",
        CancelReason::PaymentDeclined => "payment_declined",
        CancelReason::ReservationExpired => "reservation_expired",
        CancelReason::CustomerCancelled => "customer_cancelled",
        CancelReason::AdminCancelled => "admin_cancelled",
    }
}

pub fn parse_reason(s: &str) -> Option<CancelReason> {
    CANCEL_REASONS.into_iter().find(|r| reason_name(*r) == s)
}

impl OrderStatus {
    /// The status names, as stored in `orders.status` and shown by the API.
    pub const NAMES: [&'static str; 7] = [
        "PENDING",
        "CONFIRMED",
        "PAID",
        "PROCESSING",
        "FULFILLED",
        "CANCELLED",
        "REFUNDED",
    ];

    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Paid => "PAID",
            OrderStatus::Processing => "PROCESSING",
            OrderStatus::Fulfilled => "FULFILLED",
            OrderStatus::Cancelled(_) => "CANCELLED",
            OrderStatus::Refunded => "REFUNDED",
        }
    }

    pub fn cancel_reason(self) -> Option<CancelReason> {
        match self {
            OrderStatus::Cancelled(r) => Some(r),
            _ => None,
        }
    }

    /// Rebuilds a status from its two stored columns.
    pub fn from_parts(status: &str, reason: Option<&str>) -> Result<OrderStatus, String> {
        let bad = || format!("not a valid order status: {status:?} / {reason:?}");
        Ok(match (status, reason) {
            ("PENDING", None) => OrderStatus::Pending,
            ("CONFIRMED", None) => OrderStatus::Confirmed,
            ("PAID", None) => OrderStatus::Paid,
            ("PROCESSING", None) => OrderStatus::Processing,
            ("FULFILLED", None) => OrderStatus::Fulfilled,
            ("REFUNDED", None) => OrderStatus::Refunded,
            ("CANCELLED", Some(r)) => OrderStatus::Cancelled(parse_reason(r).ok_or_else(bad)?),
            _ => return Err(bad()),
        })
    }

    /// Still waiting for the saga (stock, payment): what `?wait` waits out.
    pub fn awaits_saga(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::Confirmed)
    }

    /// Where a status stream ends: nothing a watcher waits for comes after these.
    pub fn ends_stream(self) -> bool {
        matches!(
            self,
            OrderStatus::Fulfilled | OrderStatus::Cancelled(_) | OrderStatus::Refunded
        )
    }

    /// The shipping address may change until the goods leave (and not on a dead order).
    pub fn address_editable(self) -> bool {
        matches!(
            self,
            OrderStatus::Pending
                | OrderStatus::Confirmed
                | OrderStatus::Paid
                | OrderStatus::Processing
        )
    }
}

/// Something that asks an order to move: a saga event from another service, or a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    InventoryReserved,
    ReservationFailed,
    PaymentAuthorized,
    PaymentFailed,
    InventoryReleasedExpired,
    Cancel { by_admin: bool },
    Process,
    Fulfill,
    Refund { amount_cents: Option<i64> },
}

/// The history label of the creation, the first entry of every order's history.
pub const CREATED: &str = "order.created";

impl Command {
    /// What the order's history calls this step: the saga event that caused it, or the
    /// order event it announces.
    pub fn history_type(self) -> &'static str {
        match self {
            Command::InventoryReserved => "inventory.reserved",
            Command::ReservationFailed => "inventory.reservation_failed",
            Command::PaymentAuthorized => "payment.authorized",
            Command::PaymentFailed => "payment.failed",
            Command::InventoryReleasedExpired => "inventory.released",
            Command::Cancel { .. } => "order.cancelled",
            Command::Process => "order.processing",
            Command::Fulfill => "order.fulfilled",
            Command::Refund { .. } => "order.refunded",
        }
    }

    /// The status this command leads to when it is allowed, for refusals that name it.
    pub fn target(self) -> &'static str {
        match self {
            Command::InventoryReserved => "CONFIRMED",
            Command::PaymentAuthorized => "PAID",
            Command::ReservationFailed
            | Command::PaymentFailed
            | Command::InventoryReleasedExpired
            | Command::Cancel { .. } => "CANCELLED",
            Command::Process => "PROCESSING",
            Command::Fulfill => "FULFILLED",
            Command::Refund { .. } => "REFUNDED",
        }
    }

    /// The command a history entry records (see [`fold`]). A refund's amount is not part of
    /// the status, so it is not needed to replay one.
    pub fn from_history(event_type: &str, to: OrderStatus) -> Option<Command> {
        Some(match event_type {
            "inventory.reserved" => Command::InventoryReserved,
            "inventory.reservation_failed" => Command::ReservationFailed,
            "payment.authorized" => Command::PaymentAuthorized,
            "payment.failed" => Command::PaymentFailed,
            "inventory.released" => Command::InventoryReleasedExpired,
            "order.cancelled" => Command::Cancel {
                by_admin: to == OrderStatus::Cancelled(CancelReason::AdminCancelled),
            },
            "order.processing" => Command::Process,
            "order.fulfilled" => Command::Fulfill,
            "order.refunded" => Command::Refund { amount_cents: None },
            _ => return None,
        })
    }
}

/// An event a transition announces (written to the outbox with the status change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    OrderPaid,
    OrderCancelled(CancelReason),
    OrderFulfilled,
    OrderRefunded { amount_cents: Option<i64> },
}

/// A command the order's status does not allow. Never applied: an HTTP caller gets a 409, a
/// late or repeated saga event is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from {} to {} ({})", .from.name(), .command.target(), .command.history_type())]
pub struct Refusal {
    pub from: OrderStatus,
    pub command: Command,
}

impl Refusal {
    /// A cancel of an order already cancelled: asking twice is answered with the order as it
    /// is, not an error.
    pub fn is_repeated_cancel(&self) -> bool {
        matches!(
            (self.from, self.command),
            (OrderStatus::Cancelled(_), Command::Cancel { .. })
        )
    }
}

/// The order state machine. Payment and stock answers come from different producers, so a
/// payment may be authorized before the reservation is seen (PENDING → PAID directly, and the
/// reservation then changes nothing). Everything not listed is refused.
pub fn transition(
    status: OrderStatus,
    command: &Command,
) -> Result<(OrderStatus, Vec<Effect>), Refusal> {
    use CancelReason as R;
    use Command as C;
    use OrderStatus as S;
    let cancel = |r: CancelReason| Ok((S::Cancelled(r), vec![Effect::OrderCancelled(r)]));
    match (status, *command) {
        (S::Pending, C::InventoryReserved) => Ok((S::Confirmed, vec![])),
        (S::Pending, C::ReservationFailed) => cancel(R::OutOfStock),
        (S::Pending | S::Confirmed, C::PaymentAuthorized) => Ok((S::Paid, vec![Effect::OrderPaid])),
        (S::Pending | S::Confirmed, C::PaymentFailed) => cancel(R::PaymentDeclined),
        // Also once PROCESSING: inventory may have swept the reservation before it heard the
        // order was paid, and the payment service voids the hold when stock is released for
        // expiry. Goods without their stock and money must not be fulfilled.
        (S::Pending | S::Confirmed | S::Paid | S::Processing, C::InventoryReleasedExpired) => {
            cancel(R::ReservationExpired)
        }
        (S::Pending | S::Confirmed | S::Paid | S::Processing, C::Cancel { by_admin }) => {
            cancel(if by_admin {
                R::AdminCancelled
            } else {
                R::CustomerCancelled
            })
        }
        (S::Paid, C::Process) => Ok((S::Processing, vec![])),
        (S::Paid | S::Processing, C::Fulfill) => Ok((S::Fulfilled, vec![Effect::OrderFulfilled])),
        (S::Fulfilled, C::Refund { amount_cents }) => {
            Ok((S::Refunded, vec![Effect::OrderRefunded { amount_cents }]))
        }
        _ => Err(Refusal {
            from: status,
            command: *command,
        }),
    }
}

/// A partial refund gives back part of what was paid, never more and never nothing.
pub fn check_refund(amount_cents: i64, total_cents: i64) -> Result<(), String> {
    if (1..=total_cents).contains(&amount_cents) {
        Ok(())
    } else {
        Err(format!(
            "must be from 1 to the order total ({total_cents}); leave it out to refund everything"
        ))
    }
}

/// One recorded step of an order's history, as far as its status is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub event_type: String,
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
}

/// Rebuilds an order's status from its history by replaying each step through [`transition`];
/// fails on a history the state machine could not have produced.
pub fn fold(history: &[Step]) -> Result<OrderStatus, String> {
    let (first, rest) = history.split_first().ok_or("the history is empty")?;
    if first.event_type != CREATED || first.from.is_some() || first.to != OrderStatus::Pending {
        return Err(format!(
            "the history must open with {CREATED} into PENDING, not {first:?}"
        ));
    }
    rest.iter().try_fold(OrderStatus::Pending, |status, step| {
        if step.from != Some(status) {
            return Err(format!("step {step:?} does not start from {status:?}"));
        }
        let command = Command::from_history(&step.event_type, step.to)
            .ok_or_else(|| format!("unknown history entry {:?}", step.event_type))?;
        let (next, _) = transition(status, &command).map_err(|r| r.to_string())?;
        if next != step.to {
            return Err(format!("step {step:?} should have led to {next:?}"));
        }
        Ok(next)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::all_statuses;
    use proptest::prelude::*;
    use CancelReason as R;
    use OrderStatus as S;

    const COMMANDS: [Command; 11] = [
        Command::InventoryReserved,
        Command::ReservationFailed,
        Command::PaymentAuthorized,
        Command::PaymentFailed,
        Command::InventoryReleasedExpired,
        Command::Cancel { by_admin: false },
        Command::Cancel { by_admin: true },
        Command::Process,
        Command::Fulfill,
        Command::Refund { amount_cents: None },
        Command::Refund {
            amount_cents: Some(5),
        },
    ];

    /// The expected next status of every (status, command) pair, written out by hand: one
    /// row per status, one column per entry of `COMMANDS`. `-` is a refusal; `X:why` is
    /// CANCELLED for out_of_stock, payment_declined, reservation_expired, customer_cancelled
    /// or admin_cancelled.
    const TABLE: &str = "
        status      reserved   res_failed authorized pay_failed expired    cancel     cancel_adm process    fulfill    refund     refund_5
        PENDING     CONFIRMED  X:oos      PAID       X:dec      X:exp      X:cus      X:adm      -          -          -          -
        CONFIRMED   -          -          PAID       X:dec      X:exp      X:cus      X:adm      -          -          -          -
        PAID        -          -          -          -          X:exp      X:cus      X:adm      PROCESSING FULFILLED  -          -
        PROCESSING  -          -          -          -          X:exp      X:cus      X:adm      -          FULFILLED  -          -
        FULFILLED   -          -          -          -          -          -          -          -          -          REFUNDED   REFUNDED
        CANCELLED   -          -          -          -          -          -          -          -          -          -          -
        REFUNDED    -          -          -          -          -          -          -          -          -          -          -
    ";

    fn cell(token: &str) -> Option<OrderStatus> {
        let reason = |short| match short {
            "oos" => R::OutOfStock,
            "dec" => R::PaymentDeclined,
            "exp" => R::ReservationExpired,
            "cus" => R::CustomerCancelled,
            "adm" => R::AdminCancelled,
            other => panic!("no reason {other}"),
        };
        match token {
            "-" => None,
            t if t.starts_with("X:") => Some(S::Cancelled(reason(&t[2..]))),
            t => Some(OrderStatus::from_parts(t, None).expect("a status name")),
        }
    }

    fn expected(status: OrderStatus) -> Vec<Option<OrderStatus>> {
        let row = TABLE
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&status.name()))
            .expect("a row for every status");
        assert_eq!(row.len(), COMMANDS.len() + 1, "row {}", status.name());
        row[1..].iter().map(|t| cell(t)).collect()
    }

    /// The events each kind of arrival announces, stated independently of `transition`.
    fn expected_effects(to: OrderStatus, command: Command) -> Vec<Effect> {
        match (to, command) {
            (S::Paid, _) => vec![Effect::OrderPaid],
            (S::Cancelled(r), _) => vec![Effect::OrderCancelled(r)],
            (S::Fulfilled, _) => vec![Effect::OrderFulfilled],
            (S::Refunded, Command::Refund { amount_cents }) => {
                vec![Effect::OrderRefunded { amount_cents }]
            }
            _ => vec![],
        }
    }

    #[test]
    fn every_status_and_command_pair_follows_the_table() {
        let mut checked = 0;
        for status in all_statuses() {
            for (command, want) in COMMANDS.iter().zip(expected(status)) {
                let got = transition(status, command);
                match want {
                    Some(to) => {
                        let (next, effects) =
                            got.unwrap_or_else(|r| panic!("{status:?} + {command:?}: {r}"));
                        assert_eq!(next, to, "{status:?} + {command:?}");
                        assert_eq!(
                            effects,
                            expected_effects(to, *command),
                            "{status:?} + {command:?}"
                        );
                        assert_eq!(
                            next.name(),
                            command.target(),
                            "{command:?} names its target"
                        );
                    }
                    None => {
                        let refusal = got.expect_err(&format!("{status:?} + {command:?}"));
                        assert_eq!(
                            refusal,
                            Refusal {
                                from: status,
                                command: *command
                            }
                        );
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 11 * 11);
    }

    #[test]
    fn refusals_name_from_and_to() {
        let r = transition(S::Fulfilled, &Command::Cancel { by_admin: false }).unwrap_err();
        assert_eq!(
            r.to_string(),
            "an order cannot go from FULFILLED to CANCELLED (order.cancelled)"
        );
        assert!(!r.is_repeated_cancel());
        let r = transition(
            S::Cancelled(R::OutOfStock),
            &Command::Cancel { by_admin: true },
        )
        .unwrap_err();
        assert!(r.is_repeated_cancel());
    }

    #[test]
    fn statuses_round_trip_through_their_columns() {
        for s in all_statuses() {
            let back = OrderStatus::from_parts(s.name(), s.cancel_reason().map(reason_name));
            assert_eq!(back, Ok(s));
            assert!(OrderStatus::NAMES.contains(&s.name()));
        }
        assert!(OrderStatus::from_parts("CANCELLED", None).is_err());
        assert!(OrderStatus::from_parts("PAID", Some("out_of_stock")).is_err());
        assert!(OrderStatus::from_parts("LOST", None).is_err());
        for r in CANCEL_REASONS {
            // The stored spelling is the contract's serde spelling.
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(reason_name(r))
            );
        }
    }

    fn any_command() -> impl Strategy<Value = Command> {
        (0..COMMANDS.len()).prop_map(|i| COMMANDS[i])
    }

    /// Applies `commands` from PENDING as the store does: refused ones leave no trace.
    fn run(commands: &[Command]) -> (OrderStatus, Vec<Step>, Vec<Effect>) {
        let mut status = S::Pending;
        let mut history = vec![Step {
            event_type: CREATED.into(),
            from: None,
            to: S::Pending,
        }];
        let mut effects = Vec::new();
        for c in commands {
            if let Ok((next, e)) = transition(status, c) {
                history.push(Step {
                    event_type: c.history_type().into(),
                    from: Some(status),
                    to: next,
                });
                effects.extend(e);
                status = next;
            }
        }
        (status, history, effects)
    }

    proptest! {
        #[test]
        fn any_sequence_folds_back_and_announces_each_outcome_at_most_once(
            commands in proptest::collection::vec(any_command(), 0..24)
        ) {
            let (status, history, effects) = run(&commands);
            prop_assert_eq!(fold(&history), Ok(status));
            let count = |f: fn(&Effect) -> bool| effects.iter().filter(|e| f(e)).count();
            let cancelled = count(|e| matches!(e, Effect::OrderCancelled(_)));
            let paid = count(|e| matches!(e, Effect::OrderPaid));
            let fulfilled = count(|e| matches!(e, Effect::OrderFulfilled));
            let refunded = count(|e| matches!(e, Effect::OrderRefunded { .. }));
            prop_assert!(cancelled <= 1 && paid <= 1 && fulfilled <= 1 && refunded <= 1, "{:?}", effects);
            // A cancelled order was cancelled by its last step, and nothing moved it after.
            if let S::Cancelled(_) = status {
                let last_cancelled = matches!(effects.last(), Some(Effect::OrderCancelled(_)));
                prop_assert!(last_cancelled, "{:?}", effects);
            }
            // Money without goods: a refund only ever follows a fulfilment.
            if refunded > 0 {
                prop_assert!(fulfilled == 1, "{:?}", effects);
            }
        }

        #[test]
        fn terminal_statuses_absorb_every_command(command in any_command(), r in 0..5usize) {
            prop_assert!(transition(S::Cancelled(CANCEL_REASONS[r]), &command).is_err());
            prop_assert!(transition(S::Refunded, &command).is_err());
        }
    }

    #[test]
    fn folding_refuses_histories_the_machine_cannot_make() {
        let step = |t: &str, from: Option<OrderStatus>, to| Step {
            event_type: t.into(),
            from,
            to,
        };
        assert!(fold(&[]).is_err());
        assert!(fold(&[step("payment.authorized", None, S::Paid)]).is_err());
        let ok = vec![
            step(CREATED, None, S::Pending),
            step("payment.authorized", Some(S::Pending), S::Paid),
            step(
                "order.cancelled",
                Some(S::Paid),
                S::Cancelled(R::AdminCancelled),
            ),
        ];
        assert_eq!(fold(&ok), Ok(S::Cancelled(R::AdminCancelled)));
        let mut skipped = ok.clone();
        skipped[1].to = S::Confirmed;
        assert!(fold(&skipped).is_err());
        let mut illegal = ok;
        illegal.push(step(
            "order.fulfilled",
            Some(S::Cancelled(R::AdminCancelled)),
            S::Fulfilled,
        ));
        assert!(fold(&illegal).is_err());
    }
}
