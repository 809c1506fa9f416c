//! The inventory service (port 8086): stock per product, reservations of orders with expiry,
//! and a ledger of every stock movement.
//!
//! It keeps invariant 1 of ARCHITECTURE.md: for every product, on_hand = initial + restocks and
//! adjustments − committed, reserved = the units of active and held reservations, and
//! available = on_hand − reserved ≥ 0, under any concurrency (every change is one conditional
//! update; see `store`). In the checkout saga it reserves on `order.created` (all lines or
//! none), holds on `order.paid`, commits on `order.fulfilled`, releases on `order.cancelled`,
//! and releases reservations that expire unpaid (see `sweeper`).
//!
//! Rooms: [`domain`] (rules), [`store`] (SQL), [`service`] (use cases), [`events`] (the saga's
//! events in and out), [`sweeper`] (expiry), [`http`] (routes), [`catalog`] (asking the catalog
//! about a product whose event has not arrived yet). [`build`] puts them together;
//! the `mercato` binary and the tests run the result.

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod catalog;
pub mod consumer;
pub mod domain;
pub mod events;
pub mod http;
pub mod service;
pub mod store;
pub mod sweeper;

use mercato_kit::auth::Verifier;
use mercato_kit::client::Dependency;
use mercato_kit::config::{CommonConfig, Env};
use mercato_kit::db::{DatabaseUrl, Db, Migrations};
use mercato_kit::events::{Bus, Consumer, Relay};
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::{sample_every, Metrics, Probe, StorageProbe, SAMPLE_EVERY};
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE: &str = "inventory";

/// The inventory's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_INVENTORY_PORT`, 8086 by default.
    pub port: u16,
    /// `MERCATO_INVENTORY_DATABASE_URL`, else the shared URL, else `inventory.db` in the data
    /// directory.
    pub database_url: DatabaseUrl,
    /// `MERCATO_RESERVATION_TTL_SECS` (1 to 86400, default 1800): how long an unpaid
    /// reservation holds its stock.
    pub reservation_ttl: Duration,
    /// `MERCATO_SEED_DEMO` (default false): products of the demo catalog start with their demo
    /// stock when their stock row is created.
    pub seed_demo: bool,
    /// `MERCATO_CATALOG_URL` (default `http://127.0.0.1:8082`): asked who owns a product whose
    /// event has not arrived yet (see [`catalog`]).
    pub catalog_url: String,
}

impl Config {
    /// Reads the configuration; bad values are recorded in `env` for its `check`.
    pub fn read(env: &mut Env) -> Config {
        let common = CommonConfig::read(env);
        Config {
            port: env.port("MERCATO_INVENTORY_PORT", 8086),
            database_url: common.database_url_for(env, SERVICE),
            reservation_ttl: env.secs(
                "MERCATO_RESERVATION_TTL_SECS",
                1800,
                1..=domain::TTL_MAX_SECS,
            ),
            seed_demo: env.flag("MERCATO_SEED_DEMO", false),
            catalog_url: env
                .string("MERCATO_CATALOG_URL", "http://127.0.0.1:8082")
                .trim_end_matches('/')
                .to_owned(),
            common,
        }
    }

    pub fn settings(&self) -> service::Settings {
        service::Settings {
            reservation_ttl: self.reservation_ttl,
            seed_demo: self.seed_demo,
        }
    }
}

/// The inventory's migrations; the kit's are merged in by [`Db::connect`].
pub fn migrations() -> Migrations {
    mercato_kit::service_migrations!()
}

/// Opens (and migrates) the inventory's database.
pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<Db> {
    Db::connect(database_url, SERVICE, pool_size, &migrations()).await
}

/// Builds the inventory service: database ready, routes, checks, and the background work
/// (outbox relay, event consumer, expiry sweeper, idempotency purge) in place, not yet
/// listening.
pub async fn build(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<Service> {
    let common = &config.common;
    let db = connect(config.database_url.as_str(), common.db_pool_size).await?;
    let metrics = Metrics::new(SERVICE);
    let inv_metrics = service::InventoryMetrics::new(metrics.registry());
    let probes: Vec<Arc<dyn Probe>> = vec![
        StorageProbe::new(
            &metrics,
            db.clone(),
            Some((bus.clone(), consumer::CONSUMER)),
        ),
        Arc::new(service::InventoryProbe {
            db: db.clone(),
            metrics: inv_metrics.clone(),
        }),
    ];
    let inv = Arc::new(
        service::Inventory::new(
            db.clone(),
            config.settings(),
            service::SweepSignal::default(),
        )
        .counted(inv_metrics),
    );
    let relay = Relay::new(db.clone(), bus.clone());
    let events_in = Consumer::new(
        consumer::CONSUMER,
        db.clone(),
        Arc::new(consumer::Handler::new(inv.clone())),
    )
    .with_test_hooks(common.test_hooks);
    let verifier = Verifier::for_service(&common.auth_url, common, SERVICE);
    let catalog = Arc::new(catalog::CatalogClient::new(
        &config.catalog_url,
        Dependency::new(
            "catalog",
            catalog::policy(Duration::from_secs(3)),
            metrics.registry(),
        )?,
    ));
    let api = http::router(http::AppState {
        inv: inv.clone(),
        verifier: verifier.clone(),
        catalog,
    });
    let (router, openapi) = mercato_kit::audit::with_event_admin(api, &db, &events_in, &verifier);
    let purge_db = db.clone();
    Ok(Service::new(
        SERVICE,
        router,
        openapi,
        metrics,
        mercato_kit::health::on_the_bus(&db, &bus, consumer::CONSUMER),
        &HttpSettings::from(common),
    )
    .with_admin(verifier)
    .with_task(move |stop| sample_every(probes, SAMPLE_EVERY, stop))
    .with_events(relay, events_in, bus, &consumer::CONSUMED)
    .with_task(move |stop| sweeper::run(inv, stop))
    .with_task(move |stop| mercato_kit::idempotency::purge_task(purge_db, stop))
    .closes(db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercato_kit::testing::{config_from, config_refusal};

    #[test]
    fn configuration_defaults_ranges_and_masking() {
        let c = config_from([("MERCATO_DATA_DIR", "/tmp/m")], Config::read);
        assert_eq!(c.port, 8086);
        assert_eq!(c.reservation_ttl, Duration::from_secs(1800));
        assert!(!c.seed_demo);
        assert_eq!(
            c.database_url.as_str(),
            "sqlite:///tmp/m/inventory.db?mode=rwc"
        );

        let c = config_from(
            [
                ("MERCATO_INVENTORY_PORT", "9086"),
                ("MERCATO_RESERVATION_TTL_SECS", "60"),
                ("MERCATO_SEED_DEMO", "true"),
                (
                    "MERCATO_INVENTORY_DATABASE_URL",
                    "postgres://inv:s3cret@db/inv",
                ),
            ],
            Config::read,
        );
        assert_eq!(
            (c.port, c.reservation_ttl.as_secs(), c.seed_demo),
            (9086, 60, true)
        );
        assert!(!format!("{c:?}").contains("s3cret"));

        for bad in ["0", "86401", "soon"] {
            let err = config_refusal([("MERCATO_RESERVATION_TTL_SECS", bad)], Config::read);
            assert!(err.contains("MERCATO_RESERVATION_TTL_SECS"), "{err}");
        }
    }
}
