//! What the payment tests share: the real psp-mock and the payment service, each on
//! 127.0.0.1:0 with a temporary SQLite database, psp-mock's webhooks pointed at the service,
//! tokens signed by a fixed test key, and helpers that build saga envelopes and wait for the
//! worker by polling the database against a deadline.
//!
//! Set `MERCATO_TEST_DATABASE_URL` (for example `postgres://postgres@127.0.0.1:5432/postgres`)
//! to run every test on PostgreSQL instead, each in a fresh database of its own.

#![allow(dead_code)]

use mercato_auth::keys::SigningKey;
use mercato_kit::auth::{Claims, Role, Verifier};
use mercato_kit::client::Policy;
use mercato_kit::config::Env;
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::*;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::events::{Consumer, EmbeddedBus, Envelope};
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::testing::{drop_pg_database, fresh_pg_database};
use mercato_kit::time::{now_us, to_rfc3339};
use mercato_payment::domain::Status;
use mercato_payment::psp::PspClient;
use mercato_payment::service::Payments;
use mercato_payment::store::{self, Payment};
use mercato_payment::worker::Worker;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The webhook secret psp-mock and the service share in these tests.
pub const SECRET: &str = "whsec_payment_tests";

/// A processor client of its own (its own breaker, on a registry of its own), as one replica's
/// worker has.
pub fn processor(url: &str, policy: Policy) -> PspClient {
    PspClient::new(url, policy, &mercato_kit::metrics::Metrics::new("payment")).unwrap()
}
/// How long a test waits for the worker, the relay or the processor.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub use mercato_kit::testing::until_some;

fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support/test-signing-key.pem");
        SigningKey::load_or_create(&path).expect("the test key loads")
    })
}

pub struct Options {
    /// Run the payment service (HTTP, consumer task, worker). Off, the test drives the
    /// worker itself, step by step.
    pub run_service: bool,
    /// Point the service at this processor instead of the psp-mock started here.
    pub psp_url: Option<String>,
    /// `MERCATO_PSP_TIMEOUT_MS` and `MERCATO_PSP_RETRY_MAX_MS`.
    pub psp_timeout_ms: u64,
    pub psp_retry_max_ms: u64,
    /// `MERCATO_PROCESSOR_BREAKER_RESET_MS`.
    pub processor_breaker_reset_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            run_service: true,
            psp_url: None,
            // The production default: 2 s is tight on a loaded CI machine, and a deadline missed
            // by a healthy psp-mock changes the exact attempt counts the saga tests assert.
            psp_timeout_ms: 5000,
            psp_retry_max_ms: 60_000,
            processor_breaker_reset_ms: 30_000,
        }
    }
}

pub struct Harness {
    pub payments: Arc<Payments>,
    pub consumer: Consumer,
    /// The payment service's base URL (only answers with `run_service`).
    pub url: String,
    pub psp_url: String,
    /// The processor the service was configured with.
    pub configured_psp_url: String,
    /// The service's database, for replicas of it.
    database_url: mercato_kit::db::DatabaseUrl,
    /// How the service calls the processor (its timeout and breaker reset); replicas and
    /// workers a test builds call it the same way unless the test changes this.
    pub processor_policy: Policy,
    pub bus: EmbeddedBus,
    pub http: reqwest::Client,
    stop: CancellationToken,
    handles: Vec<JoinHandle<std::io::Result<()>>>,
    /// The PostgreSQL server and the database to drop at the end, when running on PostgreSQL.
    postgres: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Harness {
        // `RUST_LOG=mercato_payment=debug cargo test ... -- --nocapture` shows what happened.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_owned();
        let pay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let psp_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pay_addr = pay_listener.local_addr().unwrap();
        let psp_addr = psp_listener.local_addr().unwrap();
        let url = format!("http://{pay_addr}");
        let psp_url = format!("http://{psp_addr}");

        let mut env = Env::from_pairs([
            ("MERCATO_DATA_DIR", data.clone()),
            ("MERCATO_PSP_WEBHOOK_SECRET", SECRET.to_owned()),
            (
                "MERCATO_PSP_WEBHOOK_URL",
                format!("{url}/api/v1/payments/webhook"),
            ),
        ]);
        let psp_config = mercato_psp_mock::Config::read(&mut env);
        env.check().unwrap();
        let psp = mercato_psp_mock::build(&psp_config).await.unwrap();

        let configured_psp_url = opts.psp_url.clone().unwrap_or_else(|| psp_url.clone());
        let mut postgres = None;
        let mut pairs = vec![];
        if let Ok(server) = std::env::var("MERCATO_TEST_DATABASE_URL") {
            let (server, url) = fresh_pg_database(&server).await;
            pairs.push(("MERCATO_PAYMENT_DATABASE_URL", url.clone()));
            // Tests run side by side against one server (100 connections by default): a pool
            // of 8 per test could exhaust it, and a pool that cannot connect just waits.
            pairs.push(("MERCATO_DB_POOL_SIZE", "3".to_owned()));
            postgres = Some((server, url));
        }
        let mut env = Env::from_pairs(pairs.into_iter().chain([
            ("MERCATO_DATA_DIR", data.clone()),
            ("MERCATO_PSP_WEBHOOK_SECRET", SECRET.to_owned()),
            ("MERCATO_PSP_URL", configured_psp_url.clone()),
            ("MERCATO_PSP_TIMEOUT_MS", opts.psp_timeout_ms.to_string()),
            (
                "MERCATO_PSP_RETRY_MAX_MS",
                opts.psp_retry_max_ms.to_string(),
            ),
            (
                "MERCATO_PROCESSOR_BREAKER_RESET_MS",
                opts.processor_breaker_reset_ms.to_string(),
            ),
        ]));
        let config = mercato_payment::Config::read(&mut env);
        env.check().unwrap();
        let database_url = config.database_url.clone();
        let bus = EmbeddedBus::open(&format!("sqlite://{data}/bus.db?mode=rwc"))
            .await
            .unwrap();
        let key = signing_key();
        let verifier = Verifier::local(
            key.decoding_keys(),
            &config.common.jwt_issuer,
            &config.common.jwt_audience,
        );
        let built = mercato_payment::assemble(&config, Arc::new(bus.clone()), verifier)
            .await
            .unwrap();

        let stop = CancellationToken::new();
        let mut handles = vec![tokio::spawn(psp.run(psp_listener, stop.child_token()))];
        if opts.run_service {
            handles.push(tokio::spawn(
                built.service.run(pay_listener, stop.child_token()),
            ));
        }
        Harness {
            payments: built.payments,
            consumer: built.consumer,
            url,
            psp_url,
            configured_psp_url,
            database_url,
            processor_policy: mercato_payment::psp::policy(
                config.psp_timeout,
                config.processor_breaker_reset,
            ),
            bus,
            http: reqwest::Client::new(),
            stop,
            handles,
            postgres,
            _dir: dir,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for h in self.handles {
            let _ = h.await;
        }
        self.payments.db.close().await;
        if let Some((server, url)) = self.postgres {
            drop_pg_database(&server, &url).await;
        }
    }

    /// Whether the service runs on PostgreSQL (several processes may share it) rather than on
    /// SQLite (one process owns the file).
    pub fn on_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Another process of the service on the same database: connections, in-process signals
    /// and worker of its own, the same processor and settings. Not running: the test drives it.
    pub async fn replica(&self) -> Replica {
        let db = mercato_kit::db::Db::connect(
            self.database_url.as_str(),
            mercato_payment::SERVICE,
            3,
            &mercato_payment::migrations(),
        )
        .await
        .unwrap();
        let payments = Payments::new(db, self.payments.settings.clone());
        let worker = Worker::new(
            payments.clone(),
            processor(&self.configured_psp_url, self.processor_policy.clone()),
        );
        Replica { payments, worker }
    }

    /// Handles an event as the consumer would, then wakes the worker as the bus's
    /// acknowledgement would.
    pub async fn deliver(&self, env: &Envelope) -> Outcome {
        let outcome = self.consumer.process(env).await.unwrap();
        self.payments.wake_worker();
        outcome
    }

    pub fn token(&self, role: Role, subject: &str) -> String {
        let now = now_us() / 1_000_000;
        signing_key()
            .sign(&Claims {
                sub: subject.to_owned(),
                role,
                email: None,
                iss: "mercato-auth".into(),
                aud: "mercato".into(),
                exp: now + 600,
                nbf: now,
                iat: now,
                jti: uuid::Uuid::now_v7().to_string(),
                ver: 0,
                sid: None,
            })
            .unwrap()
    }

    pub fn service_token(&self) -> String {
        self.token(Role::Service, "service:order")
    }

    pub async fn payment_of(&self, order: OrderId) -> Option<Payment> {
        store::payment_by_order(self.payments.db.reader(), order)
            .await
            .unwrap()
    }

    /// Waits until the order's payment satisfies `check`, and returns it.
    pub async fn wait_payment(
        &self,
        order: OrderId,
        what: &str,
        check: impl Fn(&Payment) -> bool,
    ) -> Payment {
        until_some(what, DEADLINE, || async {
            self.payment_of(order).await.filter(|p| check(p))
        })
        .await
    }

    /// A new order of 1500 cents whose authorization the processor answered "pending": the
    /// payment, holding the processor's reference, now waits on the webhook.
    pub async fn awaiting_webhook(&self) -> (OrderId, Payment) {
        let order = OrderId::new();
        self.deliver(&reserved(order, UserId::new(), 1500, "pm_card_pending"))
            .await;
        let p = self
            .wait_payment(order, "a provider reference", |p| p.provider_ref.is_some())
            .await;
        (order, p)
    }

    /// Waits until the order's payment is in `status` with no processor call left queued.
    pub async fn settled(&self, order: OrderId, status: Status) -> Payment {
        let p = self
            .wait_payment(order, &format!("payment {status}"), |p| {
                p.money.status == status
            })
            .await;
        until_some("the queue to drain", DEADLINE, || async {
            store::jobs_of(self.payments.db.reader(), p.id)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        })
        .await;
        self.payment_of(order).await.unwrap()
    }

    /// psp-mock's counters.
    pub async fn psp_stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/v1/test/stats", self.psp_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every event this service emitted, oldest first (published or not).
    pub async fn emitted(&self) -> Vec<Envelope> {
        let rows = mercato_kit::db::query("SELECT envelope FROM outbox ORDER BY seq")
            .fetch_all(self.payments.db.reader())
            .await
            .unwrap();
        rows.iter()
            .map(|r| serde_json::from_str(&r.get::<String, _>("envelope")).unwrap())
            .collect()
    }

    pub async fn emitted_of(&self, event_type: &str, payment: &Payment) -> Vec<Envelope> {
        self.emitted()
            .await
            .into_iter()
            .filter(|e| e.event_type == event_type && e.aggregate_id == payment.id.to_string())
            .collect()
    }

    pub async fn calls(&self, payment: &Payment) -> Vec<store::RecordedCall> {
        store::transactions_of(self.payments.db.reader(), payment.id)
            .await
            .unwrap()
    }

    /// Sends a webhook body to the service, signed with `secret` at `timestamp`.
    pub async fn send_webhook(
        &self,
        body: &str,
        secret: &str,
        timestamp: i64,
    ) -> (u16, serde_json::Value) {
        let header =
            mercato_kit::contracts::webhook::sign(secret.as_bytes(), timestamp, body.as_bytes());
        let res = self
            .http
            .post(format!("{}/api/v1/payments/webhook", self.url))
            .header("content-type", "application/json")
            .header("Psp-Signature", header)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or_default())
    }

    /// Settles a pending processor payment through psp-mock's test control.
    pub async fn settle(&self, provider_ref: &str, outcome: &str) {
        let res = self
            .http
            .post(format!(
                "{}/v1/test/payments/{provider_ref}/settle",
                self.psp_url
            ))
            .json(&serde_json::json!({ "outcome": outcome }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
}

/// A second process of the payment service (see [`Harness::replica`]).
pub struct Replica {
    pub payments: Arc<Payments>,
    pub worker: Worker,
}

// ---- saga envelopes ------------------------------------------------------------------------

pub fn reserved(order: OrderId, customer: UserId, amount_cents: i64, method: &str) -> Envelope {
    reserved_until(
        order,
        customer,
        amount_cents,
        method,
        Duration::from_secs(1800),
    )
}

pub fn reserved_until(
    order: OrderId,
    customer: UserId,
    amount_cents: i64,
    method: &str,
    ttl: Duration,
) -> Envelope {
    let mut env = Envelope::new(
        "inventory",
        INVENTORY_RESERVED,
        order,
        &InventoryReserved {
            order_id: order,
            customer_id: customer,
            items: vec![StockLine {
                product_id: ProductId::new(),
                quantity: 1,
            }],
            expires_at: to_rfc3339(now_us() + ttl.as_micros() as i64),
            amount_cents,
            currency: "USD".into(),
            payment_method: method.into(),
        },
    );
    env.correlation_id = Some(format!("corr-{order}"));
    env
}

/// `order.created` for an order of `amount_cents` USD (the terms a payment is opened on).
pub fn created(order: OrderId, customer: UserId, amount_cents: i64) -> Envelope {
    Envelope::new(
        "order",
        ORDER_CREATED,
        order,
        &OrderCreated {
            order_id: order,
            customer_id: customer,
            items: vec![],
            total_cents: amount_cents,
            currency: "USD".into(),
            payment_method: "pm_card_visa".into(),
        },
    )
}

pub fn cancelled(order: OrderId) -> Envelope {
    Envelope::new(
        "order",
        ORDER_CANCELLED,
        order,
        &OrderCancelled {
            order_id: order,
            reason: CancelReason::CustomerCancelled,
        },
    )
}

pub fn released_expired(order: OrderId) -> Envelope {
    Envelope::new(
        "inventory",
        INVENTORY_RELEASED,
        order,
        &InventoryReleased {
            order_id: order,
            reason: ReleaseReason::Expired,
        },
    )
}

pub fn fulfilled(order: OrderId) -> Envelope {
    Envelope::new(
        "order",
        ORDER_FULFILLED,
        order,
        &OrderRef { order_id: order },
    )
}

pub fn refunded(order: OrderId, amount_cents: Option<i64>) -> Envelope {
    Envelope::new(
        "order",
        ORDER_REFUNDED,
        order,
        &OrderRefunded {
            order_id: order,
            amount_cents,
        },
    )
}
