//! Chaos: faults a service injects into its own API on request, so resilience can be shown
//! rather than claimed.
//!
//! Every service built with [`crate::http::Service`] carries a [`Chaos`] switch in front of its
//! API routes (never in front of `/health/*`, `/metrics`, `/openapi.json` or the admin routes
//! under `/api/v1/admin/`, so an operator can always see the damage and switch it off). A
//! [`Profile`] says what to do to each request that passes:
//!
//! - **latency**: with probability `latency_rate`, wait `latency_ms` (or a uniform draw up to
//!   `latency_max_ms`) before handling it;
//! - **error**: with probability `error_rate`, answer 500 without handling it;
//! - **partial failure**: with probability `partial_failure_rate`, handle it — the change is
//!   committed — and then drop the answer: the status line may arrive but the body breaks off
//!   and the connection is closed, which is what a client sees when a process dies or a network
//!   cuts out after the commit. A client can only find out what happened by asking again, and
//!   that is what idempotency keys are for.
//!
//! Optionally only for some `routes` (path prefixes). `GET/PUT/DELETE /api/v1/admin/chaos`
//! (ADMIN, served by [`crate::http::admin`]) reads, sets and clears the profile at run time; `CHAOS_MODE=true` starts a service
//! with [`Profile::default_mode`] (5% errors). Metrics: `chaos_enabled` (0/1) and
//! `chaos_events_total{kind}` with kind `latency`, `error`, `partial_failure` (psp-mock adds its
//! own kinds through [`Chaos::record`]).
//!
//! The draws use the thread's RNG: chaos is about shares over many requests, and a test that
//! needs a certain outcome sets a rate of 0 or 1.

use crate::problem::Problem;
use crate::validate::Errors;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The admin route, the same on every service (and, through the gateway, at
/// `/api/v1/admin/{service}/chaos`).
pub const ADMIN_PATH: &str = "/api/v1/admin/chaos";
/// The longest latency a profile may add: beyond it every request times out anyway.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// What chaos does to requests. All rates are shares in `0.0..=1.0`; zero everywhere is off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Added latency in milliseconds (the lower bound when `latency_max_ms` is set).
    #[serde(default)]
    pub latency_ms: u64,
    /// When set, latency is drawn uniformly from `latency_ms..=latency_max_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_max_ms: Option<u64>,
    /// Share of requests delayed.
    #[serde(default)]
    pub latency_rate: f64,
    /// Share of requests answered 500 without being handled.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests handled whose answer is then dropped.
    #[serde(default)]
    pub partial_failure_rate: f64,
    /// Path prefixes chaos applies to; empty means every API route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

impl Profile {
    /// What `CHAOS_MODE=true` starts with: 5% of requests fail.
    pub fn default_mode() -> Profile {
        Profile {
            error_rate: 0.05,
            ..Profile::default()
        }
    }

    pub fn is_active(&self) -> bool {
        self.error_rate > 0.0
            || self.partial_failure_rate > 0.0
            || (self.latency_rate > 0.0
                && self.latency_ms.max(self.latency_max_ms.unwrap_or(0)) > 0)
    }

    /// Every problem with the profile, as field errors.
    pub fn validate(&self) -> Result<(), Problem> {
        let mut errors = Errors::new();
        for (field, rate) in [
            ("latency_rate", self.latency_rate),
            ("error_rate", self.error_rate),
            ("partial_failure_rate", self.partial_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                errors.add(field, "must be a share between 0 and 1");
            }
        }
        let in_range = |r: f64| (0.0..=1.0).contains(&r);
        if in_range(self.error_rate)
            && in_range(self.partial_failure_rate)
            && self.error_rate + self.partial_failure_rate > 1.0
        {
            errors.add(
                "partial_failure_rate",
                "error_rate and partial_failure_rate together must not exceed 1",
            );
        }
        if self.latency_ms > MAX_LATENCY_MS {
            errors.add("latency_ms", format!("must be at most {MAX_LATENCY_MS} ms"));
        }
        if let Some(max) = self.latency_max_ms {
            if max < self.latency_ms || max > MAX_LATENCY_MS {
                errors.add(
                    "latency_max_ms",
                    format!("must be between latency_ms and {MAX_LATENCY_MS} ms"),
                );
            }
        }
        if self.routes.len() > 32 {
            errors.add("routes", "at most 32 path prefixes");
        }
        for route in &self.routes {
            if !route.starts_with('/') || route.len() > 200 {
                errors.add(
                    "routes",
                    format!("{route:?} is not a path prefix like /api/v1/orders"),
                );
            }
        }
        errors.finish()
    }

    fn applies_to(&self, path: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| path.starts_with(r.as_str()))
    }
}

/// What chaos decided for one request. Pure, from the profile and three uniform draws in
/// `[0, 1)`, so the shares are tested without a server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    pub delay: Option<Duration>,
    pub fault: Option<Fault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Error,
    PartialFailure,
}

impl Profile {
    pub fn decide(&self, latency_draw: f64, fault_draw: f64, length_draw: f64) -> Verdict {
        let delay = (latency_draw < self.latency_rate).then(|| {
            let low = self.latency_ms;
            let high = self.latency_max_ms.unwrap_or(low).max(low);
            Duration::from_millis(low + ((high - low) as f64 * length_draw).round() as u64)
        });
        let fault = if fault_draw < self.error_rate {
            Some(Fault::Error)
        } else if fault_draw < self.error_rate + self.partial_failure_rate {
            Some(Fault::PartialFailure)
        } else {
            None
        };
        Verdict {
            delay: delay.filter(|d| !d.is_zero()),
            fault,
        }
    }
}

struct Inner {
    profile: RwLock<Profile>,
    /// Faults a service injects on its own besides the profile (psp-mock's processor chaos).
    external: std::sync::atomic::AtomicBool,
    enabled: IntGauge,
    events: IntCounterVec,
}

/// One service's chaos switch. Cheap to clone; clones share the profile.
#[derive(Clone)]
pub struct Chaos {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos")
            .field("profile", &self.profile())
            .finish()
    }
}

impl Chaos {
    /// Registers `chaos_enabled` and `chaos_events_total` on `registry`.
    pub fn new(registry: &Registry, initial: Profile) -> prometheus::Result<Chaos> {
        let enabled = IntGauge::with_opts(Opts::new(
            "chaos_enabled",
            "1 while a chaos profile is active on this service",
        ))?;
        let events = IntCounterVec::new(
            Opts::new(
                "chaos_events_total",
                "Faults chaos injected, by kind (latency, error, partial_failure, ...)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(enabled.clone()))?;
        registry.register(Box::new(events.clone()))?;
        for kind in ["latency", "error", "partial_failure"] {
            events.with_label_values(&[kind]);
        }
        let chaos = Chaos {
            inner: Arc::new(Inner {
                profile: RwLock::new(Profile::default()),
                external: Default::default(),
                enabled,
                events,
            }),
        };
        // Starting without chaos is the normal case and not worth a line per service.
        if initial.is_active() {
            chaos.set(initial);
        }
        Ok(chaos)
    }

    pub fn profile(&self) -> Profile {
        self.inner
            .profile
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the profile (already validated by the caller) and logs the change.
    pub fn set(&self, profile: Profile) {
        let active = profile.is_active();
        if active {
            tracing::warn!(?profile, "chaos enabled");
        } else {
            tracing::info!("chaos disabled");
        }
        *self
            .inner
            .profile
            .write()
            .unwrap_or_else(|e| e.into_inner()) = profile;
        self.refresh_gauge();
    }

    /// Says whether the service's own chaos (beyond the profile) is active, for `chaos_enabled`.
    pub fn set_external(&self, active: bool) {
        use std::sync::atomic::Ordering;
        self.inner.external.store(active, Ordering::SeqCst);
        self.refresh_gauge();
    }

    fn refresh_gauge(&self) {
        use std::sync::atomic::Ordering;
        let active = self.profile().is_active() || self.inner.external.load(Ordering::SeqCst);
        self.inner.enabled.set(i64::from(active));
    }

    /// Shows `kind` at zero before its first event, so a rate over it exists from the start.
    pub fn declare(&self, kind: &str) {
        self.inner.events.with_label_values(&[kind]);
    }

    /// Counts one injected fault of `kind`.
    pub fn record(&self, kind: &str) {
        self.inner.events.with_label_values(&[kind]).inc();
    }

    /// The middleware: for routes chaos applies to, delays, fails or drops as the profile says.
    pub async fn layer(State(chaos): State<Chaos>, req: Request, next: Next) -> Response {
        let path = req.uri().path();
        if path.starts_with("/api/v1/admin/") {
            return next.run(req).await;
        }
        let verdict = {
            let profile = chaos
                .inner
                .profile
                .read()
                .unwrap_or_else(|e| e.into_inner());
            if !profile.is_active() || !profile.applies_to(path) {
                None
            } else {
                let mut rng = rand::thread_rng();
                Some(profile.decide(rng.gen(), rng.gen(), rng.gen()))
            }
        };
        let Some(verdict) = verdict else {
            return next.run(req).await;
        };
        if let Some(delay) = verdict.delay {
            chaos.record("latency");
            tokio::time::sleep(delay).await;
        }
        match verdict.fault {
            None => next.run(req).await,
            Some(Fault::Error) => {
                chaos.record("error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "chaos_error",
                    "Injected failure",
                )
                .with_detail("chaos: this request failed on purpose")
                .into_response()
            }
            Some(Fault::PartialFailure) => {
                let response = next.run(req).await;
                chaos.record("partial_failure");
                tracing::debug!(status = %response.status(), "chaos: dropping the answer of a handled request");
                dropped(response)
            }
        }
    }
}

/// The answer of a handled request, lost on the way: the head goes out, the body breaks off
/// before its first byte, and the server closes the connection. A body of unknown length is
/// sent chunked, so the client cannot mistake the cut for a complete, empty answer.
fn dropped(response: Response) -> Response {
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let broken = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "chaos: answer dropped",
        ))
    });
    Response::from_parts(parts, Body::from_stream(broken))
}

/// The chaos answer: the profile in force and whether it does anything.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChaosView {
    pub enabled: bool,
    #[serde(flatten)]
    pub profile: Profile,
}

impl ChaosView {
    pub fn of(chaos: &Chaos) -> ChaosView {
        let profile = chaos.profile();
        ChaosView {
            enabled: profile.is_active(),
            profile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> Profile {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn draws_below_a_rate_hit_and_above_it_miss() {
        let p = profile(serde_json::json!({
            "latency_ms": 100, "latency_max_ms": 300, "latency_rate": 0.5,
            "error_rate": 0.2, "partial_failure_rate": 0.3
        }));
        assert_eq!(
            p.decide(0.49, 0.1, 0.0).delay,
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            p.decide(0.0, 0.1, 1.0).delay,
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            p.decide(0.0, 0.1, 0.5).delay,
            Some(Duration::from_millis(200))
        );
        assert_eq!(p.decide(0.5, 0.1, 0.5).delay, None);
        assert_eq!(p.decide(0.9, 0.19, 0.0).fault, Some(Fault::Error));
        assert_eq!(p.decide(0.9, 0.2, 0.0).fault, Some(Fault::PartialFailure));
        assert_eq!(p.decide(0.9, 0.49, 0.0).fault, Some(Fault::PartialFailure));
        assert_eq!(p.decide(0.9, 0.5, 0.0).fault, None);
    }

    #[test]
    fn the_default_profile_does_nothing_and_chaos_mode_fails_one_in_twenty() {
        let off = Profile::default();
        assert!(!off.is_active());
        assert_eq!(
            off.decide(0.0, 0.0, 0.0),
            Verdict {
                delay: None,
                fault: None
            }
        );
        let on = Profile::default_mode();
        assert!(on.is_active());
        assert_eq!(on.decide(0.9, 0.049, 0.0).fault, Some(Fault::Error));
        assert_eq!(on.decide(0.9, 0.05, 0.0).fault, None);
    }

    #[test]
    fn routes_limit_where_chaos_applies() {
        let p =
            profile(serde_json::json!({"error_rate": 1.0, "routes": ["/api/v1/inventory/check"]}));
        assert!(p.applies_to("/api/v1/inventory/check"));
        assert!(!p.applies_to("/api/v1/inventory/reserve"));
        assert!(Profile::default().applies_to("/anything"));
    }

    #[test]
    fn bad_profiles_are_refused_field_by_field() {
        let bad = profile(serde_json::json!({
            "error_rate": 1.5, "latency_rate": -0.1, "latency_ms": 70000,
            "latency_max_ms": 10, "routes": ["api"]
        }));
        let problem = bad.validate().unwrap_err();
        let text = serde_json::to_string(&problem).unwrap();
        for field in [
            "error_rate",
            "latency_rate",
            "latency_ms",
            "latency_max_ms",
            "routes",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        let both = profile(serde_json::json!({"error_rate": 0.6, "partial_failure_rate": 0.6}));
        assert!(both.validate().is_err());
        assert!(Profile::default_mode().validate().is_ok());
        assert!(serde_json::from_value::<Profile>(serde_json::json!({"eror_rate": 1})).is_err());
    }

    #[test]
    fn the_gauge_follows_the_profile() {
        let registry = Registry::new();
        let chaos = Chaos::new(&registry, Profile::default()).unwrap();
        assert_eq!(chaos.inner.enabled.get(), 0);
        chaos.set(Profile::default_mode());
        assert_eq!(chaos.inner.enabled.get(), 1);
        chaos.set(Profile::default());
        assert_eq!(chaos.inner.enabled.get(), 0);
        assert!(
            Chaos::new(&registry, Profile::default()).is_err(),
            "one per registry"
        );
    }
}
