//! `mercato`: run every service embedded (`up`) or one service on its own (`serve`), and
//! measure (`load`) or check (`audit`) a running one.

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use anyhow::Context;
use clap::{Parser, Subcommand};
use mercato::stack;
use mercato_kit::config::Env;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mercato",
    version,
    about = "Mercato, an e-commerce order platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in this process, each on its own port, with SQLite files under the
    /// data directory and demo data on first start.
    Up {
        /// Where the databases and keys live [env: MERCATO_DATA_DIR] [default: ./mercato-data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Do not seed the demo catalog and accounts.
        #[arg(long)]
        no_seed: bool,
    },
    /// Load a running Mercato through its API (closed loop, or open loop at a fixed rate) and
    /// measure acceptance and the time to PAID.
    Load(mercato::load::LoadArgs),
    /// Check the invariants of a running Mercato across its services (exit 0 clean, 1 when
    /// anything is off, 2 when it could not run).
    Audit(mercato::audit::AuditArgs),
    /// Measure what this machine allows (SQLite's and PostgreSQL's single-row commit rates), or
    /// serve a trivial HTTP handler for wrk, so benchmark figures read as ratios.
    Ceilings(mercato::ceilings::CeilingsArgs),
    /// Apply the database migrations of every service (or the ones named) and exit.
    Migrate {
        /// Services to migrate; all of them when none is named.
        services: Vec<String>,
    },
    /// Run one service on its own (configure it with MERCATO_* variables).
    Serve {
        /// One of: auth, catalog, inventory, order, cart, payment, psp-mock, gateway.
        service: String,
    },
}

// jemalloc rather than glibc's malloc: under load glibc kept freed memory, the dynamic mmap
// threshold pulling large short-lived blocks (argon2's, SQLite's) into arenas it never gave
// back; `mercato up` sat at 938 MB RSS after 18,000 orders with a 168 MB heap peak
// (heaptrack). Measured in docs/BENCHMARKS.md, "Memory".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let single = match &cli.command {
        Command::Serve { service } => Some(service.as_str()),
        _ => None,
    };
    let settings = mercato_kit::telemetry::Settings::from_env(single);
    let telemetry = mercato_kit::telemetry::init_with(settings.clone());
    let mut env = Env::from_process();
    let result = match cli.command {
        Command::Up { data_dir, no_seed } => {
            if let Some(d) = data_dir {
                env.set("MERCATO_DATA_DIR", d.display().to_string());
            }
            if env.raw("MERCATO_SEED_DEMO").is_none() {
                env.set("MERCATO_SEED_DEMO", (!no_seed).to_string());
            } else if no_seed {
                env.set("MERCATO_SEED_DEMO", "false");
            }
            up(env, &settings).await
        }
        Command::Serve { service } => serve(env, &service).await,
        Command::Migrate { services } => migrate(env, &services).await,
        Command::Load(args) => mercato::load::run(args).await,
        Command::Ceilings(args) => mercato::ceilings::run(args).await,
        Command::Audit(args) => return mercato::audit::main(args).await,
    };
    // The spans of the last requests are still queued for export.
    // (It waits for the exporter, which runs on this runtime: off the async threads.)
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mercato: {e:#}");
            if e.downcast_ref::<mercato_kit::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn up(env: Env, telemetry: &mercato_kit::telemetry::Settings) -> anyhow::Result<()> {
    let seeded = env.raw("MERCATO_SEED_DEMO").is_some_and(|v| v == "true");
    let data_dir = env
        .raw("MERCATO_DATA_DIR")
        .unwrap_or("./mercato-data")
        .to_owned();
    eprintln!("Starting Mercato (embedded, data in {data_dir})...");
    let started = std::time::Instant::now();
    let summary = stack::summary(&env, telemetry);
    let running = stack::start_until(env, &[], stopped_by_signal()).await?;
    println!("\nConfiguration (MERCATO_* variables change it: docs/DEPLOY.md):");
    for (name, value) in summary {
        println!("  {name:<20}{value}");
    }
    println!(
        "\nMercato is up in {:.1} s.",
        started.elapsed().as_secs_f64()
    );
    if let Some(gw) = running.urls.get("gateway") {
        println!("\n  Shop       {gw}/   (storefront and seller back office)");
        println!("  API        {gw}/api/v1");
        println!("  API docs   {gw}/docs   (OpenAPI {gw}/openapi.json)");
    }
    if let Some(ops) = running.urls.get("gateway-ops") {
        println!("  Operators  {ops}/metrics   (the gateway's metrics, not on its public port)");
    }
    println!("\nEach service also answers on its own port:");
    for (name, url) in running
        .urls
        .iter()
        .filter(|(n, _)| !n.starts_with("gateway"))
    {
        println!("  {name:<10} {url}/api/v1   (health {url}/health/ready, API {url}/openapi.json)");
    }
    if seeded {
        println!("\nDemo logins (\"Sign in\" in the shop, or POST /api/v1/auth/login):");
        for a in mercato_kit::demo::ACCOUNTS {
            println!("  {:<9} {:<24} {}", a.role.as_str(), a.email, a.password);
        }
    }
    // Where every service listens, for `mercato load` and `mercato audit` on this machine
    // (the ports may have been 0).
    let endpoints = std::path::Path::new(&data_dir).join(mercato::shop::ENDPOINTS_FILE);
    std::fs::write(&endpoints, serde_json::to_vec_pretty(&running.urls)?)
        .with_context(|| format!("writing {}", endpoints.display()))?;
    println!("\nPress Ctrl-C to stop.");
    let token = running.shutdown_token();
    tokio::spawn(async move {
        mercato_kit::http::shutdown_signal().await;
        token.cancel();
    });
    let stopped = running.wait().await;
    let _ = std::fs::remove_file(&endpoints);
    stopped
}

/// A token cancelled on SIGINT/SIGTERM, so a start that is waiting for its backends can be
/// stopped too.
fn stopped_by_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        mercato_kit::http::shutdown_signal().await;
        t.cancel();
    });
    token
}

async fn migrate(env: Env, services: &[String]) -> anyhow::Result<()> {
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let done = stack::migrate(env, &names, stopped_by_signal()).await?;
    println!("migrations applied: {}", done.join(", "));
    Ok(())
}

async fn serve(env: Env, service: &str) -> anyhow::Result<()> {
    let running = stack::start_until(env, &[service], stopped_by_signal()).await?;
    for (name, url) in &running.urls {
        tracing::info!(service = name, %url, "listening");
    }
    let token = running.shutdown_token();
    tokio::spawn(async move {
        mercato_kit::http::shutdown_signal().await;
        token.cancel();
    });
    running.wait().await
}
