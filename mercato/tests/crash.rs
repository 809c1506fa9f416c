//! Crash and restart: `mercato up` is killed with SIGKILL while sagas are in flight and while
//! orders are still being placed, then started again on the same data directory. Every saga
//! finishes, no order is created twice for one Idempotency-Key, and the card processor (a
//! separate process that survives) saw exactly one authorization per order.

use mercato_kit::testing::until;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVICES: [&str; 7] = [
    "AUTH",
    "CATALOG",
    "INVENTORY",
    "ORDER",
    "PAYMENT",
    "CART",
    "GATEWAY",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ports(Vec<(&'static str, u16)>);

impl Ports {
    fn url(&self, service: &str) -> String {
        let port = self
            .0
            .iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(service))
            .unwrap()
            .1;
        format!("http://127.0.0.1:{port}/api/v1")
    }
}

fn mercato(args: &[&str], dir: &std::path::Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mercato"));
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MERCATO_DATA_DIR", dir)
        .env("MERCATO_LOG", "error")
        .env("MERCATO_ARGON2_MEMORY_KIB", "4096")
        .envs(env.iter().cloned())
        .stderr(Stdio::null());
    c
}

/// A child process that is killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mercato up` and waits until it says it is up.
fn up(dir: &std::path::Path, env: &[(String, String)]) -> Child {
    let mut child = mercato(&["up"], dir, env)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("Ctrl-C") {
            return child;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("mercato up did not come up");
}

async fn login(http: &Client, ports: &Ports, email: &str, password: &str) -> String {
    let v: Value = http
        .post(format!("{}/auth/login", ports.url("auth")))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login {email}: {v}"))
        .to_owned()
}

async fn place(
    http: &Client,
    ports: &Ports,
    token: &str,
    key: &str,
    product: &str,
    card: &str,
) -> Result<Value, String> {
    place_once(http, ports, token, key, product, card).await
}

/// Places an order as a careful client does: a 409 for a key still in flight (its first
/// attempt died with the process) is retried after the Retry-After it names.
async fn place_retrying(
    http: &Client,
    ports: &Ports,
    token: &str,
    key: &str,
    product: &str,
    card: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match place_once(http, ports, token, key, product, card).await {
            Ok(v) => return v,
            Err(e) if e.contains("idempotency_key_in_use") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => panic!("order {key} after restart: {e}"),
        }
    }
}

async fn place_once(
    http: &Client,
    ports: &Ports,
    token: &str,
    key: &str,
    product: &str,
    card: &str,
) -> Result<Value, String> {
    let res = http
        .post(format!("{}/orders", ports.url("order")))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"items": [{"product_id": product, "quantity": 1}], "payment_method": card}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match res.status() {
        StatusCode::CREATED => Ok(res.json().await.unwrap()),
        s => Err(format!("{s}: {}", res.text().await.unwrap_or_default())),
    }
}

#[tokio::test]
async fn a_killed_process_finishes_every_saga_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let psp_dir = tempfile::tempdir().unwrap();
    let ports = Ports(SERVICES.iter().map(|s| (*s, free_port())).collect());
    let psp_port = free_port();
    let mut env: Vec<(String, String)> = ports
        .0
        .iter()
        .map(|(s, p)| (format!("MERCATO_{s}_PORT"), p.to_string()))
        .collect();
    env.push((
        "MERCATO_PSP_URL".into(),
        format!("http://127.0.0.1:{psp_port}"),
    ));
    // Claims of requests that died with the process are taken over after the request timeout.
    env.push(("MERCATO_REQUEST_TIMEOUT_MS".into(), "3000".into()));
    // The processor runs apart, on a data directory of its own: the webhook secret is shared
    // by hand, as an operator would.
    let webhook_secret = (
        "MERCATO_PSP_WEBHOOK_SECRET".to_owned(),
        "crash-test-webhook-secret".to_owned(),
    );
    env.push(webhook_secret.clone());
    env.push(("MERCATO_GATEWAY_OPS_PORT".into(), free_port().to_string()));
    let payment_port = ports.0.iter().find(|(s, _)| *s == "PAYMENT").unwrap().1;
    let _psp = Killed(
        mercato(
            &["serve", "psp-mock"],
            psp_dir.path(),
            &[
                ("MERCATO_PSP_MOCK_PORT".into(), psp_port.to_string()),
                (
                    "MERCATO_PSP_WEBHOOK_URL".into(),
                    format!("http://127.0.0.1:{payment_port}/api/v1/payments/webhook"),
                ),
                webhook_secret.clone(),
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );

    let mut running = Killed(up(dir.path(), &env));
    let http = Client::new();
    let admin = login(&http, &ports, "admin@mercato.local", "Admin-demo-2026").await;
    let customer = login(
        &http,
        &ports,
        "customer@mercato.local",
        "Customer-demo-2026",
    )
    .await;
    let products: Value = http
        .get(format!(
            "{}/products?limit=1&sort=price_asc",
            ports.url("catalog")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let product = products["items"][0]["id"].as_str().unwrap().to_owned();
    until(
        "demo stock to reach inventory",
        Duration::from_secs(20),
        || async {
            http.put(format!("{}/inventory/{product}", ports.url("inventory")))
                .bearer_auth(&admin)
                .json(&json!({"on_hand": 100}))
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::OK
        },
    )
    .await;

    // 24 orders at once, a third of them on a card that needs retries, so sagas are mid-way
    // when the process dies; the kill comes once half of the answers are in.
    let keys: Vec<String> = (0..24).map(|i| format!("crash-order-{i}")).collect();
    let card = |i: usize| {
        if i.is_multiple_of(3) {
            "pm_card_processingError"
        } else {
            "pm_card_visa"
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, key) in keys.iter().enumerate() {
        let (http, key, customer, product, tx) = (
            http.clone(),
            key.clone(),
            customer.clone(),
            product.clone(),
            tx.clone(),
        );
        let ports = Ports(ports.0.clone());
        tokio::spawn(async move {
            let r = place(&http, &ports, &customer, &key, &product, card(i)).await;
            let _ = tx.send((i, r));
        });
    }
    drop(tx);
    let mut answered = 0;
    while answered < keys.len() / 2 {
        let _ = rx.recv().await.unwrap();
        answered += 1;
    }
    running.0.kill().unwrap(); // SIGKILL: no graceful anything
    running.0.wait().unwrap();
    while rx.recv().await.is_some() {}

    let _running = Killed(up(dir.path(), &env));
    // The client retries every order with its own key: one order per key, whatever happened.
    let mut ids = std::collections::BTreeSet::new();
    for (i, key) in keys.iter().enumerate() {
        let o = place_retrying(&http, &ports, &customer, key, &product, card(i)).await;
        ids.insert(o["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), keys.len(), "one order per Idempotency-Key");
    for id in &ids {
        until(
            &format!("order {id} PAID"),
            Duration::from_secs(30),
            || async {
                let o: Value = http
                    .get(format!("{}/orders/{id}?wait=5", ports.url("order")))
                    .bearer_auth(&customer)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert!(!matches!(o["status"].as_str(), Some("CANCELLED")), "{o}");
                o["status"] == "PAID"
            },
        )
        .await;
    }
    let listed: Value = http
        .get(format!("{}/orders?limit=100", ports.url("order")))
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        keys.len(),
        "no extra orders"
    );
    let stats: Value = http
        .get(format!("http://127.0.0.1:{psp_port}/v1/test/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["authorizations"],
        keys.len(),
        "one authorization per order: {stats}"
    );
    let stock: Value = http
        .get(format!("{}/inventory/{product}", ports.url("inventory")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(100), Some(keys.len() as i64)),
        "{stock}"
    );
}
