//! The cart's use cases, shared by the HTTP handlers and the event handler.
//!
//! Every change to a key is a compare-and-set loop: read the key with its version, decide with
//! `domain`, write at that version; when someone else wrote in between, read and decide again.
//! So two tabs adding at once both land, and a checkout settling a cart never overwrites a line
//! the customer added a moment before.
//!
//! The catalog is asked before a change, never while a transaction is open (on SQLite that
//! would hold the only writer for as long as the catalog takes). A change that commits returns
//! its transaction to the caller, who commits it with the request's idempotency record.
//!
//! Nothing here relies on that transaction for correctness, because a store outside the SQL
//! database (Redis) writes at once, whatever becomes of the transaction: a change made with
//! an Idempotency-Key is remembered in the cart itself (`Cart::applied`), so a retry after the
//! idempotency record failed to commit finds it applied and does not add twice; a change whose
//! cart holds a product not looked up yet is not written at all (rather than written and rolled
//! back); and settling a checkout is idempotent step by step (see below).
//!
//! Checkout and its order's fate, with `checkout:<order_id>` in between:
//! the checkout places the order through the order service and records which lines of whose
//! cart it ordered; `order.paid` takes those lines out of that cart (so what was added after
//! the checkout stays) and drops the record; `order.cancelled` only drops it (the customer keeps
//! the cart to try again). The saga can outrun the order service's answer to us, so `order.paid`
//! finding no record leaves a `PaidFirst` mark, and the checkout settles when it finds one.

use crate::catalog::{self, Catalog};
use crate::domain::{
    self, cart_key, checkout_key, order_key, Cart, Change, CheckoutRecord, Limits, Line,
    PricedCart, Products, Recording, Refusal, Settlement,
};
use crate::orders::{self, OrderAnswer, OrderService};
use crate::store::{get_typed, to_value, Expect, KvStore, StoreError};
use axum::http::{HeaderValue, StatusCode};
use mercato_kit::db::{Db, Tx};
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::time::Micros;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// How long a checkout record waits for its order's outcome. Far past anything the saga takes
/// (a reservation expires after 30 minutes by default and cancels the order); a record that
/// outlives it only means the cart is not emptied for an order that paid a day late.
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Compare-and-set attempts on one key before giving up: the key is changing all the time.
const CAS_ATTEMPTS: usize = 10;

/// Catalog lookups for one change before giving up: each round looks up products another tab
/// added meanwhile.
const LOOKUP_ROUNDS: usize = 3;

/// What the use cases can fail with; mapped to problem documents in one place (`http`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the catalog service is unavailable: {0}")]
    CatalogUnavailable(catalog::Unavailable),
    #[error("the order service is unavailable: {0}")]
    OrderUnavailable(orders::Unavailable),
    /// The order service refused the order; its answer is passed on as it came.
    #[error("the order service refused the order with {status}")]
    OrderRefused {
        status: StatusCode,
        body: String,
        retry_after: Option<HeaderValue>,
    },
    #[error("the cart is empty")]
    CartEmpty,
    #[error("the cart kept changing while this change was being made")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] mercato_kit::db::Error),
}

/// Limits and lifetimes from configuration.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a cart lives after its last change.
    pub ttl: Duration,
    pub limits: Limits,
}

/// A cart as shown: priced from the catalog now, and when it expires (`None` when empty).
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    pub cart: PricedCart,
    pub expires_at: Option<Micros>,
}

fn shown(cart: &Cart, expires_at: Option<Micros>, products: &Products) -> Shown {
    Shown {
        cart: domain::price(cart, products),
        expires_at: expires_at.filter(|_| !cart.is_empty()),
    }
}

/// A placed order, with the transaction that recorded its checkout (still to be committed).
pub struct Placed {
    pub tx: Tx,
    pub status: StatusCode,
    pub order: Value,
}

/// The cart service's use cases.
pub struct Carts {
    db: Db,
    store: Arc<dyn KvStore>,
    catalog: Arc<dyn Catalog>,
    orders: Arc<dyn OrderService>,
    settings: Settings,
}

impl Carts {
    pub fn new(
        db: Db,
        store: Arc<dyn KvStore>,
        catalog: Arc<dyn Catalog>,
        orders: Arc<dyn OrderService>,
        settings: Settings,
    ) -> Carts {
        Carts {
            db,
            store,
            catalog,
            orders,
            settings,
        }
    }

    /// The SQL database: idempotency records, the inbox, and transactions.
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn store(&self) -> &dyn KvStore {
        &*self.store
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    async fn lookup(&self, ids: &[ProductId], ctx: &RequestContext) -> Result<Products, Error> {
        if ids.is_empty() {
            return Ok(Products::new());
        }
        self.catalog
            .products(ids, Some(ctx))
            .await
            .map_err(Error::CatalogUnavailable)
    }

    /// The customer's cart as it is; reading does not extend its life.
    pub async fn show(&self, customer: UserId, ctx: &RequestContext) -> Result<Shown, Error> {
        let (cart, expires_at) = match get_typed::<Cart>(self.store(), &cart_key(customer)).await? {
            Some((cart, _, expires_at)) => (cart, Some(expires_at)),
            None => (Cart::default(), None),
        };
        let ids: Vec<ProductId> = cart.lines.iter().map(|l| l.product_id).collect();
        let products = self.lookup(&ids, ctx).await?;
        Ok(shown(&cart, expires_at, &products))
    }

    /// Applies a customer's change, extending the cart's life. Returns the open transaction the
    /// change is written in, and the cart as it will be shown.
    ///
    /// `request` identifies a change made with an Idempotency-Key (`domain::request_id`): one
    /// the cart remembers applying is not applied again, and the cart is shown as it is.
    pub async fn change(
        &self,
        customer: UserId,
        change: Change,
        request: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(Tx, Shown), Error> {
        let key = cart_key(customer);
        let limits = self.settings.limits;
        let mut products = Products::new();
        for _ in 0..LOOKUP_ROUNDS {
            let current = get_typed::<Cart>(self.store(), &key).await?;
            let wanted: BTreeSet<ProductId> = current
                .iter()
                .flat_map(|(cart, _, _)| cart.lines.iter().map(|l| l.product_id))
                .chain(change.looks_up())
                .filter(|id| !products.contains_key(id))
                .collect();
            let wanted: Vec<ProductId> = wanted.into_iter().collect();
            products.extend(self.lookup(&wanted, ctx).await?);

            let mut tx = self.db.begin().await?;
            let updated = {
                let kv = self.store.within(&mut tx);
                update_cart(&*kv, &key, self.settings.ttl, |cart| {
                    // Another tab added a product not looked up yet: look it up first.
                    if cart
                        .lines
                        .iter()
                        .any(|l| !products.contains_key(&l.product_id))
                    {
                        return Ok(Edit::LookUpFirst);
                    }
                    if request.is_some_and(|r| cart.has_applied(r)) {
                        return Ok(Edit::Unchanged);
                    }
                    change.apply(cart, &products, limits)?;
                    if let Some(r) = request {
                        cart.remember_applied(r);
                    }
                    Ok(Edit::Changed)
                })
                .await?
            };
            match updated {
                Some((cart, expires_at)) => return Ok((tx, shown(&cart, expires_at, &products))),
                // Nothing was written.
                None => tx.rollback().await?,
            }
        }
        Err(Error::Contended)
    }

    /// Empties the customer's cart.
    pub async fn clear(&self, customer: UserId) -> Result<Shown, Error> {
        self.store.delete(&cart_key(customer), None).await?;
        Ok(shown(&Cart::default(), None, &Products::new()))
    }

    /// Places an order for everything in the cart through the order service, with an
    /// Idempotency-Key derived from the checkout's `key`, and records the checkout so the
    /// order's outcome can settle the cart. The cart itself is left as it is.
    pub async fn checkout(
        &self,
        customer: UserId,
        payment_method: &str,
        shipping_address: Option<&Value>,
        key: &str,
        authorization: &str,
        ctx: &RequestContext,
    ) -> Result<Placed, Error> {
        let cart = match get_typed::<Cart>(self.store(), &cart_key(customer)).await? {
            Some((cart, _, _)) if !cart.is_empty() => cart,
            _ => return Err(Error::CartEmpty),
        };
        let mut order = json!({
            "items": cart.lines.iter()
                .map(|l| json!({"product_id": l.product_id, "quantity": l.quantity}))
                .collect::<Vec<_>>(),
            "payment_method": payment_method,
        });
        if let Some(address) = shipping_address {
            order["shipping_address"] = address.clone();
        }
        let answer = self
            .orders
            .place(&order, &order_key(key), authorization, ctx)
            .await
            .map_err(Error::OrderUnavailable)?;
        let (status, order_id, body) = match answer {
            OrderAnswer::Placed {
                status,
                order_id,
                body,
            } => (status, order_id, body),
            OrderAnswer::Refused {
                status,
                body,
                retry_after,
            } => {
                return Err(Error::OrderRefused {
                    status,
                    body,
                    retry_after,
                })
            }
        };
        let mut tx = self.db.begin().await?;
        {
            let kv = self.store.within(&mut tx);
            record_checkout(&*kv, order_id, customer, &cart.lines, self.settings.ttl).await?;
        }
        tracing::info!(%order_id, %customer, lines = cart.lines.len(), "checked out");
        Ok(Placed {
            tx,
            status,
            order: body,
        })
    }
}

/// What an edit of a cart decided.
enum Edit {
    /// Write the edited cart.
    Changed,
    /// Write nothing; the cart stays as it was read.
    Unchanged,
    /// Write nothing, and give up on this read.
    LookUpFirst,
}

/// Reads the cart (an empty one when there is none), edits it with `f`, and writes it back for
/// another `ttl` when `f` changed it, again and again until no one else wrote in between.
/// Returns the cart and when it expires (`None`: there is none), or `None` when `f` gave up.
async fn update_cart<F>(
    kv: &dyn KvStore,
    key: &str,
    ttl: Duration,
    mut f: F,
) -> Result<Option<(Cart, Option<Micros>)>, Error>
where
    F: FnMut(&mut Cart) -> Result<Edit, Refusal>,
{
    for _ in 0..CAS_ATTEMPTS {
        let (mut cart, expect, expires_at) = match get_typed::<Cart>(kv, key).await? {
            Some((cart, version, expires_at)) => (cart, Expect::Version(version), Some(expires_at)),
            None => (Cart::default(), Expect::Absent, None),
        };
        match f(&mut cart)? {
            Edit::Changed => {}
            Edit::Unchanged => return Ok(Some((cart, expires_at))),
            Edit::LookUpFirst => return Ok(None),
        }
        if let Some(w) = kv.put(key, &to_value(key, &cart)?, expect, ttl).await? {
            return Ok(Some((cart, Some(w.expires_at))));
        }
    }
    Err(Error::Contended)
}

/// Takes a paid order's lines out of the customer's cart, once (see `Cart::settle`). A cart
/// that expired or was emptied has nothing left to take out.
async fn take_out(
    kv: &dyn KvStore,
    customer: UserId,
    order: OrderId,
    lines: &[Line],
    ttl: Duration,
) -> Result<(), Error> {
    let key = cart_key(customer);
    for _ in 0..CAS_ATTEMPTS {
        let Some((mut cart, version, _)) = get_typed::<Cart>(kv, &key).await? else {
            return Ok(());
        };
        if !cart.settle(order, lines) {
            return Ok(());
        }
        if kv
            .put(&key, &to_value(&key, &cart)?, Expect::Version(version), ttl)
            .await?
            .is_some()
        {
            tracing::info!(order_id = %order, %customer, "paid checkout taken out of the cart");
            return Ok(());
        }
    }
    Err(Error::Contended)
}

async fn settle(
    kv: &dyn KvStore,
    order: OrderId,
    settlement: Settlement,
    cart_ttl: Duration,
) -> Result<bool, Error> {
    let record = checkout_key(order);
    match settlement {
        Settlement::TakeOut { customer_id, lines } => {
            take_out(kv, customer_id, order, &lines, cart_ttl).await?;
            kv.delete(&record, None).await?;
        }
        Settlement::Drop => {
            kv.delete(&record, None).await?;
        }
        Settlement::MarkPaid => {
            let mark = to_value(&record, &CheckoutRecord::PaidFirst)?;
            // Someone recorded the checkout meanwhile: decide again with it.
            return Ok(kv
                .put(&record, &mark, Expect::Absent, RECORD_TTL)
                .await?
                .is_some());
        }
        Settlement::Nothing => {}
    }
    Ok(true)
}

/// The checkout's side: records which lines of whose cart `order` was placed with, or settles
/// at once when the order was paid before this.
pub async fn record_checkout(
    kv: &dyn KvStore,
    order: OrderId,
    customer: UserId,
    lines: &[Line],
    cart_ttl: Duration,
) -> Result<(), Error> {
    let key = checkout_key(order);
    for _ in 0..CAS_ATTEMPTS {
        let found = get_typed::<CheckoutRecord>(kv, &key).await?;
        match domain::on_recorded(found.as_ref().map(|f| &f.0), customer, lines) {
            Recording::Write(record) => {
                if kv
                    .put(&key, &to_value(&key, &record)?, Expect::Absent, RECORD_TTL)
                    .await?
                    .is_some()
                {
                    return Ok(());
                }
            }
            Recording::AlreadyThere => return Ok(()),
            Recording::Settle(s) => {
                settle(kv, order, s, cart_ttl).await?;
                return Ok(());
            }
        }
    }
    Err(Error::Contended)
}

/// `order.paid`: the checkout's lines leave the customer's cart.
pub async fn order_paid(kv: &dyn KvStore, order: OrderId, cart_ttl: Duration) -> Result<(), Error> {
    let key = checkout_key(order);
    for _ in 0..CAS_ATTEMPTS {
        let found = get_typed::<CheckoutRecord>(kv, &key).await?;
        let settlement = domain::on_paid(found.as_ref().map(|f| &f.0));
        if settle(kv, order, settlement, cart_ttl).await? {
            return Ok(());
        }
    }
    Err(Error::Contended)
}

/// `order.cancelled`: the cart stays as it is for another try; the record goes.
pub async fn order_cancelled(kv: &dyn KvStore, order: OrderId) -> Result<(), Error> {
    let found = get_typed::<CheckoutRecord>(kv, &checkout_key(order)).await?;
    let settlement = domain::on_cancelled(found.as_ref().map(|f| &f.0));
    // A cart's lifetime is irrelevant here: cancelling never touches a cart.
    settle(kv, order, settlement, Duration::ZERO).await?;
    Ok(())
}
