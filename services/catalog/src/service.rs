//! The catalog's use cases: create a product, change it, take it off sale, and add products
//! decided elsewhere (the demo data). Each takes the caller's transaction and writes the
//! product row and the event announcing it there, so an HTTP handler, the seeder or a future
//! event consumer change products the same way, and the caller decides what else (its
//! idempotency record) commits with them.
//!
//! Who may change a product is decided here, on the row read under its lock, so the check
//! cannot be outdated by the time the change is written.

use crate::domain::{self, NewProduct, Product, ProductPatch};
use crate::events;
use crate::store;
use mercato_kit::auth::Principal;
use mercato_kit::db::{is_unique_violation, Tx};
use mercato_kit::events::Cause;
use mercato_kit::ids::{ProductId, UserId};
use mercato_kit::time::now_us;

/// What the catalog's use cases can fail with; mapped to problem documents in one place
/// (`http`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no product {0}")]
    NotFound(ProductId),
    #[error("the sku {0} is already used by another product")]
    SkuTaken(String),
    /// The caller may not do this to this product (see [`domain::may_edit`]).
    #[error(transparent)]
    Forbidden(#[from] domain::Forbidden),
    #[error(transparent)]
    Db(#[from] mercato_kit::db::Error),
}

/// A write refused by a unique index: the sku is the only unique column a caller controls (ids
/// are minted here), so the sku is taken.
fn sku_taken(e: mercato_kit::db::Error, sku: &str) -> Error {
    if is_unique_violation(&e) {
        Error::SkuTaken(sku.to_owned())
    } else {
        Error::Db(e)
    }
}

/// Creates a product owned by `seller_id` (decided by [`domain::seller_for_new`]) and
/// announces it.
pub async fn create(
    tx: &mut Tx,
    draft: NewProduct,
    seller_id: UserId,
    cause: &Cause,
) -> Result<Product, Error> {
    let product = Product::new(ProductId::new(), draft, seller_id, now_us());
    store::insert(tx, &product)
        .await
        .map_err(|e| sku_taken(e, &product.sku))?;
    events::announce(tx, events::PRODUCT_CREATED, &product, cause).await?;
    Ok(product)
}

/// Applies `patch` to the product for `principal`, who must own it or be an admin, and
/// announces the change. A patch that changes nothing writes nothing and announces nothing.
pub async fn update(
    tx: &mut Tx,
    principal: &Principal,
    id: ProductId,
    patch: &ProductPatch,
    cause: &Cause,
) -> Result<Product, Error> {
    let current = editable(tx, principal, id, domain::Forbidden::NOT_OWNER_CHANGE).await?;
    apply(tx, current, patch, cause).await
}

/// Takes the product off sale for `principal`, who must own it or be an admin. Deactivating
/// an inactive product is a no-op, so a repeated DELETE neither fails nor announces anything
/// twice.
pub async fn deactivate(
    tx: &mut Tx,
    principal: &Principal,
    id: ProductId,
    cause: &Cause,
) -> Result<Product, Error> {
    let current = editable(tx, principal, id, domain::Forbidden::NOT_OWNER_DEACTIVATE).await?;
    let patch = ProductPatch {
        active: Some(false),
        ..ProductPatch::default()
    };
    apply(tx, current, &patch, cause).await
}

/// The product, read under its lock in `tx`, if `principal` may change it (its owner or an
/// admin); `refusal` says what they were refused otherwise.
async fn editable(
    tx: &mut Tx,
    principal: &Principal,
    id: ProductId,
    refusal: domain::Forbidden,
) -> Result<Product, Error> {
    let current = store::lock(tx, id).await?.ok_or(Error::NotFound(id))?;
    if !domain::may_edit(principal, &current) {
        return Err(refusal.into());
    }
    Ok(current)
}

/// Writes `current` (read under its lock in `tx`) with `patch` applied, and its event.
async fn apply(
    tx: &mut Tx,
    current: Product,
    patch: &ProductPatch,
    cause: &Cause,
) -> Result<Product, Error> {
    let mut after = current.patched(patch);
    let Some(change) = current.change_to(&after) else {
        return Ok(current);
    };
    // Strictly later than the last change even if the clock stepped back, so "changed since"
    // comparisons by consumers hold.
    after.updated_at = now_us().max(current.updated_at + 1);
    store::write(tx, &after)
        .await
        .map_err(|e| sku_taken(e, &after.sku))?;
    events::announce(tx, events::change_type(change), &after, cause).await?;
    Ok(after)
}

/// Adds a product whose id and times were decided elsewhere (the demo data), unless its id or
/// its sku exists already, and announces it; true when it was added. Safe to race: when another
/// replica adds the same product meanwhile, this one does nothing instead of failing.
pub async fn import(tx: &mut Tx, product: &Product, cause: &Cause) -> Result<bool, Error> {
    if !store::insert_new(tx, product).await? {
        return Ok(false);
    }
    events::announce(tx, events::PRODUCT_CREATED, product, cause).await?;
    Ok(true)
}
