//! One remote service as one caller sees it: a call passes the breaker and the bulkhead, is
//! attempted under the timeout, classified, counted, and retried when the policy, the budget
//! and the breaker allow it.

use super::admission::Admitted;
use super::metrics::{ClientMetrics, Outcome};
use super::{
    is_idempotent, lock, pooled_client, retry_after, Breaker, BreakerState, Clock, Error, Policy,
    Response, RetryBudget, SystemClock,
};
use crate::context::{RequestContext, CORRELATION_ID, TRACEPARENT};
use crate::problem::is_overloaded;
use http::{HeaderValue, StatusCode};
use prometheus::Registry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub(super) struct Shared {
    pub(super) name: Arc<str>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    breaker: Mutex<Breaker>,
    budget: Mutex<RetryBudget>,
    pub(super) bulkhead: Semaphore,
    pub(super) metrics: ClientMetrics,
}

/// One remote service as one caller sees it: its policy, breaker, bulkhead, budget and metrics.
/// Cheap to clone; clones share all of it.
#[derive(Clone)]
pub struct Dependency {
    http: reqwest::Client,
    pub(super) shared: Arc<Shared>,
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

    /// GETs one resource: `Some` when the dependency answers 200 (its JSON body, read as `T`),
    /// `None` on 404, and otherwise why it could not be had, in words naming the service
    /// (`the catalog service answered 500 Internal Server Error`), for a log and a 503.
    pub async fn get_found<T: serde::de::DeserializeOwned>(
        &self,
        ctx: Option<&RequestContext>,
        url: &str,
    ) -> Result<Option<T>, String> {
        let name = self.name();
        let res = self
            .send(ctx, |http| http.get(url))
            .await
            .map_err(|e| format!("the {name} service did not answer: {e}"))?;
        match res.status {
            StatusCode::OK => res
                .json()
                .map(Some)
                .map_err(|e| format!("the {name} service answered unreadably: {e}")),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(format!("the {name} service answered {other}")),
        }
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
        // The bulkhead place is held through every retry and its wait; the ticket is the
        // first attempt's.
        let Admitted {
            held: mut ticket,
            permit: _permit,
        } = self.admit_call()?;
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
        Some(self.shared.policy.retry.backoff().random_delay(retry))
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

    /// Runs `f` on the breaker; a change of state is logged and shown on the gauge.
    pub(super) fn breaker<R>(&self, f: impl FnOnce(&mut Breaker, Instant) -> R) -> R {
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

impl Dependency {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ManualClock;

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
