//! What the front door checks before a request may go in: the client's rate, the token (a
//! bad one is stopped here, the services still verify good ones themselves), then the user's
//! rate. And what every answer leaving it carries: the security headers.

use crate::ratelimit::{retry_after_secs, RateLimit};
use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mercato_kit::auth::{MaybePrincipal, Verifier};
use mercato_kit::http::RequestContext;
use mercato_kit::problem::Problem;
use prometheus::{IntCounterVec, Opts};
use std::sync::Arc;

#[derive(Clone)]
pub struct Edge {
    pub verifier: Verifier,
    pub per_ip: Option<Arc<dyn RateLimit>>,
    pub per_user: Option<Arc<dyn RateLimit>>,
    pub stopped: IntCounterVec,
}

impl FromRef<Edge> for Verifier {
    fn from_ref(edge: &Edge) -> Verifier {
        edge.verifier.clone()
    }
}

/// `gateway_rejected_total{reason}`: requests the gateway answered itself.
pub fn rejected_counter(registry: &prometheus::Registry) -> anyhow::Result<IntCounterVec> {
    let c = IntCounterVec::new(
        Opts::new(
            "gateway_rejected_total",
            "Requests stopped at the gateway, by reason",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn limited(wait: std::time::Duration, whose: &str) -> Response {
    let secs = retry_after_secs(wait);
    Problem::too_many_requests(
        format!("too many requests from this {whose}; retry in {secs} s"),
        secs,
    )
    .into_response()
}

pub async fn edge(State(edge): State<Edge>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<RequestContext>()
        .and_then(|c| c.client_ip);
    if let (Some(limit), Some(ip)) = (&edge.per_ip, ip) {
        if let Err(wait) = limit.check(&format!("ip:{ip}")).await {
            edge.stopped.with_label_values(&["rate_limited_ip"]).inc();
            return limited(wait, "address");
        }
    }
    let (mut parts, body) = req.into_parts();
    let principal = match MaybePrincipal::from_request_parts(&mut parts, &edge).await {
        Ok(p) => p.0,
        Err(problem) => {
            edge.stopped.with_label_values(&["invalid_token"]).inc();
            return problem
                .with_extension("rejected_by", "gateway".into())
                .into_response();
        }
    };
    if let (Some(limit), Some(p)) = (&edge.per_user, &principal) {
        if let Err(wait) = limit.check(&format!("user:{}", p.subject)).await {
            edge.stopped.with_label_values(&["rate_limited_user"]).inc();
            return limited(wait, "account");
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Headers every answer of the gateway carries unless its route set its own (the docs page
/// sets a CSP that lets its own scripts run): the services' answers it forwards and its own
/// (404s, 429s, timeouts, health) alike.
pub fn security_headers() -> Vec<(HeaderName, HeaderValue)> {
    [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("cross-origin-resource-policy", "same-origin"),
    ]
    .into_iter()
    .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
    .collect()
}
