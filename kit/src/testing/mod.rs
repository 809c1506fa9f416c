//! Test support for the services' own tests: waiting for something with a deadline
//! ([`until`], [`eventually`]), the backend an ignored test was given ([`backend`]) and a
//! crate's module graph read from its sources ([`imports`]), always built (they need nothing
//! more, and the kit's own tests use them); with the `testing`
//! feature also one RSA key per test process that signs tokens a verifier built here accepts,
//! a one-shot HTTP call through a router and a fresh database per test ([`TestDb`]). Each
//! service's tests used to carry their own copy of these.

// Test support: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod imports;

#[cfg(feature = "testing")]
mod fixtures;
#[cfg(feature = "testing")]
pub use fixtures::*;

use crate::config::Env;
use crate::http::{HttpSettings, Service};
use crate::metrics::Metrics;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A service named `test` around `api`, with no API document and no health checks: what a
/// test of the kit's HTTP skeleton (its layers, listener, admin routes) serves.
pub fn bare_service(api: axum::Router, settings: &HttpSettings) -> Service {
    Service::new(
        "test",
        api,
        None::<utoipa::openapi::OpenApi>,
        Metrics::new("test"),
        vec![],
        settings,
    )
}

/// Serves `service` on a free local port until the token is cancelled.
pub async fn serve(service: Service) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(service.run(listener, stop.clone()));
    (addr, stop)
}

/// A configuration read from `pairs` alone, every one of them accepted: what a service's test
/// of its defaults and overrides starts from.
pub fn config_from<C, K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
    read: impl FnOnce(&mut Env) -> C,
) -> C {
    let mut env = Env::from_pairs(pairs);
    let config = read(&mut env);
    assert!(env.check().is_ok(), "refused: {:?}", env.check());
    config
}

/// What reading a configuration from `pairs` refused, as the service would print it at start,
/// for a test that checks each bad variable is named.
pub fn config_refusal<C, K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
    read: impl FnOnce(&mut Env) -> C,
) -> String {
    let mut env = Env::from_pairs(pairs);
    read(&mut env);
    env.check()
        .expect_err("the settings were accepted")
        .to_string()
}

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(20);

/// The backend named by `var` (`MERCATO_TEST_DATABASE_URL`, `MERCATO_TEST_NATS_URL`, ...), for a
/// test that cannot run without one. Such a test is `#[ignore = "needs ..."]`: CI's backend tier
/// sets the variables and runs it with `--include-ignored`. Asked for without the variable, it
/// fails naming it, so a test never passes without having run.
pub fn backend(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{var} is not set: this test needs that backend (CI's backend tier sets it)"),
    }
}

/// Polls `f` until it returns `Some`, failing the test naming `what` once `patience` has passed:
/// how tests wait for something that happens in the background, instead of sleeping a guessed
/// time.
pub async fn until_some<T, F, Fut>(what: &str, patience: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "not reached within {patience:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `f` until it holds, failing the test naming `what` once `patience` has passed.
pub async fn until<F, Fut>(what: &str, patience: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_some(what, patience, || {
        let held = f();
        async move { held.await.then_some(()) }
    })
    .await
}

/// [`until_some`] for a condition that needs no name.
pub async fn eventually<T, F, Fut>(timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until_some("the condition", timeout, f).await
}
