//! The processor worker: the only code that calls the card processor.
//!
//! It makes the calls that use cases queued in `processor_jobs`, each outside any database
//! transaction and always with the call's own idempotency key, then records the answer (and
//! its effect and event) in one transaction (`Payments::record_answer`). A transient failure
//! puts the call back with exponential backoff and jitter; an authorization stops being retried
//! when the order's reservation expires, and each of its failed attempts tells the order why it
//! waits (`payment.delayed`). While the processor's circuit breaker is open (see
//! [`crate::psp`]) an attempt fails at once without a call, and is put back like any other
//! transient failure.
//!
//! It sleeps until the next call is due or until it is woken (a call was queued and
//! committed), never on a short fixed tick; a slow sweep catches calls queued without a wake
//! (by another replica, or just before a crash). Calls of different payments run side by side,
//! at most [`CONCURRENCY`] at once; calls of one payment run one after another, in the order
//! they were queued, so a void never overtakes the authorization it undoes.

use crate::domain::JobKind;
use crate::psp::{Answer, Call, PspClient, Reply};
use crate::service::Payments;
use crate::store::{self, Job};
use futures::StreamExt;
use mercato_kit::backoff::Backoff;
use mercato_kit::time::now_us;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// After a failed round (the database or the processor down): from 200 ms, doubling, at most
/// 30 s between rounds.
const WORKER_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));

/// Calls made at once: a bulkhead, so a slow processor holds at most this many.
pub const CONCURRENCY: usize = 8;
/// The longest the worker sleeps without looking at the queue.
const SAFETY_SWEEP: Duration = Duration::from_secs(30);
const BATCH: i64 = 32;

pub struct Worker {
    payments: Arc<Payments>,
    psp: PspClient,
}

impl Worker {
    pub fn new(payments: Arc<Payments>, psp: PspClient) -> Worker {
        Worker { payments, psp }
    }

    /// Works until `stop`. A call cut off by the stop is safe: its lease runs out and the next
    /// start makes it again, with the same key.
    pub async fn run(self, stop: CancellationToken) {
        let signal = self.payments.worker_signal();
        let mut failures = 0u32;
        loop {
            let pause = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.run_due() => match r {
                    Ok(next) => {
                        failures = 0;
                        next.map(|at| Duration::from_micros((at - now_us()).max(0) as u64))
                            .unwrap_or(SAFETY_SWEEP)
                            .min(SAFETY_SWEEP)
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "processor worker failed; retrying");
                        WORKER_BACKOFF.random_delay(failures - 1)
                    }
                },
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = signal.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Makes every call that is due, then says when the next one will be (µs), if any.
    pub async fn run_due(&self) -> anyhow::Result<Option<i64>> {
        loop {
            let jobs = store::due_jobs(self.payments.db.reader(), now_us(), BATCH).await?;
            if jobs.is_empty() {
                break;
            }
            let failed = futures::stream::iter(jobs)
                .map(|job| async move {
                    let seq = job.seq;
                    // The call's span continues the trace of what queued it (the checkout).
                    let span = mercato_kit::telemetry::job_span(
                        crate::SERVICE,
                        &format!("processor {}", job.kind),
                        &job.payment_id.to_string(),
                        job.cause.traceparent.as_deref(),
                    );
                    self.run_job(job)
                        .instrument(span)
                        .await
                        .map_err(|e| (seq, e))
                })
                .buffer_unordered(CONCURRENCY)
                .filter_map(|r| async move { r.err() })
                .collect::<Vec<_>>()
                .await;
            if let Some((seq, e)) = failed.into_iter().next() {
                // A failing job is leased, so it is not due again at once; but stop this round
                // so a broken database is not hammered.
                anyhow::bail!("processor job {seq}: {e}");
            }
        }
        Ok(store::next_due(self.payments.db.reader()).await?)
    }

    async fn run_job(&self, job: Job) -> anyhow::Result<()> {
        let db = &self.payments.db;
        let Some(payment) = store::payment_by_id(db.reader(), job.payment_id).await? else {
            anyhow::bail!("payment {} of a queued call is missing", job.payment_id);
        };
        if job.kind == JobKind::Authorize
            && job.attempts == 0
            && store::is_cancelled(db.reader(), payment.order_id).await?
            && self.payments.drop_unsent(&job).await?
        {
            tracing::info!(payment = %payment.id, "order cancelled before its authorization was sent; dropped");
            return Ok(());
        }
        let now = now_us();
        let lease = self.payments.settings.lease.as_micros() as i64;
        if !store::claim_job(db.writer(), &job, now, now + lease).await? {
            return Ok(());
        }
        let attempt = job.attempts + 1;
        let reference = payment.id.to_string();
        let provider_ref = payment.provider_ref.as_deref();
        let call = match (job.kind, provider_ref) {
            (JobKind::Authorize, _) => Some(Call::Authorize {
                amount_cents: job.amount_cents.unwrap_or(payment.money.amount_cents),
                currency: &payment.currency,
                payment_method: &payment.payment_method,
                reference: &reference,
            }),
            (JobKind::Capture, Some(r)) => Some(Call::Capture {
                provider_ref: r,
                amount_cents: job.amount_cents.unwrap_or(payment.money.amount_cents),
            }),
            (JobKind::Void, Some(r)) => Some(Call::Void { provider_ref: r }),
            (JobKind::Refund, Some(r)) => Some(Call::Refund {
                provider_ref: r,
                amount_cents: job.amount_cents.unwrap_or(payment.money.refundable()),
            }),
            (_, None) => None,
        };
        let answer = match call {
            Some(call) => {
                tracing::debug!(payment = %payment.id, kind = %job.kind, attempt, key = %job.idempotency_key, "calling the processor");
                self.psp.call(&call, &job.idempotency_key).await
            }
            None => Answer {
                reply: Reply::Refused {
                    status: 0,
                    code: "no_provider_ref".into(),
                    detail: "the payment has no processor reference".into(),
                },
                http_status: None,
                elapsed: Duration::ZERO,
                retry_in: None,
            },
        };
        Ok(self.payments.record_answer(&job, attempt, &answer).await?)
    }
}
