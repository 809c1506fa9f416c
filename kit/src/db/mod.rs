//! Storage: one database per service, SQLite (WAL) in embedded mode and PostgreSQL when scaled
//! out, behind one small query interface so every query is written once.
//!
//! The SQL dialect shared by both engines is small and enough: `$1` placeholders, TEXT for ids
//! and JSON, BIGINT for integers, money, booleans (0/1) and times (µs since the epoch). Where the
//! engines really differ (auto-numbered keys, `SKIP LOCKED`) the code asks [`Db::backend`].
//! Schemas differ only in those details, so each service keeps one migration folder per engine.
//!
//! The interface has the shape of sqlx's (`query(sql).bind(v).fetch_one(&mut *conn)`,
//! `row.try_get("col")`), and PostgreSQL runs on sqlx's driver. SQLite does not: see
//! [`sqlite`] for why statements run in place through rusqlite. sqlx's `Any` driver, which this
//! replaced, also copied every row once more into its own representation.
//!
//! SQLite allows one writer at a time, so on SQLite writes go through one connection (writers
//! queue for it, never fail) and reads through a pool of several. On PostgreSQL both are the
//! same pool.
//!
//! A transaction ([`Tx`]) is a visible block: the state change, its outbox rows and its
//! idempotency or inbox record are written through it and commit together, or not at all; it
//! rolls back when dropped uncommitted. [`Tx::after_commit`] queues what should happen only
//! once the commit succeeded (waking a relay, telling waiters).

mod postgres;
pub mod sqlite;
mod value;

pub use value::{Arg, ColumnIndex, Decode, Encode, Kind, Row, Value};

use anyhow::Context;
use sqlite::{ReaderGuard, SqliteConn, SqliteDb};
use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgPool, Postgres};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxDynError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What can go wrong talking to a database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("no row was found")]
    RowNotFound,
    #[error("no column {0} in the result")]
    ColumnNotFound(String),
    #[error("column {index}: {source}")]
    ColumnDecode { index: String, source: BoxDynError },
    #[error("decoding a stored value: {0}")]
    Decode(BoxDynError),
    #[error("encoding a value to store: {0}")]
    Encode(BoxDynError),
    #[error("{0}")]
    Protocol(String),
    #[error("migrations: {0}")]
    Migrate(String),
    #[error("I/O: {0}")]
    Io(String),
    #[error("the connection pool is closed")]
    PoolClosed,
}

impl Error {
    /// A unique-constraint violation, on either engine.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            Error::Postgres(e) => e
                .as_database_error()
                .is_some_and(|d| d.is_unique_violation()),
            _ => false,
        }
    }

    /// The database could not be reached (yet): worth waiting out at start.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Postgres(e) => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
            ),
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::CannotOpen
            }
            Error::Io(_) => true,
            _ => false,
        }
    }
}

/// True when the error is a unique-constraint violation, on either engine.
pub fn is_unique_violation(e: &Error) -> bool {
    e.is_unique_violation()
}

/// Reads a 0/1 column as a bool.
pub fn get_bool(row: &Row, col: &str) -> Result<bool, Error> {
    row.try_get::<bool, _>(col)
}

/// The migrations of one service, per engine.
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

impl Migrations {
    /// Each engine's migrations: the ones both engines run (a service's `migrations/`) and
    /// the engine's own (`migrations/sqlite`, `migrations/postgres`), in version order. A
    /// migration moves between these folders without being re-applied: sqlx records a
    /// migration by its version and the checksum of its SQL, not by its folder.
    pub fn from_folders(shared: Migrator, sqlite: Migrator, postgres: Migrator) -> Migrations {
        Migrations {
            sqlite: merged(&[&shared, &sqlite]),
            postgres: merged(&[&shared, &postgres]),
        }
    }
}

/// A service's [`Migrations`], from the folders every service keeps them in beside its
/// `Cargo.toml`: `migrations` for the SQL both engines run as written, `migrations/sqlite`
/// and `migrations/postgres` for what differs (`mercato/tests/architecture.rs` checks that
/// nothing stands in both engine folders alike). A macro because `sqlx::migrate!` embeds the
/// folders of the crate that invokes it, so it must expand there.
#[macro_export]
macro_rules! service_migrations {
    () => {
        $crate::db::Migrations::from_folders(
            ::sqlx::migrate!("./migrations"),
            ::sqlx::migrate!("./migrations/sqlite"),
            ::sqlx::migrate!("./migrations/postgres"),
        )
    };
}

static KIT_SHARED: Migrator = sqlx::migrate!("./migrations");
static KIT_SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static KIT_POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// What a statement produced.
pub(crate) struct Outcome {
    pub(crate) rows: Vec<Row>,
    pub(crate) rows_affected: u64,
}

/// What an `execute` did.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    rows_affected: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// Tells the outbox relay that an outbox row was committed. Held by the [`Db`] whose outbox
/// it is (see [`Db::outbox_waker`]), so a commit and the relay that publishes it share it
/// without being introduced; storage knows only that someone waits, not who.
#[derive(Clone, Default)]
pub struct OutboxWaker(Arc<tokio::sync::Notify>);

impl OutboxWaker {
    pub fn wake(&self) {
        // notify_one keeps a permit when the relay is busy, so no wake is ever lost.
        self.0.notify_one();
    }

    /// Until the next wake (or at once, for a wake that came while nobody waited).
    pub async fn notified(&self) {
        self.0.notified().await
    }
}

#[derive(Clone)]
pub struct Db {
    backend: Backend,
    write: Pool,
    read: Pool,
    waker: OutboxWaker,
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
        if url.starts_with("sqlite:") {
            let db = Arc::new(
                SqliteDb::open(url, pool_size.clamp(2, 8))
                    .with_context(|| format!("opening {url}"))?,
            );
            {
                let mut w = db.writer.lock().await;
                sqlite::migrate(
                    &mut w,
                    &merged(&[&KIT_SHARED, &KIT_SQLITE, &migrations.sqlite]),
                )
                .with_context(|| format!("applying the {service} migrations"))?;
            }
            Ok(Db {
                backend: Backend::Sqlite,
                write: Pool(PoolInner::SqliteWriter(db.clone())),
                read: Pool(PoolInner::SqliteReader(db)),
                waker: Default::default(),
            })
        } else {
            let pool = Self::open_postgres(url, service, pool_size).await?;
            merged(&[&KIT_SHARED, &KIT_POSTGRES, &migrations.postgres])
                .run(&pool)
                .await
                .with_context(|| format!("applying the {service} migrations"))?;
            let pool = Pool(PoolInner::Pg(pool));
            Ok(Db {
                backend: Backend::Postgres,
                write: pool.clone(),
                read: pool,
                waker: Default::default(),
            })
        }
    }

    async fn open_postgres(url: &str, service: &str, pool_size: u32) -> anyhow::Result<PgPool> {
        let schema = schema_name(service);
        let setup = PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .map_err(Error::from)
            .with_context(|| format!("connecting to {}", redact(url)))?;
        let made = ensure_schema(&setup, &schema).await;
        setup.close().await;
        made?;
        // Quoted: a service may be named like a keyword ("order").
        let search_path = format!("SET search_path TO \"{schema}\"");
        PgPoolOptions::new()
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
            .map_err(Error::from)
            .with_context(|| format!("connecting to {}", redact(url)))
    }

    /// Wakes this database's outbox relay; call it after committing a transaction that
    /// appended events (idempotent handlers and consumers do it for you). Every clone of this
    /// `Db` hands out the same waker, and the relay over it listens to that one.
    pub fn outbox_waker(&self) -> OutboxWaker {
        self.waker.clone()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads outside a transaction.
    pub fn reader(&self) -> &Pool {
        &self.read
    }

    /// The pool for single writes outside a transaction.
    pub fn writer(&self) -> &Pool {
        &self.write
    }

    /// Starts a write transaction: the state change, its outbox rows and its idempotency
    /// record go in here together, or not at all.
    pub async fn begin(&self) -> Result<Tx, Error> {
        self.write.begin().await
    }

    /// Round-trips a trivial query, for readiness checks.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let t = Instant::now();
        query("SELECT 1").fetch_one(&self.read).await?;
        Ok(t.elapsed())
    }

    /// The PostgreSQL pool, for what only PostgreSQL does (tests, administration).
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match &self.write.0 {
            PoolInner::Pg(p) => Some(p),
            _ => None,
        }
    }

    pub async fn close(&self) {
        match &self.write.0 {
            PoolInner::Pg(p) => p.close().await,
            PoolInner::SqliteWriter(db) | PoolInner::SqliteReader(db) => db.close(),
        }
    }
}

/// Where statements run: a writer, a set of readers, or a PostgreSQL pool.
#[derive(Clone)]
pub struct Pool(PoolInner);

#[derive(Clone)]
enum PoolInner {
    SqliteWriter(Arc<SqliteDb>),
    SqliteReader(Arc<SqliteDb>),
    Pg(PgPool),
}

/// How busy a pool is, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

impl Pool {
    /// How many connections are open, idle, and allowed.
    pub fn stats(&self) -> PoolStats {
        match &self.0 {
            PoolInner::Pg(p) => PoolStats {
                open: p.size(),
                idle: p.num_idle() as u32,
                max: p.options().get_max_connections(),
            },
            PoolInner::SqliteWriter(db) => {
                let idle = u32::from(db.writer.try_lock().is_ok());
                PoolStats {
                    open: 1,
                    idle,
                    max: 1,
                }
            }
            PoolInner::SqliteReader(db) => db.reader_stats(),
        }
    }

    /// A connection of this pool, held until dropped.
    pub async fn acquire(&self) -> Result<Conn, Error> {
        Ok(Conn(match &self.0 {
            PoolInner::SqliteWriter(db) => ConnInner::SqliteWriter {
                guard: db.writer().lock_owned().await,
                db: db.clone(),
            },
            PoolInner::SqliteReader(db) => ConnInner::SqliteReader(db.reader().await?),
            PoolInner::Pg(p) => ConnInner::Pg(p.acquire().await?),
        }))
    }

    /// Starts a transaction on a connection of this pool.
    pub async fn begin(&self) -> Result<Tx, Error> {
        match &self.0 {
            PoolInner::Pg(p) => Ok(Tx::new(Conn(ConnInner::PgTx(p.begin().await?)))),
            _ => {
                let mut conn = self.acquire().await?;
                let sql = match &conn.0 {
                    // The writer takes the write lock at once, so a transaction that reads and
                    // then writes never meets another process's writer half-way.
                    ConnInner::SqliteWriter { .. } => "BEGIN IMMEDIATE",
                    _ => "BEGIN",
                };
                conn.sqlite()?.batch(sql)?;
                Ok(Tx::new(conn))
            }
        }
    }
}

/// A connection: a SQLite writer or reader, or a PostgreSQL connection (in a transaction or
/// not). Statements run on it through [`query`].
pub struct Conn(ConnInner);

enum ConnInner {
    SqliteWriter {
        guard: tokio::sync::OwnedMutexGuard<SqliteConn>,
        db: Arc<SqliteDb>,
    },
    SqliteReader(ReaderGuard),
    Pg(sqlx::pool::PoolConnection<Postgres>),
    PgTx(sqlx::Transaction<'static, Postgres>),
    /// A transaction's connection after it ended.
    Ended,
}

impl Conn {
    /// The engine this connection talks to.
    pub fn backend(&self) -> Backend {
        match &self.0 {
            ConnInner::Pg(_) | ConnInner::PgTx(_) => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }

    fn sqlite(&mut self) -> Result<&mut SqliteConn, Error> {
        match &mut self.0 {
            ConnInner::SqliteWriter { guard, .. } => Ok(&mut *guard),
            ConnInner::SqliteReader(r) => Ok(&mut *r),
            _ => Err(Error::Protocol("not a SQLite connection".into())),
        }
    }

    async fn run(&mut self, sql: &str, args: Vec<Arg>, rows: bool) -> Result<Outcome, Error> {
        match &mut self.0 {
            ConnInner::SqliteWriter { guard, db } => {
                let out = guard.run(sql, &args, rows)?;
                if guard.is_autocommit() && out.rows_affected > 0 {
                    db.committed();
                }
                Ok(out)
            }
            ConnInner::SqliteReader(r) => r.run(sql, &args, rows),
            ConnInner::Pg(c) => postgres::run(&mut **c, sql, args, rows).await,
            ConnInner::PgTx(t) => postgres::run(&mut **t, sql, args, rows).await,
            ConnInner::Ended => Err(Error::Protocol("the transaction has ended".into())),
        }
    }
}

type Hook = Box<dyn FnOnce() + Send + 'static>;

/// A write transaction. Rolls back when dropped without [`commit`](Tx::commit).
pub struct Tx {
    conn: Conn,
    open: bool,
    after_commit: Vec<Hook>,
    /// A savepoint dropped without being released, to be rolled back before the next
    /// statement (PostgreSQL cannot be told from `Drop`).
    abandoned_savepoint: Option<String>,
    savepoints: u32,
    /// From begin to commit or rollback: the transaction as one span of its caller's trace.
    span: tracing::Span,
}

impl std::ops::Deref for Tx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl Tx {
    fn new(conn: Conn) -> Tx {
        let system = match conn.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        };
        let span = tracing::info_span!(
            "db.transaction",
            otel.name = "transaction",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            service = crate::telemetry::current_service().unwrap_or_default(),
            db.system.name = system,
            db.outcome = tracing::field::Empty,
        );
        Tx {
            span,
            conn,
            open: true,
            after_commit: Vec::new(),
            abandoned_savepoint: None,
            savepoints: 0,
        }
    }

    /// Runs `hook` once this transaction has committed; never if it rolls back.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(hook));
    }

    pub async fn commit(mut self) -> Result<(), Error> {
        self.settle_savepoint().await?;
        self.open = false;
        self.span.record("db.outcome", "commit");
        match std::mem::replace(&mut self.conn.0, ConnInner::Ended) {
            ConnInner::PgTx(t) => {
                if let Err(e) = t.commit().await {
                    self.span.record("otel.status_code", "ERROR");
                    return Err(e.into());
                }
            }
            ConnInner::SqliteWriter { guard, db } => {
                if let Err(e) = guard.batch("COMMIT") {
                    self.span.record("otel.status_code", "ERROR");
                    let _ = guard.batch("ROLLBACK");
                    return Err(e);
                }
                db.committed();
            }
            ConnInner::SqliteReader(r) => r.batch("COMMIT")?,
            other => {
                self.conn.0 = other;
                return Err(Error::Protocol("commit outside a transaction".into()));
            }
        }
        for hook in std::mem::take(&mut self.after_commit) {
            hook();
        }
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<(), Error> {
        self.open = false;
        self.span.record("db.outcome", "rollback");
        self.after_commit.clear();
        match std::mem::replace(&mut self.conn.0, ConnInner::Ended) {
            ConnInner::PgTx(t) => t.rollback().await?,
            ConnInner::SqliteWriter { guard, .. } => guard.batch("ROLLBACK")?,
            ConnInner::SqliteReader(r) => r.batch("ROLLBACK")?,
            _ => {}
        }
        Ok(())
    }

    /// A savepoint inside this transaction: what is written through it can be rolled back
    /// alone, leaving the rest of the transaction as it was.
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_>, Error> {
        self.settle_savepoint().await?;
        self.savepoints += 1;
        let name = format!("sp_{}", self.savepoints);
        self.conn
            .run(&format!("SAVEPOINT {name}"), Vec::new(), false)
            .await?;
        Ok(Savepoint {
            tx: self,
            name,
            open: true,
        })
    }

    async fn settle_savepoint(&mut self) -> Result<(), Error> {
        if let Some(name) = self.abandoned_savepoint.take() {
            self.conn
                .run(&format!("ROLLBACK TO SAVEPOINT {name}"), Vec::new(), false)
                .await?;
            self.conn
                .run(&format!("RELEASE SAVEPOINT {name}"), Vec::new(), false)
                .await?;
        }
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        self.span.record("db.outcome", "rollback");
        // PostgreSQL: sqlx's transaction rolls back when dropped. SQLite: here and now.
        match &mut self.conn.0 {
            ConnInner::SqliteWriter { guard, .. } => {
                let _ = guard.batch("ROLLBACK");
            }
            ConnInner::SqliteReader(r) => {
                let _ = r.batch("ROLLBACK");
            }
            _ => {}
        }
    }
}

/// Part of a transaction that can be undone alone ([`Tx::savepoint`]). Dropped without
/// `commit`, it is rolled back.
pub struct Savepoint<'t> {
    tx: &'t mut Tx,
    name: String,
    open: bool,
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.tx.conn
    }
}

impl std::ops::DerefMut for Savepoint<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.tx.conn
    }
}

impl Savepoint<'_> {
    /// Keeps what was written (it still commits or rolls back with the transaction).
    pub async fn commit(mut self) -> Result<(), Error> {
        self.open = false;
        let sql = format!("RELEASE SAVEPOINT {}", self.name);
        self.tx.conn.run(&sql, Vec::new(), false).await?;
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<(), Error> {
        self.open = false;
        let name = &self.name;
        self.tx
            .conn
            .run(&format!("ROLLBACK TO SAVEPOINT {name}"), Vec::new(), false)
            .await?;
        self.tx
            .conn
            .run(&format!("RELEASE SAVEPOINT {name}"), Vec::new(), false)
            .await?;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let name = std::mem::take(&mut self.name);
        match &mut self.tx.conn.0 {
            ConnInner::SqliteWriter { guard, .. } => {
                let _ = guard.batch(&format!(
                    "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
                ));
            }
            _ => self.tx.abandoned_savepoint = Some(name),
        }
    }
}

/// Where a [`Query`] runs: a connection (a transaction's, a savepoint's, an acquired one) or a
/// pool (which lends it a connection for the one statement).
pub enum Exec<'c> {
    Conn(&'c mut Conn),
    Pool(&'c Pool),
}

impl<'c> From<&'c mut Conn> for Exec<'c> {
    fn from(c: &'c mut Conn) -> Self {
        Exec::Conn(c)
    }
}

impl<'c> From<&'c mut Tx> for Exec<'c> {
    fn from(t: &'c mut Tx) -> Self {
        Exec::Conn(&mut t.conn)
    }
}

impl<'c, 't> From<&'c mut Savepoint<'t>> for Exec<'c> {
    fn from(s: &'c mut Savepoint<'t>) -> Self {
        Exec::Conn(&mut s.tx.conn)
    }
}

impl<'c> From<&'c Pool> for Exec<'c> {
    fn from(p: &'c Pool) -> Self {
        Exec::Pool(p)
    }
}

/// A statement and its arguments; start one with [`query`].
#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query<'q> {
    sql: &'q str,
    args: Vec<Arg>,
}

/// `count` placeholders from `$first` on (`$3, $4, $5`), for an `IN (...)` list built per
/// statement.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A statement in the shared dialect, `$1`, `$2`... for its arguments.
pub fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
    }
}

impl<'q> Query<'q> {
    pub fn bind<T: Encode>(mut self, value: T) -> Self {
        self.args.push(value.encode());
        self
    }

    async fn run<'c>(self, on: Exec<'c>, rows: bool) -> Result<Outcome, Error> {
        match on {
            Exec::Conn(c) => c.run(self.sql, self.args, rows).await,
            Exec::Pool(p) => match &p.0 {
                PoolInner::Pg(pool) => postgres::run(pool, self.sql, self.args, rows).await,
                _ => p.acquire().await?.run(self.sql, self.args, rows).await,
            },
        }
    }

    pub async fn execute<'c>(self, on: impl Into<Exec<'c>>) -> Result<Done, Error> {
        let out = self.run(on.into(), false).await?;
        Ok(Done {
            rows_affected: out.rows_affected,
        })
    }

    pub async fn fetch_all<'c>(self, on: impl Into<Exec<'c>>) -> Result<Vec<Row>, Error> {
        Ok(self.run(on.into(), true).await?.rows)
    }

    pub async fn fetch_optional<'c>(self, on: impl Into<Exec<'c>>) -> Result<Option<Row>, Error> {
        Ok(self.run(on.into(), true).await?.rows.into_iter().next())
    }

    pub async fn fetch_one<'c>(self, on: impl Into<Exec<'c>>) -> Result<Row, Error> {
        self.fetch_optional(on).await?.ok_or(Error::RowNotFound)
    }
}

/// Creates the schema unless it exists. Asked only when missing: `CREATE SCHEMA` checks the
/// privilege to create before it looks, so a user given a ready-made schema could not even say
/// `IF NOT EXISTS`. Two processes starting together may both find it missing; the loser's
/// create fails on the catalog's unique index once the winner commits, and finding the schema
/// there then is success.
#[expect(
    clippy::disallowed_methods,
    reason = "the PostgreSQL catalog: there is no SQLite side"
)]
async fn ensure_schema(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
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

/// A database URL (`sqlite://...`, `postgres://...`) that prints without its password, so
/// every service's `Config` derives `Debug` and is logged at start as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The URL itself, password included: for connecting, never for a log.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&redact(&self.0), f)
    }
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

/// Parses an id column read from the database; a malformed one is data corruption, not input.
pub fn parse_uuid(s: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::parse_str(s).map_err(|e| Error::Decode(Box::new(e)))
}

fn merged(parts: &[&Migrator]) -> Migrator {
    let mut all: Vec<Migration> = parts.iter().flat_map(|m| m.iter()).cloned().collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:****@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
        let url = DatabaseUrl::new("postgres://u:secret@h/db");
        assert_eq!(format!("{url:?}"), "\"postgres://u:****@h/db\"");
        assert_eq!(url.as_str(), "postgres://u:secret@h/db");
    }

    fn none() -> Migrations {
        Migrations {
            sqlite: Migrator::DEFAULT,
            postgres: Migrator::DEFAULT,
        }
    }

    #[tokio::test]
    async fn sqlite_opens_migrates_and_accepts_dollar_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let db = Db::connect(&url, "t", 2, &none()).await.unwrap();
        assert_eq!(db.backend(), Backend::Sqlite);
        let mut tx = db.begin().await.unwrap();
        query("CREATE TABLE x (a TEXT, b BIGINT)")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Placeholders out of order must still bind by number, and a number used twice binds
        // the same argument.
        query("INSERT INTO x (b, a) VALUES ($2, $1)")
            .bind("one")
            .bind(1_i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        query("INSERT INTO x (a, b) SELECT $1, $2 WHERE $2 > 0")
            .bind("two")
            .bind(2_i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let rows = query("SELECT a, b FROM x ORDER BY b")
            .fetch_all(db.reader())
            .await
            .unwrap();
        assert_eq!(rows[0].get::<String, _>("a"), "one");
        assert_eq!(rows[0].get::<i64, _>("b"), 1);
        assert_eq!(rows[1].get::<String, _>("a"), "two");
        db.ping().await.unwrap();
        // Opening again re-applies nothing and fails nothing.
        db.close().await;
        Db::connect(&url, "t", 2, &none()).await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_transaction_rolls_back_and_hooks_run_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let db = Db::connect(&url, "t", 2, &none()).await.unwrap();
        query("CREATE TABLE x (a BIGINT)")
            .execute(db.writer())
            .await
            .unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let mut tx = db.begin().await.unwrap();
            query("INSERT INTO x (a) VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
            let r = ran.clone();
            tx.after_commit(move || {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut tx = db.begin().await.unwrap();
        query("INSERT INTO x (a) VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap();
        {
            let mut sp = tx.savepoint().await.unwrap();
            query("INSERT INTO x (a) VALUES (3)")
                .execute(&mut *sp)
                .await
                .unwrap();
            sp.rollback().await.unwrap();
        }
        {
            let mut sp = tx.savepoint().await.unwrap();
            query("INSERT INTO x (a) VALUES (4)")
                .execute(&mut *sp)
                .await
                .unwrap();
            // dropped: rolled back
        }
        let r = ran.clone();
        tx.after_commit(move || {
            r.fetch_add(10, std::sync::atomic::Ordering::SeqCst);
        });
        tx.commit().await.unwrap();
        let all: Vec<i64> = query("SELECT a FROM x ORDER BY a")
            .fetch_all(db.reader())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("a"))
            .collect();
        assert_eq!(all, vec![2]);
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 10);
    }

    #[test]
    fn placeholders_count_from_the_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 1), "$1");
        assert_eq!(placeholders(2, 0), "");
    }

    #[tokio::test]
    async fn unique_violations_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let db = Db::connect(&url, "t", 2, &none()).await.unwrap();
        query("CREATE TABLE x (a BIGINT PRIMARY KEY)")
            .execute(db.writer())
            .await
            .unwrap();
        query("INSERT INTO x (a) VALUES (1)")
            .execute(db.writer())
            .await
            .unwrap();
        let e = query("INSERT INTO x (a) VALUES (1)")
            .execute(db.writer())
            .await
            .unwrap_err();
        assert!(e.is_unique_violation(), "{e}");
        let returned = query("INSERT INTO x (a) VALUES (2) RETURNING a")
            .execute(db.writer())
            .await
            .unwrap();
        assert_eq!(returned.rows_affected(), 1);
    }
}
