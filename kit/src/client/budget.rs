//! The retry budget: over a rolling window, retries may add at most a share of the calls made
//! plus a small allowance per second, so retries cannot multiply the load on a dependency that
//! is already struggling.

use super::rolling::Rolling;
use super::BudgetPolicy;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
