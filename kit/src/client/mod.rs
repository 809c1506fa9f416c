//! The one HTTP client every synchronous call between services goes through (gateway → services,
//! order → inventory, cart → order and catalog, payment → processor), so that a slow or failing
//! dependency costs its callers a bounded, visible amount and never takes them down with it.
//!
//! A [`Dependency`] is one remote service as seen by one caller. Every call to it passes, in this
//! order:
//!
//! 1. the **circuit breaker**: when too many recent calls failed it answers
//!    [`Error::BreakerOpen`] at once, without touching the network, until its reset time has
//!    passed; then a few trial calls go through and decide whether it closes or opens again;
//! 2. the **bulkhead**: at most `bulkhead` calls in flight (retries and their waits included);
//!    one more fails fast with [`Error::BulkheadFull`] instead of queueing behind a slow peer;
//! 3. the **attempt**, under the per-dependency **timeout** (sending and reading the body);
//! 4. on a transient failure of a request that may be repeated, a **retry** after the kit's
//!    exponential backoff, spread over its upper half (or after the server's `Retry-After`), if
//!    the **retry budget** allows it and the breaker still lets calls through.
//!
//! What may be retried: only requests whose repetition cannot duplicate an effect — GET, HEAD,
//! PUT, DELETE, OPTIONS, or any request carrying an `Idempotency-Key` (the callee deduplicates
//! it) — and only failures that say nothing about the request itself: connect errors, timeouts,
//! a connection lost mid-exchange, 502/503/504, and 429. A 500 is not retried (it is usually a
//! bug that answers the same way twice), nor is any other 4xx.
//!
//! The retry budget ([`BudgetPolicy`]) is what keeps retries from tripling the load on a
//! dependency that is already struggling: over a rolling window, retries may add at most a
//! share of the calls made (20% by default) plus a small allowance per second, so a trickle of
//! traffic can still retry. Beyond it the last failure is returned as it is.
//!
//! The breaker ([`Breaker`]) counts attempts over a rolling window and opens when at least
//! `min_calls` were made and the share of failures reaches `failure_rate`. A failure is what says
//! the dependency is unwell: a connect error, a timeout, a broken exchange or a 5xx. Any other
//! answer — 4xx included, and 429, which a service sends per client (a gateway must not cut
//! everyone off because one client was throttled), and a 503 marked overloaded
//! ([`crate::problem::OVERLOADED_HEADER`]: a healthy service shedding work it cannot finish in
//! time) — is a success. Its state machine is plain
//! Rust driven by the instant it is given, so it is tested without sleeping; a [`Dependency`]
//! reads instants from a [`Clock`] that tests can replace with a [`ManualClock`]. Open moves to
//! half-open lazily, on the first call after the reset time, so the state gauge keeps showing
//! "open" until someone asks.
//!
//! Results: a response that is not a failure is `Ok` whatever its status, so callers keep their
//! own handling of 4xx (a 404 from catalog means something different from one from order). A
//! 5xx or a 429 left after retries is [`Error::Status`] with the whole response. When a call
//! made attempts, its error is always the last attempt's; [`Error::BreakerOpen`] and
//! [`Error::BulkheadFull`] mean no attempt was made at all.
//!
//! Metrics, on the registry the caller gives (each service has its own, see `metrics.rs`):
//! `circuit_breaker_state{dependency}` (0 closed, 1 open, 2 half-open),
//! `http_client_retries_total{dependency}` (retries sent) and
//! `http_client_requests_total{dependency,outcome}`, one count per request the client meant to
//! send: `ok`, `error_status` (5xx), `throttled` (429), `timeout`, `connect`, `transport` for
//! those sent, and `breaker_open`, `bulkhead_full`, `budget_exhausted` for those it refused to
//! send. Every breaker transition is logged.
//!
//! Why hand-written: `reqwest-middleware`/`reqwest-retry` retry every method unless taught
//! otherwise, have neither retry budget, breaker nor bulkhead, and their current releases are
//! built on reqwest 0.13 while the workspace is on 0.12; `failsafe` is a breaker alone, with its
//! own clock and no Prometheus; `tower-resilience` has the pieces but as tower layers over a
//! service rather than a reqwest call, reports through the `metrics` facade rather than a given
//! Prometheus registry, and is young. Each would need as much glue as this module has logic.
//! The parts that are easy to get wrong (the breaker, the budget, the backoff) are small pure
//! functions here, tested with a fake clock.
//!
//! One file per concern, each public item re-exported here: `policy` (what a caller
//! configures), `clock`, `rolling` (the window the breaker and the budget count in), `breaker`,
//! `budget` (the retry budget), `retry` (what may be retried, and when), `admission` (the
//! breaker ticket and the bulkhead place a call holds), `error` (what a call answers),
//! `metrics`, and `dependency`, which runs a call through all of them.

mod admission;
mod breaker;
mod budget;
mod clock;
mod dependency;
mod error;
mod metrics;
mod policy;
mod retry;
mod rolling;

pub use admission::{Admitted, Ended};
pub use breaker::{Breaker, BreakerState, Ticket};
pub use budget::RetryBudget;
pub use clock::{Clock, ManualClock, SystemClock};
pub use dependency::Dependency;
pub use error::{Error, Response};
pub use policy::{BreakerPolicy, BudgetPolicy, Policy, RetryPolicy};
pub use retry::{is_idempotent, retry_after};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The state behind these locks is a handful of counters, consistent after every statement; a
/// panic elsewhere while holding one leaves nothing half-written worth refusing to read.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client whose pooled connections are given up well before a Mercato listener closes
/// them as idle (75 s by default, [`crate::server`]), so a request is never sent on a
/// connection the server is closing at that moment.
pub fn pooled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}
