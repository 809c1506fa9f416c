//! The circuit breaker's state machine, plain Rust driven by the instant it is given: closed,
//! open, half-open, and the tickets that tie a verdict to the period it was given in.

use super::rolling::Rolling;
use super::BreakerPolicy;
use std::time::{Duration, Instant};

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

    pub(super) fn as_str(self) -> &'static str {
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
}
