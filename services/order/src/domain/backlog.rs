//! Back-pressure: when the saga is too far behind, new orders are refused rather than queued.

/// The orders still in the saga (PENDING or CONFIRMED, leaving out those that reported waiting
/// on an outage: they have their own deadline, the reservation's expiry), and when the oldest
/// PENDING one was placed. PENDING is the step entirely inside the shop (order.created to the
/// reservation), so its age is the saga's own lag, not a customer's slow card.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub orders: i64,
    /// µs since the epoch; `None` when nothing is PENDING.
    pub oldest_pending_at: Option<i64>,
}

/// How far behind the saga may fall before new orders are refused (0 turns a bound off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacklogLimits {
    /// At most this many orders in the saga.
    pub max_orders: i64,
    /// No PENDING order older than this, in seconds.
    pub max_age_secs: i64,
}

impl BacklogLimits {
    pub const OFF: BacklogLimits = BacklogLimits {
        max_orders: 0,
        max_age_secs: 0,
    };

    /// Why a new order is refused now, if it is.
    pub fn refuses(&self, b: Backlog, now_us: i64) -> Option<Overload> {
        if self.max_orders > 0 && b.orders >= self.max_orders {
            return Some(Overload::Backlog {
                orders: b.orders,
                max: self.max_orders,
            });
        }
        let age_secs = b
            .oldest_pending_at
            .map(|at| (now_us - at).max(0) / 1_000_000)?;
        (self.max_age_secs > 0 && age_secs >= self.max_age_secs).then_some(Overload::Age {
            age_secs,
            max: self.max_age_secs,
        })
    }
}

/// Why the saga counts as behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overload {
    Backlog { orders: i64, max: i64 },
    Age { age_secs: i64, max: i64 },
}

impl Overload {
    /// The `reason` label of `orders_overloaded_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Overload::Backlog { .. } => "backlog",
            Overload::Age { .. } => "age",
        }
    }
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overload::Backlog { orders, max } => write!(
                f,
                "{orders} orders are still in the saga (the bound is {max}); new orders are refused until it catches up"
            ),
            Overload::Age { age_secs, max } => write!(
                f,
                "the oldest order waiting for stock was placed {age_secs} s ago (the bound is {max} s); new orders are refused until the saga catches up"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_pressure_refuses_past_either_bound_and_never_when_off() {
        let now = 1_000_000_000_000;
        let limits = BacklogLimits {
            max_orders: 100,
            max_age_secs: 30,
        };
        let at = |secs_ago: i64| Some(now - secs_ago * 1_000_000);
        for (orders, oldest, refused) in [
            (0, None, None),
            (99, at(29), None),
            (100, None, Some("backlog")),
            (5_000, at(0), Some("backlog")),
            (1, at(30), Some("age")),
            (1, at(3_600), Some("age")),
            // A clock a little behind the writer's is no reason to refuse.
            (1, Some(now + 5_000_000), None),
        ] {
            let b = Backlog {
                orders,
                oldest_pending_at: oldest,
            };
            assert_eq!(
                limits.refuses(b, now).map(Overload::reason),
                refused,
                "{b:?}"
            );
        }
        let huge = Backlog {
            orders: i64::MAX,
            oldest_pending_at: at(1_000_000),
        };
        assert_eq!(BacklogLimits::OFF.refuses(huge, now), None);
        let text = limits
            .refuses(
                Backlog {
                    orders: 100,
                    oldest_pending_at: None,
                },
                now,
            )
            .unwrap()
            .to_string();
        assert!(
            text.contains("100 orders") && text.contains("bound is 100"),
            "{text}"
        );
    }
}
