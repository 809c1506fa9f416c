//! What the processor says: its signed webhooks, and the answers the worker brings back from
//! each call (`record_answer`), with what they make of the payment. The decision itself is the
//! pure `domain::next_step`; this is its I/O: read the job and the payment, record the attempt,
//! save the payment, queue what follows and announce it, in the caller's transaction.

use super::{reasons, Error, Payments};
use crate::domain::{
    self, Answer, Attempt, Effect, Fact, Failure, JobKind, Queued, Reconcile, Reply, RetryRules,
    Standing, Status, Step,
};
use crate::events;
use crate::store::{self, CallOutcome, Job, Payment, Transaction};
use mercato_kit::contracts::types::{
    PAYMENT_CAPTURED, PAYMENT_DELAYED, PAYMENT_REFUNDED, PAYMENT_VOIDED,
};
use mercato_kit::db::Tx;
use mercato_kit::events::Cause;
use mercato_kit::time::now_us;
use serde::Deserialize;
use tracing::Instrument;
use uuid::Uuid;

/// A processor webhook as it arrives.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct WebhookEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: WebhookData,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct WebhookData {
    pub provider_ref: String,
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    pub reference: String,
}

/// The audit record of one attempt of `job` and what the processor answered to it.
fn attempt_record(job: &Job, attempt: i64, answer: &Answer, payment: &Payment) -> Transaction {
    let (outcome, provider_ref) = match &answer.reply {
        Reply::Authorized { provider_ref } => (CallOutcome::Succeeded, Some(provider_ref)),
        Reply::Pending { provider_ref } => (CallOutcome::Pending, Some(provider_ref)),
        Reply::Declined { provider_ref, .. } => (CallOutcome::Declined, provider_ref.as_ref()),
        Reply::Done { .. } => (CallOutcome::Succeeded, payment.provider_ref.as_ref()),
        Reply::Refused { .. } => (CallOutcome::Refused, payment.provider_ref.as_ref()),
        Reply::Retryable { .. } => (CallOutcome::RetryableError, None),
    };
    Transaction {
        payment_id: payment.id,
        kind: job.kind,
        idempotency_key: job.idempotency_key.clone(),
        amount_cents: job.amount_cents,
        attempt,
        outcome,
        http_status: answer.http_status,
        provider_ref: provider_ref.cloned(),
        summary: answer.reply.summary(),
        duration_ms: Some(answer.elapsed.as_millis().min(i64::MAX as u128) as i64),
    }
}

impl Payments {
    /// A signed processor webhook (the signature is checked by the caller). Handled once per
    /// event id; a late or contradicting event is recorded and changes nothing.
    pub async fn webhook(&self, tx: &mut Tx, event: &WebhookEvent) -> Result<String, Error> {
        let d = &event.data;
        if !store::claim_webhook(tx, &event.id, &event.kind, &d.provider_ref, event.created).await?
        {
            return Ok("duplicate".into());
        }
        let by_ref = store::payment_by_provider_ref(&mut **tx, &d.provider_ref).await?;
        let payment = match by_ref {
            Some(p) => Some(p),
            // Our payment id travels as the reference, so the payment is found even when the
            // answer to the authorization (with the provider reference) was lost.
            None => match d.reference.parse::<Uuid>() {
                Ok(id) => store::payment_by_id(&mut **tx, id).await?,
                Err(_) => None,
            },
        };
        let Some(payment) = payment else {
            tracing::warn!(event = %event.id, provider_ref = %d.provider_ref, "webhook for an unknown payment");
            store::finish_webhook(tx, &event.id, None, "unknown_payment").await?;
            return Ok("unknown_payment".into());
        };
        let matches = d.amount_cents == payment.money.amount_cents
            && d.currency == payment.currency
            && payment
                .provider_ref
                .as_deref()
                .is_none_or(|r| r == d.provider_ref);
        if !matches {
            tracing::warn!(event = %event.id, payment = %payment.id, "webhook does not match the payment; ignored");
            store::finish_webhook(tx, &event.id, Some(payment.id), "mismatch").await?;
            return Ok("mismatch".into());
        }
        let cause = Cause::default();
        let id = payment.id;
        let outcome = match (event.kind.as_str(), payment.money.status) {
            ("payment.succeeded", Status::Pending) => {
                self.authorized(tx, payment, &d.provider_ref, &cause)
                    .await?
            }
            ("payment.failed", Status::Pending) => {
                self.failed(
                    tx,
                    payment,
                    Fact::Declined,
                    reasons::AUTHORIZATION_FAILED,
                    Some(&d.provider_ref),
                    &cause,
                )
                .await?;
                "failed"
            }
            // We gave up waiting for the processor, yet it authorized after all: release the
            // hold, or the customer's money stays held for an order that does not exist.
            ("payment.succeeded", Status::Failed) if self.gave_up(&payment) => {
                self.release_orphan(tx, payment, &d.provider_ref, &cause)
                    .await?;
                "late_authorization_voiding"
            }
            (kind, status) => {
                tracing::info!(event = %event.id, payment = %payment.id, kind, %status, "webhook changes nothing");
                "ignored"
            }
        };
        store::finish_webhook(tx, &event.id, Some(id), outcome).await?;
        Ok(outcome.to_owned())
    }

    // ---- the worker's side ---------------------------------------------------------------

    /// Drops a queued authorization that was never sent because the order was cancelled
    /// first: nothing was ever held, so the payment is void. False when the call was sent (or
    /// taken) in the meantime, which the caller then makes as usual.
    pub async fn drop_unsent(&self, job: &Job) -> Result<bool, Error> {
        let mut tx = self.db.begin().await?;
        if !store::drop_unsent_job(&mut tx, job.seq).await? {
            return Ok(false);
        }
        let payment = store::payment_by_id(&mut *tx, job.payment_id)
            .await?
            .ok_or(Error::Internal("a queued call has no payment"))?;
        store::insert_transaction(
            &mut tx,
            &Transaction {
                payment_id: payment.id,
                kind: job.kind,
                idempotency_key: job.idempotency_key.clone(),
                amount_cents: job.amount_cents,
                attempt: 0,
                outcome: CallOutcome::Skipped,
                http_status: None,
                provider_ref: None,
                summary: "not sent: the order was cancelled first".into(),
                duration_ms: None,
            },
        )
        .await?;
        if payment.money.status == Status::Pending {
            self.failed(
                &mut tx,
                payment,
                Fact::Dropped,
                reasons::ORDER_CANCELLED,
                None,
                &job.cause,
            )
            .await?;
        }
        tx.commit().await?;
        self.committed();
        Ok(true)
    }

    /// Records the processor's answer to one attempt of a call, with its effect on the
    /// payment and the event that announces it, in one transaction.
    pub async fn record_answer(
        &self,
        job: &Job,
        attempt: i64,
        answer: &Answer,
    ) -> Result<(), Error> {
        // A lost race on the payment's version is retried at once with a fresh read.
        let mut tries = 0;
        loop {
            tries += 1;
            let mut tx = self.db.begin().await?;
            match self.apply_answer(&mut tx, job, attempt, answer).await {
                Ok(()) => {
                    tx.commit().await?;
                    self.committed();
                    return Ok(());
                }
                Err(Error::ConcurrentUpdate) if tries < 5 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Records the answers to several calls in one transaction: one commit for a round of
    /// calls instead of one each. Each answer is applied in the span of its own call. If any
    /// of them fails, nothing of the batch stays, and each is recorded again on its own
    /// ([`Payments::record_answer`], with its retries), so one bad answer costs only itself;
    /// the first failure of those is returned.
    pub async fn record_answers(
        &self,
        answers: &[(&Job, i64, &Answer, tracing::Span)],
    ) -> Result<(), Error> {
        if let [(job, attempt, answer, span)] = answers {
            return self
                .record_answer(job, *attempt, answer)
                .instrument(span.clone())
                .await;
        }
        let together = async {
            let mut tx = self.db.begin().await?;
            for (job, attempt, answer, span) in answers {
                self.apply_answer(&mut tx, job, *attempt, answer)
                    .instrument(span.clone())
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, Error>(())
        };
        match together.await {
            Ok(()) => {
                self.committed();
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, answers = answers.len(), "recording a batch of answers failed; recording each on its own");
                let mut first = None;
                for (job, attempt, answer, span) in answers {
                    if let Err(e) = self
                        .record_answer(job, *attempt, answer)
                        .instrument(span.clone())
                        .await
                    {
                        first.get_or_insert(e);
                    }
                }
                first.map_or(Ok(()), Err)
            }
        }
    }

    /// Carries out what [`domain::next_step`] decides about `answer`, inside `tx`.
    async fn apply_answer(
        &self,
        tx: &mut Tx,
        job: &Job,
        attempt: i64,
        answer: &Answer,
    ) -> Result<(), Error> {
        let payment = store::payment_by_id(&mut **tx, job.payment_id)
            .await?
            .ok_or(Error::Internal("a queued call has no payment"))?;
        let now = now_us();
        let step = domain::next_step(
            &Attempt {
                kind: job.kind,
                amount_cents: job.amount_cents,
                give_up_at: job.give_up_at,
                ambiguous: job.ambiguous,
                attempt,
            },
            &Standing {
                money: payment.money,
                provider_ref: payment.provider_ref.as_deref(),
                failure_reason: payment.failure_reason.as_deref(),
            },
            answer,
            now,
            &RetryRules {
                base: self.settings.retry_base,
                cap: self.settings.retry_cap,
                reconcile_for: self.settings.reconcile_for,
            },
            rand::random::<f64>(),
        );
        let mut record = attempt_record(job, attempt, answer, &payment);
        let cause = &job.cause;
        match step {
            Step::Retry {
                at,
                ambiguous,
                reason,
                announce_delay,
            } => {
                let retry = store::Retry {
                    not_before: at,
                    give_up_at: job.give_up_at,
                    ambiguous,
                    error: &reason,
                };
                let requeued = store::reschedule_job(tx, job.seq, &retry).await?;
                store::insert_transaction(tx, &record).await?;
                tracing::warn!(payment = %payment.id, kind = %job.kind, attempt, %reason, retry_in_ms = (at - now) / 1000, "processor call failed; will retry");
                // Not for a call already answered elsewhere (no longer queued).
                if requeued && announce_delay {
                    self.delayed(tx, &payment, job, attempt, &reason, at)
                        .await?;
                }
            }
            Step::GiveUp {
                reason,
                reconcile,
                fail,
            } => {
                record.outcome = CallOutcome::GaveUp;
                store::insert_transaction(tx, &record).await?;
                if let Some(Reconcile {
                    not_before,
                    give_up_at,
                }) = reconcile
                {
                    let retry = store::Retry {
                        not_before,
                        give_up_at: Some(give_up_at),
                        ambiguous: true,
                        error: &reason,
                    };
                    store::reschedule_job(tx, job.seq, &retry).await?;
                    tracing::warn!(payment = %payment.id, attempt, %reason, "processor unavailable until the reservation expired; failing the payment and checking later whether a hold was placed");
                } else {
                    store::delete_job(tx, job.seq).await?;
                    if fail.is_some() {
                        tracing::warn!(payment = %payment.id, attempt, %reason, "processor unavailable until the reservation expired; giving up");
                    } else {
                        tracing::error!(payment = %payment.id, attempt, %reason, "could not learn whether a lost authorization attempt placed a hold; check the processor by hand");
                    }
                }
                if let Some(failure) = fail {
                    self.fail(tx, payment, &failure, cause).await?;
                }
            }
            Step::Answered(effect) => {
                if !store::delete_job(tx, job.seq).await? {
                    // Another worker recorded this call's answer already.
                    return Ok(());
                }
                store::insert_transaction(tx, &record).await?;
                self.answered(tx, job, payment, &answer.reply, effect)
                    .await?;
            }
        }
        Ok(())
    }

    /// Carries out the effect of a final answer to `job`.
    async fn answered(
        &self,
        tx: &mut Tx,
        job: &Job,
        payment: Payment,
        reply: &Reply,
        effect: Effect,
    ) -> Result<(), Error> {
        let cause = &job.cause;
        match effect {
            Effect::Authorize { provider_ref } => {
                self.authorized(tx, payment, &provider_ref, cause).await?;
            }
            Effect::AwaitWebhook {
                provider_ref,
                remember_ref,
            } => {
                let mut current = payment.clone();
                if remember_ref {
                    let mut next = payment.clone();
                    next.provider_ref = Some(provider_ref);
                    current = self.save(tx, &payment, next).await?;
                }
                if store::is_cancelled(&mut **tx, payment.order_id).await? {
                    // The order was cancelled while this call was on its way: cancel the
                    // pending authorization now rather than wait for a decision that may
                    // never come.
                    let void = Queued {
                        kind: JobKind::Void,
                        amount_cents: None,
                    };
                    self.queue(tx, &current, void, cause).await?;
                    tracing::info!(payment = %job.payment_id, "authorization pending for a cancelled order; voiding it");
                } else {
                    tracing::info!(payment = %job.payment_id, "authorization pending; waiting for the processor's webhook");
                }
            }
            Effect::Fail(failure) => {
                if let Reply::Refused {
                    status: http,
                    code,
                    detail,
                } = reply
                {
                    tracing::warn!(payment = %job.payment_id, http, %code, %detail, "processor refused the authorization");
                }
                self.fail(tx, payment, &failure, cause).await?;
            }
            Effect::ReleaseOrphan { provider_ref } => {
                self.release_orphan(tx, payment, &provider_ref, cause)
                    .await?;
            }
            Effect::RememberRef { provider_ref } => {
                // Its webhook will say whether it succeeds; the reference lets us release it.
                let mut next = payment.clone();
                next.provider_ref = Some(provider_ref);
                self.save(tx, &payment, next).await?;
            }
            Effect::Confirm { fact, amount_cents } => {
                let event_type = match fact {
                    Fact::Captured { .. } => PAYMENT_CAPTURED,
                    Fact::Refunded { .. } => PAYMENT_REFUNDED,
                    _ => PAYMENT_VOIDED,
                };
                self.confirm(tx, payment, fact, event_type, amount_cents, cause)
                    .await?;
            }
            Effect::OrphanReleased => {
                let status = payment.money.status;
                tracing::info!(payment = %job.payment_id, %status, "orphan hold released");
            }
            Effect::Disputed => {
                if let Reply::Refused {
                    status: http,
                    code,
                    detail,
                } = reply
                {
                    tracing::error!(payment = %job.payment_id, kind = %job.kind, http, %code, %detail,
                        "processor refused a call we believed valid; payment unchanged");
                }
            }
            Effect::Nothing => {
                let status = payment.money.status;
                tracing::info!(payment = %job.payment_id, kind = %job.kind, %status, reply = %reply.summary(),
                    "processor answer changes nothing (the payment moved on)");
            }
        }
        Ok(())
    }

    /// Fails a pending payment as `failure` says.
    async fn fail(
        &self,
        tx: &mut Tx,
        payment: Payment,
        failure: &Failure,
        cause: &Cause,
    ) -> Result<Payment, Error> {
        self.failed(
            tx,
            payment,
            failure.fact,
            &failure.reason,
            failure.provider_ref.as_deref(),
            cause,
        )
        .await
    }

    /// Announces `payment.delayed`: the authorization's attempt `attempt` failed for `reason`,
    /// and the next one is due at `next_attempt_at` (µs).
    async fn delayed(
        &self,
        tx: &mut Tx,
        payment: &Payment,
        job: &Job,
        attempt: i64,
        reason: &str,
        next_attempt_at: i64,
    ) -> Result<(), Error> {
        let env = events::delayed(payment, job.give_up_at, attempt, reason, next_attempt_at);
        mercato_kit::events::append(tx, &job.cause.stamp(env)).await?;
        tracing::info!(payment = %payment.id, order = %payment.order_id, attempt, event = PAYMENT_DELAYED, "payment event emitted");
        Ok(())
    }

    /// Applies a confirmed capture, void or refund and announces it.
    async fn confirm(
        &self,
        tx: &mut Tx,
        payment: Payment,
        fact: Fact,
        event_type: &str,
        amount_cents: i64,
        cause: &Cause,
    ) -> Result<(), Error> {
        let money = match payment.money.apply(fact) {
            Ok(m) => m,
            Err(r) => {
                tracing::error!(payment = %payment.id, "processor confirmed what our rules refuse: {r}");
                return Ok(());
            }
        };
        let mut next = payment.clone();
        next.money = money;
        let saved = self.save(tx, &payment, next).await?;
        self.emit(tx, &saved, event_type, amount_cents, cause).await
    }
}
