//! SQLite, called in place: each statement runs on the calling task's thread, through rusqlite.
//!
//! Why not sqlx's SQLite driver: it runs every connection on a worker thread of its own and
//! hands each statement and each row across a channel, so every statement costs thread
//! hand-offs. Profiled under load (docs/BENCHMARKS.md) about half the CPU of an order went to
//! those context switches and a tenth to SQLite itself. A statement on a WAL database with
//! `synchronous=NORMAL` takes microseconds and never waits for the disk (only checkpoints
//! fsync), so running it where the caller is costs less than any hand-off would.
//!
//! Writes: one connection behind an async mutex (SQLite has one writer anyway): a transaction
//! holds it from `BEGIN IMMEDIATE` to commit, other writers queue on the mutex instead of
//! failing with SQLITE_BUSY. Reads: a small pool of connections, opened as needed; WAL lets
//! them read while the writer writes.
//!
//! Checkpoints: the writer does not checkpoint (they fsync, and would stall the task that
//! happened to commit); a thread per database copies the WAL back into the database file in
//! the background (`PASSIVE`, which never blocks readers or the writer), woken every few
//! hundred commits and once a second.

use super::value::{Arg, Row, Value};
use super::{Error, Outcome};
use rusqlite::types::ValueRef;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Commits between two nudges of the checkpointer.
const CHECKPOINT_EVERY: u64 = 512;
/// The longest the checkpointer waits without a nudge.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);
/// WAL frames (pages) past which the checkpointer restarts the log, unless
/// `MERCATO_SQLITE_WAL_RESTART_PAGES` says otherwise (0: never). A passive checkpoint never
/// catches up with a writer that never pauses, so the log grows without end (1.5 GB in
/// order.db after 12,000 orders at 400/s) and every page read probes one more wal-index hash
/// table per 4,096 frames: the whole shop slows down with it. A restart pauses this process's
/// writes for its length (tens of ms, seconds when the disk is busy): docs/BENCHMARKS.md.
const WAL_RESTART_FRAMES: i64 = 65_536;

/// Checked with the rest of the configuration at start (`config::CommonConfig`).
pub(crate) const WAL_RESTART_PAGES_VAR: &str = "MERCATO_SQLITE_WAL_RESTART_PAGES";
pub(crate) const MMAP_BYTES_VAR: &str = "MERCATO_SQLITE_MMAP_BYTES";
/// 1 TiB: more than any file here, and far below what SQLite's 64-bit setting takes.
pub(crate) const MMAP_BYTES_MAX: u64 = 1 << 40;

fn wal_restart_frames() -> i64 {
    static FRAMES: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *FRAMES.get_or_init(|| {
        env_number(WAL_RESTART_PAGES_VAR)
            .map(|n| if n <= 0 { i64::MAX } else { n })
            .unwrap_or(WAL_RESTART_FRAMES)
    })
}

/// The size SQLite cuts the log file back to at the first commit after a restart: a little
/// past the length at which the checkpointer restarts it, so a busy database writes its log
/// into a file that stays allocated. Cut at 64 MB while the log ran to 256 MB, every restart
/// freed the rest of the file and the next few seconds of commits allocated it again: the
/// truncation was 3% of an order's CPU and block allocation in the log's writes about 10%
/// (docs/BENCHMARKS.md). The price is disk: up to this much per busy database while it runs
/// (the log is removed when the last connection closes). Without restarts (0) the log is cut
/// to 64 MB as before.
fn journal_size_limit(restart_frames: i64) -> i64 {
    const FRAME_BYTES: i64 = 4096 + 24;
    const WITHOUT_RESTARTS: i64 = 64 << 20;
    if restart_frames == i64::MAX {
        return WITHOUT_RESTARTS;
    }
    // The log runs past the restart point until the checkpointer looks (every few hundred
    // commits or a second).
    restart_frames
        .saturating_add(restart_frames / 4)
        .saturating_mul(FRAME_BYTES)
        .max(WITHOUT_RESTARTS)
}

/// A whole number from the environment; `None` when unset or not a number (the default
/// then applies: a service's start has refused a bad value already, see above).
fn env_number(name: &str) -> Option<i64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Bytes of each file SQLite reads through a memory map, unless `MERCATO_SQLITE_MMAP_BYTES`
/// says otherwise: none. In WAL mode a connection drops its whole map at the start of every
/// read transaction after another connection's commit (`sqlite3PagerSharedLock` unmaps, the
/// next read maps again), which here is nearly every transaction: with 128 MiB mapped, munmap
/// and the page faults after it took about 10% of the shop's CPU at 300 orders/s, and turning
/// the map off cut CPU per order by 12% (docs/BENCHMARKS.md).
const MMAP_BYTES: i64 = 0;

fn mmap_bytes() -> i64 {
    static BYTES: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        env_number(MMAP_BYTES_VAR)
            .map(|n| n.clamp(0, MMAP_BYTES_MAX as i64))
            .unwrap_or(MMAP_BYTES)
    })
}

/// Statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 256;

/// A rusqlite connection and the column names of the statements it ran, so a result's rows
/// share one list instead of copying names per query.
pub struct SqliteConn {
    conn: rusqlite::Connection,
    columns: HashMap<String, Arc<[Box<str>]>>,
}

impl SqliteConn {
    fn open(path: &Path, create: bool) -> Result<SqliteConn, Error> {
        use rusqlite::OpenFlags;
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = rusqlite::Connection::open_with_flags(path, flags)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; \
             PRAGMA wal_autocheckpoint=0;",
        )?;
        conn.execute_batch(&format!(
            "PRAGMA journal_size_limit={};",
            journal_size_limit(wal_restart_frames())
        ))?;
        conn.execute_batch(&format!("PRAGMA mmap_size={};", mmap_bytes()))?;
        Ok(SqliteConn {
            conn,
            columns: HashMap::new(),
        })
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<(), Error> {
        Ok(self.conn.execute_batch(sql)?)
    }

    /// Runs one statement. `$N` placeholders bind the N-th argument wherever they stand, as on
    /// PostgreSQL (SQLite itself would number them in order of appearance).
    pub(crate) fn run(&mut self, sql: &str, args: &[Arg], rows: bool) -> Result<Outcome, Error> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        for i in 1..=stmt.parameter_count() {
            let n = match stmt.parameter_name(i) {
                Some(name) => name
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| Error::Protocol(format!("placeholder {name} in {sql:?}")))?,
                None => i,
            };
            let arg = args.get(n - 1).ok_or_else(|| {
                Error::Protocol(format!(
                    "${n} has no argument ({} bound) in {sql:?}",
                    args.len()
                ))
            })?;
            match arg {
                Arg::Int(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Real(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Text(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Blob(v) => stmt.raw_bind_parameter(i, v)?,
            }
        }
        let width = stmt.column_count();
        if !rows && width == 0 {
            let affected = stmt.raw_execute()? as u64;
            return Ok(Outcome {
                rows: Vec::new(),
                rows_affected: affected,
            });
        }
        let columns = match self.columns.get(sql) {
            Some(c) if c.len() == width => c.clone(),
            _ => {
                let c: Arc<[Box<str>]> = stmt.column_names().into_iter().map(Box::from).collect();
                self.columns.insert(sql.to_owned(), c.clone());
                c
            }
        };
        let before = self.conn.total_changes();
        let mut out = Vec::new();
        let mut cursor = stmt.raw_query();
        while let Some(r) = cursor.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(Row::new(columns.clone(), values));
        }
        drop(cursor);
        Ok(Outcome {
            rows: if rows { out } else { Vec::new() },
            // A statement with a result (RETURNING, or a SELECT) changed what it changed while
            // stepping; `changes()` alone would report an earlier statement's count.
            rows_affected: self.conn.total_changes() - before,
        })
    }

    pub(crate) fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }
}

/// Where the file is and whether to create it, from `sqlite://path?mode=rwc` (or `sqlite:path`).
pub fn parse_url(url: &str) -> Result<(PathBuf, bool), Error> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| Error::Protocol(format!("{url} is not a sqlite: URL")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        return Err(Error::Protocol(
            "an in-memory SQLite database cannot be shared by connections; use a file".into(),
        ));
    }
    let create = query.split('&').any(|kv| kv == "mode=rwc");
    Ok((PathBuf::from(path), create))
}

/// A database file: its writer, its readers and its checkpointer.
pub struct SqliteDb {
    pub(crate) writer: Arc<tokio::sync::Mutex<SqliteConn>>,
    readers: Arc<Readers>,
    checkpoint: Arc<Checkpointer>,
}

impl SqliteDb {
    pub fn open(url: &str, readers: u32) -> Result<SqliteDb, Error> {
        let (path, create) = parse_url(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io(e.to_string()))?;
        }
        let writer = SqliteConn::open(&path, create)?;
        // Every write passes through it: a larger cache than the readers' 2 MB keeps the hot
        // index pages (outbox, inbox, the busiest tables) from being read back each commit.
        writer.batch("PRAGMA cache_size=-16384")?;
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let checkpoint = Checkpointer::start(&path, Arc::downgrade(&writer))?;
        Ok(SqliteDb {
            writer,
            readers: Arc::new(Readers {
                path,
                max: readers.max(1),
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(readers.max(1) as usize)),
            }),
            checkpoint,
        })
    }

    pub fn writer(&self) -> Arc<tokio::sync::Mutex<SqliteConn>> {
        self.writer.clone()
    }

    pub async fn reader(&self) -> Result<ReaderGuard, Error> {
        self.readers.clone().acquire().await
    }

    pub fn reader_stats(&self) -> super::PoolStats {
        let max = self.readers.max;
        let busy = max.saturating_sub(self.readers.slots.available_permits() as u32);
        let idle = self
            .readers
            .idle
            .lock()
            .map(|v| v.len() as u32)
            .unwrap_or(0);
        super::PoolStats {
            open: busy + idle,
            idle,
            max,
        }
    }

    /// Called after every commit of the writer.
    pub fn committed(&self) {
        self.checkpoint.committed();
    }

    pub fn close(&self) {
        self.checkpoint.stop();
        self.readers.idle.lock().map(|mut v| v.clear()).ok();
    }
}

struct Readers {
    path: PathBuf,
    max: u32,
    idle: Mutex<Vec<SqliteConn>>,
    slots: Arc<Semaphore>,
}

impl Readers {
    async fn acquire(self: Arc<Self>) -> Result<ReaderGuard, Error> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::PoolClosed)?;
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => SqliteConn::open(&self.path, false)?,
        };
        Ok(ReaderGuard {
            conn: Some(conn),
            readers: self,
            _permit: permit,
        })
    }
}

/// A reader connection, back in the pool when dropped.
pub struct ReaderGuard {
    conn: Option<SqliteConn>,
    readers: Arc<Readers>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for ReaderGuard {
    type Target = SqliteConn;
    #[expect(clippy::expect_used, reason = "the connection is taken only in drop")]
    fn deref(&self) -> &SqliteConn {
        self.conn
            .as_ref()
            .expect("a reader connection until dropped")
    }
}

impl std::ops::DerefMut for ReaderGuard {
    #[expect(clippy::expect_used, reason = "the connection is taken only in drop")]
    fn deref_mut(&mut self) -> &mut SqliteConn {
        self.conn
            .as_mut()
            .expect("a reader connection until dropped")
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // A read left open (a caller that began one by hand) must not pin an old snapshot.
            if conn.is_autocommit() || conn.batch("ROLLBACK").is_ok() {
                if let Ok(mut idle) = self.readers.idle.lock() {
                    idle.push(conn);
                }
            }
        }
    }
}

/// The background checkpoint of one database file.
struct Checkpointer {
    commits: AtomicU64,
    stopped: AtomicBool,
    nudge: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    fn start(
        path: &Path,
        writer: std::sync::Weak<tokio::sync::Mutex<SqliteConn>>,
    ) -> Result<Arc<Checkpointer>, Error> {
        let conn = SqliteConn::open(path, false)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let me = Arc::new(Checkpointer {
            commits: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            nudge: tx,
        });
        let weak = Arc::downgrade(&me);
        let name = format!(
            "sqlite-ckpt-{}",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("db")
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || loop {
                let woke = rx.recv_timeout(CHECKPOINT_IDLE);
                let Some(me) = weak.upgrade() else { return };
                if me.stopped.load(Ordering::Relaxed)
                    || matches!(woke, Err(std::sync::mpsc::RecvTimeoutError::Disconnected))
                {
                    return;
                }
                drop(me);
                if let Err(e) = checkpoint(&conn, &writer) {
                    tracing::warn!(error = %e, "SQLite checkpoint failed; the next one retries");
                }
            })
            .map_err(|e| Error::Io(e.to_string()))?;
        Ok(me)
    }

    fn committed(&self) {
        if self.commits.fetch_add(1, Ordering::Relaxed) % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
            let _ = self.nudge.try_send(());
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.nudge.try_send(());
    }
}

/// A passive checkpoint; when the log has grown past [`WAL_RESTART_FRAMES`] anyway, a restart
/// with this process's writer held, so no write of ours is half-way while SQLite waits for the
/// readers to move to the newest snapshot, and the next commit writes the log from its start.
/// Writers wait for the lock on the async mutex meanwhile, not in SQLite's sleeping busy
/// handler on a runtime thread.
fn checkpoint(
    conn: &SqliteConn,
    writer: &std::sync::Weak<tokio::sync::Mutex<SqliteConn>>,
) -> Result<(), Error> {
    let frames: i64 = conn
        .conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if frames < wal_restart_frames() {
        return Ok(());
    }
    let Some(writer) = writer.upgrade() else {
        return Ok(());
    };
    let _writes_paused = writer.blocking_lock();
    let restarting = std::time::Instant::now();
    let r = conn.batch("PRAGMA wal_checkpoint(RESTART)");
    let held = restarting.elapsed();
    if held > Duration::from_secs(1) {
        tracing::warn!(frames, held_ms = held.as_millis() as u64,
            "restarting the SQLite log held this database's writes for over a second (a busy disk?)");
    }
    r
}

/// Applies migrations that are not applied yet, recording them in `_sqlx_migrations` exactly as
/// sqlx's migrator does, so databases created by earlier builds (and by sqlx) stay valid.
pub fn migrate(conn: &mut SqliteConn, migrator: &sqlx::migrate::Migrator) -> Result<(), Error> {
    conn.batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, \
         description TEXT NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
         success BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
    )?;
    let applied = conn.run(
        "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
        &[],
        true,
    )?;
    let mut seen = HashMap::new();
    for r in &applied.rows {
        let version: i64 = r.try_get("version")?;
        if !r.try_get::<bool, _>("success")? {
            return Err(Error::Migrate(format!(
                "migration {version} failed part-way earlier; the database needs an operator"
            )));
        }
        seen.insert(version, r.try_get::<Vec<u8>, _>("checksum")?);
    }
    for m in migrator.iter() {
        if m.migration_type.is_down_migration() {
            continue;
        }
        if let Some(sum) = seen.get(&m.version) {
            if sum.as_slice() != m.checksum.as_ref() {
                return Err(Error::Migrate(format!(
                    "migration {} ({}) was applied with other contents than this build's",
                    m.version, m.description
                )));
            }
            continue;
        }
        let started = std::time::Instant::now();
        let record = format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES ({}, '{}', 1, X'{}', 0);",
            m.version,
            m.description.replace('\'', "''"),
            hex(&m.checksum)
        );
        // As sqlx does: the migration and its record in one transaction, unless the file says
        // `-- no-transaction`.
        let sql = if m.no_tx {
            format!("{}\n;\n{record}", m.sql)
        } else {
            format!("BEGIN IMMEDIATE;\n{}\n;\n{record} COMMIT;", m.sql)
        };
        if let Err(e) = conn.batch(&sql) {
            let _ = conn.batch("ROLLBACK");
            return Err(Error::Migrate(format!(
                "migration {} ({}): {e}",
                m.version, m.description
            )));
        }
        conn.run(
            "UPDATE _sqlx_migrations SET execution_time = $1 WHERE version = $2",
            &[
                Arg::Int(Some(started.elapsed().as_nanos() as i64)),
                Arg::Int(Some(m.version)),
            ],
            false,
        )?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A log cut back below the length it reaches before each restart is allocated again on
    // every cycle (see journal_size_limit).
    #[test]
    fn the_log_is_not_cut_below_the_length_it_restarts_at() {
        let frame = 4096 + 24;
        assert!(journal_size_limit(WAL_RESTART_FRAMES) > WAL_RESTART_FRAMES * frame);
        assert_eq!(
            journal_size_limit(i64::MAX),
            64 << 20,
            "no restarts: as before"
        );
        assert_eq!(journal_size_limit(100), 64 << 20, "never below 64 MB");
        let dir = tempfile::tempdir().unwrap();
        let conn = SqliteConn::open(&dir.path().join("t.db"), true).unwrap();
        let limit: i64 = conn
            .conn
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, journal_size_limit(wal_restart_frames()));
    }

    // The map costs more than it saves under this kit's commit rate (see MMAP_BYTES); a
    // connection that maps its file again by default would bring the munmap storm back.
    #[test]
    fn connections_read_through_no_memory_map_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let conn = SqliteConn::open(&dir.path().join("t.db"), true).unwrap();
        let mapped: i64 = conn
            .conn
            .query_row("PRAGMA mmap_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mapped, 0);
    }
}
