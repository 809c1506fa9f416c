//! Carts on Redis (`MERCATO_REDIS_URL`): [`RedisKv`], the same [`KvStore`] as the SQL one, for
//! when the service is scaled out (the connection and health check are the kit's).
//!
//! Layout, under the configured prefix (`MERCATO_REDIS_PREFIX`, `mercato:` by default, so
//! several shops or test runs can share one Redis):
//! - `<prefix>kv:<key>`: a hash, `v` (the value as JSON), `ver` (its version) and `exp` (when
//!   it expires, Unix milliseconds). The Redis key expires at that moment too (PEXPIREAT), so an
//!   expired key is gone for every read and write at once, and nothing is left to purge.
//! - `<prefix>kv-version`: the counter versions are drawn from (below).
//!
//! Compare-and-set and compare-and-delete are Lua scripts (EVALSHA, loaded on first use): the
//! comparison and the write are one atomic step on the server. Times come from the server's
//! clock (`TIME`), so replicas whose clocks differ agree on when a cart expires.
//!
//! Versions are drawn from one counter shared by every key, and never below the server's clock
//! in microseconds: `max(INCR counter, now)`. So a key never gets a version it had before, not
//! after it was deleted or expired either: nothing about the old key has to be remembered,
//! the counter only grows. A counter per key would have to outlive its key, which leaves one
//! key behind for every cart and checkout ever made. The shared counter may itself expire, a
//! day after the last write: the next version then starts from the clock, which is above every
//! version drawn before (the counter cannot run ahead of the clock: that would take more than a
//! million writes a second). The two keys one script touches make this a layout for one Redis
//! (with replicas or Sentinel), not Redis Cluster.
//!
//! Writes here are not part of the SQL transaction [`KvStore::within`] is given; see
//! `service` for why the use cases need no such transaction.

use crate::store::{Entry, Expect, KvStore, StoreError, Version, Written};
use mercato_kit::db::Tx;
use mercato_kit::time::Micros;
use redis::aio::ConnectionManager;
use redis::Script;
use serde_json::Value;
use std::sync::LazyLock;
use std::time::Duration;

/// How long the version counter outlives the last write (see the module docs).
const COUNTER_TTL: Duration = Duration::from_secs(24 * 3600);

/// KEYS: the key, the version counter. ARGV: the expected version ('' for absent), the value,
/// the time to live in ms, the counter's time to live in ms. Returns {version, expires_ms}, or
/// nil when the key is not as expected.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local found = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] == '' then
  if found then return false end
elseif found ~= ARGV[1] then
  return false
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local version = redis.call('INCR', KEYS[2])
if version < now_us then
  version = now_us
  redis.call('SET', KEYS[2], version)
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local expires_ms = math.floor(now_us / 1000) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'ver', version, 'exp', expires_ms)
-- Redis drops a key once its time is past; one ms earlier makes it gone at expires_ms itself,
-- as the SQL store's keys are.
redis.call('PEXPIREAT', KEYS[1], expires_ms - 1)
return {version, expires_ms}
",
    )
});

/// KEYS: the key. ARGV: the expected version ('' for any). Returns how many keys went (0 or 1).
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'ver') ~= ARGV[1] then
  return 0
end
return redis.call('DEL', KEYS[1])
",
    )
});

/// [`KvStore`] on Redis.
#[derive(Clone)]
pub struct RedisKv {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisKv {
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisKv {
        RedisKv {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}kv:{key}", self.prefix)
    }

    fn counter(&self) -> String {
        format!("{}kv-version", self.prefix)
    }
}

fn expect_arg(expect: Option<Version>) -> String {
    expect.map(|v| v.0.to_string()).unwrap_or_default()
}

fn ms(d: Duration) -> u64 {
    // Rounded up: a time to live never shrinks to nothing.
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn corrupt(key: &str, cause: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        cause: cause.to_string(),
    }
}

#[async_trait::async_trait]
impl KvStore for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut conn = self.conn.clone();
        let (body, version, expires_ms): (Option<String>, Option<i64>, Option<Micros>) =
            redis::cmd("HMGET")
                .arg(self.key(key))
                .arg(&["v", "ver", "exp"])
                .query_async(&mut conn)
                .await?;
        let (body, version, expires_ms) = match (body, version, expires_ms) {
            (None, None, None) => return Ok(None),
            (Some(b), Some(v), Some(e)) => (b, v, e),
            _ => return Err(corrupt(key, "a field of the stored hash is missing")),
        };
        let value = serde_json::from_str(&body).map_err(|e| corrupt(key, e))?;
        Ok(Some(Entry {
            value,
            version: Version(version),
            expires_at: expires_ms.saturating_mul(1000),
        }))
    }

    async fn put(
        &self,
        key: &str,
        value: &Value,
        expect: Expect,
        ttl: Duration,
    ) -> Result<Option<Written>, StoreError> {
        let expected = match expect {
            Expect::Absent => None,
            Expect::Version(v) => Some(v),
        };
        let mut conn = self.conn.clone();
        let written: Option<(i64, i64)> = PUT
            .key(self.key(key))
            .key(self.counter())
            .arg(expect_arg(expected))
            .arg(value.to_string())
            .arg(ms(ttl))
            .arg(ms(COUNTER_TTL))
            .invoke_async(&mut conn)
            .await?;
        Ok(written.map(|(version, expires_ms)| Written {
            version: Version(version),
            expires_at: expires_ms.saturating_mul(1000),
        }))
    }

    async fn delete(&self, key: &str, expect: Option<Version>) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let deleted: i64 = DELETE
            .key(self.key(key))
            .arg(expect_arg(expect))
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }

    // Nothing to purge: Redis drops expired keys itself.

    fn within<'a>(&'a self, _tx: &'a mut Tx) -> Box<dyn KvStore + 'a> {
        Box::new(self.clone())
    }
}
