//! Configuration from `MERCATO_*` environment variables (and the flags that override them),
//! read into one typed struct per service and checked at start.
//!
//! Every variable is read through [`Env`], which collects every bad value instead of stopping at
//! the first, and names the variable and what it expects, so an operator fixes them all at once.

use crate::db::DatabaseUrl;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that must not be printed: `secrecy`'s string, which also wipes its
/// memory when dropped, with the `Debug` our configuration dumps show (`"****"`).
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(secrecy::SecretString::from(s.into()))
    }
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"****\"")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadVar {
    pub var: String,
    pub got: String,
    pub expected: String,
}

/// Every bad variable found while reading the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<BadVar>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for b in &self.0 {
            writeln!(f, "  {}={:?}: expected {}", b.var, b.got, b.expected)?;
        }
        Ok(())
    }
}

/// A snapshot of the environment plus overrides from command-line flags.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    errors: Vec<BadVar>,
}

impl Env {
    /// The process environment, `MERCATO_*` and `CHAOS_MODE` only.
    pub fn from_process() -> Self {
        Self::from_pairs(
            std::env::vars().filter(|(k, _)| k.starts_with("MERCATO_") || k == "CHAOS_MODE"),
        )
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            errors: Vec::new(),
        }
    }

    /// Sets a variable, as a flag given on the command line does.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.vars.insert(name.to_owned(), value.into());
    }

    pub fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }

    /// An optional value parsed with `FromStr`; a present but bad value is recorded.
    pub fn opt<T: FromStr>(&mut self, name: &str, expected: &str) -> Option<T> {
        let raw = self.raw(name)?.to_owned();
        match raw.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.errors.push(BadVar {
                    var: name.into(),
                    got: raw,
                    expected: expected.into(),
                });
                None
            }
        }
    }

    pub fn get<T: FromStr>(&mut self, name: &str, default: T, expected: &str) -> T {
        self.opt(name, expected).unwrap_or(default)
    }

    /// A whole number within `range`.
    pub fn int(&mut self, name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        match self.opt::<u64>(name, &expected) {
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                self.errors.push(BadVar {
                    var: name.into(),
                    got: v.to_string(),
                    expected,
                });
                default
            }
            None => default,
        }
    }

    pub fn port(&mut self, name: &str, default: u16) -> u16 {
        self.int(name, default as u64, 0..=65535) as u16
    }

    pub fn secs(
        &mut self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Duration {
        Duration::from_secs(self.int(name, default, range))
    }

    pub fn flag(&mut self, name: &str, default: bool) -> bool {
        let Some(raw) = self.raw(name).map(|s| s.to_ascii_lowercase()) else {
            return default;
        };
        match raw.as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                self.errors.push(BadVar {
                    var: name.into(),
                    got: raw,
                    expected: "true or false".into(),
                });
                default
            }
        }
    }

    pub fn string(&mut self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or(default).to_owned()
    }

    pub fn path(&mut self, name: &str, default: &str) -> PathBuf {
        PathBuf::from(self.string(name, default))
    }

    pub fn secret(&mut self, name: &str) -> Option<Secret> {
        self.raw(name).map(Secret::new)
    }

    /// A secret that has no default: missing, it is recorded as an error saying what it is
    /// for (`mercato up` generates the embedded ones into the data directory first).
    pub fn required_secret(&mut self, name: &str, what: &str) -> Secret {
        match self.secret(name) {
            Some(s) => s,
            None => {
                self.reject(name, &format!("{what} (required; nothing is assumed)"));
                Secret::new(String::new())
            }
        }
    }

    /// A URL with one of the given schemes.
    pub fn url(&mut self, name: &str, default: Option<&str>, schemes: &[&str]) -> Option<String> {
        let v = self
            .raw(name)
            .map(str::to_owned)
            .or(default.map(str::to_owned))?;
        if schemes
            .iter()
            .any(|s| v.starts_with(&format!("{s}://")) || v.starts_with(&format!("{s}:")))
        {
            Some(v.trim_end_matches('/').to_owned())
        } else {
            self.errors.push(BadVar {
                var: name.into(),
                got: v,
                expected: format!("a URL starting with {}", schemes.join(":// or ") + "://"),
            });
            None
        }
    }

    /// Records a bad value found by a check the reader cannot express.
    pub fn reject(&mut self, name: &str, expected: &str) {
        let got = self.raw(name).unwrap_or_default().to_owned();
        self.errors.push(BadVar {
            var: name.into(),
            got,
            expected: expected.into(),
        });
    }

    /// Takes over the errors `other` recorded that this one does not have yet.
    pub fn absorb_errors(&mut self, other: &Env) {
        for e in &other.errors {
            if !self.errors.contains(e) {
                self.errors.push(e.clone());
            }
        }
    }

    /// Every error recorded so far, or `Ok`.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors.clone()))
        }
    }
}

/// What every service reads the same way. Printed at start: secrets and the database URL's
/// password print masked.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    pub host: String,
    pub data_dir: PathBuf,
    /// `MERCATO_DATABASE_URL`; each service may override it with `MERCATO_<SERVICE>_DATABASE_URL`.
    pub database_url: Option<DatabaseUrl>,
    pub db_pool_size: u32,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    /// `MERCATO_HTTP_HEADER_TIMEOUT_MS`: a request head must arrive within it.
    pub header_timeout: Duration,
    /// `MERCATO_HTTP_IDLE_TIMEOUT_MS`: a kept-alive connection waits this long for its next
    /// request.
    pub idle_timeout: Duration,
    /// `MERCATO_HTTP_BODY_TIMEOUT_MS`: a request body must arrive within it (else 408).
    pub body_timeout: Duration,
    /// `MERCATO_HTTP_MAX_CONNECTIONS`: connections open at once per listener.
    pub max_connections: usize,
    pub auth_url: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub service_secret: Option<Secret>,
    /// `MERCATO_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed (loopback by
    /// default); behind a load balancer or the gateway in a cluster, their network.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `CHAOS_MODE=true`: start with the default chaos profile (5% errors, see `chaos`).
    pub chaos_mode: bool,
    /// `MERCATO_TEST_HOOKS=true`: mounts the routes only tests use (an admin can tell a
    /// consumer to fail an event type, to make a dead letter on purpose). Off unless set.
    pub test_hooks: bool,
}

/// Loopback only: on one machine the gateway forwards from there.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128";

/// `MERCATO_TRUSTED_PROXIES`: comma-separated networks (`10.0.0.0/8`) or addresses.
fn trusted_proxies(env: &mut Env) -> Vec<ipnet::IpNet> {
    let raw = env.string("MERCATO_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES);
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item
            .parse::<ipnet::IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(net) => out.push(net),
            Err(_) => {
                env.reject(
                    "MERCATO_TRUSTED_PROXIES",
                    "comma-separated networks (10.0.0.0/8) or addresses",
                );
                break;
            }
        }
    }
    out
}

impl CommonConfig {
    pub fn read(env: &mut Env) -> Self {
        let common = CommonConfig {
            host: env.string("MERCATO_HOST", "127.0.0.1"),
            data_dir: env.path("MERCATO_DATA_DIR", "./mercato-data"),
            database_url: env
                .url(
                    "MERCATO_DATABASE_URL",
                    None,
                    &["sqlite", "postgres", "postgresql"],
                )
                .map(DatabaseUrl::new),
            db_pool_size: env.int("MERCATO_DB_POOL_SIZE", 8, 1..=200) as u32,
            request_timeout: Duration::from_millis(env.int(
                "MERCATO_REQUEST_TIMEOUT_MS",
                15_000,
                10..=600_000,
            )),
            body_limit_bytes: env.int(
                "MERCATO_BODY_LIMIT_BYTES",
                256 * 1024,
                1024..=64 * 1024 * 1024,
            ) as usize,
            header_timeout: Duration::from_millis(env.int(
                "MERCATO_HTTP_HEADER_TIMEOUT_MS",
                10_000,
                10..=600_000,
            )),
            idle_timeout: Duration::from_millis(env.int(
                "MERCATO_HTTP_IDLE_TIMEOUT_MS",
                75_000,
                10..=3_600_000,
            )),
            body_timeout: Duration::from_millis(env.int(
                "MERCATO_HTTP_BODY_TIMEOUT_MS",
                10_000,
                10..=600_000,
            )),
            max_connections: env.int("MERCATO_HTTP_MAX_CONNECTIONS", 1024, 1..=1_000_000) as usize,
            auth_url: env
                .url(
                    "MERCATO_AUTH_URL",
                    Some("http://127.0.0.1:8081"),
                    &["http", "https"],
                )
                .unwrap_or_default(),
            jwt_issuer: env.string("MERCATO_JWT_ISSUER", "mercato-auth"),
            jwt_audience: env.string("MERCATO_JWT_AUDIENCE", "mercato"),
            service_secret: env.secret("MERCATO_SERVICE_SECRET"),
            trusted_proxies: trusted_proxies(env),
            chaos_mode: env.flag("CHAOS_MODE", false),
            test_hooks: env.flag("MERCATO_TEST_HOOKS", false),
        };
        // Read where each SQLite file is opened (`db::sqlite`, once per process); only checked
        // here, so a bad value stops the start like any other instead of falling back unseen.
        // The defaults given are not used.
        env.int(
            crate::db::sqlite::MMAP_BYTES_VAR,
            0,
            0..=crate::db::sqlite::MMAP_BYTES_MAX,
        );
        env.int(
            crate::db::sqlite::WAL_RESTART_PAGES_VAR,
            0,
            0..=i64::MAX as u64,
        );
        common
    }

    /// The database of one service: its own override, the shared URL, or a SQLite file of its
    /// own in the data directory.
    pub fn database_url_for(&self, env: &mut Env, service: &str) -> DatabaseUrl {
        let var = format!("MERCATO_{}_DATABASE_URL", service.to_ascii_uppercase());
        env.url(&var, None, &["sqlite", "postgres", "postgresql"])
            .map(DatabaseUrl::new)
            .or_else(|| self.database_url.clone())
            .unwrap_or_else(|| {
                DatabaseUrl::new(format!(
                    "sqlite://{}?mode=rwc",
                    self.data_dir.join(format!("{service}.db")).display()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_variable_is_named_with_what_it_expects() {
        let mut env = Env::from_pairs([
            ("MERCATO_AUTH_PORT", "eighty"),
            ("MERCATO_REQUEST_TIMEOUT_MS", "0"),
            ("MERCATO_AUTH_URL", "ftp://x"),
            ("MERCATO_FLAG", "maybe"),
        ]);
        env.port("MERCATO_AUTH_PORT", 8081);
        let _ = CommonConfig::read(&mut env);
        env.flag("MERCATO_FLAG", false);
        let err = env.check().unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(
            text.contains("MERCATO_AUTH_PORT=\"eighty\": expected a whole number from 0 to 65535"),
            "{text}"
        );
        assert!(text.contains("MERCATO_REQUEST_TIMEOUT_MS"), "{text}");
        assert!(text.contains("MERCATO_AUTH_URL"), "{text}");
        assert!(
            text.contains("MERCATO_FLAG=\"maybe\": expected true or false"),
            "{text}"
        );
    }

    #[test]
    fn the_sqlite_settings_are_checked_at_start() {
        let mut env = Env::from_pairs([
            ("MERCATO_SQLITE_MMAP_BYTES", "128MiB"),
            ("MERCATO_SQLITE_WAL_RESTART_PAGES", "-1"),
        ]);
        let _ = CommonConfig::read(&mut env);
        let text = env.check().unwrap_err().to_string();
        assert!(
            text.contains("MERCATO_SQLITE_MMAP_BYTES=\"128MiB\""),
            "{text}"
        );
        assert!(
            text.contains("MERCATO_SQLITE_WAL_RESTART_PAGES=\"-1\""),
            "{text}"
        );
        let mut env = Env::from_pairs([
            ("MERCATO_SQLITE_MMAP_BYTES", "134217728"),
            ("MERCATO_SQLITE_WAL_RESTART_PAGES", "0"),
        ]);
        let _ = CommonConfig::read(&mut env);
        env.check().expect("whole numbers in range are taken");
    }

    #[test]
    fn defaults_and_overrides() {
        let mut env = Env::from_pairs([("MERCATO_DATA_DIR", "/tmp/x")]);
        let c = CommonConfig::read(&mut env);
        assert_eq!(
            c.database_url_for(&mut env, "auth").as_str(),
            "sqlite:///tmp/x/auth.db?mode=rwc"
        );
        env.set("MERCATO_AUTH_DATABASE_URL", "postgres://localhost/auth");
        assert_eq!(
            c.database_url_for(&mut env, "auth").as_str(),
            "postgres://localhost/auth"
        );
        assert!(env.check().is_ok());
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"****\"");
        let mut env = Env::from_pairs([("MERCATO_DATABASE_URL", "postgres://u:hunter2@h/db")]);
        let c = CommonConfig::read(&mut env);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
