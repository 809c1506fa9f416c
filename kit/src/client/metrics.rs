//! The client's metrics per dependency: `circuit_breaker_state`, `http_client_retries_total`
//! and `http_client_requests_total{outcome}`, with the outcome of every request it meant to send.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// How one attempt ended, and its label in `http_client_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
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
    pub(super) const ALL: [Outcome; 9] = [
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

    pub(super) fn label(self) -> &'static str {
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

pub(super) struct ClientMetrics {
    pub(super) state: IntGauge,
    pub(super) retries: IntCounter,
    requests: IntCounterVec,
}

impl ClientMetrics {
    /// One set of collectors per dependency, told apart by a constant `dependency` label: the
    /// registry accepts several collectors of one metric name when their constant labels
    /// differ, and merges them into one family when gathered. So dependencies need not know of
    /// each other, and a name registered twice is refused rather than silently shared.
    pub(super) fn register(dependency: &str, registry: &Registry) -> prometheus::Result<Self> {
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

    pub(super) fn count(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.label()]).inc();
    }
}
