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
//! 4. on a transient failure of a request that may be repeated, a **retry** after exponential
//!    backoff with full jitter (or after the server's `Retry-After`), if the **retry budget**
//!    allows it and the breaker still lets calls through.
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

use crate::http::{RequestContext, CORRELATION_ID, IDEMPOTENCY_KEY, TRACEPARENT};
use crate::problem::is_overloaded;
use axum::body::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rand::Rng;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

// ---------------------------------------------------------------------------------------------
// Policies

/// How one dependency is called. The defaults are the issue's; `timeout` and the breaker's
/// `reset_after` differ per dependency and are the caller's to give (inventory: 3 s and 10 s;
/// processor: 5 s and 30 s).
#[derive(Clone, Debug)]
pub struct Policy {
    /// Per attempt: sending the request and reading the whole answer.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    /// Calls in flight at once, waits between retries included.
    pub bulkhead: usize,
}

impl Policy {
    pub fn new(timeout: Duration, reset_after: Duration) -> Self {
        Policy {
            timeout,
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy {
                reset_after,
                ..BreakerPolicy::default()
            },
            bulkhead: 64,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 turns retrying off.
    pub max_retries: u32,
    /// The backoff before retry `n` (from 0) is uniform in `[0, min(max_backoff, base · 2ⁿ)]`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not waited for: the failure is returned instead, and
    /// the caller decides (a gateway passes the 429 on with its header).
    pub max_retry_after: Duration,
    /// Whether an attempt that timed out is retried. A caller with a fallback (the order
    /// service's stock pre-check) turns it off: a second full timeout would only make its
    /// customer wait twice as long for the same fallback.
    pub retry_timeouts: bool,
    pub budget: BudgetPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(5),
            retry_timeouts: true,
            budget: BudgetPolicy::default(),
        }
    }
}

/// Retries in `window` may be at most `ratio` × the calls in it, plus `min_per_second` × its
/// length in seconds.
#[derive(Clone, Debug)]
pub struct BudgetPolicy {
    pub window: Duration,
    pub ratio: f64,
    pub min_per_second: f64,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        BudgetPolicy {
            window: Duration::from_secs(10),
            ratio: 0.2,
            min_per_second: 1.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BreakerPolicy {
    /// The share of failed attempts in `window` that opens the breaker…
    pub failure_rate: f64,
    /// …once at least this many attempts were made in it.
    pub min_calls: u32,
    pub window: Duration,
    /// How long it stays open before letting trial calls through.
    pub reset_after: Duration,
    /// Successful trials needed to close; also the most trials in flight at once.
    pub trial_calls: u32,
    /// Says of a 5xx answer that it is about the request, not the dependency's health, so the
    /// breaker does not count it: the card processor's `processing_error` for one card is a
    /// healthy processor speaking. The answer is still an [`Error::Status`] to the caller.
    pub excused: Option<fn(&Response) -> bool>,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_rate: 0.5,
            min_calls: 10,
            window: Duration::from_secs(10),
            reset_after: Duration::from_secs(10),
            trial_calls: 3,
            excused: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clocks

/// Where the breaker and the budget read the time. Waits (backoff, timeouts) are real sleeps.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Self {
        ManualClock {
            origin: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        *lock(&self.elapsed) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + *lock(&self.elapsed)
    }
}

/// The state behind these locks is a handful of counters, consistent after every statement; a
/// panic elsewhere while holding one leaves nothing half-written worth refusing to read.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// A rolling window of two counters

const BUCKETS: usize = 10;

/// Two counters summed over the last `window`, kept in ten buckets so memory stays constant
/// whatever the traffic. The window slides a bucket at a time: what it covers is between nine
/// and ten tenths of `window` back.
#[derive(Debug)]
struct Rolling {
    width: Duration,
    origin: Option<Instant>,
    /// (bucket number since origin, first counter, second counter)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Rolling {
    fn new(window: Duration) -> Self {
        Rolling {
            width: (window / BUCKETS as u32).max(Duration::from_nanos(1)),
            origin: None,
            buckets: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn slot(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let n = now.saturating_duration_since(origin).as_nanos() / self.width.as_nanos();
        u64::try_from(n).unwrap_or(u64::MAX - 1)
    }

    fn add(&mut self, now: Instant, a: u64, b: u64) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.0 != slot {
            *bucket = (slot, 0, 0);
        }
        bucket.1 += a;
        bucket.2 += b;
    }

    fn sums(&mut self, now: Instant) -> (u64, u64) {
        let slot = self.slot(now);
        self.buckets
            .iter()
            .filter(|(s, _, _)| *s <= slot && slot - *s < BUCKETS as u64)
            .fold((0, 0), |(a, b), (_, x, y)| (a + x, b + y))
    }

    fn clear(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); BUCKETS];
    }
}

// ---------------------------------------------------------------------------------------------
// The circuit breaker

/// What the breaker is doing, as the `circuit_breaker_state` gauge shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// Leave to make one attempt. Its verdict must be given back with [`Breaker::record`], or the
/// ticket handed back with [`Breaker::release`] when the attempt never reached the dependency.
#[derive(Debug)]
#[must_use]
pub struct Ticket {
    /// Which period of the breaker's life the ticket belongs to: a verdict from an earlier one
    /// (a slow call let through before the breaker opened) says nothing about the present.
    epoch: u64,
}

/// The breaker's state machine: closed → open when the failure rate over the window reaches
/// the threshold; open → half-open once the reset time has passed; half-open → closed after
/// `trial_calls` successes, or → open again on a single failure.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: State,
    epoch: u64,
    /// (attempts, failures)
    window: Rolling,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            window: Rolling::new(policy.window),
            policy,
            state: State::Closed,
            epoch: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// While open: how long until trial calls are let through.
    pub fn reopens_in(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Open { until } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// Attempts and failures in the current window.
    pub fn counts(&mut self, now: Instant) -> (u64, u64) {
        self.window.sums(now)
    }

    /// May an attempt be made now? `None` means fail fast.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Ticket> {
        if let State::Open { until } = self.state {
            if now < until {
                return None;
            }
            self.enter(State::HalfOpen {
                in_flight: 0,
                succeeded: 0,
            });
        }
        if let State::HalfOpen {
            in_flight,
            succeeded,
        } = &mut self.state
        {
            if *in_flight + *succeeded >= self.policy.trial_calls.max(1) {
                return None;
            }
            *in_flight += 1;
        }
        Some(Ticket { epoch: self.epoch })
    }

    /// The verdict of an attempt: did the dependency behave?
    pub fn record(&mut self, ticket: Ticket, success: bool, now: Instant) {
        if ticket.epoch != self.epoch {
            return;
        }
        match &mut self.state {
            State::Closed => {
                self.window.add(now, 1, u64::from(!success));
                if !success {
                    let (calls, failures) = self.window.sums(now);
                    if calls >= u64::from(self.policy.min_calls)
                        && failures as f64 >= self.policy.failure_rate * calls as f64
                    {
                        self.open(now);
                    }
                }
            }
            State::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if !success {
                    self.open(now);
                    return;
                }
                *in_flight = in_flight.saturating_sub(1);
                *succeeded += 1;
                if *succeeded >= self.policy.trial_calls.max(1) {
                    self.window.clear();
                    self.enter(State::Closed);
                }
            }
            // Unreachable with a current ticket; nothing to learn either way.
            State::Open { .. } => {}
        }
    }

    /// The attempt was not made (the bulkhead was full, the request could not be built) or was
    /// abandoned (the caller stopped waiting): no verdict, but a half-open trial slot is free.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.epoch != self.epoch {
            return;
        }
        if let State::HalfOpen { in_flight, .. } = &mut self.state {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn open(&mut self, now: Instant) {
        self.enter(State::Open {
            until: now + self.policy.reset_after,
        });
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.epoch += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The retry budget

#[derive(Debug)]
pub struct RetryBudget {
    policy: BudgetPolicy,
    /// (calls, retries)
    window: Rolling,
}

impl RetryBudget {
    pub fn new(policy: BudgetPolicy) -> Self {
        RetryBudget {
            window: Rolling::new(policy.window),
            policy,
        }
    }

    /// A call (not a retry) was made.
    pub fn record_call(&mut self, now: Instant) {
        self.window.add(now, 1, 0);
    }

    /// Takes one retry from the budget if it has one.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (calls, retries) = self.window.sums(now);
        let allowance = self.policy.ratio * calls as f64
            + self.policy.min_per_second * self.policy.window.as_secs_f64();
        if (retries + 1) as f64 > allowance {
            return false;
        }
        self.window.add(now, 0, 1);
        true
    }
}

/// Full jitter (the AWS architecture blog's name): uniform in `[0, min(max, base · 2ⁿ)]`, which
/// spreads the retries of many callers that failed together better than any fixed schedule.
/// `unit` is the random draw in `[0, 1]`.
pub fn backoff(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
    let ceiling = policy
        .base_backoff
        .saturating_mul(factor)
        .min(policy.max_backoff);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// May this request be sent twice without risk of a double effect?
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

// ---------------------------------------------------------------------------------------------
// Results

/// A whole answer: status, headers and body, read within the timeout.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{dependency}: circuit breaker open")]
    BreakerOpen { dependency: Arc<str> },
    #[error("{dependency}: too many calls in flight")]
    BulkheadFull { dependency: Arc<str> },
    #[error("{dependency}: no answer within {after:?}")]
    Timeout {
        dependency: Arc<str>,
        after: Duration,
    },
    #[error("{dependency}: cannot connect: {message}")]
    Connect {
        dependency: Arc<str>,
        message: String,
    },
    /// The exchange broke after connecting (reset, closed, malformed answer).
    #[error("{dependency}: exchange failed: {message}")]
    Transport {
        dependency: Arc<str>,
        message: String,
    },
    /// A 5xx or a 429, after whatever retries were allowed.
    #[error("{dependency}: answered {}", response.status)]
    Status {
        dependency: Arc<str>,
        response: Response,
    },
    /// The request could not be built (a bad URL, a bad header): a bug of the caller.
    #[error("{dependency}: invalid request: {message}")]
    Invalid {
        dependency: Arc<str>,
        message: String,
    },
}

impl Error {
    pub fn dependency(&self) -> &str {
        match self {
            Error::BreakerOpen { dependency }
            | Error::BulkheadFull { dependency }
            | Error::Timeout { dependency, .. }
            | Error::Connect { dependency, .. }
            | Error::Transport { dependency, .. }
            | Error::Status { dependency, .. }
            | Error::Invalid { dependency, .. } => dependency,
        }
    }

    /// The status of the answer, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Status { response, .. } => Some(response.status),
            _ => None,
        }
    }
}

/// How one attempt ended, and its label in `http_client_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    ErrorStatus,
    Throttled,
    Timeout,
    Connect,
    Transport,
    BreakerOpen,
    BulkheadFull,
    BudgetExhausted,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::ErrorStatus,
        Outcome::Throttled,
        Outcome::Timeout,
        Outcome::Connect,
        Outcome::Transport,
        Outcome::BreakerOpen,
        Outcome::BulkheadFull,
        Outcome::BudgetExhausted,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ErrorStatus => "error_status",
            Outcome::Throttled => "throttled",
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect",
            Outcome::Transport => "transport",
            Outcome::BreakerOpen => "breaker_open",
            Outcome::BulkheadFull => "bulkhead_full",
            Outcome::BudgetExhausted => "budget_exhausted",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The dependency

struct ClientMetrics {
    state: IntGauge,
    retries: IntCounter,
    requests: IntCounterVec,
}

impl ClientMetrics {
    /// One set of collectors per dependency, told apart by a constant `dependency` label: the
    /// registry accepts several collectors of one metric name when their constant labels
    /// differ, and merges them into one family when gathered. So dependencies need not know of
    /// each other, and a name registered twice is refused rather than silently shared.
    fn register(dependency: &str, registry: &Registry) -> prometheus::Result<Self> {
        let opts =
            |name: &str, help: &str| Opts::new(name, help).const_label("dependency", dependency);
        let state = IntGauge::with_opts(opts(
            "circuit_breaker_state",
            "Circuit breaker state per dependency: 0 closed, 1 open, 2 half-open",
        ))?;
        let retries = IntCounter::with_opts(opts(
            "http_client_retries_total",
            "Retries sent to a dependency",
        ))?;
        let requests = IntCounterVec::new(
            opts(
                "http_client_requests_total",
                "Requests the HTTP client meant to send to a dependency, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(state.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        // Every outcome from zero, so a rate over it exists before the first failure.
        for outcome in Outcome::ALL {
            requests.with_label_values(&[outcome.label()]);
        }
        Ok(ClientMetrics {
            state,
            retries,
            requests,
        })
    }

    fn count(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.label()]).inc();
    }
}

struct Shared {
    name: Arc<str>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    breaker: Mutex<Breaker>,
    budget: Mutex<RetryBudget>,
    bulkhead: Semaphore,
    metrics: ClientMetrics,
}

/// One remote service as one caller sees it: its policy, breaker, bulkhead, budget and metrics.
/// Cheap to clone; clones share all of it.
#[derive(Clone)]
pub struct Dependency {
    http: reqwest::Client,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.shared.name)
            .field("policy", &self.shared.policy)
            .field("state", &self.state())
            .finish()
    }
}

impl Dependency {
    /// Fails only if `registry` already has a dependency of this name: share that one instead
    /// (clone it), since two breakers for one dependency would each see half the failures.
    pub fn new(name: &str, policy: Policy, registry: &Registry) -> prometheus::Result<Self> {
        Self::with_clock(name, policy, registry, Arc::new(SystemClock))
    }

    pub fn with_clock(
        name: &str,
        policy: Policy,
        registry: &Registry,
        clock: Arc<dyn Clock>,
    ) -> prometheus::Result<Self> {
        let metrics = ClientMetrics::register(name, registry)?;
        Ok(Dependency {
            http: pooled_client(),
            shared: Arc::new(Shared {
                name: name.into(),
                breaker: Mutex::new(Breaker::new(policy.breaker.clone())),
                budget: Mutex::new(RetryBudget::new(policy.retry.budget.clone())),
                bulkhead: Semaphore::new(policy.bulkhead),
                policy,
                clock,
                metrics,
            }),
        })
    }

    /// Sends through this reqwest client (its connection pool, its settings) instead of a new
    /// one.
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn state(&self) -> BreakerState {
        lock(&self.shared.breaker).state()
    }

    /// Calls the dependency. `build` makes the request from the client, once per attempt — so
    /// a body is made afresh each time, and must be the same each time (the same
    /// `Idempotency-Key` above all). With `ctx`, the call carries its correlation id and trace
    /// context unless `build` set them.
    pub async fn send<F>(&self, ctx: Option<&RequestContext>, build: F) -> Result<Response, Error>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let s = &*self.shared;
        let Some(mut ticket) = self.admit() else {
            s.metrics.count(Outcome::BreakerOpen);
            return Err(Error::BreakerOpen {
                dependency: s.name.clone(),
            });
        };
        let Ok(_permit) = s.bulkhead.try_acquire() else {
            s.metrics.count(Outcome::BulkheadFull);
            return Err(Error::BulkheadFull {
                dependency: s.name.clone(),
            });
        };
        lock(&s.budget).record_call(s.clock.now());
        let mut retry = 0;
        loop {
            let request = match build(&self.http).build() {
                Ok(request) => with_context(request, ctx),
                Err(e) => {
                    return Err(Error::Invalid {
                        dependency: s.name.clone(),
                        message: e.to_string(),
                    })
                }
            };
            let repeatable = is_idempotent(request.method(), request.headers());
            let (outcome, result) = self.attempt(request).await;
            s.metrics.count(outcome);
            let excused = match (&result, s.policy.breaker.excused) {
                (Err(Error::Status { response, .. }), Some(excused)) => excused(response),
                _ => false,
            };
            let healthy = excused || matches!(outcome, Outcome::Ok | Outcome::Throttled);
            ticket.record(healthy);
            let error = match result {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            if !repeatable || retry >= s.policy.retry.max_retries {
                return Err(error);
            }
            let Some(wait) = self.retry_wait(&error, retry) else {
                return Err(error);
            };
            if !lock(&s.budget).try_withdraw(s.clock.now()) {
                s.metrics.count(Outcome::BudgetExhausted);
                return Err(error);
            }
            tokio::time::sleep(wait).await;
            ticket = match self.admit() {
                Some(ticket) => ticket,
                None => {
                    s.metrics.count(Outcome::BreakerOpen);
                    return Err(error);
                }
            };
            s.metrics.retries.inc();
            retry += 1;
        }
    }

    /// How long to wait before retrying after `error`, if it is a transient failure at all.
    fn retry_wait(&self, error: &Error, retry: u32) -> Option<Duration> {
        let policy = &self.shared.policy.retry;
        match error {
            Error::Timeout { .. } if !policy.retry_timeouts => return None,
            Error::Timeout { .. } | Error::Connect { .. } | Error::Transport { .. } => {}
            Error::Status { response, .. } => {
                if !matches!(
                    response.status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                        | StatusCode::TOO_MANY_REQUESTS
                ) {
                    return None;
                }
                // The server knows best when it can take the request again; when that is too
                // far off, the caller is better told now than kept waiting.
                if let Some(after) = retry_after(&response.headers) {
                    return (after <= policy.max_retry_after).then_some(after);
                }
            }
            Error::BreakerOpen { .. } | Error::BulkheadFull { .. } | Error::Invalid { .. } => {
                return None
            }
        }
        Some(self.backoff(retry))
    }

    fn backoff(&self, retry: u32) -> Duration {
        backoff(
            &self.shared.policy.retry,
            retry,
            rand::thread_rng().gen_range(0.0..=1.0),
        )
    }

    /// One attempt under the timeout, classified.
    async fn attempt(&self, mut request: reqwest::Request) -> (Outcome, Result<Response, Error>) {
        let s = &*self.shared;
        // The call's own span, a child of the trace the request carries (or of the caller's
        // span), and the request carries the call's span on to the server.
        let parent = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let span = crate::telemetry::client_span(
            &s.name,
            request.method().as_str(),
            request.url().as_str(),
            parent.as_deref(),
        );
        if let Some(v) =
            crate::telemetry::traceparent(&span).and_then(|tp| HeaderValue::from_str(&tp).ok())
        {
            request.headers_mut().insert(TRACEPARENT, v);
        }
        let (outcome, result) = self.exchange(request).instrument(span.clone()).await;
        let status = match &result {
            Ok(r) => Some(r.status.as_u16()),
            Err(Error::Status { response, .. }) => Some(response.status.as_u16()),
            Err(_) => None,
        };
        let failed = (status.is_none() || result.is_err()).then(|| outcome.label());
        crate::telemetry::record_status(&span, status, failed);
        (outcome, result)
    }

    async fn exchange(&self, request: reqwest::Request) -> (Outcome, Result<Response, Error>) {
        let s = &*self.shared;
        let exchange = async {
            let res = self.http.execute(request).await?;
            let status = res.status();
            let headers = res.headers().clone();
            let body = res.bytes().await?;
            Ok::<_, reqwest::Error>(Response {
                status,
                headers,
                body,
            })
        };
        let dependency = s.name.clone();
        match tokio::time::timeout(s.policy.timeout, exchange).await {
            Err(_) => (
                Outcome::Timeout,
                Err(Error::Timeout {
                    dependency,
                    after: s.policy.timeout,
                }),
            ),
            Ok(Err(e)) if e.is_timeout() => (
                Outcome::Timeout,
                Err(Error::Timeout {
                    dependency,
                    after: s.policy.timeout,
                }),
            ),
            Ok(Err(e)) if e.is_connect() => (
                Outcome::Connect,
                Err(Error::Connect {
                    dependency,
                    message: error_chain(&e),
                }),
            ),
            Ok(Err(e)) => (
                Outcome::Transport,
                Err(Error::Transport {
                    dependency,
                    message: error_chain(&e),
                }),
            ),
            // Shed on purpose by a healthy service: like a 429, not a failure of it.
            Ok(Ok(response)) if is_overloaded(response.status, &response.headers) => (
                Outcome::Throttled,
                Err(Error::Status {
                    dependency,
                    response,
                }),
            ),
            Ok(Ok(response)) if response.status.is_server_error() => (
                Outcome::ErrorStatus,
                Err(Error::Status {
                    dependency,
                    response,
                }),
            ),
            Ok(Ok(response)) if response.status == StatusCode::TOO_MANY_REQUESTS => (
                Outcome::Throttled,
                Err(Error::Status {
                    dependency,
                    response,
                }),
            ),
            Ok(Ok(response)) => (Outcome::Ok, Ok(response)),
        }
    }

    /// A breaker ticket that gives itself back if dropped without a verdict, so a caller that
    /// stops waiting mid-call cannot leave a half-open breaker with no trial slot free.
    fn admit(&self) -> Option<Held<'_>> {
        let ticket = self.breaker(|b, now| b.try_acquire(now))?;
        Some(Held {
            dependency: self,
            ticket: Some(ticket),
        })
    }

    /// Runs `f` on the breaker; a change of state is logged and shown on the gauge.
    fn breaker<R>(&self, f: impl FnOnce(&mut Breaker, Instant) -> R) -> R {
        let s = &*self.shared;
        let now = s.clock.now();
        let mut breaker = lock(&s.breaker);
        let before = breaker.state();
        let result = f(&mut breaker, now);
        let after = breaker.state();
        if before != after {
            s.metrics.state.set(after.gauge_value());
            let (calls, failures) = breaker.counts(now);
            drop(breaker);
            let (from, to) = (before.as_str(), after.as_str());
            match after {
                BreakerState::Open => tracing::warn!(
                    dependency = %s.name, from, to, calls, failures,
                    reopens_in_ms = s.policy.breaker.reset_after.as_millis() as u64,
                    "circuit breaker opened: calls fail fast"
                ),
                BreakerState::HalfOpen => tracing::info!(
                    dependency = %s.name, from, to,
                    "circuit breaker half-open: letting trial calls through"
                ),
                BreakerState::Closed => tracing::info!(
                    dependency = %s.name, from, to,
                    "circuit breaker closed: the dependency answers again"
                ),
            }
        }
        result
    }
}

/// How an exchange made outside [`Dependency::send`] ended (see [`Dependency::admit_call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The dependency answered with this status (a 5xx counts against it).
    Answered(StatusCode),
    Timeout,
    Connect,
    /// The exchange broke after connecting.
    Transport,
    /// The dependency shed the request on purpose (a 503 marked overloaded): healthy, like a
    /// 429, so the breaker does not count it.
    Overloaded,
}

/// A call admitted by the breaker and the bulkhead, for a caller that makes the exchange
/// itself: the gateway streams bodies both ways, which [`Dependency::send`] (whole answers,
/// requests rebuilt per attempt) cannot. Holds a bulkhead place until dropped; a call dropped
/// without [`Admitted::finish`] gives its breaker slot back uncounted.
pub struct Admitted<'a> {
    held: Held<'a>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Admitted<'_> {
    /// Records how the attempt ended: counted in `http_client_requests_total` and by the
    /// breaker.
    pub fn finish(mut self, ended: Ended) {
        let outcome = match ended {
            Ended::Answered(status) if status.is_server_error() => Outcome::ErrorStatus,
            Ended::Answered(StatusCode::TOO_MANY_REQUESTS) | Ended::Overloaded => {
                Outcome::Throttled
            }
            Ended::Answered(_) => Outcome::Ok,
            Ended::Timeout => Outcome::Timeout,
            Ended::Connect => Outcome::Connect,
            Ended::Transport => Outcome::Transport,
        };
        self.held.dependency.shared.metrics.count(outcome);
        self.held
            .record(matches!(outcome, Outcome::Ok | Outcome::Throttled));
    }
}

impl Dependency {
    /// Lets one call through the breaker and the bulkhead, or says why not (counted as
    /// `breaker_open` / `bulkhead_full`). For exchanges [`Dependency::send`] cannot make.
    pub fn admit_call(&self) -> Result<Admitted<'_>, Error> {
        let s = &*self.shared;
        let Some(held) = self.admit() else {
            s.metrics.count(Outcome::BreakerOpen);
            return Err(Error::BreakerOpen {
                dependency: s.name.clone(),
            });
        };
        let Ok(permit) = s.bulkhead.try_acquire() else {
            s.metrics.count(Outcome::BulkheadFull);
            return Err(Error::BulkheadFull {
                dependency: s.name.clone(),
            });
        };
        Ok(Admitted {
            held,
            _permit: permit,
        })
    }

    /// Counts a retry made outside [`Dependency::send`] (the gateway's next replica).
    pub fn count_retry(&self) {
        self.shared.metrics.retries.inc();
    }

    /// While the breaker is open: how long until it lets a trial call through. A caller with
    /// its own retry schedule (the payment worker) comes back then rather than after its
    /// backoff, which grew with every refused attempt.
    pub fn reopens_in(&self) -> Option<Duration> {
        let now = self.shared.clock.now();
        lock(&self.shared.breaker).reopens_in(now)
    }

    /// How long an open breaker stays open, for a `Retry-After`.
    pub fn reset_after(&self) -> Duration {
        self.shared.policy.breaker.reset_after
    }
}

struct Held<'a> {
    dependency: &'a Dependency,
    ticket: Option<Ticket>,
}

impl Held<'_> {
    fn record(&mut self, success: bool) {
        if let Some(ticket) = self.ticket.take() {
            self.dependency
                .breaker(|b, now| b.record(ticket, success, now));
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.dependency.breaker(|b, _| b.release(ticket));
        }
    }
}

fn with_context(mut request: reqwest::Request, ctx: Option<&RequestContext>) -> reqwest::Request {
    if let Some(ctx) = ctx {
        let headers = request.headers_mut();
        for (name, value) in [
            (CORRELATION_ID, &ctx.correlation_id),
            (TRACEPARENT, &ctx.traceparent),
        ] {
            if let (false, Ok(value)) = (headers.contains_key(&name), HeaderValue::from_str(value))
            {
                headers.insert(name, value);
            }
        }
    }
    request
}

/// reqwest's own message is often just "error sending request"; the cause is further down.
fn error_chain(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
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

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker_policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate: 0.5,
            min_calls: 4,
            window: Duration::from_secs(10),
            reset_after: Duration::from_secs(5),
            trial_calls: 2,
            excused: None,
        }
    }

    fn outcome(b: &mut Breaker, at: Instant, success: bool) {
        let ticket = b.try_acquire(at).expect("a call is let through");
        b.record(ticket, success, at);
    }

    #[test]
    fn the_breaker_stays_closed_below_the_minimum_number_of_calls() {
        let t0 = Instant::now();
        let mut b = Breaker::new(breaker_policy());
        for _ in 0..3 {
            outcome(&mut b, t0, false);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "3 failures of 3 is under min_calls"
        );
        outcome(&mut b, t0, false);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn the_breaker_opens_at_the_failure_rate_and_not_below_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(breaker_policy());
        for success in [true, true, true, false, false] {
            outcome(&mut b, t0, success);
        }
        assert_eq!(b.state(), BreakerState::Closed, "2 of 5 is under 50%");
        outcome(&mut b, t0, false);
        assert_eq!(b.state(), BreakerState::Open, "3 of 6 is 50%");
        assert!(b.try_acquire(t0).is_none(), "open fails fast");
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut b = Breaker::new(breaker_policy());
        for _ in 0..3 {
            outcome(&mut b, t0, false);
        }
        let later = t0 + Duration::from_secs(11);
        outcome(&mut b, later, false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.counts(later), (1, 1));
        // Within the window they add up.
        for _ in 0..3 {
            outcome(&mut b, later + Duration::from_secs(8), false);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    fn opened(t0: Instant) -> Breaker {
        let mut b = Breaker::new(breaker_policy());
        for _ in 0..4 {
            outcome(&mut b, t0, false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        b
    }

    #[test]
    fn after_the_reset_a_limited_number_of_trials_go_through_and_their_successes_close_it() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert!(b.try_acquire(t0 + Duration::from_millis(4999)).is_none());
        let t1 = t0 + Duration::from_secs(5);
        let first = b.try_acquire(t1).expect("a trial after the reset");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let second = b.try_acquire(t1).expect("a second trial");
        assert!(
            b.try_acquire(t1).is_none(),
            "only trial_calls trials at once"
        );
        b.record(first, true, t1);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "one success is not enough"
        );
        assert!(b.try_acquire(t1).is_none(), "the trials are all taken");
        b.record(second, true, t1);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.counts(t1), (0, 0), "closing starts a fresh window");
        outcome(&mut b, t1, false);
        assert_eq!(b.state(), BreakerState::Closed, "old failures do not count");
    }

    #[test]
    fn a_failed_trial_reopens_it_for_another_reset_time() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        let trial = b.try_acquire(t1).unwrap();
        b.record(trial, false, t1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire(t1 + Duration::from_millis(4999)).is_none());
        assert!(b.try_acquire(t1 + Duration::from_secs(5)).is_some());
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn a_released_trial_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(5);
        let a = b.try_acquire(t1).unwrap();
        let c = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_none());
        b.release(a);
        let d = b.try_acquire(t1).expect("the released slot");
        b.record(c, true, t1);
        b.record(d, true, t1);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_verdict_from_before_a_transition_is_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(breaker_policy());
        let slow = b.try_acquire(t0).unwrap();
        for _ in 0..4 {
            outcome(&mut b, t0, false);
        }
        let t1 = t0 + Duration::from_secs(5);
        let trial = b.try_acquire(t1).unwrap();
        // The call let through while closed fails late: it says nothing of the present.
        b.record(slow, false, t1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(trial, true, t1);
        let trial = b.try_acquire(t1).unwrap();
        b.record(trial, true, t1);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    fn budget(ratio: f64, min_per_second: f64) -> RetryBudget {
        RetryBudget::new(BudgetPolicy {
            window: Duration::from_secs(10),
            ratio,
            min_per_second,
        })
    }

    #[test]
    fn the_budget_allows_retries_in_proportion_to_calls() {
        let t0 = Instant::now();
        let mut b = budget(0.2, 0.0);
        for _ in 0..4 {
            b.record_call(t0);
        }
        assert!(!b.try_withdraw(t0), "20% of 4 calls is under one retry");
        b.record_call(t0);
        assert!(b.try_withdraw(t0), "20% of 5 calls is one retry");
        assert!(!b.try_withdraw(t0), "a second is over budget");
        for _ in 0..5 {
            b.record_call(t0);
        }
        assert!(b.try_withdraw(t0), "20% of 10 calls is two retries");
        assert!(!b.try_withdraw(t0));
    }

    #[test]
    fn the_budget_has_a_minimum_per_second_for_quiet_dependencies() {
        let t0 = Instant::now();
        let mut b = budget(0.2, 0.5);
        // 0.5 per second over 10 s: 5 retries with no calls at all.
        for _ in 0..5 {
            assert!(b.try_withdraw(t0));
        }
        assert!(!b.try_withdraw(t0));
    }

    #[test]
    fn the_budget_refills_as_the_window_moves_on() {
        let t0 = Instant::now();
        let mut b = budget(0.0, 0.1);
        assert!(b.try_withdraw(t0));
        assert!(!b.try_withdraw(t0 + Duration::from_secs(5)));
        assert!(!b.try_withdraw(t0 + Duration::from_millis(9900)));
        assert!(
            b.try_withdraw(t0 + Duration::from_secs(11)),
            "the retry of t0 has left the window"
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling() {
        let p = RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(backoff(&p, 0, 0.0), Duration::ZERO);
        assert_eq!(backoff(&p, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(&p, 2, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(&p, 4, 1.0), Duration::from_secs(1), "capped");
        assert_eq!(backoff(&p, 40, 1.0), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a past date: now");
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(http::header::RETRY_AFTER, soon.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn idempotent_means_a_safe_method_or_a_key() {
        let none = HeaderMap::new();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m, &none), "{m}");
        }
        assert!(!is_idempotent(&Method::POST, &none));
        assert!(!is_idempotent(&Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        assert!(is_idempotent(&Method::POST, &keyed));
        assert!(is_idempotent(&Method::PATCH, &keyed));
    }

    #[test]
    fn a_second_dependency_of_the_same_name_is_refused_but_others_share_the_registry() {
        let registry = Registry::new();
        let policy = Policy::new(Duration::from_secs(1), Duration::from_secs(1));
        let _a = Dependency::new("inventory", policy.clone(), &registry).unwrap();
        assert!(Dependency::new("inventory", policy.clone(), &registry).is_err());
        let _b = Dependency::new("processor", policy, &registry).unwrap();
        let families = registry.gather();
        let states = families
            .iter()
            .find(|f| f.name() == "circuit_breaker_state")
            .expect("the gauge is exported");
        assert_eq!(states.get_metric().len(), 2, "one gauge per dependency");
    }

    #[tokio::test]
    async fn a_manual_clock_drives_the_breaker_of_a_dependency() {
        let registry = Registry::new();
        let clock = Arc::new(ManualClock::new());
        let mut policy = Policy::new(Duration::from_millis(500), Duration::from_secs(30));
        policy.retry.max_retries = 0;
        policy.breaker.min_calls = 2;
        policy.breaker.trial_calls = 1;
        let dep = Dependency::with_clock("nowhere", policy, &registry, clock.clone()).unwrap();
        // Nobody listens on this port: connect errors at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        for _ in 0..2 {
            let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
            assert!(matches!(e, Error::Connect { .. }), "{e}");
        }
        assert_eq!(dep.state(), BreakerState::Open);
        let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
        assert!(matches!(e, Error::BreakerOpen { .. }), "{e}");
        clock.advance(Duration::from_secs(29));
        assert!(matches!(
            dep.send(None, |c| c.get(&url)).await,
            Err(Error::BreakerOpen { .. })
        ));
        clock.advance(Duration::from_secs(1));
        let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "the trial is made: {e}");
        assert_eq!(dep.state(), BreakerState::Open, "and its failure reopens");
    }

    /// Handlers and spawned tasks need `Send` futures; this fails to compile otherwise.
    #[test]
    fn a_call_can_be_awaited_in_a_handler_or_a_spawned_task() {
        fn is_send<T: Send>(_: &T) {}
        let registry = Registry::new();
        let dep = Dependency::new(
            "any",
            Policy::new(Duration::from_secs(1), Duration::from_secs(1)),
            &registry,
        )
        .unwrap();
        let ctx = None;
        let call = dep.send(ctx, |c| c.get("http://127.0.0.1:1/"));
        is_send(&call);
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_invalid_and_frees_its_ticket() {
        let registry = Registry::new();
        let dep = Dependency::new(
            "bad",
            Policy::new(Duration::from_secs(1), Duration::from_secs(1)),
            &registry,
        )
        .unwrap();
        let e = dep.send(None, |c| c.get("not a url")).await.unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert_eq!(dep.shared.bulkhead.available_permits(), 64);
    }
}
