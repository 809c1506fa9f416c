//! The inventory's routes under `/api/v1`: extract, check who is asking, call one use case,
//! answer. Rules live in `service` and `domain`; every error is a `Problem`, mapped once below.
//!
//! `POST /inventory/reserve` does not emit `inventory.reserved`: that event carries the order's
//! customer, amount, currency and payment method, which only `order.created` has, and an event
//! with made-up values (amount 0, a nil customer) would have the payment service authorize the
//! wrong thing. The saga reserves through `order.created`; the route is for operators and for
//! callers that need an answer now, and its reservation expires, holds, commits and releases
//! like any other (those do emit their events).

use crate::catalog::Catalog;
use crate::domain::{self, LedgerKind, OrderLines, ReleaseReason, ReservationStatus, StockChange};
use crate::service::{Error, Inventory, Origin, Reserved, StockEdit, Transition};
use crate::store::{self, LedgerEntry, Reservation, Stock};
use axum::extract::{FromRef, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use mercato_kit::audit::{admin_page, PageQuery};
use mercato_kit::auth::{Principal, Role, Verifier};
use mercato_kit::contracts::ShortLine;
use mercato_kit::http::{versioned_api, BearerAuth, Json, Path, Query, RequestContext};
use mercato_kit::idempotency::IdempotencyKey;
use mercato_kit::ids::{OrderId, ProductId};
use mercato_kit::problem::FieldError;
use mercato_kit::time::{now_us, to_rfc3339};
use mercato_kit::validate::Errors;
use mercato_kit::Problem;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub inv: Arc<Inventory>,
    pub verifier: Verifier,
    /// Asked about products the catalog's events have not brought in yet.
    pub catalog: Arc<dyn Catalog>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mercato inventory service",
        description = "Stock levels, reservations with expiry, and the stock ledger."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "inventory", description = "Stock, reservations and the ledger"),
        (name = "audit", description = "What `mercato audit` checks (ADMIN)")
    )
)]
struct ApiDoc;

/// The API routes with their state, and the OpenAPI document describing them.
pub fn router(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .routes(routes!(list_stock))
        .routes(routes!(check))
        .routes(routes!(reserve))
        .routes(routes!(release))
        .routes(routes!(commit))
        .routes(routes!(get_reservation))
        .routes(routes!(get_stock, put_stock))
        .routes(routes!(ledger))
        .routes(routes!(audit_stock))
        .routes(routes!(audit_reservations));
    versioned_api(ApiDoc::openapi(), api, state)
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        match e {
            Error::Db(e) => e.into(),
            Error::UnknownProduct(id) => {
                Problem::not_found(format!("no stock is kept for product {id}"))
            }
            Error::NotOwner => Problem::forbidden("the product belongs to another seller"),
            Error::BelowReserved { reserved } => Problem::conflict(
                "below_reserved",
                format!("on_hand cannot be set below the {reserved} units reserved"),
            )
            .with_extension("reserved", serde_json::json!(reserved)),
            Error::TooMuch => Problem::field(
                "restock",
                format!("would make on_hand exceed {}", domain::ON_HAND_MAX),
            ),
            e @ Error::Inconsistent { .. } => Problem::internal(&e),
        }
    }
}

fn insufficient(lines: &[ShortLine]) -> Problem {
    Problem::conflict(
        "insufficient_stock",
        "some lines lack stock; nothing was reserved",
    )
    .with_extension("lines", serde_json::json!(lines))
}

const SERVICE_OR_ADMIN: &[Role] = &[Role::Service, Role::Admin];

// ---------------------------------------------------------------------------------------------
// What the API answers.

/// A product's stock. `available` = `on_hand` − `reserved`.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq)]
pub struct StockView {
    pub product_id: ProductId,
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

impl From<&Stock> for StockView {
    fn from(s: &Stock) -> Self {
        StockView {
            product_id: s.product_id,
            sku: s.sku.clone(),
            on_hand: s.levels.on_hand,
            reserved: s.levels.reserved,
            available: s.levels.available(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct StockPage {
    items: Vec<StockView>,
    /// Pass as `cursor` for the next page; absent on the last.
    next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct LineView {
    pub product_id: ProductId,
    pub quantity: i64,
}

/// An order's reservation.
#[derive(Serialize, ToSchema)]
pub struct ReservationView {
    order_id: OrderId,
    status: ReservationStatus,
    /// Why it was released: `cancelled`, `expired`, or `rejected` (it never got stock).
    release_reason: Option<ReleaseReason>,
    /// Empty for an order released before it was reserved.
    items: Vec<LineView>,
    /// While active: when it expires unless the order is paid.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        ReservationView {
            order_id: r.order_id,
            status: r.status,
            release_reason: r.release_reason,
            items: r
                .lines
                .iter()
                .map(|l| LineView {
                    product_id: l.product_id,
                    quantity: l.quantity,
                })
                .collect(),
            expires_at: r.expires_at.map(to_rfc3339),
            created_at: to_rfc3339(r.created_at),
            updated_at: to_rfc3339(r.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CheckLine {
    product_id: ProductId,
    requested: i64,
    /// What a reservation could take now (0 for an unknown or inactive product).
    available: i64,
}

#[derive(Serialize, ToSchema)]
pub struct CheckResult {
    /// True when every line could be reserved now.
    available: bool,
    lines: Vec<CheckLine>,
}

/// One stock movement.
#[derive(Serialize, ToSchema)]
pub struct LedgerView {
    id: i64,
    product_id: ProductId,
    kind: LedgerKind,
    on_hand_delta: i64,
    reserved_delta: i64,
    on_hand_after: i64,
    reserved_after: i64,
    order_id: Option<OrderId>,
    /// A user id, `service:<name>`, `event:<type>` or `sweeper`.
    actor: String,
    note: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<LedgerEntry> for LedgerView {
    fn from(e: LedgerEntry) -> Self {
        LedgerView {
            id: e.id,
            product_id: e.product_id,
            kind: e.kind,
            on_hand_delta: e.on_hand_delta,
            reserved_delta: e.reserved_delta,
            on_hand_after: e.on_hand_after,
            reserved_after: e.reserved_after,
            order_id: e.order_id,
            actor: e.actor,
            note: e.note,
            created_at: to_rfc3339(e.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LedgerPage {
    items: Vec<LedgerView>,
    next_cursor: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Reading.

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// 1 to 100, default 50.
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn page_limit(errors: &mut Errors, limit: Option<i64>) -> i64 {
    let limit = limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        errors.add("limit", "must be from 1 to 100");
    }
    limit
}

/// Stock of every product, in product id order.
#[utoipa::path(get, path = "/inventory", tag = "inventory", params(PageParams),
    responses((status = 200, body = StockPage), (status = 422, body = Problem)))]
async fn list_stock(
    State(s): State<AppState>,
    Query(q): Query<PageParams>,
) -> Result<Json<StockPage>, Problem> {
    let mut errors = Errors::new();
    let limit = page_limit(&mut errors, q.limit);
    let after = q.cursor.as_deref().and_then(|c| {
        errors.take(
            "cursor",
            c.parse::<ProductId>()
                .map_err(|_| "is not a cursor from this list".into()),
        )
    });
    errors.finish()?;
    let mut items = store::list_stock(s.inv.db.reader(), after, limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|i| i.product_id.to_string())
    } else {
        None
    };
    Ok(Json(StockPage {
        items: items.iter().map(StockView::from).collect(),
        next_cursor,
    }))
}

/// One product's stock.
#[utoipa::path(get, path = "/inventory/{product_id}", tag = "inventory",
    params(("product_id" = String, Path, description = "product id")),
    responses((status = 200, body = StockView), (status = 404, body = Problem)))]
async fn get_stock(
    State(s): State<AppState>,
    Path(product_id): Path<ProductId>,
) -> Result<Json<StockView>, Problem> {
    let stock = s
        .inv
        .stock(product_id)
        .await?
        .ok_or(Error::UnknownProduct(product_id))?;
    Ok(Json(StockView::from(&stock)))
}

/// Decodes `%XX` and `+` of one query-string component.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The repeated `product_id`/`quantity` pairs of a check, paired in order.
fn check_lines(raw: Option<&str>) -> Result<OrderLines, Problem> {
    let (mut products, mut quantities) = (Vec::new(), Vec::new());
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "product_id" => products.push(percent_decode(v)),
            "quantity" => quantities.push(percent_decode(v)),
            other => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "The query string is not valid",
                )
                .with_detail(format!(
                    "unknown parameter {other:?}; expected product_id and quantity pairs"
                )))
            }
        }
    }
    let mut errors = Errors::new();
    if products.is_empty() {
        errors.add(
            "product_id",
            "give at least one product_id with its quantity",
        );
    } else if products.len() != quantities.len() {
        errors.add("quantity", "give exactly one quantity for each product_id");
    }
    let mut raw_lines = Vec::new();
    for (i, (p, q)) in products.iter().zip(&quantities).enumerate() {
        let p = errors.take(
            &format!("product_id[{i}]"),
            p.parse::<ProductId>()
                .map_err(|_| "is not a product id".into()),
        );
        let q = errors.take(
            &format!("quantity[{i}]"),
            q.parse::<i64>()
                .map_err(|_| "must be a whole number".into()),
        );
        if let (Some(p), Some(q)) = (p, q) {
            raw_lines.push((p, q));
        }
    }
    errors.finish()?;
    OrderLines::parse(&raw_lines).map_err(|es| {
        Problem::validation(
            es.iter()
                .map(|e| e.field("product_id", |i| format!("quantity[{i}]")))
                .collect(),
        )
    })
}

/// Whether every line could be reserved now, without reserving (service, ADMIN). Repeat
/// `product_id` and `quantity` once per line; a product given twice is added up.
#[utoipa::path(get, path = "/inventory/check", tag = "inventory", security(("bearer" = [])),
    params(
        ("product_id" = Vec<String>, Query, description = "product id, once per line"),
        ("quantity" = Vec<i64>, Query, description = "units wanted, 1 to 1000, once per line, in the same order"),
    ),
    responses((status = 200, body = CheckResult), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn check(
    State(s): State<AppState>,
    p: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Json<CheckResult>, Problem> {
    p.require(SERVICE_OR_ADMIN)?;
    let lines = check_lines(raw.as_deref())?;
    let found = s.inv.check(&lines).await?;
    Ok(Json(CheckResult {
        available: found.iter().all(|(l, a)| *a >= l.quantity),
        lines: found
            .into_iter()
            .map(|(l, available)| CheckLine {
                product_id: l.product_id,
                requested: l.quantity,
                available,
            })
            .collect(),
    }))
}

/// An order's reservation (service, ADMIN).
#[utoipa::path(get, path = "/inventory/reservations/{order_id}", tag = "inventory", security(("bearer" = [])),
    params(("order_id" = String, Path, description = "order id")),
    responses((status = 200, body = ReservationView), (status = 404, body = Problem)))]
async fn get_reservation(
    State(s): State<AppState>,
    p: Principal,
    Path(order_id): Path<OrderId>,
) -> Result<Json<ReservationView>, Problem> {
    p.require(SERVICE_OR_ADMIN)?;
    let r = s
        .inv
        .reservation(order_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no reservation for order {order_id}")))?;
    Ok(Json(ReservationView::from(&r)))
}

/// Checks that the caller may manage this product's stock: ADMIN, or the SELLER who owns it.
/// The seller, when it is one, so the change re-checks ownership under the row lock.
fn stock_manager(
    p: &Principal,
    stock: &Stock,
) -> Result<Option<mercato_kit::ids::UserId>, Problem> {
    p.require(&[Role::Seller, Role::Admin])?;
    if p.is(Role::Admin) {
        return Ok(None);
    }
    let me = p.require_user()?;
    if me != stock.seller_id {
        return Err(Error::NotOwner.into());
    }
    Ok(Some(me))
}

/// A product's stock movements, oldest first (its SELLER, ADMIN).
#[utoipa::path(get, path = "/inventory/{product_id}/ledger", tag = "inventory", security(("bearer" = [])),
    params(("product_id" = String, Path, description = "product id"), PageParams),
    responses((status = 200, body = LedgerPage), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn ledger(
    State(s): State<AppState>,
    p: Principal,
    Path(product_id): Path<ProductId>,
    Query(q): Query<PageParams>,
) -> Result<Json<LedgerPage>, Problem> {
    p.require(&[Role::Seller, Role::Admin])?;
    let stock = s
        .inv
        .stock(product_id)
        .await?
        .ok_or(Error::UnknownProduct(product_id))?;
    stock_manager(&p, &stock)?;
    let mut errors = Errors::new();
    let limit = page_limit(&mut errors, q.limit);
    let after = q
        .cursor
        .as_deref()
        .and_then(|c| {
            errors.take(
                "cursor",
                c.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| "is not a cursor from this list".into()),
            )
        })
        .unwrap_or(0);
    errors.finish()?;
    let mut items = store::ledger(s.inv.db.reader(), product_id, after, limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(LedgerPage {
        items: items.into_iter().map(LedgerView::from).collect(),
        next_cursor,
    }))
}

// ---------------------------------------------------------------------------------------------
// Changing.

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveInput {
    order_id: OrderId,
    /// 1 to 100 lines of 1 to 1000 units.
    items: Vec<LineView>,
    /// 1 to 86400; the service's setting (default 1800) when absent.
    ttl_seconds: Option<i64>,
}

/// Reserves every line of an order or none (service, ADMIN). Idempotent per `order_id`: an
/// order that has a reservation gets it back (200) and nothing changes. Emits no
/// `inventory.reserved` (see the module docs): the saga reserves through `order.created`.
#[utoipa::path(post, path = "/inventory/reserve", tag = "inventory", security(("bearer" = [])),
    request_body = ReserveInput,
    responses((status = 201, description = "reserved now", body = ReservationView),
              (status = 200, description = "the order's existing reservation", body = ReservationView),
              (status = 409, description = "insufficient_stock, with the short `lines`", body = Problem),
              (status = 422, body = Problem)))]
async fn reserve(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Json(input): Json<ReserveInput>,
) -> Result<Response, Problem> {
    p.require(SERVICE_OR_ADMIN)?;
    let mut errors: Vec<FieldError> = Vec::new();
    let raw: Vec<_> = input
        .items
        .iter()
        .map(|l| (l.product_id, l.quantity))
        .collect();
    let lines = OrderLines::parse(&raw)
        .map_err(|es| {
            errors.extend(
                es.iter()
                    .map(|e| e.field("items", |i| format!("items[{i}].quantity"))),
            )
        })
        .ok();
    let ttl = match input.ttl_seconds {
        None => Some(s.inv.settings.reservation_ttl),
        Some(secs) => domain::ttl(secs)
            .map_err(|message| {
                errors.push(FieldError {
                    field: "ttl_seconds".into(),
                    message,
                })
            })
            .ok(),
    };
    let (Some(lines), Some(ttl)) = (lines, ttl) else {
        return Err(Problem::validation(errors));
    };
    let mut claim = key.claim(&s.inv.db, &p.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.inv.db.begin().await?;
    let origin = Origin::request(&p, &ctx);
    match s
        .inv
        .reserve(&mut tx, input.order_id, &lines, ttl, now_us(), &origin)
        .await?
    {
        Reserved::Created(r) => {
            claim
                .finish(tx, StatusCode::CREATED, &ReservationView::from(&r))
                .await
        }
        Reserved::Existing(r) => {
            claim
                .finish(tx, StatusCode::OK, &ReservationView::from(&r))
                .await
        }
        Reserved::Short(lines) => Err(insufficient(&lines)),
    }
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    order_id: OrderId,
}

/// Releases an order's reservation (service, ADMIN) and emits `inventory.released`
/// {reason: cancelled}. Releasing again answers the released reservation; an order never
/// reserved is recorded as released, so its reservation can no longer be made. 409 once
/// committed.
#[utoipa::path(post, path = "/inventory/release", tag = "inventory", security(("bearer" = [])),
    request_body = OrderInput,
    responses((status = 200, body = ReservationView),
              (status = 409, description = "reservation_committed", body = Problem)))]
async fn release(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Json(input): Json<OrderInput>,
) -> Result<Response, Problem> {
    p.require(SERVICE_OR_ADMIN)?;
    let mut claim = key.claim(&s.inv.db, &p.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.inv.db.begin().await?;
    let origin = Origin::request(&p, &ctx);
    let order_id = input.order_id;
    match s.inv.release(&mut tx, order_id, now_us(), &origin).await? {
        Transition::Applied(r) => {
            let res = claim
                .finish(tx, StatusCode::OK, &ReservationView::from(&r))
                .await;
            s.inv.db.outbox_waker().wake();
            res
        }
        Transition::NoOp(r) | Transition::Tombstoned(r) => {
            claim
                .finish(tx, StatusCode::OK, &ReservationView::from(&r))
                .await
        }
        Transition::Conflict(_) => Err(Problem::conflict(
            "reservation_committed",
            format!("the reservation of order {order_id} was committed; it cannot be released"),
        )),
        Transition::Unknown => Err(Problem::not_found(format!(
            "no reservation for order {order_id}"
        ))),
    }
}

/// Commits an order's reservation: its units leave stock (service, ADMIN). Emits
/// `inventory.committed`. Committing again answers the committed reservation; 409 once
/// released, 404 for an order never reserved.
#[utoipa::path(post, path = "/inventory/commit", tag = "inventory", security(("bearer" = [])),
    request_body = OrderInput,
    responses((status = 200, body = ReservationView), (status = 404, body = Problem),
              (status = 409, description = "reservation_released", body = Problem)))]
async fn commit(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Json(input): Json<OrderInput>,
) -> Result<Response, Problem> {
    p.require(SERVICE_OR_ADMIN)?;
    let mut claim = key.claim(&s.inv.db, &p.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.inv.db.begin().await?;
    let origin = Origin::request(&p, &ctx);
    let order_id = input.order_id;
    match s.inv.commit(&mut tx, order_id, now_us(), &origin).await? {
        Transition::Applied(r) => {
            let res = claim
                .finish(tx, StatusCode::OK, &ReservationView::from(&r))
                .await;
            s.inv.db.outbox_waker().wake();
            res
        }
        Transition::NoOp(r) => {
            claim
                .finish(tx, StatusCode::OK, &ReservationView::from(&r))
                .await
        }
        Transition::Conflict(_) => Err(Problem::conflict(
            "reservation_released",
            format!("the reservation of order {order_id} was released; it cannot be committed"),
        )),
        Transition::Unknown | Transition::Tombstoned(_) => Err(Problem::not_found(format!(
            "no reservation for order {order_id}"
        ))),
    }
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockInput {
    /// Set on_hand to this count (0 to 1000000000; not below what is reserved).
    on_hand: Option<i64>,
    /// Add this many units (at least 1).
    restock: Option<i64>,
    /// Why, for the ledger (up to 500 characters).
    note: Option<String>,
}

/// Sets (`on_hand`) or adds to (`restock`) a product's stock, recorded in the ledger (its
/// SELLER, ADMIN). Give exactly one of the two. A product the catalog has just created can be
/// stocked at once: its owner is asked of the catalog when its event has not arrived yet.
#[utoipa::path(put, path = "/inventory/{product_id}", tag = "inventory", security(("bearer" = [])),
    params(("product_id" = String, Path, description = "product id")),
    request_body = StockInput,
    responses((status = 200, body = StockView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "below_reserved", body = Problem), (status = 422, body = Problem),
              (status = 503, description = "catalog_unavailable: the product is new here and the catalog could not be asked", body = Problem)))]
async fn put_stock(
    State(s): State<AppState>,
    p: Principal,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(product_id): Path<ProductId>,
    Json(input): Json<StockInput>,
) -> Result<Response, Problem> {
    p.require(&[Role::Seller, Role::Admin])?;
    let mut errors = Errors::new();
    let change = match StockChange::parse(input.on_hand, input.restock) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.add(&e.field, e.message);
            None
        }
    };
    let note = input
        .note
        .as_deref()
        .and_then(|n| errors.take("note", mercato_kit::validate::line(n, 0, 500)))
        .filter(|n| !n.is_empty());
    errors.finish()?;
    let change = change.ok_or_else(|| Problem::bad_request("no change given"))?;
    let stock = match s.inv.stock(product_id).await? {
        Some(stock) => stock,
        None => adopt(&s, &p, &ctx, product_id).await?,
    };
    let seller = stock_manager(&p, &stock)?;
    let mut claim = key.claim(&s.inv.db, &p.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.inv.db.begin().await?;
    let origin = Origin::request(&p, &ctx);
    let stock = s
        .inv
        .change_stock(
            &mut tx,
            &StockEdit {
                product_id,
                change,
                note: note.as_deref(),
                seller,
            },
            now_us(),
            &origin,
        )
        .await?;
    claim
        .finish(tx, StatusCode::OK, &StockView::from(&stock))
        .await
}

/// The stock row of a product the catalog has but whose event has not arrived yet, made from
/// the catalog's answer so a seller can stock a product right after creating it. The owner is
/// checked before anything is written: another seller's request changes nothing.
async fn adopt(
    s: &AppState,
    p: &Principal,
    ctx: &RequestContext,
    product_id: ProductId,
) -> Result<Stock, Problem> {
    let product = s
        .catalog
        .product(product_id, Some(ctx))
        .await
        .map_err(|e| {
            tracing::warn!(%product_id, error = %e, "catalog lookup failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_unavailable",
                "The catalog service is unavailable",
            )
            .with_detail(format!(
                "no stock is kept for product {product_id} yet and the catalog could not be asked about it; try again shortly"
            ))
            .with_retry_after(1)
        })?
        .ok_or(Error::UnknownProduct(product_id))?;
    if !p.is(Role::Admin) && p.require_user()? != product.seller_id {
        return Err(Error::NotOwner.into());
    }
    let origin = Origin::request(p, ctx);
    s.inv.adopt_product(&product, now_us(), &origin).await?;
    Ok(s.inv
        .stock(product_id)
        .await?
        .ok_or(Error::UnknownProduct(product_id))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_decode() {
        assert_eq!(percent_decode("a%2Db+c"), "a-b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41%"), "A%");
    }

    #[test]
    fn check_pairs_product_ids_with_quantities() {
        let a = ProductId::new();
        let b = ProductId::new();
        let lines = check_lines(Some(&format!(
            "product_id={a}&quantity=2&product_id={b}&quantity=3&product_id={a}&quantity=1"
        )))
        .unwrap();
        let got: Vec<_> = lines.iter().collect();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&(a, 3)) && got.contains(&(b, 3)));

        let fields = |q: &str| -> Vec<String> {
            let p = check_lines(Some(q)).unwrap_err();
            p.errors.iter().map(|e| e.field.clone()).collect()
        };
        assert_eq!(fields(""), vec!["product_id"]);
        assert_eq!(fields(&format!("product_id={a}")), vec!["quantity"]);
        assert_eq!(fields("product_id=x&quantity=1"), vec!["product_id[0]"]);
        assert_eq!(
            fields(&format!("product_id={a}&quantity=0")),
            vec!["quantity[0]"]
        );
        assert_eq!(
            fields(&format!("product_id={a}&quantity=two")),
            vec!["quantity[0]"]
        );
        assert_eq!(check_lines(Some("size=3")).unwrap_err().status, 400);
    }
}

// ---------------------------------------------------------------------------------------------
// The audit (ADMIN): what `mercato audit` checks stock conservation with, and compares with
// the orders.

/// One product's books three ways (invariant 1): its levels, its ledger summed, and its live
/// reservations summed. In a healthy shop `on_hand = ledger_on_hand`, `reserved =
/// ledger_reserved = reserved_by_reservations` and `available >= 0`.
#[derive(Serialize, ToSchema)]
pub struct StockAuditBody {
    product_id: ProductId,
    on_hand: i64,
    reserved: i64,
    available: i64,
    /// initial + restocks + adjustments − commits, from the ledger.
    ledger_on_hand: i64,
    /// reserves − releases − commits, from the ledger.
    ledger_reserved: i64,
    /// Units in active and held reservations.
    reserved_by_reservations: i64,
}

#[derive(Serialize, ToSchema)]
pub struct StockAuditPage {
    items: Vec<StockAuditBody>,
    /// Pass as `cursor` for the next page; null after the last.
    next_cursor: Option<String>,
}

/// Every product's books, in product id order, a page at a time.
#[utoipa::path(get, path = "/admin/audit/stock", tag = "audit", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of products' books", body = StockAuditPage),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn audit_stock(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<StockAuditPage>, Problem> {
    let (books, next_cursor) =
        admin_page(p, q, |a, n| s.inv.audit_stock(a, n), |b| b.product_id).await?;
    Ok(Json(StockAuditPage {
        next_cursor,
        items: books
            .iter()
            .map(|b| StockAuditBody {
                product_id: b.product_id,
                on_hand: b.levels.on_hand,
                reserved: b.levels.reserved,
                available: b.levels.available(),
                ledger_on_hand: b.ledger.on_hand,
                ledger_reserved: b.ledger.reserved,
                reserved_by_reservations: b.reserved_by_reservations,
            })
            .collect(),
    }))
}

/// A reservation as the audit compares it with its order.
#[derive(Serialize, ToSchema)]
pub struct ReservationAuditBody {
    order_id: OrderId,
    status: ReservationStatus,
    release_reason: Option<ReleaseReason>,
    /// While active.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Units over its lines; 0 for a tombstone (released before it reserved anything).
    units: i64,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReservationAuditPage {
    items: Vec<ReservationAuditBody>,
    /// Pass as `cursor` for the next page; null after the last.
    next_cursor: Option<String>,
}

/// Every reservation, in order id order, a page at a time.
#[utoipa::path(get, path = "/admin/audit/reservations", tag = "audit", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of reservations", body = ReservationAuditPage),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn audit_reservations(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<ReservationAuditPage>, Problem> {
    let (rs, next_cursor) =
        admin_page(p, q, |a, n| s.inv.audit_reservations(a, n), |r| r.order_id).await?;
    Ok(Json(ReservationAuditPage {
        next_cursor,
        items: rs
            .iter()
            .map(|r| ReservationAuditBody {
                order_id: r.order_id,
                status: r.status,
                release_reason: r.release_reason,
                expires_at: r.expires_at.map(to_rfc3339),
                units: r.units,
                created_at: to_rfc3339(r.created_at),
                updated_at: to_rfc3339(r.updated_at),
            })
            .collect(),
    }))
}
