//! The order service's routes under `/api/v1`: extract, check who is asking, call one use case,
//! answer. Rules live in `domain`, use cases in `service`; errors become problem documents in
//! one place (`From<service::Error> for Problem`, below).
//!
//! Every route that changes an order takes an `Idempotency-Key`, commits, and only then wakes
//! the outbox relay and tells the status feed, so a waiter never hears of an uncommitted state.

use crate::domain::{
    Command, CreateOrder, Cursor, Order, OrderItem, OrderStatus, ShippingAddress, StockCheck,
    WaitStep, Waiting,
};
use crate::service::{self, Error, Orders};
use crate::store::{HistoryEntry, ListFilter};
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mercato_kit::audit::{admin_page, PageQuery};
use mercato_kit::auth::{Principal, Role, Verifier};
use mercato_kit::contracts::CancelReason;
use mercato_kit::events::Cause;
use mercato_kit::http::{versioned_api, BearerAuth, Json, Path, Query, RequestContext};
use mercato_kit::idempotency::{Finished, IdempotencyKey};
use mercato_kit::ids::{OrderId, UserId};
use mercato_kit::time::to_rfc3339;
use mercato_kit::validate::Errors;
use mercato_kit::Problem;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The most `?wait=` may ask for.
pub const MAX_WAIT_SECS: u64 = 30;

/// How long one status stream stays open before the client is asked to reconnect (it then
/// gets the current status first, so nothing is missed). Bounded because an open stream
/// holds back a graceful shutdown.
const STREAM_LIFETIME: Duration = Duration::from_secs(30);

#[derive(Clone, FromRef)]
pub struct AppState {
    pub orders: Arc<Orders>,
    pub verifier: Verifier,
    /// `?wait=` is cut to this, so a held answer always beats the kit's request timeout.
    pub max_wait: Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mercato order service",
        description = "Orders and their way through the checkout saga: stock, payment, fulfilment."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "orders", description = "Placing, following and moving orders"),
        (name = "audit", description = "What `mercato audit` checks (ADMIN)")
    )
)]
struct ApiDoc;

/// The API routes with their state, and the OpenAPI document describing them.
pub fn router(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order, update_order, delete_order))
        .routes(routes!(cancel_order))
        .routes(routes!(process_order))
        .routes(routes!(fulfill_order))
        .routes(routes!(refund_order))
        .routes(routes!(order_events))
        .routes(routes!(order_stream))
        .routes(routes!(audit_orders))
        .routes(routes!(audit_keys));
    versioned_api(ApiDoc::openapi(), api, state)
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        match e {
            Error::NotFound(id) => Problem::not_found(format!("no order {id}")),
            Error::Refused(r) => Problem::conflict("invalid_transition", r.to_string())
                .with_extension("from", r.from.name().into())
                .with_extension("to", r.command.target().into()),
            Error::Invalid(i) => i.into(),
            Error::InsufficientStock(lines) => Problem::conflict(
                "insufficient_stock",
                "there is not enough stock for some lines right now",
            )
            .with_extension("lines", serde_json::json!(lines)),
            e @ Error::AddressLocked(_) => Problem::conflict("address_locked", e.to_string()),
            e @ Error::Contended(_) => {
                Problem::conflict("concurrent_update", e.to_string()).with_retry_after(1)
            }
            Error::Overloaded(o) => {
                Problem::overloaded(o.to_string(), service::OVERLOADED_RETRY_AFTER_SECS)
            }
            Error::Db(e) => e.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the API answers.

/// An order.
#[derive(Serialize, ToSchema)]
pub struct OrderBody {
    id: OrderId,
    customer_id: UserId,
    /// PENDING, CONFIRMED, PAID, PROCESSING, FULFILLED, CANCELLED or REFUNDED.
    #[schema(example = "PENDING")]
    status: String,
    /// Why, when CANCELLED.
    cancel_reason: Option<CancelReason>,
    items: Vec<OrderItem>,
    total_cents: i64,
    #[schema(example = "USD")]
    currency: String,
    payment_method: String,
    shipping_address: Option<ShippingAddress>,
    /// `deferred` when inventory could not be asked at ordering time.
    stock_check: StockCheck,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// While CONFIRMED: why the order has not moved on yet (the card processor is unreachable,
    /// say), as its payment last reported. Null otherwise.
    waiting_for: Option<WaitingFor>,
}

/// Why an order waits in the saga. It is not a status: the order stays CONFIRMED, its history
/// gains no step, and this disappears once it moves on.
#[derive(Serialize, ToSchema)]
pub struct WaitingFor {
    /// The step it waits on: `payment` (the authorization, retried until the reservation
    /// expires).
    step: WaitStep,
    /// For people.
    #[schema(example = "the card processor is unavailable (circuit breaker open)")]
    reason: String,
    /// The attempt that failed last, from 1.
    attempt: i64,
    /// When the step is tried again.
    #[schema(format = DateTime)]
    next_attempt_at: String,
    /// When it stops being retried (the stock reservation's expiry); the order is then
    /// cancelled. Null when unknown.
    #[schema(format = DateTime)]
    retry_until: Option<String>,
    /// When the order started waiting on this step.
    #[schema(format = DateTime)]
    since: String,
}

impl From<&Waiting> for WaitingFor {
    fn from(w: &Waiting) -> Self {
        WaitingFor {
            step: w.step,
            reason: w.reason.clone(),
            attempt: w.attempt,
            next_attempt_at: to_rfc3339(w.next_attempt_at),
            retry_until: w.retry_until.map(to_rfc3339),
            since: to_rfc3339(w.since),
        }
    }
}

impl From<&Order> for OrderBody {
    fn from(o: &Order) -> Self {
        OrderBody {
            id: o.id,
            customer_id: o.customer_id,
            status: o.status.name().into(),
            cancel_reason: o.status.cancel_reason(),
            items: o.items.clone(),
            total_cents: o.total_cents,
            currency: o.currency.clone(),
            payment_method: o.payment_method.clone(),
            shipping_address: o.shipping_address.clone(),
            stock_check: o.stock_check,
            created_at: to_rfc3339(o.created_at),
            updated_at: to_rfc3339(o.updated_at),
            waiting_for: o.waiting_for().map(WaitingFor::from),
        }
    }
}

/// One page of orders, newest first.
#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    items: Vec<OrderBody>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// One step of an order's history.
#[derive(Serialize, ToSchema)]
pub struct HistoryBody {
    seq: i64,
    /// `order.created`, the saga event that moved it, or the order event a person caused.
    event_type: String,
    from_status: Option<String>,
    to_status: String,
    /// The cancel reason, for a step into CANCELLED.
    reason: Option<CancelReason>,
    #[schema(format = DateTime)]
    at: String,
}

impl From<&HistoryEntry> for HistoryBody {
    fn from(h: &HistoryEntry) -> Self {
        HistoryBody {
            seq: h.seq,
            event_type: h.event_type.clone(),
            from_status: h.from_status.map(|s| s.name().to_owned()),
            to_status: h.to_status.name().into(),
            reason: h.to_status.cancel_reason(),
            at: to_rfc3339(h.at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct HistoryList {
    items: Vec<HistoryBody>,
}

/// The data of a `status` server-sent event.
#[derive(Serialize, ToSchema)]
pub struct StatusEvent {
    order_id: OrderId,
    status: String,
    cancel_reason: Option<CancelReason>,
}

// ---------------------------------------------------------------------------------------------
// Access.

/// The order if `p` may see it. Anyone else is told it does not exist, so ids cannot be probed.
async fn visible(s: &AppState, p: &Principal, id: OrderId) -> Result<Order, Problem> {
    s.orders
        .get(id)
        .await?
        .filter(|o| o.visible_to(p))
        .ok_or_else(|| Problem::not_found(format!("no order {id}")))
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// Places an order. Prices are taken from the catalog as it is now; stock is pre-checked, and
/// when inventory cannot answer the order is accepted with `stock_check: deferred`.
#[utoipa::path(post, path = "/orders", tag = "orders", security(("bearer" = [])),
    request_body = CreateOrder,
    params(("Idempotency-Key" = String, Header, description = "Required: retries with the same key return the first answer and place no second order")),
    responses(
        (status = 201, description = "The order, PENDING", body = OrderBody),
        (status = 400, description = "`idempotency_key_required`, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a customer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient_stock`, with the short `lines`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad line, product, payment method or address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`: the saga is behind its bound (`MERCATO_ORDER_BACKLOG_MAX`, `MERCATO_ORDER_BACKLOG_MAX_AGE_SECS`); try again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_order(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Json(input): Json<CreateOrder>,
) -> Result<Response, Problem> {
    p.require(&[Role::Customer])?;
    let customer = p.require_user()?;
    key.required("an order is placed once per key")?;
    // Before any work, the key's lookup included: a refusal must cost next to nothing. A retry
    // of an order already placed is refused too, and gets its order once the saga catches up.
    s.orders.admission().admit()?;
    // Everything before the commit only reads (pricing, the stock pre-check), so the key is
    // looked up, not claimed, and its record is written with the order: one write
    // transaction per order. Two requests racing with one key place one order between them.
    let mut checked = key.check(s.orders.db(), &p.subject, &input).await?;
    if let Some(r) = checked.replayed() {
        return Ok(r);
    }
    // Outside any transaction: this may call inventory.
    let mut priced = s.orders.prepare(&input, Some(&ctx)).await?;
    priced.idempotency_key = key.key().map(str::to_owned);
    let mut tx = s.orders.db().begin().await?;
    let order = service::create(
        &mut tx,
        customer,
        &priced,
        &Cause::of_request(&ctx),
        s.orders.metrics(),
    )
    .await?;
    match checked
        .finish(tx, StatusCode::CREATED, &OrderBody::from(&order))
        .await?
    {
        Finished::Stored(res) => {
            s.orders.placed(&order);
            Ok(res)
        }
        // A request with the same key placed its order first; this one was rolled back.
        Finished::Replayed(res) => Ok(res),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    /// Hold the answer up to this many seconds (0 to 30) while the order is PENDING or
    /// CONFIRMED.
    wait: Option<u64>,
}

/// One order (its customer, a seller of one of its items, ADMIN, or a service).
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = OrderId, Path, description = "The order's id"), GetParams),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`wait` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_order(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<OrderId>,
    Query(q): Query<GetParams>,
) -> Result<Json<OrderBody>, Problem> {
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(Problem::field(
            "wait",
            format!("must be from 0 to {MAX_WAIT_SECS} seconds"),
        ));
    }
    let mut order = visible(&s, &p, id).await?;
    if wait > 0 && order.status.awaits_saga() {
        let hold = Duration::from_secs(wait).min(s.max_wait);
        let deadline = tokio::time::Instant::now() + hold;
        if let Some(later) = s.orders.wait_while_in_saga(id, deadline).await? {
            order = later;
        }
    }
    Ok(Json(OrderBody::from(&order)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only orders in this status.
    status: Option<String>,
    /// Only this customer's orders.
    customer_id: Option<String>,
    /// Only orders placed at or after this time (RFC 3339).
    created_from: Option<String>,
    /// Only orders placed before this time (RFC 3339).
    created_to: Option<String>,
    /// Only orders still PENDING or CONFIRMED that have not changed for this many minutes
    /// (1 to 100000): the ones the saga seems stuck on.
    stuck_minutes: Option<i64>,
    /// 1 to 100, default 20.
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Orders newest first: a customer's own, a seller's (containing its products), or all (ADMIN).
#[utoipa::path(get, path = "/orders", tag = "orders", security(("bearer" = [])), params(ListParams),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 422, description = "A bad filter or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_orders(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<ListParams>,
) -> Result<Json<OrderPage>, Problem> {
    let mut errors = Errors::new();
    let status = q.status.as_deref().and_then(|st| {
        let found = OrderStatus::NAMES.iter().copied().find(|n| *n == st);
        if found.is_none() {
            errors.add(
                "status",
                format!("must be one of {}", OrderStatus::NAMES.join(", ")),
            );
        }
        found
    });
    let customer_id = q.customer_id.as_deref().and_then(|c| {
        errors.take(
            "customer_id",
            c.parse::<UserId>().map_err(|_| "must be a user id".into()),
        )
    });
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        errors.add("limit", "must be from 1 to 100");
    }
    let mut time = |field: &str, v: &Option<String>| {
        v.as_deref().and_then(|t| {
            errors.take(
                field,
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|d| d.timestamp_micros())
                    .map_err(|_| "must be an RFC 3339 time like 2026-01-31T12:00:00Z".into()),
            )
        })
    };
    let created_from = time("created_from", &q.created_from);
    let created_to = time("created_to", &q.created_to);
    let stuck_since = q.stuck_minutes.and_then(|m| {
        if (1..=100_000).contains(&m) {
            Some(mercato_kit::time::now_us() - m * 60_000_000)
        } else {
            errors.add("stuck_minutes", "must be from 1 to 100000");
            None
        }
    });
    let after = q
        .cursor
        .as_deref()
        .and_then(|c| errors.take("cursor", Cursor::decode(c)));
    errors.finish()?;
    let mut filter = ListFilter {
        customer_id,
        seller_id: None,
        status,
        created_from,
        created_to,
        stuck_since,
        after,
        limit: limit + 1,
    };
    match p.role {
        Role::Customer => {
            let me = p.require_user()?;
            if customer_id.is_some_and(|c| c != me) {
                return Ok(Json(OrderPage {
                    items: vec![],
                    next_cursor: None,
                }));
            }
            filter.customer_id = Some(me);
        }
        Role::Seller => filter.seller_id = Some(p.require_user()?),
        Role::Admin | Role::Service => {}
    }
    let mut orders = s.orders.list(&filter).await?;
    let next_cursor = if orders.len() as i64 > limit {
        orders.truncate(limit as usize);
        orders.last().map(|o| Cursor::of(o).encode())
    } else {
        None
    };
    Ok(Json(OrderPage {
        items: orders.iter().map(OrderBody::from).collect(),
        next_cursor,
    }))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrder {
    shipping_address: ShippingAddress,
}

/// Changes where the order goes (its customer), until it is fulfilled or cancelled.
#[utoipa::path(patch, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    request_body = UpdateOrder,
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`address_locked`: fulfilled or cancelled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad address field", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_order(
    State(s): State<AppState>,
    p: Principal,
    key: IdempotencyKey,
    Path(id): Path<OrderId>,
    Json(input): Json<UpdateOrder>,
) -> Result<Response, Problem> {
    let order = visible(&s, &p, id).await?;
    if !order.is_owner(&p) {
        return Err(Problem::forbidden(
            "only the customer who placed the order changes its address",
        ));
    }
    let mut errors = Errors::new();
    let address = input.shipping_address.checked(&mut errors);
    errors.finish()?;
    let address = address.ok_or_else(|| Problem::field("shipping_address", "is not valid"))?;
    let mut claim = key.claim(s.orders.db(), &p.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.orders.db().begin().await?;
    let order = service::change_address(&mut tx, id, &address).await?;
    claim
        .finish(tx, StatusCode::OK, &OrderBody::from(&order))
        .await
}

/// Cancels as the customer or as an admin; cancelling a cancelled order answers it unchanged.
async fn cancel_as(
    s: AppState,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    id: OrderId,
) -> Result<Response, Problem> {
    let order = visible(&s, &p, id).await?;
    let owner = order.is_owner(&p);
    if !owner && !p.is(Role::Admin) {
        return Err(Problem::forbidden(
            "only the order's customer or an admin cancels it",
        ));
    }
    let mut claim = key.claim(s.orders.db(), &p.subject, &()).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.orders.db().begin().await?;
    let applied = service::cancel(
        &mut tx,
        id,
        !owner,
        &Cause::of_request(&ctx),
        s.orders.metrics(),
    )
    .await?;
    let res = claim
        .finish(tx, StatusCode::OK, &OrderBody::from(&applied.order))
        .await?;
    if applied.changed {
        s.orders.committed(&applied.order);
    }
    Ok(res)
}

/// Cancels the order (its customer, or ADMIN) until it is fulfilled.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order, CANCELLED", body = OrderBody),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: already fulfilled", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel_order(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<OrderId>,
) -> Result<Response, Problem> {
    cancel_as(s, p, ctx, key, id).await
}

/// The same as `POST /orders/{id}/cancel`.
#[utoipa::path(delete, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order, CANCELLED", body = OrderBody),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: already fulfilled", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_order(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<OrderId>,
) -> Result<Response, Problem> {
    cancel_as(s, p, ctx, key, id).await
}

/// Moves a paid order along as one of its sellers or an admin.
async fn work_on(
    s: AppState,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    id: OrderId,
    command: Command,
) -> Result<Response, Problem> {
    let order = visible(&s, &p, id).await?;
    if !order.may_work_on(&p) {
        return Err(Problem::forbidden(
            "only a seller of this order's items or an admin does this",
        ));
    }
    apply_claimed(&s, &p, &ctx, key, &(), id, command).await
}

/// Applies a transition under the request's Idempotency-Key: a replay answers the stored
/// response without touching the order, and the feed hears of the change only once the
/// transition, its outbox rows and the stored answer have committed together.
async fn apply_claimed<T: Serialize>(
    s: &AppState,
    p: &Principal,
    ctx: &RequestContext,
    key: IdempotencyKey,
    input: &T,
    id: OrderId,
    command: Command,
) -> Result<Response, Problem> {
    let mut claim = key.claim(s.orders.db(), &p.subject, input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.orders.db().begin().await?;
    let applied = service::apply(
        &mut tx,
        id,
        command,
        &Cause::of_request(ctx),
        s.orders.metrics(),
    )
    .await?;
    let res = claim
        .finish(tx, StatusCode::OK, &OrderBody::from(&applied.order))
        .await?;
    s.orders.committed(&applied.order);
    Ok(res)
}

/// PAID → PROCESSING (a seller of one of its items, or ADMIN).
#[utoipa::path(post, path = "/orders/{id}/process", tag = "orders", security(("bearer" = [])),
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order, PROCESSING", body = OrderBody),
        (status = 403, description = "Not a seller of its items nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn process_order(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<OrderId>,
) -> Result<Response, Problem> {
    work_on(s, p, ctx, key, id, Command::Process).await
}

/// PAID or PROCESSING → FULFILLED: stock is committed and the payment captured.
#[utoipa::path(post, path = "/orders/{id}/fulfill", tag = "orders", security(("bearer" = [])),
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order, FULFILLED", body = OrderBody),
        (status = 403, description = "Not a seller of its items nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn fulfill_order(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<OrderId>,
) -> Result<Response, Problem> {
    work_on(s, p, ctx, key, id, Command::Fulfill).await
}

#[derive(Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RefundInput {
    /// Part of the total to refund; the whole payment when left out.
    amount_cents: Option<i64>,
}

/// A refund body is optional: none (or `{}`) refunds everything.
fn refund_input(body: &Bytes) -> Result<RefundInput, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RefundInput::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            Problem::field("body", e.to_string())
        } else {
            Problem::malformed_json(e.to_string())
        }
    })
}

/// FULFILLED → REFUNDED (ADMIN); the payment is refunded in full or by `amount_cents`.
#[utoipa::path(post, path = "/orders/{id}/refund", tag = "orders", security(("bearer" = [])),
    request_body(content = RefundInput, description = "Optional"),
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order, REFUNDED", body = OrderBody),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: not fulfilled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`amount_cents` outside 1..=total", body = Problem, content_type = "application/problem+json"),
    ))]
async fn refund_order(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(id): Path<OrderId>,
    body: Bytes,
) -> Result<Response, Problem> {
    let input = refund_input(&body)?;
    visible(&s, &p, id).await?;
    p.require(&[Role::Admin])?;
    let command = Command::Refund {
        amount_cents: input.amount_cents,
    };
    apply_claimed(&s, &p, &ctx, key, &input, id, command).await
}

/// The order's history, oldest first: its creation and every status change with its cause.
#[utoipa::path(get, path = "/orders/{id}/events", tag = "orders", security(("bearer" = [])),
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "Every step", body = HistoryList),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn order_events(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<OrderId>,
) -> Result<Json<HistoryList>, Problem> {
    visible(&s, &p, id).await?;
    let history = s.orders.history(id).await?;
    Ok(Json(HistoryList {
        items: history.iter().map(HistoryBody::from).collect(),
    }))
}

/// Server-sent events of the order's status: `event: status` with the current status first,
/// then one per change, ending after FULFILLED, CANCELLED or REFUNDED. Streams are closed
/// after 30 seconds with a reconnect hint; a client reconnecting with `Last-Event-ID` equal to a
/// final status gets 204 (which stops an EventSource).
#[utoipa::path(get, path = "/orders/{id}/stream", tag = "orders", security(("bearer" = [])),
    params(("id" = OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "`status` events", body = StatusEvent, content_type = "text/event-stream"),
        (status = 204, description = "Reconnected after the final status"),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn order_stream(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<OrderId>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    // Subscribed before the first read, so no change slips between the two.
    let changes = s.orders.feed().subscribe();
    let order = visible(&s, &p, id).await?;
    let last_seen = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    if order.status.ends_stream() && last_seen == Some(order.status.name()) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let watch = Watch {
        orders: s.orders.clone(),
        id,
        changes,
        first: Some(order.status),
        last: None,
        until: tokio::time::Instant::now() + STREAM_LIFETIME,
    };
    let events = futures::stream::unfold(watch, |mut w| async move {
        let status = w.next_status().await?;
        w.last = Some(status);
        Some((Ok::<_, Infallible>(status_event(w.id, status)), w))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn status_event(id: OrderId, status: OrderStatus) -> Event {
    let data = StatusEvent {
        order_id: id,
        status: status.name().into(),
        cancel_reason: status.cancel_reason(),
    };
    Event::default()
        .event("status")
        .id(status.name())
        .retry(Duration::from_secs(1))
        .json_data(&data)
        .unwrap_or_else(|_| Event::default().event("status").data(status.name()))
}

/// One client's view of an order's status.
struct Watch {
    orders: Arc<Orders>,
    id: OrderId,
    changes: broadcast::Receiver<crate::feed::StatusChange>,
    first: Option<OrderStatus>,
    last: Option<OrderStatus>,
    until: tokio::time::Instant,
}

impl Watch {
    /// The next status to send; `None` ends the stream (final status sent, lifetime over, or
    /// the order can no longer be read).
    async fn next_status(&mut self) -> Option<OrderStatus> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.last.is_some_and(OrderStatus::ends_stream) {
            return None;
        }
        loop {
            // Woken by this process's feed, or looking again anyway: another replica may have
            // made the change.
            let look = (tokio::time::Instant::now() + crate::feed::REREAD).min(self.until);
            match tokio::time::timeout_at(look, self.changes.recv()).await {
                Err(_) if look >= self.until => return None,
                Ok(Err(RecvError::Closed)) => return None,
                Ok(Ok(change)) if change.order_id != self.id => continue,
                Err(_) | Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {
                    let status = match self.orders.get(self.id).await {
                        Ok(Some(o)) => o.status,
                        Ok(None) => return None,
                        Err(e) => {
                            tracing::warn!(order_id = %self.id, error = %e, "status stream read failed");
                            return None;
                        }
                    };
                    if Some(status) != self.last {
                        return Some(status);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The audit (ADMIN): what `mercato audit` compares with the stock and the payments.

/// An order as the audit sees it.
#[derive(Serialize, ToSchema)]
pub struct AuditOrderBody {
    id: OrderId,
    #[schema(example = "PAID")]
    status: String,
    cancel_reason: Option<CancelReason>,
    total_cents: i64,
    currency: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// It reported waiting on an outage (`waiting_for` is set).
    waiting: bool,
}

/// Orders in id order.
#[derive(Serialize, ToSchema)]
pub struct AuditOrderPage {
    items: Vec<AuditOrderBody>,
    /// Pass as `cursor` for the next page; null after the last.
    next_cursor: Option<String>,
}

/// Every order in id order (UUIDv7: roughly the order they were placed in), a page at a time.
#[utoipa::path(get, path = "/admin/audit/orders", tag = "audit", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of orders", body = AuditOrderPage),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn audit_orders(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<AuditOrderPage>, Problem> {
    let (orders, next_cursor) =
        admin_page(p, q, |a, n| s.orders.audit_page(a, n), |o| o.id).await?;
    Ok(Json(AuditOrderPage {
        next_cursor,
        items: orders
            .iter()
            .map(|o| AuditOrderBody {
                id: o.id,
                status: o.status.name().into(),
                cancel_reason: o.status.cancel_reason(),
                total_cents: o.total_cents,
                currency: o.currency.clone(),
                created_at: to_rfc3339(o.created_at),
                updated_at: to_rfc3339(o.updated_at),
                waiting: o.waiting,
            })
            .collect(),
    }))
}

/// A customer's Idempotency-Key that placed more than one order.
#[derive(Serialize, ToSchema)]
pub struct DuplicateKeyBody {
    customer_id: UserId,
    idempotency_key: String,
    order_ids: Vec<OrderId>,
}

#[derive(Serialize, ToSchema)]
pub struct DuplicateKeyList {
    /// At most 100; none in a healthy shop.
    items: Vec<DuplicateKeyBody>,
}

/// Idempotency-Keys that placed more than one order (invariant 2: there should be none).
#[utoipa::path(get, path = "/admin/audit/order-keys", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, description = "Keys with more than one order, at most 100", body = DuplicateKeyList),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
async fn audit_keys(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<DuplicateKeyList>, Problem> {
    p.require(&[Role::Admin])?;
    let keys = s.orders.duplicate_keys(100).await?;
    Ok(Json(DuplicateKeyList {
        items: keys
            .into_iter()
            .map(|k| DuplicateKeyBody {
                customer_id: k.customer_id,
                idempotency_key: k.idempotency_key,
                order_ids: k.orders,
            })
            .collect(),
    }))
}
