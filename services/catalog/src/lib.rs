//! The catalog service: products, categories, prices and search.
//!
//! Anyone may browse and search; sellers manage their own products and admins any. Products are
//! never deleted, only taken off sale, because orders and carts keep pointing at them. Every
//! change is announced as a `product.*` event through the outbox (see [`events`]).
//!
//! The rooms are the same as in every service: [`domain`] (rules, no I/O), [`store`] (SQL and
//! the operations that change products), `http` (the routes), [`events`] (what is published)
//! and [`seed`] (the demo catalog). `build` puts them together; the `mercato` binary and the
//! tests run the result.

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod domain;
pub mod events;
mod http;
pub mod seed;
pub mod service;
pub mod store;

use mercato_kit::auth::Verifier;
use mercato_kit::config::{CommonConfig, Env};
use mercato_kit::db::{DatabaseUrl, Db, Migrations};
use mercato_kit::events::{Bus, Relay};
use mercato_kit::health::{BusCheck, DbCheck};
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::{sample_every, Metrics, Probe, StorageProbe, SAMPLE_EVERY};
use std::sync::Arc;

pub const SERVICE: &str = "catalog";

/// The catalog's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_CATALOG_PORT`, 8082 by default.
    pub port: u16,
    /// `MERCATO_CATALOG_DATABASE_URL`, else the shared URL, else `catalog.db` in the data dir.
    pub database_url: DatabaseUrl,
    /// `MERCATO_SEED_DEMO`: add the demo products at start (false by default).
    pub seed_demo: bool,
}

impl Config {
    /// Reads the configuration; bad values are recorded in `env` for its `check`.
    pub fn read(env: &mut Env) -> Config {
        let common = CommonConfig::read(env);
        let port = env.port("MERCATO_CATALOG_PORT", 8082);
        let database_url = common.database_url_for(env, SERVICE);
        let seed_demo = env.flag("MERCATO_SEED_DEMO", false);
        Config {
            common,
            port,
            database_url,
            seed_demo,
        }
    }
}

/// The catalog's migrations; the kit's are merged in by [`Db::connect`].
pub fn migrations() -> Migrations {
    mercato_kit::service_migrations!()
}

/// Opens (and migrates) the catalog's database.
pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<Db> {
    Db::connect(database_url, SERVICE, pool_size, &migrations()).await
}

/// Builds the catalog service: database ready (and seeded when asked), routes, checks and
/// background work (the outbox relay to `bus`) in place, not yet listening.
pub async fn build(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<Service> {
    let db = connect(config.database_url.as_str(), config.common.db_pool_size).await?;
    if config.seed_demo {
        let added = seed::seed_demo(&db).await?;
        tracing::info!(service = SERVICE, added, "demo catalog seeded");
    }
    let verifier = Verifier::for_service(&config.common.auth_url, &config.common, "catalog");
    let api = http::router(db.clone(), verifier.clone());
    let (router, openapi) = mercato_kit::audit::with_events_audit(api, &db, &verifier);
    let purge_db = db.clone();
    let relay = Relay::new(db.clone(), bus.clone());
    let metrics = Metrics::new(SERVICE);
    let probes: Vec<Arc<dyn Probe>> = vec![StorageProbe::new(&metrics, db.clone(), None)];
    Ok(Service::new(
        SERVICE,
        router,
        openapi,
        metrics,
        vec![Arc::new(DbCheck(db.clone())), Arc::new(BusCheck(bus))],
        &HttpSettings::from(&config.common),
    )
    .with_admin(verifier)
    .with_task(move |stop| sample_every(probes, SAMPLE_EVERY, stop))
    .with_task(move |stop| mercato_kit::idempotency::purge_task(purge_db, stop))
    .with_task(move |stop| relay.run(stop))
    .closes(db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[test]
    fn configuration_defaults_overrides_and_masking() {
        let mut env = Env::from_pairs([("MERCATO_DATA_DIR", "/tmp/m")]);
        let c = Config::read(&mut env);
        assert_eq!(c.port, 8082);
        assert!(!c.seed_demo);
        assert_eq!(
            c.database_url.as_str(),
            "sqlite:///tmp/m/catalog.db?mode=rwc"
        );
        assert!(env.check().is_ok());

        let mut env = Env::from_pairs([
            ("MERCATO_CATALOG_PORT", "9000"),
            ("MERCATO_SEED_DEMO", "true"),
            ("MERCATO_DATABASE_URL", "postgres://shared:hunter2@db/all"),
            (
                "MERCATO_CATALOG_DATABASE_URL",
                "postgres://cat:s3cret@db/catalog",
            ),
        ]);
        let c = Config::read(&mut env);
        assert_eq!((c.port, c.seed_demo), (9000, true));
        assert_eq!(c.database_url.as_str(), "postgres://cat:s3cret@db/catalog");
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("s3cret") && !printed.contains("hunter2"),
            "{printed}"
        );

        let mut env = Env::from_pairs([
            ("MERCATO_CATALOG_PORT", "http"),
            ("MERCATO_SEED_DEMO", "perhaps"),
        ]);
        Config::read(&mut env);
        assert_eq!(env.check().unwrap_err().0.len(), 2);
    }

    async fn get(service: &Service, uri: &str) -> (StatusCode, serde_json::Value) {
        let res = service
            .router()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn build_seeds_once_and_serves() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Env::from_pairs([
            ("MERCATO_DATA_DIR", dir.path().to_str().unwrap()),
            ("MERCATO_SEED_DEMO", "true"),
        ]);
        let config = Config::read(&mut env);
        let bus_url = format!("sqlite://{}/bus.db?mode=rwc", dir.path().display());
        let bus: Arc<dyn Bus> = Arc::new(
            mercato_kit::events::EmbeddedBus::open(&bus_url)
                .await
                .unwrap(),
        );
        for _start in 0..2 {
            let service = build(&config, bus.clone()).await.unwrap();
            let (status, page) = get(&service, "/api/v1/products").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(page["items"].as_array().unwrap().len(), 20);
            assert_eq!(page["items"][0]["sku"], "ELEC-0001");
            let (status, _) = get(&service, "/health/ready").await;
            assert_eq!(status, StatusCode::OK);
        }
        let db = connect(config.database_url.as_str(), 1).await.unwrap();
        let outbox = mercato_kit::events::pending(db.reader(), 1000)
            .await
            .unwrap();
        assert_eq!(outbox.len(), 73, "a second start seeds nothing");
    }
}
