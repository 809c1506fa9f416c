//! psp-mock (port 8090): a small, deterministic stand-in for an external card processor.
//!
//! The payment service talks to a card processor over HTTP and hears back by signed webhook;
//! this crate is that processor for development and tests, so the whole saga runs without an
//! account anywhere. It behaves like the real thing where the payment service must cope
//! (tokens, declines with codes, retryable errors, idempotency keys, pending payments settled
//! later by webhook, retried deliveries) and is predictable everywhere else: the outcome of
//! every request follows from its payment method, as listed in `API.md`.
//!
//! It is a mock: everything lives in memory behind one mutex (see `processor`), nothing
//! survives a restart, and it runs as a single replica.
//!
//! Rooms: `domain` (cards, tokens, the payment state machine), `processor` (state and use
//! cases), `http` (routes), `webhook` (signed deliveries), `signature` (shared with the payment
//! service, which verifies what `webhook` signs).

pub mod domain;
pub mod http;
pub mod processor;
pub mod signature;
pub mod webhook;

use mercato_kit::config::{CommonConfig, Env, Secret};
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::Metrics;
use std::sync::Arc;

/// The secret used when none is configured; the payment service's default matches it.
pub const DEV_WEBHOOK_SECRET: &str = "whsec_mercato_dev";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_PSP_MOCK_PORT`, default 8090.
    pub port: u16,
    /// `MERCATO_PSP_WEBHOOK_URL`: where webhooks are POSTed (the payment service's
    /// `/api/v1/payments/webhook`); without it, events are not sent.
    pub webhook_url: Option<String>,
    /// `MERCATO_PSP_WEBHOOK_SECRET`, default [`DEV_WEBHOOK_SECRET`]: the HMAC key of webhook
    /// signatures.
    pub webhook_secret: Secret,
    /// Reserved for pending payments that fail on their own; not read from the environment yet
    /// and unused (always 0).
    pub pending_failures: u32,
    /// `MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS`, default 2: how many attempts with one
    /// Idempotency-Key `pm_card_processingError` fails before it succeeds.
    pub processing_error_attempts: u32,
}

impl Config {
    pub fn read(env: &mut Env) -> Config {
        Config {
            common: CommonConfig::read(env),
            port: env.port("MERCATO_PSP_MOCK_PORT", 8090),
            webhook_url: env.url("MERCATO_PSP_WEBHOOK_URL", None, &["http", "https"]),
            webhook_secret: env
                .secret("MERCATO_PSP_WEBHOOK_SECRET")
                .unwrap_or_else(|| Secret::new(DEV_WEBHOOK_SECRET)),
            pending_failures: 0,
            processing_error_attempts: env.int("MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS", 2, 0..=100)
                as u32,
        }
    }
}

/// Builds the processor: its routes and the background task that delivers webhooks.
pub async fn build(config: &Config) -> anyhow::Result<Service> {
    let (webhooks, dispatcher) =
        webhook::channel(config.webhook_url.clone(), config.webhook_secret.clone())?;
    let processor = Arc::new(processor::Processor::new(
        config.processing_error_attempts,
        webhooks,
    ));
    let (router, openapi) = http::router(processor);
    Ok(Service::new(
        "psp-mock",
        router,
        openapi,
        Metrics::new("psp-mock"),
        vec![],
        &HttpSettings::from(&config.common),
    )
    .with_task(move |stop| dispatcher.run(stop)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let mut env = Env::from_pairs(Vec::<(String, String)>::new());
        let c = Config::read(&mut env);
        assert!(env.check().is_ok());
        assert_eq!(c.port, 8090);
        assert_eq!(c.webhook_url, None);
        assert_eq!(c.webhook_secret.expose(), DEV_WEBHOOK_SECRET);
        assert_eq!(c.processing_error_attempts, 2);
        assert!(!format!("{c:?}").contains(DEV_WEBHOOK_SECRET));
    }

    #[test]
    fn bad_values_are_named() {
        let mut env = Env::from_pairs([
            ("MERCATO_PSP_MOCK_PORT", "http"),
            ("MERCATO_PSP_WEBHOOK_URL", "ftp://x"),
            ("MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS", "-1"),
        ]);
        let _ = Config::read(&mut env);
        let text = env.check().unwrap_err().to_string();
        for var in [
            "MERCATO_PSP_MOCK_PORT",
            "MERCATO_PSP_WEBHOOK_URL",
            "MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS",
        ] {
            assert!(text.contains(var), "{var} missing from {text}");
        }
    }

    #[test]
    fn values_are_read() {
        let mut env = Env::from_pairs([
            ("MERCATO_PSP_MOCK_PORT", "9999"),
            (
                "MERCATO_PSP_WEBHOOK_URL",
                "http://127.0.0.1:8084/api/v1/payments/webhook",
            ),
            ("MERCATO_PSP_WEBHOOK_SECRET", "s3cret"),
            ("MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS", "0"),
        ]);
        let c = Config::read(&mut env);
        assert!(env.check().is_ok());
        assert_eq!(c.port, 9999);
        assert_eq!(
            c.webhook_url.as_deref(),
            Some("http://127.0.0.1:8084/api/v1/payments/webhook")
        );
        assert_eq!(c.webhook_secret.expose(), "s3cret");
        assert_eq!(c.processing_error_attempts, 0);
    }
}
