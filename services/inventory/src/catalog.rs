//! Who owns a product the inventory has not heard of yet.
//!
//! Stock rows are made from the catalog's `product.*` events, which arrive a moment after the
//! catalog answered 201. A seller who creates a product and stocks it at once (as the back
//! office does) would get 404 in between, so when `PUT /inventory/{id}` finds no row it asks
//! the catalog service (`GET {MERCATO_CATALOG_URL}/api/v1/products/{id}`) for the product's
//! facts and makes the row from them, as the event would. The owner check then runs on those
//! facts, and the event, when it comes, brings the same facts (or newer ones) in.
//!
//! Calls go through the kit's resilient client (dependency `catalog`): a deadline, one retry
//! after a refused connection or a 502/503/504, a breaker and a bulkhead.

use mercato_kit::client::{Dependency, Policy};
use mercato_kit::contracts::ProductChanged;
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{ProductId, UserId};
use serde::Deserialize;
use std::time::Duration;

/// Why the catalog could not be asked, for the log and the 503's detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Looks up one product's facts.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// The product as the catalog has it now; `None` when it has no such product.
    async fn product(
        &self,
        id: ProductId,
        ctx: Option<&RequestContext>,
    ) -> Result<Option<ProductChanged>, Unavailable>;
}

/// The catalog's policy: `timeout` per attempt, one retry, the default breaker (reset 10 s).
pub fn policy(timeout: Duration) -> Policy {
    let mut policy = Policy::new(timeout, Duration::from_secs(10));
    policy.retry.max_retries = 1;
    policy.retry.retry_timeouts = false;
    policy.retry.max_retry_after = Duration::from_millis(500);
    policy
}

/// The catalog service over HTTP.
pub struct CatalogClient {
    base: String,
    catalog: Dependency,
}

#[derive(Deserialize)]
struct ProductAnswer {
    sku: String,
    name: String,
    category: String,
    price_cents: i64,
    currency: String,
    seller_id: UserId,
    active: bool,
}

impl CatalogClient {
    pub fn new(base_url: &str, catalog: Dependency) -> CatalogClient {
        CatalogClient {
            base: format!("{}/api/v1/products", base_url.trim_end_matches('/')),
            catalog,
        }
    }
}

#[async_trait::async_trait]
impl Catalog for CatalogClient {
    async fn product(
        &self,
        id: ProductId,
        ctx: Option<&RequestContext>,
    ) -> Result<Option<ProductChanged>, Unavailable> {
        let url = format!("{}/{id}", self.base);
        let found: Option<ProductAnswer> = self
            .catalog
            .get_found(ctx, &url)
            .await
            .map_err(Unavailable)?;
        Ok(found.map(|p| ProductChanged {
            product_id: id,
            sku: p.sku,
            name: p.name,
            category: p.category,
            price_cents: p.price_cents,
            currency: p.currency,
            seller_id: p.seller_id,
            active: p.active,
        }))
    }
}

/// No catalog to ask: stock rows come from events only (tests of the inventory on its own).
pub struct EventsOnly;

#[async_trait::async_trait]
impl Catalog for EventsOnly {
    async fn product(
        &self,
        _id: ProductId,
        _ctx: Option<&RequestContext>,
    ) -> Result<Option<ProductChanged>, Unavailable> {
        Ok(None)
    }
}
