//! The processor itself: every payment, generated token, idempotency record and counter, in
//! memory behind one mutex, and the use cases the routes call.
//!
//! This is a test double, so it trades everything a real processor needs (durability, more
//! than one replica) for determinism: one `std::sync::Mutex` held for the whole of each use
//! case, never across an `.await`, makes every request atomic. That also makes idempotency
//! simple: a duplicate can never observe a request half done, so there is no "in flight" state.
//! A restart forgets everything, which is what tests want.

use crate::chaos::ProcessorChaos;
use crate::domain::{self, Behaviour, CardNumber, Command, Opening, Outcome, Payment, Refusal};
use crate::webhook::{Event, EventData, Webhooks};
use axum::http::StatusCode;
use mercato_kit::ids::Currency;
use mercato_kit::Problem;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use utoipa::ToSchema;

/// What tokenization returns; the card number itself is forgotten.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PaymentMethod {
    /// A test token (`pm_card_visa`, ...) or a generated `pm_<32 hex>`.
    pub id: String,
    pub brand: &'static str,
    pub last4: String,
}

/// Counters tests use to prove effects happened exactly once.
#[derive(Clone, Copy, Debug, Default, Serialize, ToSchema)]
pub struct Stats {
    /// Authorization records created (authorized, pending or declined).
    pub authorizations: u64,
    /// Every `POST /v1/authorizations` request, replays and refusals included.
    pub authorization_attempts: u64,
    pub captures: u64,
    pub voids: u64,
    pub refunds: u64,
    /// Webhook deliveries the receiver acknowledged with a 2xx (a duplicated event counts
    /// twice).
    pub webhooks_sent: u64,
}

/// A request's `Idempotency-Key` and what identifies the request it came with.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub key: String,
    pub fingerprint: String,
}

/// An answer as sent and, for keyed requests, as replayed: the same status and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
    /// True when this is a stored answer sent again.
    pub replayed: bool,
}

impl Answer {
    fn json<T: Serialize>(status: StatusCode, body: &T) -> Result<Answer, Problem> {
        Ok(Answer {
            status,
            body: serde_json::to_value(body).map_err(|e| Problem::internal(&e))?,
            replayed: false,
        })
    }

    /// Whether the body is a problem document (and must be sent as one).
    pub fn is_problem(&self) -> bool {
        self.status.is_client_error() || self.status.is_server_error()
    }
}

/// What one key has seen.
struct KeyRecord {
    fingerprint: String,
    /// The answer to replay, once the request had its effect.
    answer: Option<Answer>,
    /// Processing errors already answered for this key (see `pm_card_processingError`).
    processing_errors: u32,
}

#[derive(Default)]
struct Inner {
    payments: HashMap<String, Payment>,
    /// Tokens minted for cards that are not test cards; they approve like visa.
    generated_methods: HashSet<String>,
    keys: HashMap<String, KeyRecord>,
    stats: Stats,
}

impl Inner {
    /// The stored answer for a key, a refusal when the key came with another request, or
    /// nothing when the request should run.
    fn recall(&mut self, keyed: &Keyed) -> Result<Option<Answer>, Problem> {
        let Some(record) = self.keys.get(&keyed.key) else {
            return Ok(None);
        };
        if record.fingerprint != keyed.fingerprint {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "This Idempotency-Key was used for a different request",
            )
            .with_detail("use a new Idempotency-Key for a different request"));
        }
        Ok(record.answer.clone().map(|a| Answer {
            replayed: true,
            ..a
        }))
    }

    fn record(&mut self, keyed: &Keyed) -> &mut KeyRecord {
        self.keys
            .entry(keyed.key.clone())
            .or_insert_with(|| KeyRecord {
                fingerprint: keyed.fingerprint.clone(),
                answer: None,
                processing_errors: 0,
            })
    }

    fn remember(&mut self, keyed: Option<&Keyed>, answer: &Answer) {
        if let Some(keyed) = keyed {
            self.record(keyed).answer = Some(answer.clone());
        }
    }

    fn behaviour(&self, token: &str) -> Option<Behaviour> {
        domain::test_token_behaviour(token).or_else(|| {
            self.generated_methods
                .contains(token)
                .then_some(Behaviour::Approve)
        })
    }
}

/// A validated authorization request.
#[derive(Clone, Debug)]
pub struct Authorization {
    pub amount_cents: u64,
    pub currency: Currency,
    pub payment_method: String,
    pub reference: String,
}

pub struct Processor {
    inner: Mutex<Inner>,
    processing_error_attempts: u32,
    webhooks: Webhooks,
    /// What the processor is currently told to do wrong (see `chaos`).
    chaos: Arc<ProcessorChaos>,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn unknown_payment(id: &str) -> Problem {
    Problem::not_found(format!("no payment {id}"))
}

/// The one mapping from a domain refusal to what the client sees.
fn refused(r: Refusal) -> Problem {
    match r {
        Refusal::InvalidState { .. } => Problem::conflict("invalid_state", r.to_string()),
        Refusal::AmountTooLarge { .. } | Refusal::ZeroAmount => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "The amount is not possible for this payment",
        )
        .with_detail(r.to_string())
        .with_errors(vec![mercato_kit::problem::FieldError {
            field: "amount_cents".into(),
            message: r.to_string(),
        }]),
    }
}

impl Processor {
    pub fn new(
        processing_error_attempts: u32,
        webhooks: Webhooks,
        chaos: Arc<ProcessorChaos>,
    ) -> Processor {
        Processor {
            inner: Mutex::new(Inner::default()),
            processing_error_attempts,
            webhooks,
            chaos,
        }
    }

    /// The processor's chaos switch.
    pub fn chaos(&self) -> &ProcessorChaos {
        &self.chaos
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is synchronous and leaves the state consistent before any
        // step that could panic, so a poisoned lock still guards good data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers a card as a token. Test cards map to their test tokens; any other card gets a
    /// fresh token that approves.
    pub fn tokenize(&self, card: &CardNumber) -> PaymentMethod {
        let id = match card.test_token() {
            Some(token) => token.to_owned(),
            None => {
                let id = new_id("pm");
                self.lock().generated_methods.insert(id.clone());
                id
            }
        };
        PaymentMethod {
            id,
            brand: card.brand(),
            last4: card.last4().to_owned(),
        }
    }

    /// Counts a request to authorize before anything about it is checked, so tests see every
    /// attempt, refused ones included.
    pub fn count_authorization_attempt(&self) {
        self.lock().stats.authorization_attempts += 1;
    }

    /// Authorizes, declines, fails retryably or accepts as pending, by payment method.
    pub fn authorize(&self, keyed: &Keyed, req: Authorization) -> Result<Answer, Problem> {
        let mut inner = self.lock();
        if let Some(answer) = inner.recall(keyed)? {
            return Ok(answer);
        }
        let behaviour = inner.behaviour(&req.payment_method).ok_or_else(|| {
            Problem::field(
                "payment_method",
                "is not a payment method this processor knows",
            )
        })?;
        let opening = match behaviour {
            Behaviour::Approve => Opening::Authorized,
            Behaviour::Pending => Opening::Pending,
            Behaviour::Decline(code) => Opening::Declined(code),
            Behaviour::ProcessingError => {
                let record = inner.record(keyed);
                if record.processing_errors < self.processing_error_attempts {
                    // Not stored as the key's answer: the client is meant to retry with it.
                    record.processing_errors += 1;
                    return Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "processing_error",
                        "The processor could not process the payment",
                    )
                    .with_detail("a transient processor error; retry with the same Idempotency-Key")
                    .with_extension("retryable", serde_json::Value::Bool(true)));
                }
                Opening::Authorized
            }
        };
        let payment = Payment::open(
            new_id("pi"),
            req.amount_cents,
            req.currency,
            req.reference,
            opening,
        );
        let answer = match opening {
            Opening::Authorized => Answer::json(StatusCode::CREATED, &payment)?,
            Opening::Pending => Answer::json(StatusCode::ACCEPTED, &payment)?,
            Opening::Declined(code) => Answer::json(
                StatusCode::PAYMENT_REQUIRED,
                &Problem::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_declined",
                    "The card was declined",
                )
                .with_detail(format!("the issuer declined: {}", code.as_str()))
                .with_extension("decline_code", code.as_str().into())
                .with_extension("payment_id", payment.id.clone().into()),
            )?,
        };
        inner.stats.authorizations += 1;
        inner.payments.insert(payment.id.clone(), payment);
        inner.remember(Some(keyed), &answer);
        Ok(answer)
    }

    /// Captures, voids or refunds an existing payment.
    pub fn change(
        &self,
        id: &str,
        keyed: Option<&Keyed>,
        command: Command,
    ) -> Result<Answer, Problem> {
        let mut inner = self.lock();
        if let Some(keyed) = keyed {
            if let Some(answer) = inner.recall(keyed)? {
                return Ok(answer);
            }
        }
        let current = inner.payments.get(id).ok_or_else(|| unknown_payment(id))?;
        let next = current.apply(command).map_err(refused)?;
        let answer = Answer::json(StatusCode::OK, &next)?;
        match command {
            Command::Capture { .. } => inner.stats.captures += 1,
            Command::Void => inner.stats.voids += 1,
            Command::Refund { .. } => inner.stats.refunds += 1,
            Command::Settle(_) => {}
        }
        inner.payments.insert(next.id.clone(), next);
        inner.remember(keyed, &answer);
        Ok(answer)
    }

    /// Settles a pending payment and tells the merchant by webhook.
    pub fn settle(&self, id: &str, outcome: Outcome) -> Result<Payment, Problem> {
        let settled = {
            let mut inner = self.lock();
            let current = inner.payments.get(id).ok_or_else(|| unknown_payment(id))?;
            let next = current.apply(Command::Settle(outcome)).map_err(refused)?;
            inner.payments.insert(next.id.clone(), next.clone());
            next
        };
        self.webhooks.send(Event {
            id: new_id("evt"),
            kind: match outcome {
                Outcome::Succeeded => "payment.succeeded",
                Outcome::Failed => "payment.failed",
            },
            created: chrono::Utc::now().timestamp(),
            data: EventData {
                provider_ref: settled.id.clone(),
                status: settled.status.as_str(),
                amount_cents: settled.amount_cents,
                currency: settled.currency.to_string(),
                reference: settled.reference.clone(),
            },
        });
        Ok(settled)
    }

    pub fn payment(&self, id: &str) -> Result<Payment, Problem> {
        self.lock()
            .payments
            .get(id)
            .cloned()
            .ok_or_else(|| unknown_payment(id))
    }

    pub fn stats(&self) -> Stats {
        Stats {
            webhooks_sent: self.webhooks.delivered(),
            ..self.lock().stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tokens;

    fn processor(processing_error_attempts: u32) -> Processor {
        let chaos = Arc::new(ProcessorChaos::default());
        let (webhooks, _) =
            crate::webhook::channel(None, mercato_kit::config::Secret::new("s"), chaos.clone())
                .expect("no client is built without a URL");
        Processor::new(processing_error_attempts, webhooks, chaos)
    }

    fn keyed(key: &str, fingerprint: &str) -> Keyed {
        Keyed {
            key: key.into(),
            fingerprint: fingerprint.into(),
        }
    }

    fn auth(token: &str) -> Authorization {
        Authorization {
            amount_cents: 1500,
            currency: Currency::USD,
            payment_method: token.into(),
            reference: "order-1".into(),
        }
    }

    #[test]
    fn a_key_replays_its_answer_and_refuses_another_request() {
        let p = processor(0);
        let first = p.authorize(&keyed("k", "a"), auth(tokens::VISA)).unwrap();
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(!first.replayed);
        let again = p.authorize(&keyed("k", "a"), auth(tokens::VISA)).unwrap();
        assert!(again.replayed);
        assert_eq!((again.status, &again.body), (first.status, &first.body));
        let err = p
            .authorize(&keyed("k", "b"), auth(tokens::VISA))
            .unwrap_err();
        assert_eq!(err.status, 422);
        assert_eq!(p.stats().authorizations, 1);
    }

    #[test]
    fn processing_errors_are_counted_per_key() {
        let p = processor(2);
        let k1 = keyed("k1", "a");
        for _ in 0..2 {
            let e = p
                .authorize(&k1, auth(tokens::PROCESSING_ERROR))
                .unwrap_err();
            assert_eq!((e.status, e.code.as_ref()), (503, "processing_error"));
        }
        // Another key starts its own count.
        let e = p
            .authorize(&keyed("k2", "a"), auth(tokens::PROCESSING_ERROR))
            .unwrap_err();
        assert_eq!(e.status, 503);
        let ok = p.authorize(&k1, auth(tokens::PROCESSING_ERROR)).unwrap();
        assert_eq!(ok.status, StatusCode::CREATED);
        assert_eq!(ok.body["status"], "authorized");
        assert_eq!(p.stats().authorizations, 1);
    }

    #[test]
    fn only_known_tokens_authorize() {
        let p = processor(0);
        let e = p
            .authorize(&keyed("k", "a"), auth("pm_nonexistent"))
            .unwrap_err();
        assert_eq!(e.status, 422);
        assert_eq!(e.errors[0].field, "payment_method");
        let card = CardNumber::parse("5555555555554444").unwrap();
        let pm = p.tokenize(&card);
        assert!(pm.id.starts_with("pm_") && pm.id.len() == 35, "{}", pm.id);
        assert_eq!((pm.brand, pm.last4.as_str()), ("mastercard", "4444"));
        let ok = p.authorize(&keyed("k2", "a"), auth(&pm.id)).unwrap();
        assert_eq!(ok.status, StatusCode::CREATED);
        // A refusal is not remembered under its key: the key may be reused for a fixed request.
        let fixed = p.authorize(&keyed("k", "b"), auth(tokens::VISA)).unwrap();
        assert_eq!(fixed.status, StatusCode::CREATED);
        assert_eq!(p.stats().authorizations, 2);
    }

    #[test]
    fn a_refused_change_changes_nothing() {
        let p = processor(0);
        let a = p.authorize(&keyed("k", "a"), auth(tokens::VISA)).unwrap();
        let id = a.body["id"].as_str().unwrap().to_owned();
        let e = p
            .change(
                &id,
                None,
                Command::Capture {
                    amount_cents: Some(1501),
                },
            )
            .unwrap_err();
        assert_eq!((e.status, e.code.as_ref()), (422, "invalid_amount"));
        p.change(&id, None, Command::Void).unwrap();
        let e = p
            .change(&id, None, Command::Capture { amount_cents: None })
            .unwrap_err();
        assert_eq!((e.status, e.code.as_ref()), (409, "invalid_state"));
        assert_eq!(p.payment(&id).unwrap().status, domain::Status::Voided);
        assert_eq!((p.stats().captures, p.stats().voids), (0, 1));
        assert_eq!(
            p.change("pi_nope", None, Command::Void).unwrap_err().status,
            404
        );
    }
}
