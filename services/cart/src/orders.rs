//! Placing the order at checkout: `POST {MERCATO_ORDER_URL}/api/v1/orders` on the customer's
//! behalf (their own `Authorization` header, so the order is theirs and the order service checks
//! them as it checks anyone), with an Idempotency-Key derived from the checkout's and the
//! request's correlation id and trace context.
//!
//! The order service's answer is the checkout's answer: a placed order (201) is passed on with
//! its body, and so is a refusal (409 `insufficient_stock`, 422, 401, 503 `overloaded`...),
//! exactly as it came.
//! Only when the order service cannot answer (unreachable, out of time, failing with a 5xx) does
//! the cart answer for it, with a 503 naming it; the client retries with the same key, and the
//! derived key makes sure an order that was placed after all is not placed twice.
//!
//! The call goes through the kit's resilient client (dependency `order`). The request is keyed,
//! so the client may repeat it after a refused connection or a 502/503/504 (twice at most);
//! never after a timeout, which has used up the customer's time already.

use mercato_kit::client::{Dependency, Error, Policy};
use mercato_kit::http::{RequestContext, IDEMPOTENCY_KEY};
use mercato_kit::ids::OrderId;
use mercato_kit::problem::is_overloaded;
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Why the order service could not be asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// What the order service answered.
#[derive(Clone, Debug, PartialEq)]
pub enum OrderAnswer {
    /// The order exists (placed now, or replayed for the same key).
    Placed {
        status: StatusCode,
        order_id: OrderId,
        body: Value,
    },
    /// It refused; passed on to the customer as it came.
    Refused {
        status: StatusCode,
        body: String,
        retry_after: Option<HeaderValue>,
    },
}

/// Places orders.
#[async_trait::async_trait]
pub trait OrderService: Send + Sync {
    /// Places `order` (the order service's `POST /orders` body) with `key` as its
    /// Idempotency-Key, as the caller whose `Authorization` header this is.
    async fn place(
        &self,
        order: &Value,
        key: &str,
        authorization: &str,
        ctx: &RequestContext,
    ) -> Result<OrderAnswer, Unavailable>;
}

/// The order service over HTTP.
pub struct OrderClient {
    url: String,
    order: Dependency,
}

/// The order service's policy: `timeout` per attempt, the default breaker (reset 10 s).
pub fn policy(timeout: Duration) -> Policy {
    let mut policy = Policy::new(timeout, Duration::from_secs(10));
    policy.retry.retry_timeouts = false;
    policy.retry.max_retry_after = Duration::from_secs(1);
    policy
}

impl OrderClient {
    pub fn new(base_url: &str, order: Dependency) -> OrderClient {
        OrderClient {
            url: format!("{}/api/v1/orders", base_url.trim_end_matches('/')),
            order,
        }
    }
}

#[async_trait::async_trait]
impl OrderService for OrderClient {
    async fn place(
        &self,
        order: &Value,
        key: &str,
        authorization: &str,
        ctx: &RequestContext,
    ) -> Result<OrderAnswer, Unavailable> {
        let res = self
            .order
            .send(Some(ctx), |http| {
                http.post(&self.url)
                    .header(AUTHORIZATION, authorization)
                    .header(IDEMPOTENCY_KEY, key)
                    .json(order)
            })
            .await;
        let res = match res {
            Ok(res) => res,
            // A 429 is the order service refusing this customer for now, and a 503 marked
            // overloaded is it refusing new orders until the saga catches up: theirs to hear,
            // with the order service's `Retry-After`.
            Err(Error::Status { response, .. })
                if response.status == StatusCode::TOO_MANY_REQUESTS
                    || is_overloaded(response.status, &response.headers) =>
            {
                response
            }
            Err(Error::Status { response, .. }) => {
                return Err(Unavailable(format!(
                    "the order service answered {}",
                    response.status
                )))
            }
            Err(e) => {
                return Err(Unavailable(format!(
                    "the order service did not answer: {e}"
                )))
            }
        };
        let status = res.status;
        if !status.is_success() {
            let retry_after = res.headers.get(RETRY_AFTER).cloned();
            let body = res.text();
            return Ok(OrderAnswer::Refused {
                status,
                body,
                retry_after,
            });
        }
        let body: Value = res
            .json()
            .map_err(|e| Unavailable(format!("the order service answered unreadably: {e}")))?;
        let order_id = body["id"]
            .as_str()
            .and_then(|s| s.parse::<OrderId>().ok())
            .ok_or_else(|| Unavailable("the order service answered without an order id".into()))?;
        Ok(OrderAnswer::Placed {
            status,
            order_id,
            body,
        })
    }
}
