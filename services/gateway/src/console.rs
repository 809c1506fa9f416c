//! The operator console's data (ADMIN only), gathered by the gateway from every service when
//! asked, so the console works with no Prometheus running, embedded and distributed alike.
//!
//! - `GET /api/v1/admin/summary`: per service its health (`/health/deep` of every replica),
//!   circuit breakers, chaos profile, HTTP counters and latency histogram, outbox backlog,
//!   consumer lag and dead letters, and the saga's counters (from each `/metrics`). Counters
//!   are totals since start: the console takes two summaries a few seconds apart for rates
//!   and windowed percentiles, so the gateway keeps no state.
//! - `GET /api/v1/admin/orders/{id}/timeline`: one order's saga across services in one line.
//! - `GET/PUT/DELETE /api/v1/admin/psp-mock/chaos`: the test card processor's own chaos,
//!   when the gateway knows where psp-mock runs (`MERCATO_PSP_MOCK_URL`; `mercato up` sets it).
//!
//! The caller's token is passed on to the services' admin routes, so each still decides.

use crate::upstream::Upstreams;
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use mercato_kit::auth::{Principal, Role, Verifier};
use mercato_kit::chaos::Profile;
use mercato_kit::http::{BearerAuth, Json, Path};
use mercato_kit::Problem;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// How long one service may take to answer one of the console's reads.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes the console never counts as traffic: probes, scrapes and the console's own reads.
const NOT_TRAFFIC: &[&str] = &["/health", "/metrics", "/api/v1/admin", "/openapi.json"];

pub struct Console {
    http: reqwest::Client,
    upstreams: Arc<Upstreams>,
    psp_mock: Option<String>,
    verifier: Verifier,
    /// The gateway's own registry: its `/metrics` sits on the operator port.
    own: prometheus::Registry,
}

impl Console {
    #[expect(clippy::expect_used, reason = "a client without TLS always builds")]
    pub fn new(
        upstreams: Arc<Upstreams>,
        psp_mock: Option<String>,
        verifier: Verifier,
        own: prometheus::Registry,
    ) -> Console {
        Console {
            http: reqwest::Client::builder()
                .timeout(READ_TIMEOUT)
                .build()
                .expect("HTTP client"),
            upstreams,
            psp_mock,
            verifier,
            own,
        }
    }
}

#[derive(Clone)]
struct ConsoleState(Arc<Console>);

impl FromRef<ConsoleState> for Verifier {
    fn from_ref(s: &ConsoleState) -> Verifier {
        s.0.verifier.clone()
    }
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/api/v1/admin/summary", get(summary))
        .route("/api/v1/admin/orders/{id}/timeline", get(timeline))
        .route(
            "/api/v1/admin/psp-mock/chaos",
            get(psp_chaos).put(psp_chaos).delete(psp_chaos),
        )
        .with_state(ConsoleState(console))
}

/// The gateway's own routes in the API document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(summary, timeline),
    components(schemas(
        Summary,
        ServiceSummary,
        Health,
        DependencyHealth,
        Breaker,
        BreakerState,
        Histogram,
        Bucket,
        OrderFlow,
        Timeline,
        TimelineEntry,
        EntryKind
    )),
    modifiers(&BearerAuth),
    tags((name = "console", description = "The operator console's data (ADMIN)"))
)]
pub struct ApiDoc;

// ---------------------------------------------------------------------------------------------
// The summary

/// Every service at a glance.
#[derive(Serialize, ToSchema, Debug)]
pub struct Summary {
    /// When it was read.
    #[schema(format = DateTime)]
    pub at: String,
    pub services: Vec<ServiceSummary>,
}

#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Down,
}

#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The kit's gauge: 0 closed, 1 open, 2 half-open.
    fn from_gauge(v: f64) -> BreakerState {
        match v as i64 {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Of several replicas' breakers the one to show: open, then half-open, then closed.
    fn worse(self, other: BreakerState) -> BreakerState {
        let rank = |s| match s {
            BreakerState::Open => 2,
            BreakerState::HalfOpen => 1,
            BreakerState::Closed => 0,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// A service's circuit breaker to one dependency.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Breaker {
    pub dependency: String,
    pub state: BreakerState,
}

/// One dependency from `/health/deep`.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct DependencyHealth {
    pub name: String,
    pub up: bool,
    pub error: Option<String>,
}

/// A cumulative histogram (Prometheus buckets, the `+Inf` one left out: it is `count`).
#[derive(Serialize, ToSchema, Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub count: f64,
    pub sum: f64,
    pub buckets: Vec<Bucket>,
}

#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Upper bound in seconds.
    pub le: f64,
    /// Observations at or below it.
    pub count: f64,
}

impl Histogram {
    fn add(&mut self, count: f64, sum: f64, buckets: &[(f64, f64)]) {
        self.count += count;
        self.sum += sum;
        for &(le, n) in buckets.iter().filter(|(le, _)| le.is_finite()) {
            match self.buckets.iter_mut().find(|b| b.le == le) {
                Some(b) => b.count += n,
                None => self.buckets.push(Bucket { le, count: n }),
            }
        }
        self.buckets.sort_by(|a, b| a.le.total_cmp(&b.le));
    }
}

/// The saga's flow, from the order service.
#[derive(Serialize, ToSchema, Debug, Clone, Default, PartialEq)]
pub struct OrderFlow {
    /// Orders accepted since start.
    pub created_total: f64,
    /// Orders that reached PAID since start.
    pub paid_total: f64,
    /// Time from acceptance to PAID.
    pub time_to_paid: Histogram,
    /// Orders in each non-final state now.
    pub in_state: BTreeMap<String, f64>,
}

/// One service as the console shows it.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct ServiceSummary {
    pub service: String,
    pub status: Health,
    /// Why it is not healthy (empty when it is).
    pub reasons: Vec<String>,
    pub replicas: usize,
    pub replicas_up: usize,
    pub dependencies: Vec<DependencyHealth>,
    pub breakers: Vec<Breaker>,
    /// Its chaos profile (null where chaos cannot be read).
    pub chaos: Option<Profile>,
    /// psp-mock's processor chaos (timeouts, declines, webhooks), for psp-mock only.
    #[schema(value_type = Option<Object>)]
    pub processor_chaos: Option<Value>,
    /// Faults injected since start, by kind.
    pub chaos_events: BTreeMap<String, f64>,
    /// API requests answered since start (probes, scrapes and admin reads left out).
    pub requests_total: f64,
    /// Of those, answered 5xx.
    pub errors_total: f64,
    pub latency: Histogram,
    pub outbox_pending: Option<f64>,
    pub consumer_lag: Option<f64>,
    pub dead_letters_open: Option<f64>,
    pub orders: Option<OrderFlow>,
}

impl ServiceSummary {
    fn new(service: &str, replicas: usize) -> ServiceSummary {
        ServiceSummary {
            service: service.to_owned(),
            status: Health::Healthy,
            reasons: Vec::new(),
            replicas,
            replicas_up: 0,
            dependencies: Vec::new(),
            breakers: Vec::new(),
            chaos: None,
            processor_chaos: None,
            chaos_events: BTreeMap::new(),
            requests_total: 0.0,
            errors_total: 0.0,
            latency: Histogram::default(),
            outbox_pending: None,
            consumer_lag: None,
            dead_letters_open: None,
            orders: None,
        }
    }

    /// Adds one replica's `/metrics`: counters summed over replicas, figures read from the
    /// database (backlog, dead letters) taken as the largest, since every replica reports them.
    fn add_metrics(&mut self, text: &str) {
        let max = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.map_or(v, |s| s.max(v)));
        let mut lag = None::<f64>;
        let mut latency: BTreeMap<String, f64> = BTreeMap::new();
        let mut latency_count = 0.0;
        let mut to_paid: BTreeMap<String, f64> = BTreeMap::new();
        let mut to_paid_count = None::<f64>;
        for s in samples(text) {
            let traffic = || {
                let route = s.label("route");
                !NOT_TRAFFIC.iter().any(|p| route.starts_with(p))
            };
            let v = s.value;
            match s.name {
                "circuit_breaker_state" => {
                    let dependency = s.label("dependency").to_owned();
                    let state = BreakerState::from_gauge(v);
                    match self
                        .breakers
                        .iter_mut()
                        .find(|b| b.dependency == dependency)
                    {
                        Some(b) => b.state = b.state.worse(state),
                        None => self.breakers.push(Breaker { dependency, state }),
                    }
                }
                "chaos_events_total" => {
                    *self
                        .chaos_events
                        .entry(s.label("kind").to_owned())
                        .or_default() += v
                }
                "http_requests_total" if traffic() => {
                    self.requests_total += v;
                    if s.label("status").starts_with('5') {
                        self.errors_total += v;
                    }
                }
                "http_request_duration_seconds_bucket" if traffic() => {
                    *latency.entry(s.label("le").to_owned()).or_default() += v
                }
                "http_request_duration_seconds_count" if traffic() => latency_count += v,
                "outbox_pending_events" => max(&mut self.outbox_pending, v),
                "dead_letters_open" => max(&mut self.dead_letters_open, v),
                "event_consumer_lag" => max(&mut lag, v),
                "orders_created_total" => {
                    self.orders
                        .get_or_insert_with(Default::default)
                        .created_total += v
                }
                "orders_paid_total" => {
                    self.orders.get_or_insert_with(Default::default).paid_total += v
                }
                "order_time_to_paid_seconds_bucket" => {
                    *to_paid.entry(s.label("le").to_owned()).or_default() += v
                }
                "order_time_to_paid_seconds_count" => {
                    *to_paid_count.get_or_insert(0.0) += v;
                }
                "orders_in_state" => {
                    let flow = self.orders.get_or_insert_with(Default::default);
                    let slot = flow
                        .in_state
                        .entry(s.label("state").to_owned())
                        .or_default();
                    *slot = slot.max(v);
                }
                _ => {}
            }
        }
        let buckets = |m: &BTreeMap<String, f64>| -> Vec<(f64, f64)> {
            m.iter()
                .filter_map(|(le, n)| le.parse::<f64>().ok().map(|le| (le, *n)))
                .collect()
        };
        self.latency.add(latency_count, 0.0, &buckets(&latency));
        if let Some(count) = to_paid_count {
            self.orders
                .get_or_insert_with(Default::default)
                .time_to_paid
                .add(count, 0.0, &buckets(&to_paid));
        }
        if let Some(l) = lag {
            max(&mut self.consumer_lag, l);
        }
        self.breakers
            .sort_by(|a, b| a.dependency.cmp(&b.dependency));
    }

    /// Adds one replica's `/health/deep` answer (any status: 503 still names what is down).
    fn add_health(&mut self, deep: &Value) {
        self.replicas_up += 1;
        for d in deep["dependencies"].as_array().into_iter().flatten() {
            let name = d["name"].as_str().unwrap_or("?").to_owned();
            let up = d["status"] == "up";
            let error = d["error"].as_str().map(str::to_owned);
            match self.dependencies.iter_mut().find(|x| x.name == name) {
                Some(x) if !up => {
                    x.up = false;
                    x.error = error;
                }
                Some(_) => {}
                None => self.dependencies.push(DependencyHealth { name, up, error }),
            }
        }
    }
}

/// One line of the Prometheus text format.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The samples of a `/metrics` answer. Written here because prometheus-parse (the crate for
/// it) drops every sample whose label value holds a `}`, and route templates do (`/{id}`).
fn samples(text: &str) -> Vec<Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key_start = 0;
        loop {
            // key="value", with \\, \" and \n escapes in the value
            let (eq, _) = chars.find(|(_, c)| *c == '=' || *c == '}')?;
            if body[eq..].starts_with('}') {
                rest = &body[eq + 1..];
                break;
            }
            let key = body[key_start..eq].trim_matches(|c: char| c == ',' || c.is_whitespace());
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            key_start = chars.peek().map_or(body.len(), |(i, _)| *i);
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// What a chaos profile does, in a few words ("100% errors, 30% +200 ms").
pub fn describe(p: &Profile) -> String {
    let pct = |r: f64| format!("{}%", (r * 100.0).round());
    let mut parts = Vec::new();
    if p.error_rate > 0.0 {
        parts.push(format!("{} errors", pct(p.error_rate)));
    }
    if p.partial_failure_rate > 0.0 {
        parts.push(format!("{} dropped answers", pct(p.partial_failure_rate)));
    }
    if p.latency_rate > 0.0 && p.latency_ms.max(p.latency_max_ms.unwrap_or(0)) > 0 {
        let ms = match p.latency_max_ms {
            Some(max) => format!("{}-{max} ms", p.latency_ms),
            None => format!("{} ms", p.latency_ms),
        };
        parts.push(format!("{} +{ms}", pct(p.latency_rate)));
    }
    let mut out = parts.join(", ");
    if !p.routes.is_empty() {
        out.push_str(&format!(" on {}", p.routes.join(", ")));
    }
    out
}

/// The services' breakers name their dependencies by service, but the payment service calls
/// the card processor "processor".
fn dependency_service(dependency: &str) -> &str {
    match dependency {
        "processor" => "psp-mock",
        d => d,
    }
}

/// Each service's status and reasons, from what it said and what the others say of it: a
/// service is degraded while chaos is injected into it or a caller's breaker to it is open,
/// even though its own health checks pass.
pub fn judge(services: &mut [ServiceSummary]) {
    let opinions: Vec<(String, String, BreakerState)> = services
        .iter()
        .flat_map(|s| {
            s.breakers.iter().map(|b| {
                (
                    s.service.clone(),
                    dependency_service(&b.dependency).to_owned(),
                    b.state,
                )
            })
        })
        .collect();
    for s in services.iter_mut() {
        let mut reasons = std::mem::take(&mut s.reasons);
        if s.replicas_up == 0 {
            reasons.insert(0, "no replica answers /health/deep".to_owned());
            s.status = Health::Down;
            s.reasons = reasons;
            continue;
        }
        if s.replicas_up < s.replicas {
            reasons.push(format!(
                "{} of {} replicas do not answer",
                s.replicas - s.replicas_up,
                s.replicas
            ));
        }
        for d in s.dependencies.iter().filter(|d| !d.up) {
            reasons.push(format!(
                "{} is down: {}",
                d.name,
                d.error.as_deref().unwrap_or("no answer")
            ));
        }
        if let Some(p) = s.chaos.as_ref().filter(|p| p.is_active()) {
            reasons.push(format!("chaos injected: {}", describe(p)));
        }
        if let Some(p) = &s.processor_chaos {
            let active = ["timeout_rate", "error_rate", "duplicate_webhook_rate"]
                .iter()
                .any(|k| p[k].as_f64().unwrap_or(0.0) > 0.0)
                || p["reorder_webhooks"] == true;
            if active {
                reasons.push("processor chaos injected".to_owned());
            }
        }
        for (caller, _, state) in opinions
            .iter()
            .filter(|(_, to, st)| *to == s.service && *st != BreakerState::Closed)
        {
            let state = match state {
                BreakerState::Open => "open",
                _ => "half-open",
            };
            reasons.push(format!(
                "{caller}'s circuit breaker to {} is {state}",
                s.service
            ));
        }
        s.status = if reasons.is_empty() {
            Health::Healthy
        } else {
            Health::Degraded
        };
        s.reasons = reasons;
    }
}

impl Console {
    fn bases(&self, service: &str) -> Vec<String> {
        if service == "psp-mock" {
            return self.psp_mock.iter().cloned().collect();
        }
        self.upstreams
            .get(service)
            .map(|u| u.replicas.iter().map(|r| r.base.clone()).collect())
            .unwrap_or_default()
    }

    async fn get_json(&self, url: &str, token: Option<&str>) -> Result<(u16, Value), String> {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} s", READ_TIMEOUT.as_secs())
            } else {
                "unreachable".to_owned()
            }
        })?;
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn get_text(&self, url: &str) -> Option<String> {
        let res = self.http.get(url).send().await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        res.text().await.ok()
    }

    async fn service(&self, service: &'static str, token: &str) -> ServiceSummary {
        if service == crate::SERVICE {
            return self.gateway_itself();
        }
        let bases = self.bases(service);
        let mut s = ServiceSummary::new(service, bases.len());
        if bases.is_empty() {
            s.reasons.push("not configured at the gateway".to_owned());
            return s;
        }
        let replicas = futures::future::join_all(bases.iter().map(|b| async move {
            let (deep_url, metrics_url) = (format!("{b}/health/deep"), format!("{b}/metrics"));
            let (deep, metrics) =
                tokio::join!(self.get_json(&deep_url, None), self.get_text(&metrics_url));
            (b, deep, metrics)
        }))
        .await;
        for (base, deep, metrics) in replicas {
            match deep {
                Ok((_, body)) if body.is_object() => s.add_health(&body),
                Ok((status, _)) => s.reasons.push(format!("{base} answered {status}")),
                Err(e) => s.reasons.push(format!("{base}: {e}")),
            }
            if let Some(text) = metrics {
                s.add_metrics(&text);
            }
        }
        let first = &bases[0];
        if service == "psp-mock" {
            if let Ok((200, body)) = self.get_json(&format!("{first}/v1/test/chaos"), None).await {
                s.processor_chaos = Some(body);
            }
            if let Ok((200, body)) = self
                .get_json(&format!("{first}/v1/test/chaos/http"), None)
                .await
            {
                s.chaos = profile(body);
            }
        } else if let Ok((200, body)) = self
            .get_json(&format!("{first}/api/v1/admin/chaos"), Some(token))
            .await
        {
            s.chaos = profile(body);
        }
        s
    }

    fn gateway_itself(&self) -> ServiceSummary {
        let mut s = ServiceSummary::new(crate::SERVICE, 1);
        s.replicas_up = 1;
        let mut text = String::new();
        if prometheus::TextEncoder::new()
            .encode_utf8(&self.own.gather(), &mut text)
            .is_ok()
        {
            s.add_metrics(&text);
        }
        s
    }

    pub async fn summary(&self, token: &str) -> Summary {
        let mut names: Vec<&'static str> = vec![crate::SERVICE];
        names.extend(crate::routes::UPSTREAMS.iter().copied());
        if self.psp_mock.is_some() {
            names.push("psp-mock");
        }
        let mut services =
            futures::future::join_all(names.iter().map(|s| self.service(s, token))).await;
        judge(&mut services);
        Summary {
            at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            services,
        }
    }
}

/// A chaos answer as a profile: the answer adds `enabled`, which the profile derives.
fn profile(mut body: Value) -> Option<Profile> {
    body.as_object_mut()?.remove("enabled");
    serde_json::from_value(body).ok()
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Every service's health, breakers, chaos and counters, read now.
#[utoipa::path(get, path = "/api/v1/admin/summary", tag = "console", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every service at a glance", body = Summary),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
async fn summary(
    State(s): State<ConsoleState>,
    p: Principal,
    headers: HeaderMap,
) -> Result<Json<Summary>, Problem> {
    p.require(&[Role::Admin])?;
    Ok(Json(s.0.summary(bearer(&headers)).await))
}

/// psp-mock's processor chaos, passed through once the gateway has checked the caller is an
/// admin (psp-mock's own test routes trust whoever reaches its port).
async fn psp_chaos(
    State(s): State<ConsoleState>,
    p: Principal,
    method: axum::http::Method,
    body: Bytes,
) -> Result<Response, Problem> {
    p.require(&[Role::Admin])?;
    let base = s.0.psp_mock.as_deref().ok_or_else(|| {
        Problem::not_found("no test card processor (psp-mock) runs behind this gateway")
    })?;
    let mut req =
        s.0.http
            .request(method, format!("{base}/v1/test/chaos"))
            .header("content-type", "application/json");
    if !body.is_empty() {
        req = req.body(body);
    }
    let res = req.send().await.map_err(|_| {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "psp-mock did not answer",
        )
    })?;
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let bytes = res.bytes().await.unwrap_or_default();
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, content_type)],
        bytes,
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// The order timeline

#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A step of the order's own history.
    History,
    /// The reservation made, or its expiry due.
    Reservation,
    /// A payment's state.
    Payment,
    /// An event a service wrote to its outbox.
    Published,
    /// An event a service's consumer handled.
    Consumed,
    /// An event a service's consumer parked.
    DeadLetter,
}

/// One step, from one service.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    #[schema(format = DateTime)]
    pub at: String,
    pub service: String,
    pub kind: EntryKind,
    pub title: String,
    pub detail: Option<String>,
    pub event_id: Option<String>,
}

/// An order and every step of its saga, oldest first.
#[derive(Serialize, ToSchema, Debug)]
pub struct Timeline {
    /// The order as the order service shows it.
    #[schema(value_type = Object)]
    pub order: Value,
    /// Its reservation, when inventory has one.
    #[schema(value_type = Option<Object>)]
    pub reservation: Option<Value>,
    #[schema(value_type = Vec<Object>)]
    pub payments: Vec<Value>,
    pub entries: Vec<TimelineEntry>,
    /// Services whose part could not be read (the rest is still shown).
    pub missing: Vec<String>,
}

/// The services that publish or consume the saga's events.
const SAGA: &[&str] = &["order", "inventory", "payment", "cart"];

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

/// What an event says beyond its type: the reason, attempt and retry time of a delay, the
/// reason of a failure or a cancellation.
fn event_detail(event_type: &str, payload: &Value) -> Option<String> {
    let reason = payload["reason"].as_str();
    match event_type {
        "payment.delayed" => Some(format!(
            "attempt {} failed: {}; next attempt at {}",
            payload["attempt"],
            reason.unwrap_or("?"),
            payload["next_attempt_at"].as_str().unwrap_or("?")
        )),
        _ => reason.map(|r| format!("reason: {r}")),
    }
}

/// Builds the entries from what each service said; pure, so the ordering is tested alone.
pub fn entries(
    history: &[Value],
    reservation: Option<&Value>,
    payments: &[Value],
    trails: &[(&str, Value)],
) -> Vec<TimelineEntry> {
    let mut out = Vec::new();
    for h in history {
        let from = h["from_status"].as_str().unwrap_or("—");
        out.push(TimelineEntry {
            at: str_of(h, "at"),
            service: "order".into(),
            kind: EntryKind::History,
            title: format!("{from} → {}", str_of(h, "to_status")),
            detail: Some(match h["reason"].as_str() {
                Some(r) => format!("{} (reason: {r})", str_of(h, "event_type")),
                None => str_of(h, "event_type"),
            }),
            event_id: None,
        });
    }
    if let Some(r) = reservation {
        let lines = r["items"].as_array().map_or(0, Vec::len);
        out.push(TimelineEntry {
            at: str_of(r, "created_at"),
            service: "inventory".into(),
            kind: EntryKind::Reservation,
            title: format!("reservation {}", str_of(r, "status")),
            detail: Some(format!(
                "{lines} line(s){}",
                r["release_reason"]
                    .as_str()
                    .map(|x| format!(", released: {x}"))
                    .unwrap_or_default()
            )),
            event_id: None,
        });
        if let Some(exp) = r["expires_at"].as_str() {
            out.push(TimelineEntry {
                at: exp.to_owned(),
                service: "inventory".into(),
                kind: EntryKind::Reservation,
                title: "reservation expires".into(),
                detail: Some("unless the order is paid by then".into()),
                event_id: None,
            });
        }
    }
    for p in payments {
        out.push(TimelineEntry {
            at: str_of(p, "created_at"),
            service: "payment".into(),
            kind: EntryKind::Payment,
            title: format!("payment {}", str_of(p, "status")),
            detail: Some(format!(
                "{} {} minor units{}",
                str_of(p, "currency"),
                p["amount_cents"],
                p["failure_reason"]
                    .as_str()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default()
            )),
            event_id: None,
        });
    }
    let mut types = BTreeMap::new();
    for (service, t) in trails {
        for e in t["published"].as_array().into_iter().flatten() {
            types.insert(str_of(e, "event_id"), str_of(e, "event_type"));
            // When it was written: the relay may mark it published after a consumer already
            // handled it, so that time would put effects before their cause.
            out.push(TimelineEntry {
                at: str_of(e, "created_at"),
                service: (*service).to_owned(),
                kind: EntryKind::Published,
                title: format!(
                    "{} {}",
                    str_of(e, "event_type"),
                    if e["published_at"].is_null() {
                        "waiting in the outbox"
                    } else {
                        "published"
                    }
                ),
                detail: event_detail(e["event_type"].as_str().unwrap_or(""), &e["payload"]),
                event_id: Some(str_of(e, "event_id")),
            });
        }
    }
    for (service, t) in trails {
        for e in t["consumed"].as_array().into_iter().flatten() {
            let id = str_of(e, "event_id");
            out.push(TimelineEntry {
                at: str_of(e, "processed_at"),
                service: (*service).to_owned(),
                kind: EntryKind::Consumed,
                title: format!("{} handled", types.get(&id).map_or("event", String::as_str)),
                detail: Some(format!("by the {} consumer", str_of(e, "consumer"))),
                event_id: Some(id),
            });
        }
        for e in t["dead_letters"].as_array().into_iter().flatten() {
            out.push(TimelineEntry {
                at: str_of(e, "parked_at"),
                service: (*service).to_owned(),
                kind: EntryKind::DeadLetter,
                title: format!(
                    "{} parked in dead letters{}",
                    str_of(e, "event_type"),
                    if e["replayed_at"].is_null() {
                        ""
                    } else {
                        " (replayed since)"
                    }
                ),
                detail: Some(format!(
                    "after {} attempts: {}",
                    e["attempts"],
                    str_of(e, "error")
                )),
                event_id: Some(str_of(e, "event_id")),
            });
        }
    }
    let when = |e: &TimelineEntry| DateTime::parse_from_rfc3339(&e.at).ok();
    out.sort_by_key(when);
    out
}

impl Console {
    fn base(&self, service: &str) -> Result<String, String> {
        self.bases(service)
            .into_iter()
            .next()
            .ok_or_else(|| format!("{service} is not configured"))
    }

    async fn read(&self, service: &str, path: &str, token: &str) -> Result<(u16, Value), String> {
        let base = self.base(service)?;
        self.get_json(&format!("{base}{path}"), Some(token))
            .await
            .map_err(|e| format!("{service}: {e}"))
    }

    pub async fn timeline(&self, id: uuid::Uuid, token: &str) -> Result<Timeline, Problem> {
        let (status, order) = self
            .read("order", &format!("/api/v1/orders/{id}"), token)
            .await
            .map_err(|e| Problem::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", e))?;
        match status {
            200 => {}
            404 => return Err(Problem::not_found(format!("no order {id}"))),
            s => {
                return Err(Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("the order service answered {s}"),
                ))
            }
        }
        let mut missing = Vec::new();
        let mut keep = |what: &str, r: Result<(u16, Value), String>| match r {
            Ok((200, v)) => Some(v),
            Ok((404, _)) => None,
            Ok((s, _)) => {
                missing.push(format!("{what} (answered {s})"));
                None
            }
            Err(e) => {
                missing.push(e);
                None
            }
        };
        let (history_path, reservation_path, payments_path) = (
            format!("/api/v1/orders/{id}/events"),
            format!("/api/v1/inventory/reservations/{id}"),
            format!("/api/v1/payments?order_id={id}"),
        );
        let (history, reservation, payments) = tokio::join!(
            self.read("order", &history_path, token),
            self.read("inventory", &reservation_path, token),
            self.read("payment", &payments_path, token),
        );
        let history = keep("order history", history);
        let reservation = keep("inventory reservation", reservation);
        let payments = keep("payments", payments);
        let trail = |consumed: String| {
            futures::future::join_all(SAGA.iter().map(move |s| {
                let consumed = consumed.clone();
                async move {
                    let mut q = format!("/api/v1/admin/audit/trail?mentions={id}");
                    if !consumed.is_empty() {
                        q.push_str(&format!("&consumed={consumed}"));
                    }
                    (*s, self.read(s, &q, token).await)
                }
            }))
        };
        let first = trail(String::new()).await;
        let ids: Vec<String> = first
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|(_, v)| v["published"].as_array().cloned().unwrap_or_default())
            .map(|e| str_of(&e, "event_id"))
            .take(MAX_CONSUMED)
            .collect();
        let second = if ids.is_empty() {
            first
        } else {
            trail(ids.join(",")).await
        };
        let trails: Vec<(&str, Value)> = second
            .into_iter()
            .filter_map(|(s, r)| keep(&format!("{s} events"), r).map(|v| (s, v)))
            .collect();
        let history: Vec<Value> = history
            .and_then(|h| h["items"].as_array().cloned())
            .unwrap_or_default();
        let payments: Vec<Value> = payments
            .and_then(|p| p["items"].as_array().cloned())
            .unwrap_or_default();
        let entries = entries(&history, reservation.as_ref(), &payments, &trails);
        Ok(Timeline {
            order,
            reservation,
            payments,
            entries,
            missing,
        })
    }
}

/// The most event ids one trail asks a consumer about (the kit's limit).
pub const MAX_CONSUMED: usize = mercato_kit::audit::MAX_TRAIL as usize;

/// One order's saga across services: its history, reservation, payments, the events published
/// and consumed for it and any parked, oldest first.
#[utoipa::path(get, path = "/api/v1/admin/orders/{id}/timeline", tag = "console", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order's saga, step by step", body = Timeline),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The order service could not be read", body = Problem, content_type = "application/problem+json"),
    ))]
async fn timeline(
    State(s): State<ConsoleState>,
    p: Principal,
    Path(id): Path<uuid::Uuid>,
    headers: HeaderMap,
) -> Result<Json<Timeline>, Problem> {
    p.require(&[Role::Admin])?;
    Ok(Json(s.0.timeline(id, bearer(&headers)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORDER_METRICS: &str = "\
# TYPE circuit_breaker_state gauge
circuit_breaker_state{dependency=\"inventory\",service=\"order\"} 1
# TYPE http_requests_total counter
http_requests_total{method=\"POST\",route=\"/api/v1/orders\",service=\"order\",status=\"201\"} 8
http_requests_total{method=\"POST\",route=\"/api/v1/orders\",service=\"order\",status=\"503\"} 2
http_requests_total{method=\"GET\",route=\"/health/deep\",service=\"order\",status=\"200\"} 50
# TYPE orders_created_total counter
orders_created_total{service=\"order\"} 10
# TYPE orders_paid_total counter
orders_paid_total{service=\"order\"} 7
# TYPE order_time_to_paid_seconds histogram
order_time_to_paid_seconds_bucket{service=\"order\",le=\"0.5\"} 3
order_time_to_paid_seconds_bucket{service=\"order\",le=\"1\"} 7
order_time_to_paid_seconds_bucket{service=\"order\",le=\"+Inf\"} 7
order_time_to_paid_seconds_sum{service=\"order\"} 4.2
order_time_to_paid_seconds_count{service=\"order\"} 7
# TYPE dead_letters_open gauge
dead_letters_open{service=\"order\"} 1
";

    #[test]
    fn the_text_format_is_read_with_braces_and_escapes_in_label_values() {
        let got = samples(
            "# HELP x y\nhttp_requests_total{route=\"/api/v1/{*rest}\",note=\"a \\\"b\\\" c\"} 3\nup 1\nh_bucket{le=\"+Inf\"} 2\n",
        );
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name, "http_requests_total");
        assert_eq!(got[0].label("route"), "/api/v1/{*rest}");
        assert_eq!(got[0].label("note"), "a \"b\" c");
        assert_eq!(got[0].value, 3.0);
        assert_eq!((got[1].name, got[1].value), ("up", 1.0));
        assert_eq!(got[2].label("le"), "+Inf");
    }

    #[test]
    fn metrics_become_counters_breakers_and_histograms() {
        let mut s = ServiceSummary::new("order", 2);
        s.add_metrics(ORDER_METRICS);
        s.add_metrics(ORDER_METRICS);
        assert_eq!(
            s.requests_total, 20.0,
            "probes are not traffic; replicas add up"
        );
        assert_eq!(s.errors_total, 4.0);
        assert_eq!(
            s.breakers,
            vec![Breaker {
                dependency: "inventory".into(),
                state: BreakerState::Open
            }]
        );
        let flow = s.orders.unwrap();
        assert_eq!((flow.created_total, flow.paid_total), (20.0, 14.0));
        assert_eq!(flow.time_to_paid.count, 14.0);
        assert_eq!(
            flow.time_to_paid.buckets,
            vec![
                Bucket {
                    le: 0.5,
                    count: 6.0
                },
                Bucket {
                    le: 1.0,
                    count: 14.0
                }
            ]
        );
        assert_eq!(
            s.dead_letters_open,
            Some(1.0),
            "read from the database: not summed"
        );
    }

    #[test]
    fn chaos_and_a_callers_open_breaker_degrade_a_service_whose_checks_pass() {
        let mut order = ServiceSummary::new("order", 1);
        order.replicas_up = 1;
        order.breakers.push(Breaker {
            dependency: "inventory".into(),
            state: BreakerState::Open,
        });
        let mut inventory = ServiceSummary::new("inventory", 1);
        inventory.replicas_up = 1;
        inventory.chaos = Some(Profile {
            error_rate: 1.0,
            ..Profile::default()
        });
        let mut cart = ServiceSummary::new("cart", 2);
        let mut services = vec![order, inventory, cart.clone()];
        judge(&mut services);
        assert_eq!(
            services[0].status,
            Health::Healthy,
            "{:?}",
            services[0].reasons
        );
        assert_eq!(services[1].status, Health::Degraded);
        assert_eq!(
            services[1].reasons,
            [
                "chaos injected: 100% errors",
                "order's circuit breaker to inventory is open"
            ]
        );
        assert_eq!(services[2].status, Health::Down);

        cart.add_health(&json!({"status": "degraded", "dependencies": [
            {"name": "database", "status": "up"}, {"name": "redis", "status": "down", "error": "refused"}]}));
        let mut services = vec![cart];
        judge(&mut services);
        assert_eq!(
            services[0].reasons,
            ["1 of 2 replicas do not answer", "redis is down: refused"]
        );
    }

    #[test]
    fn a_profile_is_described_in_a_few_words() {
        let p = Profile {
            latency_ms: 100,
            latency_max_ms: Some(400),
            latency_rate: 0.3,
            error_rate: 0.05,
            routes: vec!["/api/v1/orders".into()],
            ..Profile::default()
        };
        assert_eq!(describe(&p), "5% errors, 30% +100-400 ms on /api/v1/orders");
    }

    #[test]
    fn the_timeline_is_ordered_by_time_across_services() {
        let history = [
            json!({"at": "2026-01-01T00:00:00.100Z", "event_type": "order.created", "from_status": null, "to_status": "PENDING", "seq": 1}),
            json!({"at": "2026-01-01T00:00:00.400Z", "event_type": "inventory.reserved", "from_status": "PENDING", "to_status": "CONFIRMED", "seq": 2}),
        ];
        let reservation = json!({"created_at": "2026-01-01T00:00:00.300Z", "status": "ACTIVE",
            "expires_at": "2026-01-01T00:30:00.300Z", "items": [{}]});
        let created = "0190a000-0000-7000-8000-000000000001";
        let trails = [
            (
                "order",
                json!({"published": [{"event_id": created, "event_type": "order.created",
                "created_at": "2026-01-01T00:00:00.100Z", "published_at": "2026-01-01T00:00:00.150Z", "payload": {}}],
                "consumed": [], "dead_letters": []}),
            ),
            (
                "inventory",
                json!({"published": [], "consumed": [{"consumer": "inventory", "event_id": created,
                "processed_at": "2026-01-01T00:00:00.200Z"}], "dead_letters": []}),
            ),
        ];
        let got = entries(&history, Some(&reservation), &[], &trails);
        let titles: Vec<&str> = got.iter().map(|e| e.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "— → PENDING",
                "order.created published",
                "order.created handled",
                "reservation ACTIVE",
                "PENDING → CONFIRMED",
                "reservation expires"
            ]
        );
    }
}
