//! The cart service (port 8085): each customer's cart, kept for a while after its last change,
//! priced from the catalog as it is now, and checked out into an order.
//!
//! A cart is one document in a key-value store with expiry ([`store::KvStore`]: on the
//! service's SQL database by default, on Redis ([`redis_store`]) when `MERCATO_REDIS_URL` is
//! set), changed only by compare-and-set. The SQL database stays in either case for what must
//! commit with an effect: idempotency records, the event inbox, dead letters. Names and
//! prices come from the catalog service over HTTP ([`catalog`]) whenever a cart is shown;
//! checkout places the order through the order service over HTTP ([`orders`]) on the customer's
//! behalf, and the cart learns the order's fate from `order.paid` / `order.cancelled`
//! ([`events`]): paid, what was ordered leaves the cart; cancelled, the cart stays for another
//! try.
//!
//! Rooms: [`domain`] (rules, no I/O), [`store`] (the key-value store, and [`redis_store`] its
//! Redis flavour), [`service`] (use cases, shared by HTTP and events), [`http`] (routes),
//! [`events`] (the consumer), [`catalog`] and [`orders`] (the two services it calls).

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod catalog;
pub mod consumer;
pub mod domain;
pub mod http;
pub mod orders;
pub mod redis_store;
pub mod service;
pub mod store;

use mercato_kit::auth::Verifier;
use mercato_kit::client::Dependency;
use mercato_kit::config::{CommonConfig, Env};
use mercato_kit::db::{DatabaseUrl, Db, Migrations};
use mercato_kit::events::{Bus, Consumer};
use mercato_kit::health::{BusCheck, ConsumerCheck, DbCheck, HealthCheck};
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::{sample_every, Metrics, Probe, StorageProbe, SAMPLE_EVERY};
use mercato_kit::redis::{self as kit_redis, RedisCheck, RedisConfig};
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE: &str = "cart";

/// The most lines `MERCATO_CART_MAX_LINES` may allow: a cart is checked out as one order, and
/// an order takes at most 50 lines.
pub const MAX_LINES_LIMIT: u64 = 50;

/// The cart service's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_CART_PORT`, 8085 by default.
    pub port: u16,
    /// `MERCATO_CART_DATABASE_URL`, else the shared URL, else `cart.db` in the data dir.
    pub database_url: DatabaseUrl,
    /// `MERCATO_CATALOG_URL`: where names and prices are looked up.
    pub catalog_url: String,
    /// `MERCATO_ORDER_URL`: where checkout places orders.
    pub order_url: String,
    /// `MERCATO_CART_TTL_SECS`: how long a cart lives after its last change.
    pub ttl: Duration,
    /// `MERCATO_CART_MAX_LINES`: how many different products a cart holds.
    pub max_lines: usize,
    /// `MERCATO_REDIS_URL` / `MERCATO_REDIS_PREFIX`: carts on Redis instead of the database.
    pub redis: Option<RedisConfig>,
}

impl Config {
    /// Reads the configuration; bad values are recorded in `env` for its `check`.
    pub fn read(env: &mut Env) -> Config {
        let common = CommonConfig::read(env);
        let port = env.port("MERCATO_CART_PORT", 8085);
        let database_url = common.database_url_for(env, SERVICE);
        let catalog_url = env
            .url(
                "MERCATO_CATALOG_URL",
                Some("http://127.0.0.1:8082"),
                &["http", "https"],
            )
            .unwrap_or_default();
        let order_url = env
            .url(
                "MERCATO_ORDER_URL",
                Some("http://127.0.0.1:8083"),
                &["http", "https"],
            )
            .unwrap_or_default();
        let ttl = env.secs("MERCATO_CART_TTL_SECS", 3600, 1..=30 * 24 * 3600);
        let max_lines = env.int("MERCATO_CART_MAX_LINES", 50, 1..=MAX_LINES_LIMIT) as usize;
        let redis = RedisConfig::read(env);
        Config {
            common,
            port,
            database_url,
            catalog_url,
            order_url,
            ttl,
            max_lines,
            redis,
        }
    }

    /// How long a catalog lookup may take: a cart is shown by one round of lookups, so a slow
    /// catalog must answer 503 well before the request times out.
    pub fn catalog_timeout(&self) -> Duration {
        (self.common.request_timeout / 3).min(Duration::from_secs(3))
    }

    /// How long placing the order may take: most of the request's time (the order service
    /// itself waits up to its stock pre-check's deadline), but not all of it, so the customer
    /// hears "the order service" named rather than a bare timeout.
    pub fn order_timeout(&self) -> Duration {
        let t = self.common.request_timeout;
        t.saturating_sub(Duration::from_secs(1)).max(t / 2)
    }
}

/// The cart service's migrations; the kit's (idempotency, inbox, dead letters) are merged in by
/// [`Db::connect`].
pub fn migrations() -> Migrations {
    mercato_kit::service_migrations!()
}

/// Opens (and migrates) the cart service's database.
pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<Db> {
    Db::connect(database_url, SERVICE, pool_size, &migrations()).await
}

/// How the consumer waits out a Redis that is briefly unreachable before it parks an event:
/// about 16 s in all (the kit caps each wait at 5 s), enough for a failover or a restart, and
/// still within the bus's 30 s acknowledgement deadline.
const REDIS_EVENT_RETRIES: (u32, Duration) = (9, Duration::from_millis(100));

/// Builds the cart service: database ready (and Redis, when configured), routes, the event
/// consumer and the purges in place; not yet listening.
///
/// Redis being unreachable does not stop the build: carts answer 503 (`store_unavailable`)
/// and readiness fails until it is back.
pub async fn build(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<Service> {
    let common = &config.common;
    let db = connect(config.database_url.as_str(), common.db_pool_size).await?;
    let mut checks: Vec<Arc<dyn HealthCheck>> = vec![
        Arc::new(DbCheck(db.clone())),
        Arc::new(BusCheck(bus.clone())),
        Arc::new(ConsumerCheck::new(bus.clone(), SERVICE)),
    ];
    let store: Arc<dyn store::KvStore> = match &config.redis {
        None => Arc::new(store::SqlKv::new(db.clone())),
        Some(redis) => {
            let conn = kit_redis::connect(&redis.url)?;
            match tokio::time::timeout(Duration::from_secs(2), kit_redis::ping(&conn)).await {
                Ok(Ok(())) => tracing::info!(prefix = %redis.prefix, "carts are kept in Redis"),
                Ok(Err(e)) => tracing::warn!(error = %e,
                    "Redis is unreachable; carts answer 503 until it is back"),
                Err(_) => tracing::warn!(
                    "Redis did not answer within 2 s; carts answer 503 until it does"
                ),
            }
            checks.push(Arc::new(RedisCheck {
                conn: conn.clone(),
                // Carts live there: not ready without it.
                required: true,
            }));
            Arc::new(redis_store::RedisKv::new(conn, &redis.prefix))
        }
    };
    let metrics = Metrics::new(SERVICE);
    let probes: Vec<Arc<dyn Probe>> = vec![StorageProbe::new(
        &metrics,
        db.clone(),
        Some((bus.clone(), SERVICE)),
    )];
    let carts = Arc::new(service::Carts::new(
        db.clone(),
        store.clone(),
        Arc::new(catalog::CatalogClient::new(
            &config.catalog_url,
            Dependency::new(
                "catalog",
                catalog::policy(config.catalog_timeout()),
                metrics.registry(),
            )?,
        )),
        Arc::new(orders::OrderClient::new(
            &config.order_url,
            Dependency::new(
                "order",
                orders::policy(config.order_timeout()),
                metrics.registry(),
            )?,
        )),
        service::Settings {
            ttl: config.ttl,
            limits: domain::Limits {
                max_lines: config.max_lines,
            },
        },
    ));
    let mut consumer = Consumer::new(
        SERVICE,
        db.clone(),
        Arc::new(consumer::CartEvents::new(carts.clone())),
    )
    .with_test_hooks(config.common.test_hooks);
    if config.redis.is_some() {
        let (attempts, backoff) = REDIS_EVENT_RETRIES;
        consumer = consumer.with_retries(attempts, backoff);
    }
    let verifier = Verifier::for_service(&common.auth_url, common, SERVICE);
    let api = http::router(http::AppState {
        carts,
        verifier: verifier.clone(),
    });
    let (router, openapi) = mercato_kit::audit::with_event_admin(api, &db, &consumer, &verifier);
    let purge_db = db.clone();
    let mut service = Service::new(
        SERVICE,
        router,
        openapi,
        metrics,
        checks,
        &HttpSettings::from(common),
    )
    .with_admin(verifier)
    .with_task(move |stop| sample_every(probes, SAMPLE_EVERY, stop))
    .with_task(move |stop| consumer.run(bus, consumer::CONSUMED.to_vec(), stop))
    .with_task(move |stop| mercato_kit::idempotency::purge_task(purge_db, stop));
    // Redis drops expired carts itself.
    if config.redis.is_none() {
        service = service.with_task(move |stop| store::purge_task(store, stop));
    }
    Ok(service.closes(db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercato_kit::testing::{config_from, config_refusal};

    #[test]
    fn configuration_defaults_overrides_and_masking() {
        let c = config_from([("MERCATO_DATA_DIR", "/tmp/m")], Config::read);
        assert_eq!(c.port, 8085);
        assert_eq!(c.database_url.as_str(), "sqlite:///tmp/m/cart.db?mode=rwc");
        assert_eq!(c.catalog_url, "http://127.0.0.1:8082");
        assert_eq!(c.order_url, "http://127.0.0.1:8083");
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.max_lines, 50);
        assert_eq!(c.redis, None);
        assert_eq!(c.catalog_timeout(), Duration::from_secs(3));
        assert_eq!(c.order_timeout(), Duration::from_secs(14));

        let c = config_from(
            [
                ("MERCATO_CART_PORT", "9085"),
                ("MERCATO_CATALOG_URL", "http://catalog:8082/"),
                ("MERCATO_ORDER_URL", "https://order"),
                ("MERCATO_CART_TTL_SECS", "1"),
                ("MERCATO_CART_MAX_LINES", "3"),
                ("MERCATO_REQUEST_TIMEOUT_MS", "600"),
                ("MERCATO_CART_DATABASE_URL", "postgres://c:s3cret@db/cart"),
                ("MERCATO_REDIS_URL", "redis://:r3dis-pw@redis:6379"),
                ("MERCATO_REDIS_PREFIX", "shop1:"),
            ],
            Config::read,
        );
        assert_eq!(c.port, 9085);
        assert_eq!(c.catalog_url, "http://catalog:8082");
        assert_eq!(c.order_url, "https://order");
        assert_eq!(c.ttl, Duration::from_secs(1));
        assert_eq!(c.max_lines, 3);
        assert_eq!(c.catalog_timeout(), Duration::from_millis(200));
        assert_eq!(c.order_timeout(), Duration::from_millis(300));
        assert_eq!(c.redis.as_ref().unwrap().prefix, "shop1:");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("r3dis-pw"), "{c:?}");

        let err = config_refusal(
            [
                ("MERCATO_CART_PORT", "http"),
                ("MERCATO_CATALOG_URL", "catalog:8082"),
                ("MERCATO_ORDER_URL", "ftp://order"),
                ("MERCATO_CART_TTL_SECS", "0"),
                ("MERCATO_CART_MAX_LINES", "51"),
            ],
            Config::read,
        );
        for var in [
            "MERCATO_CART_PORT",
            "MERCATO_CATALOG_URL",
            "MERCATO_ORDER_URL",
            "MERCATO_CART_TTL_SECS",
            "MERCATO_CART_MAX_LINES",
        ] {
            assert!(err.contains(var), "{var}: {err}");
        }
    }
}
