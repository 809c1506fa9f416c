//! The payment service's SQL. One path for SQLite and PostgreSQL (see `mercato_kit::db`).
//!
//! Every change to a payment is written on the version that was read (`update_payment`), so
//! the rules in `domain` are always applied to the payment as it is, never to a stale copy.

use crate::domain::{JobKind, Money, Status};
use mercato_kit::db::Tx;
use mercato_kit::db::{parse_uuid, placeholders, Exec, Pool, Row};
use mercato_kit::events::Cause;
use mercato_kit::ids::{OrderId, UserId};
use mercato_kit::time::now_us;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// A payment as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: OrderId,
    pub customer_id: Option<UserId>,
    pub money: Money,
    pub currency: String,
    pub payment_method: String,
    pub provider_ref: Option<String>,
    pub failure_reason: Option<String>,
    pub refund_seq: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const PAYMENT_COLS: &str = "id, order_id, customer_id, status, amount_cents, captured_cents, \
    refunded_cents, currency, payment_method, provider_ref, failure_reason, refund_seq, version, \
    created_at, updated_at";

fn decode<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, mercato_kit::db::Error> {
    r.map_err(|e| mercato_kit::db::Error::Decode(e.to_string().into()))
}

fn payment_from(row: &Row) -> Result<Payment, mercato_kit::db::Error> {
    let customer: Option<String> = row.try_get("customer_id")?;
    Ok(Payment {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        order_id: OrderId(parse_uuid(&row.try_get::<String, _>("order_id")?)?),
        customer_id: customer.as_deref().map(parse_uuid).transpose()?.map(UserId),
        money: Money {
            status: decode(row.try_get::<String, _>("status")?.parse::<Status>())?,
            amount_cents: row.try_get("amount_cents")?,
            captured_cents: row.try_get("captured_cents")?,
            refunded_cents: row.try_get("refunded_cents")?,
        },
        currency: row.try_get("currency")?,
        payment_method: row.try_get("payment_method")?,
        provider_ref: row.try_get("provider_ref")?,
        failure_reason: row.try_get("failure_reason")?,
        refund_seq: row.try_get("refund_seq")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts a payment unless its order already has one; true when inserted.
pub async fn insert_payment(tx: &mut Tx, p: &Payment) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(&format!(
        "INSERT INTO payments ({PAYMENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (order_id) DO NOTHING"
    ))
    .bind(p.id.to_string())
    .bind(p.order_id.to_string())
    .bind(p.customer_id.map(|c| c.to_string()))
    .bind(p.money.status.as_str())
    .bind(p.money.amount_cents)
    .bind(p.money.captured_cents)
    .bind(p.money.refunded_cents)
    .bind(&p.currency)
    .bind(&p.payment_method)
    .bind(&p.provider_ref)
    .bind(&p.failure_reason)
    .bind(p.refund_seq)
    .bind(p.version)
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Writes `next` over the payment if it is still at `version`; false when someone changed it
/// in between. The version moves on by one.
pub async fn update_payment(
    tx: &mut Tx,
    next: &Payment,
    version: i64,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE payments SET status = $3, captured_cents = $4, refunded_cents = $5, provider_ref = $6, \
         failure_reason = $7, refund_seq = $8, version = $2 + 1, updated_at = $9 \
         WHERE id = $1 AND version = $2",
    )
    .bind(next.id.to_string())
    .bind(version)
    .bind(next.money.status.as_str())
    .bind(next.money.captured_cents)
    .bind(next.money.refunded_cents)
    .bind(&next.provider_ref)
    .bind(&next.failure_reason)
    .bind(next.refund_seq)
    .bind(next.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn payment_by_id<'e, E: Into<Exec<'e>>>(
    exec: E,
    id: Uuid,
) -> Result<Option<Payment>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(&format!(
        "SELECT {PAYMENT_COLS} FROM payments WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(exec)
    .await?;
    row.as_ref().map(payment_from).transpose()
}

/// The payments of `ids`, by id, in one query (those that exist).
pub async fn payments_by_ids(
    pool: &Pool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Payment>, mercato_kit::db::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {PAYMENT_COLS} FROM payments WHERE id IN ({})",
        placeholders(1, ids.len())
    );
    let mut q = mercato_kit::db::query(&sql);
    for id in ids {
        q = q.bind(id.to_string());
    }
    let rows = q.fetch_all(pool).await?;
    rows.iter()
        .map(|r| payment_from(r).map(|p| (p.id, p)))
        .collect()
}

pub async fn payment_by_order<'e, E: Into<Exec<'e>>>(
    exec: E,
    order_id: OrderId,
) -> Result<Option<Payment>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(&format!(
        "SELECT {PAYMENT_COLS} FROM payments WHERE order_id = $1"
    ))
    .bind(order_id.to_string())
    .fetch_optional(exec)
    .await?;
    row.as_ref().map(payment_from).transpose()
}

pub async fn payment_by_provider_ref<'e, E: Into<Exec<'e>>>(
    exec: E,
    provider_ref: &str,
) -> Result<Option<Payment>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(&format!(
        "SELECT {PAYMENT_COLS} FROM payments WHERE provider_ref = $1"
    ))
    .bind(provider_ref)
    .fetch_optional(exec)
    .await?;
    row.as_ref().map(payment_from).transpose()
}

/// Which payments a list shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub order_id: Option<OrderId>,
    pub customer_id: Option<UserId>,
    /// Payments after this id (ids are v7, so this is creation order).
    pub after: Option<Uuid>,
}

pub async fn list_payments(
    pool: &Pool,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Payment>, mercato_kit::db::Error> {
    // Each condition is added only when set, so no untyped NULL parameter reaches PostgreSQL.
    let mut conditions = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    if let Some(o) = filter.order_id {
        binds.push(o.to_string());
        conditions.push(format!("order_id = ${}", binds.len()));
    }
    if let Some(c) = filter.customer_id {
        binds.push(c.to_string());
        conditions.push(format!("customer_id = ${}", binds.len()));
    }
    if let Some(a) = filter.after {
        binds.push(a.to_string());
        conditions.push(format!("id > ${}", binds.len()));
    }
    let wher = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {PAYMENT_COLS} FROM payments {wher} ORDER BY id LIMIT ${}",
        binds.len() + 1
    );
    let mut q = mercato_kit::db::query(&sql);
    for b in &binds {
        q = q.bind(b);
    }
    let rows = q.bind(limit).fetch_all(pool).await?;
    rows.iter().map(payment_from).collect()
}

/// A processor call waiting to be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub seq: i64,
    pub payment_id: Uuid,
    pub kind: JobKind,
    pub amount_cents: Option<i64>,
    pub idempotency_key: String,
    pub not_before: i64,
    pub give_up_at: Option<i64>,
    /// Calls started so far.
    pub attempts: i64,
    /// Some failed attempt may have reached the processor.
    pub ambiguous: bool,
    pub locked_until: Option<i64>,
    pub cause: Cause,
}

const JOB_COLS: &str =
    "seq, payment_id, kind, amount_cents, idempotency_key, not_before, give_up_at, \
    attempts, ambiguous, locked_until, correlation_id, traceparent, causation_id";

fn job_from(row: &Row) -> Result<Job, mercato_kit::db::Error> {
    let causation: Option<String> = row.try_get("causation_id")?;
    Ok(Job {
        seq: row.try_get("seq")?,
        payment_id: parse_uuid(&row.try_get::<String, _>("payment_id")?)?,
        kind: decode(row.try_get::<String, _>("kind")?.parse::<JobKind>())?,
        amount_cents: row.try_get("amount_cents")?,
        idempotency_key: row.try_get("idempotency_key")?,
        not_before: row.try_get("not_before")?,
        give_up_at: row.try_get("give_up_at")?,
        attempts: row.try_get("attempts")?,
        ambiguous: mercato_kit::db::get_bool(row, "ambiguous")?,
        locked_until: row.try_get("locked_until")?,
        cause: Cause {
            correlation_id: row.try_get("correlation_id")?,
            traceparent: row.try_get("traceparent")?,
            causation_id: causation.as_deref().map(parse_uuid).transpose()?,
        },
    })
}

/// A call to queue.
#[derive(Clone, Debug)]
pub struct NewJob<'a> {
    pub payment_id: Uuid,
    pub kind: JobKind,
    pub amount_cents: Option<i64>,
    pub idempotency_key: &'a str,
    pub not_before: i64,
    pub give_up_at: Option<i64>,
    pub cause: &'a Cause,
}

/// Queues a call unless one with the same key is queued; true when queued.
pub async fn insert_job(tx: &mut Tx, j: &NewJob<'_>) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "INSERT INTO processor_jobs (payment_id, kind, amount_cents, idempotency_key, not_before, give_up_at, \
         attempts, correlation_id, traceparent, causation_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(j.payment_id.to_string())
    .bind(j.kind.as_str())
    .bind(j.amount_cents)
    .bind(j.idempotency_key)
    .bind(j.not_before)
    .bind(j.give_up_at)
    .bind(&j.cause.correlation_id)
    .bind(&j.cause.traceparent)
    .bind(j.cause.causation_id.map(|c| c.to_string()))
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The calls queued for one payment, in the order they will be made.
pub async fn jobs_of<'e, E: Into<Exec<'e>>>(
    exec: E,
    payment_id: Uuid,
) -> Result<Vec<Job>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(&format!(
        "SELECT {JOB_COLS} FROM processor_jobs WHERE payment_id = $1 ORDER BY seq"
    ))
    .bind(payment_id.to_string())
    .fetch_all(exec)
    .await?;
    rows.iter().map(job_from).collect()
}

/// Only the oldest queued call of each payment may run: a void must wait for the
/// authorization it undoes, a refund for the capture it returns.
const HEAD_OF_PAYMENT: &str = "NOT EXISTS (SELECT 1 FROM processor_jobs e \
    WHERE e.payment_id = j.payment_id AND e.seq < j.seq)";

/// Calls that may run now: due, not taken by a live worker, first of their payment.
pub async fn due_jobs(
    pool: &Pool,
    now: i64,
    limit: i64,
) -> Result<Vec<Job>, mercato_kit::db::Error> {
    let cols = JOB_COLS
        .split(", ")
        .map(|c| format!("j.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = mercato_kit::db::query(&format!(
        "SELECT {cols} FROM processor_jobs j \
         WHERE j.not_before <= $1 AND (j.locked_until IS NULL OR j.locked_until <= $1) AND {HEAD_OF_PAYMENT} \
         ORDER BY j.not_before, j.seq LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(job_from).collect()
}

/// When the next call becomes due (or its taker's lease runs out), if any call is queued.
pub async fn next_due(pool: &Pool) -> Result<Option<i64>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(&format!(
        "SELECT j.not_before, j.locked_until FROM processor_jobs j WHERE {HEAD_OF_PAYMENT}"
    ))
    .fetch_all(pool)
    .await?;
    let mut next: Option<i64> = None;
    for r in rows {
        let not_before: i64 = r.try_get("not_before")?;
        let locked: Option<i64> = r.try_get("locked_until")?;
        let at = not_before.max(locked.unwrap_or(i64::MIN));
        next = Some(next.map_or(at, |n| n.min(at)));
    }
    Ok(next)
}

/// Takes a call, as `job` read it, for one attempt until `lease_until`, counting the attempt;
/// false when another worker holds it or has made an attempt since `job` was read.
///
/// The attempt count is the row's version: every claim raises it, so a worker whose read is
/// stale (another replica claimed the call, got a transient error and put it back for later)
/// claims nothing, instead of calling the processor again early with the old picture of the
/// call (its `ambiguous` flag, its deadline). One conditional update, so on PostgreSQL two
/// workers claiming the same call at once wait for each other for a moment only, and the
/// second finds the count moved.
pub async fn claim_job<'e, E: Into<Exec<'e>>>(
    exec: E,
    job: &Job,
    now: i64,
    lease_until: i64,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE processor_jobs SET locked_until = $3, attempts = attempts + 1 \
         WHERE seq = $1 AND attempts = $4 AND not_before <= $2 \
         AND (locked_until IS NULL OR locked_until <= $2)",
    )
    .bind(job.seq)
    .bind(now)
    .bind(lease_until)
    .bind(job.attempts)
    .execute(exec)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes a call that was never sent; false when it was sent (or taken) in the meantime.
pub async fn drop_unsent_job(tx: &mut Tx, seq: i64) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "DELETE FROM processor_jobs WHERE seq = $1 AND attempts = 0 AND locked_until IS NULL",
    )
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes a call whose outcome is being recorded; false when it is already gone.
pub async fn delete_job(tx: &mut Tx, seq: i64) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query("DELETE FROM processor_jobs WHERE seq = $1")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// When and how a call is tried again.
#[derive(Clone, Debug)]
pub struct Retry<'a> {
    pub not_before: i64,
    pub give_up_at: Option<i64>,
    pub ambiguous: bool,
    pub error: &'a str,
}

/// Puts a call back in the queue for another attempt.
pub async fn reschedule_job(
    tx: &mut Tx,
    seq: i64,
    retry: &Retry<'_>,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE processor_jobs SET not_before = $2, give_up_at = $3, ambiguous = $4, locked_until = NULL, \
         last_error = $5 WHERE seq = $1",
    )
    .bind(seq)
    .bind(retry.not_before)
    .bind(retry.give_up_at)
    .bind(i64::from(retry.ambiguous))
    .bind(retry.error)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// How a processor call ended, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Succeeded,
    Pending,
    Declined,
    Refused,
    RetryableError,
    GaveUp,
    /// Never sent (the order was cancelled first).
    Skipped,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Succeeded => "succeeded",
            CallOutcome::Pending => "pending",
            CallOutcome::Declined => "declined",
            CallOutcome::Refused => "refused",
            CallOutcome::RetryableError => "retryable_error",
            CallOutcome::GaveUp => "gave_up",
            CallOutcome::Skipped => "skipped",
        }
    }
}

/// One processor call (or a decision not to make one) in the audit trail.
#[derive(Clone, Debug)]
pub struct Transaction {
    pub payment_id: Uuid,
    pub kind: JobKind,
    pub idempotency_key: String,
    pub amount_cents: Option<i64>,
    pub attempt: i64,
    pub outcome: CallOutcome,
    pub http_status: Option<u16>,
    pub provider_ref: Option<String>,
    pub summary: String,
    pub duration_ms: Option<i64>,
}

pub async fn insert_transaction(
    tx: &mut Tx,
    t: &Transaction,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO payment_transactions (id, payment_id, kind, idempotency_key, amount_cents, attempt, outcome, \
         http_status, provider_ref, summary, duration_ms, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(t.payment_id.to_string())
    .bind(t.kind.as_str())
    .bind(&t.idempotency_key)
    .bind(t.amount_cents)
    .bind(t.attempt)
    .bind(t.outcome.as_str())
    .bind(t.http_status.map(i64::from))
    .bind(&t.provider_ref)
    .bind(&t.summary)
    .bind(t.duration_ms)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A recorded call, as tests and audits read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    pub kind: String,
    pub idempotency_key: String,
    pub amount_cents: Option<i64>,
    pub attempt: i64,
    pub outcome: String,
    pub http_status: Option<i64>,
    pub summary: String,
}

/// The audit trail of one payment, oldest first.
pub async fn transactions_of(
    pool: &Pool,
    payment_id: Uuid,
) -> Result<Vec<RecordedCall>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT kind, idempotency_key, amount_cents, attempt, outcome, http_status, summary \
         FROM payment_transactions WHERE payment_id = $1 ORDER BY created_at, id",
    )
    .bind(payment_id.to_string())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RecordedCall {
                kind: r.try_get("kind")?,
                idempotency_key: r.try_get("idempotency_key")?,
                amount_cents: r.try_get("amount_cents")?,
                attempt: r.try_get("attempt")?,
                outcome: r.try_get("outcome")?,
                http_status: r.try_get("http_status")?,
                summary: r.try_get("summary")?,
            })
        })
        .collect()
}

/// Takes the write lock of the order's payment row, if it has one, until the transaction ends
/// (a write that changes nothing: `FOR UPDATE` is PostgreSQL only, and SQLite's single writer
/// holds the lock anyway).
pub async fn lock_payment_of_order(
    tx: &mut Tx,
    order_id: OrderId,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query("UPDATE payments SET version = version WHERE order_id = $1")
        .bind(order_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks an order cancelled; true when it was not marked before.
pub async fn mark_cancelled(
    tx: &mut Tx,
    order_id: OrderId,
    reason: &str,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "INSERT INTO cancelled_orders (order_id, reason, cancelled_at) VALUES ($1, $2, $3) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.to_string())
    .bind(reason)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn is_cancelled<'e, E: Into<Exec<'e>>>(
    exec: E,
    order_id: OrderId,
) -> Result<bool, mercato_kit::db::Error> {
    Ok(
        mercato_kit::db::query("SELECT order_id FROM cancelled_orders WHERE order_id = $1")
            .bind(order_id.to_string())
            .fetch_optional(exec)
            .await?
            .is_some(),
    )
}

/// Which of `orders` were cancelled, in one query.
pub async fn cancelled_among(
    pool: &Pool,
    orders: &[OrderId],
) -> Result<HashSet<OrderId>, mercato_kit::db::Error> {
    if orders.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "SELECT order_id FROM cancelled_orders WHERE order_id IN ({})",
        placeholders(1, orders.len())
    );
    let mut q = mercato_kit::db::query(&sql);
    for o in orders {
        q = q.bind(o.to_string());
    }
    q.fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok(OrderId(parse_uuid(&r.try_get::<String, _>("order_id")?)?)))
        .collect()
}

/// Claims a webhook event id; false when it was handled (or is being handled) already.
pub async fn claim_webhook(
    tx: &mut Tx,
    event_id: &str,
    event_type: &str,
    provider_ref: &str,
    created: i64,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "INSERT INTO webhook_events (event_id, event_type, provider_ref, outcome, created, received_at) \
         VALUES ($1, $2, $3, 'received', $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(event_type)
    .bind(provider_ref)
    .bind(created)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn finish_webhook(
    tx: &mut Tx,
    event_id: &str,
    payment_id: Option<Uuid>,
    outcome: &str,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "UPDATE webhook_events SET payment_id = $2, outcome = $3 WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(payment_id.map(|p| p.to_string()))
    .bind(outcome)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A handled webhook's recorded outcome (for tests and audits).
pub async fn webhook_outcome(
    pool: &Pool,
    event_id: &str,
) -> Result<Option<String>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query("SELECT outcome FROM webhook_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| r.try_get("outcome")).transpose()
}

/// An order's terms as its events announced them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderTerms {
    pub customer_id: Option<UserId>,
    pub amount_cents: i64,
    pub currency: String,
}

/// Remembers an order's terms, unless they are known already (the first announcement wins;
/// both carry the same).
pub async fn record_order_terms(
    tx: &mut Tx,
    order_id: OrderId,
    terms: &OrderTerms,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO order_facts (order_id, customer_id, amount_cents, currency, recorded_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO UPDATE SET \
         customer_id = COALESCE(order_facts.customer_id, excluded.customer_id), \
         amount_cents = COALESCE(order_facts.amount_cents, excluded.amount_cents), \
         currency = COALESCE(order_facts.currency, excluded.currency)",
    )
    .bind(order_id.to_string())
    .bind(terms.customer_id.map(|c| c.to_string()))
    .bind(terms.amount_cents)
    .bind(&terms.currency)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A step of the order's life the payment service must remember.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStep {
    Fulfilled,
    Refunded,
}

pub async fn record_order_step(
    tx: &mut Tx,
    order_id: OrderId,
    step: OrderStep,
) -> Result<(), mercato_kit::db::Error> {
    let column = match step {
        OrderStep::Fulfilled => "fulfilled_at",
        OrderStep::Refunded => "refunded_at",
    };
    mercato_kit::db::query(&format!(
        "INSERT INTO order_facts (order_id, {column}, recorded_at) VALUES ($1, $2, $2) \
         ON CONFLICT (order_id) DO UPDATE SET {column} = COALESCE(order_facts.{column}, excluded.{column})"
    ))
    .bind(order_id.to_string())
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What is known of an order: its terms (if announced) and its standing.
pub async fn order_facts(
    tx: &mut Tx,
    order_id: OrderId,
) -> Result<(Option<OrderTerms>, crate::domain::OrderStanding), mercato_kit::db::Error> {
    let row = mercato_kit::db::query(
        "SELECT customer_id, amount_cents, currency, fulfilled_at, refunded_at \
         FROM order_facts WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    let cancelled = is_cancelled(&mut **tx, order_id).await?;
    let Some(row) = row else {
        return Ok((
            None,
            crate::domain::OrderStanding {
                cancelled,
                ..Default::default()
            },
        ));
    };
    let customer: Option<String> = row.try_get("customer_id")?;
    let amount: Option<i64> = row.try_get("amount_cents")?;
    let currency: Option<String> = row.try_get("currency")?;
    let terms = match (amount, currency) {
        (Some(amount_cents), Some(currency)) => Some(OrderTerms {
            customer_id: customer.as_deref().map(parse_uuid).transpose()?.map(UserId),
            amount_cents,
            currency,
        }),
        _ => None,
    };
    let standing = crate::domain::OrderStanding {
        cancelled,
        fulfilled: row.try_get::<Option<i64>, _>("fulfilled_at")?.is_some(),
        refunded: row.try_get::<Option<i64>, _>("refunded_at")?.is_some(),
    };
    Ok((terms, standing))
}

/// A payment as the audit compares it with its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedPayment {
    pub id: Uuid,
    pub order_id: OrderId,
    pub money: Money,
    pub currency: String,
    /// Distinct holds the processor confirmed for it (authorize calls that succeeded, by
    /// provider reference): retries of one call carry its key and get the same hold back, so
    /// anything but 0 or 1 means the card was authorized twice.
    pub authorizations: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Payments in order id order after `after`, `limit` of them.
pub async fn audit_payments(
    pool: &Pool,
    after: Option<OrderId>,
    limit: i64,
) -> Result<Vec<AuditedPayment>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT p.id, p.order_id, p.status, p.amount_cents, p.captured_cents, p.refunded_cents, \
         p.currency, p.created_at, p.updated_at, \
         (SELECT COUNT(DISTINCT t.provider_ref) FROM payment_transactions t \
            WHERE t.payment_id = p.id AND t.kind = 'authorize' AND t.outcome = 'succeeded') AS authorizations \
         FROM payments p WHERE ($1 IS NULL OR p.order_id > $1) ORDER BY p.order_id LIMIT $2",
    )
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditedPayment {
                id: parse_uuid(&r.try_get::<String, _>("id")?)?,
                order_id: OrderId(parse_uuid(&r.try_get::<String, _>("order_id")?)?),
                money: Money {
                    status: decode(r.try_get::<String, _>("status")?.parse::<Status>())?,
                    amount_cents: r.try_get("amount_cents")?,
                    captured_cents: r.try_get("captured_cents")?,
                    refunded_cents: r.try_get("refunded_cents")?,
                },
                currency: r.try_get("currency")?,
                authorizations: r.try_get("authorizations")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect()
}
