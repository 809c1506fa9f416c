//! The card processor down in the middle of a checkout: the order is confirmed, its payment
//! cannot be authorized, and the shop neither loses the order nor leaves the customer guessing.
//! The authorization is retried with backoff (the processor's circuit breaker soon makes the
//! retries fail fast), each failed attempt announces `payment.delayed`, and the CONFIRMED order
//! shows why it waits; once the processor is back, the order is paid, with one authorization,
//! and says nothing about waiting any more.
//!
//! The stack runs without its own psp-mock: `MERCATO_PSP_URL` names a port where nothing
//! listens (connections are refused, as with a processor that is down), and the test starts a
//! psp-mock on that port when the processor is to come back.

mod support;

use mercato_kit::config::Env;
use serde_json::Value;
use support::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A psp-mock of the test's own on `port`, sending its webhooks to the payment service.
struct Processor {
    url: String,
    stop: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
}

impl Processor {
    async fn start(t: &TestStack, port: u16) -> Processor {
        let mut env = Env::from_pairs([
            ("MERCATO_DATA_DIR", t.dir.path().display().to_string()),
            ("MERCATO_PSP_MOCK_PORT", port.to_string()),
            ("MERCATO_PSP_WEBHOOK_SECRET", t.webhook_secret()),
            (
                "MERCATO_PSP_WEBHOOK_URL",
                format!("{}/api/v1/payments/webhook", t.base("payment")),
            ),
        ]);
        let config = mercato_psp_mock::Config::read(&mut env);
        env.check().unwrap();
        let service = mercato_psp_mock::build(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the processor's port is free again");
        let stop = CancellationToken::new();
        let handle = tokio::spawn(service.run(listener, stop.child_token()));
        Processor {
            url: format!("http://127.0.0.1:{port}"),
            stop,
            handle,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// The value of the payment service's sample of `metric` for the processor dependency (and
/// `outcome`, when given).
async fn processor_metric(s: &Shop, metric: &str, outcome: Option<&str>) -> Option<f64> {
    let text =
        s.t.http
            .get(format!("{}/metrics", s.t.base("payment")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| l.contains(r#"dependency="processor""#))
        .find(|l| outcome.is_none_or(|o| l.contains(&format!(r#"outcome="{o}""#))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn an_order_shows_why_it_waits_while_the_processor_is_down_and_is_paid_once_it_returns() {
    let psp_port = free_port();
    let psp_url = format!("http://127.0.0.1:{psp_port}");
    // Short backoffs and a short breaker reset keep the outage and the recovery quick; the
    // breaker's threshold (half of at least 10 calls in 10 s) is the production one.
    let s = Shop::open(&[
        ("MERCATO_PSP_URL", psp_url.as_str()),
        ("MERCATO_PSP_RETRY_MAX_MS", "300"),
        ("MERCATO_PROCESSOR_BREAKER_RESET_MS", "500"),
    ])
    .await;
    let product = s.product(1_250, 5).await;
    let id = s.place(&product, 2, "pm_card_visa").await;

    // The stock is reserved, the payment cannot be authorized: the order waits, and says why.
    let o = eventually(WAIT, || async {
        let o = s.get_order(&id).await;
        (o["status"] == "CONFIRMED" && o["waiting_for"].is_object()).then_some(o)
    })
    .await;
    let w = &o["waiting_for"];
    assert_eq!(w["step"], "payment", "{o}");
    assert!(w["reason"].as_str().is_some_and(|r| !r.is_empty()), "{o}");
    assert!(w["attempt"].as_i64().is_some_and(|a| a >= 1), "{o}");
    for field in ["next_attempt_at", "retry_until", "since"] {
        let at = w[field].as_str().unwrap_or_default();
        assert!(at.contains('T') && at.ends_with('Z'), "{field}: {o}");
    }
    let first_since = w["since"].clone();

    // Enough refused connections open the processor's breaker: the attempts that follow are
    // refused without a call, and the order says so.
    let first_attempt = w["attempt"].as_i64().unwrap();
    let o = eventually(WAIT, || async {
        let o = s.get_order(&id).await;
        let w = &o["waiting_for"];
        let reason = w["reason"].as_str().unwrap_or_default();
        (reason.contains("circuit breaker open") && w["attempt"].as_i64() > Some(first_attempt))
            .then_some(o)
    })
    .await;
    assert_eq!(o["status"], "CONFIRMED", "{o}");
    assert_eq!(o["waiting_for"]["since"], first_since, "one wait: {o}");
    let refused = processor_metric(&s, "http_client_requests_total", Some("breaker_open"))
        .await
        .expect("the processor's breaker_open count on the payment service's /metrics");
    assert!(refused >= 1.0, "{refused}");
    assert!(
        processor_metric(&s, "circuit_breaker_state", None)
            .await
            .is_some(),
        "the processor's breaker state on the payment service's /metrics"
    );
    assert_eq!(
        s.payment(&id).await.expect("a payment")["status"],
        "PENDING"
    );
    // Waiting is not a step of the order's history.
    let history: Value =
        s.t.http
            .get(s.t.api("order", &format!("/orders/{id}/events")))
            .bearer_auth(&s.customer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let steps: Vec<_> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(steps, ["PENDING", "CONFIRMED"], "{history}");

    // The processor comes back: the next attempt after the breaker's reset authorizes.
    let processor = Processor::start(&s.t, psp_port).await;
    let o = s.status_becomes(&id, "PAID").await;
    assert!(o["waiting_for"].is_null(), "{o}");
    let stats: Value =
        s.t.http
            .get(format!("{}/v1/test/stats", processor.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(stats["authorizations"], 1, "{stats}");

    // Every failed attempt was announced once, for this order, in order of attempts.
    let attempts: Vec<i64> =
        s.t.bus()
            .await
            .all()
            .await
            .into_iter()
            .filter(|e| e.event_type == "payment.delayed" && e.payload["order_id"] == id.as_str())
            .map(|e| e.payload["attempt"].as_i64().unwrap())
            .collect();
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(
        attempts,
        (1..=attempts.len() as i64).collect::<Vec<_>>(),
        "one payment.delayed per failed attempt"
    );

    processor.stop().await;
    s.t.stop().await;
}
