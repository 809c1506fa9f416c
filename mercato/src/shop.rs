//! How `mercato load` and `mercato audit` find and sign in to a running shop: through one
//! gateway (`--target`), at each service's own URL (`--order-url` ...), or, with neither, where
//! `mercato up` says it is listening (`endpoints.json` in its data directory) or else at the
//! ports `up` would use (`MERCATO_<SERVICE>_PORT`, `MERCATO_HOST`, the defaults). So on the
//! machine that runs `mercato up`, neither command needs an argument.

use anyhow::{bail, Context};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file `mercato up` writes into its data directory while it runs: each service's URL.
pub const ENDPOINTS_FILE: &str = "endpoints.json";

/// The services a client of the shop may talk to.
pub const CLIENT_SERVICES: &[&str] = &["auth", "catalog", "order", "payment", "cart", "inventory"];

#[derive(Debug, Clone, clap::Args)]
pub struct ShopArgs {
    /// The gateway of the shop (for example https://shop.example.com): every request goes
    /// through it.
    #[arg(long)]
    pub target: Option<String>,
    /// The data directory of a `mercato up` on this machine; its endpoints.json says where the
    /// services listen.
    #[arg(long, env = "MERCATO_DATA_DIR", default_value = "./mercato-data")]
    pub data_dir: PathBuf,
    /// The auth service's own URL (overrides the above for it).
    #[arg(long)]
    pub auth_url: Option<String>,
    #[arg(long)]
    pub catalog_url: Option<String>,
    #[arg(long)]
    pub order_url: Option<String>,
    #[arg(long)]
    pub inventory_url: Option<String>,
    #[arg(long)]
    pub payment_url: Option<String>,
    #[arg(long)]
    pub cart_url: Option<String>,
    /// The admin to sign in as (the demo admin by default).
    #[arg(
        long,
        env = "MERCATO_ADMIN_EMAIL",
        default_value = "admin@mercato.local"
    )]
    pub admin_email: String,
    #[arg(
        long,
        env = "MERCATO_ADMIN_PASSWORD",
        default_value = "Admin-demo-2026",
        hide_env_values = true
    )]
    pub admin_password: String,
}

impl ShopArgs {
    fn explicit(&self, service: &str) -> Option<&String> {
        match service {
            "auth" => self.auth_url.as_ref(),
            "catalog" => self.catalog_url.as_ref(),
            "order" => self.order_url.as_ref(),
            "inventory" => self.inventory_url.as_ref(),
            "payment" => self.payment_url.as_ref(),
            "cart" => self.cart_url.as_ref(),
            _ => None,
        }
    }
}

/// Where one service is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    base: String,
    /// Through the gateway: admin routes are `/api/v1/admin/{service}/...` there.
    gateway: bool,
}

/// A running shop, as a client reaches it.
#[derive(Clone)]
pub struct Shop {
    places: BTreeMap<&'static str, Place>,
    pub http: Client,
}

fn trimmed(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// What `mercato up` wrote into `dir`, if it is running from there.
fn endpoints_in(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join(ENDPOINTS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The URL `mercato up` listens on for `service` when run with this process's environment.
fn default_url(service: &str) -> String {
    let host = std::env::var("MERCATO_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let var = format!("MERCATO_{}_PORT", service.to_ascii_uppercase());
    let port = std::env::var(var)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| {
            crate::stack::TABLE
                .iter()
                .find(|d| d.name == service)
                .map_or(0, |d| d.default_port)
        });
    format!("http://{host}:{port}")
}

impl Shop {
    /// Resolves every service's address (see the module doc) with a client of `connections`
    /// pooled keep-alive connections per host.
    pub fn resolve(a: &ShopArgs, connections: usize) -> anyhow::Result<Shop> {
        let written = endpoints_in(&a.data_dir);
        let mut places = BTreeMap::new();
        for &service in CLIENT_SERVICES {
            let place = if let Some(url) = a.explicit(service) {
                Place {
                    base: trimmed(url),
                    gateway: false,
                }
            } else if let Some(t) = &a.target {
                Place {
                    base: trimmed(t),
                    gateway: true,
                }
            } else if let Some(url) = written.as_ref().and_then(|w| w.get(service)) {
                Place {
                    base: trimmed(url),
                    gateway: false,
                }
            } else {
                Place {
                    base: default_url(service),
                    gateway: false,
                }
            };
            places.insert(service, place);
        }
        let http = Client::builder()
            .pool_max_idle_per_host(connections.max(1))
            .tcp_nodelay(true)
            .http1_only()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Shop { places, http })
    }

    /// A shop whose services are at these URLs (the tests' in-process stacks).
    pub fn at(urls: &BTreeMap<&'static str, String>) -> Shop {
        let places = CLIENT_SERVICES
            .iter()
            .filter_map(|s| {
                urls.get(s).map(|u| {
                    (
                        *s,
                        Place {
                            base: trimmed(u),
                            gateway: false,
                        },
                    )
                })
            })
            .collect();
        Shop {
            places,
            http: Client::new(),
        }
    }

    fn place(&self, service: &str) -> &Place {
        self.places
            .get(service)
            .unwrap_or_else(|| panic!("{service} is not a client service"))
    }

    /// `{service}/api/v1{path}`.
    pub fn api(&self, service: &str, path: &str) -> String {
        format!("{}/api/v1{path}", self.place(service).base)
    }

    /// A service's own admin route `/api/v1/admin{path}`, through the gateway when that is
    /// how the service is reached (`/api/v1/admin/{service}{path}` there).
    pub fn admin(&self, service: &str, path: &str) -> String {
        let p = self.place(service);
        if p.gateway {
            format!("{}/api/v1/admin/{service}{path}", p.base)
        } else {
            format!("{}/api/v1/admin{path}", p.base)
        }
    }

    /// Where the shop is, for the report.
    pub fn describe(&self) -> String {
        let bases: std::collections::BTreeSet<&str> =
            self.places.values().map(|p| p.base.as_str()).collect();
        if bases.len() == 1 {
            bases.into_iter().next().unwrap_or_default().to_owned()
        } else {
            format!("order service at {}", self.place("order").base)
        }
    }

    /// Signs in and returns the access token.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let url = self.api("auth", "/auth/login");
        let res = self
            .http
            .post(&url)
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .with_context(|| format!("reaching {url}: is Mercato running?"))?;
        if res.status() != StatusCode::OK {
            bail!(
                "signing in as {email} failed ({}): {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        }
        Ok(res.json::<Value>().await?["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// GETs JSON as `token`; any answer but 200 is an error naming the URL. A 429 or 503
    /// (a gateway's rate limit, a shop shedding load) is waited out as its `Retry-After` says,
    /// a few times, since an audit of a big shop reads many pages.
    pub async fn get_json(&self, url: &str, token: Option<&str>) -> anyhow::Result<Value> {
        let mut attempt = 0;
        let res = loop {
            let mut req = self.http.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req
                .send()
                .await
                .with_context(|| format!("reaching {url}"))?;
            let busy = matches!(
                res.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            attempt += 1;
            if !busy || attempt >= 5 {
                break res;
            }
            let wait = mercato_kit::client::retry_after(res.headers())
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(5));
            tokio::time::sleep(wait).await;
        };
        let status = res.status();
        if status != StatusCode::OK {
            bail!(
                "{url} answered {status}: {}",
                res.text().await.unwrap_or_default()
            );
        }
        res.json()
            .await
            .with_context(|| format!("reading the answer of {url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        shop: ShopArgs,
    }

    #[test]
    fn a_gateway_target_routes_admin_paths_through_it_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::parse_from([
            "x",
            "--target",
            "https://shop.example/",
            "--order-url",
            "http://10.0.0.5:8083",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        let shop = Shop::resolve(&cli.shop, 4).unwrap();
        assert_eq!(
            shop.admin("inventory", "/audit/stock"),
            "https://shop.example/api/v1/admin/inventory/audit/stock"
        );
        assert_eq!(
            shop.api("catalog", "/products"),
            "https://shop.example/api/v1/products"
        );
        assert_eq!(
            shop.admin("order", "/audit/orders"),
            "http://10.0.0.5:8083/api/v1/admin/audit/orders"
        );
    }

    #[test]
    fn without_flags_the_endpoints_up_wrote_are_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(ENDPOINTS_FILE),
            r#"{"order": "http://127.0.0.1:41234", "gateway": "http://127.0.0.1:41230"}"#,
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--data-dir", dir.path().to_str().unwrap()]);
        let shop = Shop::resolve(&cli.shop, 4).unwrap();
        assert_eq!(
            shop.api("order", "/orders"),
            "http://127.0.0.1:41234/api/v1/orders"
        );
        assert_eq!(
            shop.admin("order", "/audit/events"),
            "http://127.0.0.1:41234/api/v1/admin/audit/events"
        );
    }
}
