//! What the catalog says about products now: the cart stores no names or prices, so every time
//! a cart is shown or changed it asks the catalog service
//! (`GET {MERCATO_CATALOG_URL}/api/v1/products/{id}`), one request per line, all at once.
//!
//! Every call goes through the kit's resilient client (dependency `catalog`): a deadline, one
//! retry after a refused connection or a 502/503/504 (not after a timeout, which has used the
//! time already), a circuit breaker and a bulkhead. When the catalog cannot answer
//! (unreachable, slow, failing) the whole lookup fails, and the cart answers 503 naming the
//! catalog rather than showing a cart with made-up prices.

use crate::domain::{ProductInfo, Products};
use mercato_kit::client::{Dependency, Policy};
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{Currency, ProductId};
use serde::Deserialize;
use std::time::Duration;

/// Why the catalog could not be asked, for the log and the 503's detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Looks products up.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// The catalog's answer for each of `ids` (`None`: no such product).
    async fn products(
        &self,
        ids: &[ProductId],
        ctx: Option<&RequestContext>,
    ) -> Result<Products, Unavailable>;
}

/// The catalog service over HTTP.
pub struct CatalogClient {
    base: String,
    catalog: Dependency,
}

/// The catalog's policy: `timeout` per attempt, the default breaker (reset 10 s).
pub fn policy(timeout: Duration) -> Policy {
    let mut policy = Policy::new(timeout, Duration::from_secs(10));
    policy.retry.max_retries = 1;
    policy.retry.retry_timeouts = false;
    policy.retry.max_retry_after = Duration::from_millis(500);
    policy
}

#[derive(Deserialize)]
struct ProductAnswer {
    name: String,
    price_cents: i64,
    currency: Currency,
    active: bool,
}

impl CatalogClient {
    pub fn new(base_url: &str, catalog: Dependency) -> CatalogClient {
        CatalogClient {
            base: format!("{}/api/v1/products", base_url.trim_end_matches('/')),
            catalog,
        }
    }

    async fn one(
        &self,
        id: ProductId,
        ctx: Option<&RequestContext>,
    ) -> Result<(ProductId, Option<ProductInfo>), Unavailable> {
        let url = format!("{}/{id}", self.base);
        let found: Option<ProductAnswer> = self
            .catalog
            .get_found(ctx, &url)
            .await
            .map_err(Unavailable)?;
        let info = found.map(|p| ProductInfo {
            name: p.name,
            price_cents: p.price_cents,
            currency: p.currency,
            active: p.active,
        });
        Ok((id, info))
    }
}

#[async_trait::async_trait]
impl Catalog for CatalogClient {
    async fn products(
        &self,
        ids: &[ProductId],
        ctx: Option<&RequestContext>,
    ) -> Result<Products, Unavailable> {
        let answers =
            futures::future::try_join_all(ids.iter().map(|id| self.one(*id, ctx))).await?;
        Ok(answers.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn client(base: &str, timeout: Duration) -> CatalogClient {
        let registry = prometheus::Registry::new();
        CatalogClient::new(
            base,
            Dependency::new("catalog", policy(timeout), &registry).unwrap(),
        )
    }

    #[tokio::test]
    async fn an_unreachable_catalog_is_unavailable_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = client(&format!("http://{addr}"), Duration::from_secs(2));
        let err = c.products(&[ProductId::new()], None).await.unwrap_err();
        assert!(err.0.contains("catalog"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_catalog_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let c = client(&format!("http://{addr}"), Duration::from_millis(200));
        let started = Instant::now();
        assert!(c.products(&[ProductId::new()], None).await.is_err());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        hold.abort();
    }

    #[tokio::test]
    async fn no_lines_ask_nothing() {
        let c = client("http://127.0.0.1:9", Duration::from_millis(100));
        assert!(c.products(&[], None).await.unwrap().is_empty());
    }
}
