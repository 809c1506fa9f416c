//! Where carts live: a key-value store with expiry, behind one interface, [`KvStore`].
//!
//! The interface is what a Redis store offers as well, so one can replace the SQL one without
//! touching the use cases: one JSON document per key, a time to live per key set by every write,
//! and a compare-and-set on a version for every write, so two writers (two browser tabs adding
//! at once, the checkout and an event) never lose each other's change: the loser reads again and
//! retries. Nothing spans two keys.
//!
//! [`SqlKv`] implements it on the service's SQL database (SQLite embedded, PostgreSQL
//! scaled out) in a `kv` table: an expired row is invisible to every read and write at once,
//! and [`purge_task`] deletes it later. [`RedisKv`](crate::redis_store::RedisKv) implements it
//! on Redis, selected by `MERCATO_REDIS_URL`.
//!
//! Event handlers run inside the kit consumer's transaction, and on SQLite that transaction
//! holds the only write connection: a write through the pool from inside it would wait for
//! itself. So [`KvStore::within`] gives the store as seen from inside a transaction; the SQL
//! store then writes in it, and its effect commits together with the inbox row (and with the
//! idempotency record, at checkout). A store that is not the SQL database (Redis) returns
//! itself: its writes are not part of the transaction, which the use cases allow for by being
//! idempotent on their own (see `service`, `domain::Cart::settle` and `domain::Cart::applied`).

use mercato_kit::db::Conn;
use mercato_kit::db::{Db, Tx};
use mercato_kit::time::{now_us, Micros};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// A key's version: what a compare-and-set compares. Opaque; a key never gets a version it had
/// before, not even after it expired or was deleted and written again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub(crate) i64);

/// A live key.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub value: Value,
    pub version: Version,
    pub expires_at: Micros,
}

/// What a compare-and-set expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No live key (never written, deleted, or expired).
    Absent,
    /// The key at this version.
    Version(Version),
}

/// A successful write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub version: Version,
    pub expires_at: Micros,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] mercato_kit::db::Error),
    /// Redis could not be reached or did not answer in time (or, rarely, refused a command).
    #[error("the Redis store failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored value under {key} is not valid: {cause}")]
    Corrupt { key: String, cause: String },
}

/// A key-value store with a time to live per key and compare-and-set writes.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync {
    /// The key's value, unless it is absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Writes `value` under `key`, to expire `ttl` from now, if the key is as `expect`ed;
    /// `None` (nothing written) when it is not: someone else wrote first.
    async fn put(
        &self,
        key: &str,
        value: &Value,
        expect: Expect,
        ttl: Duration,
    ) -> Result<Option<Written>, StoreError>;

    /// Deletes a live key (only at `expect`ed version, when given); true when one was deleted.
    async fn delete(&self, key: &str, expect: Option<Version>) -> Result<bool, StoreError>;

    /// Deletes expired keys for good; a store that expires keys itself has nothing to do.
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// This store as seen from inside `tx` (see the module docs).
    fn within<'a>(&'a self, tx: &'a mut Tx) -> Box<dyn KvStore + 'a>;
}

/// Reads the typed value of a key, with its version for a compare-and-set.
pub async fn get_typed<T: serde::de::DeserializeOwned>(
    kv: &dyn KvStore,
    key: &str,
) -> Result<Option<(T, Version, Micros)>, StoreError> {
    let Some(e) = kv.get(key).await? else {
        return Ok(None);
    };
    let value = serde_json::from_value(e.value).map_err(|err| StoreError::Corrupt {
        key: key.to_owned(),
        cause: err.to_string(),
    })?;
    Ok(Some((value, e.version, e.expires_at)))
}

/// Encodes a value for [`KvStore::put`].
pub fn to_value<T: serde::Serialize>(key: &str, value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|err| StoreError::Corrupt {
        key: key.to_owned(),
        cause: err.to_string(),
    })
}

/// Where the SQL store takes the time from: the clock, or a hand-set one in tests, so expiry
/// is tested without waiting.
pub type Clock = Arc<dyn Fn() -> Micros + Send + Sync>;

/// [`KvStore`] on the service's SQL database.
#[derive(Clone)]
pub struct SqlKv {
    db: Db,
    clock: Clock,
}

impl SqlKv {
    pub fn new(db: Db) -> SqlKv {
        SqlKv::with_clock(db, Arc::new(now_us))
    }

    pub fn with_clock(db: Db, clock: Clock) -> SqlKv {
        SqlKv { db, clock }
    }
}

/// The next version of a key: above the one replaced, and above every version the key had
/// before it was last deleted or expired (versions follow the clock), so a compare-and-set
/// against a version read long ago cannot succeed by coincidence.
fn next_version(replaced: Option<Version>, now: Micros) -> Version {
    Version(replaced.map_or(1, |v| v.0 + 1).max(now).max(1))
}

fn expiry(now: Micros, ttl: Duration) -> Micros {
    now.saturating_add(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
}

async fn sql_get(conn: &mut Conn, key: &str, now: Micros) -> Result<Option<Entry>, StoreError> {
    let row = mercato_kit::db::query(
        "SELECT body, version, expires_at FROM kv WHERE name = $1 AND expires_at > $2",
    )
    .bind(key)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let body: String = row.try_get("body")?;
    let value = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        cause: e.to_string(),
    })?;
    Ok(Some(Entry {
        value,
        version: Version(row.try_get("version")?),
        expires_at: row.try_get("expires_at")?,
    }))
}

async fn sql_put(
    conn: &mut Conn,
    key: &str,
    value: &Value,
    expect: Expect,
    ttl: Duration,
    now: Micros,
) -> Result<Option<Written>, StoreError> {
    let body = value.to_string();
    let expires_at = expiry(now, ttl);
    let (version, changed) = match expect {
        // Inserts, or takes over a row that expired and was not purged yet; a live row (someone
        // else's insert, committed or not) leaves nothing changed.
        Expect::Absent => {
            let version = next_version(None, now);
            let r = mercato_kit::db::query(
                "INSERT INTO kv (name, body, version, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body, version = excluded.version, \
                 expires_at = excluded.expires_at WHERE kv.expires_at <= $5",
            )
            .bind(key)
            .bind(&body)
            .bind(version.0)
            .bind(expires_at)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            (version, r.rows_affected())
        }
        Expect::Version(v) => {
            let version = next_version(Some(v), now);
            let r = mercato_kit::db::query(
                "UPDATE kv SET body = $2, version = $3, expires_at = $4 \
                 WHERE name = $1 AND version = $5 AND expires_at > $6",
            )
            .bind(key)
            .bind(&body)
            .bind(version.0)
            .bind(expires_at)
            .bind(v.0)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            (version, r.rows_affected())
        }
    };
    Ok((changed == 1).then_some(Written {
        version,
        expires_at,
    }))
}

async fn sql_delete(
    conn: &mut Conn,
    key: &str,
    expect: Option<Version>,
    now: Micros,
) -> Result<bool, StoreError> {
    let r = match expect {
        None => {
            mercato_kit::db::query("DELETE FROM kv WHERE name = $1 AND expires_at > $2")
                .bind(key)
                .bind(now)
                .execute(&mut *conn)
                .await?
        }
        Some(v) => {
            mercato_kit::db::query(
                "DELETE FROM kv WHERE name = $1 AND expires_at > $2 AND version = $3",
            )
            .bind(key)
            .bind(now)
            .bind(v.0)
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(r.rows_affected() == 1)
}

async fn sql_purge(conn: &mut Conn, now: Micros) -> Result<u64, StoreError> {
    let r = mercato_kit::db::query("DELETE FROM kv WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected())
}

#[async_trait::async_trait]
impl KvStore for SqlKv {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut conn = self.db.reader().acquire().await?;
        sql_get(&mut conn, key, (self.clock)()).await
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        expect: Expect,
        ttl: Duration,
    ) -> Result<Option<Written>, StoreError> {
        let mut conn = self.db.writer().acquire().await?;
        sql_put(&mut conn, key, value, expect, ttl, (self.clock)()).await
    }

    async fn delete(&self, key: &str, expect: Option<Version>) -> Result<bool, StoreError> {
        let mut conn = self.db.writer().acquire().await?;
        sql_delete(&mut conn, key, expect, (self.clock)()).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut conn = self.db.writer().acquire().await?;
        sql_purge(&mut conn, (self.clock)()).await
    }

    fn within<'a>(&'a self, tx: &'a mut Tx) -> Box<dyn KvStore + 'a> {
        Box::new(TxKv {
            clock: self.clock.clone(),
            tx: Mutex::new(tx),
        })
    }
}

/// [`SqlKv`] inside a transaction: reads see the transaction's own writes, and every write
/// commits (or not) with it.
struct TxKv<'a> {
    clock: Clock,
    // The trait takes `&self`; one operation at a time uses the transaction.
    tx: Mutex<&'a mut Tx>,
}

#[async_trait::async_trait]
impl KvStore for TxKv<'_> {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut tx = self.tx.lock().await;
        sql_get(&mut tx, key, (self.clock)()).await
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        expect: Expect,
        ttl: Duration,
    ) -> Result<Option<Written>, StoreError> {
        let mut tx = self.tx.lock().await;
        sql_put(&mut tx, key, value, expect, ttl, (self.clock)()).await
    }

    async fn delete(&self, key: &str, expect: Option<Version>) -> Result<bool, StoreError> {
        let mut tx = self.tx.lock().await;
        sql_delete(&mut tx, key, expect, (self.clock)()).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut tx = self.tx.lock().await;
        sql_purge(&mut tx, (self.clock)()).await
    }

    fn within<'b>(&'b self, tx: &'b mut Tx) -> Box<dyn KvStore + 'b> {
        Box::new(TxKv {
            clock: self.clock.clone(),
            tx: Mutex::new(tx),
        })
    }
}

/// How often expired keys are deleted for good. Reads never see them anyway, so this only
/// bounds the space they take; no deadline depends on it.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Deletes expired keys every [`PURGE_EVERY`] until `stop`.
pub async fn purge_task(store: Arc<dyn KvStore>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PURGE_EVERY) => {
                match store.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "expired cart keys purged"),
                    Err(e) => tracing::warn!(error = %e, "purging expired cart keys failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_never_repeat_and_always_grow() {
        assert_eq!(next_version(None, 0), Version(1));
        assert_eq!(next_version(Some(Version(5)), 3), Version(6));
        assert_eq!(next_version(Some(Version(5)), 1_000), Version(1_000));
        // Written again after a delete: above what the key had before.
        assert!(next_version(None, 2_000).0 > next_version(Some(Version(1_000)), 1_500).0);
        assert_eq!(expiry(10, Duration::from_secs(1)), 1_000_010);
        assert_eq!(expiry(i64::MAX - 1, Duration::from_secs(1)), i64::MAX);
    }
}
