//! The payment use cases: open a payment for an order, ask for a capture, void or refund,
//! react to a cancelled, fulfilled or refunded order, take in a processor webhook, and record
//! what the processor answered. HTTP handlers, event handlers and the processor worker all call
//! these; each runs inside the caller's transaction and knows nothing of HTTP: they fail with
//! [`Error`], which `http` turns into problem documents in one place.
//!
//! None of them calls the processor. A use case that needs money to move queues the call
//! (`processor_jobs`) in the same transaction as the state change that asks for it; the worker
//! (`worker`) makes the call afterwards, outside any transaction, and records the answer through
//! [`Payments::record_answer`]. So a transaction is never held open across the network, and a
//! call is never lost or made twice: it exists exactly when the change that asked for it was
//! committed, and every retry of it carries the same idempotency key.

use crate::domain::{
    self, Answer, Attempt, Effect, Fact, Failure, JobKind, Money, OnCancel, Queued, Reconcile,
    Refusal, Reply, Request, RetryRules, Standing, Status, Step,
};
use crate::events;
use crate::store::{self, CallOutcome, Job, NewJob, Payment, Transaction};
use mercato_kit::config::Secret;
use mercato_kit::contracts::types::{
    PAYMENT_AUTHORIZED, PAYMENT_CAPTURED, PAYMENT_DELAYED, PAYMENT_FAILED, PAYMENT_REFUNDED,
    PAYMENT_VOIDED,
};
use mercato_kit::db::{Db, Tx};
use mercato_kit::events::Cause;
use mercato_kit::ids::{Currency, OrderId, UserId};
use mercato_kit::time::now_us;
use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

/// The producer name on every event this service emits.
pub use crate::events::PRODUCER;

pub use crate::domain::reasons;

/// How often a caller waiting for the processor's answer reads the queue again, for answers
/// recorded by another replica.
const REREAD: Duration = Duration::from_millis(250);

/// Tunables of the use cases and the worker.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The HMAC key of the processor's webhook signatures.
    pub webhook_secret: Secret,
    /// How old a webhook signature may be.
    pub webhook_tolerance: Duration,
    /// The first wait before retrying a failed processor call; doubled per attempt.
    pub retry_base: Duration,
    /// The longest wait between two attempts.
    pub retry_cap: Duration,
    /// How long an HTTP request waits for the processor's answer before it answers 202.
    pub answer_wait: Duration,
    /// How long an authorization asked for over HTTP (no reservation expiry known) is retried.
    pub authorize_patience: Duration,
    /// How long a worker holds a call it is making; another may take it over afterwards.
    pub lease: Duration,
    /// After giving up on an authorization whose lost attempt may have succeeded, how long to
    /// keep asking the processor (with the same key) whether it did.
    pub reconcile_for: Duration,
}

impl Settings {
    pub fn new(webhook_secret: Secret, psp_timeout: Duration) -> Settings {
        Settings {
            webhook_secret,
            webhook_tolerance: Duration::from_secs(300),
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(60),
            answer_wait: (psp_timeout + Duration::from_secs(1)).min(Duration::from_secs(10)),
            authorize_patience: Duration::from_secs(30 * 60),
            lease: psp_timeout * 2 + Duration::from_secs(10),
            reconcile_for: Duration::from_secs(24 * 3600),
        }
    }
}

/// The service's state, shared by HTTP handlers, the event handler and the worker.
pub struct Payments {
    pub db: Db,
    pub settings: Settings,
    worker: Arc<Notify>,
    changes: watch::Sender<u64>,
    metrics: PaymentMetrics,
}

/// Payment's business metrics, counted in [`Payments::save`], the one place a payment
/// changes (in the use case's transaction, before its commit): payments reaching each status,
/// and money captured and refunded in minor units per currency (a shop has few currencies).
#[derive(Clone)]
pub struct PaymentMetrics {
    outcomes: IntCounterVec,
    captured: IntCounterVec,
    refunded: IntCounterVec,
}

impl PaymentMetrics {
    pub fn new(registry: &prometheus::Registry) -> PaymentMetrics {
        use mercato_kit::metrics::register;
        PaymentMetrics {
            outcomes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "payments_total",
                        "Payments reaching a status (AUTHORIZED, FAILED, CAPTURED, VOIDED, REFUNDED...)",
                    ),
                    &["status"],
                ),
            ),
            captured: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "payment_captured_minor_units_total",
                        "Money captured, in minor units of the currency",
                    ),
                    &["currency"],
                ),
            ),
            refunded: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "payment_refunded_minor_units_total",
                        "Money refunded, in minor units of the currency",
                    ),
                    &["currency"],
                ),
            ),
        }
    }

    fn changed(&self, before: &Payment, next: &Payment) {
        if next.money.status != before.money.status {
            self.outcomes
                .with_label_values(&[next.money.status.as_str()])
                .inc();
        }
        let captured = next.money.captured_cents - before.money.captured_cents;
        if captured > 0 {
            self.captured
                .with_label_values(&[&next.currency])
                .inc_by(captured as u64);
        }
        let refunded = next.money.refunded_cents - before.money.refunded_cents;
        if refunded > 0 {
            self.refunded
                .with_label_values(&[&next.currency])
                .inc_by(refunded as u64);
        }
    }
}

/// What asking to open a payment led to.
#[derive(Debug)]
pub enum Opened {
    Created(Payment),
    /// The order has a payment already; it is returned unchanged.
    Existing(Payment),
    /// The order was cancelled: no payment is opened.
    OrderCancelled,
}

/// A payment to open for an order.
#[derive(Clone, Debug)]
pub struct Open {
    pub order_id: OrderId,
    pub customer_id: Option<UserId>,
    pub amount_cents: i64,
    pub currency: Currency,
    pub payment_method: String,
    /// Stop retrying the authorization then (the reservation's expiry).
    pub give_up_at: i64,
}

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

/// What the payment use cases can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Someone changed the payment between our read and our write: a lost race on its
    /// version, worth retrying at once with a fresh read.
    #[error("the payment changed while this request was handled; retry")]
    ConcurrentUpdate,
    #[error("no payment {0}")]
    NotFound(Uuid),
    #[error("no order {0} has been announced to the payment service")]
    UnknownOrder(OrderId),
    /// A payment asked for on other terms than the order's own.
    #[error("order {order_id} is for {amount_cents} {currency} (customer {customer}); a payment is only opened on its terms")]
    OrderMismatch {
        order_id: OrderId,
        amount_cents: i64,
        currency: String,
        customer: String,
    },
    #[error("a {0} of this payment is already under way")]
    AlreadyQueued(JobKind),
    /// A capture, void or refund that is the order's to make, not a direct request's.
    #[error("{}", refusal.to_string().replace("{id}", &order_id.to_string()))]
    NotTheOrders {
        refusal: domain::NotTheOrders,
        order_id: OrderId,
    },
    /// Not possible for the payment as it is (its status, or the amount).
    #[error("{0}")]
    Refused(Refusal),
    #[error(transparent)]
    Db(#[from] mercato_kit::db::Error),
    /// Our own data contradicts itself.
    #[error("{0}")]
    Internal(&'static str),
}

fn queued(jobs: &[Job]) -> Vec<Queued> {
    jobs.iter()
        .map(|j| Queued {
            kind: j.kind,
            amount_cents: j.amount_cents,
        })
        .collect()
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
    /// With metrics of its own (tests); a service passes its registry's to [`Payments::counted`].
    pub fn new(db: Db, settings: Settings) -> Arc<Payments> {
        Payments::counted(
            db,
            settings,
            PaymentMetrics::new(&prometheus::Registry::new()),
        )
    }

    pub fn counted(db: Db, settings: Settings, metrics: PaymentMetrics) -> Arc<Payments> {
        Arc::new(Payments {
            db,
            settings,
            worker: Arc::new(Notify::new()),
            changes: watch::channel(0).0,
            metrics,
        })
    }

    /// The signal the worker waits on.
    pub fn worker_signal(&self) -> Arc<Notify> {
        self.worker.clone()
    }

    /// Tells the worker that calls may have been queued. Call it after the commit: woken
    /// before, it could look before the call is visible and go back to sleep.
    pub fn wake_worker(&self) {
        self.worker.notify_one();
    }

    /// After a commit that may have queued calls, emitted events or changed payments: wakes
    /// the worker and the outbox relay, and tells anyone waiting for an answer to look again.
    pub fn committed(&self) {
        self.worker.notify_one();
        self.db.outbox_waker().wake();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    // ---- reading -------------------------------------------------------------------------

    pub async fn get(&self, id: Uuid) -> Result<Option<Payment>, Error> {
        Ok(store::payment_by_id(self.db.reader(), id).await?)
    }

    pub async fn list(&self, filter: &store::Filter, limit: i64) -> Result<Vec<Payment>, Error> {
        Ok(store::list_payments(self.db.reader(), filter, limit).await?)
    }

    /// A page of payments in order id order, for the audit.
    pub async fn audit_page(
        &self,
        after: Option<OrderId>,
        limit: i64,
    ) -> Result<Vec<store::AuditedPayment>, Error> {
        Ok(store::audit_payments(self.db.reader(), after, limit).await?)
    }

    /// Waits (at most the configured answer wait) until no processor call is queued for the
    /// payment; the payment as it then is, and whether the processor has answered everything.
    pub async fn wait_for_answer(&self, id: Uuid) -> Result<(Payment, bool), Error> {
        let deadline = tokio::time::Instant::now() + self.settings.answer_wait;
        let mut changes = self.changes.subscribe();
        loop {
            // Seen before looking, so a change that lands after the look still wakes us.
            changes.borrow_and_update();
            // The queue first: a call leaves it in the transaction that records its outcome,
            // so once it is seen gone, the payment read next includes that outcome.
            let answered = store::jobs_of(self.db.reader(), id).await?.is_empty();
            let payment = store::payment_by_id(self.db.reader(), id)
                .await?
                .ok_or(Error::NotFound(id))?;
            if answered {
                return Ok((payment, true));
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Ok((payment, false)) },
                _ = tokio::time::sleep_until(deadline) => return Ok((payment, false)),
                // The worker of another replica may make the call, and its commit wakes only
                // its own process: look again now and then.
                _ = tokio::time::sleep(REREAD) => {}
            }
        }
    }

    // ---- writing helpers -----------------------------------------------------------------

    /// Writes `next` over `before`, or fails when someone changed the payment in between.
    async fn save(
        &self,
        tx: &mut Tx,
        before: &Payment,
        mut next: Payment,
    ) -> Result<Payment, Error> {
        next.updated_at = now_us();
        if !store::update_payment(tx, &next, before.version).await? {
            return Err(Error::ConcurrentUpdate);
        }
        self.metrics.changed(before, &next);
        next.version = before.version + 1;
        Ok(next)
    }

    /// Queues a processor call for the payment (and moves its version on, so two requests
    /// planned from the same picture cannot both be queued).
    async fn queue(
        &self,
        tx: &mut Tx,
        payment: &Payment,
        call: Queued,
        cause: &Cause,
    ) -> Result<Payment, Error> {
        let mut next = payment.clone();
        if call.kind == JobKind::Refund {
            next.refund_seq += 1;
        }
        let key = domain::idempotency_key(payment.id, call.kind, next.refund_seq);
        let inserted = self
            .insert_job(
                tx,
                &NewJob {
                    payment_id: payment.id,
                    kind: call.kind,
                    amount_cents: call.amount_cents,
                    idempotency_key: &key,
                    not_before: now_us(),
                    give_up_at: None,
                    cause,
                },
            )
            .await?;
        if !inserted {
            return Err(Error::AlreadyQueued(call.kind));
        }
        tracing::info!(payment = %payment.id, kind = %call.kind, amount = ?call.amount_cents, "processor call queued");
        self.save(tx, payment, next).await
    }

    /// Every processor call is queued here: the worker is woken once the call is committed
    /// (whoever owns the transaction, a request or the kit's consumer with a whole batch,
    /// commits it), never before.
    async fn insert_job(&self, tx: &mut Tx, job: &NewJob<'_>) -> Result<bool, Error> {
        let inserted = store::insert_job(tx, job).await?;
        if inserted {
            let worker = self.worker.clone();
            tx.after_commit(move || worker.notify_one());
        }
        Ok(inserted)
    }

    async fn emit(
        &self,
        tx: &mut Tx,
        payment: &Payment,
        event_type: &str,
        amount_cents: i64,
        cause: &Cause,
    ) -> Result<(), Error> {
        let env = events::changed(payment, event_type, amount_cents);
        mercato_kit::events::append(tx, &cause.stamp(env)).await?;
        tracing::info!(payment = %payment.id, order = %payment.order_id, event = event_type, "payment event emitted");
        Ok(())
    }

    async fn projection(&self, tx: &mut Tx, payment: &Payment) -> Result<Money, Error> {
        let jobs = store::jobs_of(&mut **tx, payment.id).await?;
        Ok(payment.money.project(queued(&jobs).iter()))
    }

    // ---- use cases -----------------------------------------------------------------------

    /// Opens a payment for an order and queues its authorization, unless the order was
    /// cancelled or has a payment already.
    pub async fn open(&self, tx: &mut Tx, open: &Open, cause: &Cause) -> Result<Opened, Error> {
        if store::is_cancelled(&mut **tx, open.order_id).await? {
            return Ok(Opened::OrderCancelled);
        }
        if let Some(p) = store::payment_by_order(&mut **tx, open.order_id).await? {
            return Ok(Opened::Existing(p));
        }
        let now = now_us();
        let payment = Payment {
            id: Uuid::now_v7(),
            order_id: open.order_id,
            customer_id: open.customer_id,
            money: Money::new(open.amount_cents),
            currency: open.currency.to_string(),
            payment_method: open.payment_method.clone(),
            provider_ref: None,
            failure_reason: None,
            refund_seq: 0,
            version: 0,
            created_at: now,
            updated_at: now,
        };
        if !store::insert_payment(tx, &payment).await? {
            // Another writer opened one for this order in between.
            return store::payment_by_order(&mut **tx, open.order_id)
                .await?
                .map(Opened::Existing)
                .ok_or(Error::Internal("a payment vanished while being opened"));
        }
        let key = domain::idempotency_key(payment.id, JobKind::Authorize, 0);
        self.insert_job(
            tx,
            &NewJob {
                payment_id: payment.id,
                kind: JobKind::Authorize,
                amount_cents: Some(payment.money.amount_cents),
                idempotency_key: &key,
                not_before: now,
                give_up_at: Some(open.give_up_at),
                cause,
            },
        )
        .await?;
        tracing::info!(payment = %payment.id, order = %payment.order_id, amount = payment.money.amount_cents, "payment opened; authorization queued");
        Ok(Opened::Created(payment))
    }

    /// A payment asked for directly (HTTP) for an order announced to us: opened on the
    /// order's own terms, never on a caller's. 404 for an order we never heard of, 409 when
    /// the terms asked for are not the order's.
    pub async fn open_requested(
        &self,
        tx: &mut Tx,
        open: &Open,
        cause: &Cause,
    ) -> Result<Opened, Error> {
        let (terms, standing) = store::order_facts(tx, open.order_id).await?;
        if standing.cancelled {
            return Ok(Opened::OrderCancelled);
        }
        let Some(terms) = terms else {
            return Err(Error::UnknownOrder(open.order_id));
        };
        let same = terms.amount_cents == open.amount_cents
            && terms.currency == open.currency.as_str()
            && open
                .customer_id
                .is_none_or(|c| terms.customer_id == Some(c));
        if !same {
            return Err(Error::OrderMismatch {
                order_id: open.order_id,
                amount_cents: terms.amount_cents,
                currency: terms.currency,
                customer: terms
                    .customer_id
                    .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
            });
        }
        let open = Open {
            customer_id: terms.customer_id,
            ..open.clone()
        };
        self.open(tx, &open, cause).await
    }

    /// The order was created: remember its terms.
    pub async fn order_created(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        terms: &store::OrderTerms,
    ) -> Result<(), Error> {
        store::record_order_terms(tx, order_id, terms).await?;
        Ok(())
    }

    /// A capture, void or refund asked for directly (HTTP): refused with 404, 409 or 422 when
    /// it cannot be done, and with 409 when it is not the order's to make (see
    /// [`domain::direct_request`]), else queued.
    pub async fn request(
        &self,
        tx: &mut Tx,
        id: Uuid,
        request: Request,
        cause: &Cause,
    ) -> Result<Payment, Error> {
        let payment = store::payment_by_id(&mut **tx, id)
            .await?
            .ok_or(Error::NotFound(id))?;
        let (_, standing) = store::order_facts(tx, payment.order_id).await?;
        domain::direct_request(&standing, request).map_err(|refusal| Error::NotTheOrders {
            refusal,
            order_id: payment.order_id,
        })?;
        let projected = self.projection(tx, &payment).await?;
        let call = domain::plan(&projected, request).map_err(Error::Refused)?;
        self.queue(tx, &payment, call, cause).await
    }

    /// The order was cancelled (or its reservation expired): remember that, and undo whatever
    /// money is held or taken. A payment the processor has not decided yet is undone when it
    /// decides (see the worker and the webhook).
    pub async fn cancel_order(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        reason: &str,
        cause: &Cause,
    ) -> Result<(), Error> {
        store::mark_cancelled(tx, order_id, reason).await?;
        // Read the payment only under its row lock. An answer (or webhook) being recorded
        // saves the payment and then looks for the cancellation; without the lock, on
        // PostgreSQL, each could miss the other's uncommitted half (the answer sees no
        // cancellation, this sees no processor reference yet) and a pending hold would never
        // be voided. With it, whichever commits second sees the first.
        store::lock_payment_of_order(tx, order_id).await?;
        let Some(payment) = store::payment_by_order(&mut **tx, order_id).await? else {
            tracing::debug!(order = %order_id, "order cancelled before any payment; marked");
            return Ok(());
        };
        let projected = self.projection(tx, &payment).await?;
        let call = match domain::on_cancel(&projected) {
            OnCancel::Nothing => {
                tracing::debug!(payment = %payment.id, status = %projected.status, "order cancelled; nothing held");
                return Ok(());
            }
            // The processor answered "pending" (it has a reference): cancel it there now
            // rather than wait for a decision that may never come.
            OnCancel::AwaitDecision if payment.provider_ref.is_some() => Queued {
                kind: JobKind::Void,
                amount_cents: None,
            },
            OnCancel::AwaitDecision => {
                tracing::info!(payment = %payment.id, "order cancelled while the processor decides; undone once it has");
                return Ok(());
            }
            OnCancel::Void => Queued {
                kind: JobKind::Void,
                amount_cents: None,
            },
            OnCancel::Refund { amount_cents } => Queued {
                kind: JobKind::Refund,
                amount_cents: Some(amount_cents),
            },
        };
        self.queue(tx, &payment, call, cause).await?;
        Ok(())
    }

    /// The order was fulfilled: capture the whole authorization. Anything else (no payment, a
    /// cancelled order, already captured) is a late or repeated event and changes nothing.
    pub async fn order_fulfilled(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        cause: &Cause,
    ) -> Result<(), Error> {
        store::record_order_step(tx, order_id, store::OrderStep::Fulfilled).await?;
        let Some(payment) = store::payment_by_order(&mut **tx, order_id).await? else {
            tracing::warn!(order = %order_id, "order fulfilled without a payment; nothing to capture");
            return Ok(());
        };
        if store::is_cancelled(&mut **tx, order_id).await? {
            tracing::warn!(order = %order_id, "order fulfilled after its cancellation; not captured");
            return Ok(());
        }
        let projected = self.projection(tx, &payment).await?;
        match domain::plan(&projected, Request::Capture { amount_cents: None }) {
            Ok(call) => {
                self.queue(tx, &payment, call, cause).await?;
            }
            Err(r) => tracing::debug!(payment = %payment.id, "order fulfilled; not captured: {r}"),
        }
        Ok(())
    }

    /// The order was refunded: give back `amount_cents` (at most what is left), or the rest.
    pub async fn order_refunded(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        amount_cents: Option<i64>,
        cause: &Cause,
    ) -> Result<(), Error> {
        store::record_order_step(tx, order_id, store::OrderStep::Refunded).await?;
        let Some(payment) = store::payment_by_order(&mut **tx, order_id).await? else {
            tracing::warn!(order = %order_id, "order refunded without a payment; nothing to refund");
            return Ok(());
        };
        let projected = self.projection(tx, &payment).await?;
        let amount = match amount_cents {
            Some(a) if a <= 0 => {
                tracing::warn!(order = %order_id, amount = a, "order refunded with no positive amount; ignored");
                return Ok(());
            }
            Some(a) if a > projected.refundable() && projected.refundable() > 0 => {
                tracing::warn!(order = %order_id, asked = a, left = projected.refundable(), "order refund larger than what is left; refunding the rest");
                None
            }
            other => other,
        };
        match domain::plan(
            &projected,
            Request::Refund {
                amount_cents: amount,
            },
        ) {
            Ok(call) => {
                self.queue(tx, &payment, call, cause).await?;
            }
            Err(r) => tracing::debug!(payment = %payment.id, "order refunded; not refunded: {r}"),
        }
        Ok(())
    }

    /// A pending payment got its authorization: record it and announce it, or, when the order
    /// was cancelled meanwhile, release it at once instead.
    async fn authorized(
        &self,
        tx: &mut Tx,
        payment: Payment,
        provider_ref: &str,
        cause: &Cause,
    ) -> Result<&'static str, Error> {
        let mut next = payment.clone();
        next.money = payment
            .money
            .apply(Fact::Authorized)
            .map_err(Error::Refused)?;
        next.provider_ref = Some(provider_ref.to_owned());
        next.failure_reason = None;
        let saved = self.save(tx, &payment, next).await?;
        if store::is_cancelled(&mut **tx, saved.order_id).await? {
            let call = Queued {
                kind: JobKind::Void,
                amount_cents: None,
            };
            self.queue(tx, &saved, call, cause).await?;
            tracing::info!(payment = %saved.id, "authorized after the order was cancelled; voiding");
            return Ok("authorized_after_cancellation");
        }
        self.emit(
            tx,
            &saved,
            PAYMENT_AUTHORIZED,
            saved.money.amount_cents,
            cause,
        )
        .await?;
        Ok("authorized")
    }

    /// Whether we failed the payment for want of an answer (so a hold may exist unknown to us).
    fn gave_up(&self, payment: &Payment) -> bool {
        domain::gave_up(payment.money.status, payment.failure_reason.as_deref())
    }

    /// The processor authorized a payment we had already failed: release the hold, or the
    /// customer's money stays held for an order that will never be paid. The payment stays
    /// FAILED; the void is in its audit trail.
    async fn release_orphan(
        &self,
        tx: &mut Tx,
        payment: Payment,
        provider_ref: &str,
        cause: &Cause,
    ) -> Result<(), Error> {
        let mut next = payment.clone();
        next.provider_ref = Some(provider_ref.to_owned());
        let saved = self.save(tx, &payment, next).await?;
        let call = Queued {
            kind: JobKind::Void,
            amount_cents: None,
        };
        self.queue(tx, &saved, call, cause).await?;
        tracing::warn!(payment = %saved.id, %provider_ref, "authorized after we gave up; voiding the orphan hold");
        Ok(())
    }

    /// A pending payment will never be authorized.
    async fn failed(
        &self,
        tx: &mut Tx,
        payment: Payment,
        fact: Fact,
        reason: &str,
        provider_ref: Option<&str>,
        cause: &Cause,
    ) -> Result<Payment, Error> {
        let mut next = payment.clone();
        next.money = payment.money.apply(fact).map_err(Error::Refused)?;
        next.failure_reason = Some(reason.to_owned());
        if next.provider_ref.is_none() {
            next.provider_ref = provider_ref.map(str::to_owned);
        }
        let saved = self.save(tx, &payment, next).await?;
        let event = if saved.money.status == Status::Voided {
            PAYMENT_VOIDED
        } else {
            PAYMENT_FAILED
        };
        self.emit(tx, &saved, event, saved.money.amount_cents, cause)
            .await?;
        Ok(saved)
    }

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
