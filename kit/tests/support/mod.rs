//! What the kit's bus tests share: events to publish, waiting for deliveries, the handlers
//! that record what they apply (one never finishes with a poisoned event), the effects they
//! recorded, and the scenarios every broker-backed bus runs (`bus_suite`).

#![allow(dead_code)]

pub mod bus_suite;

use mercato_kit::db::{Db, Migrations, Tx};
use mercato_kit::events::{Delivery, Envelope, EventHandler, Subscription};
use sqlx::migrate::Migrator;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
        record(tx, event).await
    }
}

/// Records each event it sees as a row in `effects`, unless told to fail; counts its calls.
#[derive(Default)]
pub struct Recorder {
    pub fail: AtomicBool,
    pub calls: AtomicU32,
}

#[async_trait::async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> anyhow::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        anyhow::ensure!(!self.fail.load(Ordering::SeqCst), "told to fail");
        record(tx, event).await
    }
}

/// The effect of handling `event`: a row with its id and payload `n`, in the handler's
/// transaction, so the inbox and the effect commit together.
async fn record(tx: &mut Tx, event: &Envelope) -> anyhow::Result<()> {
    mercato_kit::db::query("INSERT INTO effects (event_id, n) VALUES ($1, $2)")
        .bind(event.event_id.to_string())
        .bind(event.payload["n"].as_i64().unwrap_or(0))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A consumer's database `name` in `dir` with the kit's tables only and an `effects` table
/// for the handlers above.
pub async fn effects_db(dir: &tempfile::TempDir, name: &str) -> Db {
    let url = format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display());
    let none = Migrations {
        sqlite: Migrator::DEFAULT,
        postgres: Migrator::DEFAULT,
    };
    let db = Db::connect(&url, name, 2, &none).await.unwrap();
    mercato_kit::db::query("CREATE TABLE IF NOT EXISTS effects (event_id TEXT, n BIGINT)")
        .execute(db.writer())
        .await
        .unwrap();
    db
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
