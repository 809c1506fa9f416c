//! The cart's routes under `/api/v1`, for customers only: extract, call one use case, answer.
//! Errors become problem documents in one place (`From<service::Error> for Problem`, below),
//! except the order service's refusals at checkout, which are passed on as they came.
//!
//! Adding and setting take an optional `Idempotency-Key` (a retried add must not add twice);
//! checkout requires one, because it places an order.

use crate::domain::{request_id, Change, PricedLine, Refusal};
use crate::service::{Carts, Error, Shown};
use crate::store::StoreError;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::Response;
use mercato_kit::auth::{Principal, Role, Verifier};
use mercato_kit::http::{raw_json_response, versioned_api, BearerAuth, Json, Path, RequestContext};
use mercato_kit::idempotency::IdempotencyKey;
use mercato_kit::ids::{Currency, ProductId, UserId};
use mercato_kit::problem::FieldError;
use mercato_kit::time::to_rfc3339;
use mercato_kit::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub carts: Arc<Carts>,
    pub verifier: Verifier,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mercato cart service",
        description = "Each customer's cart: kept for a while after its last change, priced from the catalog as it is now, checked out into an order."
    ),
    modifiers(&BearerAuth),
    tags((name = "cart", description = "The signed-in customer's cart"))
)]
struct ApiDoc;

/// The API routes with their state, and the OpenAPI document describing them.
pub fn router(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .routes(routes!(get_cart, clear_cart))
        .routes(routes!(add_item))
        .routes(routes!(set_quantity, remove_item))
        .routes(routes!(checkout));
    versioned_api(ApiDoc::openapi(), api, state)
}

/// The caller, who must be a customer: checked before the body is read, so anyone else hears
/// 403 whatever they sent.
pub struct Customer {
    id: UserId,
    /// Scopes the caller's idempotency keys.
    subject: String,
}

impl FromRequestParts<AppState> for Customer {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let p = Principal::from_request_parts(parts, state).await?;
        p.require(&[Role::Customer])?;
        Ok(Customer {
            id: p.require_user()?,
            subject: p.subject,
        })
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        match e {
            Error::Refused(r) => refusal(r),
            Error::CatalogUnavailable(why) => {
                tracing::warn!(error = %why, "catalog lookup failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "catalog_unavailable",
                    "The catalog service is unavailable",
                )
                .with_detail("the catalog service could not be asked for the products' names and prices; try again shortly")
                .with_retry_after(1)
            }
            Error::OrderUnavailable(why) => {
                tracing::warn!(error = %why, "placing the order failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "order_service_unavailable",
                    "The order service is unavailable",
                )
                .with_detail("the order service could not place the order; retry with the same Idempotency-Key, which never places it twice")
                .with_retry_after(1)
            }
            Error::OrderRefused { status, body, .. } => Problem::for_status(status, Some(body)),
            Error::CartEmpty => Problem::conflict(
                "cart_empty",
                "the cart is empty; add items before checking out",
            ),
            e @ Error::Contended => {
                Problem::conflict("concurrent_update", e.to_string()).with_retry_after(1)
            }
            Error::Store(StoreError::Redis(why)) => {
                tracing::warn!(error = %why, "the cart store failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "The cart store is unavailable",
                )
                .with_detail("carts cannot be read or changed right now; try again shortly")
                .with_retry_after(1)
            }
            Error::Store(e) => Problem::internal(&e),
            Error::Db(e) => e.into(),
        }
    }
}

fn refusal(r: Refusal) -> Problem {
    let detail = r.to_string();
    let on_product = |status, code, title: &'static str| {
        Problem::new(status, code, title)
            .with_detail(detail.clone())
            .with_errors(vec![FieldError {
                field: "product_id".into(),
                message: detail.clone(),
            }])
    };
    match r {
        Refusal::UnknownProduct(_) => on_product(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_product",
            "No such product",
        ),
        Refusal::ProductInactive(_) => on_product(
            StatusCode::UNPROCESSABLE_ENTITY,
            "product_inactive",
            "The product is not for sale",
        ),
        Refusal::CurrencyMismatch { .. } => on_product(
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_mismatch",
            "The product is priced in another currency than the cart",
        ),
        Refusal::Quantity { field, message } => Problem::field(field, message),
        Refusal::TooManyLines { .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_lines",
            "The cart is full",
        )
        .with_detail(detail),
        Refusal::NotInCart(_) => Problem::not_found(detail),
    }
}

// ---------------------------------------------------------------------------------------------
// What the API answers.

/// One line of the cart, with the catalog's current name and price.
#[derive(Serialize, ToSchema)]
pub struct CartItemBody {
    product_id: ProductId,
    name: String,
    /// The price now, in minor units of the cart's `currency`.
    price_cents: i64,
    quantity: i64,
    line_total_cents: i64,
    /// False when the product was taken off sale (or is now priced in another currency): the
    /// line stays for the customer to see, but is not counted in `total_cents`.
    available: bool,
}

/// The customer's cart.
#[derive(Serialize, ToSchema)]
pub struct CartBody {
    items: Vec<CartItemBody>,
    /// The sum of the available lines.
    total_cents: i64,
    /// Null when the cart is empty.
    #[schema(value_type = Option<String>, example = "USD")]
    currency: Option<Currency>,
    /// When the cart is dropped unless it changes before; null when it is empty.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

impl From<&PricedLine> for CartItemBody {
    fn from(l: &PricedLine) -> Self {
        CartItemBody {
            product_id: l.product_id,
            name: l.name.clone(),
            price_cents: l.price_cents,
            quantity: l.quantity,
            line_total_cents: l.line_total_cents,
            available: l.available,
        }
    }
}

impl From<&Shown> for CartBody {
    fn from(s: &Shown) -> Self {
        CartBody {
            items: s.cart.items.iter().map(CartItemBody::from).collect(),
            total_cents: s.cart.total_cents,
            currency: s.cart.currency,
            expires_at: s.expires_at.map(to_rfc3339),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the API takes.

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    product_id: ProductId,
    /// 1 to 1000, also added up with what the cart holds already.
    #[schema(minimum = 1, maximum = 1000)]
    quantity: i64,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuantity {
    #[schema(minimum = 1, maximum = 1000)]
    quantity: i64,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutInput {
    /// A processor token, like `pm_card_visa`.
    #[schema(example = "pm_card_visa")]
    payment_method: String,
    /// Where the order goes, as the order service takes it (`{name, line1, line2?, city,
    /// postal_code, country}`); it checks the fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    shipping_address: Option<Value>,
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// The caller's cart, priced from the catalog now. Reading does not extend its life.
#[utoipa::path(get, path = "/cart", tag = "cart", security(("bearer" = [])),
    responses(
        (status = 200, description = "The cart (empty when there is none)", body = CartBody),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a customer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`catalog_unavailable`, or `store_unavailable` (Redis)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_cart(
    State(s): State<AppState>,
    c: Customer,
    ctx: RequestContext,
) -> Result<Json<CartBody>, Problem> {
    let shown = s.carts.show(c.id, &ctx).await?;
    Ok(Json(CartBody::from(&shown)))
}

/// Empties the caller's cart.
#[utoipa::path(delete, path = "/cart", tag = "cart", security(("bearer" = [])),
    responses(
        (status = 200, description = "The empty cart", body = CartBody),
        (status = 403, description = "Not a customer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable` (Redis)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn clear_cart(State(s): State<AppState>, c: Customer) -> Result<Json<CartBody>, Problem> {
    let shown = s.carts.clear(c.id).await?;
    Ok(Json(CartBody::from(&shown)))
}

/// Adds a product, or more of one already in the cart.
#[utoipa::path(post, path = "/cart/items", tag = "cart", security(("bearer" = [])),
    request_body = AddItem,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer instead of adding again")),
    responses(
        (status = 200, description = "The cart", body = CartBody),
        (status = 403, description = "Not a customer", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_product`, `product_inactive`, `currency_mismatch`, `too_many_lines`, or a quantity outside 1..=1000 (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`catalog_unavailable`, or `store_unavailable` (Redis)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn add_item(
    State(s): State<AppState>,
    c: Customer,
    ctx: RequestContext,
    key: IdempotencyKey,
    Json(input): Json<AddItem>,
) -> Result<Response, Problem> {
    let mut claim = key.claim(s.carts.db(), &c.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let change = Change::Add {
        product_id: input.product_id,
        quantity: input.quantity,
    };
    let request = key.key().map(|k| request_id(k, &key.fingerprint(&input)));
    let (tx, shown) = s
        .carts
        .change(c.id, change, request.as_deref(), &ctx)
        .await?;
    claim
        .finish(tx, StatusCode::OK, &CartBody::from(&shown))
        .await
}

/// Sets the quantity of a product in the cart.
#[utoipa::path(patch, path = "/cart/items/{product_id}", tag = "cart", security(("bearer" = [])),
    request_body = SetQuantity,
    params(
        ("product_id" = ProductId, Path, description = "A product in the cart"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first answer"),
    ),
    responses(
        (status = 200, description = "The cart", body = CartBody),
        (status = 403, description = "Not a customer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The product is not in the cart", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A quantity outside 1..=1000", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`catalog_unavailable`, or `store_unavailable` (Redis)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn set_quantity(
    State(s): State<AppState>,
    c: Customer,
    ctx: RequestContext,
    key: IdempotencyKey,
    Path(product_id): Path<ProductId>,
    Json(input): Json<SetQuantity>,
) -> Result<Response, Problem> {
    let mut claim = key.claim(s.carts.db(), &c.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let change = Change::Set {
        product_id,
        quantity: input.quantity,
    };
    let request = key.key().map(|k| request_id(k, &key.fingerprint(&input)));
    let (tx, shown) = s
        .carts
        .change(c.id, change, request.as_deref(), &ctx)
        .await?;
    claim
        .finish(tx, StatusCode::OK, &CartBody::from(&shown))
        .await
}

/// Removes a product from the cart.
#[utoipa::path(delete, path = "/cart/items/{product_id}", tag = "cart", security(("bearer" = [])),
    params(("product_id" = ProductId, Path, description = "A product in the cart")),
    responses(
        (status = 200, description = "The cart", body = CartBody),
        (status = 403, description = "Not a customer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The product is not in the cart", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`catalog_unavailable`, or `store_unavailable` (Redis)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn remove_item(
    State(s): State<AppState>,
    c: Customer,
    ctx: RequestContext,
    Path(product_id): Path<ProductId>,
) -> Result<Json<CartBody>, Problem> {
    let (tx, shown) = s
        .carts
        .change(c.id, Change::Remove { product_id }, None, &ctx)
        .await?;
    tx.commit().await?;
    Ok(Json(CartBody::from(&shown)))
}

/// Places an order for everything in the cart through the order service and answers what it
/// answered (201 and the order, PENDING). The cart is emptied of what was ordered once the
/// order is PAID, and left as it is when the order is cancelled.
#[utoipa::path(post, path = "/cart/checkout", tag = "cart", security(("bearer" = [])),
    request_body = CheckoutInput,
    params(("Idempotency-Key" = String, Header, description = "Required: a retry with the same key places no second order and returns the first answer")),
    responses(
        (status = 201, description = "The order, as the order service answered it"),
        (status = 400, description = "No Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a customer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`cart_empty`, the order service's `insufficient_stock`, or the same key in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The order service's refusal (a bad payment method or address, a product off sale), or the key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`order_service_unavailable`, `store_unavailable` (Redis), or the order service's `overloaded` (the saga is behind; with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn checkout(
    State(s): State<AppState>,
    c: Customer,
    ctx: RequestContext,
    key: IdempotencyKey,
    headers: HeaderMap,
    Json(input): Json<CheckoutInput>,
) -> Result<Response, Problem> {
    let client_key = key.required("checkout places an order")?.to_owned();
    // The Customer extractor read a valid Bearer token from this very header.
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Problem::unauthorized("sign in: this route needs a Bearer token"))?;
    let mut claim = key.claim(s.carts.db(), &c.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let placed = s
        .carts
        .checkout(
            c.id,
            &input.payment_method,
            input.shipping_address.as_ref(),
            &client_key,
            authorization,
            &ctx,
        )
        .await;
    match placed {
        Ok(p) => claim.finish(p.tx, p.status, &p.order).await,
        // Not stored: like the order service, which kept nothing either, a retry tries again.
        Err(Error::OrderRefused {
            status,
            body,
            retry_after,
        }) => {
            let mut res = raw_json_response(status, body);
            if let Some(v) = retry_after {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            // The only 503 passed on is the order service's overload refusal (orders.rs):
            // marked as such, so the gateway's breaker for the cart does not count it either.
            if status == StatusCode::SERVICE_UNAVAILABLE {
                res.headers_mut().insert(
                    mercato_kit::problem::OVERLOADED_HEADER,
                    header::HeaderValue::from_static("true"),
                );
            }
            Ok(res)
        }
        Err(e) => Err(e.into()),
    }
}
