//! The demo catalog of the embedded mode: the products of `mercato_kit::demo` (shared with the
//! inventory service, which stocks them), owned by the demo seller.
//!
//! Seeding runs at every start when asked and adds only what is missing, in one transaction
//! with one `product.created` event per product added, so restarts never duplicate anything.
//! Demo products get ids derived from their sku and fixed creation times, one second apart in
//! the demo catalog's order (the first is the newest): every installation shows the same ids
//! in the same order, and another service could name a demo product without asking the
//! catalog.

use crate::domain::{CreateProduct, NewProduct, Product};
use crate::service;
use anyhow::Context;
use mercato_kit::db::Db;
use mercato_kit::events::Cause;
use mercato_kit::ids::ProductId;
use mercato_kit::time::Micros;
use sha2::{Digest, Sha256};

/// 2025-01-01T00:00:00Z: before anything a user creates, so new products list first.
const DEMO_EPOCH_MS: u64 = 1_735_689_600_000;

/// The id of the demo product with this sku: a UUID v7 stamped with the demo epoch whose
/// random bits come from a hash of the sku.
pub fn demo_product_id(sku: &str) -> ProductId {
    let digest = Sha256::digest(format!("mercato demo product {sku}").as_bytes());
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    ProductId(uuid::Builder::from_unix_timestamp_millis(DEMO_EPOCH_MS, &bits).into_uuid())
}

/// The demo products, checked by the same rules as any new product.
pub fn demo_products() -> anyhow::Result<Vec<Product>> {
    let epoch_us = DEMO_EPOCH_MS as Micros * 1000;
    // `stock` is the inventory service's business.
    mercato_kit::demo::products()
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let id = demo_product_id(&d.sku);
            let sku = d.sku.clone();
            let draft = NewProduct::try_from(CreateProduct {
                sku: Some(d.sku),
                name: Some(d.name),
                description: Some(d.description),
                category: Some(d.category),
                price_cents: Some(d.price_cents),
                currency: None,
                seller_id: None,
            })
            .map_err(|p| anyhow::anyhow!("demo product {sku} is not valid: {p}"))?;
            let created_at = epoch_us - i as Micros * 1_000_000;
            Ok(Product::new(
                id,
                draft,
                mercato_kit::demo::SELLER.id,
                created_at,
            ))
        })
        .collect()
}

/// Adds every demo product not present yet; returns how many were added.
pub async fn seed_demo(db: &Db) -> anyhow::Result<usize> {
    let products = demo_products()?;
    let mut tx = db.begin().await?;
    let mut added = 0;
    for p in &products {
        if service::import(&mut tx, p, &Cause::default())
            .await
            .with_context(|| format!("seeding demo product {}", p.sku))?
        {
            added += 1;
        }
    }
    tx.commit().await?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_demo_file_is_valid_and_its_ids_and_times_are_distinct() {
        let products = demo_products().unwrap();
        assert_eq!(products.len(), 73);
        let ids: HashSet<_> = products.iter().map(|p| p.id).collect();
        let times: HashSet<_> = products.iter().map(|p| p.created_at).collect();
        let skus: HashSet<_> = products.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!((ids.len(), times.len(), skus.len()), (73, 73, 73));
        assert!(products.iter().all(|p| p.id.0.get_version_num() == 7));
        assert_eq!(demo_product_id("ELEC-0001"), products[0].id);
        assert!(products[0].created_at > products[1].created_at);
    }
}
