//! The processor's HTTP API, shaped like a card processor's (`/v1/...`, Stripe-like tokens and
//! decline codes) so the payment service's client is written against something realistic.
//!
//! Handlers only parse and answer: input is checked here, once, into the types `processor`
//! takes, and every rule lives in `processor` and `domain`.
//!
//! Processor chaos (timeouts and 503s, see `chaos`) sits in front of the payment API under
//! `/v1/authorizations` only: that is what the merchant's payment service calls. Tokenization
//! (`/v1/payment_methods`) is left alone because the payment service never calls it (shoppers'
//! clients and tests do, to get a token), and the `/v1/test/*` controls are left alone so a test
//! can always read its counters and switch chaos off.

use crate::chaos::{self, Fault, Kind, ProcessorProfile};
use crate::domain::{self, CardNumber, Command, Outcome, Payment, MAX_AMOUNT_CENTS};
use crate::processor::{Answer, Authorization, Keyed, PaymentMethod, Processor, Stats};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Datelike;
use mercato_kit::chaos::ChaosView;
use mercato_kit::http::{
    json_response, Json, OptionalJson, Path, IDEMPOTENCY_KEY, IDEMPOTENCY_REPLAYED,
};
use mercato_kit::idempotency::IdempotencyKey;
use mercato_kit::ids::Currency;
use mercato_kit::problem::PROBLEM_JSON;
use mercato_kit::validate::{self, Errors};
use mercato_kit::Problem;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(info(
    title = "Mercato psp-mock",
    description = "A deterministic, in-memory stand-in for an external card processor: \
                   tokenization, authorize/capture/void/refund, and signed webhooks."
))]
struct ApiDoc;

pub fn router(processor: Arc<Processor>) -> (axum::Router, utoipa::openapi::OpenApi) {
    let payments = OpenApiRouter::new()
        .routes(routes!(authorize))
        .routes(routes!(get_authorization))
        .routes(routes!(capture))
        .routes(routes!(void))
        .routes(routes!(refund))
        .route_layer(axum::middleware::from_fn_with_state(
            processor.clone(),
            processor_chaos,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tokenize))
        .merge(payments)
        .routes(routes!(settle))
        .routes(routes!(stats))
        .routes(routes!(show_chaos, replace_chaos, clear_chaos))
        .routes(routes!(
            show_http_chaos,
            replace_http_chaos,
            clear_http_chaos
        ))
        .with_state(processor)
        .split_for_parts()
}

/// Timeouts and server errors of the processor profile. A server error is answered before the
/// request reaches its handler, so nothing happens; a timeout lets the handler do everything
/// (payment, idempotency record) and then holds its answer, so the caller gives up without
/// knowing and must retry with the same key. Past the service's request timeout
/// (`MERCATO_REQUEST_TIMEOUT_MS`) the kit answers 503 `request_timeout` instead, at that time.
async fn processor_chaos(State(p): State<Arc<Processor>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map(MatchedPath::as_str);
    match p.chaos().fault_for(req.uri().path(), route) {
        None => next.run(req).await,
        Some(Fault::ServerError) => {
            p.chaos().record(Kind::ServerError);
            // It reached the processor: the attempt counter counts every authorization request.
            if req.method() == Method::POST && route == Some("/v1/authorizations") {
                p.count_authorization_attempt();
            }
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "processor_unavailable",
                "The processor is unavailable",
            )
            .with_detail("nothing was done; retry with the same Idempotency-Key")
            .with_extension("retryable", serde_json::Value::Bool(true))
            .into_response()
        }
        Some(Fault::Timeout(hold)) => {
            let res = next.run(req).await;
            p.chaos().record(Kind::Timeout);
            tracing::debug!(
                status = %res.status(),
                hold_ms = hold.as_millis() as u64,
                "chaos: holding the answer of a handled request"
            );
            tokio::time::sleep(hold).await;
            res
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut res = json_response(self.status, &self.body);
        let headers = res.headers_mut();
        // A stored decline is a problem document; it must say so, or kit's problem layer would
        // replace it with a generic one.
        if self.is_problem() {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        }
        if self.replayed {
            headers.insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
        }
        res
    }
}

/// The request's key with its fingerprint. Kit's [`IdempotencyKey`] has already checked the
/// header (1 to 255 visible ASCII characters) and fingerprints method, path and body, but does
/// not expose the key itself, so it is read from the header here.
fn keyed<T: Serialize>(key: &IdempotencyKey, headers: &HeaderMap, body: &T) -> Option<Keyed> {
    let value = headers.get(IDEMPOTENCY_KEY)?.to_str().ok()?.trim();
    Some(Keyed {
        key: value.to_owned(),
        fingerprint: key.fingerprint(body),
    })
}

fn amount(v: i64) -> Result<u64, String> {
    u64::try_from(v)
        .ok()
        .filter(|a| (1..=MAX_AMOUNT_CENTS).contains(a))
        .ok_or_else(|| format!("must be from 1 to {MAX_AMOUNT_CENTS}"))
}

fn optional_amount(v: Option<i64>) -> Result<Option<u64>, Problem> {
    v.map(amount)
        .transpose()
        .map_err(|m| Problem::field("amount_cents", m))
}

/// A card to tokenize. Deliberately not `Debug`: nothing may print the number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardInput {
    #[schema(example = "4242424242424242")]
    card_number: String,
    #[schema(example = 12)]
    exp_month: i64,
    #[schema(example = 2030)]
    exp_year: i64,
    #[schema(example = "123")]
    cvc: String,
}

fn parse_card(input: &CardInput, today: (i32, u32)) -> Result<CardNumber, Problem> {
    let mut errors = Errors::new();
    let number = errors.take("card_number", CardNumber::parse(&input.card_number));
    let month = errors.take("exp_month", domain::exp_month(input.exp_month));
    // With a bad month the year is still checked, against the latest month it could be.
    errors.take(
        "exp_year",
        domain::exp_year(input.exp_year, month.unwrap_or(12), today),
    );
    errors.take("cvc", domain::cvc(&input.cvc));
    errors.finish()?;
    number.ok_or_else(|| Problem::internal(&"a checked card number is missing"))
}

/// Exchanges a card for a token. Test cards map to their test tokens; any other valid card gets
/// a new token that approves. The card number is neither stored nor logged.
#[utoipa::path(post, path = "/v1/payment_methods", tag = "payment methods", request_body = CardInput,
    responses((status = 201, body = PaymentMethod),
              (status = 422, description = "the field that is wrong is named", body = Problem)))]
async fn tokenize(
    State(p): State<Arc<Processor>>,
    Json(input): Json<CardInput>,
) -> Result<(StatusCode, Json<PaymentMethod>), Problem> {
    let now = chrono::Utc::now();
    let card = parse_card(&input, (now.year(), now.month()))?;
    Ok((StatusCode::CREATED, Json(p.tokenize(&card))))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeInput {
    #[schema(example = 1999)]
    amount_cents: i64,
    #[schema(example = "USD")]
    currency: String,
    #[schema(example = "pm_card_visa")]
    payment_method: String,
    /// The caller's reference, echoed back and in webhooks.
    reference: String,
}

fn parse_authorization(input: &AuthorizeInput) -> Result<Authorization, Problem> {
    let mut errors = Errors::new();
    let amount_cents = errors.take("amount_cents", amount(input.amount_cents));
    let currency = errors.take("currency", input.currency.parse::<Currency>());
    let payment_method = errors.take(
        "payment_method",
        validate::line(&input.payment_method, 1, 100),
    );
    let reference = errors.take("reference", validate::line(&input.reference, 1, 255));
    errors.finish()?;
    match (amount_cents, currency, payment_method, reference) {
        (Some(amount_cents), Some(currency), Some(payment_method), Some(reference)) => {
            Ok(Authorization {
                amount_cents,
                currency,
                payment_method,
                reference,
            })
        }
        _ => Err(Problem::internal(
            &"a checked authorization field is missing",
        )),
    }
}

/// Authorizes an amount on a payment method. The outcome depends on the token: see the API
/// documentation of the test tokens. A retry with the same Idempotency-Key and body gets the
/// first answer (with `Idempotency-Replayed: true`) and never a second authorization.
#[utoipa::path(post, path = "/v1/authorizations", tag = "authorizations", request_body = AuthorizeInput,
    params(("Idempotency-Key" = String, Header, description = "required; one key per payment attempt")),
    responses((status = 201, description = "authorized", body = Payment),
              (status = 202, description = "pending; the outcome arrives by webhook", body = Payment),
              (status = 400, description = "no Idempotency-Key", body = Problem),
              (status = 402, description = "declined: `code` card_declined, `decline_code`, `payment_id`", body = Problem),
              (status = 422, description = "invalid field, unknown payment method, or key reused for another body", body = Problem),
              (status = 503, description = "`processing_error`: transient, retry with the same key", body = Problem)))]
async fn authorize(
    State(p): State<Arc<Processor>>,
    key: Result<IdempotencyKey, Problem>,
    headers: HeaderMap,
    body: Result<Json<AuthorizeInput>, Problem>,
) -> Result<Answer, Problem> {
    // Counted before any check, so a test can see every request that reached the processor.
    p.count_authorization_attempt();
    let key = key?;
    if !headers.contains_key(IDEMPOTENCY_KEY) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "An Idempotency-Key header is required",
        )
        .with_detail("send a unique Idempotency-Key per payment attempt and reuse it on retries"));
    }
    let Json(input) = body?;
    let req = parse_authorization(&input)?;
    let keyed = keyed(&key, &headers, &input)
        .ok_or_else(|| Problem::internal(&"a checked Idempotency-Key is missing"))?;
    p.authorize(&keyed, req)
}

/// Looks up a payment by its provider reference.
#[utoipa::path(get, path = "/v1/authorizations/{id}", tag = "authorizations",
    params(("id" = String, Path, description = "the provider reference, pi_...")),
    responses((status = 200, body = Payment), (status = 404, body = Problem)))]
async fn get_authorization(
    State(p): State<Arc<Processor>>,
    Path(id): Path<String>,
) -> Result<Json<Payment>, Problem> {
    p.payment(&id).map(Json)
}

/// The optional amount of a capture or refund.
#[derive(Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountInput {
    /// Capture: default all of the authorized amount. Refund: default all that is left.
    amount_cents: Option<i64>,
}

/// Captures all or part of an authorized payment (once; the rest is released).
#[utoipa::path(post, path = "/v1/authorizations/{id}/capture", tag = "authorizations",
    request_body(content = AmountInput, description = "optional"),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Payment), (status = 404, body = Problem),
              (status = 409, description = "`invalid_state`: not authorized", body = Problem),
              (status = 422, description = "more than authorized, or key reused", body = Problem)))]
async fn capture(
    State(p): State<Arc<Processor>>,
    Path(id): Path<String>,
    key: IdempotencyKey,
    headers: HeaderMap,
    OptionalJson(input): OptionalJson<AmountInput>,
) -> Result<Answer, Problem> {
    let amount_cents = optional_amount(input.amount_cents)?;
    let keyed = keyed(&key, &headers, &input);
    p.change(&id, keyed.as_ref(), Command::Capture { amount_cents })
}

/// Releases the hold of an authorized payment; impossible once captured (refund instead).
#[utoipa::path(post, path = "/v1/authorizations/{id}/void", tag = "authorizations",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Payment), (status = 404, body = Problem),
              (status = 409, description = "`invalid_state`: not authorized", body = Problem)))]
async fn void(
    State(p): State<Arc<Processor>>,
    Path(id): Path<String>,
    key: IdempotencyKey,
    headers: HeaderMap,
) -> Result<Answer, Problem> {
    let keyed = keyed(&key, &headers, &());
    p.change(&id, keyed.as_ref(), Command::Void)
}

/// Returns all or part of the captured amount; refunds accumulate.
#[utoipa::path(post, path = "/v1/authorizations/{id}/refund", tag = "authorizations",
    request_body(content = AmountInput, description = "optional"),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Payment), (status = 404, body = Problem),
              (status = 409, description = "`invalid_state`: nothing captured or all refunded", body = Problem),
              (status = 422, description = "more than is left to refund, or key reused", body = Problem)))]
async fn refund(
    State(p): State<Arc<Processor>>,
    Path(id): Path<String>,
    key: IdempotencyKey,
    headers: HeaderMap,
    OptionalJson(input): OptionalJson<AmountInput>,
) -> Result<Answer, Problem> {
    let amount_cents = optional_amount(input.amount_cents)?;
    let keyed = keyed(&key, &headers, &input);
    p.change(&id, keyed.as_ref(), Command::Refund { amount_cents })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleInput {
    outcome: Outcome,
}

/// Test control: settles a pending payment as succeeded (authorized) or failed, and sends the
/// webhook that tells the merchant.
#[utoipa::path(post, path = "/v1/test/payments/{provider_ref}/settle", tag = "test",
    request_body = SettleInput,
    params(("provider_ref" = String, Path)),
    responses((status = 200, body = Payment), (status = 404, body = Problem),
              (status = 409, description = "`invalid_state`: not pending", body = Problem)))]
async fn settle(
    State(p): State<Arc<Processor>>,
    Path(provider_ref): Path<String>,
    Json(input): Json<SettleInput>,
) -> Result<Json<Payment>, Problem> {
    p.settle(&provider_ref, input.outcome).map(Json)
}

/// The processor chaos profile in force and whether it does anything.
#[derive(Serialize, ToSchema)]
pub struct ProcessorChaosView {
    enabled: bool,
    #[serde(flatten)]
    profile: ProcessorProfile,
}

impl ProcessorChaosView {
    fn of(profile: ProcessorProfile) -> ProcessorChaosView {
        ProcessorChaosView {
            enabled: profile.is_active(),
            profile,
        }
    }
}

/// Test control: the processor chaos profile (timeouts, 503s, duplicated and reordered
/// webhooks).
#[utoipa::path(get, path = "/v1/test/chaos", tag = "test",
    responses((status = 200, body = ProcessorChaosView)))]
async fn show_chaos(State(p): State<Arc<Processor>>) -> Json<ProcessorChaosView> {
    Json(ProcessorChaosView::of(p.chaos().profile()))
}

/// Test control: replaces the processor chaos profile. Absent fields take their defaults
/// (off, `timeout_ms` 10000, `reorder_window_ms` 200); unknown fields are refused.
#[utoipa::path(put, path = "/v1/test/chaos", tag = "test", request_body = ProcessorProfile,
    responses((status = 200, body = ProcessorChaosView),
              (status = 422, description = "every bad field is named", body = Problem)))]
async fn replace_chaos(
    State(p): State<Arc<Processor>>,
    Json(profile): Json<ProcessorProfile>,
) -> Result<Json<ProcessorChaosView>, Problem> {
    profile.validate()?;
    p.chaos().set(profile);
    Ok(Json(ProcessorChaosView::of(p.chaos().profile())))
}

/// Test control: switches processor chaos off.
#[utoipa::path(delete, path = "/v1/test/chaos", tag = "test", responses((status = 204)))]
async fn clear_chaos(State(p): State<Arc<Processor>>) -> StatusCode {
    p.chaos().set(ProcessorProfile::default());
    StatusCode::NO_CONTENT
}

fn http_switch(p: &Processor) -> Result<&mercato_kit::chaos::Chaos, Problem> {
    p.chaos()
        .http()
        .ok_or_else(|| Problem::internal(&"the service's chaos switch is not attached"))
}

fn http_view(chaos: &mercato_kit::chaos::Chaos) -> ChaosView {
    let profile = chaos.profile();
    ChaosView {
        enabled: profile.is_active(),
        profile,
    }
}

/// Test control: the kit's generic chaos profile of this service (latency, 500s, dropped
/// answers), which every service has at `/api/v1/admin/chaos`; psp-mock has no sign-in, so it
/// is here, without one.
#[utoipa::path(get, path = "/v1/test/chaos/http", tag = "test",
    responses((status = 200, body = ChaosView)))]
async fn show_http_chaos(State(p): State<Arc<Processor>>) -> Result<Json<ChaosView>, Problem> {
    Ok(Json(http_view(http_switch(&p)?)))
}

/// Test control: replaces the generic chaos profile. Without `routes` it applies to
/// `/v1/payment_methods` and `/v1/authorizations`; routes that would cover `/v1/test/chaos` are
/// refused, so chaos can always be switched off.
#[utoipa::path(put, path = "/v1/test/chaos/http", tag = "test",
    request_body = mercato_kit::chaos::Profile,
    responses((status = 200, body = ChaosView),
              (status = 422, description = "every bad field is named", body = Problem)))]
async fn replace_http_chaos(
    State(p): State<Arc<Processor>>,
    Json(profile): Json<mercato_kit::chaos::Profile>,
) -> Result<Json<ChaosView>, Problem> {
    let switch = http_switch(&p)?;
    switch.set(chaos::scope_generic(profile)?);
    Ok(Json(http_view(switch)))
}

/// Test control: switches the generic chaos profile off.
#[utoipa::path(delete, path = "/v1/test/chaos/http", tag = "test", responses((status = 204)))]
async fn clear_http_chaos(State(p): State<Arc<Processor>>) -> Result<StatusCode, Problem> {
    http_switch(&p)?.set(mercato_kit::chaos::Profile::default());
    Ok(StatusCode::NO_CONTENT)
}

/// Test control: counters that prove how many effects happened.
#[utoipa::path(get, path = "/v1/test/stats", tag = "test", responses((status = 200, body = Stats)))]
async fn stats(State(p): State<Arc<Processor>>) -> Json<Stats> {
    Json(p.stats())
}
