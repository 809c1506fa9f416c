//! The auth service (port 8081): accounts, passwords (argon2id), roles, and the RS256 key pair
//! that signs every access token in Mercato. Other services verify tokens themselves against
//! its JWKS; they never call it per request.
//!
//! Rooms: `domain` (rules), `store` (SQL), `service` (use cases), `http` (routes), `keys`.

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod domain;
pub mod http;
pub mod keys;
pub mod service;
pub mod store;

use mercato_kit::auth::Verifier;
use mercato_kit::config::{CommonConfig, Env, Secret};
use mercato_kit::db::{DatabaseUrl, Db, Migrations};
use mercato_kit::health::DbCheck;
use mercato_kit::http::{HttpSettings, Service};
use mercato_kit::metrics::{sample_every, Metrics, Probe, StorageProbe, SAMPLE_EVERY};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    pub port: u16,
    pub database_url: DatabaseUrl,
    pub key_file: PathBuf,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub login_window: Duration,
    pub max_failures_per_account: usize,
    pub max_failures_per_address: usize,
    pub max_login_delay: Duration,
    pub admin_email: Option<String>,
    pub admin_password: Option<Secret>,
    pub seed_demo: bool,
    pub argon2_memory_kib: u32,
}

impl Config {
    pub fn read(env: &mut Env) -> Config {
        let common = CommonConfig::read(env);
        let key_default = common.data_dir.join("auth-signing-key.pem");
        let admin_email = env.raw("MERCATO_ADMIN_EMAIL").map(str::to_owned);
        let admin_password = env.secret("MERCATO_ADMIN_PASSWORD");
        if admin_email.is_some() != admin_password.is_some() {
            env.reject(
                "MERCATO_ADMIN_EMAIL",
                "MERCATO_ADMIN_EMAIL and MERCATO_ADMIN_PASSWORD to be set together",
            );
        }
        Config {
            port: env.port("MERCATO_AUTH_PORT", 8081),
            database_url: common.database_url_for(env, "auth"),
            key_file: env
                .raw("MERCATO_AUTH_KEY_FILE")
                .map(PathBuf::from)
                .unwrap_or(key_default),
            access_ttl: env.secs("MERCATO_ACCESS_TOKEN_TTL_SECS", 900, 30..=86_400),
            refresh_ttl: env.secs(
                "MERCATO_REFRESH_TOKEN_TTL_SECS",
                30 * 86_400,
                60..=365 * 86_400,
            ),
            login_window: env.secs("MERCATO_LOGIN_WINDOW_SECS", 900, 1..=86_400),
            max_failures_per_account: env.int("MERCATO_LOGIN_MAX_FAILURES", 5, 1..=1000) as usize,
            max_failures_per_address: env.int(
                "MERCATO_LOGIN_MAX_FAILURES_PER_ADDRESS",
                50,
                1..=100_000,
            ) as usize,
            max_login_delay: env.secs("MERCATO_LOGIN_MAX_DELAY_SECS", 30, 1..=3600),
            admin_email,
            admin_password,
            seed_demo: env.flag("MERCATO_SEED_DEMO", false),
            argon2_memory_kib: env.int("MERCATO_ARGON2_MEMORY_KIB", 19_456, 1024..=1_048_576)
                as u32,
            common,
        }
    }
}

/// The auth service's migrations; the kit's are merged in by [`Db::connect`].
pub fn migrations() -> Migrations {
    mercato_kit::service_migrations!()
}

/// Opens (and migrates) the auth service's database.
pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<Db> {
    Db::connect(database_url, "auth", pool_size, &migrations()).await
}

/// Builds the auth service: database, signing key, bootstrap accounts, routes.
pub async fn build(config: &Config) -> anyhow::Result<Service> {
    let c = &config.common;
    let db = connect(config.database_url.as_str(), c.db_pool_size).await?;
    let key_file = config.key_file.clone();
    let key =
        tokio::task::spawn_blocking(move || keys::SigningKey::load_or_create(&key_file)).await??;
    let decoding_keys = key.decoding_keys();
    let auth = service::Auth::new(
        db.clone(),
        key,
        service::Settings {
            issuer: c.jwt_issuer.clone(),
            audience: c.jwt_audience.clone(),
            access_ttl: config.access_ttl,
            refresh_ttl: config.refresh_ttl,
            login_window: config.login_window,
            max_failures_per_account: config.max_failures_per_account,
            max_failures_per_address: config.max_failures_per_address,
            max_login_delay: config.max_login_delay,
            service_secret: c.service_secret.clone(),
            argon2_memory_kib: config.argon2_memory_kib,
        },
    )?;
    let verifier = Verifier::local(decoding_keys, &c.jwt_issuer, &c.jwt_audience)
        .with_revocations(auth.revocations.clone());
    if let (Some(email), Some(password)) = (&config.admin_email, &config.admin_password) {
        auth.ensure_account(
            mercato_kit::ids::UserId::new(),
            email,
            password.expose(),
            "Administrator",
            mercato_kit::auth::Role::Admin,
            true,
        )
        .await?;
        tracing::info!(%email, "admin account bootstrapped");
    }
    if config.seed_demo {
        for a in mercato_kit::demo::ACCOUNTS {
            auth.ensure_account(a.id, a.email, a.password, a.name, a.role, false)
                .await?;
        }
    }
    let purge_auth = auth.clone();
    let (router, openapi) = http::router(http::AppState {
        auth,
        verifier: verifier.clone(),
    });
    let purge_db = db.clone();
    let metrics = Metrics::new("auth");
    let probes: Vec<Arc<dyn Probe>> = vec![StorageProbe::new(&metrics, db.clone(), None)];
    Ok(Service::new(
        "auth",
        router,
        openapi,
        metrics,
        vec![Arc::new(DbCheck(db.clone()))],
        &HttpSettings::from(c),
    )
    .with_admin(verifier)
    .with_task(move |stop| sample_every(probes, SAMPLE_EVERY, stop))
    .with_task(move |stop| mercato_kit::idempotency::purge_task(purge_db, stop))
    .with_task(move |stop| service::purge_revocations_task(purge_auth, stop))
    .closes(db))
}
