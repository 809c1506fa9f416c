//! Prometheus metrics. Each service has its own registry (several services share a process in
//! embedded mode, and each `/metrics` must show only its own), labelled with the service name.
//!
//! Besides the HTTP metrics every service has, this holds the ones read from storage rather
//! than counted in memory ([`Probe`], sampled every few seconds by [`sample_every`]): what is
//! in the database is right after a restart and the same on every replica, where a counter in
//! one process would not be. Replicas of a service all report it; dashboards take the `max`.

use crate::db::Db;
use crate::events::Bus;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    idempotency_replays: IntCounter,
    idempotency_conflicts: IntCounterVec,
}

/// Registers a metric in `registry` and hands it back (the registries are per service, so a
/// second registration of a name is a bug).
#[expect(
    clippy::expect_used,
    reason = "fixed metric names, one registry per service: a failure is a bug every test would hit"
)]
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric registered once per service");
    metric
}

impl Metrics {
    #[expect(
        clippy::expect_used,
        reason = "fixed metric names, one registry per service: a failure is a bug every test would hit"
    )]
    pub fn new(service: &str) -> Metrics {
        let labels = HashMap::from([("service".to_owned(), service.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("a valid registry");
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route template, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency in seconds",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("register once");
        registry
            .register(Box::new(duration.clone()))
            .expect("register once");
        let idempotency_replays = register(
            &registry,
            IntCounter::new(
                "idempotency_replays_total",
                "Requests answered from a stored Idempotency-Key record",
            ),
        );
        let idempotency_conflicts = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "idempotency_conflicts_total",
                    "Requests refused over their Idempotency-Key: key_reused (another body, 422), in_flight (409)",
                ),
                &["reason"],
            ),
        );
        Metrics {
            registry,
            requests,
            duration,
            idempotency_replays,
            idempotency_conflicts,
        }
    }

    /// Counts what the idempotency store did for this response (the kit's handlers mark a
    /// replay with `Idempotency-Replayed` and a refusal with its problem code).
    pub fn observe_idempotency(&self, res: &axum::response::Response) {
        if res
            .headers()
            .contains_key(crate::context::IDEMPOTENCY_REPLAYED)
        {
            self.idempotency_replays.inc();
        }
        match res
            .extensions()
            .get::<crate::problem::ProblemCode>()
            .map(|c| c.0.as_ref())
        {
            Some("idempotency_key_reused") => self
                .idempotency_conflicts
                .with_label_values(&["key_reused"])
                .inc(),
            Some("idempotency_key_in_use") => self
                .idempotency_conflicts
                .with_label_values(&["in_flight"])
                .inc(),
            _ => {}
        }
    }

    /// The registry, for a service to add its own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Gauges a service reads from its storage (see the module doc).
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    async fn sample(&self) -> anyhow::Result<()>;
}

/// How often probes read: well under a scrape interval, cheap enough for an indexed count.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Runs every probe now and then every `every`, until `stop`. A probe that fails (the database
/// is down) keeps its last values; readiness tells that story.
pub async fn sample_every(probes: Vec<Arc<dyn Probe>>, every: Duration, stop: CancellationToken) {
    loop {
        for p in &probes {
            if let Err(e) = p.sample().await {
                tracing::debug!(error = %format!("{e:#}"), "a metrics probe failed");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The kit's own storage gauges: the outbox backlog, open dead letters, the consumer's lag on
/// the bus, and the database pools.
pub struct StorageProbe {
    db: Db,
    consumer: Option<(Arc<dyn Bus>, String)>,
    outbox_pending: IntGauge,
    outbox_oldest: prometheus::Gauge,
    dead_letters: IntGauge,
    lag: IntGaugeVec,
    partition_lag: IntGaugeVec,
    pool: IntGaugeVec,
    pool_max: IntGaugeVec,
}

impl StorageProbe {
    /// For a service with `db`; with `consumer`, also that consumer's lag on `bus`.
    pub fn new(metrics: &Metrics, db: Db, consumer: Option<(Arc<dyn Bus>, &str)>) -> Arc<Self> {
        let r = metrics.registry();
        Arc::new(StorageProbe {
            db,
            consumer: consumer.map(|(b, c)| (b, c.to_owned())),
            outbox_pending: register(
                r,
                IntGauge::new(
                    "outbox_pending_events",
                    "Outbox rows committed and not yet published to the bus",
                ),
            ),
            outbox_oldest: register(
                r,
                prometheus::Gauge::new(
                    "outbox_oldest_pending_age_seconds",
                    "Age of the oldest outbox row not yet published (0 when none)",
                ),
            ),
            dead_letters: register(
                r,
                IntGauge::new(
                    "dead_letters_open",
                    "Events parked in dead_letters and not replayed",
                ),
            ),
            lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "event_consumer_lag",
                        "Events on the bus this service's consumer has not finished",
                    ),
                    &["consumer"],
                ),
            ),
            partition_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "event_consumer_partition_lag",
                        "Events of one partition this service's consumer group has not committed (Kafka)",
                    ),
                    &["consumer", "topic", "partition"],
                ),
            ),
            pool: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "db_pool_connections",
                        "Database connections by pool (write, read) and state (in_use, idle)",
                    ),
                    &["pool", "state"],
                ),
            ),
            pool_max: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "db_pool_max_connections",
                        "The most connections a pool opens",
                    ),
                    &["pool"],
                ),
            ),
        })
    }
}

#[async_trait::async_trait]
impl Probe for StorageProbe {
    async fn sample(&self) -> anyhow::Result<()> {
        for (name, pool) in [("write", self.db.writer()), ("read", self.db.reader())] {
            let stats = pool.stats();
            self.pool
                .with_label_values(&[name, "in_use"])
                .set(i64::from(stats.open.saturating_sub(stats.idle)));
            self.pool
                .with_label_values(&[name, "idle"])
                .set(i64::from(stats.idle));
            self.pool_max
                .with_label_values(&[name])
                .set(i64::from(stats.max));
        }
        if let Some((bus, consumer)) = &self.consumer {
            if let Some(n) = bus.lag(consumer).await? {
                self.lag.with_label_values(&[consumer]).set(n);
            }
            for (topic, partition, n) in bus.lag_by_partition(consumer).await?.unwrap_or_default() {
                self.partition_lag
                    .with_label_values(&[consumer, &topic, &partition.to_string()])
                    .set(n);
            }
        }
        let row = crate::db::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(self.db.reader())
        .await?;
        self.outbox_pending.set(row.try_get("n")?);
        let oldest: Option<i64> = row.try_get("oldest")?;
        self.outbox_oldest.set(
            oldest
                .map(|t| ((crate::time::now_us() - t).max(0)) as f64 / 1e6)
                .unwrap_or(0.0),
        );
        let row =
            crate::db::query("SELECT COUNT(*) AS n FROM dead_letters WHERE replayed_at IS NULL")
                .fetch_one(self.db.reader())
                .await?;
        self.dead_letters.set(row.try_get("n")?);
        Ok(())
    }
}
