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

use crate::domain::{self, Fact, JobKind, Money, OnCancel, Queued, Refusal, Request, Status};
use crate::events;
use crate::store::{self, Job, NewJob, Payment};
use mercato_kit::config::Secret;
use mercato_kit::contracts::types::{PAYMENT_AUTHORIZED, PAYMENT_FAILED, PAYMENT_VOIDED};
use mercato_kit::db::{Db, Tx};
use mercato_kit::events::Cause;
use mercato_kit::ids::{Currency, OrderId, UserId};
use mercato_kit::time::now_us;
use prometheus::{IntCounterVec, Opts};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

pub use crate::domain::reasons;
pub use processor::{WebhookData, WebhookEvent};

mod processor;

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
}
