//! `mercato ceilings`: what this machine allows, measured with the same code paths the services
//! use, so a benchmark's figures can be read as ratios (docs/BENCHMARKS.md).
//!
//! - single-row commits per second on SQLite (the kit's writer: WAL, synchronous=NORMAL) with
//!   one and with eight writers, and on PostgreSQL (the kit's sqlx pool) with eight clients;
//! - `--serve ADDR`: a trivial axum handler for `wrk` (the HTTP ceiling), until Ctrl-C.

use anyhow::Context;
use mercato_kit::db::{self, Db, Migrations};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct CeilingsArgs {
    /// How long each storage measurement runs.
    #[arg(long, default_value = "5s", value_parser = crate::load::parse_duration)]
    pub duration: Duration,
    /// Concurrent writers for the multi-writer runs.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Also measure this PostgreSQL (a schema of its own, dropped afterwards).
    #[arg(long, env = "MERCATO_CEILINGS_POSTGRES")]
    pub postgres: Option<String>,
    /// Where the SQLite file goes (a temporary directory by default).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Serve a trivial axum handler (`GET /` answers `ok`, `POST /` echoes its JSON body) on
    /// this address until Ctrl-C, for wrk, instead of measuring storage.
    #[arg(long)]
    pub serve: Option<std::net::SocketAddr>,
}

pub async fn run(args: CeilingsArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.serve {
        return serve(addr).await;
    }
    let tmp = tempfile_dir(args.dir.as_deref())?;
    let url = format!("sqlite://{}/ceilings.db?mode=rwc", tmp.display());
    let sqlite = connect(&url, "ceilings").await?;
    println!("ceilings, each for {:?}:", args.duration);
    let one = commits(&sqlite, 1, args.duration).await?;
    println!("  SQLite (kit writer, WAL, synchronous=NORMAL), 1 writer:  {one:>9.0} commits/s");
    let many = commits(&sqlite, args.writers, args.duration).await?;
    println!(
        "  SQLite, {} writers:                                    {many:>9.0} commits/s",
        args.writers
    );
    sqlite.close().await;
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(pg) = &args.postgres {
        let schema = format!("ceilings_test_{}", std::process::id());
        let db = connect(pg, &schema).await?;
        let pg_one = commits(&db, 1, args.duration).await?;
        println!(
            "  PostgreSQL (kit pool), 1 client:                       {pg_one:>9.0} commits/s"
        );
        let pg_many = commits(&db, args.writers, args.duration).await?;
        println!(
            "  PostgreSQL, {} clients:                                 {pg_many:>9.0} commits/s",
            args.writers
        );
        db::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(db.writer())
            .await?;
        db.close().await;
    }
    Ok(())
}

fn tempfile_dir(dir: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    let base = dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("mercato-ceilings-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

async fn connect(url: &str, service: &str) -> anyhow::Result<Db> {
    let db = Db::connect(
        url,
        service,
        16,
        &Migrations {
            sqlite: sqlx::migrate!("./migrations/ceilings/sqlite"),
            postgres: sqlx::migrate!("./migrations/ceilings/postgres"),
        },
    )
    .await?;
    db::query("DELETE FROM ceiling")
        .execute(db.writer())
        .await?;
    Ok(db)
}

/// Single-row transactions (BEGIN, INSERT, COMMIT) from `writers` tasks for `duration`.
async fn commits(db: &Db, writers: usize, duration: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let base = db::query("SELECT COALESCE(MAX(id), 0) AS m FROM ceiling")
        .fetch_one(db.reader())
        .await?
        .try_get::<i64, _>("m")?;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut n: i64 = 0;
            while Instant::now() < deadline {
                let id = base + 1 + (n * writers as i64) + w as i64;
                let mut tx = db.begin().await?;
                db::query("INSERT INTO ceiling (id, body) VALUES ($1, $2)")
                    .bind(id)
                    .bind("an order's worth of text")
                    .execute(&mut tx)
                    .await?;
                tx.commit().await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/",
        get(|| async { "ok" }).post(|body: axum::Json<serde_json::Value>| async move { body }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!(
        "trivial axum handler on http://{}/ (Ctrl-C stops)",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(mercato_kit::http::shutdown_signal())
        .await?;
    Ok(())
}
