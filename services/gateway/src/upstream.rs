//! The replicas of each service and which one gets the next request.
//!
//! Requests go round-robin over a service's replicas. A replica that refused a connection is
//! passed over for a short while (passive health), so one dead replica costs one failed
//! connect, not every other request.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a replica that refused a connection is passed over.
const BENCH_FOR: Duration = Duration::from_secs(2);

/// One replica's base URL (scheme and authority, no trailing slash).
#[derive(Debug)]
pub struct Replica {
    pub base: String,
    benched_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn new(base: &str) -> Replica {
        Replica {
            base: base.trim_end_matches('/').to_owned(),
            benched_until: Mutex::new(None),
        }
    }

    fn benched(&self, now: Instant) -> bool {
        self.benched_until.lock().is_some_and(|t| now < t)
    }

    /// The replica refused a connection: others go first for a while.
    pub fn bench(&self) {
        *self.benched_until.lock() = Some(Instant::now() + BENCH_FOR);
    }

    /// The replica answered: it is in rotation again.
    pub fn restore(&self) {
        *self.benched_until.lock() = None;
    }
}

/// A service's replicas.
#[derive(Debug)]
pub struct Upstream {
    pub service: &'static str,
    pub replicas: Vec<Replica>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(service: &'static str, bases: &[String]) -> Upstream {
        Upstream {
            service,
            replicas: bases.iter().map(|b| Replica::new(b)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Every replica, in the order to try them for the next request: round-robin, with
    /// benched replicas last (still tried when all are benched: they may be back).
    pub fn candidates(&self) -> Vec<&Replica> {
        let n = self.replicas.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let (mut ready, benched): (Vec<&Replica>, Vec<&Replica>) = (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .partition(|r| !r.benched(now));
        ready.extend(benched);
        ready
    }
}

/// Every service's replicas, by service name.
pub type Upstreams = BTreeMap<&'static str, Upstream>;

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(c: &[&Replica]) -> Vec<String> {
        c.iter().map(|r| r.base.clone()).collect()
    }

    #[test]
    fn requests_go_round_robin() {
        let u = Upstream::new(
            "order",
            &["http://a/".into(), "http://b".into(), "http://c".into()],
        );
        let firsts: Vec<String> = (0..6).map(|_| u.candidates()[0].base.clone()).collect();
        assert_eq!(
            firsts,
            ["http://a", "http://b", "http://c", "http://a", "http://b", "http://c"]
        );
        assert_eq!(u.candidates().len(), 3);
    }

    #[test]
    fn a_benched_replica_goes_last_until_it_answers() {
        let u = Upstream::new("order", &["http://a".into(), "http://b".into()]);
        u.replicas[0].bench();
        for _ in 0..4 {
            assert_eq!(bases(&u.candidates()), ["http://b", "http://a"]);
        }
        u.replicas[0].restore();
        let firsts: Vec<String> = (0..2).map(|_| u.candidates()[0].base.clone()).collect();
        assert!(firsts.contains(&"http://a".to_owned()), "{firsts:?}");
    }

    #[test]
    fn no_replicas_no_candidates() {
        assert!(Upstream::new("order", &[]).candidates().is_empty());
    }
}
