//! What the psp-mock suites share: the service on 127.0.0.1 port 0 configured through its
//! environment, a webhook receiver per test, and readers that check every answer's shape.

#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use mercato_kit::config::Env;
pub use mercato_kit::contracts::webhook as signature;
use mercato_psp_mock::Config;
use reqwest::Response;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_test_secret";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Psp {
    pub url: String,
    pub client: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Psp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start(webhook_url: Option<&str>) -> Psp {
    start_with(webhook_url, &[]).await
}

/// The processor with more environment, e.g. `MERCATO_PSP_CHAOS`.
pub async fn start_with(webhook_url: Option<&str>, vars: &[(&str, &str)]) -> Psp {
    let mut pairs = vec![("MERCATO_PSP_WEBHOOK_SECRET".to_owned(), SECRET.to_owned())];
    if let Some(url) = webhook_url {
        pairs.push(("MERCATO_PSP_WEBHOOK_URL".into(), url.into()));
    }
    pairs.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut env = Env::from_pairs(pairs);
    let config = Config::read(&mut env);
    env.check().expect("a valid test configuration");
    let service = mercato_psp_mock::build(&config).await.expect("built");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(service.run(listener, stop.clone()));
    Psp {
        url,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        stop,
    }
}

impl Psp {
    pub async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Response {
        let mut req = self.client.post(format!("{}{path}", self.url)).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.unwrap()
    }

    /// Posts without an idempotency key and checks the answer is the problem `code` with
    /// `status`; returns the problem document.
    pub async fn refused(&self, path: &str, body: Value, status: u16, code: &str) -> Value {
        problem(self.post(path, None, body).await, status, code).await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn authorize(&self, key: &str, token: &str, amount: i64) -> Response {
        self.post(
            "/v1/authorizations",
            Some(key),
            json!({"amount_cents": amount, "currency": "USD", "payment_method": token, "reference": "order-42"}),
        )
        .await
    }

    pub async fn stats(&self) -> Value {
        self.get("/v1/test/stats").await.json().await.unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.client
            .put(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// The value of the sample of `name` whose labels include `label` (`kind="timeout"`), or
    /// of the unlabelled sample when `label` is empty; `None` when there is none.
    pub async fn metric(&self, name: &str, label: &str) -> Option<f64> {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
                let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
                metric == name && labels.contains(label)
            })
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
    }
}

/// The status and JSON body, asserting the content type matches the kind of answer.
pub async fn read(res: Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = res.json().await.unwrap();
    let want = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    assert!(
        ctype.starts_with(want),
        "{status} answered {ctype}, not {want}: {body}"
    );
    (status, body)
}

/// A problem document with this status and code.
pub async fn problem(res: Response, status: u16, code: &str) -> Value {
    let (got, body) = read(res).await;
    assert_eq!(got.as_u16(), status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["type"].as_str().unwrap().ends_with(code), "{body}");
    assert!(body["title"].is_string(), "{body}");
    body
}

/// What a webhook receiver saw.
pub struct Delivery {
    pub signature: String,
    pub body: Bytes,
}

/// A webhook endpoint that reports every delivery and answers 500 to the first `fail_first`.
pub async fn receiver(
    fail_first: usize,
) -> (String, mpsc::UnboundedReceiver<Delivery>, CancellationToken) {
    #[derive(Clone)]
    struct Rx {
        tx: mpsc::UnboundedSender<Delivery>,
        failures_left: Arc<AtomicUsize>,
    }
    async fn hook(State(rx): State<Rx>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let signature = headers
            .get("psp-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let _ = rx.tx.send(Delivery { signature, body });
        let fail = rx
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Rx {
        tx,
        failures_left: Arc::new(AtomicUsize::new(fail_first)),
    };
    let app = axum::Router::new()
        .route("/webhook", axum::routing::post(hook))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await
    });
    (url, rx, stop)
}

pub async fn next_delivery(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a webhook within the timeout")
        .expect("the receiver is running")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
