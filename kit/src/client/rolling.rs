//! A rolling window of two counters, shared by the breaker (attempts, failures) and the retry
//! budget (calls, retries).

use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

/// Two counters summed over the last `window`, kept in ten buckets so memory stays constant
/// whatever the traffic. The window slides a bucket at a time: what it covers is between nine
/// and ten tenths of `window` back.
#[derive(Debug)]
pub(super) struct Rolling {
    width: Duration,
    origin: Option<Instant>,
    /// (bucket number since origin, first counter, second counter)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Rolling {
    pub(super) fn new(window: Duration) -> Self {
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

    pub(super) fn add(&mut self, now: Instant, a: u64, b: u64) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.0 != slot {
            *bucket = (slot, 0, 0);
        }
        bucket.1 += a;
        bucket.2 += b;
    }

    pub(super) fn sums(&mut self, now: Instant) -> (u64, u64) {
        let slot = self.slot(now);
        self.buckets
            .iter()
            .filter(|(s, _, _)| *s <= slot && slot - *s < BUCKETS as u64)
            .fold((0, 0), |(a, b), (_, x, y)| (a + x, b + y))
    }

    pub(super) fn clear(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); BUCKETS];
    }
}
