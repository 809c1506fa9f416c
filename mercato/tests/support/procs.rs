//! Services as separate `mercato serve` processes, for the tests that kill one with SIGKILL
//! (`replicas.rs`, `chaos_distributed.rs`): a process is a real crash boundary, a task in the
//! test's runtime is not.
//!
//! Included by path (`#[path = "support/procs.rs"] mod procs;`) by the tests that need it, so
//! the in-process suites do not carry it.

#![allow(dead_code)]

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What every process of one test shares: its database, bus (NATS, or Kafka with
/// `MERCATO_TEST_KAFKA_BROKERS`) and prefix, service and webhook
/// secrets, signing key, admin, cheap password hashing, no rate limits, small pools, the
/// request timeout given (a request that died with its process frees its idempotency key that
/// much sooner), and Redis under the same prefix when `MERCATO_TEST_REDIS_URL` is set. Also
/// returns the guard that deletes those Redis keys when the test ends.
pub fn shared_env(
    db_url: &str,
    nats: &str,
    prefix: &str,
    dir: &Path,
    request_timeout_ms: u64,
) -> (
    Vec<(String, String)>,
    Option<mercato_kit::testing::RedisKeys>,
) {
    let mut env: Vec<(String, String)> = [
        ("MERCATO_DATABASE_URL", db_url.to_owned()),
        ("MERCATO_SERVICE_SECRET", format!("{prefix}-secret")),
        (
            "MERCATO_PSP_WEBHOOK_SECRET",
            format!("{prefix}-webhook-secret"),
        ),
        (
            "MERCATO_AUTH_KEY_FILE",
            dir.join("auth-key.pem").display().to_string(),
        ),
        ("MERCATO_ADMIN_EMAIL", super::support::ADMIN_EMAIL.into()),
        (
            "MERCATO_ADMIN_PASSWORD",
            super::support::ADMIN_PASSWORD.into(),
        ),
        ("MERCATO_ARGON2_MEMORY_KIB", "4096".into()),
        ("MERCATO_REQUEST_TIMEOUT_MS", request_timeout_ms.to_string()),
        ("MERCATO_RATE_LIMIT_IP_PER_SEC", "0".into()),
        ("MERCATO_RATE_LIMIT_USER_PER_SEC", "0".into()),
        ("MERCATO_DB_POOL_SIZE", "4".into()),
        // Two gateways on one machine: each its own operator port.
        ("MERCATO_GATEWAY_OPS_PORT", "0".into()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec();
    // The bus: Kafka when the run names brokers (.ci/kafka), else NATS.
    match std::env::var("MERCATO_TEST_KAFKA_BROKERS") {
        Ok(brokers) => {
            env.push(("MERCATO_KAFKA_BROKERS".into(), brokers));
            env.push(("MERCATO_KAFKA_PREFIX".into(), prefix.to_owned()));
            // librdkafka's own debug log, for reading a failure (with MERCATO_TEST_LOG_DIR).
            if let Ok(debug) = std::env::var("MERCATO_KAFKA_DEBUG") {
                env.push(("MERCATO_KAFKA_DEBUG".into(), debug));
            }
        }
        Err(_) => {
            env.push(("MERCATO_NATS_URL".into(), nats.to_owned()));
            env.push(("MERCATO_NATS_PREFIX".into(), prefix.to_owned()));
        }
    }
    let redis_keys = std::env::var("MERCATO_TEST_REDIS_URL").ok().map(|redis| {
        env.push(("MERCATO_REDIS_URL".into(), redis.clone()));
        env.push(("MERCATO_REDIS_PREFIX".into(), format!("{prefix}:")));
        mercato_kit::testing::RedisKeys::new(&redis, format!("{prefix}:"))
    });
    (env, redis_keys)
}

/// The shop's own services, each run as processes of its own: every service `mercato serve`
/// knows but psp-mock, which stands in for the external card processor (one, never
/// replicated). In start order, the gateway last.
pub fn shop_services() -> impl Iterator<Item = &'static str> {
    mercato::stack::SERVICES
        .iter()
        .copied()
        .filter(|s| *s != "psp-mock")
}

/// A port nobody listens on right now (the process started next binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `MERCATO_<SERVICE>_PORT`, the variable `mercato serve <service>` listens on.
pub fn port_var(service: &str) -> String {
    format!(
        "MERCATO_{}_PORT",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// A running `mercato serve` process, killed when dropped.
pub struct Proc {
    /// `service#replica`.
    pub name: String,
    service: String,
    port: u16,
    env: Vec<(String, String)>,
    data: PathBuf,
    child: Child,
}

impl Proc {
    /// SIGKILL (the `kill` of std is SIGKILL on Unix): no draining, no goodbyes.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the process again as it was first started: same port, environment and data
    /// directory (after [`Proc::kill`]).
    pub fn restart(&mut self) {
        self.child = spawn(&self.service, self.port, &self.env, &self.data);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each process's log goes nowhere, unless `MERCATO_TEST_LOG_DIR` names a folder: then each
/// writes its warnings and errors (or what `MERCATO_TEST_LOG` asks for, a `MERCATO_LOG`
/// filter) to `<service>-<port>.log` there, to read after a failure.
fn spawn(service: &str, port: u16, env: &[(String, String)], data: &Path) -> Child {
    let (level, log) = match std::env::var("MERCATO_TEST_LOG_DIR") {
        Ok(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            let file = std::fs::File::create(Path::new(&dir).join(format!("{service}-{port}.log")))
                .unwrap();
            let level = std::env::var("MERCATO_TEST_LOG").unwrap_or_else(|_| "warn".into());
            (level, Stdio::from(file))
        }
        Err(_) => ("error".to_owned(), Stdio::null()),
    };
    Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args(["serve", service])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MERCATO_DATA_DIR", data)
        .env("MERCATO_LOG", &level)
        .env("MERCATO_LOG_FORMAT", "json")
        .env(port_var(service), port.to_string())
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Starts replica `replica` of `service` on `port` with `env` (and nothing else of the test's
/// environment), its data directory under `dir`.
pub fn serve(
    service: &str,
    replica: usize,
    port: u16,
    env: &[(String, String)],
    dir: &Path,
) -> Proc {
    let data = dir.join(format!("{service}-{replica}"));
    std::fs::create_dir_all(&data).unwrap();
    let child = spawn(service, port, env, &data);
    Proc {
        name: format!("{service}#{replica}"),
        service: service.to_owned(),
        port,
        env: env.to_vec(),
        data,
        child,
    }
}

pub use super::support::ready;

/// Creates a product through the gateway `gw` as `token` (a seller or admin) and, once
/// inventory has heard of it, puts `on_hand` units in stock; returns its id.
pub async fn stocked_product(
    http: &Client,
    gw: &str,
    token: &str,
    sku: &str,
    price_cents: i64,
    on_hand: i64,
) -> String {
    // Right after a cold start a service may not have read the auth service's revocation list
    // yet (its first read can come before the gateway it reads through is up), and refuses a
    // seller's or admin's token with 503 + Retry-After until it has (README, "Tokens"). A
    // careful client asks again, with the same Idempotency-Key.
    let key = uuid::Uuid::new_v4().to_string();
    let res = super::support::eventually(Duration::from_secs(30), || async {
        let res = http
            .post(format!("{gw}/api/v1/products"))
            .bearer_auth(token)
            .header("Idempotency-Key", &key)
            .json(&json!({"sku": sku, "name": format!("Kettle {sku}"), "category": "kitchen", "price_cents": price_cents}))
            .send()
            .await
            .unwrap();
        (res.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(res)
    })
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The product reaches inventory through an event.
    super::support::eventually(Duration::from_secs(30), || async {
        let r = http
            .put(format!("{gw}/api/v1/inventory/{id}"))
            .bearer_auth(token)
            .json(&json!({"on_hand": on_hand}))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    id
}

/// An access token for `email`.
pub async fn login(http: &Client, gw: &str, email: &str, password: &str) -> String {
    let v: Value = http
        .post(format!("{gw}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login {email}: {v}"))
        .to_owned()
}
