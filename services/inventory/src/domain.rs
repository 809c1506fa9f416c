//! The rules of stock, free of HTTP and SQL: what a quantity may be, how each movement changes
//! a product's levels, and which reservation transitions exist.
//!
//! The store applies these rules with conditional SQL (so they hold under any concurrency); the
//! functions here are the same rules said once in plain Rust, tested on their own, and used by
//! the tests as the model the database must agree with.

use mercato_kit::contracts::StockLine;
use mercato_kit::ids::ProductId;
use mercato_kit::validate::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use strum::IntoEnumIterator;
use utoipa::ToSchema;

/// Units of one product in one order line.
pub const QUANTITY_MAX: i64 = 1_000;
/// Lines in one reservation.
pub const LINES_MAX: usize = 100;
/// Units of one product on hand.
pub const ON_HAND_MAX: i64 = 1_000_000_000;
/// Longest reservation lifetime, in seconds (a day).
pub const TTL_MAX_SECS: u64 = 86_400;

/// A product's stock levels. `available` is what a new reservation may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Levels {
    pub on_hand: i64,
    pub reserved: i64,
}

impl Levels {
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }

    /// The levels after `m`, or why `m` cannot happen. Mirrors the conditions of the store's
    /// conditional updates.
    pub fn apply(self, m: Movement) -> Result<Levels, Refusal> {
        let (dh, dr) = m.deltas(self);
        let next = Levels {
            on_hand: self.on_hand + dh,
            reserved: self.reserved + dr,
        };
        match m {
            Movement::Reserve(q) if self.available() < q => Err(Refusal::Short {
                available: self.available(),
            }),
            Movement::Adjust { to } if to < self.reserved => Err(Refusal::BelowReserved {
                reserved: self.reserved,
            }),
            _ if next.on_hand > ON_HAND_MAX => Err(Refusal::TooMuch),
            // Releasing or committing more than is reserved means the books disagree: never
            // paper over it.
            _ if next.reserved < 0 || next.on_hand < 0 || next.available() < 0 => {
                Err(Refusal::Inconsistent)
            }
            _ => Ok(next),
        }
    }
}

/// One change of a product's stock, as recorded in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Movement {
    /// The stock a product starts with when its row is created.
    Initial(i64),
    /// Goods arrived.
    Restock(i64),
    /// A count sets on_hand to `to` (a stocktake, a correction).
    Adjust { to: i64 },
    /// An order sets units aside.
    Reserve(i64),
    /// An order gives its units back (cancelled, expired).
    Release(i64),
    /// An order's units leave the warehouse.
    Commit(i64),
}

impl Movement {
    pub fn kind(self) -> LedgerKind {
        match self {
            Movement::Initial(_) => LedgerKind::Initial,
            Movement::Restock(_) => LedgerKind::Restock,
            Movement::Adjust { .. } => LedgerKind::Adjust,
            Movement::Reserve(_) => LedgerKind::Reserve,
            Movement::Release(_) => LedgerKind::Release,
            Movement::Commit(_) => LedgerKind::Commit,
        }
    }

    /// (on_hand delta, reserved delta) when applied to `from`.
    pub fn deltas(self, from: Levels) -> (i64, i64) {
        match self {
            Movement::Initial(n) | Movement::Restock(n) => (n, 0),
            Movement::Adjust { to } => (to - from.on_hand, 0),
            Movement::Reserve(q) => (0, q),
            Movement::Release(q) => (0, -q),
            Movement::Commit(q) => (-q, -q),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough available for a reservation.
    Short { available: i64 },
    /// on_hand may not be set below what is reserved.
    BelowReserved { reserved: i64 },
    /// on_hand would pass [`ON_HAND_MAX`].
    TooMuch,
    /// The movement would make a level negative: a bug or corrupted books.
    Inconsistent,
}

/// The kinds of ledger rows; `CHECK` in SQL holds the same list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::EnumIter, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case", parse_err_ty = String, parse_err_fn = unknown_ledger_kind)]
pub enum LedgerKind {
    Initial,
    Restock,
    Adjust,
    Reserve,
    Release,
    Commit,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_ledger_kind(s: &str) -> String {
    format!("unknown ledger kind {s:?}")
}

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::EnumIter, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case", parse_err_ty = String, parse_err_fn = unknown_reservation_status)]
pub enum ReservationStatus {
    /// Units set aside until `expires_at`.
    Active,
    /// The order was paid: set aside with no expiry until it is fulfilled or cancelled.
    Held,
    /// The units left with the order. Final.
    Committed,
    /// The units went back to available (or never left it). Final.
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether its units count in `reserved`.
    pub fn holds_stock(self) -> bool {
        matches!(self, ReservationStatus::Active | ReservationStatus::Held)
    }
}

fn unknown_reservation_status(s: &str) -> String {
    format!("unknown reservation status {s:?}")
}

/// Why a reservation was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::EnumIter, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case", parse_err_ty = String, parse_err_fn = unknown_release_reason)]
pub enum ReleaseReason {
    /// The order was cancelled (or released by hand).
    Cancelled,
    /// Its time ran out before payment.
    Expired,
    /// It was never reserved: stock was short when the order arrived.
    Rejected,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_release_reason(s: &str) -> String {
    format!("unknown release reason {s:?}")
}

/// What can happen to an existing reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The order was paid (`order.paid`).
    Hold,
    /// The order was fulfilled (`order.fulfilled`).
    Commit,
    /// The order was cancelled (`order.cancelled`, or by hand).
    Release,
    /// Its time ran out; whether it is due is the caller's (the store's) condition.
    Expire,
}

/// The answer of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Move to this status (and do the command's stock movement).
    Apply(ReservationStatus),
    /// Nothing to do: the command's effect is already there (a redelivery, a retry) or was
    /// made moot the usual way (an order paid after it was committed).
    NoOp,
    /// Nothing to do, because the reservation went the other way: committing a released one,
    /// releasing a committed one. Events treat it as a no-op too; HTTP callers get a 409.
    Conflict,
}

/// The reservation state machine, as one table.
pub fn decide(from: ReservationStatus, cmd: Command) -> Decision {
    use Command::*;
    use Decision::*;
    use ReservationStatus::*;
    match (from, cmd) {
        (Active, Hold) => Apply(Held),
        (Held | Committed, Hold) => NoOp,
        (Released, Hold) => Conflict,
        (Active | Held, Commit) => Apply(Committed),
        (Committed, Commit) => NoOp,
        (Released, Commit) => Conflict,
        (Active | Held, Release) => Apply(Released),
        (Released, Release) => NoOp,
        (Committed, Release) => Conflict,
        (Active, Expire) => Apply(Released),
        (Held | Committed | Released, Expire) => NoOp,
    }
}

impl Command {
    /// The statuses this command moves a reservation out of: the store's conditional update
    /// accepts exactly these.
    pub fn sources(self) -> Vec<ReservationStatus> {
        ReservationStatus::iter()
            .filter(|s| matches!(decide(*s, self), Decision::Apply(_)))
            .collect()
    }

    /// The status it moves to.
    pub fn target(self) -> ReservationStatus {
        match self {
            Command::Hold => ReservationStatus::Held,
            Command::Commit => ReservationStatus::Committed,
            Command::Release | Command::Expire => ReservationStatus::Released,
        }
    }

    /// The stock movement of one line of `q` units, when the command applies.
    pub fn movement(self, q: i64) -> Option<Movement> {
        match self {
            Command::Hold => None,
            Command::Commit => Some(Movement::Commit(q)),
            Command::Release | Command::Expire => Some(Movement::Release(q)),
        }
    }
}

/// When an active reservation made at `now` expires.
pub fn expires_at(now_us: i64, ttl: Duration) -> i64 {
    now_us.saturating_add(ttl.as_micros().min(i64::MAX as u128) as i64)
}

/// The lines of one reservation: 1 to [`LINES_MAX`] lines of 1 to [`QUANTITY_MAX`] units, one
/// line per product (repeated products are added up), in product order, which is also the
/// order rows are locked in, so two orders never wait on each other in a circle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLines(BTreeMap<ProductId, i64>);

/// One thing wrong with the lines given: `index` names the line, `None` the list itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub index: Option<usize>,
    pub message: String,
}

impl LineError {
    /// As a field error, with the caller's names for the list and for a line's quantity.
    pub fn field(&self, list: &str, quantity: impl Fn(usize) -> String) -> FieldError {
        FieldError {
            field: self.index.map(quantity).unwrap_or_else(|| list.to_owned()),
            message: self.message.clone(),
        }
    }
}

impl OrderLines {
    /// Checks raw lines, reporting every bad one.
    pub fn parse(lines: &[(ProductId, i64)]) -> Result<OrderLines, Vec<LineError>> {
        let mut errors = Vec::new();
        if lines.is_empty() || lines.len() > LINES_MAX {
            errors.push(LineError {
                index: None,
                message: format!("must have 1 to {LINES_MAX} lines"),
            });
        }
        let mut merged = BTreeMap::new();
        for (i, (product, q)) in lines.iter().enumerate() {
            match quantity(*q) {
                Ok(q) => *merged.entry(*product).or_insert(0) += q,
                Err(message) => errors.push(LineError {
                    index: Some(i),
                    message,
                }),
            }
        }
        if errors.is_empty() {
            Ok(OrderLines(merged))
        } else {
            Err(errors)
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (ProductId, i64)> + '_ {
        self.0.iter().map(|(p, q)| (*p, *q))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_stock_lines(&self) -> Vec<StockLine> {
        self.iter()
            .map(|(product_id, quantity)| StockLine {
                product_id,
                quantity,
            })
            .collect()
    }
}

/// A quantity of one order line.
pub fn quantity(q: i64) -> Result<i64, String> {
    if (1..=QUANTITY_MAX).contains(&q) {
        Ok(q)
    } else {
        Err(format!("must be from 1 to {QUANTITY_MAX}"))
    }
}

/// A reservation lifetime asked for by a caller.
pub fn ttl(secs: i64) -> Result<Duration, String> {
    if (1..=TTL_MAX_SECS as i64).contains(&secs) {
        Ok(Duration::from_secs(secs as u64))
    } else {
        Err(format!("must be from 1 to {TTL_MAX_SECS} seconds"))
    }
}

/// What a seller or an admin does to a product's stock by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockChange {
    /// Set on_hand to this count.
    Set(i64),
    /// Add this many units.
    Restock(i64),
}

impl StockChange {
    /// Exactly one of `on_hand` and `restock`, each within its range.
    pub fn parse(on_hand: Option<i64>, restock: Option<i64>) -> Result<StockChange, FieldError> {
        let err = |field: &str, message: String| FieldError {
            field: field.into(),
            message,
        };
        match (on_hand, restock) {
            (Some(n), None) if (0..=ON_HAND_MAX).contains(&n) => Ok(StockChange::Set(n)),
            (Some(_), None) => Err(err("on_hand", format!("must be from 0 to {ON_HAND_MAX}"))),
            (None, Some(n)) if (1..=ON_HAND_MAX).contains(&n) => Ok(StockChange::Restock(n)),
            (None, Some(_)) => Err(err("restock", format!("must be from 1 to {ON_HAND_MAX}"))),
            (Some(_), Some(_)) => Err(err(
                "on_hand",
                "give either on_hand or restock, not both".into(),
            )),
            (None, None) => Err(err("on_hand", "give on_hand or restock".into())),
        }
    }

    pub fn movement(self) -> Movement {
        match self {
            StockChange::Set(to) => Movement::Adjust { to },
            StockChange::Restock(n) => Movement::Restock(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Command::*;
    use Decision::*;
    use ReservationStatus::*;

    #[test]
    fn reservation_transitions_table() {
        let table = [
            (Active, Hold, Apply(Held)),
            (Held, Hold, NoOp),
            (Committed, Hold, NoOp),
            (Released, Hold, Conflict),
            (Active, Commit, Apply(Committed)),
            (Held, Commit, Apply(Committed)),
            (Committed, Commit, NoOp),
            (Released, Commit, Conflict),
            (Active, Release, Apply(Released)),
            (Held, Release, Apply(Released)),
            (Released, Release, NoOp),
            (Committed, Release, Conflict),
            (Active, Expire, Apply(Released)),
            (Held, Expire, NoOp),
            (Committed, Expire, NoOp),
            (Released, Expire, NoOp),
        ];
        assert_eq!(
            table.len(),
            ReservationStatus::iter().len() * 4,
            "every pair"
        );
        for (from, cmd, want) in table {
            assert_eq!(decide(from, cmd), want, "{from:?} + {cmd:?}");
        }
    }

    #[test]
    fn final_states_never_move() {
        for cmd in [Hold, Commit, Release, Expire] {
            for from in [Committed, Released] {
                assert!(!matches!(decide(from, cmd), Apply(_)), "{from:?} {cmd:?}");
            }
        }
    }

    #[test]
    fn sources_and_targets_agree_with_the_table() {
        assert_eq!(Hold.sources(), vec![Active]);
        assert_eq!(Commit.sources(), vec![Active, Held]);
        assert_eq!(Release.sources(), vec![Active, Held]);
        assert_eq!(Expire.sources(), vec![Active]);
        for cmd in [Hold, Commit, Release, Expire] {
            for s in cmd.sources() {
                assert_eq!(decide(s, cmd), Apply(cmd.target()));
            }
        }
    }

    #[test]
    fn availability_math() {
        let l = Levels {
            on_hand: 10,
            reserved: 3,
        };
        assert_eq!(l.available(), 7);
        let cases: &[(Movement, Result<Levels, Refusal>)] = &[
            (
                Movement::Reserve(7),
                Ok(Levels {
                    on_hand: 10,
                    reserved: 10,
                }),
            ),
            (Movement::Reserve(8), Err(Refusal::Short { available: 7 })),
            (
                Movement::Release(3),
                Ok(Levels {
                    on_hand: 10,
                    reserved: 0,
                }),
            ),
            (Movement::Release(4), Err(Refusal::Inconsistent)),
            (
                Movement::Commit(3),
                Ok(Levels {
                    on_hand: 7,
                    reserved: 0,
                }),
            ),
            (Movement::Commit(4), Err(Refusal::Inconsistent)),
            (
                Movement::Restock(5),
                Ok(Levels {
                    on_hand: 15,
                    reserved: 3,
                }),
            ),
            (Movement::Restock(ON_HAND_MAX), Err(Refusal::TooMuch)),
            (
                Movement::Adjust { to: 3 },
                Ok(Levels {
                    on_hand: 3,
                    reserved: 3,
                }),
            ),
            (
                Movement::Adjust { to: 2 },
                Err(Refusal::BelowReserved { reserved: 3 }),
            ),
            (
                Movement::Adjust { to: 20 },
                Ok(Levels {
                    on_hand: 20,
                    reserved: 3,
                }),
            ),
        ];
        for (m, want) in cases {
            assert_eq!(l.apply(*m), *want, "{m:?}");
        }
        assert_eq!(Movement::Adjust { to: 4 }.deltas(l), (-6, 0));
        assert_eq!(Movement::Commit(2).deltas(l), (-2, -2));
    }

    #[test]
    fn lines_are_checked_merged_and_ordered() {
        let a = ProductId(uuid::Uuid::from_u128(2));
        let b = ProductId(uuid::Uuid::from_u128(1));
        let lines = OrderLines::parse(&[(a, 2), (b, 1), (a, 3)]).unwrap();
        assert_eq!(lines.iter().collect::<Vec<_>>(), vec![(b, 1), (a, 5)]);

        let name = |i| format!("items[{i}].quantity");
        let errs = OrderLines::parse(&[(a, 0), (b, 1001), (a, 1)]).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field("items", name).field).collect();
        assert_eq!(fields, vec!["items[0].quantity", "items[1].quantity"]);
        assert_eq!(
            OrderLines::parse(&[]).unwrap_err()[0]
                .field("items", name)
                .field,
            "items"
        );
        let many: Vec<_> = (0..101)
            .map(|i| (ProductId(uuid::Uuid::from_u128(i)), 1))
            .collect();
        assert_eq!(OrderLines::parse(&many).unwrap_err()[0].index, None);
    }

    #[test]
    fn stock_changes_need_exactly_one_field_in_range() {
        assert_eq!(StockChange::parse(Some(0), None), Ok(StockChange::Set(0)));
        assert_eq!(
            StockChange::parse(None, Some(1)),
            Ok(StockChange::Restock(1))
        );
        for (on_hand, restock, field) in [
            (Some(-1), None, "on_hand"),
            (Some(ON_HAND_MAX + 1), None, "on_hand"),
            (None, Some(0), "restock"),
            (Some(1), Some(1), "on_hand"),
            (None, None, "on_hand"),
        ] {
            assert_eq!(
                StockChange::parse(on_hand, restock).unwrap_err().field,
                field
            );
        }
        assert!(ttl(0).is_err() && ttl(86_401).is_err());
        assert_eq!(ttl(30).unwrap(), Duration::from_secs(30));
    }

    #[test]
    fn names_round_trip() {
        // The names are stored (SQL `CHECK`s list them) and on the wire: pinned here, so a
        // renamed variant cannot rename them.
        assert_eq!(
            ReservationStatus::iter()
                .map(ReservationStatus::as_str)
                .collect::<Vec<_>>(),
            ["active", "held", "committed", "released"]
        );
        assert_eq!(
            LedgerKind::iter()
                .map(LedgerKind::as_str)
                .collect::<Vec<_>>(),
            ["initial", "restock", "adjust", "reserve", "release", "commit"]
        );
        assert_eq!(
            ReleaseReason::iter()
                .map(ReleaseReason::as_str)
                .collect::<Vec<_>>(),
            ["cancelled", "expired", "rejected"]
        );
        for s in ReservationStatus::iter() {
            assert_eq!(s.as_str().parse::<ReservationStatus>().unwrap(), s);
        }
        for k in LedgerKind::iter() {
            assert_eq!(k.as_str().parse::<LedgerKind>().unwrap(), k);
        }
        for r in ReleaseReason::iter() {
            assert_eq!(r.as_str().parse::<ReleaseReason>().unwrap(), r);
        }
        assert_eq!(
            "Held".parse::<ReservationStatus>(),
            Err("unknown reservation status \"Held\"".to_owned())
        );
    }

    fn movement() -> impl Strategy<Value = Movement> {
        prop_oneof![
            (0..50i64).prop_map(Movement::Restock),
            (0..60i64).prop_map(|to| Movement::Adjust { to }),
            (1..20i64).prop_map(Movement::Reserve),
            (1..20i64).prop_map(Movement::Release),
            (1..20i64).prop_map(Movement::Commit),
        ]
    }

    proptest! {
        /// Whatever is attempted, applied movements keep every level non-negative, and the
        /// levels are exactly the sum of the applied deltas.
        #[test]
        fn levels_stay_valid_and_equal_the_sum_of_deltas(ms in proptest::collection::vec(movement(), 0..60)) {
            let mut l = Levels::default();
            let (mut sum_h, mut sum_r) = (0, 0);
            for m in ms {
                if let Ok(next) = l.apply(m) {
                    let (dh, dr) = m.deltas(l);
                    sum_h += dh;
                    sum_r += dr;
                    l = next;
                }
                prop_assert!(l.reserved >= 0 && l.available() >= 0 && l.on_hand <= ON_HAND_MAX);
                prop_assert_eq!((l.on_hand, l.reserved), (sum_h, sum_r));
            }
        }
    }
}
