//! The gateway (port 8080): the one address clients and the dashboard talk to.
//!
//! It forwards `/api/v1/...` to the service that owns the path ([`routes`]) over pooled
//! connections with streamed bodies ([`proxy`]), spreading requests over each service's
//! replicas ([`upstream`]). Before forwarding it applies the edge rules ([`edge`]): rate limits
//! per client address and per user ([`ratelimit`]; in Redis, shared by every replica, when
//! `MERCATO_REDIS_URL` is set: `mercato_kit::redis`), bad tokens refused (each service still
//! verifies good ones itself), body limits and security headers. It serves one OpenAPI document
//! merged from every service's and an offline API explorer ([`docs`]), the web app at `/`
//! ([`web`]) with its browser sessions ([`session`]), plus the kit's own `/health/*` and
//! `/metrics`. It keeps no data of its own.

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod console;
pub mod docs;
pub mod edge;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod session;
pub mod upstream;
pub mod web;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{any, get};
use axum::Router;
use mercato_kit::auth::Verifier;
use mercato_kit::config::{CommonConfig, Env};
use mercato_kit::health::HealthCheck;
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::Metrics;
use mercato_kit::redis::{self as kit_redis, RedisCheck, RedisConfig};
use ratelimit::{Limit, MemoryRateLimit, RateLimit, RedisRateLimit};
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use upstream::{Upstream, Upstreams};

pub const SERVICE: &str = "gateway";

/// The default port of each service behind the gateway.
fn default_port(service: &str) -> u16 {
    match service {
        "auth" => 8081,
        "catalog" => 8082,
        "order" => 8083,
        "payment" => 8084,
        "cart" => 8085,
        "inventory" => 8086,
        _ => 0,
    }
}

/// The gateway's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_GATEWAY_PORT`, 8080 by default.
    pub port: u16,
    /// `MERCATO_GATEWAY_OPS_PORT`, 8089 by default (0 when the gateway's own port is 0): the
    /// operator port, where `/metrics` is served instead of the public port.
    pub ops_port: u16,
    /// Each service's replicas: `MERCATO_<SERVICE>_URLS` (comma-separated), else
    /// `MERCATO_<SERVICE>_URL`, else the service's default port on 127.0.0.1.
    pub upstreams: Vec<(&'static str, Vec<String>)>,
    /// `MERCATO_GATEWAY_TIMEOUT_MS`: how long a service may take to start answering; by
    /// default one second more than the services' own request timeout, so a service's own
    /// timeout answer arrives first.
    pub upstream_timeout: Duration,
    /// `MERCATO_RATE_LIMIT_IP_PER_SEC` / `_IP_BURST` (100 / 200); a rate of 0 turns it off.
    pub ip_limit: Option<Limit>,
    /// `MERCATO_RATE_LIMIT_USER_PER_SEC` / `_USER_BURST` (50 / 100); a rate of 0 turns it off.
    pub user_limit: Option<Limit>,
    /// `MERCATO_CORS_ORIGINS`: origins allowed to call from a browser (comma-separated, or
    /// `*`); none by default (the dashboard is served from the same origin).
    pub cors_origins: Vec<String>,
    /// `MERCATO_REDIS_URL` / `MERCATO_REDIS_PREFIX`: rate-limit buckets shared by every
    /// replica; each replica's own when not set.
    pub redis: Option<RedisConfig>,
    /// `MERCATO_REFRESH_TOKEN_TTL_SECS` (30 days), read as the auth service reads it: how
    /// long the web app's session cookie is kept.
    pub session_max_age: Duration,
    /// `MERCATO_DEMO_CARDS` (set by `mercato up` when it runs psp-mock): the web app's checkout
    /// lists the test processor's card tokens.
    pub demo_cards: bool,
    /// `MERCATO_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS` (128): connections open at once from one
    /// client address; trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// `MERCATO_PSP_MOCK_URL` (set by `mercato up` when it runs psp-mock): the test card
    /// processor whose health and chaos the operator console shows; none by default.
    pub psp_mock_url: Option<String>,
}

/// Reads `MERCATO_<SERVICE>_URLS` or `_URL` as a list of base URLs.
fn replicas(env: &mut Env, service: &str, fallback: &str) -> Vec<String> {
    let prefix = format!("MERCATO_{}", service.to_ascii_uppercase().replace('-', "_"));
    let (var, raw) = match (
        env.raw(&format!("{prefix}_URLS")),
        env.raw(&format!("{prefix}_URL")),
    ) {
        (Some(list), _) => (format!("{prefix}_URLS"), list.to_owned()),
        (None, Some(one)) => (format!("{prefix}_URL"), one.to_owned()),
        (None, None) => (format!("{prefix}_URL"), fallback.to_owned()),
    };
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match reqwest::Url::parse(item) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none() =>
            {
                out.push(item.trim_end_matches('/').to_owned())
            }
            _ => {
                env.reject(&var, "comma-separated http(s)://host:port base URLs");
                return Vec::new();
            }
        }
    }
    if out.is_empty() {
        env.reject(&var, "at least one http(s)://host:port base URL");
    }
    out
}

/// A rate with its burst, twice the rate unless set: a client may save two seconds' worth.
fn limit(env: &mut Env, who: &str, rate: u64) -> Option<Limit> {
    let per_second = env.int(
        &format!("MERCATO_RATE_LIMIT_{who}_PER_SEC"),
        rate,
        0..=1_000_000,
    );
    let burst = env.int(
        &format!("MERCATO_RATE_LIMIT_{who}_BURST"),
        (2 * per_second).max(1),
        1..=10_000_000,
    );
    (per_second > 0).then_some(Limit {
        per_second: per_second as u32,
        burst: burst as u32,
    })
}

impl Config {
    /// Reads the configuration; bad values are recorded in `env` for its `check`.
    pub fn read(env: &mut Env) -> Config {
        let common = CommonConfig::read(env);
        let port = env.port("MERCATO_GATEWAY_PORT", 8080);
        let ops_port = env.port("MERCATO_GATEWAY_OPS_PORT", if port == 0 { 0 } else { 8089 });
        let upstreams = routes::UPSTREAMS
            .iter()
            .map(|&s| {
                let fallback = if s == "auth" {
                    common.auth_url.clone()
                } else {
                    format!("http://127.0.0.1:{}", default_port(s))
                };
                (s, replicas(env, s, &fallback))
            })
            .collect();
        let default_timeout = common.request_timeout.as_millis() as u64 + 1000;
        let upstream_timeout = Duration::from_millis(env.int(
            "MERCATO_GATEWAY_TIMEOUT_MS",
            default_timeout,
            10..=600_000,
        ));
        let ip_limit = limit(env, "IP", 100);
        let user_limit = limit(env, "USER", 50);
        let cors_origins = env
            .string("MERCATO_CORS_ORIGINS", "")
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>();
        if cors_origins
            .iter()
            .any(|o| o != "*" && HeaderValue::from_str(o).is_err())
        {
            env.reject("MERCATO_CORS_ORIGINS", "comma-separated origins, or *");
        }
        let redis = RedisConfig::read(env);
        let session_max_age = env.secs(
            "MERCATO_REFRESH_TOKEN_TTL_SECS",
            30 * 86_400,
            60..=365 * 86_400,
        );
        let max_connections_per_address = env.int(
            "MERCATO_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS",
            128,
            1..=1_000_000,
        ) as usize;
        Config {
            common,
            port,
            ops_port,
            upstreams,
            upstream_timeout,
            ip_limit,
            user_limit,
            cors_origins,
            redis,
            session_max_age,
            demo_cards: env.flag("MERCATO_DEMO_CARDS", false),
            max_connections_per_address,
            psp_mock_url: env
                .url("MERCATO_PSP_MOCK_URL", None, &["http", "https"])
                .map(|u| u.trim_end_matches('/').to_owned()),
        }
    }
}

/// One service as seen from the gateway: in `/health/deep`, never holding readiness (the
/// gateway keeps serving every other service while one is down).
struct UpstreamCheck {
    service: &'static str,
    bases: Vec<String>,
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl HealthCheck for UpstreamCheck {
    fn name(&self) -> &str {
        self.service
    }

    async fn check(&self) -> Result<(), String> {
        let answers = futures::future::join_all(self.bases.iter().map(|b| async move {
            match self.http.get(format!("{b}/health/ready")).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{b} answered {}", r.status())),
                Err(_) => Err(format!("{b} is unreachable")),
            }
        }))
        .await;
        let down: Vec<String> = answers.into_iter().filter_map(Result::err).collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} replicas not ready: {}",
                down.len(),
                self.bases.len(),
                down.join("; ")
            ))
        }
    }

    fn required(&self) -> bool {
        false
    }
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-correlation-id"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-correlation-id"),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("idempotency-replayed"),
                header::RETRY_AFTER,
                header::LOCATION,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Builds the gateway: routes, edge rules, docs, checks; not yet listening.
pub async fn build(config: &Config) -> anyhow::Result<Service> {
    let upstreams: Arc<Upstreams> = Arc::new(
        config
            .upstreams
            .iter()
            .map(|(s, bases)| (*s, Upstream::new(s, bases)))
            .collect(),
    );
    let metrics = Metrics::new(SERVICE);
    let proxy_metrics = proxy::ProxyMetrics::register(metrics.registry())?;
    let stopped = edge::rejected_counter(metrics.registry())?;
    let dependencies = config
        .upstreams
        .iter()
        .map(|(s, _)| {
            let dependency = mercato_kit::client::Dependency::new(
                s,
                proxy::policy(config.upstream_timeout),
                metrics.registry(),
            )?;
            Ok((*s, dependency))
        })
        .collect::<anyhow::Result<_>>()?;
    let proxy = Arc::new(proxy::Proxy::new(
        upstreams.clone(),
        dependencies,
        config.upstream_timeout,
        config.common.body_limit_bytes,
        proxy_metrics,
    ));
    let auth_base = config
        .upstreams
        .iter()
        .find(|(s, _)| *s == "auth")
        .and_then(|(_, b)| b.first().cloned())
        .unwrap_or_else(|| config.common.auth_url.clone());
    let fallbacks = ratelimit::fallback_counter(metrics.registry())?;
    let mut extra_checks: Vec<Arc<dyn HealthCheck>> = Vec::new();
    let limiter: Box<dyn Fn(Limit) -> Arc<dyn RateLimit>> = match &config.redis {
        None => Box::new(|l| Arc::new(MemoryRateLimit::new(l)) as Arc<dyn RateLimit>),
        Some(redis) => {
            let conn = kit_redis::connect(&redis.url)?;
            match tokio::time::timeout(Duration::from_secs(2), kit_redis::ping(&conn)).await {
                Ok(Ok(())) => {
                    tracing::info!(prefix = %redis.prefix, "rate limits are kept in Redis")
                }
                Ok(Err(e)) => tracing::warn!(error = %e,
                    "Redis is unreachable; rate limits are per replica until it is back"),
                Err(_) => tracing::warn!(
                    "Redis did not answer within 2 s; rate limits are per replica until it does"
                ),
            }
            extra_checks.push(Arc::new(RedisCheck {
                conn: conn.clone(),
                // Without Redis the limits fall back to each replica's memory: the shop stays open.
                required: false,
            }));
            let prefix = redis.prefix.clone();
            Box::new(move |l| {
                Arc::new(RedisRateLimit::new(
                    conn.clone(),
                    &prefix,
                    l,
                    fallbacks.clone(),
                )) as Arc<dyn RateLimit>
            })
        }
    };
    let per_ip = config.ip_limit.map(&limiter);
    let per_user = config.user_limit.map(&limiter);
    let limiters: Vec<Arc<dyn RateLimit>> = per_ip.iter().chain(per_user.iter()).cloned().collect();
    let verifier = Verifier::for_service(&auth_base, &config.common, SERVICE);
    let edge = edge::Edge {
        verifier: verifier.clone(),
        per_ip,
        per_user,
        stopped,
    };
    let sessions = session::Sessions {
        proxy: proxy.clone(),
        max_age: config.session_max_age,
    };
    let console = Arc::new(console::Console::new(
        upstreams.clone(),
        config.psp_mock_url.clone(),
        verifier.clone(),
        metrics.registry().clone(),
    ));
    let proxied = Router::new()
        .route("/api/v1/{*rest}", any(proxy::forward))
        .route("/.well-known/jwks.json", get(proxy::forward))
        .with_state(proxy)
        .merge(session::router(sessions))
        .merge(console::router(console))
        .layer(axum::middleware::from_fn_with_state(edge, edge::edge));
    // The security headers are added to every answer by the service skeleton below
    // (`with_response_headers`), unless a route set its own (the web app's pages set their CSP).
    let mut api = proxied
        .merge(docs::router(Arc::new(docs::Docs::new(upstreams.clone()))))
        .merge(web::router(web::AppConfig {
            demo_cards: config.demo_cards,
        }));
    if let Some(cors) = cors(&config.cors_origins) {
        api = api.layer(cors);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let checks: Vec<Arc<dyn HealthCheck>> = config
        .upstreams
        .iter()
        .map(|(s, bases)| {
            Arc::new(UpstreamCheck {
                service: s,
                bases: bases.clone(),
                http: http.clone(),
            }) as Arc<dyn HealthCheck>
        })
        .chain(extra_checks)
        .collect();
    // The gateway's own deadline sits just past the upstream timeout, so the answer that
    // names the slow service is the one the client gets.
    let mut settings = HttpSettings {
        request_timeout: config.upstream_timeout + Duration::from_secs(1),
        body_limit_bytes: config.common.body_limit_bytes,
        ..HttpSettings::from(&config.common)
    };
    // The front door is where strangers connect: one address may not hold every slot.
    settings.connections.max_per_address = Some(config.max_connections_per_address);
    let ops_addr = format!("{}:{}", config.common.host, config.ops_port);
    let ops_listener = std::net::TcpListener::bind(&ops_addr).map_err(|e| {
        anyhow::anyhow!(
            "the gateway's operator port cannot listen on {ops_addr}: {e} (set MERCATO_GATEWAY_OPS_PORT to move it)"
        )
    })?;
    Ok(Service::new(
        SERVICE,
        api,
        None::<utoipa::openapi::OpenApi>,
        metrics,
        checks,
        &settings,
    )
    .with_admin(verifier)
    .with_response_headers(edge::security_headers())
    .with_ops_port(ops_listener)?
    .with_task(move |stop| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => limiters.iter().for_each(|l| l.forget_idle()),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_defaults_lists_and_errors() {
        let c = Config::read(&mut Env::from_pairs::<&str, &str>([]));
        assert_eq!(c.port, 8080);
        let order = &c.upstreams.iter().find(|(s, _)| *s == "order").unwrap().1;
        assert_eq!(order, &["http://127.0.0.1:8083"]);
        assert_eq!(c.upstream_timeout, Duration::from_millis(16_000));
        assert_eq!(
            c.ip_limit,
            Some(Limit {
                per_second: 100,
                burst: 200
            })
        );
        assert!(c.cors_origins.is_empty());
        assert_eq!(c.redis, None);

        let mut env = Env::from_pairs([
            ("MERCATO_ORDER_URLS", "http://o1:8083, http://o2:8083/"),
            ("MERCATO_CART_URL", "http://cart:9000"),
            ("MERCATO_RATE_LIMIT_IP_PER_SEC", "0"),
            ("MERCATO_RATE_LIMIT_USER_PER_SEC", "5"),
            (
                "MERCATO_CORS_ORIGINS",
                "https://shop.example, http://localhost:5173",
            ),
        ]);
        let c = Config::read(&mut env);
        assert!(env.check().is_ok(), "{:?}", env.check());
        let get = |s: &str| c.upstreams.iter().find(|(n, _)| *n == s).unwrap().1.clone();
        assert_eq!(get("order"), ["http://o1:8083", "http://o2:8083"]);
        assert_eq!(get("cart"), ["http://cart:9000"]);
        assert_eq!(c.ip_limit, None);
        assert_eq!(
            c.user_limit,
            Some(Limit {
                per_second: 5,
                burst: 10
            })
        );
        assert_eq!(c.cors_origins.len(), 2);

        let mut env = Env::from_pairs([
            ("MERCATO_ORDER_URLS", "http://o1:8083,ftp://x"),
            ("MERCATO_CART_URL", "http://cart:9000/api"),
            ("MERCATO_RATE_LIMIT_IP_PER_SEC", "lots"),
        ]);
        Config::read(&mut env);
        assert_eq!(env.check().unwrap_err().0.len(), 3);
    }
}
