//! What the kit's bus tests share: events to publish, waiting for deliveries, the handler that
//! never finishes with a poisoned event, and the effects a handler recorded.

#![allow(dead_code)]

use mercato_kit::db::{Db, Tx};
use mercato_kit::events::{Delivery, Envelope, EventHandler, Subscription};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// An event of `event_type` (its producer the type's domain) with payload `n`, on one of three
/// aggregates.
pub fn event(event_type: &str, n: i64) -> Envelope {
    Envelope::new(
        event_type.split('.').next().unwrap(),
        event_type,
        format!("agg-{}", n % 3),
        &serde_json::json!({ "n": n }),
    )
}

/// The next delivery, within `patience`.
pub async fn next(sub: &mut Box<dyn Subscription>, patience: Duration) -> Delivery {
    tokio::time::timeout(patience, sub.next())
        .await
        .expect("no delivery in time")
        .expect("next failed")
}

/// Whether anything arrives within `wait`: for asserting that nothing more comes.
pub async fn nothing_within(sub: &mut Box<dyn Subscription>, wait: Duration) -> bool {
    tokio::time::timeout(wait, sub.next()).await.is_err()
}

/// Polls until a condition holds, failing naming it after a patience (the kit's).
pub use mercato_kit::testing::until;

/// Never finishes with the event whose payload says `poison`, as a handler that crashes the
/// process or hangs would; records the others in `effects`.
pub struct Poisoned {
    pub poison_calls: AtomicU32,
}

#[async_trait::async_trait]
impl EventHandler for Poisoned {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> anyhow::Result<()> {
        if event.payload["poison"] == true {
            self.poison_calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        mercato_kit::db::query("INSERT INTO effects (event_id, n) VALUES ($1, $2)")
            .bind(event.event_id.to_string())
            .bind(event.payload["n"].as_i64().unwrap_or(0))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The payloads' `n` of what the handler recorded, in the order it recorded them.
pub async fn effects(db: &Db) -> Vec<i64> {
    mercato_kit::db::query("SELECT n FROM effects ORDER BY rowid")
        .fetch_all(db.reader())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("n"))
        .collect()
}
