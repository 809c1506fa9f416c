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
//! cases), `http` (routes), `webhook` (deliveries signed as the kit's
//! `contracts::webhook` says, which the payment service verifies), `chaos` (a processor's own
//! faults on request: timeouts, 503s, duplicated and reordered webhooks).

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chaos;
pub mod domain;
pub mod http;
pub mod processor;
pub mod webhook;

use mercato_kit::config::{CommonConfig, Env, Secret};
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::Metrics;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `MERCATO_PSP_MOCK_PORT`, default 8090.
    pub port: u16,
    /// `MERCATO_PSP_WEBHOOK_URL`: where webhooks are POSTed (the payment service's
    /// `/api/v1/payments/webhook`); without it, events are not sent.
    pub webhook_url: Option<String>,
    /// `MERCATO_PSP_WEBHOOK_SECRET` (required; `mercato up` generates one into the data
    /// directory): the HMAC key of webhook signatures.
    pub webhook_secret: Secret,
    /// Reserved for pending payments that fail on their own; not read from the environment yet
    /// and unused (always 0).
    pub pending_failures: u32,
    /// `MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS`, default 2: how many attempts with one
    /// Idempotency-Key `pm_card_processingError` fails before it succeeds.
    pub processing_error_attempts: u32,
    /// `MERCATO_PSP_CHAOS`, default off: the processor chaos profile to start with, as the JSON
    /// `PUT /v1/test/chaos` takes (`{"timeout_rate": 0.1, "duplicate_webhook_rate": 0.5}`).
    pub chaos: chaos::ProcessorProfile,
}

/// Reads `MERCATO_PSP_CHAOS`; a bad profile is recorded with every bad field named.
fn read_chaos(env: &mut Env) -> chaos::ProcessorProfile {
    const VAR: &str = "MERCATO_PSP_CHAOS";
    let Some(raw) = env.raw(VAR).map(str::to_owned) else {
        return chaos::ProcessorProfile::default();
    };
    let parsed = serde_json::from_str::<chaos::ProcessorProfile>(&raw)
        .map_err(|e| e.to_string())
        .and_then(|profile| match profile.validate() {
            Ok(()) => Ok(profile),
            Err(problem) => Err(problem
                .errors
                .iter()
                .map(|e| format!("{} {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ")),
        });
    parsed.unwrap_or_else(|why| {
        env.reject(
            VAR,
            &format!("a processor chaos profile as JSON, like {{\"timeout_rate\": 0.1}} ({why})"),
        );
        chaos::ProcessorProfile::default()
    })
}

impl Config {
    pub fn read(env: &mut Env) -> Config {
        Config {
            common: CommonConfig::read(env),
            port: env.port("MERCATO_PSP_MOCK_PORT", 8090),
            webhook_url: env.url("MERCATO_PSP_WEBHOOK_URL", None, &["http", "https"]),
            webhook_secret: env.required_secret(
                "MERCATO_PSP_WEBHOOK_SECRET",
                mercato_kit::contracts::webhook::SECRET_WHAT,
            ),
            pending_failures: 0,
            processing_error_attempts: env.int("MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS", 2, 0..=100)
                as u32,
            chaos: read_chaos(env),
        }
    }
}

/// Builds the processor: its routes and the background task that delivers webhooks.
pub async fn build(config: &Config) -> anyhow::Result<Service> {
    let chaos = Arc::new(chaos::ProcessorChaos::new(config.chaos.clone()));
    let (webhooks, dispatcher) = webhook::channel(
        config.webhook_url.clone(),
        config.webhook_secret.clone(),
        chaos.clone(),
    )?;
    let processor = Arc::new(processor::Processor::new(
        config.processing_error_attempts,
        webhooks,
        chaos.clone(),
    ));
    let (router, openapi) = http::router(processor);
    let service = Service::new(
        "psp-mock",
        router,
        openapi,
        Metrics::new("psp-mock"),
        vec![],
        &HttpSettings::from(&config.common),
    )
    .with_task(move |stop| dispatcher.run(stop));
    // The kit's switch exists only now: its metrics count processor chaos from here on, and
    // its generic profile (`CHAOS_MODE`) is kept off the `/v1/test/*` controls.
    let generic = service.chaos().profile();
    if generic.is_active() && generic.routes.is_empty() {
        service.chaos().set(chaos::scope_generic(generic)?);
    }
    chaos.attach(service.chaos().clone());
    Ok(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let mut env = Env::from_pairs([("MERCATO_PSP_WEBHOOK_SECRET", "whsec_generated")]);
        let c = Config::read(&mut env);
        assert!(env.check().is_ok());
        assert_eq!(c.port, 8090);
        assert_eq!(c.webhook_url, None);
        assert_eq!(c.webhook_secret.expose(), "whsec_generated");
        assert_eq!(c.processing_error_attempts, 2);
        assert_eq!(c.chaos, chaos::ProcessorProfile::default());
        assert!(!format!("{c:?}").contains("whsec_generated"));
        // No secret, no start: a well-known default would let anyone sign webhooks.
        let mut env = Env::from_pairs(Vec::<(String, String)>::new());
        let _ = Config::read(&mut env);
        let text = env.check().unwrap_err().to_string();
        assert!(text.contains("MERCATO_PSP_WEBHOOK_SECRET"), "{text}");
    }

    #[test]
    fn bad_values_are_named() {
        let mut env = Env::from_pairs([
            ("MERCATO_PSP_MOCK_PORT", "http"),
            ("MERCATO_PSP_WEBHOOK_URL", "ftp://x"),
            ("MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS", "-1"),
            (
                "MERCATO_PSP_CHAOS",
                r#"{"timeout_rate": 2, "error_rate": -1}"#,
            ),
            ("MERCATO_PSP_WEBHOOK_SECRET", "s"),
        ]);
        let _ = Config::read(&mut env);
        let text = env.check().unwrap_err().to_string();
        for var in [
            "MERCATO_PSP_MOCK_PORT",
            "MERCATO_PSP_WEBHOOK_URL",
            "MERCATO_PSP_PROCESSING_ERROR_ATTEMPTS",
            "MERCATO_PSP_CHAOS",
            "timeout_rate must be",
            "error_rate must be",
        ] {
            assert!(text.contains(var), "{var} missing from {text}");
        }
        let mut env = Env::from_pairs([
            ("MERCATO_PSP_CHAOS", r#"{"timeout_rat": 1}"#),
            ("MERCATO_PSP_WEBHOOK_SECRET", "s"),
        ]);
        let _ = Config::read(&mut env);
        let text = env.check().unwrap_err().to_string();
        assert!(text.contains("unknown field `timeout_rat`"), "{text}");
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
            (
                "MERCATO_PSP_CHAOS",
                r#"{"timeout_rate": 0.25, "timeout_ms": 3000, "reorder_webhooks": true}"#,
            ),
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
        assert_eq!(
            c.chaos,
            chaos::ProcessorProfile {
                timeout_rate: 0.25,
                timeout_ms: 3000,
                reorder_webhooks: true,
                ..chaos::ProcessorProfile::default()
            }
        );
    }
}
