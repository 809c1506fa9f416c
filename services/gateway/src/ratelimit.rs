//! Token-bucket rate limits, per client address and per signed-in user.
//!
//! The buckets live in this process (governor's GCRA, one cell per key). With several gateway
//! replicas each replica keeps its own buckets; a shared store (Redis) plugs in behind
//! [`RateLimit`] when the gateway is scaled out.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::time::Duration;

/// A limit: `per_second` tokens refill each second, up to `burst` saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub per_second: u32,
    pub burst: u32,
}

/// Decides whether `key` may make one more request now.
#[async_trait::async_trait]
pub trait RateLimit: Send + Sync {
    /// `Err(wait)` when the bucket is empty: how long until a token is back.
    async fn check(&self, key: &str) -> Result<(), Duration>;
    /// Forgets buckets that are full again (keeps memory bounded by active clients).
    fn forget_idle(&self) {}
}

/// Buckets in this process's memory.
pub struct MemoryRateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl MemoryRateLimit {
    pub fn new(limit: Limit) -> MemoryRateLimit {
        let per_second = NonZeroU32::new(limit.per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(limit.burst.max(1)).expect("at least 1");
        MemoryRateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            ),
            clock: DefaultClock::default(),
        }
    }
}

#[async_trait::async_trait]
impl RateLimit for MemoryRateLimit {
    async fn check(&self, key: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `Retry-After` in whole seconds, never 0 (a client told 0 would retry at once).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_passes_then_the_bucket_is_empty_per_key() {
        let l = MemoryRateLimit::new(Limit {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(l.check("ip:a").await.is_ok());
        }
        let wait = l.check("ip:a").await.unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            l.check("ip:b").await.is_ok(),
            "another key has its own bucket"
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
