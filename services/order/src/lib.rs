//! The order service (port 8083): orders, their items and their history, and the order's side
//! of the checkout saga.
//!
//! A customer places an order (priced from a read model of the catalog fed by `product.*`
//! events, stock pre-checked with inventory over HTTP); `order.created` starts the saga, and
//! the inventory and payment events move the order along. Every status change, whoever asks
//! for it, goes through the one state machine in [`domain::transition`], is compare-and-set in
//! the database with its history entry and its outbox events, and is announced to in-process
//! waiters through [`feed`] after it commits (waiters also re-read now and then, for changes
//! another replica committed).
//!
//! Rooms: [`domain`] (rules, no I/O), [`store`] (SQL), [`service`] (use cases, shared by HTTP
//! and events), [`events`] (contracts in and out), [`http`] (routes), [`inventory`] (the stock
//! pre-check client) and [`feed`] (status changes for `?wait` and the SSE stream).

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod consumer;
pub mod domain;
pub mod events;
pub mod feed;
pub mod http;
pub mod inventory;
pub mod service;
pub mod store;

use mercato_kit::auth::{ServiceTokens, Verifier};
use mercato_kit::client::Dependency;
use mercato_kit::config::{CommonConfig, Env};
use mercato_kit::db::{DatabaseUrl, Db, Migrations};
use mercato_kit::events::{Bus, Consumer, Relay};
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::Metrics;
use mercato_kit::metrics::{sample_every, Probe, StorageProbe, SAMPLE_EVERY};
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE: &str = "order";

/// The order service's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_ORDER_PORT`, 8083 by default.
    pub port: u16,
    /// `MERCATO_ORDER_DATABASE_URL`, else the shared URL, else `order.db` in the data dir.
    pub database_url: DatabaseUrl,
    /// `MERCATO_INVENTORY_URL`: where the stock pre-check goes.
    pub inventory_url: String,
    /// `MERCATO_INVENTORY_TIMEOUT_MS`: how long the pre-check may take before the order is
    /// accepted without it.
    pub inventory_timeout: Duration,
    /// `MERCATO_INVENTORY_BREAKER_RESET_MS`: how long the pre-check's circuit breaker stays
    /// open before trying inventory again.
    pub inventory_breaker_reset: Duration,
    /// `MERCATO_ORDER_BACKLOG_MAX` and `MERCATO_ORDER_BACKLOG_MAX_AGE_SECS`: how far behind
    /// the saga may fall before new orders are refused with 503 `overloaded`.
    pub backlog: domain::BacklogLimits,
}

impl Config {
    /// Reads the configuration; bad values are recorded in `env` for its `check`.
    pub fn read(env: &mut Env) -> Config {
        let common = CommonConfig::read(env);
        let port = env.port("MERCATO_ORDER_PORT", 8083);
        let database_url = common.database_url_for(env, SERVICE);
        let inventory_url = env
            .url(
                "MERCATO_INVENTORY_URL",
                Some("http://127.0.0.1:8086"),
                &["http", "https"],
            )
            .unwrap_or_default();
        let inventory_timeout =
            Duration::from_millis(env.int("MERCATO_INVENTORY_TIMEOUT_MS", 3000, 10..=60_000));
        let inventory_breaker_reset = Duration::from_millis(env.int(
            "MERCATO_INVENTORY_BREAKER_RESET_MS",
            10_000,
            100..=600_000,
        ));
        // Defaults: 10,000 orders is five seconds of the saga's target rate (2,000/s); a
        // minute PENDING is far past anything a healthy saga takes and far short of the
        // reservation TTL, so orders are refused long before the ones accepted would expire.
        let backlog = domain::BacklogLimits {
            max_orders: env.int("MERCATO_ORDER_BACKLOG_MAX", 10_000, 0..=100_000_000) as i64,
            max_age_secs: env.int("MERCATO_ORDER_BACKLOG_MAX_AGE_SECS", 60, 0..=86_400) as i64,
        };
        Config {
            common,
            port,
            database_url,
            inventory_url,
            inventory_timeout,
            inventory_breaker_reset,
            backlog,
        }
    }
}

/// The order service's migrations; the kit's are merged in by [`Db::connect`].
pub fn migrations() -> Migrations {
    mercato_kit::service_migrations!()
}

/// Opens (and migrates) the order service's database.
pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<Db> {
    Db::connect(database_url, SERVICE, pool_size, &migrations()).await
}

/// The longest a held answer (`?wait=`) may take: a little under the kit's request timeout,
/// which would otherwise answer 503 first.
pub fn max_wait(request_timeout: Duration) -> Duration {
    request_timeout
        .saturating_sub(Duration::from_millis(500))
        .min(Duration::from_secs(http::MAX_WAIT_SECS))
}

/// Builds the order service: database ready, routes, checks, the outbox relay, the event
/// consumer and the idempotency purge in place; not yet listening.
pub async fn build(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<Service> {
    let common = &config.common;
    let db = connect(config.database_url.as_str(), common.db_pool_size).await?;
    let relay = Relay::new(db.clone(), bus.clone());
    let tokens = common
        .service_secret
        .clone()
        .map(|secret| ServiceTokens::new(&common.auth_url, SERVICE, secret));
    let metrics = Metrics::new(SERVICE);
    let dependency = Dependency::new(
        "inventory",
        inventory::policy(config.inventory_timeout, config.inventory_breaker_reset),
        metrics.registry(),
    )?;
    let stock = inventory::InventoryClient::new(&config.inventory_url, dependency, tokens);
    let order_metrics = service::OrderMetrics::new(metrics.registry());
    let probes: Vec<Arc<dyn Probe>> = vec![
        StorageProbe::new(&metrics, db.clone(), Some((bus.clone(), SERVICE))),
        Arc::new(service::OrdersProbe {
            db: db.clone(),
            metrics: order_metrics.clone(),
        }),
    ];
    let admission = service::Admission::new(config.backlog, metrics.registry())?;
    let orders = service::Orders::counted(db.clone(), Arc::new(stock), order_metrics, admission);
    let handler = consumer::OrderEvents::new(orders.clone());
    let events_in =
        Consumer::new(SERVICE, db.clone(), Arc::new(handler)).with_test_hooks(common.test_hooks);
    let verifier = Verifier::for_service(&common.auth_url, common, SERVICE);
    let api = http::router(http::AppState {
        orders: orders.clone(),
        verifier: verifier.clone(),
        max_wait: max_wait(common.request_timeout),
    });
    let (router, openapi) = mercato_kit::audit::with_event_admin(api, &db, &events_in, &verifier);
    let purge_db = db.clone();
    Ok(Service::new(
        SERVICE,
        router,
        openapi,
        metrics,
        mercato_kit::health::on_the_bus(&db, &bus, SERVICE),
        &HttpSettings::from(common),
    )
    .with_admin(verifier)
    .with_task(move |stop| sample_every(probes, SAMPLE_EVERY, stop))
    .with_events(relay, events_in, bus, &consumer::CONSUMED)
    .with_task(move |stop| mercato_kit::idempotency::purge_task(purge_db, stop))
    .with_task(move |stop| orders.watch_backlog(stop))
    .closes(db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercato_kit::testing::{config_from, config_refusal};

    #[test]
    fn configuration_defaults_overrides_and_masking() {
        let c = config_from([("MERCATO_DATA_DIR", "/tmp/m")], Config::read);
        assert_eq!(c.port, 8083);
        assert_eq!(c.database_url.as_str(), "sqlite:///tmp/m/order.db?mode=rwc");
        assert_eq!(c.inventory_url, "http://127.0.0.1:8086");
        assert_eq!(c.inventory_timeout, Duration::from_secs(3));
        assert_eq!(
            c.backlog,
            domain::BacklogLimits {
                max_orders: 10_000,
                max_age_secs: 60
            }
        );

        let c = config_from(
            [
                ("MERCATO_ORDER_PORT", "9083"),
                ("MERCATO_INVENTORY_URL", "http://inventory:8086/"),
                ("MERCATO_INVENTORY_TIMEOUT_MS", "750"),
                ("MERCATO_ORDER_DATABASE_URL", "postgres://o:s3cret@db/order"),
            ],
            Config::read,
        );
        assert_eq!(c.port, 9083);
        assert_eq!(c.inventory_url, "http://inventory:8086");
        assert_eq!(c.inventory_timeout, Duration::from_millis(750));
        assert!(!format!("{c:?}").contains("s3cret"));

        let err = config_refusal(
            [
                ("MERCATO_ORDER_PORT", "http"),
                ("MERCATO_INVENTORY_URL", "inventory:8086"),
                ("MERCATO_INVENTORY_TIMEOUT_MS", "0"),
            ],
            Config::read,
        );
        for var in [
            "MERCATO_ORDER_PORT",
            "MERCATO_INVENTORY_URL",
            "MERCATO_INVENTORY_TIMEOUT_MS",
        ] {
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn a_held_answer_beats_the_request_timeout() {
        assert_eq!(
            max_wait(Duration::from_secs(15)),
            Duration::from_millis(14_500)
        );
        assert_eq!(max_wait(Duration::from_secs(120)), Duration::from_secs(30));
    }
}
