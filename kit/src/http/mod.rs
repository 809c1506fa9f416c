//! The HTTP skeleton every service runs on: the same middleware, the same extractors, the same
//! operational routes, the same shutdown.
//!
//! Layers, outermost first: request context (request id, correlation id, trace context, one
//! span per request that every log line of the request carries), panic catching, metrics by
//! route template, the body read timeout (the whole body must arrive within it, else 408),
//! per-request timeout, and the problem normaliser, which turns any error that a framework
//! layer answered in plain text (unknown route, wrong method, oversized body) into
//! `application/problem+json`. Connections themselves are watched by [`crate::server`].

pub mod admin;

use crate::health::{self, HealthCheck};
use crate::metrics::Metrics;
use crate::problem::{Problem, PROBLEM_JSON};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

// Plain data that events and the HTTP client carry too, so it lives in a leaf below them;
// named here as well, where handlers look for it.
pub use crate::context::{
    RequestContext, CORRELATION_ID, IDEMPOTENCY_KEY, IDEMPOTENCY_REPLAYED, REQUEST_ID, TRACEPARENT,
};

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| Problem::internal(&"request context middleware missing"))
    }
}

/// A header value we accept from a client: short, visible ASCII.
fn sane_header(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_owned())
}

fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && parts[0].len() == 2
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        && parts[1] != "00000000000000000000000000000000"
}

fn mint_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// The client's address. A request from a trusted proxy (the gateway, a load balancer) carries
/// the chain of addresses it came through in `X-Forwarded-For`, each proxy appending its own
/// peer; read from the right, the first address that is not a trusted proxy is the client.
/// Anything further left was written by the client itself and proves nothing.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer?;
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A malformed hop: stop believing the chain there.
            Err(_) => break,
        }
    }
    Some(client)
}

/// What the context layer needs: whose requests it serves, and which peers it believes.
#[derive(Clone)]
struct ContextState {
    service: &'static str,
    trusted: Arc<Vec<ipnet::IpNet>>,
}

// By hand rather than tower-http's request-id and trace layers: those take any inbound id and
// make their own span, while one request's id, correlation id, traceparent and caller must be
// checked together (`sane_header`, `valid_traceparent`) and land in one span and one
// `RequestContext`. tower-http stays for what it does as we want: panics, limits, headers.
async fn context_layer(
    State(state): State<ContextState>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let request_id =
        sane_header(headers, &REQUEST_ID).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let correlation_id =
        sane_header(headers, &CORRELATION_ID).unwrap_or_else(|| request_id.clone());
    let incoming = sane_header(headers, &TRACEPARENT).filter(|t| valid_traceparent(t));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    // The server span of this request: a child of the caller's span when it sent one.
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {}", route.as_deref().unwrap_or("unmatched")),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        service = state.service,
        request_id = %request_id,
        correlation_id = %correlation_id,
        %method,
        %path,
        http.route = route.as_deref(),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, incoming.as_deref());
    // What this service passes on (to events, calls, the response) names this span as the
    // parent; without a tracer (tests of a bare router) the caller's context goes on as it came.
    let traceparent = crate::telemetry::traceparent(&span)
        .or(incoming)
        .unwrap_or_else(mint_traceparent);
    let ctx = RequestContext {
        request_id,
        correlation_id,
        traceparent,
        client_ip: client_ip(
            req.extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
            &state.trusted,
        ),
    };
    req.extensions_mut().insert(ctx.clone());
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    crate::telemetry::record_status(&span, Some(status), None);
    span.in_scope(|| {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(status, elapsed_ms = ms, "request failed");
        } else {
            tracing::debug!(status, elapsed_ms = ms, "request finished");
        }
    });
    let h = res.headers_mut();
    for (name, value) in [
        (REQUEST_ID, ctx.request_id),
        (CORRELATION_ID, ctx.correlation_id),
        (TRACEPARENT, ctx.traceparent),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    res
}

async fn metrics_layer(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.run(req).await;
    metrics.observe_idempotency(&res);
    metrics.observe_request(
        &route,
        method.as_str(),
        res.status().as_u16(),
        started.elapsed(),
    );
    res
}

/// How long a request may run before the timeout layer answers for it. Work that must outlive
/// no request (an idempotency claim's lease) is sized from it.
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeout(pub Duration);

async fn timeout_layer(State(limit): State<Duration>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(RequestTimeout(limit));
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            "The request took too long",
        )
        .with_detail(format!("no answer within {} ms", limit.as_millis()))
        .into_response(),
    }
}

/// Reads the whole request body within `timeout` (and at most `limit` bytes) before the
/// handler runs: a client that trickles its body gets 408 and the connection closes, instead
/// of holding a handler (or, at the gateway, an upstream connection) for as long as it likes.
/// Bodies here are small JSON documents, so holding one in memory is what the handlers did
/// anyway.
async fn body_layer(
    State((timeout, limit)): State<(Duration, usize)>,
    req: Request,
    next: Next,
) -> Response {
    use axum::body::HttpBody;
    use http_body_util::BodyExt;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(timeout, http_body_util::Limited::new(body, limit).collect());
    match read.await {
        Ok(Ok(collected)) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Problem::for_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(format!("the body is larger than {limit} bytes")),
        )
        .into_response(),
        Ok(Err(e)) => {
            Problem::bad_request(format!("the request body could not be read: {e}")).into_response()
        }
        Err(_) => {
            let mut res = Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                "The request body took too long to arrive",
            )
            .with_detail(format!(
                "the whole body must arrive within {} ms",
                timeout.as_millis()
            ))
            .into_response();
            // The rest of the body is still on its way: this connection cannot carry another
            // request.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            res
        }
    }
}

/// Turns a plain-text error answered by a framework layer into a problem document.
async fn problem_layer(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    // A JSON answer was written on purpose (a problem, or a health report's 503 with every
    // check in it); only framework plain text is replaced.
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON) || v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok());
    let mut fixed = Problem::for_status(status, text).into_response();
    // Keep headers such as Allow or Retry-After that the original answer carried.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

/// JSON body extractor whose rejections are problem documents: 400 for malformed JSON, 415 for
/// a wrong content type, 413 for an oversized body, 422 for wrong types and missing fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => {
                let text = rej.body_text();
                Err(match rej {
                    JsonRejection::JsonDataError(_) => Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "validation_failed",
                        "The request has invalid fields",
                    )
                    .with_detail(text),
                    JsonRejection::JsonSyntaxError(_) => Problem::malformed_json(text),
                    JsonRejection::MissingJsonContentType(_) => Problem::for_status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        Some("expected a body with Content-Type: application/json".into()),
                    ),
                    other => Problem::for_status(other.status(), Some(text)),
                })
            }
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON body that may be left out: a bare POST (no Content-Type, empty body) reads as
/// `T::default()`. Routes whose every field is optional (capture, refund) take it; anything
/// declared as a body goes through [`Json`] and its rejections.
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            let Json(v) = Json::<T>::from_request(req, state).await?;
            return Ok(OptionalJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| Problem::for_status(r.status(), Some(r.body_text())))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(OptionalJson(T::default()))
        } else {
            Err(Problem::for_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("expected a body with Content-Type: application/json".into()),
            ))
        }
    }
}

/// Query-string extractor whose rejection is a 400 problem naming the parameter. A parameter
/// given with an empty value (`?seller_id=`) is refused with 422 naming it: it is not the same
/// as leaving the filter out, and reading it as absent would answer a question nobody asked.
#[derive(Debug, Clone, Default)]
pub struct Query<T>(pub T);

/// The names of the query string's parameters that have an empty value.
pub fn empty_query_values(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| match pair.split_once('=') {
            Some((name, "")) => Some(name),
            None => Some(pair),
            _ => None,
        })
        .map(|name| name.to_owned())
        .collect()
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let empty = empty_query_values(parts.uri.query().unwrap_or(""));
        if !empty.is_empty() {
            return Err(Problem::validation(
                empty
                    .into_iter()
                    .map(|field| crate::problem::FieldError {
                        field,
                        message: "must not be empty: leave the parameter out to not filter by it"
                            .into(),
                    })
                    .collect(),
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|rej| Problem::invalid_query(rej.body_text()))
    }
}

/// Path extractor whose rejection is a 400 problem (an id that is not a UUID, say).
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|rej| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    "A path parameter is not valid",
                )
                .with_detail(rej.body_text())
            })
    }
}

/// Limits every service applies to every request.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    /// How long the whole request body may take to arrive (408 past it).
    pub body_timeout: Duration,
    /// Header and idle timeouts, connection caps (see [`crate::server`]).
    pub connections: crate::server::ConnectionLimits,
    /// Peers whose `X-Forwarded-For` is believed (see [`client_ip`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The chaos profile the service starts with (`CHAOS_MODE`); off by default.
    pub chaos: crate::chaos::Profile,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            request_timeout: Duration::from_secs(15),
            body_limit_bytes: 256 * 1024,
            body_timeout: Duration::from_secs(10),
            connections: crate::server::ConnectionLimits::default(),
            trusted_proxies: crate::config::DEFAULT_TRUSTED_PROXIES
                .split(',')
                .filter_map(|n| n.parse().ok())
                .collect(),
            chaos: crate::chaos::Profile::default(),
        }
    }
}

impl From<&crate::config::CommonConfig> for HttpSettings {
    fn from(c: &crate::config::CommonConfig) -> Self {
        HttpSettings {
            request_timeout: c.request_timeout,
            body_limit_bytes: c.body_limit_bytes,
            body_timeout: c.body_timeout,
            connections: crate::server::ConnectionLimits {
                header_timeout: c.header_timeout,
                idle_timeout: c.idle_timeout,
                max_connections: c.max_connections,
                max_per_address: None,
                exempt: c.trusted_proxies.clone(),
            },
            trusted_proxies: c.trusted_proxies.clone(),
            chaos: if c.chaos_mode {
                crate::chaos::Profile::default_mode()
            } else {
                crate::chaos::Profile::default()
            },
        }
    }
}

type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A built service: its router with every layer and operational route, and the background
/// work that runs beside it. `mercato up`, `mercato serve` and the tests all run it the same way.
pub struct Service {
    pub name: &'static str,
    api: Router,
    ops: Router,
    /// `/metrics` (on the operator port when there is one).
    metrics_route: Router,
    /// A port of its own for `/metrics` and `/health/*`, for operators only.
    ops_listener: Option<std::net::TcpListener>,
    /// Headers every answer carries unless its route set its own.
    response_headers: Vec<(HeaderName, HeaderValue)>,
    metrics: Metrics,
    settings: HttpSettings,
    chaos: crate::chaos::Chaos,
    tasks: Vec<Task>,
    draining: Arc<AtomicBool>,
    on_stop: Vec<crate::db::Db>,
}

impl Service {
    /// Wraps the service's API router (state already applied) with the kit's layers and the
    /// `/health/*`, `/metrics` and `/openapi.json` routes.
    #[expect(
        clippy::expect_used,
        reason = "a fixed document and one switch per registry: a failure is a bug every test would hit"
    )]
    pub fn new(
        name: &'static str,
        api: Router,
        openapi: impl Into<Option<utoipa::openapi::OpenApi>>,
        metrics: Metrics,
        checks: Vec<Arc<dyn HealthCheck>>,
        settings: &HttpSettings,
    ) -> Service {
        let draining = Arc::new(AtomicBool::new(false));
        let mut ops = health::router(name, checks, draining.clone());
        let metrics_route =
            Router::new().route("/metrics", get(render_metrics).with_state(metrics.clone()));
        // Without a document the API router serves its own `/openapi.json` (the gateway's is
        // assembled from every service's at request time).
        if let Some(openapi) = openapi.into() {
            let mut doc = serde_json::to_value(&openapi).expect("an OpenAPI document is JSON");
            crate::openapi::complete(&mut doc);
            let doc = Arc::new(doc);
            ops = ops.route(
                "/openapi.json",
                get(move || async move { axum::Json((*doc).clone()) }),
            );
        }
        // Chaos sits in front of the API routes only: health, metrics and the admin routes stay
        // reachable whatever it does, so its effect can be watched and switched off.
        let chaos = crate::chaos::Chaos::new(metrics.registry(), settings.chaos.clone())
            .expect("one chaos switch per service registry");
        let api = api.layer(middleware::from_fn_with_state(
            chaos.clone(),
            crate::chaos::Chaos::layer,
        ));
        Service {
            name,
            api,
            ops,
            metrics_route,
            ops_listener: None,
            response_headers: Vec::new(),
            metrics,
            settings: settings.clone(),
            chaos,
            tasks: Vec::new(),
            draining,
            on_stop: Vec::new(),
        }
    }

    /// Adds background work that runs until shutdown is signalled.
    pub fn with_task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(Box::new(move |t| Box::pin(task(t))));
        self
    }

    /// Runs the service's side of the saga until shutdown: `relay` publishing its outbox and
    /// `consumer` handling `event_types` from `bus`.
    pub fn with_events(
        self,
        relay: crate::events::Relay,
        consumer: crate::events::Consumer,
        bus: Arc<dyn crate::events::Bus>,
        event_types: &[&'static str],
    ) -> Self {
        let event_types = event_types.to_vec();
        self.with_task(move |stop| relay.run(stop))
            .with_task(move |stop| consumer.run(bus, event_types, stop))
    }

    /// This service's chaos switch (see [`crate::chaos`]).
    pub fn chaos(&self) -> &crate::chaos::Chaos {
        &self.chaos
    }

    /// Closes this database's pools after the last request has finished.
    pub fn closes(mut self, db: crate::db::Db) -> Self {
        self.on_stop.push(db);
        self
    }

    /// Adds the admin routes every service has, `GET/PUT/DELETE /api/v1/admin/chaos`, checked
    /// with `verifier` (ADMIN only), and keeps the verifier's revocation list fresh while the
    /// service runs (the verifier is the one its routes use: clones share the list).
    pub fn with_admin(mut self, verifier: crate::auth::Verifier) -> Self {
        if let Some(revocations) = verifier.revocations() {
            self = self.with_task(move |stop| revocations.run(stop));
        }
        self.api = self
            .api
            .merge(admin::chaos_router(self.chaos.clone(), verifier));
        self
    }

    /// Serves `/metrics` (and `/health/*`) on `listener` only, not on the service's port: for
    /// a service whose port is public (the gateway), so its traffic and internals are not.
    pub fn with_ops_port(mut self, listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        self.ops_listener = Some(listener);
        Ok(self)
    }

    /// The operator port's address, when it has one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Adds headers to every answer of this service that does not set them itself, its own
    /// problem answers (404, 408, 413, timeouts) and operational routes included.
    pub fn with_response_headers(
        mut self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
    ) -> Self {
        self.response_headers.extend(headers);
        self
    }

    /// The router, for tests that drive it without a socket.
    pub fn router(&self) -> Router {
        let mut public = self.api.clone().merge(self.ops.clone());
        if self.ops_listener.is_none() {
            public = public.merge(self.metrics_route.clone());
        }
        self.layered(public)
    }

    /// What the operator port serves.
    fn ops_router(&self) -> Router {
        self.layered(self.ops.clone().merge(self.metrics_route.clone()))
    }

    fn layered(&self, routes: Router) -> Router {
        let settings = &self.settings;
        let router = routes
            .fallback(|| async { Problem::not_found("no such route") })
            .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
            .layer(middleware::from_fn(problem_layer))
            .layer(middleware::from_fn_with_state(
                settings.request_timeout,
                timeout_layer,
            ))
            .layer(middleware::from_fn_with_state(
                (settings.body_timeout, settings.body_limit_bytes),
                body_layer,
            ))
            .layer(middleware::from_fn_with_state(
                self.metrics.clone(),
                metrics_layer,
            ))
            .layer(tower_http::catch_panic::CatchPanicLayer::new())
            .layer(middleware::from_fn_with_state(
                ContextState {
                    service: self.name,
                    trusted: Arc::new(settings.trusted_proxies.clone()),
                },
                context_layer,
            ));
        self.response_headers
            .iter()
            .fold(router, |r, (name, value)| {
                r.layer(
                    tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                        name.clone(),
                        value.clone(),
                    ),
                )
            })
    }

    /// Serves until `shutdown` is cancelled: then stops accepting, lets in-flight requests
    /// finish, stops the background work and closes the pools.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let app = self.router();
        let ops = match self.ops_listener.take() {
            Some(l) => Some((TcpListener::from_std(l)?, self.ops_router())),
            None => None,
        };
        let tasks_token = CancellationToken::new();
        let handles: Vec<_> = self
            .tasks
            .into_iter()
            .map(|t| tokio::spawn(t(tasks_token.clone())))
            .collect();
        let draining = self.draining.clone();
        let name = self.name;
        let stop = CancellationToken::new();
        let announce = {
            let stop = stop.clone();
            async move {
                shutdown.cancelled().await;
                draining.store(true, Ordering::SeqCst);
                tracing::info!(
                    service = name,
                    "shutting down: finishing in-flight requests"
                );
                stop.cancel();
            }
        };
        let announcer = tokio::spawn(announce);
        let connections = crate::server::ConnectionMetrics::register(self.metrics.registry())
            .map_err(std::io::Error::other)?;
        let ops_served = ops.map(|(l, router)| {
            tokio::spawn(crate::server::serve(
                l,
                router,
                self.settings.connections.clone(),
                crate::server::ConnectionMetrics::unregistered(),
                stop.clone(),
            ))
        });
        let served = crate::server::serve(
            listener,
            app,
            self.settings.connections.clone(),
            connections,
            stop,
        )
        .await;
        if let Some(h) = ops_served {
            let _ = h.await;
        }
        announcer.abort();
        tasks_token.cancel();
        for h in handles {
            let _ = h.await;
        }
        for db in self.on_stop {
            db.close().await;
        }
        tracing::info!(service = name, "stopped");
        served
    }
}

async fn render_metrics(State(metrics): State<Metrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics.render(),
    )
        .into_response()
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
#[expect(
    clippy::expect_used,
    reason = "without a SIGTERM handler the process cannot stop gracefully; better not to start"
)]
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A service's API routes under `/api/v1`, the version every public path carries, with their
/// state, split into the router and the OpenAPI document (`doc`, the service's own info and
/// tags) that describes them, so the document's paths are the paths the router serves.
pub fn versioned_api<S: Clone + Send + Sync + 'static>(
    doc: utoipa::openapi::OpenApi,
    api: utoipa_axum::router::OpenApiRouter<S>,
    state: S,
) -> (Router, utoipa::openapi::OpenApi) {
    utoipa_axum::router::OpenApiRouter::with_openapi(doc)
        .nest("/api/v1", api)
        .with_state(state)
        .split_for_parts()
}

/// A JSON response with a status, for handlers that build their answer by hand.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A response body as bytes, for replaying stored answers.
/// An error status carries a problem document, so it is labelled as one (the problem layer
/// would otherwise replace a stored problem with a generic one).
pub fn raw_json_response(status: StatusCode, body: String) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    let ct = if status.is_client_error() || status.is_server_error() {
        PROBLEM_JSON
    } else {
        "application/json"
    };
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    res
}

/// Declares the Bearer token scheme in a service's OpenAPI document.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_query_values_are_found_by_name() {
        assert_eq!(empty_query_values("seller_id=&limit=5"), ["seller_id"]);
        assert_eq!(empty_query_values("q&status=PAID"), ["q"]);
        assert!(empty_query_values("limit=5&cursor=abc").is_empty());
        assert!(empty_query_values("").is_empty());
    }

    #[test]
    fn traceparent_checks() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent("garbage"));
        assert!(valid_traceparent(&mint_traceparent()));
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        // Straight from a client: its own address, whatever it claims.
        assert_eq!(
            client_ip(ip("203.0.113.7"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.7")
        );
        // Through the gateway (10.0.0.5) behind a load balancer (10.0.0.9).
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("203.0.113.7, 10.0.0.9"), &trusted),
            ip("203.0.113.7")
        );
        // A client that forged a hop is still seen as itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("1.2.3.4, 203.0.113.7"), &trusted),
            ip("203.0.113.7")
        );
        // A trusted peer without a chain is the client (a local tool).
        assert_eq!(client_ip(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
        // A malformed hop ends the chain where it stands.
        assert_eq!(
            client_ip(
                ip("10.0.0.5"),
                Some("203.0.113.7, junk, 10.0.0.9"),
                &trusted
            ),
            ip("10.0.0.9")
        );
        // Nobody trusted: the peer, always.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("203.0.113.7"), &[]),
            ip("10.0.0.5")
        );
    }
}
