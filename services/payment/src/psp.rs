//! The card processor's HTTP API as the payment service uses it: one call at a time, each with
//! its idempotency key and the configured timeout, and every answer sorted into what the
//! worker must do next.
//!
//! The sorting is the important part. A decline or a refusal is final: retrying cannot change
//! it. A timeout, a refused connection, a 5xx or a 429 is transient: the worker tries again
//! later with the same key, and because the key is the same, a first attempt that did reach the
//! processor (the answer was lost, not the request) is answered from the processor's record
//! instead of authorizing twice.

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

/// What the processor's answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The amount is held.
    Authorized { provider_ref: String },
    /// Accepted; the outcome arrives by webhook.
    Pending { provider_ref: String },
    /// The issuer said no.
    Declined {
        decline_code: String,
        provider_ref: Option<String>,
    },
    /// A capture, void or refund was done.
    Done { provider_status: String },
    /// The processor refused the request itself (unknown token, invalid state, bad amount):
    /// final, and a sign that we and the processor disagree.
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// Nothing is known; try again later with the same key. `maybe_applied` when the request
    /// may have reached the processor and taken effect (a timeout, a gateway error), as
    /// opposed to being refused before any effect (no connection, 503, 429).
    Retryable { reason: String, maybe_applied: bool },
}

impl Reply {
    /// One line for the transaction record.
    pub fn summary(&self) -> String {
        let text = match self {
            Reply::Authorized { provider_ref } => format!("authorized as {provider_ref}"),
            Reply::Pending { provider_ref } => format!("pending as {provider_ref}"),
            Reply::Declined { decline_code, .. } => format!("declined: {decline_code}"),
            Reply::Done { provider_status } => format!("done: {provider_status}"),
            Reply::Refused {
                status,
                code,
                detail,
            } => format!("refused {status} {code}: {detail}"),
            Reply::Retryable { reason, .. } => format!("transient: {reason}"),
        };
        text.chars().take(500).collect()
    }
}

/// A reply with what is recorded about the call.
#[derive(Clone, Debug)]
pub struct Answer {
    pub reply: Reply,
    pub http_status: Option<u16>,
    pub elapsed: Duration,
}

/// The processor's HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct PspClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
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
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<PspClient> {
        Ok(PspClient {
            base: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
            timeout,
        })
    }

    /// Makes one call with `key`. Never fails: a failure is a [`Reply::Retryable`].
    pub async fn call(&self, call: &Call<'_>, key: &str) -> Answer {
        let started = Instant::now();
        let request = match call {
            Call::Authorize {
                amount_cents,
                currency,
                payment_method,
                reference,
            } => self
                .http
                .post(format!("{}/v1/authorizations", self.base))
                .json(&json!({
                    "amount_cents": amount_cents,
                    "currency": currency,
                    "payment_method": payment_method,
                    "reference": reference,
                })),
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
                self.http
                    .post(format!(
                        "{}/v1/authorizations/{provider_ref}/{action}",
                        self.base
                    ))
                    .json(&json!({ "amount_cents": amount_cents }))
            }
            Call::Void { provider_ref } => {
                if !plain(provider_ref) {
                    return refused_locally(started, provider_ref);
                }
                self.http.post(format!(
                    "{}/v1/authorizations/{provider_ref}/void",
                    self.base
                ))
            }
        };
        let result = request.header(IDEMPOTENCY_KEY, key).send().await;
        let (reply, http_status) = match result {
            Err(e) => (
                Reply::Retryable {
                    reason: self.transport_error(&e),
                    // Without a connection nothing was sent; anything later may have been.
                    maybe_applied: !e.is_connect(),
                },
                None,
            ),
            Ok(res) => {
                let status = res.status();
                let body = res.bytes().await;
                let reply = match body {
                    Ok(body) => classify(call, status, &body),
                    Err(e) => Reply::Retryable {
                        reason: format!("reading the answer failed: {}", self.transport_error(&e)),
                        maybe_applied: true,
                    },
                };
                (reply, Some(status.as_u16()))
            }
        };
        Answer {
            reply,
            http_status,
            elapsed: started.elapsed(),
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!("no answer within {} ms", self.timeout.as_millis())
        } else if e.is_connect() {
            "cannot connect to the processor".to_owned()
        } else {
            format!("request failed: {e}")
        }
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
    }
}

/// Sorts an HTTP answer. Pure, so every branch is tested without a processor.
pub fn classify(call: &Call<'_>, status: StatusCode, body: &[u8]) -> Reply {
    if status.is_success() {
        let Ok(p) = serde_json::from_slice::<ProcessorPayment>(body) else {
            // A 2xx we cannot read: the call may well have worked, so ask again with the key
            // (the processor replays the answer) rather than guess.
            return Reply::Retryable {
                reason: format!("{status} with an unreadable body"),
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
            reason: format!("{} {code}", status.as_u16()),
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
        let psp =
            PspClient::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
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
}
