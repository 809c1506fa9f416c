//! The resilient client against a real HTTP server: each test starts a local axum server that
//! answers from a script and records every request it receives, so what the client claims
//! (no call while the breaker is open, no retry of a POST without a key, …) is proved by what
//! the server saw, and the metrics are checked after each scenario.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use mercato_kit::client::{BreakerState, Dependency, Error, ManualClock, Policy};
use mercato_kit::http::{RequestContext, CORRELATION_ID, IDEMPOTENCY_KEY, TRACEPARENT};
use mercato_kit::testing::eventually;
use prometheus::Registry;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// A scripted server

#[derive(Clone, Debug)]
enum Reply {
    Status(u16),
    /// A status with a `Retry-After` header.
    RetryAfter(u16, &'static str),
    /// Answers 200 once the test releases held requests.
    Hold,
    /// Never answers.
    Silent,
}

struct Seen {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

struct Script {
    default: Mutex<Reply>,
    next: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    held: AtomicUsize,
    release: watch::Sender<bool>,
}

async fn answer(
    State(script): State<Arc<Script>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.seen.lock().unwrap().push(Seen {
        method,
        headers,
        body,
        at: Instant::now(),
    });
    let reply = script
        .next
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| script.default.lock().unwrap().clone());
    match reply {
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("status {code}"),
        )
            .into_response(),
        Reply::RetryAfter(code, after) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", after)],
            "later",
        )
            .into_response(),
        Reply::Hold => {
            script.held.fetch_add(1, Ordering::SeqCst);
            let mut released = script.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
            script.held.fetch_sub(1, Ordering::SeqCst);
            "released".into_response()
        }
        Reply::Silent => std::future::pending().await,
    }
}

struct Server {
    base: String,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(default: Reply) -> Server {
        let script = Arc::new(Script {
            default: Mutex::new(default),
            next: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
            held: AtomicUsize::new(0),
            release: watch::channel(false).0,
        });
        let app = Router::new().fallback(answer).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { base, script, task }
    }

    fn url(&self) -> String {
        format!("{}/thing", self.base)
    }

    /// Replies to give, in order, before falling back to the default.
    fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.next.lock().unwrap().extend(replies);
    }

    fn answer_with(&self, reply: Reply) {
        *self.script.default.lock().unwrap() = reply;
    }

    fn hits(&self) -> usize {
        self.script.seen.lock().unwrap().len()
    }

    fn held(&self) -> usize {
        self.script.held.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.script.release.send_replace(true);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A policy with the breaker and the budget out of the way and near-zero backoff, so a test
/// turns on only what it is about.
fn policy() -> Policy {
    let mut p = Policy::new(Duration::from_secs(5), Duration::from_secs(10));
    p.retry.base_backoff = Duration::from_millis(1);
    p.retry.max_backoff = Duration::from_millis(5);
    p.retry.budget.min_per_second = 1000.0;
    p.breaker.min_calls = 1000;
    p
}

fn dependency(name: &str, policy: Policy) -> (Dependency, Registry) {
    let registry = Registry::new();
    let dep = Dependency::new(name, policy, &registry).unwrap();
    (dep, registry)
}

/// The value of a metric of `dependency` (and `outcome`, for the requests counter), read from
/// the text exposition a `/metrics` route serves.
fn metric(registry: &Registry, name: &str, dependency: &str, outcome: Option<&str>) -> f64 {
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    let want_dependency = format!("dependency=\"{dependency}\"");
    let want_outcome = outcome.map(|o| format!("outcome=\"{o}\""));
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .find(|(labels, _)| {
            let labels: Vec<&str> = labels.split(',').collect();
            labels.contains(&want_dependency.as_str())
                && want_outcome.as_deref().is_none_or(|o| labels.contains(&o))
        })
        .unwrap_or_else(|| panic!("no {name} for {dependency} {outcome:?} in\n{text}"))
        .1
        .parse()
        .unwrap()
}

fn requests(registry: &Registry, dependency: &str, outcome: &str) -> f64 {
    metric(
        registry,
        "http_client_requests_total",
        dependency,
        Some(outcome),
    )
}

fn retries(registry: &Registry, dependency: &str) -> f64 {
    metric(registry, "http_client_retries_total", dependency, None)
}

fn breaker_gauge(registry: &Registry, dependency: &str) -> f64 {
    metric(registry, "circuit_breaker_state", dependency, None)
}

fn status_of(result: &Result<mercato_kit::client::Response, Error>) -> Option<u16> {
    match result {
        Ok(r) => Some(r.status.as_u16()),
        Err(e) => e.status().map(|s| s.as_u16()),
    }
}

// ---------------------------------------------------------------------------------------------
// The circuit breaker

#[tokio::test]
async fn the_breaker_opens_at_the_threshold_makes_no_call_then_half_opens_and_closes() {
    let server = Server::start(Reply::Status(500)).await;
    let mut p = policy();
    p.breaker.min_calls = 4;
    p.breaker.failure_rate = 0.5;
    p.breaker.trial_calls = 2;
    p.breaker.reset_after = Duration::from_millis(300);
    let (dep, reg) = dependency("inventory", p);
    let url = server.url();

    for _ in 0..3 {
        let r = dep.send(None, |c| c.get(&url)).await;
        assert_eq!(status_of(&r), Some(500));
        assert_eq!(dep.state(), BreakerState::Closed);
    }
    let r = dep.send(None, |c| c.get(&url)).await;
    assert_eq!(status_of(&r), Some(500));
    let opened = Instant::now();
    assert_eq!(dep.state(), BreakerState::Open);
    assert_eq!(breaker_gauge(&reg, "inventory"), 1.0);
    assert_eq!(server.hits(), 4);

    for _ in 0..5 {
        let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
        assert!(matches!(e, Error::BreakerOpen { .. }), "{e}");
    }
    assert_eq!(server.hits(), 4, "an open breaker makes no call");
    assert_eq!(requests(&reg, "inventory", "breaker_open"), 5.0);
    assert_eq!(requests(&reg, "inventory", "error_status"), 4.0);

    // The dependency recovers; after the reset a trial goes through.
    server.answer_with(Reply::Status(200));
    let first = eventually(Duration::from_secs(5), || async {
        match dep.send(None, |c| c.get(&url)).await {
            Err(Error::BreakerOpen { .. }) => None,
            other => Some(other),
        }
    })
    .await;
    assert!(
        opened.elapsed() >= Duration::from_millis(300),
        "not before the reset"
    );
    assert_eq!(status_of(&first), Some(200));
    assert_eq!(server.hits(), 5);
    assert_eq!(dep.state(), BreakerState::HalfOpen, "one of two trials");
    assert_eq!(breaker_gauge(&reg, "inventory"), 2.0);

    let second = dep.send(None, |c| c.get(&url)).await;
    assert_eq!(status_of(&second), Some(200));
    assert_eq!(dep.state(), BreakerState::Closed);
    assert_eq!(breaker_gauge(&reg, "inventory"), 0.0);
    assert_eq!(server.hits(), 6);
    assert_eq!(requests(&reg, "inventory", "ok"), 2.0);

    // And the exposition a /metrics route would serve carries all three families.
    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &reg.gather(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("circuit_breaker_state{dependency=\"inventory\"} 0"),
        "{text}"
    );
    assert!(text.contains("http_client_retries_total{dependency=\"inventory\"} 0"));
    assert!(text
        .contains("http_client_requests_total{dependency=\"inventory\",outcome=\"breaker_open\"}"));
}

#[tokio::test]
async fn a_failed_trial_reopens_the_breaker_and_it_calls_nothing_again() {
    let server = Server::start(Reply::Status(503)).await;
    let clock = Arc::new(ManualClock::new());
    let mut p = policy();
    p.retry.max_retries = 0;
    p.breaker.min_calls = 2;
    p.breaker.reset_after = Duration::from_secs(30);
    let reg = Registry::new();
    let dep = Dependency::with_clock("processor", p, &reg, clock.clone()).unwrap();
    let url = server.url();

    for _ in 0..2 {
        let _ = dep.send(None, |c| c.get(&url)).await;
    }
    assert_eq!(dep.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(29));
    assert!(matches!(
        dep.send(None, |c| c.get(&url)).await,
        Err(Error::BreakerOpen { .. })
    ));
    assert_eq!(server.hits(), 2);

    clock.advance(Duration::from_secs(1));
    let trial = dep.send(None, |c| c.get(&url)).await;
    assert_eq!(status_of(&trial), Some(503), "the trial reached the server");
    assert_eq!(server.hits(), 3);
    assert_eq!(dep.state(), BreakerState::Open, "its failure reopens");
    assert_eq!(breaker_gauge(&reg, "processor"), 1.0);
    assert!(matches!(
        dep.send(None, |c| c.get(&url)).await,
        Err(Error::BreakerOpen { .. })
    ));
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_caller_that_gives_up_on_a_trial_does_not_wedge_the_breaker_half_open() {
    let server = Server::start(Reply::Status(502)).await;
    let clock = Arc::new(ManualClock::new());
    let mut p = policy();
    p.retry.max_retries = 0;
    p.breaker.min_calls = 1;
    p.breaker.trial_calls = 1;
    let reg = Registry::new();
    let dep = Dependency::with_clock("order", p, &reg, clock.clone()).unwrap();
    let url = server.url();

    let _ = dep.send(None, |c| c.get(&url)).await;
    assert_eq!(dep.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(10));
    server.then([Reply::Hold]);
    server.answer_with(Reply::Status(200));

    let (d, u) = (dep.clone(), url.clone());
    let trial = tokio::spawn(async move { d.send(None, |c| c.get(&u)).await });
    eventually(Duration::from_secs(5), || async {
        (server.held() == 1).then_some(())
    })
    .await;
    assert!(
        matches!(
            dep.send(None, |c| c.get(&url)).await,
            Err(Error::BreakerOpen { .. })
        ),
        "the one trial slot is taken"
    );
    trial.abort();
    assert!(trial.await.unwrap_err().is_cancelled());

    let r = dep.send(None, |c| c.get(&url)).await;
    assert_eq!(
        status_of(&r),
        Some(200),
        "the abandoned slot was given back"
    );
    assert_eq!(dep.state(), BreakerState::Closed);
    server.release();
}

#[tokio::test]
async fn throttling_and_client_errors_do_not_open_the_breaker() {
    let server = Server::start(Reply::Status(404)).await;
    let mut p = policy();
    p.retry.max_retries = 0;
    p.breaker.min_calls = 2;
    let (dep, reg) = dependency("catalog", p);
    let url = server.url();
    server.then([Reply::RetryAfter(429, "1"), Reply::Status(422)]);
    for _ in 0..4 {
        let _ = dep.send(None, |c| c.get(&url)).await;
    }
    assert_eq!(server.hits(), 4);
    assert_eq!(dep.state(), BreakerState::Closed);
    assert_eq!(requests(&reg, "catalog", "throttled"), 1.0);
    assert_eq!(requests(&reg, "catalog", "ok"), 3.0);
}

// ---------------------------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn transient_failures_of_idempotent_requests_are_retried() {
    let server = Server::start(Reply::Status(503)).await;
    let (dep, reg) = dependency("inventory", policy());
    let url = server.url();
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ];
    for (i, method) in methods.iter().enumerate() {
        let r = dep.send(None, |c| c.request(method.clone(), &url)).await;
        assert_eq!(status_of(&r), Some(503), "{method}");
        assert!(r.is_err());
        assert_eq!(server.hits(), 3 * (i + 1), "{method}: 1 call + 2 retries");
    }
    assert_eq!(retries(&reg, "inventory"), 10.0);
    assert_eq!(requests(&reg, "inventory", "error_status"), 15.0);
}

#[tokio::test]
async fn a_post_is_retried_only_with_an_idempotency_key_and_the_same_body() {
    let server = Server::start(Reply::Status(502)).await;
    let (dep, reg) = dependency("order", policy());
    let url = server.url();

    let r = dep.send(None, |c| c.post(&url).body("{}")).await;
    assert_eq!(status_of(&r), Some(502));
    assert_eq!(server.hits(), 1, "a POST without a key is sent once");
    let r = dep.send(None, |c| c.patch(&url).body("{}")).await;
    assert_eq!(status_of(&r), Some(502));
    assert_eq!(server.hits(), 2, "so is a PATCH");
    assert_eq!(retries(&reg, "order"), 0.0);

    server.then([Reply::Status(504), Reply::Status(503)]);
    server.answer_with(Reply::Status(201));
    let r = dep
        .send(None, |c| {
            c.post(&url)
                .header(IDEMPOTENCY_KEY, "order-42")
                .body(r#"{"n":42}"#)
        })
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(server.hits(), 5);
    let seen = server.script.seen.lock().unwrap();
    for s in &seen[2..] {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.headers[IDEMPOTENCY_KEY], "order-42");
        assert_eq!(&s.body[..], br#"{"n":42}"#);
    }
    drop(seen);
    assert_eq!(retries(&reg, "order"), 2.0);
}

#[tokio::test]
async fn client_errors_and_500_are_never_retried_and_4xx_is_the_callers_answer() {
    let server = Server::start(Reply::Status(200)).await;
    let (dep, reg) = dependency("catalog", policy());
    let url = server.url();
    for code in [400, 404, 409, 422] {
        server.then([Reply::Status(code)]);
        let r = dep.send(None, |c| c.get(&url)).await.unwrap();
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(r.text(), format!("status {code}"));
    }
    assert_eq!(server.hits(), 4);
    server.then([Reply::Status(500)]);
    let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
    match &e {
        Error::Status { response, .. } => {
            assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(response.text(), "status 500", "the body comes along");
        }
        other => panic!("{other}"),
    }
    assert_eq!(e.dependency(), "catalog");
    assert_eq!(server.hits(), 5, "a 500 is not retried");
    assert_eq!(retries(&reg, "catalog"), 0.0);
    assert_eq!(requests(&reg, "catalog", "ok"), 4.0);
    assert_eq!(requests(&reg, "catalog", "error_status"), 1.0);
}

#[tokio::test]
async fn a_retry_that_succeeds_returns_its_answer() {
    let server = Server::start(Reply::Status(200)).await;
    let (dep, reg) = dependency("catalog", policy());
    let url = server.url();
    server.then([Reply::Status(503), Reply::Status(502)]);
    let r = dep.send(None, |c| c.get(&url)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "status 200");
    assert_eq!(server.hits(), 3);
    assert_eq!(retries(&reg, "catalog"), 2.0);
    assert_eq!(requests(&reg, "catalog", "error_status"), 2.0);
    assert_eq!(requests(&reg, "catalog", "ok"), 1.0);
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let server = Server::start(Reply::Status(200)).await;
    let (dep, reg) = dependency("processor", policy());
    let url = server.url();
    server.then([Reply::RetryAfter(429, "1")]);
    let r = dep.send(None, |c| c.get(&url)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let seen = server.script.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    drop(seen);
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_secs(3),
        "waited {gap:?} for a Retry-After of 1 s"
    );
    assert_eq!(requests(&reg, "processor", "throttled"), 1.0);
    assert_eq!(retries(&reg, "processor"), 1.0);
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_returned_not_waited_for() {
    let server = Server::start(Reply::RetryAfter(503, "60")).await;
    let (dep, reg) = dependency("processor", policy());
    let url = server.url();
    let started = Instant::now();
    let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    match e {
        Error::Status { response, .. } => {
            assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response.headers["retry-after"], "60",
                "for the caller to pass on"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(server.hits(), 1);
    assert_eq!(retries(&reg, "processor"), 0.0);
}

#[tokio::test]
async fn the_retry_budget_stops_retries_when_spent() {
    let server = Server::start(Reply::Status(503)).await;
    let mut p = policy();
    p.retry.max_retries = 3;
    p.retry.budget.ratio = 0.5;
    p.retry.budget.min_per_second = 0.0;
    let (dep, reg) = dependency("inventory", p);
    let url = server.url();
    // Allowance: half a retry per call. Call 1: 0.5 → none; call 2: 1 → one; call 3: 1.5 →
    // none more; call 4: 2 → one.
    let mut hits = Vec::new();
    for _ in 0..4 {
        let before = server.hits();
        let r = dep.send(None, |c| c.get(&url)).await;
        assert_eq!(status_of(&r), Some(503), "the last failure is returned");
        hits.push(server.hits() - before);
    }
    assert_eq!(hits, [1, 2, 1, 2]);
    assert_eq!(retries(&reg, "inventory"), 2.0);
    assert_eq!(requests(&reg, "inventory", "budget_exhausted"), 4.0);
    assert_eq!(requests(&reg, "inventory", "error_status"), 6.0);
}

// ---------------------------------------------------------------------------------------------
// Bulkhead, timeouts, connect errors

#[tokio::test]
async fn the_bulkhead_rejects_the_call_beyond_its_size_without_calling() {
    let server = Server::start(Reply::Hold).await;
    let mut p = policy();
    p.bulkhead = 2;
    let (dep, reg) = dependency("order", p);
    let url = server.url();

    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (d, u) = (dep.clone(), url.clone());
            tokio::spawn(async move { d.send(None, |c| c.get(&u)).await })
        })
        .collect();
    eventually(Duration::from_secs(5), || async {
        (server.held() == 2).then_some(())
    })
    .await;

    let started = Instant::now();
    let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
    assert!(matches!(e, Error::BulkheadFull { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_millis(500), "fails fast");
    assert_eq!(server.hits(), 2, "the third call never left");
    assert_eq!(requests(&reg, "order", "bulkhead_full"), 1.0);

    server.release();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().text(), "released");
    }
    let r = dep.send(None, |c| c.get(&url)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the places were given back");
    assert_eq!(requests(&reg, "order", "ok"), 3.0);
    assert_eq!(dep.state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_silent_dependency_times_out_on_every_attempt() {
    let server = Server::start(Reply::Silent).await;
    let mut p = policy();
    p.timeout = Duration::from_millis(200);
    p.retry.max_retries = 1;
    let (dep, reg) = dependency("processor", p);
    let url = server.url();

    let started = Instant::now();
    let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(server.hits(), 2, "a timed-out GET is retried");

    let e = dep.send(None, |c| c.post(&url)).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(server.hits(), 3, "a timed-out POST is not");
    assert_eq!(requests(&reg, "processor", "timeout"), 3.0);
    assert_eq!(retries(&reg, "processor"), 1.0);
}

#[tokio::test]
async fn connect_errors_are_retried_for_idempotent_requests_only() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/thing", listener.local_addr().unwrap());
    drop(listener);
    let (dep, reg) = dependency("inventory", policy());

    let e = dep.send(None, |c| c.get(&url)).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert_eq!(requests(&reg, "inventory", "connect"), 3.0);
    assert_eq!(retries(&reg, "inventory"), 2.0);

    let e = dep.send(None, |c| c.post(&url)).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert_eq!(requests(&reg, "inventory", "connect"), 4.0);
    assert_eq!(retries(&reg, "inventory"), 2.0);
}

// ---------------------------------------------------------------------------------------------
// Context

#[tokio::test]
async fn the_correlation_id_and_trace_context_are_passed_on() {
    let server = Server::start(Reply::Status(200)).await;
    let (dep, _reg) = dependency("catalog", policy());
    let url = server.url();
    let ctx = RequestContext {
        request_id: "req-1".into(),
        correlation_id: "corr-1".into(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        client_ip: None,
    };
    dep.send(Some(&ctx), |c| c.get(&url)).await.unwrap();
    dep.send(Some(&ctx), |c| c.get(&url).header(CORRELATION_ID, "mine"))
        .await
        .unwrap();
    dep.send(None, |c| c.get(&url)).await.unwrap();

    let seen = server.script.seen.lock().unwrap();
    assert_eq!(seen[0].headers[CORRELATION_ID], "corr-1");
    assert_eq!(seen[0].headers[TRACEPARENT], ctx.traceparent.as_str());
    assert_eq!(
        seen[1].headers[CORRELATION_ID], "mine",
        "what the caller set wins"
    );
    assert_eq!(seen[1].headers[TRACEPARENT], ctx.traceparent.as_str());
    assert!(!seen[2].headers.contains_key(CORRELATION_ID));
    assert!(!seen[2].headers.contains_key(TRACEPARENT));
}
