//! The chaos switch on a real socket: what a client sees of each fault, and that the admin
//! routes and operational routes stay out of its reach.

use axum::routing::{get, post};
use axum::Router;
use mercato_kit::auth::Role;
use mercato_kit::http::HttpSettings;
use mercato_kit::testing::{bare_service, serve, token, verifier};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct App {
    base: String,
    handled: Arc<AtomicUsize>,
    admin: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

async fn app() -> App {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let api = Router::new()
        .route(
            "/api/v1/things",
            post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(json!({"made": true})),
                    )
                }
            }),
        )
        .route("/api/v1/other", get(|| async { "other" }));
    let service = bare_service(api, &HttpSettings::default()).with_admin(verifier());
    let (addr, stop) = serve(service).await;
    let base = format!("http://{addr}");
    App {
        base,
        handled,
        admin: token("root", Role::Admin),
        http: reqwest::Client::new(),
        stop,
    }
}

impl App {
    async fn chaos(&self, profile: Value) -> reqwest::Response {
        self.http
            .put(format!("{}/api/v1/admin/chaos", self.base))
            .bearer_auth(&self.admin)
            .json(&profile)
            .send()
            .await
            .unwrap()
    }

    async fn make(&self) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let res = self
            .http
            .post(format!("{}/api/v1/things", self.base))
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.bytes().await?.to_vec()))
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_dropped_answer_was_handled_but_never_reaches_the_client_whole() {
    let app = app().await;
    assert_eq!(
        app.chaos(json!({"partial_failure_rate": 1.0}))
            .await
            .status(),
        200
    );
    for _ in 0..5 {
        let got = app.make().await;
        assert!(got.is_err(), "a complete answer came through: {got:?}");
    }
    assert_eq!(app.handled.load(Ordering::SeqCst), 5, "each was handled");
    assert!(app
        .metrics()
        .await
        .contains("chaos_events_total{kind=\"partial_failure\",service=\"test\"} 5"));
    app.stop.cancel();
}

#[tokio::test]
async fn an_injected_error_is_a_500_problem_and_nothing_is_handled() {
    let app = app().await;
    app.chaos(json!({"error_rate": 1.0})).await;
    let (status, body) = app.make().await.unwrap();
    assert_eq!(status, 500);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "chaos_error");
    assert_eq!(app.handled.load(Ordering::SeqCst), 0);
    // Operational routes and the switch itself are never touched.
    let res = app
        .http
        .get(format!("{}/health/live", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .delete(format!("{}/api/v1/admin/chaos", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.make().await.unwrap().0, 201);
    assert!(app
        .metrics()
        .await
        .contains("chaos_enabled{service=\"test\"} 0"));
    app.stop.cancel();
}

#[tokio::test]
async fn latency_is_added_and_routes_limit_where_chaos_applies() {
    let app = app().await;
    app.chaos(json!({"latency_ms": 300, "latency_rate": 1.0, "routes": ["/api/v1/things"]}))
        .await;
    let started = Instant::now();
    assert_eq!(app.make().await.unwrap().0, 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Another route is left alone (a generous bound: only the absence of 300 ms matters).
    let started = Instant::now();
    let res = app
        .http
        .get(format!("{}/api/v1/other", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(300));
    let m = app.metrics().await;
    assert!(
        m.contains("chaos_events_total{kind=\"latency\",service=\"test\"} 1"),
        "{m}"
    );
    assert!(m.contains("chaos_enabled{service=\"test\"} 1"), "{m}");
    app.stop.cancel();
}

#[tokio::test]
async fn only_an_admin_may_switch_chaos() {
    let app = app().await;
    let res = app
        .http
        .put(format!("{}/api/v1/admin/chaos", app.base))
        .bearer_auth(token("someone", Role::Customer))
        .json(&json!({"error_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = app
        .http
        .get(format!("{}/api/v1/admin/chaos", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(app.make().await.unwrap().0, 201, "chaos stayed off");
    app.stop.cancel();
}
