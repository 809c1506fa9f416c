//! Redis (`MERCATO_REDIS_URL`) for the services that keep something there when scaled out:
//! the cart's carts and the gateway's rate-limit buckets. Configuration, a connection that
//! survives Redis restarts, and the health check.

use crate::config::Env;
use crate::db::redact;
use crate::health::HealthCheck;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Where Redis is and which part of it is Mercato's.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `MERCATO_REDIS_URL`: `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// `MERCATO_REDIS_PREFIX`: put before every key, `mercato:` by default.
    pub prefix: String,
}

impl RedisConfig {
    /// `None` when `MERCATO_REDIS_URL` is not set; bad values are recorded in `env`.
    pub fn read(env: &mut Env) -> Option<RedisConfig> {
        let url = env.url("MERCATO_REDIS_URL", None, &["redis", "rediss"])?;
        // No TLS in this build: refused here rather than when the first request comes.
        if url.starts_with("rediss:") || ::redis::Client::open(url.as_str()).is_err() {
            env.reject(
                "MERCATO_REDIS_URL",
                "redis://[user:password@]host[:port][/db] (rediss:// needs a build with TLS)",
            );
            return None;
        }
        let prefix = env.string("MERCATO_REDIS_PREFIX", "mercato:");
        if prefix.len() > 100 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            env.reject(
                "MERCATO_REDIS_PREFIX",
                "at most 100 characters, no spaces or control characters",
            );
        }
        Some(RedisConfig { url, prefix })
    }
}

/// Printed at start: the password masked.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A connection made on first use and remade whenever it breaks, so Redis being down at start
/// or later fails the requests that need it, never the service. Each command has a short
/// deadline of its own; a reconnection goes on while requests fail fast or fall back.
pub fn connect(url: &str) -> Result<ConnectionManager, ::redis::RedisError> {
    let client = ::redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        // A request waits for at most a short series of attempts; the next one starts another.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// PING: Ok when Redis answers.
pub async fn ping(conn: &ConnectionManager) -> Result<(), ::redis::RedisError> {
    ::redis::cmd("PING")
        .query_async::<()>(&mut conn.clone())
        .await
}

/// Redis as a dependency in the health routes. `required`: whether readiness waits for it (the
/// cart cannot work without it; the gateway's limits fall back to memory).
pub struct RedisCheck {
    pub conn: ConnectionManager,
    pub required: bool,
}

#[async_trait::async_trait]
impl HealthCheck for RedisCheck {
    fn name(&self) -> &str {
        "redis"
    }

    async fn check(&self) -> Result<(), String> {
        ping(&self.conn).await.map_err(|e| e.to_string())
    }

    fn required(&self) -> bool {
        self.required
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_optional_checked_and_masked() {
        let mut env = Env::from_pairs::<&str, &str>([]);
        assert_eq!(RedisConfig::read(&mut env), None);
        assert!(env.check().is_ok());

        let mut env = Env::from_pairs([
            ("MERCATO_REDIS_URL", "redis://:s3cret@redis:6379/2"),
            ("MERCATO_REDIS_PREFIX", "shop1:"),
        ]);
        let c = RedisConfig::read(&mut env).unwrap();
        assert!(env.check().is_ok());
        assert_eq!(c.prefix, "shop1:");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");

        for bad in ["rediss://redis:6379", "http://redis", "redis://"] {
            let mut env = Env::from_pairs([("MERCATO_REDIS_URL", bad)]);
            assert_eq!(RedisConfig::read(&mut env), None, "{bad}");
            assert!(
                env.check()
                    .unwrap_err()
                    .to_string()
                    .contains("MERCATO_REDIS_URL"),
                "{bad}"
            );
        }
        let mut env = Env::from_pairs([
            ("MERCATO_REDIS_URL", "redis://127.0.0.1"),
            ("MERCATO_REDIS_PREFIX", "two words"),
        ]);
        RedisConfig::read(&mut env);
        assert!(env
            .check()
            .unwrap_err()
            .to_string()
            .contains("MERCATO_REDIS_PREFIX"));
    }
}
