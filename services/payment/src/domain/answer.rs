//! What an answer from the processor does: [`next_step`] takes the call that was made, the
//! payment as it was when the answer came, the answer and the time, and decides everything the
//! service then writes (put the call back for later, give up on it, or take it off the queue
//! and change the payment) without reading a clock, a database or the network. The service's
//! `record_answer` carries the decision out in one transaction.
//!
//! Two questions stay with the service because only its transaction can answer them, and the
//! decision says where they are asked: whether the call is still queued (another worker may
//! have recorded its answer already), and whether the order was cancelled, read only after
//! the payment was saved so that a cancellation racing with the answer is always seen by one
//! side or the other.

use super::{reasons, Fact, JobKind, Money, Status};
use mercato_kit::backoff::Backoff;
use std::time::Duration;

/// What the processor's answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The amount is held.
    Authorized { provider_ref: String },
    /// Accepted; the outcome arrives by webhook.
    Pending { provider_ref: String },
    /// The issuer said no.
    Declined {
        decline_code: String,
        provider_ref: Option<String>,
    },
    /// A capture, void or refund was done.
    Done { provider_status: String },
    /// The processor refused the request itself (unknown token, invalid state, bad amount):
    /// final, and a sign that we and the processor disagree.
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// Nothing is known; try again later with the same key. `maybe_applied` when the request
    /// may have reached the processor and taken effect (a timeout, a gateway error), as
    /// opposed to being refused before any effect (no connection, the breaker open, 503, 429).
    Retryable { reason: String, maybe_applied: bool },
}

impl Reply {
    /// One line for the transaction record.
    pub fn summary(&self) -> String {
        let text = match self {
            Reply::Authorized { provider_ref } => format!("authorized as {provider_ref}"),
            Reply::Pending { provider_ref } => format!("pending as {provider_ref}"),
            Reply::Declined { decline_code, .. } => format!("declined: {decline_code}"),
            Reply::Done { provider_status } => format!("done: {provider_status}"),
            Reply::Refused {
                status,
                code,
                detail,
            } => format!("refused {status} {code}: {detail}"),
            Reply::Retryable { reason, .. } => format!("transient: {reason}"),
        };
        text.chars().take(500).collect()
    }
}

/// A reply with what is recorded about the call.
#[derive(Clone, Debug)]
pub struct Answer {
    pub reply: Reply,
    pub http_status: Option<u16>,
    pub elapsed: Duration,
    /// For a call the open circuit breaker refused: when trial calls will be let through. A
    /// retry before then would be refused too, and one long after wastes the recovery.
    pub retry_in: Option<Duration>,
}

/// The call an answer is for, as the rules need to see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub kind: JobKind,
    /// The amount asked for (a capture or refund of "all" when `None`).
    pub amount_cents: Option<i64>,
    /// When to stop trying (µs); an authorization is given up then.
    pub give_up_at: Option<i64>,
    /// Some earlier attempt may have reached the processor.
    pub ambiguous: bool,
    /// Which attempt this answer is to (1 = the first).
    pub attempt: i64,
}

/// The payment as it stood when the answer came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing<'a> {
    pub money: Money,
    pub provider_ref: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
}

impl Standing<'_> {
    /// Whether we failed the payment for want of an answer (so a hold may exist unknown to us).
    pub fn gave_up(&self) -> bool {
        gave_up(self.money.status, self.failure_reason)
    }
}

/// Whether a payment in `status` failed for `failure_reason` was failed for want of an
/// answer from the processor, so that a hold may exist there unknown to us.
pub fn gave_up(status: Status, failure_reason: Option<&str>) -> bool {
    status == Status::Failed && failure_reason == Some(reasons::PROCESSOR_UNAVAILABLE)
}

/// How failed calls are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryRules {
    /// The first wait before retrying a failed call; doubled per attempt.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
    /// After giving up on an authorization whose lost attempt may have succeeded, how long to
    /// keep asking whether it did.
    pub reconcile_for: Duration,
}

/// A pending payment that will never be authorized: the fact to apply and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub fact: Fact,
    pub reason: String,
    /// The processor's reference, kept when the payment has none yet.
    pub provider_ref: Option<String>,
}

/// Keep asking, after a give-up, whether a lost attempt placed a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconcile {
    pub not_before: i64,
    pub give_up_at: i64,
}

/// What to do with an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing is known yet and there is time left: record the attempt and put the call back
    /// in the queue for `at` (µs).
    Retry {
        at: i64,
        ambiguous: bool,
        reason: String,
        /// Announce `payment.delayed` if the call is still queued: the order waits for this
        /// authorization and is told why, once per failed attempt.
        announce_delay: bool,
    },
    /// Nothing is known and the time is up: record the attempt as given up; keep checking
    /// with the same key when a hold may exist (`reconcile`), else take the call off the
    /// queue; fail the payment if it is still waiting for its authorization.
    GiveUp {
        reason: String,
        reconcile: Option<Reconcile>,
        fail: Option<Failure>,
    },
    /// A final answer: take the call off the queue and record the attempt, then carry out
    /// `effect`, unless another worker recorded this call's answer already (it is no longer
    /// queued), in which case nothing is written.
    Answered(Effect),
}

/// What a final answer does to the payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The authorization is held: record it with its reference; then void it if the order was
    /// cancelled meanwhile, else announce `payment.authorized`.
    Authorize { provider_ref: String },
    /// The authorization is pending until the processor's webhook: remember its reference if
    /// the payment has none (`remember_ref`); then void it if the order was cancelled
    /// meanwhile rather than wait for a decision that may never come.
    AwaitWebhook {
        provider_ref: String,
        remember_ref: bool,
    },
    /// The authorization will never come.
    Fail(Failure),
    /// The processor authorized a payment we had already failed: remember the reference and
    /// void the orphan hold.
    ReleaseOrphan { provider_ref: String },
    /// A payment we gave up on is pending at the processor: remember the reference, so that
    /// its webhook can release it.
    RememberRef { provider_ref: String },
    /// A capture, void or refund was done: apply it and announce it with `amount_cents`.
    Confirm { fact: Fact, amount_cents: i64 },
    /// A void of a hold the payment no longer counts (an orphan) was done.
    OrphanReleased,
    /// The processor refused a call we believed valid; the payment is unchanged.
    Disputed,
    /// The answer changes nothing (the payment moved on).
    Nothing,
}

/// What `answer` to attempt `call` means for a payment that stood at `payment`, at `now` (µs).
/// `spread` (0..1, random in production) spreads the backoff of calls failing together.
pub fn next_step(
    call: &Attempt,
    payment: &Standing<'_>,
    answer: &Answer,
    now: i64,
    rules: &RetryRules,
    spread: f64,
) -> Step {
    let pending = payment.money.status == Status::Pending;
    if let Reply::Retryable {
        reason,
        maybe_applied,
    } = &answer.reply
    {
        let ambiguous = call.ambiguous || *maybe_applied;
        let expired = call.kind == JobKind::Authorize && call.give_up_at.is_some_and(|g| now >= g);
        if !expired {
            // While the processor's breaker is open, come back when it lets a trial call
            // through: refused attempts would otherwise push the backoff towards its cap,
            // and a processor back after 30 s would see its payments only a minute later.
            let wait = answer.retry_in.unwrap_or_else(|| {
                let retry = call.attempt.clamp(1, u32::MAX as i64) as u32 - 1;
                Backoff::new(rules.base, rules.cap).delay(retry, spread)
            });
            let mut at = now.saturating_add(micros(wait));
            if let Some(g) = call.give_up_at {
                // One last attempt at the deadline rather than none after it.
                at = at.min(g);
            }
            return Step::Retry {
                at,
                ambiguous,
                reason: reason.clone(),
                // Not for the checks that follow a give-up (the payment has failed by then).
                announce_delay: call.kind == JobKind::Authorize && pending,
            };
        }
        // An earlier attempt may have authorized without us hearing the answer. Keep asking,
        // with the same key, so that an authorization that exists is found (the processor
        // replays it) and released instead of held for nothing.
        let reconcile = (pending && ambiguous).then(|| Reconcile {
            not_before: now.saturating_add(micros(rules.cap)),
            give_up_at: now.saturating_add(micros(rules.reconcile_for)),
        });
        return Step::GiveUp {
            reason: reason.clone(),
            reconcile,
            fail: pending.then(|| Failure {
                fact: Fact::Declined,
                reason: reasons::PROCESSOR_UNAVAILABLE.to_owned(),
                provider_ref: None,
            }),
        };
    }
    let money = &payment.money;
    let effect = match (call.kind, &answer.reply) {
        (JobKind::Authorize, Reply::Authorized { provider_ref }) if pending => Effect::Authorize {
            provider_ref: provider_ref.clone(),
        },
        (JobKind::Authorize, Reply::Pending { provider_ref }) if pending => Effect::AwaitWebhook {
            provider_ref: provider_ref.clone(),
            remember_ref: payment.provider_ref.is_none(),
        },
        (
            JobKind::Authorize,
            Reply::Declined {
                decline_code,
                provider_ref,
            },
        ) if pending => Effect::Fail(Failure {
            fact: Fact::Declined,
            reason: decline_code.clone(),
            provider_ref: provider_ref.clone(),
        }),
        (JobKind::Authorize, Reply::Refused { status, .. }) if pending => Effect::Fail(Failure {
            fact: Fact::Declined,
            reason: if *status == 422 {
                reasons::INVALID_PAYMENT_METHOD
            } else {
                reasons::PROCESSOR_REFUSED
            }
            .to_owned(),
            provider_ref: None,
        }),
        (JobKind::Authorize, Reply::Authorized { provider_ref }) if payment.gave_up() => {
            Effect::ReleaseOrphan {
                provider_ref: provider_ref.clone(),
            }
        }
        (JobKind::Authorize, Reply::Pending { provider_ref }) if payment.gave_up() => {
            Effect::RememberRef {
                provider_ref: provider_ref.clone(),
            }
        }
        (JobKind::Capture, Reply::Done { .. }) => {
            let amount_cents = call.amount_cents.unwrap_or(money.amount_cents);
            Effect::Confirm {
                fact: Fact::Captured { amount_cents },
                amount_cents,
            }
        }
        (JobKind::Void, Reply::Done { .. }) => {
            if matches!(money.status, Status::Authorized | Status::Pending) {
                Effect::Confirm {
                    fact: Fact::Voided,
                    amount_cents: money.amount_cents,
                }
            } else {
                Effect::OrphanReleased
            }
        }
        (JobKind::Refund, Reply::Done { .. }) => {
            let amount_cents = call.amount_cents.unwrap_or(money.refundable());
            Effect::Confirm {
                fact: Fact::Refunded { amount_cents },
                amount_cents,
            }
        }
        (_, Reply::Refused { .. }) => Effect::Disputed,
        _ => Effect::Nothing,
    };
    Step::Answered(effect)
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    const NOW: i64 = 1_000_000_000_000;
    const MS: i64 = 1_000;
    const SEC: i64 = 1_000_000;
    const RULES: RetryRules = RetryRules {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(60),
        reconcile_for: Duration::from_secs(24 * 3600),
    };

    /// The payment in each state the answers meet.
    const STATES: [&str; 9] = [
        "pending",
        "pending with ref",
        "authorized",
        "captured",
        "partly refunded",
        "refunded",
        "voided",
        "declined",
        "gave up",
    ];

    fn state(name: &str) -> Standing<'static> {
        let unavailable = Some(reasons::PROCESSOR_UNAVAILABLE);
        // (status, captured, refunded, provider reference, failure reason)
        #[rustfmt::skip]
        let (status, captured_cents, refunded_cents, provider_ref, failure_reason) = match name {
            "pending" => (Status::Pending, 0, 0, None, None),
            "pending with ref" => (Status::Pending, 0, 0, Some("pr_1"), None),
            "authorized" => (Status::Authorized, 0, 0, Some("pr_1"), None),
            "captured" => (Status::Captured, 800, 0, Some("pr_1"), None),
            "partly refunded" => (Status::PartiallyRefunded, 800, 300, Some("pr_1"), None),
            "refunded" => (Status::Refunded, 800, 800, Some("pr_1"), None),
            "voided" => (Status::Voided, 0, 0, Some("pr_1"), None),
            "declined" => (Status::Failed, 0, 0, Some("pr_1"), Some("card_declined")),
            "gave up" => (Status::Failed, 0, 0, None, unavailable),
            other => panic!("no state {other}"),
        };
        Standing {
            money: Money {
                status,
                amount_cents: 1000,
                captured_cents,
                refunded_cents,
            },
            provider_ref,
            failure_reason,
        }
    }

    fn call(kind: JobKind) -> Attempt {
        Attempt {
            kind,
            amount_cents: None,
            give_up_at: None,
            ambiguous: false,
            attempt: 1,
        }
    }

    fn authorize() -> Attempt {
        Attempt {
            amount_cents: Some(1000),
            give_up_at: Some(NOW + 60 * SEC),
            ..call(JobKind::Authorize)
        }
    }

    fn answer(reply: Reply) -> Answer {
        Answer {
            reply,
            http_status: None,
            elapsed: Duration::ZERO,
            retry_in: None,
        }
    }

    fn authorized() -> Answer {
        answer(Reply::Authorized {
            provider_ref: "pr_1".into(),
        })
    }
    fn pending() -> Answer {
        answer(Reply::Pending {
            provider_ref: "pr_1".into(),
        })
    }
    fn declined() -> Answer {
        answer(Reply::Declined {
            decline_code: "insufficient_funds".into(),
            provider_ref: Some("pr_1".into()),
        })
    }
    fn done() -> Answer {
        answer(Reply::Done {
            provider_status: "ok".into(),
        })
    }
    fn refused(status: u16) -> Answer {
        answer(Reply::Refused {
            status,
            code: "nope".into(),
            detail: "no".into(),
        })
    }
    /// No connection, a 503, the breaker: the request had no effect.
    fn unreachable() -> Answer {
        answer(Reply::Retryable {
            reason: "unreachable".into(),
            maybe_applied: false,
        })
    }
    /// A timeout: the request may have taken effect.
    fn timeout() -> Answer {
        answer(Reply::Retryable {
            reason: "unreachable".into(),
            maybe_applied: true,
        })
    }
    /// The breaker is open and lets a trial call through in 5 s.
    fn breaker_open() -> Answer {
        Answer {
            retry_in: Some(Duration::from_secs(5)),
            ..unreachable()
        }
    }

    fn fail(reason: &str, provider_ref: Option<&str>) -> Step {
        Step::Answered(Effect::Fail(Failure {
            fact: Fact::Declined,
            reason: reason.into(),
            provider_ref: provider_ref.map(Into::into),
        }))
    }
    fn retry(at: i64, ambiguous: bool, announce_delay: bool) -> Step {
        Step::Retry {
            at,
            ambiguous,
            reason: "unreachable".into(),
            announce_delay,
        }
    }
    fn give_up(reconcile: bool, fail: bool) -> Step {
        Step::GiveUp {
            reason: "unreachable".into(),
            reconcile: reconcile.then_some(Reconcile {
                not_before: NOW + 60 * SEC,
                give_up_at: NOW + 24 * 3600 * SEC,
            }),
            fail: fail.then(|| Failure {
                fact: Fact::Declined,
                reason: reasons::PROCESSOR_UNAVAILABLE.into(),
                provider_ref: None,
            }),
        }
    }
    fn effect(e: Effect) -> Step {
        Step::Answered(e)
    }
    fn confirm(fact: Fact, amount_cents: i64) -> Step {
        effect(Effect::Confirm { fact, amount_cents })
    }
    fn pr1() -> String {
        "pr_1".into()
    }

    /// Every reply kind against the job and payment states where it means something
    /// different, with the whole decision it leads to.
    #[test]
    fn every_answer_in_every_state() {
        let auth = authorize();
        let expired = Attempt {
            give_up_at: Some(NOW),
            ..auth
        };
        let reconciling = Attempt {
            ambiguous: true,
            give_up_at: Some(NOW + 3600 * SEC),
            ..auth
        };
        let capture_600 = Attempt {
            amount_cents: Some(600),
            ..call(JobKind::Capture)
        };
        let refund_300 = Attempt {
            amount_cents: Some(300),
            ..call(JobKind::Refund)
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Attempt, &str, Answer, Step)> = vec![
            // An authorization, answered finally.
            ("authorized", auth, "pending", authorized(),
                effect(Effect::Authorize { provider_ref: pr1() })),
            ("pending, no ref yet", auth, "pending", pending(),
                effect(Effect::AwaitWebhook { provider_ref: pr1(), remember_ref: true })),
            ("pending, ref known", auth, "pending with ref", pending(),
                effect(Effect::AwaitWebhook { provider_ref: pr1(), remember_ref: false })),
            ("declined", auth, "pending", declined(), fail("insufficient_funds", Some("pr_1"))),
            ("refused token", auth, "pending", refused(422),
                fail(reasons::INVALID_PAYMENT_METHOD, None)),
            ("refused otherwise", auth, "pending", refused(409),
                fail(reasons::PROCESSOR_REFUSED, None)),
            ("done (nonsense)", auth, "pending", done(), effect(Effect::Nothing)),
            // An authorization answered after we gave up on it.
            ("late authorized", reconciling, "gave up", authorized(),
                effect(Effect::ReleaseOrphan { provider_ref: pr1() })),
            ("late pending", reconciling, "gave up", pending(),
                effect(Effect::RememberRef { provider_ref: pr1() })),
            ("late declined", reconciling, "gave up", declined(), effect(Effect::Nothing)),
            ("late refused", reconciling, "gave up", refused(409), effect(Effect::Disputed)),
            // An authorization answered again after the payment moved on.
            ("authorized twice", auth, "authorized", authorized(), effect(Effect::Nothing)),
            ("authorized after a decline", auth, "declined", authorized(), effect(Effect::Nothing)),
            ("pending after a decline", auth, "declined", pending(), effect(Effect::Nothing)),
            ("refused when authorized", auth, "authorized", refused(422), effect(Effect::Disputed)),
            // An authorization that got no answer, with time left.
            ("unreachable, 1st attempt", auth, "pending", unreachable(),
                retry(NOW + 200 * MS, false, true)),
            ("timeout, 3rd attempt", Attempt { attempt: 3, ..auth }, "pending", timeout(),
                retry(NOW + 800 * MS, true, true)),
            ("earlier attempt ambiguous", Attempt { ambiguous: true, ..auth }, "pending",
                unreachable(), retry(NOW + 200 * MS, true, true)),
            ("backoff capped", Attempt { attempt: 40, give_up_at: None, ..auth }, "pending",
                unreachable(), retry(NOW + 60 * SEC, false, true)),
            ("breaker open", auth, "pending", breaker_open(), retry(NOW + 5 * SEC, false, true)),
            ("last try at the deadline", Attempt { give_up_at: Some(NOW + 100 * MS), ..auth },
                "pending", unreachable(), retry(NOW + 100 * MS, false, true)),
            ("checking after a give-up", reconciling, "gave up", unreachable(),
                retry(NOW + 200 * MS, true, false)),
            // An authorization that got no answer, time up.
            ("expired, never sent", expired, "pending", unreachable(), give_up(false, true)),
            ("expired, may have been sent", Attempt { ambiguous: true, ..expired }, "pending",
                unreachable(), give_up(true, true)),
            ("expired on a timeout", expired, "pending", timeout(), give_up(true, true)),
            ("checks exhausted", Attempt { ambiguous: true, ..expired }, "gave up", timeout(),
                give_up(false, false)),
            // Captures.
            ("capture done", capture_600, "authorized", done(), confirm(Fact::Captured { amount_cents: 600 }, 600)),
            ("capture all done", call(JobKind::Capture), "authorized", done(),
                confirm(Fact::Captured { amount_cents: 1000 }, 1000)),
            ("capture refused", capture_600, "authorized", refused(409), effect(Effect::Disputed)),
            ("capture authorized (nonsense)", capture_600, "authorized", authorized(),
                effect(Effect::Nothing)),
            ("capture unreachable", capture_600, "authorized", unreachable(),
                retry(NOW + 200 * MS, false, false)),
            ("a capture is never given up", Attempt { give_up_at: Some(NOW - SEC), ..capture_600 },
                "authorized", unreachable(), retry(NOW - SEC, false, false)),
            // Voids.
            ("void done", call(JobKind::Void), "authorized", done(), confirm(Fact::Voided, 1000)),
            ("pending void done", call(JobKind::Void), "pending with ref", done(),
                confirm(Fact::Voided, 1000)),
            ("orphan void done", call(JobKind::Void), "gave up", done(), effect(Effect::OrphanReleased)),
            ("void refused", call(JobKind::Void), "authorized", refused(409), effect(Effect::Disputed)),
            ("void timeout", call(JobKind::Void), "authorized", timeout(),
                retry(NOW + 200 * MS, true, false)),
            // Refunds.
            ("refund done", refund_300, "captured", done(), confirm(Fact::Refunded { amount_cents: 300 }, 300)),
            ("refund the rest done", call(JobKind::Refund), "partly refunded", done(),
                confirm(Fact::Refunded { amount_cents: 500 }, 500)),
            ("refund refused", refund_300, "captured", refused(422), effect(Effect::Disputed)),
            ("refund declined (nonsense)", refund_300, "captured", declined(), effect(Effect::Nothing)),
            ("refund breaker open", refund_300, "captured", breaker_open(),
                retry(NOW + 5 * SEC, false, false)),
        ];
        for (name, call, standing, answer, expected) in table {
            let got = next_step(&call, &state(standing), &answer, NOW, &RULES, 1.0);
            assert_eq!(got, expected, "{name}");
        }
    }

    /// Over every call kind, payment state and reply kind (and both ends of the deadline),
    /// what no decision may ever do.
    #[test]
    fn no_answer_breaks_the_rules() {
        let replies = [
            authorized(),
            pending(),
            declined(),
            done(),
            refused(422),
            refused(409),
            unreachable(),
            timeout(),
            breaker_open(),
        ];
        for kind in JobKind::iter() {
            for name in STATES {
                let payment = state(name);
                for give_up_at in [None, Some(NOW), Some(NOW + 10 * SEC)] {
                    for ambiguous in [false, true] {
                        let call = Attempt {
                            give_up_at,
                            ambiguous,
                            attempt: 2,
                            ..call(kind)
                        };
                        for answer in &replies {
                            let step = next_step(&call, &payment, answer, NOW, &RULES, 0.3);
                            let case = format!("{kind} on {name}, {give_up_at:?}, {answer:?}");
                            let pending = payment.money.status == Status::Pending;
                            let retryable = matches!(answer.reply, Reply::Retryable { .. });
                            match &step {
                                Step::Retry {
                                    at, announce_delay, ..
                                } => {
                                    assert!(retryable, "{case}");
                                    assert!(*at > NOW || give_up_at.is_some(), "{case}");
                                    assert!(give_up_at.is_none_or(|g| *at <= g), "{case}");
                                    assert_eq!(
                                        *announce_delay,
                                        kind == JobKind::Authorize && pending,
                                        "{case}"
                                    );
                                }
                                Step::GiveUp { fail, .. } => {
                                    assert!(retryable && kind == JobKind::Authorize, "{case}");
                                    assert_eq!(fail.is_some(), pending, "{case}");
                                }
                                Step::Answered(effect) => {
                                    assert!(!retryable, "{case}");
                                    match effect {
                                        Effect::Authorize { .. }
                                        | Effect::AwaitWebhook { .. }
                                        | Effect::Fail(_) => {
                                            assert!(kind == JobKind::Authorize && pending, "{case}")
                                        }
                                        Effect::ReleaseOrphan { .. }
                                        | Effect::RememberRef { .. } => assert!(
                                            kind == JobKind::Authorize && payment.gave_up(),
                                            "{case}"
                                        ),
                                        Effect::Confirm { fact, .. } => {
                                            assert!(
                                                matches!(answer.reply, Reply::Done { .. }),
                                                "{case}"
                                            );
                                            let expected = match kind {
                                                JobKind::Capture => "capture",
                                                JobKind::Void => "void",
                                                JobKind::Refund => "refund",
                                                JobKind::Authorize => "none",
                                            };
                                            assert_eq!(fact.name(), expected, "{case}");
                                        }
                                        Effect::OrphanReleased => {
                                            assert_eq!(kind, JobKind::Void, "{case}")
                                        }
                                        Effect::Disputed => assert!(
                                            matches!(answer.reply, Reply::Refused { .. }),
                                            "{case}"
                                        ),
                                        Effect::Nothing => {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
