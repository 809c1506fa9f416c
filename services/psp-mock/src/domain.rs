//! What a card processor knows, as plain Rust: card numbers and their test tokens, and the
//! life of one processor payment with its amounts.
//!
//! No HTTP, no locks, no clock: every rule here is a pure function, so the table-driven tests
//! below can walk every legal and illegal move, and the processor (`processor`) only has to
//! store what these functions decide.

use mercato_kit::ids::Currency;
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// The largest amount one authorization may carry (one million in a two-decimal currency).
pub const MAX_AMOUNT_CENTS: u64 = 100_000_000;

/// The well-known test tokens. Clients may use them directly, as with Stripe's.
pub mod tokens {
    pub const VISA: &str = "pm_card_visa";
    pub const DECLINED: &str = "pm_card_chargeDeclined";
    pub const INSUFFICIENT_FUNDS: &str = "pm_card_chargeDeclinedInsufficientFunds";
    pub const PROCESSING_ERROR: &str = "pm_card_processingError";
    pub const PENDING: &str = "pm_card_pending";
}

/// Why the issuer said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeclineCode {
    GenericDecline,
    InsufficientFunds,
}

impl DeclineCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineCode::GenericDecline => "generic_decline",
            DeclineCode::InsufficientFunds => "insufficient_funds",
        }
    }
}

/// How an authorization with a given payment method turns out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Approve,
    Decline(DeclineCode),
    /// A retryable processor failure; the processor decides how many attempts fail.
    ProcessingError,
    /// Accepted, but the outcome arrives later, by webhook.
    Pending,
}

/// The behaviour of a well-known test token; `None` for anything else (a generated token is
/// looked up by the processor and approves like visa).
pub fn test_token_behaviour(token: &str) -> Option<Behaviour> {
    Some(match token {
        tokens::VISA => Behaviour::Approve,
        tokens::DECLINED => Behaviour::Decline(DeclineCode::GenericDecline),
        tokens::INSUFFICIENT_FUNDS => Behaviour::Decline(DeclineCode::InsufficientFunds),
        tokens::PROCESSING_ERROR => Behaviour::ProcessingError,
        tokens::PENDING => Behaviour::Pending,
        _ => return None,
    })
}

/// True when `digits` (ASCII digits only) passes the Luhn checksum.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let twice = d * 2;
                if twice > 9 {
                    twice - 9
                } else {
                    twice
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A card number that passed every check. It is never stored and never printed: `Debug` shows
/// the last four digits only, so a stray `{:?}` in a log cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl CardNumber {
    /// Accepts 13 to 19 digits, optionally grouped with spaces, that pass the Luhn check.
    pub fn parse(raw: &str) -> Result<CardNumber, String> {
        let digits: String = raw.chars().filter(|c| *c != ' ').collect();
        if digits.is_empty() {
            return Err("must not be empty".into());
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must contain digits only".into());
        }
        if !(13..=19).contains(&digits.len()) {
            return Err("must have 13 to 19 digits".into());
        }
        if !luhn_valid(&digits) {
            return Err("is not a valid card number (Luhn check failed)".into());
        }
        Ok(CardNumber(digits))
    }

    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }

    /// The card network, from the issuer prefix; "unknown" when no common range matches.
    pub fn brand(&self) -> &'static str {
        let n = &self.0;
        let prefix = |len: usize| n[..len].parse::<u32>().unwrap_or(0);
        if n.starts_with('4') {
            "visa"
        } else if (51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)) {
            "mastercard"
        } else if matches!(prefix(2), 34 | 37) {
            "amex"
        } else if n.starts_with("6011") || n.starts_with("65") {
            "discover"
        } else {
            "unknown"
        }
    }

    /// The test token this number stands for, if it is one of the documented test cards.
    pub fn test_token(&self) -> Option<&'static str> {
        Some(match self.0.as_str() {
            "4242424242424242" => tokens::VISA,
            "4000000000000002" => tokens::DECLINED,
            "4000000000009995" => tokens::INSUFFICIENT_FUNDS,
            "4000000000000119" => tokens::PROCESSING_ERROR,
            _ => return None,
        })
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber(****{})", self.last4())
    }
}

/// Checks an expiry month.
pub fn exp_month(month: i64) -> Result<u32, String> {
    u32::try_from(month)
        .ok()
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(|| "must be a month from 1 to 12".into())
}

/// Checks an expiry year (two or four digits) against today: a card is valid through the end
/// of its expiry month, and nobody issues cards valid for more than 20 years.
pub fn exp_year(year: i64, month: u32, today: (i32, u32)) -> Result<i32, String> {
    let year = if (0..100).contains(&year) {
        year + 2000
    } else {
        year
    };
    let (this_year, this_month) = today;
    let year = i32::try_from(year).map_err(|_| "must be a year".to_owned())?;
    if year < this_year || (year == this_year && month < this_month) {
        return Err("the card has expired".into());
    }
    if year > this_year + 20 {
        return Err(format!("must be at most {}", this_year + 20));
    }
    Ok(year)
}

/// Checks a card verification code: three digits, four for some networks.
pub fn cvc(cvc: &str) -> Result<(), String> {
    if (3..=4).contains(&cvc.len()) && cvc.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err("must be 3 or 4 digits".into())
    }
}

/// Where a processor payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted; the outcome arrives by webhook when it is settled.
    Pending,
    /// Funds held; may be captured or voided.
    Authorized,
    /// The issuer refused; final.
    Declined,
    /// A pending payment that settled as failed; final.
    Failed,
    /// Money taken; may be refunded.
    Captured,
    /// The hold released before capture; final.
    Voided,
    /// Part of the captured amount returned; more may be refunded.
    PartiallyRefunded,
    /// All of the captured amount returned; final.
    Refunded,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Authorized,
        Status::Declined,
        Status::Failed,
        Status::Captured,
        Status::Voided,
        Status::PartiallyRefunded,
        Status::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Authorized => "authorized",
            Status::Declined => "declined",
            Status::Failed => "failed",
            Status::Captured => "captured",
            Status::Voided => "voided",
            Status::PartiallyRefunded => "partially_refunded",
            Status::Refunded => "refunded",
        }
    }
}

/// How an authorization opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    Authorized,
    Pending,
    Declined(DeclineCode),
}

/// The outcome a test client gives a pending payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// One payment as the processor sees it. Amounts are in the currency's minor unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Payment {
    /// `pi_<32 hex>`: the provider reference the payment service keeps.
    pub id: String,
    pub status: Status,
    pub amount_cents: u64,
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    pub captured_cents: u64,
    pub refunded_cents: u64,
    /// The caller's own reference (the payment service sends its payment or order id).
    pub reference: String,
    /// Present when the authorization was declined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<DeclineCode>,
}

/// A change asked of an existing payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Takes `amount_cents` (default: all) of the authorized amount; the rest is released.
    Capture {
        amount_cents: Option<u64>,
    },
    Void,
    /// Returns `amount_cents` (default: whatever is left) of the captured amount.
    Refund {
        amount_cents: Option<u64>,
    },
    Settle(Outcome),
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Capture { .. } => "capture",
            Command::Void => "void",
            Command::Refund { .. } => "refund",
            Command::Settle(_) => "settle",
        }
    }
}

/// Why a command was refused. The payment is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The command does not apply in this status (capturing a voided payment, say).
    InvalidState {
        status: Status,
        command: &'static str,
    },
    /// More than the authorized amount (capture) or the captured amount not yet refunded
    /// (refund).
    AmountTooLarge {
        requested: u64,
        available: u64,
    },
    ZeroAmount,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InvalidState { status, command } => {
                write!(f, "cannot {command} a payment that is {}", status.as_str())
            }
            Refusal::AmountTooLarge {
                requested,
                available,
            } => write!(f, "{requested} exceeds the {available} available"),
            Refusal::ZeroAmount => f.write_str("the amount must be at least 1"),
        }
    }
}

fn within(requested: u64, available: u64) -> Result<u64, Refusal> {
    if requested == 0 {
        Err(Refusal::ZeroAmount)
    } else if requested > available {
        Err(Refusal::AmountTooLarge {
            requested,
            available,
        })
    } else {
        Ok(requested)
    }
}

impl Payment {
    pub fn open(
        id: String,
        amount_cents: u64,
        currency: Currency,
        reference: String,
        opening: Opening,
    ) -> Payment {
        let (status, decline_code) = match opening {
            Opening::Authorized => (Status::Authorized, None),
            Opening::Pending => (Status::Pending, None),
            Opening::Declined(code) => (Status::Declined, Some(code)),
        };
        Payment {
            id,
            status,
            amount_cents,
            currency,
            captured_cents: 0,
            refunded_cents: 0,
            reference,
            decline_code,
        }
    }

    /// The one place a payment changes: the payment after `command`, or why not.
    pub fn apply(&self, command: Command) -> Result<Payment, Refusal> {
        let mut next = self.clone();
        match (self.status, command) {
            (Status::Authorized, Command::Capture { amount_cents }) => {
                next.captured_cents =
                    within(amount_cents.unwrap_or(self.amount_cents), self.amount_cents)?;
                next.status = Status::Captured;
            }
            // A pending payment can be cancelled before it settles, as real processors allow.
            (Status::Authorized | Status::Pending, Command::Void) => next.status = Status::Voided,
            (Status::Captured | Status::PartiallyRefunded, Command::Refund { amount_cents }) => {
                let left = self.captured_cents - self.refunded_cents;
                next.refunded_cents += within(amount_cents.unwrap_or(left), left)?;
                next.status = if next.refunded_cents == next.captured_cents {
                    Status::Refunded
                } else {
                    Status::PartiallyRefunded
                };
            }
            (Status::Pending, Command::Settle(Outcome::Succeeded)) => {
                next.status = Status::Authorized
            }
            (Status::Pending, Command::Settle(Outcome::Failed)) => next.status = Status::Failed,
            (status, command) => {
                return Err(Refusal::InvalidState {
                    status,
                    command: command.name(),
                })
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: (i32, u32) = (2026, 5);

    #[test]
    fn luhn_accepts_valid_numbers_and_refuses_one_digit_off() {
        for good in [
            "4242424242424242",
            "4000000000000002",
            "4000000000009995",
            "4000000000000119",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "0",
        ] {
            assert!(luhn_valid(good), "{good}");
        }
        for bad in ["4242424242424241", "4000000000000003", "12345", "", "42a2"] {
            assert!(!luhn_valid(bad), "{bad}");
        }
    }

    #[test]
    fn card_numbers_are_checked_and_mapped_to_test_tokens() {
        let cases = [
            ("4242424242424242", Some(tokens::VISA), "visa"),
            ("4242 4242 4242 4242", Some(tokens::VISA), "visa"),
            ("4000000000000002", Some(tokens::DECLINED), "visa"),
            ("4000000000009995", Some(tokens::INSUFFICIENT_FUNDS), "visa"),
            ("4000000000000119", Some(tokens::PROCESSING_ERROR), "visa"),
            ("5555555555554444", None, "mastercard"),
            ("2223003122003222", None, "mastercard"),
            ("378282246310005", None, "amex"),
            ("6011111111111117", None, "discover"),
            ("4111111111111111", None, "visa"),
        ];
        for (raw, token, brand) in cases {
            let n = CardNumber::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(n.test_token(), token, "{raw}");
            assert_eq!(n.brand(), brand, "{raw}");
            assert_eq!(n.last4(), &raw[raw.len() - 4..]);
        }
    }

    #[test]
    fn bad_card_numbers_say_why() {
        for (raw, why) in [
            ("", "empty"),
            ("4242-4242-4242-4242", "digits only"),
            ("424242424242", "13 to 19"),
            ("42424242424242424242", "13 to 19"),
            ("4242424242424241", "Luhn"),
        ] {
            let e = CardNumber::parse(raw).unwrap_err();
            assert!(e.contains(why), "{raw}: {e}");
        }
    }

    #[test]
    fn a_card_number_never_prints_in_full() {
        let n = CardNumber::parse("4242424242424242").unwrap();
        assert_eq!(format!("{n:?}"), "CardNumber(****4242)");
    }

    #[test]
    fn test_tokens_behave_as_documented() {
        use Behaviour::*;
        assert_eq!(test_token_behaviour(tokens::VISA), Some(Approve));
        assert_eq!(
            test_token_behaviour(tokens::DECLINED),
            Some(Decline(DeclineCode::GenericDecline))
        );
        assert_eq!(
            test_token_behaviour(tokens::INSUFFICIENT_FUNDS),
            Some(Decline(DeclineCode::InsufficientFunds))
        );
        assert_eq!(
            test_token_behaviour(tokens::PROCESSING_ERROR),
            Some(ProcessingError)
        );
        assert_eq!(test_token_behaviour(tokens::PENDING), Some(Pending));
        assert_eq!(test_token_behaviour("pm_card_mastercard"), None);
        assert_eq!(test_token_behaviour("PM_CARD_VISA"), None);
    }

    #[test]
    fn expiry_and_cvc_checks() {
        assert_eq!(exp_month(1), Ok(1));
        assert_eq!(exp_month(12), Ok(12));
        for bad in [0, 13, -1, i64::MAX] {
            assert!(exp_month(bad).is_err(), "{bad}");
        }
        assert_eq!(exp_year(2026, 5, TODAY), Ok(2026));
        assert_eq!(exp_year(26, 6, TODAY), Ok(2026));
        assert_eq!(exp_year(2046, 12, TODAY), Ok(2046));
        assert!(exp_year(2026, 4, TODAY).unwrap_err().contains("expired"));
        assert!(exp_year(2025, 12, TODAY).unwrap_err().contains("expired"));
        assert!(exp_year(2047, 1, TODAY).is_err());
        assert!(exp_year(i64::MAX, 1, TODAY).is_err());
        assert!(exp_year(-5, 1, TODAY).is_err());
        assert_eq!(cvc("123"), Ok(()));
        assert_eq!(cvc("1234"), Ok(()));
        for bad in ["12", "12345", "12a", "", " 123"] {
            assert!(cvc(bad).is_err(), "{bad:?}");
        }
    }

    /// A payment of 1000 in `status`, with amounts that status implies.
    fn payment(status: Status) -> Payment {
        let (captured, refunded) = match status {
            Status::Captured => (800, 0),
            Status::PartiallyRefunded => (800, 300),
            Status::Refunded => (800, 800),
            _ => (0, 0),
        };
        Payment {
            id: "pi_test".into(),
            status,
            amount_cents: 1000,
            currency: Currency::USD,
            captured_cents: captured,
            refunded_cents: refunded,
            reference: "order-1".into(),
            decline_code: None,
        }
    }

    const COMMANDS: [Command; 7] = [
        Command::Capture { amount_cents: None },
        Command::Capture {
            amount_cents: Some(400),
        },
        Command::Void,
        Command::Refund { amount_cents: None },
        Command::Refund {
            amount_cents: Some(100),
        },
        Command::Settle(Outcome::Succeeded),
        Command::Settle(Outcome::Failed),
    ];

    /// Every legal move, with the status, captured and refunded amounts it leads to.
    fn legal(status: Status, command: Command) -> Option<(Status, u64, u64)> {
        use Command::*;
        use Status::*;
        Some(match (status, command) {
            (Authorized, Capture { amount_cents: None }) => (Captured, 1000, 0),
            (
                Authorized,
                Capture {
                    amount_cents: Some(400),
                },
            ) => (Captured, 400, 0),
            (Authorized, Void) => (Voided, 0, 0),
            (Pending, Void) => (Voided, 0, 0),
            (Captured, Refund { amount_cents: None }) => (Refunded, 800, 800),
            (
                Captured,
                Refund {
                    amount_cents: Some(100),
                },
            ) => (PartiallyRefunded, 800, 100),
            (PartiallyRefunded, Refund { amount_cents: None }) => (Refunded, 800, 800),
            (
                PartiallyRefunded,
                Refund {
                    amount_cents: Some(100),
                },
            ) => (PartiallyRefunded, 800, 400),
            (Pending, Settle(Outcome::Succeeded)) => (Authorized, 0, 0),
            (Pending, Settle(Outcome::Failed)) => (Failed, 0, 0),
            _ => return None,
        })
    }

    #[test]
    fn every_move_from_every_status() {
        let mut legal_moves = 0;
        for status in Status::ALL {
            for command in COMMANDS {
                let before = payment(status);
                let got = before.apply(command);
                match legal(status, command) {
                    Some((to, captured, refunded)) => {
                        legal_moves += 1;
                        let after =
                            got.unwrap_or_else(|r| panic!("{status:?} + {command:?} refused: {r}"));
                        assert_eq!(
                            (after.status, after.captured_cents, after.refunded_cents),
                            (to, captured, refunded),
                            "{status:?} + {command:?}"
                        );
                        assert_eq!(after.amount_cents, before.amount_cents);
                        assert_eq!(after.id, before.id);
                    }
                    None => assert_eq!(
                        got,
                        Err(Refusal::InvalidState {
                            status,
                            command: command.name()
                        }),
                        "{status:?} + {command:?}"
                    ),
                }
            }
        }
        assert_eq!(legal_moves, 10, "the table lists ten legal moves");
    }

    #[test]
    fn amounts_are_bounded_by_what_is_available() {
        let authorized = payment(Status::Authorized);
        let too_much = Command::Capture {
            amount_cents: Some(1001),
        };
        assert_eq!(
            authorized.apply(too_much),
            Err(Refusal::AmountTooLarge {
                requested: 1001,
                available: 1000
            })
        );
        assert_eq!(
            authorized.apply(Command::Capture {
                amount_cents: Some(0)
            }),
            Err(Refusal::ZeroAmount)
        );
        // 800 captured, 300 refunded: 500 is all that is left.
        let partly = payment(Status::PartiallyRefunded);
        assert_eq!(
            partly.apply(Command::Refund {
                amount_cents: Some(501)
            }),
            Err(Refusal::AmountTooLarge {
                requested: 501,
                available: 500
            })
        );
        assert_eq!(
            partly.apply(Command::Refund {
                amount_cents: Some(0)
            }),
            Err(Refusal::ZeroAmount)
        );
        let all = partly
            .apply(Command::Refund {
                amount_cents: Some(500),
            })
            .unwrap();
        assert_eq!((all.status, all.refunded_cents), (Status::Refunded, 800));
    }

    #[test]
    fn refunds_accumulate_to_exactly_the_captured_amount() {
        let mut p = payment(Status::Authorized)
            .apply(Command::Capture {
                amount_cents: Some(900),
            })
            .unwrap();
        for (amount, status, total) in [
            (100, Status::PartiallyRefunded, 100),
            (350, Status::PartiallyRefunded, 450),
            (450, Status::Refunded, 900),
        ] {
            p = p
                .apply(Command::Refund {
                    amount_cents: Some(amount),
                })
                .unwrap();
            assert_eq!((p.status, p.refunded_cents), (status, total));
        }
        assert!(matches!(
            p.apply(Command::Refund { amount_cents: None }),
            Err(Refusal::InvalidState { .. })
        ));
    }

    #[test]
    fn payments_open_in_the_status_their_behaviour_implies() {
        let open = |o| Payment::open("pi_x".into(), 5, Currency::USD, "r".into(), o);
        assert_eq!(open(Opening::Authorized).status, Status::Authorized);
        assert_eq!(open(Opening::Pending).status, Status::Pending);
        let declined = open(Opening::Declined(DeclineCode::InsufficientFunds));
        assert_eq!(declined.status, Status::Declined);
        assert_eq!(declined.decline_code, Some(DeclineCode::InsufficientFunds));
        let json = serde_json::to_value(&declined).unwrap();
        assert_eq!(json["status"], "declined");
        assert_eq!(json["decline_code"], "insufficient_funds");
        assert_eq!(json["currency"], "USD");
        let json = serde_json::to_value(open(Opening::Authorized)).unwrap();
        assert!(json.get("decline_code").is_none());
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
