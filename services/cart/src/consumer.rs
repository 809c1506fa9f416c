//! The events the cart consumes (consumer name `cart`): an order placed at checkout that was
//! paid empties what was ordered from the cart; one that was cancelled leaves the cart for
//! another try. The cart publishes nothing.
//!
//! Each event is handled inside the kit consumer's transaction, which also records the event
//! in the inbox; through [`KvStore::within`](crate::store::KvStore::within) the SQL store writes
//! in that same transaction, so a redelivered event finds its id in the inbox and changes
//! nothing. The use cases are idempotent on their own as well (a settled checkout is remembered
//! in the cart), for a store whose writes are not part of the transaction.

use crate::service::{self, Carts};
use mercato_kit::contracts::types::{ORDER_CANCELLED, ORDER_PAID};
use mercato_kit::contracts::{self, OrderCancelled, OrderRef};
use mercato_kit::db::Tx;
use mercato_kit::events::{Envelope, EventHandler};
use std::sync::Arc;

/// Every event type the cart consumes.
pub const CONSUMED: [&str; 2] = [ORDER_PAID, ORDER_CANCELLED];

pub struct CartEvents {
    carts: Arc<Carts>,
}

impl CartEvents {
    pub fn new(carts: Arc<Carts>) -> Self {
        CartEvents { carts }
    }
}

#[async_trait::async_trait]
impl EventHandler for CartEvents {
    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> anyhow::Result<()> {
        let kv = self.carts.store().within(tx);
        match env.event_type.as_str() {
            ORDER_PAID => {
                let e: OrderRef = contracts::payload(env)?;
                service::order_paid(&*kv, e.order_id, self.carts.settings().ttl).await?;
            }
            ORDER_CANCELLED => {
                let e: OrderCancelled = contracts::payload(env)?;
                service::order_cancelled(&*kv, e.order_id).await?;
            }
            other => tracing::debug!(event_type = other, "not an event the cart handles"),
        }
        Ok(())
    }
}
