//! The one wait between attempts that every retry loop uses: HTTP calls to another service,
//! an event handler that failed, the payment worker after a processor outage.
//!
//! Written here rather than taken from a crate: the retry loops are already written around
//! their own stop conditions (deadlines, budgets, breakers, delivery limits, cancellation),
//! and all they need is the next wait as a pure function of the attempt and a random draw,
//! which tests can pin. `backon` and `backoff` own the loop instead.

use std::time::Duration;

/// Exponential from `base`, never above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The wait before retry number `retry` (0 = the first retry, after one failure):
    /// `base · 2^retry`, capped at `max`, then spread over its upper half by `draw` (a number
    /// in 0..=1, random in production). "Equal jitter": the lower half keeps a retry from
    /// coming back at once, the upper half keeps callers that failed together from retrying
    /// together.
    pub fn delay(&self, retry: u32, draw: f64) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
    }

    /// [`delay`](Self::delay) with a random draw.
    pub fn random_delay(&self, retry: u32) -> Duration {
        self.delay(retry, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_cap_and_spread_over_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(300));
        assert_eq!(b.delay(4, 1.0), Duration::from_secs(1), "capped");
        assert_eq!(b.delay(40, 1.0), Duration::from_secs(1), "no overflow");
        assert_eq!(
            b.delay(u32::MAX, 2.0),
            Duration::from_secs(1),
            "a draw above 1"
        );
        assert_eq!(
            b.delay(3, -1.0),
            Duration::from_millis(400),
            "a draw below 0"
        );
    }

    #[test]
    fn random_waits_stay_within_the_bounds() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        for retry in 0..8 {
            let d = b.random_delay(retry);
            let ceiling = b.delay(retry, 1.0);
            assert!(d >= ceiling / 2 && d <= ceiling, "{retry}: {d:?}");
        }
    }
}
