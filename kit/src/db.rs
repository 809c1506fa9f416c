//! Storage: one database per service, SQLite (WAL) in embedded mode and PostgreSQL when scaled
//! out, behind sqlx's `Any` driver so every query is written once.
//!
//! The SQL dialect shared by both engines is small and enough: `$1` placeholders (SQLite accepts
//! them), TEXT for ids and JSON, BIGINT for integers, money, booleans (0/1) and times (µs since
//! the epoch). Where the engines really differ (auto-numbered keys, `SKIP LOCKED`) the code asks
//! [`Db::backend`]. Schemas differ only in those details, so each service keeps one migration
//! folder per engine.
//!
//! SQLite allows one writer at a time; a transaction that reads and then writes can fail with
//! SQLITE_BUSY when another writer got in between. So on SQLite writes go through a pool of one
//! connection (writers queue in the pool, never fail) and reads through a pool of several.

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, Migrator};
use sqlx::{Any, AnyPool, Executor, Row};
use std::borrow::Cow;
use std::time::{Duration, Instant};

pub type Tx = sqlx::Transaction<'static, Any>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The migrations of one service, per engine.
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

static KIT_SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static KIT_POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone)]
pub struct Db {
    backend: Backend,
    write: AnyPool,
    read: AnyPool,
    waker: crate::events::OutboxWaker,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Db {
    /// Opens the service's database, creating it (SQLite) or its schema (PostgreSQL) when
    /// missing, and applies the kit's and the service's migrations.
    ///
    /// `service` names the PostgreSQL schema, so services can share one PostgreSQL database
    /// without sharing a table.
    pub async fn connect(
        url: &str,
        service: &str,
        pool_size: u32,
        migrations: &Migrations,
    ) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let db = if url.starts_with("sqlite:") {
            Self::open_sqlite(url, pool_size).await?
        } else {
            Self::open_postgres(url, service, pool_size).await?
        };
        let (kit, own) = match db.backend {
            Backend::Sqlite => (&KIT_SQLITE, &migrations.sqlite),
            Backend::Postgres => (&KIT_POSTGRES, &migrations.postgres),
        };
        merged(kit, own)
            .run(&db.write)
            .await
            .with_context(|| format!("applying the {service} migrations"))?;
        Ok(db)
    }

    async fn open_sqlite(url: &str, pool_size: u32) -> anyhow::Result<Db> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .and_then(|p| p.split('?').next())
        {
            if let Some(dir) = std::path::Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let opts = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                        )
                        .await?;
                        Ok(())
                    })
                })
        };
        let write = opts(1)
            .connect(url)
            .await
            .with_context(|| format!("opening {url}"))?;
        let read = opts(pool_size.max(2))
            .connect(url)
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(Db {
            backend: Backend::Sqlite,
            write,
            read,
            waker: Default::default(),
        })
    }

    async fn open_postgres(url: &str, service: &str, pool_size: u32) -> anyhow::Result<Db> {
        let schema = schema_name(service);
        let setup = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .with_context(|| format!("connecting to {}", redact(url)))?;
        let made = ensure_schema(&setup, &schema).await;
        setup.close().await;
        made?;
        // Quoted: a service may be named like a keyword ("order").
        let search_path = format!("SET search_path TO \"{schema}\"");
        let pool = AnyPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                let sp = search_path.clone();
                Box::pin(async move {
                    conn.execute(sp.as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("connecting to {}", redact(url)))?;
        Ok(Db {
            backend: Backend::Postgres,
            write: pool.clone(),
            read: pool,
            waker: Default::default(),
        })
    }

    /// Wakes this database's outbox relay; call it after committing a transaction that
    /// appended events (idempotent handlers and consumers do it for you).
    pub fn outbox_waker(&self) -> crate::events::OutboxWaker {
        self.waker.clone()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads outside a transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// The pool for single writes outside a transaction.
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// Starts a write transaction: the state change, its outbox rows and its idempotency
    /// record go in here together, or not at all.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.write.begin().await
    }

    /// Round-trips a trivial query, for readiness checks.
    pub async fn ping(&self) -> Result<Duration, sqlx::Error> {
        let t = Instant::now();
        let _: AnyRow = sqlx::query("SELECT 1").fetch_one(&self.read).await?;
        Ok(t.elapsed())
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Creates the schema unless it exists. Asked only when missing: `CREATE SCHEMA` checks the
/// privilege to create before it looks, so a user given a ready-made schema could not even say
/// `IF NOT EXISTS`. Two processes starting together may both find it missing; the loser's
/// create fails on the catalog's unique index once the winner commits, and finding the schema
/// there then is success.
async fn ensure_schema(pool: &AnyPool, schema: &str) -> anyhow::Result<()> {
    let exists = || async {
        sqlx::query("SELECT 1 AS found FROM pg_namespace WHERE nspname = $1")
            .bind(schema)
            .fetch_optional(pool)
            .await
            .map(|r| r.is_some())
    };
    if exists().await? {
        return Ok(());
    }
    match pool
        .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
        .await
    {
        Ok(_) => Ok(()),
        Err(_) if exists().await? => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the schema {schema}")),
    }
}

fn schema_name(service: &str) -> String {
    service
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// A URL as it may be logged: without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:****{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn merged(kit: &Migrator, own: &Migrator) -> Migrator {
    let mut all: Vec<Migration> = kit.iter().chain(own.iter()).cloned().collect();
    all.sort_by_key(|m| m.version);
    Migrator {
        migrations: Cow::Owned(all),
        // On PostgreSQL, sqlx holds a session advisory lock (keyed by the database's name)
        // while it checks and applies, so processes starting together migrate one after
        // another and the later ones find everything applied. The key does not depend on the
        // schema: services sharing one database wait for each other too, briefly.
        locking: true,
        ..Migrator::DEFAULT
    }
}

/// True when the error is a unique-constraint violation, on either engine.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Reads a 0/1 column as a bool.
pub fn get_bool(row: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:****@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn sqlite_opens_migrates_and_accepts_dollar_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let none = Migrations {
            sqlite: Migrator::DEFAULT,
            postgres: Migrator::DEFAULT,
        };
        let db = Db::connect(&url, "t", 2, &none).await.unwrap();
        assert_eq!(db.backend(), Backend::Sqlite);
        let mut tx = db.begin().await.unwrap();
        sqlx::query("CREATE TABLE x (a TEXT, b BIGINT)")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Placeholders out of order must still bind by number.
        sqlx::query("INSERT INTO x (b, a) VALUES ($2, $1)")
            .bind("one")
            .bind(1_i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let row = sqlx::query("SELECT a, b FROM x")
            .fetch_one(db.reader())
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("a"), "one");
        assert_eq!(row.get::<i64, _>("b"), 1);
        db.ping().await.unwrap();
        // Opening again re-applies nothing and fails nothing.
        db.close().await;
        Db::connect(&url, "t", 2, &none).await.unwrap();
    }
}
