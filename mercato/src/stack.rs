//! Starting services in one process: each on its own port with its own database, exactly as
//! they run on their own. Listeners are bound first, so that with port 0 (the tests) every
//! service learns the real address of the auth service before it is built.

use anyhow::Context;
use futures::future::BoxFuture;
use mercato_kit::config::Env;
use mercato_kit::db::Migrations;
use mercato_kit::events::{Bus, EmbeddedBus, KafkaBus, KafkaOptions, NatsBus, NatsOptions};
use mercato_kit::http::Service;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One service as `mercato` runs it, in one row: `up`, `serve`, `migrate` and the tests all
/// go through [`TABLE`], so a new service is one more row.
pub struct ServiceDef {
    pub name: &'static str,
    /// `MERCATO_<NAME>_PORT` when unset.
    pub default_port: u16,
    /// How the others find it when they start together: each variable, unless set, becomes its
    /// bound address followed by the path.
    pub found_at: &'static [(&'static str, &'static str)],
    /// Its migrations, for a service with a database of its own.
    pub migrations: Option<fn() -> Migrations>,
    /// Reads its configuration, for the errors it finds (reported all at once, before
    /// anything listens).
    check: fn(&mut Env),
    /// Reads and logs its configuration and builds it, on the bus the stack shares.
    build: Build,
}

/// Builds a service from the environment, on the stack's bus; `true` when it runs alone.
type Build = for<'a> fn(&'a mut Env, Arc<dyn Bus>, bool) -> BoxFuture<'a, anyhow::Result<Service>>;

/// A row of [`TABLE`] for the service crate `$krate`: its `Config::read` and its `build`, which
/// takes the stack's bus when `bus` is given.
macro_rules! service {
    ($name:literal, $port:literal, $krate:ident, $migrations:expr, $found_at:expr $(, $bus:ident)?) => {
        ServiceDef {
            name: $name,
            default_port: $port,
            found_at: $found_at,
            migrations: $migrations,
            check: |env| drop($krate::Config::read(env)),
            build: |env, _bus, alone| {
                Box::pin(async move {
                    let c = configured($name, env, $krate::Config::read, alone)?;
                    $krate::build(&c $(, service!(@$bus _bus))?).await
                })
            },
        }
    };
    (@bus $b:ident) => { $b };
}

/// Every service this build can run, in start order.
pub const TABLE: &[ServiceDef] = &[
    service!(
        "auth",
        8081,
        mercato_auth,
        Some(mercato_auth::migrations),
        &[("MERCATO_AUTH_URL", "")]
    ),
    service!(
        "catalog",
        8082,
        mercato_catalog,
        Some(mercato_catalog::migrations),
        &[("MERCATO_CATALOG_URL", "")],
        bus
    ),
    service!(
        "inventory",
        8086,
        mercato_inventory,
        Some(mercato_inventory::migrations),
        &[("MERCATO_INVENTORY_URL", "")],
        bus
    ),
    service!(
        "order",
        8083,
        mercato_order,
        Some(mercato_order::migrations),
        &[("MERCATO_ORDER_URL", "")],
        bus
    ),
    service!(
        "cart",
        8085,
        mercato_cart,
        Some(mercato_cart::migrations),
        &[("MERCATO_CART_URL", "")],
        bus
    ),
    service!(
        "payment",
        8084,
        mercato_payment,
        Some(mercato_payment::migrations),
        &[
            ("MERCATO_PAYMENT_URL", ""),
            ("MERCATO_PSP_WEBHOOK_URL", "/api/v1/payments/webhook"),
        ],
        bus
    ),
    service!(
        "psp-mock",
        8090,
        mercato_psp_mock,
        None,
        &[
            ("MERCATO_PSP_URL", ""),
            // The gateway's operator console shows psp-mock's health and chaos.
            ("MERCATO_PSP_MOCK_URL", ""),
        ]
    ),
    // Last: it fronts every service above and learns their addresses from them.
    service!("gateway", 8080, mercato_gateway, None, &[]),
];

/// The names of [`TABLE`], in start order.
pub const SERVICES: &[&str] = &{
    let mut names = [""; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        names[i] = TABLE[i].name;
        i += 1;
    }
    names
};

/// The row of a service [`wanted`] accepted.
fn def(service: &str) -> &'static ServiceDef {
    TABLE
        .iter()
        .find(|d| d.name == service)
        .unwrap_or_else(|| panic!("{service} is not in the service table"))
}

/// Services running in this process.
pub struct Stack {
    /// Base URL of each service, by name.
    pub urls: BTreeMap<&'static str, String>,
    shutdown: CancellationToken,
    /// The event bus the services share.
    pub bus: Arc<dyn Bus>,
    /// The same bus when it is the embedded log (tests inspect it).
    pub embedded_bus: Option<EmbeddedBus>,
    /// The same bus when it is Kafka (tests inspect it).
    pub kafka_bus: Option<KafkaBus>,
    handles: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
}

impl Stack {
    pub fn url(&self, service: &str) -> &str {
        self.urls
            .get(service)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{service} is not running"))
    }

    /// Asks every service to stop and waits until each has finished its in-flight requests.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for (name, h) in self.handles {
            h.await
                .with_context(|| format!("{name} panicked"))?
                .with_context(|| format!("{name} failed"))?;
        }
        Ok(())
    }

    /// Runs until a service fails or `shutdown` fires.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        let mut first_failure = None;
        // Stop everything once any service ends on its own (it failed) or we are told to.
        let watch = async {
            let futs = self
                .handles
                .iter_mut()
                .map(|(n, h)| Box::pin(async move { (*n, h.await) }));
            let ((name, res), _, _) = futures::future::select_all(futs).await;
            (name, res)
        };
        tokio::select! {
            biased;
            _ = token.cancelled() => {}
            (name, res) = watch => {
                // A service that finished cleanly because shutdown began is no failure; the
                // two can be ready at once.
                let clean_stop = token.is_cancelled() && matches!(res, Ok(Ok(())));
                if !clean_stop {
                    first_failure = Some(format!("{name} stopped unexpectedly: {res:?}"));
                }
                token.cancel();
            }
        }
        let _ = self.stop_remaining().await;
        match first_failure {
            Some(f) => anyhow::bail!(f),
            None => Ok(()),
        }
    }

    async fn stop_remaining(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for (_, h) in self.handles.drain(..) {
            if !h.is_finished() {
                let _ = h.await;
            }
        }
        Ok(())
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

fn port_var(service: &str) -> String {
    format!(
        "MERCATO_{}_PORT",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// The secrets services share, each with the file it is kept in when embedded, the services
/// that cannot run without it, and whether their configuration checks it already.
const SHARED_SECRETS: [(&str, &str, &[&str], bool); 2] = [
    // Services trade it for SERVICE tokens (the order's stock pre-check, reading the
    // revocation list); auth checks it.
    (
        "MERCATO_SERVICE_SECRET",
        "service-secret",
        // Every service that checks tokens also reads the auth service's revocation list
        // with its own SERVICE token.
        &[
            "auth",
            "catalog",
            "inventory",
            "order",
            "cart",
            "payment",
            "gateway",
        ],
        false,
    ),
    // The card processor signs its webhooks with it; the payment service checks them.
    (
        "MERCATO_PSP_WEBHOOK_SECRET",
        "psp-webhook-secret",
        &["payment", "psp-mock"],
        true,
    ),
];

/// Embedded, each shared secret is generated once and kept in the data directory (mode 0600),
/// so every process started on that directory agrees on it and nobody else knows it.
/// Distributed (a service on PostgreSQL), the operator sets them: a missing one is a
/// configuration error naming it, not a start that fails later one request at a time.
pub fn ensure_shared_secrets(
    env: &mut Env,
    data_dir: &Path,
    services: &[&str],
    embedded: bool,
) -> anyhow::Result<()> {
    for (var, file, needed_by, checked) in SHARED_SECRETS {
        if env.raw(var).is_some() || !services.iter().any(|s| needed_by.contains(s)) {
            continue;
        }
        if embedded {
            let secret = generated_secret(&data_dir.join(file))?;
            env.set(var, secret);
        } else if !checked {
            env.reject(
                var,
                "a shared secret: set it for every service when they run on PostgreSQL \
                 (only embedded mode generates one)",
            );
        }
    }
    Ok(())
}

/// The secret kept at `path`, created there (32 random bytes, hex, mode 0600) if absent.
fn generated_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_owned());
        }
    }
    use rand::RngCore;
    use std::io::Write;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(s.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(s)
}

/// Logs a service's configuration (secrets masked by its `Debug`): at `info` for a process that
/// runs it alone (its log is its record), at `debug` when it starts with the others (`up`
/// prints one summary for them all instead of a screen of lines).
fn announce(service: &str, config: &dyn std::fmt::Debug, alone: bool) {
    if alone {
        tracing::info!(service, config = ?config, "configuration");
    } else {
        tracing::debug!(service, config = ?config, "configuration");
    }
}

/// Reads a service's configuration, refuses a bad one, and logs it.
fn configured<C: std::fmt::Debug>(
    service: &str,
    env: &mut Env,
    read: fn(&mut Env) -> C,
    alone: bool,
) -> anyhow::Result<C> {
    let c = read(env);
    env.check()?;
    announce(service, &c, alone);
    Ok(c)
}

/// Starts `services` (all of [`SERVICES`] when empty) in this process.
pub async fn start(env: Env, services: &[&str]) -> anyhow::Result<Stack> {
    start_until(env, services, CancellationToken::new()).await
}

/// The services to run: those named, or all (but psp-mock when a real processor is set).
fn wanted(env: &Env, services: &[&str]) -> anyhow::Result<Vec<&'static str>> {
    if let Some(unknown) = services.iter().find(|s| !SERVICES.contains(s)) {
        anyhow::bail!(
            "unknown service {unknown:?}; known: {}",
            SERVICES.join(", ")
        );
    }
    // psp-mock stands in for a card processor; when one is configured, it is not started.
    let external_psp = env.raw("MERCATO_PSP_URL").is_some();
    Ok(SERVICES
        .iter()
        .copied()
        .filter(|s| {
            services.contains(s) || (services.is_empty() && !(*s == "psp-mock" && external_psp))
        })
        .collect())
}

/// Whether a failure to start is worth waiting out: a backend that cannot be reached (yet),
/// as when every container of a deployment starts at once. Anything else (a bad key file, a
/// migration that does not apply) is reported and ends the start.
pub fn unreachable_backend(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<std::io::Error>()
            || cause
                .downcast_ref::<mercato_kit::db::Error>()
                .is_some_and(|e| e.is_unreachable())
            || matches!(
                cause.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_))
            )
            || cause.is::<async_nats::ConnectError>()
            || cause.to_string().contains("JetStream is not available")
    })
}

/// Runs `attempt` until it succeeds, waiting out unreachable backends with a growing pause
/// (and saying so each time), or until `stop`.
pub async fn with_retries<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        let outcome = tokio::select! {
            r = attempt() => r,
            _ = stop.cancelled() => anyhow::bail!("stopped while {what} waited for its backend"),
        };
        match outcome {
            Ok(v) => return Ok(v),
            Err(e) if unreachable_backend(&e) => {
                tracing::warn!(
                    what,
                    error = format!("{e:#}"),
                    retry_in_ms = pause.as_millis() as u64,
                    "a backend is unreachable; not ready, retrying"
                );
                tokio::select! {
                    _ = stop.cancelled() => anyhow::bail!("stopped while {what} waited for its backend: {e:#}"),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The event bus every service of this process uses: NATS JetStream when `MERCATO_NATS_URL` is
/// set, Kafka when `MERCATO_KAFKA_BROKERS` is, else the embedded log (its own SQLite file, or its own schema of the shared
/// PostgreSQL database).
async fn open_bus(
    env: &Env,
    common: &mercato_kit::config::CommonConfig,
    stop: &CancellationToken,
) -> anyhow::Result<(Arc<dyn Bus>, Option<EmbeddedBus>, Option<KafkaBus>)> {
    if let Some(url) = env.raw("MERCATO_NATS_URL") {
        let options = nats_options(&mut env.clone());
        let bus = with_retries("the event bus (NATS)", stop, || {
            NatsBus::connect_with(url, options.clone())
        })
        .await?;
        return Ok((Arc::new(bus), None, None));
    }
    let bus_url = common.database_url.as_ref().map_or_else(
        || {
            format!(
                "sqlite://{}?mode=rwc",
                common.data_dir.join("bus.db").display()
            )
        },
        |u| u.as_str().to_owned(),
    );
    if let Some(brokers) = env.raw("MERCATO_KAFKA_BROKERS") {
        let options = kafka_options(&mut env.clone());
        // The delivery counts Kafka does not keep live where the embedded log would.
        let bus = with_retries("the event bus (Kafka)", stop, || {
            KafkaBus::connect_with(brokers, options.clone(), &bus_url)
        })
        .await?;
        return Ok((Arc::new(bus.clone()), None, Some(bus)));
    }
    let bus = with_retries("the event bus", stop, || EmbeddedBus::open(&bus_url)).await?;
    Ok((Arc::new(bus.clone()), Some(bus), None))
}

/// The NATS settings; bad values are recorded in `env`.
fn nats_options(env: &mut Env) -> NatsOptions {
    let defaults = NatsOptions::default();
    NatsOptions {
        prefix: env.string("MERCATO_NATS_PREFIX", &defaults.prefix),
        partitions: env.int(
            "MERCATO_NATS_PARTITIONS",
            u64::from(defaults.partitions),
            1..=1024,
        ) as u32,
        ..defaults
    }
}

/// The Kafka settings; bad values are recorded in `env`.
fn kafka_options(env: &mut Env) -> KafkaOptions {
    let brokers = env
        .raw("MERCATO_KAFKA_BROKERS")
        .unwrap_or_default()
        .to_owned();
    let well_formed = brokers.split(',').all(|b| {
        b.trim()
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    });
    if !well_formed {
        env.reject("MERCATO_KAFKA_BROKERS", "host:port[,host:port...]");
    }
    let defaults = KafkaOptions::default();
    KafkaOptions {
        prefix: env.string("MERCATO_KAFKA_PREFIX", &defaults.prefix),
        partitions: env.int(
            "MERCATO_KAFKA_PARTITIONS",
            defaults.partitions as u64,
            1..=10_000,
        ) as i32,
        replication: env.int(
            "MERCATO_KAFKA_REPLICATION",
            defaults.replication as u64,
            1..=32,
        ) as i32,
        debug: env.raw("MERCATO_KAFKA_DEBUG").map(str::to_owned),
        ..defaults
    }
}

/// What a port answers while its service waits for a backend: alive, not ready.
fn starting_router(service: &'static str) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let not_yet = move || async move {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "starting", "service": service})),
        )
    };
    axum::Router::new()
        .route(
            "/health/live",
            get(move || async move {
                axum::Json(serde_json::json!({"status": "ok", "service": service}))
            }),
        )
        .route("/health/ready", get(not_yet))
        .route("/health/deep", get(not_yet))
        .fallback(move || async move {
            mercato_kit::problem::Problem::unavailable(format!(
                "the {service} service is starting: waiting for its backends"
            ))
            .with_retry_after(1)
        })
}

/// Like [`start`], giving up the wait for unreachable backends when `stop` fires.
pub async fn start_until(
    mut env: Env,
    services: &[&str],
    stop: CancellationToken,
) -> anyhow::Result<Stack> {
    let wanted = wanted(&env, services)?;
    let alone = wanted.len() == 1;
    let common = mercato_kit::config::CommonConfig::read(&mut env);
    // Embedded: no service of this process keeps its data in PostgreSQL.
    let embedded = wanted.iter().all(|s| {
        !common
            .database_url_for(&mut env.clone(), s)
            .as_str()
            .starts_with("postgres")
    });
    ensure_shared_secrets(&mut env, &common.data_dir, &wanted, embedded)?;
    // Read every service's configuration up front so that all bad values are reported at
    // once, before anything listens.
    for &s in &wanted {
        env.port(&port_var(s), def(s).default_port);
        // Into a scratch copy, whose errors are carried over.
        let mut scratch = env.clone();
        (def(s).check)(&mut scratch);
        env.absorb_errors(&scratch);
    }
    if env.raw("MERCATO_NATS_URL").is_some() {
        env.url("MERCATO_NATS_URL", None, &["nats", "tls"]);
        nats_options(&mut env);
    }
    if env.raw("MERCATO_KAFKA_BROKERS").is_some() {
        if env.raw("MERCATO_NATS_URL").is_some() {
            env.reject(
                "MERCATO_KAFKA_BROKERS",
                "unset, or MERCATO_NATS_URL unset: events go to NATS or to Kafka, not both",
            );
        }
        kafka_options(&mut env);
    }
    env.check()?;
    // "Any free port" for the gateway means any free operator port too (the port variable
    // is about to be rewritten with the port actually bound).
    if env.raw("MERCATO_GATEWAY_PORT") == Some("0") && env.raw("MERCATO_GATEWAY_OPS_PORT").is_none()
    {
        env.set("MERCATO_GATEWAY_OPS_PORT", "0");
    }
    let shutdown = CancellationToken::new();
    let mut listeners = Vec::new();
    let mut starters = Vec::new();
    for &s in &wanted {
        let port = env.port(&port_var(s), def(s).default_port);
        env.check()?;
        let addr: SocketAddr = format!("{}:{port}", common.host)
            .parse()
            .with_context(|| format!("MERCATO_HOST={:?} is not an IP address", common.host))?;
        let l = std::net::TcpListener::bind(addr).with_context(|| {
            format!(
                "{s} cannot listen on {addr}: is another Mercato running? (set {} to move it)",
                port_var(s)
            )
        })?;
        l.set_nonblocking(true)?;
        let bound = l.local_addr()?;
        env.set(&port_var(s), bound.port().to_string());
        // Until the service is built, a second handle on the same socket answers "starting":
        // probes see a live, not-ready process instead of a refused connection.
        let starter_stop = CancellationToken::new();
        let starter = TcpListener::from_std(l.try_clone()?)?;
        let token = starter_stop.clone();
        let limits = mercato_kit::http::HttpSettings::from(&common).connections;
        tokio::spawn(async move {
            let _ = mercato_kit::server::serve(
                starter,
                starting_router(s),
                limits,
                mercato_kit::server::ConnectionMetrics::unregistered(),
                token,
            )
            .await;
        });
        starters.push((s, starter_stop));
        listeners.push((s, TcpListener::from_std(l)?, bound));
    }
    // Services started together find each other at the addresses just bound (which matters
    // when the ports were 0), unless told otherwise.
    for (service, _, addr) in &listeners {
        for (var, path) in def(service).found_at {
            if env.raw(var).is_none() {
                env.set(var, format!("http://{addr}{path}"));
            }
        }
    }
    // The web app's checkout lists psp-mock's test cards when it is psp-mock that pays.
    if env.raw("MERCATO_DEMO_CARDS").is_none() && listeners.iter().any(|(s, _, _)| *s == "psp-mock")
    {
        env.set("MERCATO_DEMO_CARDS", "true".to_owned());
    }
    let stop_starters = |starters: &[(&str, CancellationToken)]| {
        starters.iter().for_each(|(_, t)| t.cancel());
    };
    let (bus, embedded_bus, kafka_bus) = match open_bus(&env, &common, &stop).await {
        Ok(b) => b,
        Err(e) => {
            stop_starters(&starters);
            return Err(e);
        }
    };
    let mut stack = Stack {
        urls: BTreeMap::new(),
        shutdown: shutdown.clone(),
        bus,
        embedded_bus,
        kafka_bus,
        handles: Vec::new(),
    };
    for (name, listener, addr) in listeners {
        let bus = stack.bus.clone();
        let built = with_retries(name, &stop, || {
            let mut env = env.clone();
            let bus = bus.clone();
            async move { (def(name).build)(&mut env, bus, alone).await }
        })
        .await;
        let service = match built {
            Ok(s) => s,
            Err(e) => {
                stop_starters(&starters);
                let _ = stack.stop_remaining().await;
                return Err(e.context(format!("starting {name}")));
            }
        };
        if let Some((_, t)) = starters.iter().find(|(s, _)| *s == name) {
            t.cancel();
        }
        stack.urls.insert(name, format!("http://{addr}"));
        if let Some(ops) = service.ops_addr() {
            // The gateway's operator port: /metrics is there, not on the public port.
            stack.urls.insert("gateway-ops", format!("http://{ops}"));
        }
        stack.handles.push((
            name,
            tokio::spawn(service.run(listener, shutdown.child_token())),
        ));
    }
    Ok(stack)
}

/// Applies every service's migrations to its database and returns what was migrated.
pub async fn migrate(
    mut env: Env,
    services: &[&str],
    stop: CancellationToken,
) -> anyhow::Result<Vec<&'static str>> {
    use mercato_kit::db::{DatabaseUrl, Db};
    let wanted = wanted(&env, services)?;
    let common = mercato_kit::config::CommonConfig::read(&mut env);
    let mut plan: Vec<(&'static str, DatabaseUrl, Migrations)> = Vec::new();
    for &s in &wanted {
        let Some(migrations) = def(s).migrations.map(|m| m()) else {
            continue;
        };
        plan.push((s, common.database_url_for(&mut env, s), migrations));
    }
    env.check()?;
    let mut done = Vec::new();
    for (service, url, migrations) in plan {
        let db = with_retries(service, &stop, || {
            Db::connect(url.as_str(), service, 1, &migrations)
        })
        .await?;
        db.close().await;
        tracing::info!(service, "migrations applied");
        done.push(service);
    }
    Ok(done)
}

/// What `mercato up` shows a person before its banner: one line per setting that shapes the
/// run, secrets masked (a URL's password, the service secret, the admin password).
pub fn summary(
    env: &Env,
    telemetry: &mercato_kit::telemetry::Settings,
) -> Vec<(&'static str, String)> {
    use mercato_kit::db::redact;
    let data_dir = env.raw("MERCATO_DATA_DIR").unwrap_or("./mercato-data");
    let mut lines = vec![
        ("data directory", data_dir.to_owned()),
        (
            "databases",
            env.raw("MERCATO_DATABASE_URL").map_or_else(
                || format!("SQLite, one file per service in {data_dir}"),
                |u| format!("{} (a schema per service)", redact(u)),
            ),
        ),
        (
            "events",
            env.raw("MERCATO_NATS_URL").map_or_else(
                || match env.raw("MERCATO_KAFKA_BROKERS") {
                    Some(b) => format!(
                        "Kafka at {b}, prefix {}",
                        env.raw("MERCATO_KAFKA_PREFIX").unwrap_or("mercato")
                    ),
                    None => "the embedded log (outbox -> bus in this process)".to_owned(),
                },
                |u| {
                    format!(
                        "NATS JetStream at {}, prefix {}",
                        redact(u),
                        env.raw("MERCATO_NATS_PREFIX").unwrap_or("mercato")
                    )
                },
            ),
        ),
        (
            "carts, rate limits",
            env.raw("MERCATO_REDIS_URL").map_or_else(
                || "the cart's database; the gateway's memory".to_owned(),
                |u| format!("Redis at {}", redact(u)),
            ),
        ),
        (
            "card processor",
            env.raw("MERCATO_PSP_URL").map_or_else(
                || "psp-mock, the stand-in started here (test cards only)".to_owned(),
                str::to_owned,
            ),
        ),
        (
            "listening on",
            env.raw("MERCATO_HOST").unwrap_or("127.0.0.1").to_owned(),
        ),
        (
            "service secret",
            if env.raw("MERCATO_SERVICE_SECRET").is_some() {
                "set (****)".to_owned()
            } else {
                format!("generated, kept in {data_dir} (****)")
            },
        ),
    ];
    if let Some(admin) = env.raw("MERCATO_ADMIN_EMAIL") {
        lines.push(("administrator", format!("{admin} (password ****)")));
    }
    lines.push((
        "demo data",
        match env.raw("MERCATO_SEED_DEMO") {
            Some("true") => "seeded on first start".to_owned(),
            _ => "none".to_owned(),
        },
    ));
    lines.push((
        "logs",
        format!(
            "{} on stderr, filter {}",
            match telemetry.pretty {
                Some(true) => "pretty",
                Some(false) => "JSON",
                None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => "pretty",
                None => "JSON",
            },
            telemetry
                .log_filter
                .as_deref()
                .unwrap_or("info,sqlx=warn,tower_http=warn")
        ),
    ));
    lines.push((
        "traces",
        telemetry.traces_endpoint.as_deref().map_or_else(
            || "not exported (set OTEL_EXPORTER_OTLP_ENDPOINT); ids in logs and headers".to_owned(),
            |e| format!("exported over OTLP/HTTP to {}", redact(e)),
        ),
    ));
    if env.raw("CHAOS_MODE") == Some("true") {
        lines.push(("chaos", "CHAOS_MODE: 5% of API requests fail".to_owned()));
    }
    lines
}
