//! The scenario-test harness: starts the real services in this process on free ports, each
//! with fresh storage, and drives them over HTTP with a real client.
//!
//! Storage is SQLite in a temporary directory by default. When `MERCATO_TEST_DATABASE_URL`
//! names a PostgreSQL server, every stack gets a fresh database there instead, so the same
//! scenarios run on both backends. Events go through the embedded log, or NATS JetStream with
//! `MERCATO_TEST_NATS_URL`, or Kafka with `MERCATO_TEST_KAFKA_BROKERS` (which wins when both
//! are set), each stack under a prefix of its own.

#![allow(dead_code)]

use mercato::stack::{self, Stack};
use mercato_kit::config::Env;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

pub const ADMIN_EMAIL: &str = "root@test.local";
pub const ADMIN_PASSWORD: &str = "Root-password-1";
pub const PASSWORD: &str = "Str0ng-enough-pw";
/// The webhook secret of stacks on PostgreSQL (embedded ones generate theirs).
pub const TEST_WEBHOOK_SECRET: &str = "test-webhook-secret";

pub struct TestStack {
    pub stack: Option<Stack>,
    pub http: Client,
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>,
    /// With `MERCATO_TEST_NATS_URL`: the server and this stack's own subject/stream prefix.
    nats: Option<(String, String)>,
    /// With `MERCATO_TEST_KAFKA_BROKERS`: the brokers and this stack's own topic/group prefix.
    kafka: Option<(String, String)>,
    /// With `MERCATO_TEST_REDIS_URL`: deletes this stack's keys when the test ends.
    redis_keys: Option<mercato_kit::testing::RedisKeys>,
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl TestStack {
    pub async fn start() -> TestStack {
        Self::start_with(&[]).await
    }

    /// Starts every service with these extra `MERCATO_*` settings.
    pub async fn start_with(vars: &[(&str, &str)]) -> TestStack {
        Self::start_in(tempfile::tempdir().expect("temp dir"), vars).await
    }

    /// Stops the services and starts them again on the same data.
    pub async fn restart(mut self, vars: &[(&str, &str)]) -> TestStack {
        if let Some(s) = self.stack.take() {
            s.stop().await.expect("clean stop");
        }
        let pg = self.pg.take();
        let bus = Buses {
            nats: self.nats.take(),
            kafka: self.kafka.take(),
        };
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let mut t = Self::start_in_with_backends(dir, vars, pg, bus).await;
        t.http = self.http.clone();
        // The same keys, kept: the restarted services find their carts again.
        t.redis_keys = self.redis_keys.take();
        t
    }

    pub async fn start_in(dir: tempfile::TempDir, vars: &[(&str, &str)]) -> TestStack {
        let pg = match std::env::var("MERCATO_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(fresh_pg_database(&url).await),
            _ => None,
        };
        let own_prefix = || format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let bus = match (
            test_var("MERCATO_TEST_KAFKA_BROKERS"),
            test_var("MERCATO_TEST_NATS_URL"),
        ) {
            (Some(brokers), _) => Buses {
                nats: None,
                kafka: Some((brokers, own_prefix())),
            },
            (None, Some(url)) => Buses {
                nats: Some((url, own_prefix())),
                kafka: None,
            },
            (None, None) => Buses::default(),
        };
        let mut t = Self::start_in_with_backends(dir, vars, pg, bus).await;
        t.redis_keys = test_redis()
            .map(|url| mercato_kit::testing::RedisKeys::new(&url, redis_prefix(t.dir.path())));
        t
    }

    async fn start_in_with_backends(
        dir: tempfile::TempDir,
        vars: &[(&str, &str)],
        pg: Option<(String, String)>,
        bus: Buses,
    ) -> TestStack {
        let mut env = Env::from_pairs([
            ("MERCATO_DATA_DIR", dir.path().display().to_string()),
            ("MERCATO_ADMIN_EMAIL", ADMIN_EMAIL.into()),
            ("MERCATO_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            // Cheaper password hashing keeps the suite quick; the algorithm is the same.
            ("MERCATO_ARGON2_MEMORY_KIB", "4096".into()),
        ]);
        for s in stack::SERVICES {
            env.set(
                &format!("MERCATO_{}_PORT", s.to_ascii_uppercase().replace('-', "_")),
                "0",
            );
        }
        if let Some((_, db_url)) = &pg {
            env.set("MERCATO_DATABASE_URL", db_url.clone());
            env.set("MERCATO_SERVICE_SECRET", "test-service-secret");
            env.set("MERCATO_PSP_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET);
        }
        if let Some((url, prefix)) = &bus.nats {
            env.set("MERCATO_NATS_URL", url.clone());
            env.set("MERCATO_NATS_PREFIX", prefix.clone());
        }
        if let Some((brokers, prefix)) = &bus.kafka {
            env.set("MERCATO_KAFKA_BROKERS", brokers.clone());
            env.set("MERCATO_KAFKA_PREFIX", prefix.clone());
        }
        // Carts and rate limits in Redis, under a prefix of this stack's own that outlives a
        // restart (the data directory does); the keys are deleted when the test ends.
        if let Some(url) = test_redis() {
            env.set("MERCATO_REDIS_URL", url);
            env.set("MERCATO_REDIS_PREFIX", redis_prefix(dir.path()));
        }
        for (k, v) in vars {
            env.set(k, *v);
        }
        let stack = stack::start(env, &[]).await.expect("stack starts");
        if bus.kafka.is_some() {
            // A consumer on Kafka takes seconds to join its group, and events published before
            // wait on the brokers until it has: what a deployment waits for, readiness.
            let http = Client::new();
            for url in stack.urls.values() {
                ready(&http, url).await;
            }
        }
        TestStack {
            stack: Some(stack),
            http: Client::new(),
            dir,
            pg,
            nats: bus.nats,
            kafka: bus.kafka,
            redis_keys: None,
        }
    }

    /// The event bus as the tests inspect it, whichever backend carries it.
    pub async fn bus(&self) -> BusProbe {
        if let Some(b) = self.stack.as_ref().and_then(|s| s.embedded_bus.clone()) {
            return BusProbe::Embedded(b);
        }
        if let Some(b) = self.stack.as_ref().and_then(|s| s.kafka_bus.clone()) {
            return BusProbe::Kafka(b);
        }
        let (url, prefix) = self.nats.clone().expect("a bus");
        let client = async_nats::connect(&url).await.expect("NATS reachable");
        BusProbe::Nats {
            js: async_nats::jetstream::new(client),
            prefix,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stack.take() {
            s.stop().await.expect("clean stop");
        }
        if let Some((admin_url, db_url)) = self.pg.take() {
            drop_pg_database(&admin_url, &db_url).await;
        }
        if self.nats.is_some() {
            if let BusProbe::Nats { js, prefix } = self.bus().await {
                for stream in nats_streams(&js, &prefix).await {
                    let _ = js.delete_stream(&stream).await;
                }
            }
        }
    }

    /// The secret psp-mock signs webhooks with: generated into the data directory when
    /// embedded, the test's own on PostgreSQL.
    pub fn webhook_secret(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("psp-webhook-secret"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| TEST_WEBHOOK_SECRET.into())
    }

    /// A service's own database, opened beside the running service, for a test that edits
    /// it directly (SQLite file or PostgreSQL schema, whichever the stack runs on).
    pub async fn service_db(&self, service: &str) -> mercato_kit::db::Db {
        let url = match &self.pg {
            Some((_, db_url)) => db_url.clone(),
            None => format!(
                "sqlite://{}/{service}.db?mode=rwc",
                self.dir.path().display()
            ),
        };
        let db = match service {
            "order" => mercato_order::connect(&url, 1).await,
            "inventory" => mercato_inventory::connect(&url, 1).await,
            "payment" => {
                mercato_kit::db::Db::connect(&url, "payment", 1, &mercato_payment::migrations())
                    .await
            }
            other => panic!("no database helper for {other}"),
        };
        db.expect("the service's database opens")
    }

    pub fn base(&self, service: &str) -> String {
        self.stack
            .as_ref()
            .expect("running")
            .url(service)
            .to_owned()
    }

    /// `http://<service>/api/v1<path>`
    pub fn api(&self, service: &str, path: &str) -> String {
        format!("{}/api/v1{path}", self.base(service))
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Response {
        self.http
            .post(self.api("auth", "/auth/register"))
            .json(&json!({"email": email, "password": password, "name": name}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Tokens {
        let res = self
            .http
            .post(self.api("auth", "/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "login of {email}");
        let v: Value = res.json().await.unwrap();
        Tokens {
            access: v["access_token"].as_str().unwrap().to_owned(),
            refresh: v["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn admin(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.access
    }

    /// A fresh account with `role` ("CUSTOMER", "SELLER" or "ADMIN"): its id and access token.
    pub async fn user(&self, role: &str) -> (String, String) {
        let email = format!(
            "{}-{}@test.local",
            role.to_lowercase(),
            uuid::Uuid::new_v4().simple()
        );
        let res = self.register(&email, PASSWORD, "Test User").await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        if role != "CUSTOMER" {
            let admin = self.admin().await;
            let res = self
                .http
                .patch(self.api("auth", &format!("/admin/users/{id}")))
                .bearer_auth(&admin)
                .json(&json!({"role": role}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        (id, self.login(&email, PASSWORD).await.access)
    }
}

/// The event backends a stack was given (at most one of them).
#[derive(Default)]
struct Buses {
    nats: Option<(String, String)>,
    kafka: Option<(String, String)>,
}

fn test_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|u| !u.is_empty())
}

fn test_redis() -> Option<String> {
    test_var("MERCATO_TEST_REDIS_URL")
}

/// This stack's Redis prefix: the data directory outlives a restart, so the prefix does too.
fn redis_prefix(dir: &std::path::Path) -> String {
    let dir_name = dir.file_name().unwrap_or_default().to_string_lossy();
    format!("test:{}:{dir_name}:", std::process::id())
}

/// The sum of the series of `name` at a service's `/metrics` that carry every one of `labels`
/// (each service adds its own `service` label), 0 when there are none.
pub async fn metric(http: &Client, base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let have: Vec<&str> = series_labels.split(',').collect();
            (series_name == name && wanted.iter().all(|w| have.contains(&w.as_str())))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum::<f64>()
}

/// Asserts the response is a problem document with this status and returns it.
pub async fn problem(res: Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "status; body: {body}");
    assert!(
        ct.starts_with("application/problem+json"),
        "content type {ct:?}; body: {body}"
    );
    let v: Value = serde_json::from_str(&body).expect("problem body is JSON");
    assert_eq!(v["status"], status);
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("https://mercato.dev/problems/"),
        "{v}"
    );
    assert!(v["title"].is_string());
    v
}

/// Polls until a condition holds, with a deadline (the kit's, shared by every test suite).
pub use mercato_kit::testing::eventually;

/// A database of its own on PostgreSQL for a whole stack, dropped at the end (the kit's).
pub use mercato_kit::testing::{drop_pg_database, fresh_pg_database};

/// Waits until `base` says it is ready.
pub async fn ready(http: &Client, base: &str) {
    eventually(Duration::from_secs(60), || async {
        let r = http.get(format!("{base}/health/ready")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// A service's audit trail (`/api/v1/admin/audit/trail?query` at `base`), as `admin`.
pub async fn trail(http: &Client, admin: &str, base: &str, query: &str) -> Value {
    let r = http
        .get(format!("{base}/api/v1/admin/audit/trail?{query}"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()
}

/// Waits until the service at `consumer` has handled every event the one at `producer`
/// published about `id` so far, as their audit trails say.
pub async fn consumed_by(
    http: &Client,
    admin: &str,
    producer: &str,
    consumer: &str,
    id: &str,
    wait: Duration,
) {
    let published = trail(http, admin, producer, &format!("mentions={id}")).await;
    let ids: Vec<String> = published["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!ids.is_empty(), "{producer} published nothing about {id}");
    let query = format!("mentions={id}&consumed={}", ids.join(","));
    eventually(wait, || async {
        let t = trail(http, admin, consumer, &query).await;
        (t["consumed"].as_array().unwrap().len() == ids.len()).then_some(())
    })
    .await;
}

/// A shop with a seller, a customer and an admin, for saga scenarios.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Shop {
    pub t: TestStack,
    pub seller: String,
    pub customer: String,
    pub admin: String,
}

impl Shop {
    pub async fn open(vars: &[(&str, &str)]) -> Shop {
        let t = TestStack::start_with(vars).await;
        let (_, seller) = t.user("SELLER").await;
        let (_, customer) = t.user("CUSTOMER").await;
        let admin = t.admin().await;
        Shop {
            t,
            seller,
            customer,
            admin,
        }
    }

    /// A product of the seller with `stock` units on hand, known to every service.
    pub async fn product(&self, price_cents: i64, stock: i64) -> String {
        let sku = format!(
            "SKU-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase()
        );
        let res = self
            .t
            .http
            .post(self.t.api("catalog", "/products"))
            .bearer_auth(&self.seller)
            .json(&json!({"sku": sku, "name": "Saga Test Widget", "category": "widgets", "price_cents": price_cents}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        // The product reaches inventory and order through events, each on its own time.
        eventually(WAIT, || async {
            let r = self
                .t
                .http
                .get(self.t.api("inventory", &format!("/inventory/{id}")))
                .send()
                .await
                .unwrap();
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
        self.consumed_by("order", "catalog", &id).await;
        let res = self
            .t
            .http
            .put(self.t.api("inventory", &format!("/inventory/{id}")))
            .bearer_auth(&self.seller)
            .json(&json!({"on_hand": stock}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{}",
            res.text().await.unwrap()
        );
        id
    }

    /// Waits until `consumer`'s service has handled every event `producer` published about
    /// `id` so far, as their audit trails say.
    pub async fn consumed_by(&self, consumer: &str, producer: &str, id: &str) {
        let (producer, consumer) = (self.t.base(producer), self.t.base(consumer));
        consumed_by(&self.t.http, &self.admin, &producer, &consumer, id, WAIT).await;
    }

    pub async fn order(&self, items: Value, payment_method: &str) -> reqwest::Response {
        self.t
            .http
            .post(self.t.api("order", "/orders"))
            .bearer_auth(&self.customer)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"items": items, "payment_method": payment_method,
                "shipping_address": {"name": "Casey", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}}))
            .send()
            .await
            .unwrap()
    }

    /// Places an order that the pre-check accepts and returns its id.
    pub async fn place(&self, product: &str, quantity: i64, payment_method: &str) -> String {
        let res = self
            .order(
                json!([{"product_id": product, "quantity": quantity}]),
                payment_method,
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "{}",
            res.text().await.unwrap()
        );
        let o: Value = res.json().await.unwrap();
        assert_eq!(o["status"], "PENDING");
        o["id"].as_str().unwrap().to_owned()
    }

    pub async fn get_order(&self, id: &str) -> Value {
        let res = self
            .t
            .http
            .get(self.t.api("order", &format!("/orders/{id}")))
            .bearer_auth(&self.customer)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    pub async fn status_becomes(&self, id: &str, status: &str) -> Value {
        eventually(WAIT, || async {
            let o = self.get_order(id).await;
            (o["status"] == status).then_some(o)
        })
        .await
    }

    pub async fn stock(&self, product: &str) -> Value {
        self.t
            .http
            .get(self.t.api("inventory", &format!("/inventory/{product}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn payment(&self, order: &str) -> Option<Value> {
        let v: Value = self
            .t
            .http
            .get(format!(
                "{}?order_id={order}",
                self.t.api("payment", "/payments")
            ))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = v.get("items").cloned().unwrap_or(v);
        items.as_array().and_then(|a| a.first().cloned())
    }

    pub async fn payment_becomes(&self, order: &str, status: &str) -> Value {
        eventually(WAIT, || async {
            self.payment(order).await.filter(|p| p["status"] == status)
        })
        .await
    }

    pub async fn seller_post(&self, order: &str, action: &str) -> reqwest::Response {
        self.t
            .http
            .post(self.t.api("order", &format!("/orders/{order}/{action}")))
            .bearer_auth(&self.seller)
            .send()
            .await
            .unwrap()
    }

    pub async fn psp_stats(&self) -> Value {
        self.t
            .http
            .get(format!("{}/v1/test/stats", self.t.base("psp-mock")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The event bus seen from a test: every event published, how far behind each consumer is,
/// and a full redelivery.
pub enum BusProbe {
    Embedded(mercato_kit::events::EmbeddedBus),
    Nats {
        js: async_nats::jetstream::Context,
        prefix: String,
    },
    /// The stack's own Kafka bus: its topics, and its consumer groups' commits.
    Kafka(mercato_kit::events::KafkaBus),
}

pub async fn nats_streams(js: &async_nats::jetstream::Context, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mine = format!("{}_", prefix.to_uppercase());
    js.stream_names()
        .try_collect::<Vec<String>>()
        .await
        .expect("stream names")
        .into_iter()
        .filter(|n| n.starts_with(&mine))
        .collect()
}

impl BusProbe {
    /// Every event published so far.
    pub async fn all(&self) -> Vec<mercato_kit::events::Envelope> {
        match self {
            BusProbe::Embedded(b) => b.all().await.unwrap(),
            BusProbe::Nats { js, prefix } => {
                let mut out = Vec::new();
                for name in nats_streams(js, prefix).await {
                    let mut stream = js.get_stream(&name).await.unwrap();
                    let state = stream.info().await.unwrap().state.clone();
                    if state.messages == 0 {
                        continue;
                    }
                    for seq in state.first_sequence..=state.last_sequence {
                        if let Ok(m) = stream.get_raw_message(seq).await {
                            out.push(serde_json::from_slice(&m.payload).unwrap());
                        }
                    }
                }
                out
            }
            BusProbe::Kafka(b) => b.all().await.unwrap(),
        }
    }

    /// Events each consumer has yet to finish, by consumer.
    pub async fn lag(&self) -> Vec<(String, i64)> {
        match self {
            BusProbe::Embedded(b) => b.lag().await.unwrap(),
            BusProbe::Nats { js, prefix } => {
                use futures::TryStreamExt;
                // One consumer name spans the streams it reads and their partitions
                // (`cart_p0`, `cart_p1`, ...): added up per name.
                let mut by_name = std::collections::BTreeMap::<String, i64>::new();
                for name in nats_streams(js, prefix).await {
                    let stream = js.get_stream(&name).await.unwrap();
                    let consumers: Vec<_> = stream.consumers().try_collect().await.unwrap();
                    for c in consumers {
                        let service = match c.name.rsplit_once('_') {
                            Some((service, part))
                                if part == "legacy"
                                    || part
                                        .strip_prefix('p')
                                        .is_some_and(|n| n.parse::<u32>().is_ok()) =>
                            {
                                service.to_owned()
                            }
                            _ => c.name.clone(),
                        };
                        *by_name.entry(service).or_default() +=
                            (c.num_pending + c.num_ack_pending as u64) as i64;
                    }
                }
                by_name.into_iter().collect()
            }
            BusProbe::Kafka(b) => {
                use mercato_kit::events::Bus;
                let mut out = Vec::new();
                for name in b.consumers() {
                    if let Some(behind) = b.lag(&name).await.unwrap() {
                        out.push((name, behind));
                    }
                }
                out
            }
        }
    }

    /// Every consumer starts again from the first event.
    pub async fn rewind_all_consumers(&self) {
        match self {
            BusProbe::Embedded(b) => b.rewind_all_consumers().await.unwrap(),
            BusProbe::Nats { js, prefix } => {
                use futures::TryStreamExt;
                let mut deleted = Vec::new();
                for name in nats_streams(js, prefix).await {
                    let stream = js.get_stream(&name).await.unwrap();
                    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
                    for c in names {
                        stream.delete_consumer(&c).await.unwrap();
                        deleted.push((name.clone(), c));
                    }
                }
                // The services' subscriptions notice and recreate their consumers, which start
                // from the beginning of the stream; until then nothing is "behind", so wait.
                eventually(Duration::from_secs(60), || async {
                    for (stream, consumer) in &deleted {
                        let s = js.get_stream(stream).await.ok()?;
                        s.consumer_info(consumer).await.ok()?;
                    }
                    Some(())
                })
                .await;
            }
            // Returns once every subscription has rewound: their groups' commits are back at
            // the start, so the lag counts the redeliveries until they are done.
            BusProbe::Kafka(b) => b.rewind_all_consumers().await.unwrap(),
        }
    }
}

/// `host:port` of a PostgreSQL URL.
pub fn pg_authority(db_url: &str) -> String {
    db_url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("a URL with user@host:port/db")
        .to_owned()
}

/// A TCP gate in front of `target` (a backend that can go away): while shut, new connections
/// are accepted and dropped at once and the ones passing through are cut; once open, they pass.
/// Returns its port and its switch (`send_replace(false)` shuts it).
pub async fn gate(target: String, open: bool) -> (u16, tokio::sync::watch::Sender<bool>) {
    let (switch, state) = tokio::sync::watch::channel(open);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            if !*state.borrow() {
                drop(inbound);
                continue;
            }
            let target = target.clone();
            let mut shut = state.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = shut.wait_for(|open| !open) => {}
                    }
                }
            });
        }
    });
    (port, switch)
}
