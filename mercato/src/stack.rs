//! Starting services in one process: each on its own port with its own database, exactly as
//! they run on their own. Listeners are bound first, so that with port 0 (the tests) every
//! service learns the real address of the auth service before it is built.

use anyhow::Context;
use mercato_kit::config::Env;
use mercato_kit::events::{Bus, EmbeddedBus};
use mercato_kit::http::Service;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every service this build can run, in start order.
pub const SERVICES: &[&str] = &[
    "auth",
    "catalog",
    "inventory",
    "order",
    "cart",
    "payment",
    "psp-mock",
    // Last: it fronts every service above and learns their addresses from them.
    "gateway",
];

/// Services running in this process.
pub struct Stack {
    /// Base URL of each service, by name.
    pub urls: BTreeMap<&'static str, String>,
    shutdown: CancellationToken,
    /// The event bus the services share.
    pub bus: EmbeddedBus,
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

fn default_port(service: &str) -> u16 {
    match service {
        "gateway" => 8080,
        "auth" => 8081,
        "catalog" => 8082,
        "order" => 8083,
        "payment" => 8084,
        "cart" => 8085,
        "inventory" => 8086,
        "psp-mock" => 8090,
        _ => 0,
    }
}

/// The shared secret services use to get their own tokens. Embedded, it is generated once and
/// kept in the data directory (mode 0600); distributed, the operator sets it.
pub fn ensure_service_secret(env: &mut Env, data_dir: &Path) -> anyhow::Result<()> {
    if env.raw("MERCATO_SERVICE_SECRET").is_some() {
        return Ok(());
    }
    let path = data_dir.join("service-secret");
    let secret = match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => {
            use rand::RngCore;
            use std::io::Write;
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
            std::fs::create_dir_all(data_dir)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            opts.open(&path)
                .and_then(|mut f| f.write_all(s.as_bytes()))
                .with_context(|| format!("writing {}", path.display()))?;
            s
        }
    };
    env.set("MERCATO_SERVICE_SECRET", secret);
    Ok(())
}

/// Reads a service's configuration into a scratch copy of `env` and carries its errors over.
fn validate_config(service: &str, scratch: &mut Env, env: &mut Env) {
    match service {
        "auth" => {
            let _ = mercato_auth::Config::read(scratch);
        }
        "catalog" => {
            let _ = mercato_catalog::Config::read(scratch);
        }
        "psp-mock" => {
            let _ = mercato_psp_mock::Config::read(scratch);
        }
        "inventory" => {
            let _ = mercato_inventory::Config::read(scratch);
        }
        "order" => {
            let _ = mercato_order::Config::read(scratch);
        }
        "payment" => {
            let _ = mercato_payment::Config::read(scratch);
        }
        "cart" => {
            let _ = mercato_cart::Config::read(scratch);
        }
        "gateway" => {
            let _ = mercato_gateway::Config::read(scratch);
        }
        _ => {}
    }
    env.absorb_errors(scratch);
}

async fn build(
    service: &str,
    env: &mut Env,
    bus: &Arc<dyn Bus>,
) -> anyhow::Result<Option<Service>> {
    Ok(match service {
        "auth" => {
            let c = mercato_auth::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_auth::build(&c).await?)
        }
        "catalog" => {
            let c = mercato_catalog::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_catalog::build(&c, bus.clone()).await?)
        }
        "psp-mock" => {
            let c = mercato_psp_mock::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_psp_mock::build(&c).await?)
        }
        "inventory" => {
            let c = mercato_inventory::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_inventory::build(&c, bus.clone()).await?)
        }
        "order" => {
            let c = mercato_order::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_order::build(&c, bus.clone()).await?)
        }
        "payment" => {
            let c = mercato_payment::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_payment::build(&c, bus.clone()).await?)
        }
        "cart" => {
            let c = mercato_cart::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_cart::build(&c, bus.clone()).await?)
        }
        "gateway" => {
            let c = mercato_gateway::Config::read(env);
            env.check()?;
            tracing::info!(service, config = ?c, "configuration");
            Some(mercato_gateway::build(&c).await?)
        }
        _ => None,
    })
}

/// Starts `services` (all of [`SERVICES`] when empty) in this process.
pub async fn start(mut env: Env, services: &[&str]) -> anyhow::Result<Stack> {
    // psp-mock stands in for a card processor; when one is configured, it is not started.
    let external_psp = env.raw("MERCATO_PSP_URL").is_some();
    let wanted: Vec<&'static str> = SERVICES
        .iter()
        .copied()
        .filter(|s| {
            services.contains(s) || (services.is_empty() && !(*s == "psp-mock" && external_psp))
        })
        .collect();
    if let Some(unknown) = services.iter().find(|s| !SERVICES.contains(s)) {
        anyhow::bail!(
            "unknown service {unknown:?}; known: {}",
            SERVICES.join(", ")
        );
    }
    let common = mercato_kit::config::CommonConfig::read(&mut env);
    // Read every service's configuration up front so that all bad values are reported at
    // once, before anything listens.
    for &s in &wanted {
        env.port(&port_var(s), default_port(s));
        validate_config(s, &mut env.clone(), &mut env);
    }
    env.check()?;
    if common.database_url.is_none() {
        ensure_service_secret(&mut env, &common.data_dir)?;
    }
    let mut listeners = Vec::new();
    for &s in &wanted {
        let port = env.port(&port_var(s), default_port(s));
        env.check()?;
        let addr: SocketAddr = format!("{}:{port}", common.host)
            .parse()
            .with_context(|| format!("MERCATO_HOST={:?} is not an IP address", common.host))?;
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "{s} cannot listen on {addr}: is another Mercato running? (set {} to move it)",
                port_var(s)
            )
        })?;
        let bound = l.local_addr()?;
        env.set(&port_var(s), bound.port().to_string());
        listeners.push((s, l, bound));
    }
    // Services started together find each other at the addresses just bound (which matters
    // when the ports were 0), unless told otherwise.
    for (var, service, path) in [
        ("MERCATO_AUTH_URL", "auth", ""),
        ("MERCATO_INVENTORY_URL", "inventory", ""),
        ("MERCATO_CATALOG_URL", "catalog", ""),
        ("MERCATO_ORDER_URL", "order", ""),
        ("MERCATO_PAYMENT_URL", "payment", ""),
        ("MERCATO_CART_URL", "cart", ""),
        ("MERCATO_PSP_URL", "psp-mock", ""),
        (
            "MERCATO_PSP_WEBHOOK_URL",
            "payment",
            "/api/v1/payments/webhook",
        ),
    ] {
        if env.raw(var).is_none() {
            if let Some((_, _, addr)) = listeners.iter().find(|(s, _, _)| *s == service) {
                env.set(var, format!("http://{addr}{path}"));
            }
        }
    }
    // The event bus: a durable log beside the services' data (its own SQLite file, or its own
    // schema of the shared PostgreSQL database).
    let bus_url = common.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            common.data_dir.join("bus.db").display()
        )
    });
    let embedded_bus = EmbeddedBus::open(&bus_url).await?;
    let bus: Arc<dyn Bus> = Arc::new(embedded_bus.clone());
    let shutdown = CancellationToken::new();
    let mut stack = Stack {
        urls: BTreeMap::new(),
        shutdown: shutdown.clone(),
        bus: embedded_bus,
        handles: Vec::new(),
    };
    for (name, listener, addr) in listeners {
        let service = match build(name, &mut env, &bus).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                let _ = stack.stop_remaining().await;
                return Err(e.context(format!("starting {name}")));
            }
        };
        stack.urls.insert(name, format!("http://{addr}"));
        stack.handles.push((
            name,
            tokio::spawn(service.run(listener, shutdown.child_token())),
        ));
    }
    Ok(stack)
}
