//! The processor worker: the only code that calls the card processor.
//!
//! It makes the calls that use cases queued in `processor_jobs`, each outside any database
//! transaction and always with the call's own idempotency key, then records the answer (and
//! its effect and event) in one transaction (`Payments::record_answers`): the answers that
//! arrived together share it, so a busy worker pays one commit per handful of calls. A
//! transient failure puts the call back with exponential backoff and jitter; an authorization
//! stops being retried when the order's reservation expires, and each of its failed attempts
//! tells the order why it waits (`payment.delayed`). While the processor's circuit breaker is
//! open (see [`crate::psp`]) an attempt fails at once without a call, and is put back like any
//! other transient failure.
//!
//! It sleeps until the next call is due or until it is woken (a call was queued and
//! committed), never on a short fixed tick; a slow sweep catches calls queued without a wake
//! (by another replica, or just before a crash). Calls of different payments run side by side,
//! at most [`CONCURRENCY`] at once; calls of one payment run one after another, in the order
//! they were queued, so a void never overtakes the authorization it undoes.

use crate::domain::JobKind;
use crate::psp::{Answer, Call, PspClient, Reply};
use crate::service::Payments;
use crate::store::{self, Job, Payment};
use futures::{FutureExt, StreamExt};
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

/// A call due now, and the payment it is for as read with it.
struct Due {
    job: Job,
    payment: Payment,
}

/// A call made, its answer not recorded yet.
struct Made {
    job: Job,
    attempt: i64,
    answer: Answer,
    /// The call's span, which recording the answer continues.
    span: tracing::Span,
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
            let mut unclaimed = self.still_to_send(jobs).await?;
            // Claimed a chunk at a time, each chunk in one transaction, when the first of its
            // calls gets a slot: every call of a chunk starts within one round of calls,
            // inside its lease (twice the processor timeout and more). The calls touch no
            // database; their answers are gathered and recorded together.
            let mut claimed = std::collections::VecDeque::new();
            let mut running = futures::stream::FuturesUnordered::new();
            let mut made: Vec<Made> = Vec::new();
            let mut failed: Option<anyhow::Error> = None;
            loop {
                while running.len() < CONCURRENCY {
                    let Some(due) = claimed.pop_front() else {
                        break;
                    };
                    running.push(self.call(due));
                }
                if running.len() < CONCURRENCY && !unclaimed.is_empty() {
                    let chunk: Vec<_> = unclaimed
                        .drain(..unclaimed.len().min(CONCURRENCY))
                        .collect();
                    // Answers that arrive meanwhile are gathered, not left waiting.
                    let claim = self.claim(chunk);
                    tokio::pin!(claim);
                    let taken = loop {
                        tokio::select! {
                            taken = &mut claim => break taken,
                            Some(done) = running.next() => made.push(done),
                        }
                    };
                    match taken {
                        Ok(c) => claimed.extend(c),
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                    continue;
                }
                if !made.is_empty() {
                    if let Err(e) = self.record(std::mem::take(&mut made)).await {
                        failed.get_or_insert(e);
                    }
                    continue;
                }
                match running.next().await {
                    Some(done) => {
                        made.push(done);
                        // And whatever else has answered by now, to share the commit.
                        while let Some(Some(done)) = running.next().now_or_never() {
                            made.push(done);
                        }
                    }
                    None => break,
                }
            }
            if let Some(e) = failed {
                // A failing job is leased, so it is not due again at once; but stop this round
                // so a broken database is not hammered.
                return Err(e);
            }
        }
        Ok(store::next_due(self.payments.db.reader()).await?)
    }

    /// The due calls with their payments, read in two queries for the whole round; a first
    /// authorization whose order was cancelled before it was sent is dropped instead.
    async fn still_to_send(&self, jobs: Vec<Job>) -> anyhow::Result<Vec<Due>> {
        let reader = self.payments.db.reader();
        let ids: Vec<_> = jobs.iter().map(|j| j.payment_id).collect();
        let payments = store::payments_by_ids(reader, &ids).await?;
        let unsent: Vec<_> = jobs
            .iter()
            .filter(|j| j.kind == JobKind::Authorize && j.attempts == 0)
            .filter_map(|j| payments.get(&j.payment_id).map(|p| p.order_id))
            .collect();
        let cancelled = store::cancelled_among(reader, &unsent).await?;
        let mut due = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Some(payment) = payments.get(&job.payment_id).cloned() else {
                anyhow::bail!("payment {} of a queued call is missing", job.payment_id);
            };
            if job.kind == JobKind::Authorize
                && job.attempts == 0
                && cancelled.contains(&payment.order_id)
                && self.payments.drop_unsent(&job).await?
            {
                tracing::info!(payment = %payment.id, "order cancelled before its authorization was sent; dropped");
                continue;
            }
            due.push(Due { job, payment });
        }
        Ok(due)
    }

    /// Takes `chunk`'s calls for one attempt each, in one transaction; the ones another worker
    /// took (or tried) since they were read are left out.
    async fn claim(&self, chunk: Vec<Due>) -> anyhow::Result<Vec<Due>> {
        let now = now_us();
        let lease_until = now + self.payments.settings.lease.as_micros() as i64;
        let mut tx = self.payments.db.begin().await?;
        let mut claimed = Vec::with_capacity(chunk.len());
        for due in chunk {
            if store::claim_job(&mut tx, &due.job, now, lease_until).await? {
                claimed.push(due);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// One call, in the span that continues the trace of what queued it (the checkout).
    async fn call(&self, due: Due) -> Made {
        let Due { job, payment } = due;
        let span = mercato_kit::telemetry::job_span(
            crate::SERVICE,
            &format!("processor {}", job.kind),
            &job.payment_id.to_string(),
            job.cause.traceparent.as_deref(),
        );
        let attempt = job.attempts + 1;
        let answer = self
            .ask(&job, &payment, attempt)
            .instrument(span.clone())
            .await;
        Made {
            job,
            attempt,
            answer,
            span,
        }
    }

    /// Records the answers of `made` in one transaction.
    async fn record(&self, made: Vec<Made>) -> anyhow::Result<()> {
        let answers: Vec<_> = made
            .iter()
            .map(|m| (&m.job, m.attempt, &m.answer, m.span.clone()))
            .collect();
        self.payments.record_answers(&answers).await.map_err(|e| {
            let seqs: Vec<_> = made.iter().map(|m| m.job.seq.to_string()).collect();
            anyhow::Error::from(e).context(format!("processor jobs {}", seqs.join(", ")))
        })
    }

    /// Makes the call `job` stands for and returns the processor's answer (or the refusal of
    /// a call that cannot be made).
    async fn ask(&self, job: &Job, payment: &Payment, attempt: i64) -> Answer {
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
        match call {
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
        }
    }
}
