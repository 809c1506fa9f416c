//! The payment service (port 8084): the money side of the checkout saga.
//!
//! It opens a payment when an order's stock is reserved, authorizes it with the card processor
//! (psp-mock), captures it when the order is fulfilled, voids or refunds it when the order is
//! cancelled or refunded, and hears late outcomes through the processor's signed webhooks.
//!
//! Its central promise is that a customer is never charged twice. The processor is called only
//! by the processor worker ([`worker`]), outside any database transaction, with an idempotency
//! key that follows from the payment and the call alone; handlers merely queue the call in the
//! transaction that asks for it. A timeout, a crash or a redelivered event therefore leads to
//! the same call with the same key, which the processor answers once.
//!
//! Rooms: [`domain`] (states, amounts, backoff), [`store`] (SQL), [`service`] (use cases),
//! [`events`] (saga events in), [`worker`] and [`psp`] (the processor, out), `http` (routes and
//! the webhook).

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod consumer;
pub mod domain;
pub mod events;
mod http;
pub mod psp;
pub mod service;
pub mod store;
pub mod worker;

pub use http::PaymentView;

use mercato_kit::auth::Verifier;
use mercato_kit::config::{CommonConfig, Env, Secret};
use mercato_kit::db::{DatabaseUrl, Db, Migrations};
use mercato_kit::events::{Bus, Consumer, Relay};
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::{sample_every, Metrics, Probe, StorageProbe, SAMPLE_EVERY};
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE: &str = "payment";

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_PAYMENT_PORT`, 8084 by default.
    pub port: u16,
    /// `MERCATO_PAYMENT_DATABASE_URL`, else the shared URL, else `payment.db` in the data dir.
    pub database_url: DatabaseUrl,
    /// `MERCATO_PSP_URL`: the card processor, `http://127.0.0.1:8090` by default.
    pub psp_url: String,
    /// `MERCATO_PSP_WEBHOOK_SECRET` (required; `mercato up` generates one into the data
    /// directory and gives psp-mock the same): the key of the processor's webhook signatures.
    pub psp_webhook_secret: Secret,
    /// `MERCATO_PSP_TIMEOUT_MS`: how long one processor call may take, 5000 by default.
    pub psp_timeout: Duration,
    /// `MERCATO_PSP_RETRY_MAX_MS`: the longest wait between two attempts of a failing
    /// processor call (the backoff's cap), 60000 by default.
    pub psp_retry_max: Duration,
    /// `MERCATO_PROCESSOR_BREAKER_RESET_MS`: how long the processor's circuit breaker stays
    /// open (calls fail fast without reaching it) before trial calls go through, 30000 by
    /// default.
    pub processor_breaker_reset: Duration,
}

impl Config {
    pub fn read(env: &mut Env) -> Config {
        let common = CommonConfig::read(env);
        Config {
            port: env.port("MERCATO_PAYMENT_PORT", 8084),
            database_url: common.database_url_for(env, SERVICE),
            psp_url: env
                .url(
                    "MERCATO_PSP_URL",
                    Some("http://127.0.0.1:8090"),
                    &["http", "https"],
                )
                .unwrap_or_default(),
            psp_webhook_secret: env.required_secret(
                "MERCATO_PSP_WEBHOOK_SECRET",
                mercato_kit::contracts::webhook::SECRET_WHAT,
            ),
            psp_timeout: Duration::from_millis(env.int(
                "MERCATO_PSP_TIMEOUT_MS",
                5000,
                50..=120_000,
            )),
            psp_retry_max: Duration::from_millis(env.int(
                "MERCATO_PSP_RETRY_MAX_MS",
                60_000,
                10..=3_600_000,
            )),
            processor_breaker_reset: Duration::from_millis(env.int(
                "MERCATO_PROCESSOR_BREAKER_RESET_MS",
                30_000,
                100..=3_600_000,
            )),
            common,
        }
    }
}

/// The payment service's migrations; the kit's are merged in by [`Db::connect`].
pub fn migrations() -> Migrations {
    mercato_kit::service_migrations!()
}

/// The service with its parts, for tests that drive events and read the database directly.
pub struct Built {
    pub service: Service,
    pub payments: Arc<service::Payments>,
    /// The consumer the service runs, for delivering hand-built envelopes.
    pub consumer: Consumer,
}

/// Builds the payment service: database, routes, event consumer, outbox relay and processor
/// worker, not yet listening.
pub async fn build(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<Service> {
    let c = &config.common;
    let verifier = Verifier::for_service(&c.auth_url, c, SERVICE);
    Ok(assemble(config, bus, verifier).await?.service)
}

/// [`build`] with the token verifier given, so tests can sign their own tokens.
pub async fn assemble(
    config: &Config,
    bus: Arc<dyn Bus>,
    verifier: Verifier,
) -> anyhow::Result<Built> {
    let c = &config.common;
    let db = Db::connect(
        config.database_url.as_str(),
        SERVICE,
        c.db_pool_size,
        &migrations(),
    )
    .await?;
    let mut settings =
        service::Settings::new(config.psp_webhook_secret.clone(), config.psp_timeout);
    settings.retry_cap = config.psp_retry_max;
    settings.retry_base = settings.retry_base.min(settings.retry_cap);
    // The processor client's breaker and request counts show on this service's /metrics.
    let metrics = Metrics::new(SERVICE);
    let payments = service::Payments::counted(
        db.clone(),
        settings,
        service::PaymentMetrics::new(metrics.registry()),
    );
    let probes: Vec<Arc<dyn Probe>> = vec![StorageProbe::new(
        &metrics,
        db.clone(),
        Some((bus.clone(), consumer::CONSUMER)),
    )];
    let processor = psp::PspClient::new(
        &config.psp_url,
        psp::policy(config.psp_timeout, config.processor_breaker_reset),
        &metrics,
    )?;
    let worker = worker::Worker::new(payments.clone(), processor);
    let relay = Relay::new(db.clone(), bus.clone());
    let consumer = Consumer::new(
        consumer::CONSUMER,
        db.clone(),
        Arc::new(consumer::Handler::new(payments.clone())),
    )
    .with_test_hooks(config.common.test_hooks);
    let api = http::router(http::AppState {
        payments: payments.clone(),
        verifier: verifier.clone(),
    });
    let (router, openapi) = mercato_kit::audit::with_event_admin(api, &db, &consumer, &verifier);
    let purge_db = db.clone();
    let running = consumer.clone();
    let service = Service::new(
        SERVICE,
        router,
        openapi,
        metrics,
        mercato_kit::health::on_the_bus(&db, &bus, consumer::CONSUMER),
        &HttpSettings::from(c),
    )
    .with_admin(verifier)
    .with_task(move |stop| sample_every(probes, SAMPLE_EVERY, stop))
    .with_events(relay, running, bus, &consumer::CONSUMED)
    .with_task(move |stop| worker.run(stop))
    .with_task(move |stop| mercato_kit::idempotency::purge_task(purge_db, stop))
    .closes(db);
    Ok(Built {
        service,
        payments,
        consumer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercato_kit::testing::{config_from, config_refusal};

    #[test]
    fn configuration_defaults_overrides_and_masking() {
        let mut env = Env::from_pairs([("MERCATO_DATA_DIR", "/tmp/m")]);
        let _ = Config::read(&mut env);
        let text = env.check().unwrap_err().to_string();
        assert!(text.contains("MERCATO_PSP_WEBHOOK_SECRET"), "{text}");
        let c = config_from(
            [
                ("MERCATO_DATA_DIR", "/tmp/m"),
                ("MERCATO_PSP_WEBHOOK_SECRET", "whsec_generated"),
            ],
            Config::read,
        );
        assert_eq!(c.port, 8084);
        assert_eq!(
            c.database_url.as_str(),
            "sqlite:///tmp/m/payment.db?mode=rwc"
        );
        assert_eq!(c.psp_url, "http://127.0.0.1:8090");
        assert_eq!(c.psp_webhook_secret.expose(), "whsec_generated");
        assert_eq!(c.psp_timeout, Duration::from_millis(5000));
        assert_eq!(c.psp_retry_max, Duration::from_secs(60));
        assert_eq!(c.processor_breaker_reset, Duration::from_secs(30));

        let c = config_from(
            [
                ("MERCATO_PAYMENT_PORT", "9084"),
                ("MERCATO_PSP_URL", "http://psp:8090/"),
                ("MERCATO_PSP_WEBHOOK_SECRET", "whsec_s3cret"),
                ("MERCATO_PSP_TIMEOUT_MS", "1500"),
                ("MERCATO_PROCESSOR_BREAKER_RESET_MS", "2500"),
                (
                    "MERCATO_PAYMENT_DATABASE_URL",
                    "postgres://pay:hunter2@db/pay",
                ),
            ],
            Config::read,
        );
        assert_eq!(c.port, 9084);
        assert_eq!(c.psp_url, "http://psp:8090");
        assert_eq!(c.psp_timeout, Duration::from_millis(1500));
        assert_eq!(c.processor_breaker_reset, Duration::from_millis(2500));
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );

        let err = config_refusal(
            [
                ("MERCATO_PAYMENT_PORT", "http"),
                ("MERCATO_PSP_URL", "ftp://x"),
                ("MERCATO_PSP_TIMEOUT_MS", "0"),
                ("MERCATO_PROCESSOR_BREAKER_RESET_MS", "soon"),
            ],
            Config::read,
        );
        for var in [
            "MERCATO_PAYMENT_PORT",
            "MERCATO_PSP_URL",
            "MERCATO_PSP_TIMEOUT_MS",
            "MERCATO_PROCESSOR_BREAKER_RESET_MS",
        ] {
            assert!(err.contains(var), "{var} missing from {err}");
        }
    }
}
