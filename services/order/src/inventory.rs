//! The stock pre-check: the one synchronous call the order service makes, so a customer hears
//! "not enough stock" at once instead of from a cancelled order a moment later.
//!
//! It is only a courtesy: the reservation in the saga is what counts. So whenever inventory
//! cannot answer (unreachable, slow, failing, or our service token unobtainable) the order is
//! accepted with `stock_check: deferred` and the saga catches up. The call has a deadline, a
//! small bulkhead (bounded concurrency) and a circuit breaker, so an inventory outage costs
//! orders nothing but the check, not seconds each.

use mercato_kit::auth::ServiceTokens;
use mercato_kit::http::{RequestContext, CORRELATION_ID, TRACEPARENT};
use mercato_kit::ids::ProductId;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What the pre-check learned.
#[derive(Clone, Debug, PartialEq)]
pub enum StockAnswer {
    /// Every line is available now.
    Available,
    /// Some line is short: inventory's `lines`, passed on to the customer as they came.
    Short(Vec<serde_json::Value>),
    /// Inventory could not be asked; why, for the log.
    Unknown(String),
}

/// Asks whether `lines` (product, quantity) are in stock.
#[async_trait::async_trait]
pub trait StockCheck: Send + Sync {
    async fn check(&self, lines: &[(ProductId, i64)], ctx: Option<&RequestContext>) -> StockAnswer;
}

/// Consecutive failures that open the breaker, and how long it then stays open.
const TRIP_AFTER: u32 = 5;
const OPEN_FOR: Duration = Duration::from_secs(10);
/// Pre-checks in flight at once; beyond that, orders are accepted deferred.
const BULKHEAD: usize = 64;

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|t| now >= t)
    }

    fn succeeded(&mut self) {
        *self = Breaker::default();
    }

    /// After the open period one call goes through; if it fails too, the breaker reopens.
    fn failed(&mut self, now: Instant) {
        self.failures += 1;
        if self.failures >= TRIP_AFTER {
            self.open_until = Some(now + OPEN_FOR);
        }
    }
}

/// The inventory service's `GET /api/v1/inventory/check` over HTTP.
pub struct InventoryClient {
    check_url: String,
    timeout: Duration,
    http: reqwest::Client,
    tokens: Option<ServiceTokens>,
    breaker: Mutex<Breaker>,
    bulkhead: Semaphore,
}

#[derive(Deserialize)]
struct CheckAnswer {
    available: bool,
    #[serde(default)]
    lines: Vec<serde_json::Value>,
}

impl InventoryClient {
    /// `tokens` is `None` when no service secret is configured; the call then goes without a
    /// token and, if inventory insists on one, ends deferred.
    pub fn new(base_url: &str, timeout: Duration, tokens: Option<ServiceTokens>) -> Self {
        InventoryClient {
            check_url: format!("{}/api/v1/inventory/check", base_url.trim_end_matches('/')),
            timeout,
            http: reqwest::Client::new(),
            tokens,
            breaker: Mutex::new(Breaker::default()),
            bulkhead: Semaphore::new(BULKHEAD),
        }
    }

    async fn ask(
        &self,
        lines: &[(ProductId, i64)],
        ctx: Option<&RequestContext>,
    ) -> Result<StockAnswer, String> {
        let mut query = Vec::with_capacity(lines.len() * 2);
        for (product, quantity) in lines {
            query.push(("product_id", product.to_string()));
            query.push(("quantity", quantity.to_string()));
        }
        let mut req = self.http.get(&self.check_url).query(&query);
        if let Some(tokens) = &self.tokens {
            let token = tokens
                .token()
                .await
                .map_err(|e| format!("no service token: {e:#}"))?;
            req = req.bearer_auth(token);
        }
        if let Some(ctx) = ctx {
            req = req
                .header(CORRELATION_ID, &ctx.correlation_id)
                .header(TRACEPARENT, &ctx.traceparent);
        }
        let res = req.send().await.map_err(|e| e.to_string())?;
        let status = res.status();
        if !status.is_success() {
            return Err(format!("inventory answered {status}"));
        }
        let answer: CheckAnswer = res.json().await.map_err(|e| e.to_string())?;
        Ok(if answer.available {
            StockAnswer::Available
        } else {
            StockAnswer::Short(answer.lines)
        })
    }
}

#[async_trait::async_trait]
impl StockCheck for InventoryClient {
    async fn check(&self, lines: &[(ProductId, i64)], ctx: Option<&RequestContext>) -> StockAnswer {
        if !self
            .breaker
            .lock()
            .expect("breaker lock")
            .allows(Instant::now())
        {
            return StockAnswer::Unknown("the inventory circuit breaker is open".into());
        }
        let Ok(_permit) = self.bulkhead.try_acquire() else {
            return StockAnswer::Unknown("too many stock checks in flight".into());
        };
        let outcome = tokio::time::timeout(self.timeout, self.ask(lines, ctx))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        let mut breaker = self.breaker.lock().expect("breaker lock");
        match outcome {
            Ok(answer) => {
                breaker.succeeded();
                answer
            }
            Err(why) => {
                breaker.failed(Instant::now());
                tracing::warn!(error = %why, "stock pre-check failed; the order is accepted deferred");
                StockAnswer::Unknown(why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_tries_again_later() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..TRIP_AFTER - 1 {
            b.failed(t0);
            assert!(b.allows(t0));
        }
        b.failed(t0);
        assert!(!b.allows(t0));
        assert!(b.allows(t0 + OPEN_FOR));
        b.failed(t0 + OPEN_FOR);
        assert!(!b.allows(t0 + OPEN_FOR), "a failed trial reopens it");
        b.succeeded();
        assert!(b.allows(t0 + OPEN_FOR));
    }

    #[tokio::test]
    async fn an_unreachable_inventory_is_an_unknown_answer_within_the_deadline() {
        // A port nobody listens on: connection refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client =
            InventoryClient::new(&format!("http://{addr}"), Duration::from_millis(500), None);
        let started = Instant::now();
        let answer = client.check(&[(ProductId::new(), 1)], None).await;
        assert!(matches!(answer, StockAnswer::Unknown(_)), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_silent_inventory_times_out() {
        // Accepts connections but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let client =
            InventoryClient::new(&format!("http://{addr}"), Duration::from_millis(200), None);
        let started = Instant::now();
        let answer = client.check(&[(ProductId::new(), 1)], None).await;
        assert!(matches!(answer, StockAnswer::Unknown(_)), "{answer:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        hold.abort();
    }
}
