//! How one dependency is called: the timeout, the bulkhead's size, the retries with their
//! budget, and the circuit breaker's thresholds. Plain data with the defaults the issue set.

use super::Response;
use crate::backoff::Backoff;
use std::time::Duration;

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
    /// The backoff before retry `n` (from 0): `min(max_backoff, base · 2ⁿ)`, spread over its
    /// upper half ([`RetryPolicy::backoff`]).
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

impl RetryPolicy {
    /// The waits between its attempts.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.base_backoff, self.max_backoff)
    }
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
    /// healthy processor speaking. The answer is still an [`Error::Status`](super::Error::Status) to the caller.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_policy() {
        let p = RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff().delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff().delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff().delay(4, 1.0), Duration::from_secs(1), "capped");
    }
}
