//! `/health/live` (the process answers), `/health/ready` (every dependency answers; 503 while
//! one does not or while draining) and `/health/deep` (each dependency with status and latency).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One dependency a service needs to do its work.
#[async_trait::async_trait]
pub trait HealthCheck: Send + Sync {
    fn name(&self) -> &str;
    async fn check(&self) -> Result<(), String>;
    /// Whether readiness waits for this dependency. A gateway that lists every upstream in
    /// `/health/deep` must stay ready while one of them is down, or one failing service would
    /// take the whole front door out of its load balancer.
    fn required(&self) -> bool {
        true
    }
}

/// The service's own database.
pub struct DbCheck(pub crate::db::Db);

#[async_trait::async_trait]
impl HealthCheck for DbCheck {
    fn name(&self) -> &str {
        "database"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The event backend the service publishes to and consumes from (NATS when configured, the
/// embedded log otherwise): without it no event leaves and none arrives.
pub struct BusCheck(pub Arc<dyn crate::events::Bus>);

#[async_trait::async_trait]
impl HealthCheck for BusCheck {
    fn name(&self) -> &str {
        "event_bus"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| format!("{e:#}"))
    }
}

/// The readiness checks of a service on the saga: its database, the bus, and its consumer
/// `consumer` holding its partitions.
pub fn on_the_bus(
    db: &crate::db::Db,
    bus: &Arc<dyn crate::events::Bus>,
    consumer: &str,
) -> Vec<Arc<dyn HealthCheck>> {
    vec![
        Arc::new(DbCheck(db.clone())),
        Arc::new(BusCheck(bus.clone())),
        Arc::new(ConsumerCheck::new(bus.clone(), consumer)),
    ]
}

/// The service's event consumer: on a bus where it first joins a group (Kafka), not ready
/// until the group has given it its partitions, so a service is not ready while the events
/// it must react to cannot reach it yet.
pub struct ConsumerCheck {
    bus: Arc<dyn crate::events::Bus>,
    consumer: String,
}

impl ConsumerCheck {
    pub fn new(bus: Arc<dyn crate::events::Bus>, consumer: &str) -> ConsumerCheck {
        ConsumerCheck {
            bus,
            consumer: consumer.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl HealthCheck for ConsumerCheck {
    fn name(&self) -> &str {
        "event_consumer"
    }
    async fn check(&self) -> Result<(), String> {
        match self.bus.receiving(&self.consumer).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the {} consumer has not been given its partitions yet (joining its group)",
                self.consumer
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

#[derive(Serialize)]
struct CheckResult {
    name: String,
    status: &'static str,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Clone)]
struct HealthState {
    service: &'static str,
    checks: Arc<Vec<Arc<dyn HealthCheck>>>,
    draining: Arc<AtomicBool>,
}

pub fn router(
    service: &'static str,
    checks: Vec<Arc<dyn HealthCheck>>,
    draining: Arc<AtomicBool>,
) -> Router {
    let state = HealthState {
        service,
        checks: Arc::new(checks),
        draining,
    };
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/deep", get(deep))
        .with_state(state)
}

async fn live(State(s): State<HealthState>) -> Response {
    axum::Json(serde_json::json!({"status": "ok", "service": s.service})).into_response()
}

async fn run_checks(s: &HealthState, required_only: bool) -> Vec<CheckResult> {
    let wanted = s.checks.iter().filter(|c| !required_only || c.required());
    let futs = wanted.map(|c| async move {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), c.check())
            .await
            .unwrap_or_else(|_| Err("no answer within 2 s".into()));
        CheckResult {
            name: c.name().to_owned(),
            status: if r.is_ok() { "up" } else { "down" },
            latency_ms: (t.elapsed().as_secs_f64() * 1e5).round() / 100.0,
            error: r.err(),
        }
    });
    futures::future::join_all(futs).await
}

async fn ready(State(s): State<HealthState>) -> Response {
    let results = run_checks(&s, true).await;
    let draining = s.draining.load(Ordering::SeqCst);
    let ok = !draining && results.iter().all(|r| r.error.is_none());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let label = if draining {
        "draining"
    } else if ok {
        "ready"
    } else {
        "not_ready"
    };
    (
        status,
        axum::Json(serde_json::json!({"status": label, "service": s.service, "checks": results})),
    )
        .into_response()
}

async fn deep(State(s): State<HealthState>) -> Response {
    let results = run_checks(&s, false).await;
    let ok = results.iter().all(|r| r.error.is_none());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({"status": if ok { "up" } else { "degraded" }, "service": s.service, "dependencies": results})),
    )
        .into_response()
}
