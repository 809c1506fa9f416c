//! What needs the `testing` feature (RSA keys, temporary files): tokens, one-shot HTTP calls,
//! Redis keys removed after a test, a fresh database per test.

use crate::auth::{Claims, Role, Verifier};
use crate::db::{Db, Migrations};
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;
use tower::ServiceExt;

pub const KID: &str = "test-key";
pub const ISSUER: &str = "test-issuer";
pub const AUDIENCE: &str = "test-audience";

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// One key pair for the whole test binary: generating RSA keys is slow.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key");
        let private_pem = private.to_pkcs1_pem(LineEnding::LF).expect("PEM");
        let public_pem = private
            .to_public_key()
            .to_pkcs1_pem(LineEnding::LF)
            .expect("PEM");
        Keys {
            encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("encoding key"),
            decoding: DecodingKey::from_rsa_pem(public_pem.as_bytes()).expect("decoding key"),
        }
    })
}

/// A verifier that accepts the tokens of [`token`].
pub fn verifier() -> Verifier {
    Verifier::local(
        HashMap::from([(KID.to_owned(), keys().decoding.clone())]),
        ISSUER,
        AUDIENCE,
    )
}

/// A token for `subject` (a user id, or `service:<name>`) with `role`, valid for ten minutes.
pub fn token(subject: &str, role: Role) -> String {
    let now = crate::time::now_us() / 1_000_000;
    let claims = Claims {
        sub: subject.to_owned(),
        role,
        email: None,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        ver: 0,
        sid: None,
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    jsonwebtoken::encode(&header, &claims, &keys().encoding).expect("a signed token")
}

/// What a router answered.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The fields a validation problem names.
    pub fn fields(&self) -> Vec<&str> {
        self.body["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default()
    }

    /// Asserts this is a problem document with `status` and `code`.
    pub fn problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            crate::problem::PROBLEM_JSON
        );
    }
}

/// Sends one request through `router`: optional Bearer token, Idempotency-Key and JSON body.
pub async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    idempotency_key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("a request");
    let res = router.clone().oneshot(req).await.expect("an answer");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
        .await
        .expect("a body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Deletes every Redis key under a test's own prefix when the test ends, passed or failed.
pub struct RedisKeys {
    pub client: ::redis::Client,
    pub prefix: String,
}

impl RedisKeys {
    pub fn new(url: &str, prefix: impl Into<String>) -> RedisKeys {
        RedisKeys {
            client: ::redis::Client::open(url).expect("a Redis URL"),
            prefix: prefix.into(),
        }
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(mut conn) = self.client.get_connection() else {
            return;
        };
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): ::redis::RedisResult<(u64, Vec<String>)> = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: ::redis::RedisResult<()> = ::redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// A database for one test: a fresh SQLite file by default, or a schema of its own on the
/// PostgreSQL server `MERCATO_TEST_DATABASE_URL` names, so the same tests run on both engines.
/// Opening it again gives another process's view of the same data (a replica). Schemas are left
/// for CI's clean-up (`*_test_*`): dropping them while a failed test's pools live would hang.
pub struct TestDb {
    url: String,
    schema: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh database for `service`'s tests.
    pub fn new(service: &str) -> TestDb {
        let schema = format!("{service}_test_{}", uuid::Uuid::new_v4().simple());
        match std::env::var("MERCATO_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => TestDb {
                url,
                schema,
                _dir: None,
            },
            _ => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                TestDb {
                    url: format!("sqlite://{}/{service}.db?mode=rwc", dir.path().display()),
                    schema,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// Connects (and migrates) with a pool of `pool_size`.
    pub async fn open(&self, pool_size: u32, migrations: &Migrations) -> Db {
        Db::connect(&self.url, &self.schema, pool_size, migrations)
            .await
            .expect("the test database opens")
    }

    /// Whether this is PostgreSQL (several processes may share it) rather than SQLite.
    pub fn on_postgres(&self) -> bool {
        self._dir.is_none()
    }
}

/// A fresh PostgreSQL database on the server `admin_url` names, for a test that runs whole
/// services (each in its own schema of it): `(admin_url, its URL)`. [`drop_pg_database`] removes
/// it; CI's clean-up removes what a failed test left (`mercato_t_*`).
#[expect(
    clippy::disallowed_methods,
    reason = "PostgreSQL administration: there is no SQLite side"
)]
pub async fn fresh_pg_database(admin_url: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("mercato_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("MERCATO_TEST_DATABASE_URL reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    (admin_url.to_owned(), format!("{base}/{name}"))
}

/// Drops a database [`fresh_pg_database`] made, with whatever connections still use it.
#[expect(
    clippy::disallowed_methods,
    reason = "PostgreSQL administration: there is no SQLite side"
)]
pub async fn drop_pg_database(admin_url: &str, db_url: &str) {
    use sqlx::Connection;
    let Some(name) = db_url.rsplit('/').next() else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}
