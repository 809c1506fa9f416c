//! The payment service's routes: extract, check the caller, call the use case, answer. Rules
//! live in `service` and `domain`.
//!
//! Money-moving routes never wait on the processor inside a transaction: they commit the
//! queued call, wake the worker, then wait a bounded time for its answer. They answer with the
//! payment as it then is: 200 (201 for a new payment) when the processor has answered, 202 when
//! it has not yet (the worker keeps trying; `GET /payments/{id}` shows the outcome).

use crate::domain::{NotTheOrders, Refusal, Request, Status, MAX_AMOUNT_CENTS};
use crate::service::{self, Open, Opened, Payments, WebhookEvent};
use crate::store::{self, Payment};
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use mercato_kit::audit::{admin_page, PageQuery};
use mercato_kit::auth::{Principal, Role, Verifier};
use mercato_kit::contracts::webhook as signature;
use mercato_kit::events::Cause;
use mercato_kit::http::{
    versioned_api, BearerAuth, Json, OptionalJson, Path, Query, RequestContext,
};
use mercato_kit::idempotency::IdempotencyKey;
use mercato_kit::ids::{Currency, OrderId, UserId};
use mercato_kit::time::{now_us, to_rfc3339};
use mercato_kit::validate::{self, Errors, FieldError};
use mercato_kit::Problem;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub payments: Arc<Payments>,
    pub verifier: Verifier,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mercato payment service",
        description = "Payments of orders: authorization, capture, void and refund through the card processor, and the processor's webhooks."
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The one place the payment use cases' errors become problem documents.
impl From<service::Error> for Problem {
    fn from(e: service::Error) -> Self {
        use service::Error as E;
        match e {
            E::ConcurrentUpdate => {
                Problem::conflict("concurrent_update", e.to_string()).with_retry_after(1)
            }
            E::NotFound(_) => Problem::not_found(e.to_string()),
            E::UnknownOrder(_) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown_order", "No such order")
                    .with_detail(e.to_string())
            }
            E::OrderMismatch { .. } => Problem::conflict("order_mismatch", e.to_string()),
            E::AlreadyQueued(_) => Problem::conflict("already_queued", e.to_string()),
            E::NotTheOrders { refusal, .. } => {
                let code = match refusal {
                    NotTheOrders::VoidOfLiveOrder => "order_not_cancelled",
                    NotTheOrders::CaptureBeforeFulfilment => "order_not_fulfilled",
                    NotTheOrders::RefundOfLiveOrder => "order_not_refunded",
                };
                Problem::conflict(code, e.to_string())
            }
            E::Refused(r @ Refusal::InvalidState { .. }) => {
                Problem::conflict("invalid_state", r.to_string())
            }
            E::Refused(r @ Refusal::AmountOutOfRange { available, .. }) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_amount",
                "The amount is not possible for this payment",
            )
            .with_detail(r.to_string())
            .with_errors(vec![FieldError {
                field: "amount_cents".into(),
                message: format!("must be from 1 to {available}"),
            }]),
            E::Db(e) => e.into(),
            E::Internal(what) => Problem::internal(&what),
        }
    }
}

pub fn router(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .routes(routes!(authorize))
        .routes(routes!(capture))
        .routes(routes!(void))
        .routes(routes!(refund))
        .routes(routes!(get_payment))
        .routes(routes!(list_payments))
        .routes(routes!(webhook))
        .routes(routes!(audit_payments));
    versioned_api(ApiDoc::openapi(), api, state)
}

/// A payment as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub id: Uuid,
    pub order_id: OrderId,
    pub customer_id: Option<UserId>,
    /// PENDING, AUTHORIZED, CAPTURED, PARTIALLY_REFUNDED, REFUNDED, VOIDED or FAILED.
    #[schema(example = "AUTHORIZED")]
    pub status: String,
    pub amount_cents: i64,
    pub captured_cents: i64,
    pub refunded_cents: i64,
    #[schema(example = "USD")]
    pub currency: String,
    /// The processor's reference, once it has one.
    pub provider_ref: Option<String>,
    /// Why a payment FAILED (a decline code such as `insufficient_funds`, or
    /// `processor_unavailable`), or why it was VOIDED unsent (`order_cancelled`).
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Payment> for PaymentView {
    fn from(p: &Payment) -> Self {
        PaymentView {
            id: p.id,
            order_id: p.order_id,
            customer_id: p.customer_id,
            status: p.money.status.as_str().to_owned(),
            amount_cents: p.money.amount_cents,
            captured_cents: p.money.captured_cents,
            refunded_cents: p.money.refunded_cents,
            currency: p.currency.clone(),
            provider_ref: p.provider_ref.clone(),
            failure_reason: p.failure_reason.clone(),
            created_at: to_rfc3339(p.created_at),
            updated_at: to_rfc3339(p.updated_at),
        }
    }
}

/// Only the order's customer, admins and other services see a payment. Anyone else is told it
/// does not exist, so payment ids cannot be probed.
fn may_see(p: &Principal, payment: &Payment) -> bool {
    matches!(p.role, Role::Admin | Role::Service)
        || payment.customer_id.is_some_and(|c| p.user_id() == Some(c))
}

const MONEY_MOVERS: [Role; 2] = [Role::Service, Role::Admin];

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeInput {
    order_id: OrderId,
    #[schema(example = 1999)]
    amount_cents: i64,
    #[schema(example = "USD")]
    currency: String,
    /// A processor token such as `pm_card_visa`.
    #[schema(example = "pm_card_visa")]
    payment_method: String,
    /// The order's customer, who may then read the payment.
    #[serde(default)]
    customer_id: Option<UserId>,
}

/// Authorizes an order's amount with the processor (service, ADMIN). Idempotent per order: an
/// order that has a payment gets it back (409 if the terms differ).
#[utoipa::path(post, path = "/payments/authorize", tag = "payments", security(("bearer" = [])),
    request_body = AuthorizeInput,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, description = "authorized or declined (see status)", body = PaymentView),
              (status = 200, description = "the order's existing payment", body = PaymentView),
              (status = 202, description = "the processor has not decided yet", body = PaymentView),
              (status = 403, body = Problem),
              (status = 404, description = "`unknown_order`: no such order was announced to the payment service", body = Problem),
              (status = 409, description = "`order_cancelled`; `order_mismatch`: not the order's amount, currency or customer; `payment_exists`: the order has a payment with another method", body = Problem),
              (status = 422, body = Problem)))]
async fn authorize(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Json(input): Json<AuthorizeInput>,
) -> Result<Response, Problem> {
    p.require(&MONEY_MOVERS)?;
    let mut errors = Errors::new();
    if !(1..=MAX_AMOUNT_CENTS).contains(&input.amount_cents) {
        errors.add(
            "amount_cents",
            format!("must be from 1 to {MAX_AMOUNT_CENTS}"),
        );
    }
    let currency = errors.take("currency", input.currency.parse::<Currency>());
    let method = errors.take(
        "payment_method",
        validate::line(&input.payment_method, 1, 100),
    );
    errors.finish()?;
    let (Some(currency), Some(method)) = (currency, method) else {
        return Err(Problem::internal(&"checked fields are missing"));
    };
    let mut claim = key.claim(&s.payments.db, &p.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let open = Open {
        order_id: input.order_id,
        customer_id: input.customer_id,
        amount_cents: input.amount_cents,
        currency,
        payment_method: method.clone(),
        give_up_at: now_us() + s.payments.settings.authorize_patience.as_micros() as i64,
    };
    let mut tx = s.payments.db.begin().await?;
    let (payment, created) = match s
        .payments
        .open_requested(&mut tx, &open, &Cause::of_request(&ctx))
        .await?
    {
        Opened::Created(payment) => (payment, true),
        Opened::Existing(payment) => {
            let same = payment.money.amount_cents == input.amount_cents
                && payment.currency == currency.as_str()
                && payment.payment_method == method;
            if !same {
                return Err(Problem::conflict(
                    "payment_exists",
                    format!(
                        "order {} already has payment {} with other terms",
                        input.order_id, payment.id
                    ),
                ));
            }
            (payment, false)
        }
        Opened::OrderCancelled => {
            return Err(Problem::conflict(
                "order_cancelled",
                format!("order {} was cancelled; it is not charged", input.order_id),
            ))
        }
    };
    tx.commit().await?;
    s.payments.committed();
    let (payment, _) = s.payments.wait_for_answer(payment.id).await?;
    let status = if payment.money.status == Status::Pending {
        StatusCode::ACCEPTED
    } else if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let tx = s.payments.db.begin().await?;
    claim.finish(tx, status, &PaymentView::from(&payment)).await
}

#[derive(Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountInput {
    /// Capture: default the whole authorization. Refund: default all that is left.
    amount_cents: Option<i64>,
}

/// Queues a capture, void or refund, waits a little for the processor, and answers.
async fn change(
    s: AppState,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    id: Uuid,
    request: Request,
    input: &AmountInput,
) -> Result<Response, Problem> {
    p.require(&MONEY_MOVERS)?;
    let mut claim = key.claim(&s.payments.db, &p.subject, input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.payments.db.begin().await?;
    s.payments
        .request(&mut tx, id, request, &Cause::of_request(&ctx))
        .await?;
    tx.commit().await?;
    s.payments.committed();
    let (payment, answered) = s.payments.wait_for_answer(id).await?;
    let status = if answered {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let tx = s.payments.db.begin().await?;
    claim.finish(tx, status, &PaymentView::from(&payment)).await
}

/// Captures an authorized payment, all of it or `amount_cents` (service, ADMIN).
#[utoipa::path(post, path = "/payments/{id}/capture", tag = "payments", security(("bearer" = [])),
    request_body(content = AmountInput, description = "optional"),
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = PaymentView), (status = 202, description = "the processor has not answered yet", body = PaymentView),
              (status = 404, body = Problem), (status = 409, description = "`order_not_fulfilled`: the order's fulfilment captures it; `invalid_state`: not authorized", body = Problem),
              (status = 422, description = "`invalid_amount`", body = Problem)))]
async fn capture(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<Uuid>,
    OptionalJson(input): OptionalJson<AmountInput>,
) -> Result<Response, Problem> {
    let request = Request::Capture {
        amount_cents: input.amount_cents,
    };
    change(s, p, ctx, key, id, request, &input).await
}

/// Releases an authorized payment's hold (service, ADMIN).
#[utoipa::path(post, path = "/payments/{id}/void", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = PaymentView), (status = 202, description = "the processor has not answered yet", body = PaymentView),
              (status = 404, body = Problem), (status = 409, description = "`order_not_cancelled`: cancel the order instead; `invalid_state`: not authorized", body = Problem)))]
async fn void(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<Uuid>,
) -> Result<Response, Problem> {
    change(s, p, ctx, key, id, Request::Void, &AmountInput::default()).await
}

/// Refunds a captured payment, `amount_cents` or all that is left (service, ADMIN).
#[utoipa::path(post, path = "/payments/{id}/refund", tag = "payments", security(("bearer" = [])),
    request_body(content = AmountInput, description = "optional"),
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = PaymentView), (status = 202, description = "the processor has not answered yet", body = PaymentView),
              (status = 404, body = Problem), (status = 409, description = "`order_not_refunded`: refund the order instead; `invalid_state`: nothing captured or all refunded", body = Problem),
              (status = 422, description = "`invalid_amount`: more than is left", body = Problem)))]
async fn refund(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<Uuid>,
    OptionalJson(input): OptionalJson<AmountInput>,
) -> Result<Response, Problem> {
    let request = Request::Refund {
        amount_cents: input.amount_cents,
    };
    change(s, p, ctx, key, id, request, &input).await
}

/// One payment (the order's customer, ADMIN, services).
#[utoipa::path(get, path = "/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = PaymentView), (status = 404, body = Problem)))]
async fn get_payment(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<PaymentView>, Problem> {
    match s.payments.get(id).await? {
        Some(payment) if may_see(&p, &payment) => Ok(Json(PaymentView::from(&payment))),
        _ => Err(Problem::not_found(format!("no payment {id}"))),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// The order's payment.
    order_id: Option<String>,
    /// 1 to 100, default 50.
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentPage {
    items: Vec<PaymentView>,
    next_cursor: Option<String>,
}

/// Payments, oldest first: a customer's own, or any (ADMIN, services); `order_id` narrows to
/// one order's payment.
#[utoipa::path(get, path = "/payments", tag = "payments", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = PaymentPage), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn list_payments(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<ListParams>,
) -> Result<Json<PaymentPage>, Problem> {
    let mut errors = Errors::new();
    let order_id = q.order_id.as_deref().and_then(|o| {
        errors.take(
            "order_id",
            o.parse::<OrderId>()
                .map_err(|_| "must be an order id".into()),
        )
    });
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        errors.add("limit", "must be from 1 to 100");
    }
    let after = q.cursor.as_deref().and_then(|c| {
        errors.take(
            "cursor",
            c.parse::<Uuid>()
                .map_err(|_| "is not a cursor from this list".into()),
        )
    });
    errors.finish()?;
    let customer_id = match p.role {
        Role::Admin | Role::Service => None,
        Role::Customer => Some(p.require_user()?),
        Role::Seller => {
            return Err(Problem::forbidden(
                "payments are visible to their customer and admins",
            ))
        }
    };
    let filter = store::Filter {
        order_id,
        customer_id,
        after,
    };
    let mut rows = s.payments.list(&filter, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(PaymentPage {
        items: rows.iter().map(PaymentView::from).collect(),
        next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct WebhookAck {
    received: bool,
    /// What the event did: `authorized`, `failed`, `duplicate`, `ignored`, ...
    outcome: String,
}

fn bad_signature(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_signature",
        "The webhook signature is not valid",
    )
    .with_detail(detail)
}

fn plain_text(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Receives the processor's webhooks. No token: the `Psp-Signature` header (HMAC-SHA256 over
/// the timestamp and the raw body) proves the sender, and its timestamp must be within five
/// minutes. Idempotent per event id; an event that no longer applies is recorded and ignored.
#[utoipa::path(post, path = "/payments/webhook", tag = "webhooks",
    request_body(content = WebhookEvent, description = "the processor's event, signed as sent"),
    params(("Psp-Signature" = String, Header, description = "t=<unix>,v1=<hex HMAC-SHA256>")),
    responses((status = 200, body = WebhookAck),
              (status = 400, description = "signed but not a webhook event", body = Problem),
              (status = 401, description = "missing, wrong or stale signature", body = Problem)))]
async fn webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookAck>, Problem> {
    let header = headers
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad_signature("the Psp-Signature header is missing"))?;
    let settings = &s.payments.settings;
    signature::verify(
        settings.webhook_secret.expose().as_bytes(),
        header,
        &body,
        chrono::Utc::now().timestamp(),
        settings.webhook_tolerance.as_secs() as i64,
    )
    .map_err(|e| {
        tracing::warn!(error = %e, "webhook refused");
        bad_signature(e.to_string())
    })?;
    let event: WebhookEvent = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("not a webhook event: {e}")))?;
    if !plain_text(&event.id, 255)
        || !plain_text(&event.kind, 64)
        || !plain_text(&event.data.provider_ref, 128)
        || event.data.reference.len() > 255
    {
        return Err(Problem::bad_request(
            "the event's id, type or references are not plain short text",
        ));
    }
    let mut tx = s.payments.db.begin().await?;
    let outcome = s.payments.webhook(&mut tx, &event).await?;
    tx.commit().await?;
    s.payments.committed();
    tracing::info!(event = %event.id, kind = %event.kind, %outcome, "webhook handled");
    Ok(Json(WebhookAck {
        received: true,
        outcome,
    }))
}

// ---------------------------------------------------------------------------------------------
// The audit (ADMIN): what `mercato audit` compares with the orders.

/// A payment as the audit sees it.
#[derive(Serialize, ToSchema)]
pub struct PaymentAuditBody {
    id: Uuid,
    order_id: OrderId,
    #[schema(example = "AUTHORIZED")]
    status: String,
    amount_cents: i64,
    captured_cents: i64,
    refunded_cents: i64,
    currency: String,
    /// Distinct holds the processor confirmed (0 or 1 in a healthy shop).
    authorizations: i64,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentAuditPage {
    items: Vec<PaymentAuditBody>,
    /// Pass as `cursor` for the next page; null after the last.
    next_cursor: Option<String>,
}

/// Every payment, in order id order, a page at a time.
#[utoipa::path(get, path = "/admin/audit/payments", tag = "audit", security(("bearer" = [])),
    params(mercato_kit::audit::PageQuery),
    responses(
        (status = 200, description = "A page of payments", body = PaymentAuditPage),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn audit_payments(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<PaymentAuditPage>, Problem> {
    let (payments, next_cursor) =
        admin_page(p, q, |a, n| s.payments.audit_page(a, n), |p| p.order_id).await?;
    Ok(Json(PaymentAuditPage {
        next_cursor,
        items: payments
            .iter()
            .map(|p| PaymentAuditBody {
                id: p.id,
                order_id: p.order_id,
                status: p.money.status.as_str().into(),
                amount_cents: p.money.amount_cents,
                captured_cents: p.money.captured_cents,
                refunded_cents: p.money.refunded_cents,
                currency: p.currency.clone(),
                authorizations: p.authorizations,
                created_at: to_rfc3339(p.created_at),
                updated_at: to_rfc3339(p.updated_at),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobKind;

    /// The codes and statuses clients and the order saga rely on, one per use-case error.
    #[test]
    fn each_error_keeps_its_problem() {
        let (order, payment) = (OrderId::new(), Uuid::now_v7());
        let cases: Vec<(service::Error, u16, &str)> = vec![
            (service::Error::ConcurrentUpdate, 409, "concurrent_update"),
            (service::Error::NotFound(payment), 404, "not_found"),
            (service::Error::UnknownOrder(order), 404, "unknown_order"),
            (
                service::Error::AlreadyQueued(JobKind::Refund),
                409,
                "already_queued",
            ),
            (
                service::Error::NotTheOrders {
                    refusal: NotTheOrders::CaptureBeforeFulfilment,
                    order_id: order,
                },
                409,
                "order_not_fulfilled",
            ),
            (
                service::Error::Refused(Refusal::AmountOutOfRange {
                    requested: 9,
                    available: 5,
                }),
                422,
                "invalid_amount",
            ),
            (service::Error::Internal("x"), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let p = Problem::from(e);
            assert_eq!((p.status, p.code.as_ref()), (status, code));
        }
        let p = Problem::from(service::Error::ConcurrentUpdate);
        assert_eq!(p.retry_after_secs, Some(1));
        let p = Problem::from(service::Error::NotTheOrders {
            refusal: NotTheOrders::VoidOfLiveOrder,
            order_id: order,
        });
        assert!(p
            .detail
            .unwrap()
            .contains(&format!("/orders/{order}/cancel")));
        let p = Problem::from(service::Error::NotFound(payment));
        assert_eq!(p.detail.unwrap(), format!("no payment {payment}"));
    }
}
