//! Admission: a call holds a breaker ticket and a bulkhead place while it runs. [`Admitted`]
//! is that pair for a caller that makes the exchange itself (the gateway's streaming proxy).

use super::metrics::Outcome;
use super::{Dependency, Error, Ticket};
use http::StatusCode;

/// How an exchange made outside [`Dependency::send`] ended (see [`Dependency::admit_call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The dependency answered with this status (a 5xx counts against it).
    Answered(StatusCode),
    Timeout,
    Connect,
    /// The exchange broke after connecting.
    Transport,
    /// The dependency shed the request on purpose (a 503 marked overloaded): healthy, like a
    /// 429, so the breaker does not count it.
    Overloaded,
}

/// A call admitted by the breaker and the bulkhead, for a caller that makes the exchange
/// itself: the gateway streams bodies both ways, which [`Dependency::send`] (whole answers,
/// requests rebuilt per attempt) cannot. Holds a bulkhead place until dropped; a call dropped
/// without [`Admitted::finish`] gives its breaker slot back uncounted.
pub struct Admitted<'a> {
    pub(super) held: Held<'a>,
    pub(super) permit: tokio::sync::SemaphorePermit<'a>,
}

impl Admitted<'_> {
    /// Records how the attempt ended: counted in `http_client_requests_total` and by the
    /// breaker.
    pub fn finish(mut self, ended: Ended) {
        let outcome = match ended {
            Ended::Answered(status) if status.is_server_error() => Outcome::ErrorStatus,
            Ended::Answered(StatusCode::TOO_MANY_REQUESTS) | Ended::Overloaded => {
                Outcome::Throttled
            }
            Ended::Answered(_) => Outcome::Ok,
            Ended::Timeout => Outcome::Timeout,
            Ended::Connect => Outcome::Connect,
            Ended::Transport => Outcome::Transport,
        };
        self.held.dependency.shared.metrics.count(outcome);
        self.held
            .record(matches!(outcome, Outcome::Ok | Outcome::Throttled));
    }
}

pub(super) struct Held<'a> {
    dependency: &'a Dependency,
    ticket: Option<Ticket>,
}

impl Held<'_> {
    pub(super) fn record(&mut self, success: bool) {
        if let Some(ticket) = self.ticket.take() {
            self.dependency
                .breaker(|b, now| b.record(ticket, success, now));
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.dependency.breaker(|b, _| b.release(ticket));
        }
    }
}

impl Dependency {
    /// Lets one call through the breaker and the bulkhead, or says why not (counted as
    /// `breaker_open` / `bulkhead_full`). For exchanges [`Dependency::send`] cannot make.
    pub fn admit_call(&self) -> Result<Admitted<'_>, Error> {
        let s = &*self.shared;
        let Some(held) = self.admit() else {
            s.metrics.count(Outcome::BreakerOpen);
            return Err(Error::BreakerOpen {
                dependency: s.name.clone(),
            });
        };
        let Ok(permit) = s.bulkhead.try_acquire() else {
            s.metrics.count(Outcome::BulkheadFull);
            return Err(Error::BulkheadFull {
                dependency: s.name.clone(),
            });
        };
        Ok(Admitted { held, permit })
    }

    /// A breaker ticket that gives itself back if dropped without a verdict, so a caller that
    /// stops waiting mid-call cannot leave a half-open breaker with no trial slot free.
    pub(super) fn admit(&self) -> Option<Held<'_>> {
        let ticket = self.breaker(|b, now| b.try_acquire(now))?;
        Some(Held {
            dependency: self,
            ticket: Some(ticket),
        })
    }
}
