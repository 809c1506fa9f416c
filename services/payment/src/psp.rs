//! The card processor's HTTP API as the payment service uses it: one call at a time, each with
//! its idempotency key, through the kit's resilient client (the processor's timeout, circuit
//! breaker and bulkhead; no retries inside a call, the worker's queue retries), and every
//! answer sorted into what the worker must do next.
//!
//! The sorting is the important part. A decline or a refusal is final: retrying cannot change
//! it. A timeout, a refused connection, a 5xx, a 429 or the breaker refusing to call is
//! transient: the worker tries again later with the same key, and because the key is the same,
//! a first attempt that did reach the processor (the answer was lost, not the request) is
//! answered from the processor's record instead of authorizing twice.

use mercato_kit::client::{self, BreakerState, Dependency, Policy};
use mercato_kit::metrics::Metrics;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::time::{Duration, Instant};

/// One call to make.
#[derive(Clone, Debug)]
pub enum Call<'a> {
    Authorize {
        amount_cents: i64,
        currency: &'a str,
        payment_method: &'a str,
        /// Our payment id, echoed in webhooks.
        reference: &'a str,
    },
    Capture {
        provider_ref: &'a str,
        amount_cents: i64,
    },
    Void {
        provider_ref: &'a str,
    },
    Refund {
        provider_ref: &'a str,
        amount_cents: i64,
    },
}

pub use crate::domain::{Answer, Reply};

/// The name of the processor in the kit's client metrics and logs
/// (`circuit_breaker_state{dependency="processor"}`).
pub const DEPENDENCY: &str = "processor";

/// How the processor is called: `timeout` per call and a breaker that stays open for
/// `reset_after`, with the kit's defaults otherwise, and no retries inside a call. The worker
/// retries every failed call from the durable queue, with backoff, until the reservation
/// expires; retrying inside the call as well would multiply the attempts (and the load on a
/// processor that is already failing) without getting an answer any sooner.
pub fn policy(timeout: Duration, reset_after: Duration) -> Policy {
    let mut policy = Policy::new(timeout, reset_after);
    policy.retry.max_retries = 0;
    policy.breaker.excused = Some(is_card_level_error);
    policy
}

/// A `processing_error` is the processor failing one card's authorization, retryable with the
/// same key, while it answers every other card: a healthy processor, so the breaker must not
/// count it (a run of such cards would otherwise stop every payment for the reset time).
fn is_card_level_error(answer: &mercato_kit::client::Response) -> bool {
    serde_json::from_slice::<ProcessorProblem>(&answer.body)
        .is_ok_and(|p| p.code == "processing_error")
}

/// The processor's HTTP client: every call goes through the kit's resilient client
/// ([`Dependency`]), so the processor has one circuit breaker and one bulkhead per payment
/// service, shown on its `/metrics`. Cheap to clone; clones share the breaker.
#[derive(Clone, Debug)]
pub struct PspClient {
    base: String,
    processor: Dependency,
}

/// The header the processor reads the key from.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

#[derive(Deserialize)]
struct ProcessorPayment {
    id: String,
    status: String,
}

#[derive(Deserialize, Default)]
struct ProcessorProblem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    payment_id: Option<String>,
}

/// Provider references go into URL paths; anything but a plain token is refused rather than
/// escaped, since a genuine processor never sends one.
fn plain(reference: &str) -> bool {
    !reference.is_empty()
        && reference.len() <= 128
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl PspClient {
    /// The client, with its dependency registered on the service's `metrics`.
    pub fn new(base_url: &str, policy: Policy, metrics: &Metrics) -> anyhow::Result<PspClient> {
        let processor = Dependency::new(DEPENDENCY, policy, metrics.registry())?;
        Ok(PspClient {
            base: base_url.trim_end_matches('/').to_owned(),
            processor,
        })
    }

    /// The processor's circuit breaker as it is now.
    pub fn breaker(&self) -> BreakerState {
        self.processor.state()
    }

    /// Makes one call with `key`. Never fails: a failure is a [`Reply::Retryable`].
    pub async fn call(&self, call: &Call<'_>, key: &str) -> Answer {
        let started = Instant::now();
        let (url, body) = match call {
            Call::Authorize {
                amount_cents,
                currency,
                payment_method,
                reference,
            } => (
                format!("{}/v1/authorizations", self.base),
                Some(json!({
                    "amount_cents": amount_cents,
                    "currency": currency,
                    "payment_method": payment_method,
                    "reference": reference,
                })),
            ),
            Call::Capture {
                provider_ref,
                amount_cents,
            }
            | Call::Refund {
                provider_ref,
                amount_cents,
            } => {
                if !plain(provider_ref) {
                    return refused_locally(started, provider_ref);
                }
                let action = if matches!(call, Call::Capture { .. }) {
                    "capture"
                } else {
                    "refund"
                };
                (
                    format!("{}/v1/authorizations/{provider_ref}/{action}", self.base),
                    Some(json!({ "amount_cents": amount_cents })),
                )
            }
            Call::Void { provider_ref } => {
                if !plain(provider_ref) {
                    return refused_locally(started, provider_ref);
                }
                (
                    format!("{}/v1/authorizations/{provider_ref}/void", self.base),
                    None,
                )
            }
        };
        // Every call carries its key: the processor answers a repeated key from its record,
        // and the kit's client treats a keyed POST as one that may be repeated.
        let mut retry_in = None;
        let result = self
            .processor
            .send(None, |http| {
                let request = http.post(&url).header(IDEMPOTENCY_KEY, key);
                match &body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await;
        let (reply, http_status) = match result {
            Ok(response) => (
                classify(call, response.status, &response.body),
                Some(response.status.as_u16()),
            ),
            Err(client::Error::Status { response, .. }) => (
                classify(call, response.status, &response.body),
                Some(response.status.as_u16()),
            ),
            Err(e) => {
                if let client::Error::BreakerOpen { .. } = e {
                    // Spread over half a second, so the payments that queued up behind the
                    // breaker do not all arrive at once for its few trial calls. Half-open
                    // with every trial taken, it is a moment's wait too.
                    let spread = Duration::from_millis(rand::random::<u64>() % 500);
                    retry_in = Some(self.processor.reopens_in().unwrap_or_default() + spread);
                }
                (unanswered(&e), None)
            }
        };
        Answer {
            reply,
            http_status,
            elapsed: started.elapsed(),
            retry_in,
        }
    }
}

/// A call that got no HTTP answer. Whether it may have taken effect decides what a later
/// give-up must check: refused before sending (breaker, bulkhead, no connection) it cannot
/// have; cut off after sending (timeout, a broken exchange) it may have.
fn unanswered(e: &client::Error) -> Reply {
    let (reason, maybe_applied) = match e {
        client::Error::BreakerOpen { .. } => (
            "the card processor is unavailable (circuit breaker open)".to_owned(),
            false,
        ),
        client::Error::BulkheadFull { .. } => (
            "too many calls to the card processor in flight".to_owned(),
            false,
        ),
        client::Error::Connect { .. } => ("cannot connect to the card processor".to_owned(), false),
        client::Error::Timeout { after, .. } => {
            (format!("no answer within {} ms", after.as_millis()), true)
        }
        client::Error::Transport { message, .. } => (
            format!("the exchange with the card processor failed: {message}"),
            true,
        ),
        // A request we could not even build (a bad processor URL): nothing was sent. It is our
        // bug, not the customer's, so the payment waits for a fix rather than failing now.
        client::Error::Invalid { message, .. } => {
            tracing::error!(error = %message, "cannot build a request to the card processor");
            (
                format!("invalid request to the card processor: {message}"),
                false,
            )
        }
        // Answers are sorted by the caller; kept for completeness of the match.
        client::Error::Status { response, .. } => (
            format!("the card processor answered {}", response.status),
            true,
        ),
    };
    Reply::Retryable {
        reason,
        maybe_applied,
    }
}

fn refused_locally(started: Instant, provider_ref: &str) -> Answer {
    Answer {
        reply: Reply::Refused {
            status: 0,
            code: "bad_provider_ref".into(),
            detail: format!("{provider_ref:?} is not a processor reference"),
        },
        http_status: None,
        elapsed: started.elapsed(),
        retry_in: None,
    }
}

/// Sorts an HTTP answer. Pure, so every branch is tested without a processor.
pub fn classify(call: &Call<'_>, status: StatusCode, body: &[u8]) -> Reply {
    if status.is_success() {
        let Ok(p) = serde_json::from_slice::<ProcessorPayment>(body) else {
            // A 2xx we cannot read: the call may well have worked, so ask again with the key
            // (the processor replays the answer) rather than guess.
            return Reply::Retryable {
                reason: format!("the card processor answered {status} with an unreadable body"),
                maybe_applied: true,
            };
        };
        return match call {
            Call::Authorize { .. } => match p.status.as_str() {
                "authorized" => Reply::Authorized { provider_ref: p.id },
                "pending" => Reply::Pending { provider_ref: p.id },
                other => Reply::Refused {
                    status: status.as_u16(),
                    code: "unexpected_status".into(),
                    detail: format!("an authorization answered status {other:?}"),
                },
            },
            _ => Reply::Done {
                provider_status: p.status,
            },
        };
    }
    let problem: ProcessorProblem = serde_json::from_slice(body).unwrap_or_default();
    let detail = problem.detail.clone().unwrap_or_default();
    if status == StatusCode::PAYMENT_REQUIRED {
        return Reply::Declined {
            decline_code: problem
                .decline_code
                .filter(|c| !c.is_empty() && c.len() <= 64)
                .unwrap_or_else(|| "generic_decline".into()),
            provider_ref: problem.payment_id.filter(|r| plain(r)),
        };
    }
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        // A processor still working on the same key: ask again.
        || (status == StatusCode::CONFLICT && problem.code == "idempotency_key_in_use");
    if transient {
        let code = if problem.code.is_empty() {
            "no code".to_owned()
        } else {
            problem.code
        };
        // 503 and 429 say the request was turned away; other failures (a 500 mid-way, a
        // gateway that lost the upstream answer) may hide an effect.
        let turned_away =
            status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
        return Reply::Retryable {
            reason: format!("the card processor answered {} ({code})", status.as_u16()),
            maybe_applied: !turned_away,
        };
    }
    Reply::Refused {
        status: status.as_u16(),
        code: if problem.code.is_empty() {
            "error".into()
        } else {
            problem.code
        },
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const AUTH: Call<'static> = Call::Authorize {
        amount_cents: 100,
        currency: "USD",
        payment_method: "pm_card_visa",
        reference: "r",
    };
    const VOID: Call<'static> = Call::Void {
        provider_ref: "pi_1",
    };

    #[test]
    fn answers_are_sorted() {
        let ok = br#"{"id":"pi_1","status":"authorized"}"#;
        assert_eq!(
            classify(&AUTH, StatusCode::CREATED, ok),
            Reply::Authorized {
                provider_ref: "pi_1".into()
            }
        );
        let pending = br#"{"id":"pi_2","status":"pending"}"#;
        assert_eq!(
            classify(&AUTH, StatusCode::ACCEPTED, pending),
            Reply::Pending {
                provider_ref: "pi_2".into()
            }
        );
        let declined =
            br#"{"code":"card_declined","decline_code":"insufficient_funds","payment_id":"pi_3"}"#;
        assert_eq!(
            classify(&AUTH, StatusCode::PAYMENT_REQUIRED, declined),
            Reply::Declined {
                decline_code: "insufficient_funds".into(),
                provider_ref: Some("pi_3".into())
            }
        );
        for transient in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            assert!(
                matches!(
                    classify(&AUTH, transient, br#"{"code":"processing_error"}"#),
                    Reply::Retryable { .. }
                ),
                "{transient}"
            );
        }
        assert!(matches!(
            classify(&AUTH, StatusCode::CREATED, b"<html>"),
            Reply::Retryable {
                maybe_applied: true,
                ..
            }
        ));
        assert!(matches!(
            classify(&AUTH, StatusCode::SERVICE_UNAVAILABLE, b"{}"),
            Reply::Retryable {
                maybe_applied: false,
                ..
            }
        ));
        assert!(matches!(
            classify(&AUTH, StatusCode::GATEWAY_TIMEOUT, b"{}"),
            Reply::Retryable {
                maybe_applied: true,
                ..
            }
        ));
        assert!(matches!(
            classify(
                &AUTH,
                StatusCode::UNPROCESSABLE_ENTITY,
                br#"{"code":"validation_failed"}"#
            ),
            Reply::Refused { status: 422, .. }
        ));
        assert!(matches!(
            classify(&VOID, StatusCode::CONFLICT, br#"{"code":"invalid_state"}"#),
            Reply::Refused { status: 409, .. }
        ));
        assert!(matches!(
            classify(
                &VOID,
                StatusCode::CONFLICT,
                br#"{"code":"idempotency_key_in_use"}"#
            ),
            Reply::Retryable { .. }
        ));
        assert_eq!(
            classify(&VOID, StatusCode::OK, br#"{"id":"pi_1","status":"voided"}"#),
            Reply::Done {
                provider_status: "voided".into()
            }
        );
    }

    #[test]
    fn references_must_be_plain_tokens() {
        assert!(plain("pi_0123abc"));
        for bad in ["", "../x", "pi/1", "pi 1", "pi?x=1"] {
            assert!(!plain(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_processor_is_transient() {
        // Bind and drop a listener so the port is (almost certainly) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let psp = processor_at(
            &format!("http://127.0.0.1:{port}"),
            &Metrics::new("payment"),
        );
        let a = psp.call(&AUTH, "k").await;
        assert!(
            matches!(
                a.reply,
                Reply::Retryable {
                    maybe_applied: false,
                    ..
                }
            ),
            "{:?}",
            a.reply
        );
        assert_eq!(a.http_status, None);
        let a = psp
            .call(
                &Call::Void {
                    provider_ref: "../x",
                },
                "k",
            )
            .await;
        assert!(matches!(a.reply, Reply::Refused { .. }));
    }

    fn processor_at(base: &str, metrics: &Metrics) -> PspClient {
        PspClient::new(
            base,
            policy(Duration::from_secs(2), Duration::from_secs(30)),
            metrics,
        )
        .unwrap()
    }

    /// A stand-in processor on 127.0.0.1:0 that answers every request with `status` and
    /// `body`, counting the requests it receives and keeping their idempotency keys.
    struct StandIn {
        url: String,
        hits: Arc<AtomicUsize>,
        keys: Arc<Mutex<Vec<String>>>,
        stop: tokio_util::sync::CancellationToken,
    }

    impl StandIn {
        async fn start(status: StatusCode, body: &'static str) -> StandIn {
            use axum::http::HeaderMap;
            let hits = Arc::new(AtomicUsize::new(0));
            let keys = Arc::new(Mutex::new(Vec::new()));
            let (h, k) = (hits.clone(), keys.clone());
            let app = axum::Router::new().fallback(move |headers: HeaderMap| {
                let (h, k) = (h.clone(), k.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if let Some(key) = headers.get(IDEMPOTENCY_KEY) {
                        k.lock()
                            .unwrap()
                            .push(key.to_str().unwrap_or_default().to_owned());
                    }
                    (
                        status,
                        [("content-type", "application/json")],
                        body.to_owned(),
                    )
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let stop = tokio_util::sync::CancellationToken::new();
            let token = stop.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
            });
            StandIn {
                url,
                hits,
                keys,
                stop,
            }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    #[tokio::test]
    async fn a_failing_processor_opens_the_breaker_and_is_then_not_called() {
        let psp = StandIn::start(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":"internal_error"}"#,
        )
        .await;
        let metrics = Metrics::new("payment");
        let processor = processor_at(&psp.url, &metrics);
        let min_calls = client::BreakerPolicy::default().min_calls as usize;
        for n in 1..=min_calls {
            assert_eq!(processor.breaker(), BreakerState::Closed, "before call {n}");
            let a = processor.call(&AUTH, &format!("k-{n}")).await;
            // A 5xx is an answer: it keeps its status and is sorted as before.
            assert_eq!(a.http_status, Some(500));
            assert!(
                matches!(
                    &a.reply,
                    Reply::Retryable { reason, maybe_applied: true } if reason.contains("500")
                ),
                "{:?}",
                a.reply
            );
        }
        assert_eq!(psp.hits(), min_calls, "no retries inside a call");
        assert_eq!(
            *psp.keys.lock().unwrap(),
            (1..=min_calls)
                .map(|n| format!("k-{n}"))
                .collect::<Vec<_>>(),
            "every call carries its idempotency key"
        );
        assert_eq!(processor.breaker(), BreakerState::Open);

        let a = processor.call(&AUTH, "k-next").await;
        assert_eq!(
            a.reply,
            Reply::Retryable {
                reason: "the card processor is unavailable (circuit breaker open)".into(),
                maybe_applied: false,
            }
        );
        assert_eq!(a.http_status, None);
        assert_eq!(psp.hits(), min_calls, "the open breaker did not call");
        // The worker is told to come back when trial calls are let through (reset 30 s).
        let retry_in = a.retry_in.expect("a time to come back");
        assert!(
            retry_in > Duration::from_secs(29) && retry_in < Duration::from_millis(30_500),
            "{retry_in:?}"
        );

        // The service's /metrics shows it.
        let text = metrics.render();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(r#"dependency="processor""#))
                .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
                .to_owned()
        };
        assert!(line("circuit_breaker_state").ends_with(" 1"), "{text}");
        let refused = text
            .lines()
            .find(|l| {
                l.starts_with("http_client_requests_total")
                    && l.contains(r#"dependency="processor""#)
                    && l.contains(r#"outcome="breaker_open""#)
            })
            .unwrap_or_else(|| panic!("breaker_open outcome missing from\n{text}"));
        assert!(refused.ends_with(" 1"), "{refused}");
    }

    #[tokio::test]
    async fn one_card_s_processing_errors_do_not_open_the_breaker() {
        let psp = StandIn::start(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"code":"processing_error"}"#,
        )
        .await;
        let metrics = Metrics::new("payment");
        let processor = processor_at(&psp.url, &metrics);
        let calls = 3 * client::BreakerPolicy::default().min_calls as usize;
        for n in 1..=calls {
            let a = processor.call(&AUTH, &format!("k-{n}")).await;
            assert!(matches!(a.reply, Reply::Retryable { .. }), "{:?}", a.reply);
        }
        assert_eq!(psp.hits(), calls, "every call reached the processor");
        assert_eq!(processor.breaker(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn answers_through_the_client_keep_their_status_and_sorting() {
        let ok = StandIn::start(
            StatusCode::CREATED,
            r#"{"id":"pi_9","status":"authorized"}"#,
        )
        .await;
        let metrics = Metrics::new("payment");
        let a = processor_at(&ok.url, &metrics).call(&AUTH, "k").await;
        assert_eq!(
            a.reply,
            Reply::Authorized {
                provider_ref: "pi_9".into()
            }
        );
        assert_eq!(a.http_status, Some(201));

        let declined = StandIn::start(
            StatusCode::PAYMENT_REQUIRED,
            r#"{"code":"card_declined","decline_code":"insufficient_funds"}"#,
        )
        .await;
        let a = processor_at(&declined.url, &Metrics::new("payment"))
            .call(&AUTH, "k")
            .await;
        assert!(matches!(a.reply, Reply::Declined { .. }), "{:?}", a.reply);
        assert_eq!(a.http_status, Some(402));

        let busy = StandIn::start(StatusCode::TOO_MANY_REQUESTS, "{}").await;
        let a = processor_at(&busy.url, &Metrics::new("payment"))
            .call(&VOID, "k")
            .await;
        assert!(
            matches!(
                a.reply,
                Reply::Retryable {
                    maybe_applied: false,
                    ..
                }
            ),
            "{:?}",
            a.reply
        );
        assert_eq!(a.http_status, Some(429));
        assert_eq!(busy.hits(), 1, "a 429 is not retried inside the call");
    }
}
