//! Processor chaos: the faults a real card processor inflicts on a merchant, on request.
//!
//! The kit's generic chaos (latency, 500s, dropped answers; see `mercato_kit::chaos`) is about
//! any HTTP service. A card processor fails in its own ways, and the payment service must
//! survive each of them without charging twice or losing an outcome:
//!
//! - **timeout**: the processor does the work (the payment exists, the idempotency key has its
//!   answer) and then answers too late, so the caller gives up not knowing what happened and
//!   must retry with the same Idempotency-Key, which replays the answer;
//! - **server error**: a 503 `processor_unavailable` before anything is done;
//! - **duplicated webhooks**: one event delivered twice with the same event id (the receiver
//!   must apply it once);
//! - **out-of-order webhooks**: deliveries held back for a short window and sent newest first.
//!
//! The profile lives here behind a lock, shared by the HTTP layer and the webhook dispatcher.
//! Injected faults are counted on the kit's `chaos_events_total{kind}` (kinds `timeout`,
//! `server_error`, `webhook_duplicate`, `webhook_reorder`) and an active profile turns
//! `chaos_enabled` on. The kit creates that switch with the service, after the routes and the
//! dispatcher exist, so it is attached here once the service is built ([`ProcessorChaos::attach`]).
//!
//! The decisions are pure functions of the profile and uniform draws in `[0, 1)`, tested without
//! a server; a test that needs a certain outcome sets a rate of 0 or 1.

use mercato_kit::chaos::Chaos;
use mercato_kit::validate::Errors;
use mercato_kit::Problem;
use serde::{Deserialize, Serialize};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;
use utoipa::ToSchema;

/// The longest an answer may be held: past it every client has long given up.
pub const MAX_TIMEOUT_MS: u64 = 120_000;
/// The longest webhook deliveries may be held back for reordering.
pub const MAX_REORDER_WINDOW_MS: u64 = 10_000;
/// The prefix every processor-chaos route must start with: timeouts and server errors apply to
/// the payment API the merchant's payment service calls, nothing else.
pub const PROCESSOR_API: &str = "/v1/authorizations";

/// What the processor does wrong. Rates are shares in `0.0..=1.0`; the default does nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessorProfile {
    /// Share of processor API requests that are carried out and then answered only after
    /// `timeout_ms`.
    #[serde(default)]
    #[schema(example = 0.2)]
    pub timeout_rate: f64,
    /// How long a timed-out answer is held, 1 to 120000 ms.
    #[serde(default = "default_timeout_ms")]
    #[schema(example = 10000)]
    pub timeout_ms: u64,
    /// Share of processor API requests answered 503 `processor_unavailable` without being
    /// carried out. With `timeout_rate`, at most 1.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of webhook events delivered twice, with the same event id.
    #[serde(default)]
    pub duplicate_webhook_rate: f64,
    /// Hold webhook deliveries back for `reorder_window_ms` and send what was held newest first.
    #[serde(default)]
    pub reorder_webhooks: bool,
    /// How long deliveries are held back while `reorder_webhooks` is on, 10 to 10000 ms.
    #[serde(default = "default_reorder_window_ms")]
    pub reorder_window_ms: u64,
    /// Where timeouts and server errors apply: path prefixes under `/v1/authorizations`, or
    /// routes as documented (`/v1/authorizations/{id}/capture`). Empty means all of the
    /// processor API. Webhook chaos applies to every delivery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_reorder_window_ms() -> u64 {
    200
}

impl Default for ProcessorProfile {
    fn default() -> Self {
        ProcessorProfile {
            timeout_rate: 0.0,
            timeout_ms: default_timeout_ms(),
            error_rate: 0.0,
            duplicate_webhook_rate: 0.0,
            reorder_webhooks: false,
            reorder_window_ms: default_reorder_window_ms(),
            routes: Vec::new(),
        }
    }
}

/// What processor chaos does to one API request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Carry the request out, then hold the answer this long.
    Timeout(Duration),
    /// Answer 503 without carrying it out.
    ServerError,
}

/// What processor chaos does to one webhook event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryPlan {
    /// Delivered twice.
    pub duplicate: bool,
    /// Held back this long, then sent with whatever else was held, newest first.
    pub hold: Option<Duration>,
}

/// The kinds of `chaos_events_total` processor chaos counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Timeout,
    ServerError,
    WebhookDuplicate,
    WebhookReorder,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Timeout,
        Kind::ServerError,
        Kind::WebhookDuplicate,
        Kind::WebhookReorder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Timeout => "timeout",
            Kind::ServerError => "server_error",
            Kind::WebhookDuplicate => "webhook_duplicate",
            Kind::WebhookReorder => "webhook_reorder",
        }
    }
}

impl ProcessorProfile {
    pub fn is_active(&self) -> bool {
        self.timeout_rate > 0.0
            || self.error_rate > 0.0
            || self.duplicate_webhook_rate > 0.0
            || self.reorder_webhooks
    }

    /// Every problem with the profile, as field errors (422 `validation_failed`).
    pub fn validate(&self) -> Result<(), Problem> {
        let mut errors = Errors::new();
        for (field, rate) in [
            ("timeout_rate", self.timeout_rate),
            ("error_rate", self.error_rate),
            ("duplicate_webhook_rate", self.duplicate_webhook_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                errors.add(field, "must be a share between 0 and 1");
            }
        }
        if self.timeout_rate + self.error_rate > 1.0 {
            errors.add(
                "error_rate",
                "timeout_rate and error_rate together must not exceed 1",
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            errors.add(
                "timeout_ms",
                format!("must be from 1 to {MAX_TIMEOUT_MS} ms"),
            );
        }
        if !(10..=MAX_REORDER_WINDOW_MS).contains(&self.reorder_window_ms) {
            errors.add(
                "reorder_window_ms",
                format!("must be from 10 to {MAX_REORDER_WINDOW_MS} ms"),
            );
        }
        if self.routes.len() > 32 {
            errors.add("routes", "at most 32 routes");
        }
        for route in &self.routes {
            if !route.starts_with(PROCESSOR_API) || route.len() > 200 {
                errors.add(
                    "routes",
                    format!("{route:?} is not a route of the processor API like {PROCESSOR_API} or {PROCESSOR_API}/{{id}}/capture"),
                );
            }
        }
        errors.finish()
    }

    /// Whether timeouts and server errors apply to a request for `path`, matched by the route
    /// template `route` (`/v1/authorizations/{id}/capture`).
    pub fn applies_to(&self, path: &str, route: Option<&str>) -> bool {
        self.routes.is_empty()
            || self
                .routes
                .iter()
                .any(|r| path.starts_with(r.as_str()) || route == Some(r.as_str()))
    }

    /// The fault for one request, from one uniform draw: below `error_rate` a server error,
    /// then `timeout_rate` more of the range a timeout.
    pub fn decide(&self, draw: f64) -> Option<Fault> {
        if draw < self.error_rate {
            Some(Fault::ServerError)
        } else if draw < self.error_rate + self.timeout_rate {
            Some(Fault::Timeout(Duration::from_millis(self.timeout_ms)))
        } else {
            None
        }
    }

    /// What happens to one webhook event, from one uniform draw.
    pub fn plan_delivery(&self, draw: f64) -> DeliveryPlan {
        DeliveryPlan {
            duplicate: draw < self.duplicate_webhook_rate,
            hold: self
                .reorder_webhooks
                .then(|| Duration::from_millis(self.reorder_window_ms)),
        }
    }
}

/// The processor's chaos switch, shared by the routes and the webhook dispatcher.
#[derive(Default)]
pub struct ProcessorChaos {
    profile: RwLock<ProcessorProfile>,
    /// The service's kit switch: its metrics, and its generic profile served at
    /// `/v1/test/chaos/http`. Set once, when the service has been built.
    http: OnceLock<Chaos>,
}

impl std::fmt::Debug for ProcessorChaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorChaos")
            .field("profile", &self.profile())
            .finish()
    }
}

impl ProcessorChaos {
    /// A switch starting with `initial` (already validated).
    pub fn new(initial: ProcessorProfile) -> ProcessorChaos {
        if initial.is_active() {
            tracing::warn!(profile = ?initial, "processor chaos enabled at start");
        }
        ProcessorChaos {
            profile: RwLock::new(initial),
            http: OnceLock::new(),
        }
    }

    /// Connects the service's kit switch; until then events are not counted (nothing can
    /// happen before the service serves).
    pub fn attach(&self, http: Chaos) {
        http.set_external(self.profile().is_active());
        for kind in Kind::ALL {
            http.declare(kind.as_str());
        }
        if self.http.set(http).is_err() {
            tracing::error!("processor chaos attached twice; keeping the first switch");
        }
    }

    /// The kit switch of the service, once attached.
    pub fn http(&self) -> Option<&Chaos> {
        self.http.get()
    }

    pub fn profile(&self) -> ProcessorProfile {
        self.profile
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the profile (already validated by the caller) and logs the change.
    pub fn set(&self, profile: ProcessorProfile) {
        let active = profile.is_active();
        if active {
            tracing::warn!(?profile, "processor chaos enabled");
        } else {
            tracing::info!("processor chaos disabled");
        }
        *self.profile.write().unwrap_or_else(|e| e.into_inner()) = profile;
        if let Some(http) = self.http() {
            http.set_external(active);
        }
    }

    /// Counts one injected fault.
    pub fn record(&self, kind: Kind) {
        if let Some(http) = self.http() {
            http.record(kind.as_str());
        }
    }

    /// The fault for one request to `path` (route template `route`), drawn now.
    pub fn fault_for(&self, path: &str, route: Option<&str>) -> Option<Fault> {
        let profile = self.profile.read().unwrap_or_else(|e| e.into_inner());
        if profile.timeout_rate <= 0.0 && profile.error_rate <= 0.0 {
            return None;
        }
        if !profile.applies_to(path, route) {
            return None;
        }
        profile.decide(rand::random())
    }

    /// The plan for one webhook event, drawn now.
    pub fn plan_delivery(&self) -> DeliveryPlan {
        let profile = self.profile.read().unwrap_or_else(|e| e.into_inner());
        profile.plan_delivery(rand::random())
    }
}

/// The routes the generic profile applies to when it names none: the processor's API, never
/// the `/v1/test/*` controls, so the switch that turns chaos off cannot be broken by it.
pub const GENERIC_DEFAULT_ROUTES: [&str; 2] = ["/v1/payment_methods", PROCESSOR_API];
/// The control routes of chaos itself.
pub const CONTROL_PATH: &str = "/v1/test/chaos";

/// The generic profile as psp-mock applies it: validated by the kit, with no route that would
/// cover the chaos controls, and scoped to the processor API when it names no routes.
pub fn scope_generic(
    mut profile: mercato_kit::chaos::Profile,
) -> Result<mercato_kit::chaos::Profile, Problem> {
    profile.validate()?;
    let mut errors = Errors::new();
    for route in &profile.routes {
        if CONTROL_PATH.starts_with(route.as_str()) || route.starts_with(CONTROL_PATH) {
            errors.add(
                "routes",
                format!("{route:?} covers {CONTROL_PATH}, the routes that switch chaos off"),
            );
        }
    }
    errors.finish()?;
    if profile.routes.is_empty() {
        profile.routes = GENERIC_DEFAULT_ROUTES.map(str::to_owned).to_vec();
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> ProcessorProfile {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_default_does_nothing() {
        let off = ProcessorProfile::default();
        assert!(!off.is_active());
        assert!(off.validate().is_ok());
        assert_eq!(off, profile(serde_json::json!({})));
        assert_eq!(off.decide(0.0), None);
        assert_eq!(
            off.plan_delivery(0.0),
            DeliveryPlan {
                duplicate: false,
                hold: None
            }
        );
    }

    #[test]
    fn draws_below_a_rate_hit_and_above_it_miss() {
        let p = profile(serde_json::json!({
            "error_rate": 0.2, "timeout_rate": 0.3, "timeout_ms": 500,
            "duplicate_webhook_rate": 0.5
        }));
        assert!(p.is_active());
        assert_eq!(p.decide(0.0), Some(Fault::ServerError));
        assert_eq!(p.decide(0.199), Some(Fault::ServerError));
        assert_eq!(
            p.decide(0.2),
            Some(Fault::Timeout(Duration::from_millis(500)))
        );
        assert_eq!(
            p.decide(0.499),
            Some(Fault::Timeout(Duration::from_millis(500)))
        );
        assert_eq!(p.decide(0.5), None);
        assert!(p.plan_delivery(0.49).duplicate);
        assert!(!p.plan_delivery(0.5).duplicate);
        assert_eq!(p.plan_delivery(0.0).hold, None);
        let reorder = profile(serde_json::json!({"reorder_webhooks": true}));
        assert!(reorder.is_active());
        assert_eq!(
            reorder.plan_delivery(0.0).hold,
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn routes_limit_where_timeouts_and_errors_apply() {
        let p = profile(serde_json::json!({
            "error_rate": 1.0,
            "routes": ["/v1/authorizations/{id}/capture"]
        }));
        assert!(p.validate().is_ok());
        let capture = Some("/v1/authorizations/{id}/capture");
        assert!(p.applies_to("/v1/authorizations/pi_1/capture", capture));
        assert!(!p.applies_to("/v1/authorizations", Some("/v1/authorizations")));
        assert!(!p.applies_to(
            "/v1/authorizations/pi_1/void",
            Some("/v1/authorizations/{id}/void")
        ));
        let all = ProcessorProfile::default();
        assert!(all.applies_to("/v1/authorizations/pi_1/void", None));
    }

    #[test]
    fn bad_profiles_are_refused_field_by_field() {
        let bad = profile(serde_json::json!({
            "timeout_rate": 1.5, "error_rate": -0.1, "duplicate_webhook_rate": 2,
            "timeout_ms": 120001, "reorder_window_ms": 5, "routes": ["/v1/test/stats"]
        }));
        let problem = bad.validate().unwrap_err();
        assert_eq!(problem.status, 422);
        let fields: Vec<&str> = problem.errors.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "timeout_rate",
            "error_rate",
            "duplicate_webhook_rate",
            "timeout_ms",
            "reorder_window_ms",
            "routes",
        ] {
            assert!(fields.contains(&field), "{field} missing from {fields:?}");
        }
        let both = profile(serde_json::json!({"timeout_rate": 0.6, "error_rate": 0.6}));
        assert_eq!(both.validate().unwrap_err().errors[0].field, "error_rate");
        let zero = profile(serde_json::json!({"timeout_ms": 0}));
        assert_eq!(zero.validate().unwrap_err().errors[0].field, "timeout_ms");
        assert!(
            serde_json::from_value::<ProcessorProfile>(serde_json::json!({"timeout": 1})).is_err()
        );
    }

    #[test]
    fn the_generic_profile_never_covers_the_controls() {
        use mercato_kit::chaos::Profile;
        let scoped = scope_generic(Profile::default_mode()).unwrap();
        assert_eq!(scoped.routes, GENERIC_DEFAULT_ROUTES.to_vec());
        for route in ["/", "/v1", "/v1/test", "/v1/test/chaos/http"] {
            let p = Profile {
                error_rate: 1.0,
                routes: vec![route.into()],
                ..Profile::default()
            };
            let e = scope_generic(p).unwrap_err();
            assert_eq!(e.errors[0].field, "routes", "{route}");
        }
        let capture_only = Profile {
            error_rate: 1.0,
            routes: vec!["/v1/authorizations".into()],
            ..Profile::default()
        };
        assert_eq!(
            scope_generic(capture_only.clone()).unwrap(),
            capture_only,
            "routes it names are kept"
        );
        let bad = Profile {
            error_rate: 2.0,
            ..Profile::default()
        };
        assert_eq!(
            scope_generic(bad).unwrap_err().errors[0].field,
            "error_rate"
        );
    }

    #[test]
    fn the_switch_counts_only_once_attached_and_drives_the_gauge() {
        let registry = prometheus_registry();
        let http = Chaos::new(&registry, mercato_kit::chaos::Profile::default()).unwrap();
        let chaos = ProcessorChaos::new(profile(serde_json::json!({"error_rate": 1.0})));
        chaos.record(Kind::ServerError); // not attached yet: nowhere to count
        chaos.attach(http);
        assert_eq!(gauge(&registry), 1);
        chaos.record(Kind::ServerError);
        assert_eq!(
            chaos.fault_for("/v1/authorizations", None),
            Some(Fault::ServerError)
        );
        chaos.set(ProcessorProfile::default());
        assert_eq!(gauge(&registry), 0);
        assert_eq!(chaos.fault_for("/v1/authorizations", None), None);
        let text = metrics_text(&registry);
        assert!(
            text.contains(r#"chaos_events_total{kind="server_error"} 1"#),
            "{text}"
        );
    }

    fn prometheus_registry() -> prometheus::Registry {
        prometheus::Registry::new()
    }

    fn gauge(registry: &prometheus::Registry) -> i64 {
        let text = metrics_text(registry);
        let line = text
            .lines()
            .find(|l| l.starts_with("chaos_enabled "))
            .unwrap_or_else(|| panic!("no chaos_enabled in {text}"));
        line["chaos_enabled ".len()..].parse().unwrap()
    }

    fn metrics_text(registry: &prometheus::Registry) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }
}
