//! What the inventory's integration tests share: a fresh database per test, the service wired
//! as `build` wires it (minus the bus), and hand-built events of the other services.
//!
//! Storage is a temporary SQLite file by default. Set `MERCATO_TEST_DATABASE_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`) to run the same tests on PostgreSQL, each in a
//! schema of its own.

#![allow(dead_code)]

use mercato_inventory::consumer::{Handler, CONSUMER};
use mercato_inventory::domain::{Levels, StockChange};
use mercato_inventory::service::{Inventory, Origin, Settings, StockEdit, SweepSignal};
use mercato_inventory::store::{self, Reservation};
use mercato_kit::contracts::types::*;
use mercato_kit::contracts::CancelReason;
use mercato_kit::contracts::{OrderCancelled, OrderCreated, OrderLine, OrderRef, ProductChanged};
use mercato_kit::db::Db;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::events::{Consumer, Envelope};
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::testing::TestDb;
use mercato_kit::time::now_us;
use std::sync::Arc;
use std::time::Duration;

/// Connects to the test's database as one process of the service would.
pub async fn open(tdb: &TestDb) -> Db {
    tdb.open(8, &mercato_inventory::migrations()).await
}

pub const SELLER: UserId = UserId(uuid::Uuid::from_u128(0x5e11e5));

/// The inventory of one test: its database, the use cases, and the event consumer.
pub struct World {
    pub tdb: TestDb,
    pub db: Db,
    pub inv: Arc<Inventory>,
    pub consumer: Consumer,
}

impl World {
    pub async fn new() -> World {
        World::with(Duration::from_secs(1800), false).await
    }

    pub async fn with(ttl: Duration, seed_demo: bool) -> World {
        let tdb = TestDb::new("inventory");
        let db = open(&tdb).await;
        let inv = inventory(db.clone(), ttl, seed_demo);
        let consumer = consumer(&db, &inv);
        World {
            tdb,
            db,
            inv,
            consumer,
        }
    }

    /// A second replica over the same database.
    pub async fn replica(&self) -> Arc<Inventory> {
        let db = open(&self.tdb).await;
        Arc::new(Inventory::new(
            db,
            self.inv.settings.clone(),
            SweepSignal::default(),
        ))
    }

    pub async fn deliver(&self, env: &Envelope) -> Outcome {
        self.consumer.process(env).await.unwrap()
    }

    /// A product known from `product.created`, with `stock` units on hand.
    pub async fn product(&self, stock: i64) -> ProductId {
        let id = ProductId::new();
        let sku = format!("TEST-{}", &id.0.simple().to_string()[20..]);
        assert_eq!(
            self.deliver(&product_event(PRODUCT_CREATED, id, &sku, true))
                .await,
            Outcome::Applied
        );
        if stock > 0 {
            self.set_stock(id, StockChange::Set(stock)).await;
        }
        id
    }

    pub async fn set_stock(&self, product_id: ProductId, change: StockChange) {
        let mut tx = self.db.begin().await.unwrap();
        let edit = StockEdit {
            product_id,
            change,
            note: Some("test"),
            seller: None,
        };
        self.inv
            .change_stock(&mut tx, &edit, now_us(), &Origin::system("test"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    pub async fn levels(&self, p: ProductId) -> Levels {
        self.inv.stock(p).await.unwrap().expect("stock row").levels
    }

    pub async fn reservation(&self, order: OrderId) -> Option<Reservation> {
        self.inv.reservation(order).await.unwrap()
    }

    /// Every event this inventory emitted, oldest first.
    pub async fn outbox(&self) -> Vec<Envelope> {
        mercato_kit::events::pending(self.db.reader(), 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    pub async fn outbox_of(&self, event_type: &str) -> Vec<Envelope> {
        self.outbox()
            .await
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }

    /// Asserts invariant 1 for every product and returns the audit.
    pub async fn assert_books(&self) -> Vec<store::Audit> {
        let audit = store::audit(self.db.reader()).await.unwrap();
        for a in &audit {
            assert!(a.holds(), "books disagree: {a:?}");
        }
        audit
    }

    /// Everything a redelivery must leave alone, in one comparable value.
    pub async fn snapshot(&self) -> String {
        let audit = store::audit(self.db.reader()).await.unwrap();
        let outbox = self.outbox().await.len();
        let rows =
            mercato_kit::db::query("SELECT order_id, status FROM reservations ORDER BY order_id")
                .fetch_all(self.db.reader())
                .await
                .unwrap();
        let reservations: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get("order_id"), r.get("status")))
            .collect();
        let ledger: i64 = mercato_kit::db::query("SELECT COUNT(*) AS n FROM stock_ledger")
            .fetch_one(self.db.reader())
            .await
            .unwrap()
            .get("n");
        format!("{audit:?} outbox={outbox} ledger={ledger} {reservations:?}")
    }
}

pub fn inventory(db: Db, ttl: Duration, seed_demo: bool) -> Arc<Inventory> {
    Arc::new(Inventory::new(
        db,
        Settings {
            reservation_ttl: ttl,
            seed_demo,
        },
        SweepSignal::default(),
    ))
}

pub fn consumer(db: &Db, inv: &Arc<Inventory>) -> Consumer {
    Consumer::new(CONSUMER, db.clone(), Arc::new(Handler::new(inv.clone())))
        .with_retries(2, Duration::from_millis(1))
}

pub fn product_event(event_type: &str, id: ProductId, sku: &str, active: bool) -> Envelope {
    product_event_by(event_type, id, sku, active, SELLER)
}

pub fn product_event_by(
    event_type: &str,
    id: ProductId,
    sku: &str,
    active: bool,
    seller: UserId,
) -> Envelope {
    let p = ProductChanged {
        product_id: id,
        sku: sku.into(),
        name: "A thing".into(),
        category: "things".into(),
        price_cents: 1_000,
        currency: "USD".into(),
        seller_id: seller,
        active,
    };
    Envelope::new("catalog", event_type, id, &p)
}

pub const CUSTOMER: UserId = UserId(uuid::Uuid::from_u128(0xc057));

pub fn order_created(order: OrderId, lines: &[(ProductId, i64)]) -> Envelope {
    let o = OrderCreated {
        order_id: order,
        customer_id: CUSTOMER,
        items: lines
            .iter()
            .map(|(p, q)| OrderLine {
                product_id: *p,
                quantity: *q,
                price_cents: 250,
                seller_id: SELLER,
            })
            .collect(),
        total_cents: lines.iter().map(|(_, q)| q * 250).sum(),
        currency: "EUR".into(),
        payment_method: "pm_card_visa".into(),
    };
    let mut env = Envelope::new("order", ORDER_CREATED, order, &o);
    env.correlation_id = Some(format!("corr-{order}"));
    env.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    env
}

pub fn order_ref(event_type: &str, order: OrderId) -> Envelope {
    Envelope::new("order", event_type, order, &OrderRef { order_id: order })
}

pub fn order_cancelled(order: OrderId) -> Envelope {
    let c = OrderCancelled {
        order_id: order,
        reason: CancelReason::CustomerCancelled,
    };
    Envelope::new("order", ORDER_CANCELLED, order, &c)
}

/// Polls until a condition holds, with a deadline (the kit's, shared by every test suite).
#[allow(unused_imports)] // not every test binary that includes this module waits
pub use mercato_kit::testing::eventually;
