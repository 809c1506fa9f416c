//! What the order service's integration tests share: a fresh database (SQLite by default,
//! PostgreSQL when `MERCATO_TEST_DATABASE_URL` names one, each test in a schema of its own), the
//! service wired with a stock pre-check the test controls, the event consumer, and builders
//! for the events other services would send.

#![allow(dead_code)]

use mercato_kit::contracts::types::*;
use mercato_kit::contracts::{
    InventoryReleased, InventoryReserved, PaymentChanged, PaymentFailed, ProductChanged,
    ReleaseReason, ReservationFailed, ShortLine, StockLine,
};
use mercato_kit::db::Db;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::events::Cause;
use mercato_kit::events::{Consumer, Envelope};
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::testing::TestDb;
use mercato_order::consumer::OrderEvents;
use mercato_order::domain::{self, CreateOrder, LineRequest, Order, OrderStatus};
use mercato_order::inventory::{StockAnswer, StockCheck};
use mercato_order::service::{self, Orders};
use mercato_order::store::HistoryEntry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A stock pre-check that answers what the test says, and counts how often it was asked.
pub struct FixedStock {
    pub answer: Mutex<StockAnswer>,
    pub calls: Mutex<Vec<Vec<(ProductId, i64)>>>,
}

#[async_trait::async_trait]
impl StockCheck for FixedStock {
    async fn check(
        &self,
        lines: &[(ProductId, i64)],
        _ctx: Option<&RequestContext>,
    ) -> StockAnswer {
        self.calls.lock().unwrap().push(lines.to_vec());
        self.answer.lock().unwrap().clone()
    }
}

pub struct Harness {
    pub db: Db,
    pub orders: Arc<Orders>,
    pub consumer: Consumer,
    pub stock: Arc<FixedStock>,
    /// The test's database, shared with its replicas.
    tdb: Arc<TestDb>,
}

pub async fn harness() -> Harness {
    open(Arc::new(TestDb::new("order"))).await
}

async fn open(tdb: Arc<TestDb>) -> Harness {
    let db = tdb.open(4, &mercato_order::migrations()).await;
    let stock = Arc::new(FixedStock {
        answer: Mutex::new(StockAnswer::Available),
        calls: Mutex::new(Vec::new()),
    });
    let orders = Orders::new(db.clone(), stock.clone());
    let consumer = Consumer::new(
        "order",
        db.clone(),
        Arc::new(OrderEvents::new(orders.clone())),
    )
    .with_retries(2, Duration::from_millis(1));
    Harness {
        db,
        orders,
        consumer,
        stock,
        tdb,
    }
}

impl Harness {
    /// Another process of the service on the same database: connections, status feed and
    /// consumer of its own.
    pub async fn replica(&self) -> Harness {
        open(self.tdb.clone()).await
    }
}

pub fn ctx() -> RequestContext {
    RequestContext {
        request_id: "req-1".into(),
        correlation_id: "corr-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        client_ip: None,
    }
}

pub fn product(seller: UserId, price_cents: i64, currency: &str) -> ProductChanged {
    let id = ProductId::new();
    ProductChanged {
        product_id: id,
        sku: format!("SKU-{}", &id.to_string()[..8]).to_uppercase(),
        name: format!("Product {}", &id.to_string()[..8]),
        category: "things".into(),
        price_cents,
        currency: currency.into(),
        seller_id: seller,
        active: true,
    }
}

pub fn catalog_event(event_type: &str, p: &ProductChanged) -> Envelope {
    Envelope::new("catalog", event_type, p.product_id, p)
}

impl Harness {
    /// Feeds an event through the consumer, as the bus would.
    pub async fn deliver(&self, env: &Envelope) -> Outcome {
        self.consumer.process(env).await.unwrap()
    }

    /// A product the read model knows, announced by the catalog.
    pub async fn seed_product(&self, seller: UserId, price_cents: i64) -> ProductChanged {
        let p = product(seller, price_cents, "USD");
        assert_eq!(
            self.deliver(&catalog_event(PRODUCT_CREATED, &p)).await,
            Outcome::Applied
        );
        p
    }

    /// Places an order the way `POST /orders` does.
    pub async fn try_place(
        &self,
        customer: UserId,
        lines: &[(ProductId, i64)],
    ) -> Result<Order, service::Error> {
        let input = CreateOrder {
            items: lines
                .iter()
                .map(|&(product_id, quantity)| LineRequest {
                    product_id,
                    quantity,
                })
                .collect(),
            payment_method: "pm_card_visa".into(),
            shipping_address: None,
        };
        let ctx = ctx();
        let priced = self.orders.prepare(&input, Some(&ctx)).await?;
        let mut tx = self.db.begin().await?;
        let order = service::create(
            &mut tx,
            customer,
            &priced,
            &Cause::of_request(&ctx),
            self.orders.metrics(),
        )
        .await?;
        tx.commit().await?;
        self.orders.committed(&order);
        Ok(order)
    }

    pub async fn place(&self, customer: UserId, lines: &[(ProductId, i64)]) -> Order {
        self.try_place(customer, lines).await.unwrap()
    }

    /// A one-line order of a fresh product.
    pub async fn simple_order(&self) -> Order {
        let p = self.seed_product(UserId::new(), 1250).await;
        self.place(UserId::new(), &[(p.product_id, 2)]).await
    }

    /// Applies a command the way a request does, committing it.
    pub async fn command(
        &self,
        id: OrderId,
        command: domain::Command,
    ) -> Result<service::Applied, service::Error> {
        let ctx = ctx();
        let mut tx = self.db.begin().await?;
        let applied = match command {
            domain::Command::Cancel { by_admin } => {
                service::cancel(
                    &mut tx,
                    id,
                    by_admin,
                    &Cause::of_request(&ctx),
                    self.orders.metrics(),
                )
                .await?
            }
            c => {
                service::apply(
                    &mut tx,
                    id,
                    c,
                    &Cause::of_request(&ctx),
                    self.orders.metrics(),
                )
                .await?
            }
        };
        tx.commit().await?;
        if applied.changed {
            self.orders.committed(&applied.order);
        }
        Ok(applied)
    }

    pub async fn order(&self, id: OrderId) -> Order {
        self.orders
            .get(id)
            .await
            .unwrap()
            .expect("the order exists")
    }

    pub async fn status(&self, id: OrderId) -> OrderStatus {
        self.order(id).await.status
    }

    pub async fn history(&self, id: OrderId) -> Vec<HistoryEntry> {
        self.orders.history(id).await.unwrap()
    }

    /// The order's history as the types of its steps, oldest first.
    pub async fn history_types(&self, id: OrderId) -> Vec<String> {
        self.history(id)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// Every event in the outbox (published or not), oldest first.
    pub async fn outbox(&self) -> Vec<Envelope> {
        mercato_kit::db::query("SELECT envelope FROM outbox ORDER BY seq")
            .fetch_all(self.db.reader())
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(&r.get::<String, _>("envelope")).unwrap())
            .collect()
    }

    /// The outbox events about one order, as their types.
    pub async fn events_of(&self, id: OrderId) -> Vec<String> {
        self.outbox()
            .await
            .into_iter()
            .filter(|e| e.aggregate_id == id.to_string())
            .map(|e| e.event_type)
            .collect()
    }

    /// The order's recorded history folds back to its stored status.
    pub async fn assert_history_folds(&self, id: OrderId) {
        let steps: Vec<_> = self.history(id).await.iter().map(|h| h.step()).collect();
        assert_eq!(
            domain::fold(&steps),
            Ok(self.status(id).await),
            "history of {id}: {steps:?}"
        );
    }

    pub async fn dead_letters(&self) -> usize {
        mercato_kit::events::consumer::dead_letters(&self.db)
            .await
            .unwrap()
            .len()
    }
}

// The events the other services send, as they would send them.

pub fn reserved(o: &Order) -> Envelope {
    Envelope::new(
        "inventory",
        INVENTORY_RESERVED,
        o.id,
        &InventoryReserved {
            order_id: o.id,
            customer_id: o.customer_id,
            items: o
                .items
                .iter()
                .map(|i| StockLine {
                    product_id: i.product_id,
                    quantity: i.quantity,
                })
                .collect(),
            expires_at: "2030-01-01T00:00:00.000Z".into(),
            amount_cents: o.total_cents,
            currency: o.currency.clone(),
            payment_method: o.payment_method.clone(),
        },
    )
}

pub fn reservation_failed(o: &Order) -> Envelope {
    Envelope::new(
        "inventory",
        INVENTORY_RESERVATION_FAILED,
        o.id,
        &ReservationFailed {
            order_id: o.id,
            lines: vec![ShortLine {
                product_id: o.items[0].product_id,
                requested: o.items[0].quantity,
                available: 0,
            }],
        },
    )
}

pub fn released(o: &Order, reason: ReleaseReason) -> Envelope {
    Envelope::new(
        "inventory",
        INVENTORY_RELEASED,
        o.id,
        &InventoryReleased {
            order_id: o.id,
            reason,
        },
    )
}

pub fn authorized(o: &Order) -> Envelope {
    Envelope::new(
        "payment",
        PAYMENT_AUTHORIZED,
        o.id,
        &PaymentChanged {
            order_id: o.id,
            payment_id: uuid::Uuid::now_v7(),
            amount_cents: o.total_cents,
            currency: o.currency.clone(),
        },
    )
}

pub fn payment_failed(o: &Order) -> Envelope {
    Envelope::new(
        "payment",
        PAYMENT_FAILED,
        o.id,
        &PaymentFailed {
            order_id: o.id,
            payment_id: uuid::Uuid::now_v7(),
            reason: "generic_decline".into(),
        },
    )
}

/// The same event sent again by its producer: same content, a new event id (so the inbox does
/// not catch it; the state machine must).
pub fn resent(env: &Envelope) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::now_v7(),
        ..env.clone()
    }
}
