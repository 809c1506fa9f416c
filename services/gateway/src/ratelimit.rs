//! Token-bucket rate limits, per client address and per signed-in user.
//!
//! By default the buckets live in this process ([`MemoryRateLimit`], governor's GCRA, one cell
//! per key), so each gateway replica keeps its own. With `MERCATO_REDIS_URL` they live in Redis
//! ([`RedisRateLimit`], the same GCRA in a Lua script), shared by every replica. A limiter
//! outage must never take the shop down: when Redis errs or is slow, the request is decided by
//! this replica's memory instead.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use parking_lot::Mutex;
use prometheus::IntCounter;
use redis::aio::ConnectionManager;
use redis::Script;
use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

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
        let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
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

/// How long Redis may take to decide one request before this replica's memory decides it.
pub const REDIS_BUDGET: Duration = Duration::from_millis(50);

/// After Redis failed, how long requests go straight to memory, so a Redis that does not
/// answer at all costs each request nothing rather than the whole budget.
const HOLD_OFF: Duration = Duration::from_secs(1);

/// How often a Redis outage is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// GCRA, as governor does it: a bucket is one number, its theoretical arrival time (TAT, in
/// microseconds of the server's clock), the moment it would be full again. A request is let
/// through when the TAT it would push forward by one token's interval stays within `burst`
/// intervals of now; the key expires when the bucket is full again, so idle buckets cost
/// nothing. KEYS: the bucket. ARGV: microseconds per token, burst. Returns 0 when let through,
/// else the microseconds until a token is back.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * tonumber(ARGV[2])
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return 0
",
    )
});

/// `gateway_ratelimit_fallbacks_total`: requests decided by this replica's memory because
/// Redis failed or was slow.
pub fn fallback_counter(registry: &prometheus::Registry) -> anyhow::Result<IntCounter> {
    let c = IntCounter::new(
        "gateway_ratelimit_fallbacks_total",
        "Rate-limit decisions made in memory because Redis failed or was slow",
    )?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

#[derive(Default)]
struct Outage {
    /// Until when requests skip Redis.
    holding_off_until: Option<Instant>,
    last_warned: Option<Instant>,
}

/// Buckets in Redis, under `<prefix>ratelimit:<key>`, shared by every gateway replica.
pub struct RedisRateLimit {
    conn: ConnectionManager,
    prefix: String,
    interval_us: u64,
    burst: u32,
    budget: Duration,
    fallback: MemoryRateLimit,
    fallbacks: IntCounter,
    outage: Mutex<Outage>,
}

impl RedisRateLimit {
    /// Counts each request decided in memory instead in `fallbacks`.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        limit: Limit,
        fallbacks: IntCounter,
    ) -> RedisRateLimit {
        RedisRateLimit {
            conn,
            prefix: prefix.to_owned(),
            interval_us: (1_000_000 / u64::from(limit.per_second.max(1))).max(1),
            burst: limit.burst.max(1),
            budget: REDIS_BUDGET,
            fallback: MemoryRateLimit::new(limit),
            fallbacks,
            outage: Mutex::new(Outage::default()),
        }
    }

    fn holding_off(&self, now: Instant) -> bool {
        let outage = self.outage.lock();
        outage.holding_off_until.is_some_and(|until| now < until)
    }

    /// Redis failed: this request and those of the next moment are decided in memory.
    fn failed(&self, why: &str) {
        let now = Instant::now();
        let mut outage = self.outage.lock();
        outage.holding_off_until = Some(now + HOLD_OFF);
        if outage
            .last_warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            outage.last_warned = Some(now);
            tracing::warn!(
                error = why,
                "Redis rate limits unavailable; this replica's own buckets decide meanwhile"
            );
        }
    }

    async fn in_memory(&self, key: &str) -> Result<(), Duration> {
        self.fallbacks.inc();
        self.fallback.check(key).await
    }
}

#[async_trait::async_trait]
impl RateLimit for RedisRateLimit {
    async fn check(&self, key: &str) -> Result<(), Duration> {
        if self.holding_off(Instant::now()) {
            return self.in_memory(key).await;
        }
        let mut conn = self.conn.clone();
        let mut call = GCRA.prepare_invoke();
        call.key(format!("{}ratelimit:{key}", self.prefix))
            .arg(self.interval_us)
            .arg(self.burst);
        match tokio::time::timeout(self.budget, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(wait_us)) if wait_us <= 0 => Ok(()),
            Ok(Ok(wait_us)) => Err(Duration::from_micros(wait_us as u64)),
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                self.in_memory(key).await
            }
            Err(_) => {
                self.failed(&format!("no answer within {} ms", self.budget.as_millis()));
                self.in_memory(key).await
            }
        }
    }

    fn forget_idle(&self) {
        self.fallback.forget_idle();
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
