//! The stock pre-check: the one synchronous call the order service makes, so a customer hears
//! "not enough stock" at once instead of from a cancelled order a moment later.
//!
//! It is only a courtesy: the reservation in the saga is what counts. So whenever inventory
//! cannot answer (unreachable, slow, failing, or our service token unobtainable) the order is
//! accepted with `stock_check: deferred` and the saga catches up. The call goes through the
//! kit's resilient client (dependency `inventory`): a timeout (3 s by default), one retry for a
//! refused connection or a 502/503/504 (never for a timeout: a second one would only double
//! the customer's wait for the same fallback), a circuit breaker that stops asking a failing
//! inventory for a while (reset 10 s by default) and a bulkhead, so an inventory outage costs
//! orders nothing but the check, not seconds each.

use mercato_kit::auth::ServiceTokens;
use mercato_kit::client::{Dependency, Error, Policy};
use mercato_kit::contracts::ShortLine;
use mercato_kit::http::RequestContext;
use mercato_kit::ids::ProductId;
use serde::Deserialize;
use std::time::Duration;

/// What the pre-check learned.
#[derive(Clone, Debug, PartialEq)]
pub enum StockAnswer {
    /// Every line is available now.
    Available,
    /// Some line is short: inventory's `lines`, passed on to the customer as they came.
    Short(Vec<ShortLine>),
    /// Inventory could not be asked; why, for the log.
    Unknown(String),
}

/// Asks whether `lines` (product, quantity) are in stock.
#[async_trait::async_trait]
pub trait StockCheck: Send + Sync {
    async fn check(&self, lines: &[(ProductId, i64)], ctx: Option<&RequestContext>) -> StockAnswer;
}

/// Pre-checks in flight at once; beyond that, orders are accepted deferred.
const BULKHEAD: usize = 64;

/// The pre-check's policy: `timeout` per attempt, the breaker open for `reset_after`.
pub fn policy(timeout: Duration, reset_after: Duration) -> Policy {
    let mut policy = Policy::new(timeout, reset_after);
    policy.retry.max_retries = 1;
    policy.retry.retry_timeouts = false;
    policy.retry.max_retry_after = Duration::from_millis(500);
    policy.bulkhead = BULKHEAD;
    policy
}

/// The inventory service's `GET /api/v1/inventory/check` over HTTP.
pub struct InventoryClient {
    check_url: String,
    inventory: Dependency,
    tokens: Option<ServiceTokens>,
}

#[derive(Deserialize)]
struct CheckAnswer {
    available: bool,
    #[serde(default)]
    lines: Vec<ShortLine>,
}

impl InventoryClient {
    /// `tokens` is `None` when no service secret is configured; the call then goes without a
    /// token and, if inventory insists on one, ends deferred.
    pub fn new(base_url: &str, inventory: Dependency, tokens: Option<ServiceTokens>) -> Self {
        InventoryClient {
            check_url: format!("{}/api/v1/inventory/check", base_url.trim_end_matches('/')),
            inventory,
            tokens,
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
        let token = match &self.tokens {
            Some(tokens) => Some(
                tokens
                    .token()
                    .await
                    .map_err(|e| format!("no service token: {e:#}"))?,
            ),
            None => None,
        };
        let res = self
            .inventory
            .send(ctx, |http| {
                let req = http.get(&self.check_url).query(&query);
                match &token {
                    Some(token) => req.bearer_auth(token),
                    None => req,
                }
            })
            .await
            .map_err(|e| match e {
                Error::BreakerOpen { .. } => "the inventory circuit breaker is open".to_owned(),
                e => e.to_string(),
            })?;
        if !res.status.is_success() {
            return Err(format!("inventory answered {}", res.status));
        }
        let answer: CheckAnswer = res.json().map_err(|e| e.to_string())?;
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
        match self.ask(lines, ctx).await {
            Ok(answer) => answer,
            Err(why) => {
                tracing::warn!(error = %why, "stock pre-check failed; the order is accepted deferred");
                StockAnswer::Unknown(why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn client(addr: std::net::SocketAddr, timeout: Duration) -> InventoryClient {
        let registry = prometheus::Registry::new();
        let dep = Dependency::new(
            "inventory",
            policy(timeout, Duration::from_secs(10)),
            &registry,
        )
        .unwrap();
        InventoryClient::new(&format!("http://{addr}"), dep, None)
    }

    #[tokio::test]
    async fn an_unreachable_inventory_is_an_unknown_answer_within_the_deadline() {
        // A port nobody listens on: connection refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = client(addr, Duration::from_millis(500));
        let started = Instant::now();
        let answer = client.check(&[(ProductId::new(), 1)], None).await;
        assert!(matches!(answer, StockAnswer::Unknown(_)), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_silent_inventory_times_out_once_without_a_retry() {
        // Accepts connections but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = accepted.clone();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        let client = client(addr, Duration::from_millis(200));
        let started = Instant::now();
        let answer = client.check(&[(ProductId::new(), 1)], None).await;
        assert!(matches!(answer, StockAnswer::Unknown(_)), "{answer:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(390),
            "one timeout, no second attempt: {took:?}"
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        hold.abort();
    }
}
