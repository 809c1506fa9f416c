//! The reverse proxy: one pooled HTTP client, bodies streamed both ways (so Server-Sent Events
//! pass through as they are written), the caller's request id, correlation id and trace passed
//! on, and a problem document naming the service when it cannot answer.
//!
//! Each service is a dependency of the kit's resilient client (`mercato_kit::client`), so the
//! gateway has the same circuit breaker, bulkhead and `http_client_*` metrics per service as
//! every other caller. It makes the exchange itself, though, because the kit's `send` reads
//! whole answers and rebuilds the request per attempt, and the gateway streams both. So its
//! retry is its own: a request without a body (a streamed body is gone once sent) that could
//! not connect goes to the next replica, and so does one that may be repeated (GET, HEAD, PUT,
//! DELETE, OPTIONS, or keyed) answered 502/503/504 while another replica is left, at once
//! rather than after a backoff, since it is another replica. A breaker that is open answers
//! 503 at once with a `Retry-After`; a full bulkhead answers 503 too.

use crate::routes;
use crate::upstream::Upstreams;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mercato_kit::client::{Dependency, Ended, Error as ClientError, Policy};
use mercato_kit::http::{RequestContext, CORRELATION_ID, REQUEST_ID, TRACEPARENT};
use mercato_kit::problem::Problem;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Requests in flight to one service through one gateway before it answers 503 instead of
/// queueing: well above what a healthy service has in flight, low enough that a stuck one
/// cannot take every connection of the gateway with it. Held until the answer's head arrives,
/// so long-lived streams (SSE) do not hold a place.
pub const BULKHEAD: usize = 512;

/// A service as the gateway calls it: the kit's breaker defaults (50% of at least 10 calls in
/// 10 s, reset after 10 s); retries are the proxy's own (see the module doc).
pub fn policy(timeout: Duration) -> Policy {
    let mut policy = Policy::new(timeout, Duration::from_secs(10));
    policy.retry.max_retries = 0;
    policy.bulkhead = BULKHEAD;
    policy
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Per-service request counts and latencies, beside the kit's per-route metrics (which see
/// only the gateway's one catch-all route).
#[derive(Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl ProxyMetrics {
    pub fn register(registry: &prometheus::Registry) -> anyhow::Result<ProxyMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_requests_total",
                "Requests forwarded, by upstream service and outcome (the status, or the failure)",
            ),
            // Not `service`: every series already carries the gateway's own `service` label.
            &["upstream", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_duration_seconds",
                "Time until the service's response headers arrived",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["upstream"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(ProxyMetrics { requests, seconds })
    }
}

pub struct Proxy {
    client: Client<HttpConnector, Body>,
    upstreams: Arc<Upstreams>,
    dependencies: HashMap<&'static str, Dependency>,
    timeout: Duration,
    body_limit: usize,
    metrics: ProxyMetrics,
}

impl Proxy {
    pub fn new(
        upstreams: Arc<Upstreams>,
        dependencies: HashMap<&'static str, Dependency>,
        timeout: Duration,
        body_limit: usize,
        metrics: ProxyMetrics,
    ) -> Proxy {
        let mut connector = HttpConnector::new();
        // A stopped service refuses at once; an unreachable host must not hold the caller
        // for the whole request timeout before we can say so.
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Proxy {
            client,
            upstreams,
            dependencies,
            timeout,
            body_limit,
            metrics,
        }
    }
}

/// Why a forwarded request got no answer from the service.
enum Failure {
    /// No connection could be made: the request never left.
    Connect(String),
    /// The answer did not start within the timeout.
    Timeout,
    /// The client's body was larger than allowed (found while streaming it).
    BodyTooLarge,
    /// The connection broke after the request was sent.
    Broken(String),
}

/// The catch-all handler: every routed path lands here.
pub async fn forward(
    State(proxy): State<Arc<Proxy>>,
    ctx: RequestContext,
    req: Request,
) -> Response {
    let Some(route) = routes::route(req.uri().path()) else {
        return Problem::not_found("no such route").into_response();
    };
    let (Some(upstream), Some(dependency)) = (
        proxy.upstreams.get(route.service),
        proxy.dependencies.get(route.service),
    ) else {
        return unavailable(route.service, "is not configured on this gateway");
    };
    if let Some(len) = content_length(req.headers()) {
        if len > proxy.body_limit as u64 {
            return too_large(proxy.body_limit);
        }
    }
    let (parts, body) = req.into_parts();
    // Only a request without a body can be sent again to another replica: a streamed body
    // is gone once sent.
    let bodyless = content_length(&parts.headers) == Some(0)
        || (!parts.headers.contains_key(header::TRANSFER_ENCODING)
            && content_length(&parts.headers).is_none()
            && matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
            ));
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let headers = outgoing_headers(&parts.headers, &ctx, peer);
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut body = Some(Body::new(http_body_util::Limited::new(
        body,
        proxy.body_limit,
    )));
    // A replica that is draining, or cut off from its own database, says so with a 502/503/504;
    // a request that may be sent twice and has no body to replay then goes to the next one.
    let repeatable = bodyless && mercato_kit::client::is_idempotent(&parts.method, &parts.headers);
    let started = Instant::now();
    let mut last_failure = None;
    let candidates = upstream.candidates();
    let replicas = candidates.len();
    for (attempt, replica) in candidates.into_iter().enumerate() {
        let admitted = match dependency.admit_call() {
            Ok(admitted) => admitted,
            Err(e) if attempt == 0 => return refused(route.service, &e, dependency),
            // The breaker opened meanwhile: the connect failure already seen is the answer.
            Err(_) => break,
        };
        if attempt > 0 {
            dependency.count_retry();
        }
        let uri: Uri = match format!("{}{}{}", replica.base, route.path, query).parse() {
            Ok(u) => u,
            Err(e) => return Problem::internal(&format!("bad upstream URI: {e}")).into_response(),
        };
        // This hop's span, a child of the gateway's request span; the service continues it.
        let span = mercato_kit::telemetry::client_span(
            route.service,
            parts.method.as_str(),
            &uri.to_string(),
            Some(&ctx.traceparent),
        );
        let mut out = axum::http::Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(axum::http::Version::HTTP_11);
        if let Some(h) = out.headers_mut() {
            *h = headers.clone();
            if let Some(v) = mercato_kit::telemetry::traceparent(&span)
                .and_then(|tp| HeaderValue::from_str(&tp).ok())
            {
                h.insert(TRACEPARENT, v);
            }
        }
        let out = match out.body(body.take().unwrap_or_else(Body::empty)) {
            Ok(r) => r,
            Err(e) => return Problem::internal(&e).into_response(),
        };
        let sent = tokio::time::timeout(proxy.timeout, proxy.client.request(out))
            .instrument(span.clone())
            .await;
        let answered = sent.as_ref().ok().and_then(|r| r.as_ref().ok());
        mercato_kit::telemetry::record_status(
            &span,
            answered.map(|r| r.status().as_u16()),
            answered.is_none().then_some("no_answer"),
        );
        let failure = match sent {
            Ok(Ok(res)) => {
                replica.restore();
                let status = res.status();
                // A service shedding work on purpose is healthy: its breaker must not open
                // and cut off the routes that still work (reads, other customers' orders).
                admitted.finish(
                    if mercato_kit::problem::is_overloaded(status, res.headers()) {
                        Ended::Overloaded
                    } else {
                        Ended::Answered(status)
                    },
                );
                proxy
                    .metrics
                    .requests
                    .with_label_values(&[route.service, status.as_str()])
                    .inc();
                proxy
                    .metrics
                    .seconds
                    .with_label_values(&[route.service])
                    .observe(started.elapsed().as_secs_f64());
                let unwell = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                if unwell && repeatable && attempt + 1 < replicas {
                    continue;
                }
                return incoming(res);
            }
            Ok(Err(e)) if e.is_connect() => {
                replica.bench();
                admitted.finish(Ended::Connect);
                Failure::Connect(error_chain(&e))
            }
            // The client's fault, not the service's: the breaker does not count it.
            Ok(Err(e)) if is_length_limit(&e) => Failure::BodyTooLarge,
            Ok(Err(e)) => {
                admitted.finish(Ended::Transport);
                Failure::Broken(error_chain(&e))
            }
            Err(_) => {
                admitted.finish(Ended::Timeout);
                Failure::Timeout
            }
        };
        let retry = matches!(failure, Failure::Connect(_)) && bodyless;
        last_failure = Some(failure);
        if !retry {
            break;
        }
    }
    let service = route.service;
    let (outcome, res) = match last_failure {
        Some(Failure::BodyTooLarge) => ("body_too_large", too_large(proxy.body_limit)),
        Some(Failure::Timeout) => (
            "timeout",
            Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "A service did not answer in time",
            )
            .with_detail(format!(
                "the {service} service did not answer within {} ms",
                proxy.timeout.as_millis()
            ))
            .with_extension("service", service.into())
            .into_response(),
        ),
        Some(Failure::Connect(e)) => {
            tracing::warn!(service, error = %e, "service unreachable");
            (
                "unreachable",
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "A service cannot be reached",
                )
                .with_detail(format!("the {service} service is not reachable"))
                .with_extension("service", service.into())
                .into_response(),
            )
        }
        Some(Failure::Broken(e)) => {
            tracing::warn!(service, error = %e, "service connection failed");
            (
                "broken",
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    "A service failed to answer",
                )
                .with_detail(format!("the connection to the {service} service failed"))
                .with_extension("service", service.into())
                .into_response(),
            )
        }
        None => (
            "unconfigured",
            unavailable(service, "has no replicas configured"),
        ),
    };
    proxy
        .metrics
        .requests
        .with_label_values(&[service, outcome])
        .inc();
    res
}

/// The kit's client would not let the call through: the breaker is open or the bulkhead full.
fn refused(service: &'static str, e: &ClientError, dependency: &Dependency) -> Response {
    let (outcome, why, retry_after) = match e {
        ClientError::BreakerOpen { .. } => (
            "breaker_open",
            "is failing: its circuit breaker is open, calls are refused until it is tried again",
            dependency.reset_after().as_secs().max(1),
        ),
        _ => ("bulkhead_full", "has too many requests in flight", 1),
    };
    unavailable_problem(service, why)
        .with_extension("reason", outcome.into())
        .with_retry_after(retry_after)
        .into_response()
}

fn unavailable(service: &str, why: &str) -> Response {
    unavailable_problem(service, why).into_response()
}

/// The 503 naming a service the gateway could not let a request reach.
fn unavailable_problem(service: &str, why: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_unavailable",
        "A service is not available",
    )
    .with_detail(format!("the {service} service {why}"))
    .with_extension("service", service.into())
}

fn too_large(limit: usize) -> Response {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "The request body is too large",
    )
    .with_detail(format!("the body may be at most {limit} bytes"))
    .into_response()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    parts.join(": ")
}

/// The client's headers minus the connection's own, plus who asked and under which trace.
/// `X-Forwarded-For` gets this hop's peer appended, as every proxy does; the service reads the
/// chain from the right, believing only its trusted proxies (see the kit's `client_ip`).
fn outgoing_headers(
    incoming: &HeaderMap,
    ctx: &RequestContext,
    peer: Option<std::net::IpAddr>,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(incoming.len() + 6);
    for (name, value) in incoming {
        if name == header::HOST || is_hop_by_hop(name, incoming) {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(REQUEST_ID, &ctx.request_id);
    set(CORRELATION_ID, &ctx.correlation_id);
    set(TRACEPARENT, &child_traceparent(&ctx.traceparent));
    if let Some(peer) = peer {
        let prior = incoming
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let chain = if prior.is_empty() {
            peer.to_string()
        } else {
            format!("{prior}, {peer}")
        };
        set(HeaderName::from_static("x-forwarded-for"), &chain);
    }
    if let Some(host) = incoming.get(header::HOST).and_then(|v| v.to_str().ok()) {
        set(HeaderName::from_static("x-forwarded-host"), host);
    }
    set(HeaderName::from_static("x-forwarded-proto"), "http");
    h
}

fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    if HOP_BY_HOP.contains(&name.as_str()) {
        return true;
    }
    // Headers the client listed in `Connection` are hop-by-hop too.
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// The gateway's hop as a child span of the caller's trace: same trace id, new parent id.
fn child_traceparent(tp: &str) -> String {
    let parts: Vec<&str> = tp.split('-').collect();
    if parts.len() != 4 {
        return tp.to_owned();
    }
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("{}-{}-{span}-{}", parts[0], parts[1], parts[3])
}

fn incoming(res: axum::http::Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = res.into_parts();
    let listed: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|n| is_hop_by_hop(n, &parts.headers))
        .cloned()
        .collect();
    for name in listed {
        parts.headers.remove(name);
    }
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext {
        RequestContext {
            request_id: "req-1".into(),
            correlation_id: "corr-1".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            client_ip: Some("203.0.113.9".parse().unwrap()),
        }
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_the_context_goes_on() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::HOST, "shop.example".parse().unwrap());
        incoming.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        incoming.insert("x-secret-hop", "1".parse().unwrap());
        incoming.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        incoming.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        incoming.insert("idempotency-key", "k1".parse().unwrap());
        let out = outgoing_headers(&incoming, &ctx(), Some("203.0.113.9".parse().unwrap()));
        for gone in ["host", "connection", "x-secret-hop", "transfer-encoding"] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(out[header::AUTHORIZATION], "Bearer abc");
        assert_eq!(out["idempotency-key"], "k1");
        assert_eq!(out[REQUEST_ID], "req-1");
        assert_eq!(out[CORRELATION_ID], "corr-1");
        assert_eq!(out["x-forwarded-for"], "203.0.113.9");
        assert_eq!(out["x-forwarded-host"], "shop.example");
        let tp = out[TRACEPARENT].to_str().unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(!tp.contains("b7ad6b7169203331"), "a new span id: {tp}");
    }

    #[test]
    fn the_forwarded_chain_gets_this_hops_peer() {
        let peer = Some("10.1.2.3".parse().unwrap());
        let out = outgoing_headers(&HeaderMap::new(), &ctx(), peer);
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        let mut incoming = HeaderMap::new();
        incoming.insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
        let out = outgoing_headers(&incoming, &ctx(), peer);
        assert_eq!(out["x-forwarded-for"], "198.51.100.1, 10.1.2.3");
    }
}
