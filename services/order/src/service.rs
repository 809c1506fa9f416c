//! The order use cases. HTTP handlers and event handlers call the same functions: the ones that
//! change something take the caller's transaction (`&mut Tx`), so the state change, its history
//! entry, its outbox events, and the caller's inbox or idempotency record commit together.
//!
//! Every status change goes through [`apply`]: read the order, ask [`domain::transition`],
//! compare-and-set the status, append the history entry and the announced events.

use crate::domain::{
    self, Command, CreateOrder, NewOrder, Order, PricedOrder, ShippingAddress, StockCheck,
};
use crate::events;
use crate::feed::StatusFeed;
use crate::inventory::{StockAnswer, StockCheck as StockChecker};
use crate::store::{self, HistoryEntry, ListFilter};
use mercato_kit::contracts::ShortLine;
use mercato_kit::db::{Db, Tx};
use mercato_kit::events::Cause;
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{OrderId, UserId};
use mercato_kit::time::now_us;
use mercato_kit::validate::{Errors, Invalid};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// What the order service's use cases can fail with; mapped to problem documents in one place
/// (`http`), and to "drop" or "retry" by the event handler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no order {0}")]
    NotFound(OrderId),
    #[error(transparent)]
    Refused(#[from] domain::Refusal),
    /// Bad input, every bad field named.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The pre-check found too little stock: inventory's lines, as it answered them.
    #[error("not enough stock")]
    InsufficientStock(Vec<ShortLine>),
    #[error("the shipping address of a {0} order can no longer change")]
    AddressLocked(&'static str),
    /// Lost the compare-and-set several times in a row: the order is changing right now.
    #[error("order {0} is being changed concurrently")]
    Contended(OrderId),
    /// The saga is behind its bound: new orders are refused for now.
    #[error("{0}")]
    Overloaded(domain::Overload),
    #[error(transparent)]
    Db(#[from] mercato_kit::db::Error),
}

/// What a domain check gave: its value, or every field it found bad. A check that gave
/// nothing and named no field is a bug of the check; the customer still hears which input
/// was refused.
fn checked<T>(value: Option<T>, errors: Errors) -> Result<T, Invalid> {
    errors.check()?;
    value.ok_or_else(|| Invalid::field("items", "invalid order"))
}

/// The order after a command, and whether the command changed it (a repeated cancel does not).
#[derive(Clone, Debug)]
pub struct Applied {
    pub order: Order,
    pub changed: bool,
}

/// Compare-and-set attempts before giving up on an order that keeps changing under us.
const CAS_ATTEMPTS: usize = 3;

/// Reads an order, asks the state machine, and writes the outcome in `tx`. A refusal writes
/// nothing.
pub async fn apply(
    tx: &mut Tx,
    id: OrderId,
    command: Command,
    cause: &Cause,
    metrics: &OrderMetrics,
) -> Result<Applied, Error> {
    for _ in 0..CAS_ATTEMPTS {
        let mut order = store::get_order(tx, id).await?.ok_or(Error::NotFound(id))?;
        let (next, effects) = domain::transition(order.status, &command)?;
        if let Command::Refund {
            amount_cents: Some(amount),
        } = command
        {
            domain::check_refund(amount, order.total_cents)
                .map_err(|m| Invalid::field("amount_cents", m))?;
        }
        let now = now_us();
        if !store::set_status(tx, id, order.status, next, now).await? {
            // Someone moved it between our read and our write: decide again on what they left.
            continue;
        }
        store::append_history(
            tx,
            id,
            command.history_type(),
            Some(order.status),
            next,
            now,
        )
        .await?;
        for effect in effects {
            mercato_kit::events::append(tx, &cause.stamp(events::announce(id, effect))).await?;
        }
        metrics.changed(next, now - order.created_at);
        order.status = next;
        order.updated_at = now;
        order.version += 1;
        return Ok(Applied {
            order,
            changed: true,
        });
    }
    Err(Error::Contended(id))
}

/// Cancels an order. Cancelling a cancelled order answers it as it is: the customer's intent
/// already holds.
pub async fn cancel(
    tx: &mut Tx,
    id: OrderId,
    by_admin: bool,
    cause: &Cause,
    metrics: &OrderMetrics,
) -> Result<Applied, Error> {
    match apply(tx, id, Command::Cancel { by_admin }, cause, metrics).await {
        Err(Error::Refused(r)) if r.is_repeated_cancel() => Ok(Applied {
            order: store::get_order(tx, id).await?.ok_or(Error::NotFound(id))?,
            changed: false,
        }),
        other => other,
    }
}

/// Stores a new order (PENDING), its first history entry and `order.created`, in `tx`.
pub async fn create(
    tx: &mut Tx,
    customer: UserId,
    priced: &PricedOrder,
    cause: &Cause,
    metrics: &OrderMetrics,
) -> Result<Order, Error> {
    let id = OrderId::new();
    let now = now_us();
    store::insert_order(tx, id, customer, priced, now).await?;
    mercato_kit::events::append(tx, &cause.stamp(events::created(id, customer, priced))).await?;
    metrics.created.inc();
    Ok(Order {
        id,
        customer_id: customer,
        status: domain::OrderStatus::Pending,
        items: priced.items.clone(),
        total_cents: priced.total_cents,
        currency: priced.currency.to_string(),
        payment_method: priced.payment_method.clone(),
        shipping_address: priced.shipping_address.clone(),
        stock_check: priced.stock_check,
        created_at: now,
        updated_at: now,
        version: 1,
        waiting: None,
    })
}

/// Changes where the order goes, until it has left.
pub async fn change_address(
    tx: &mut Tx,
    id: OrderId,
    address: &ShippingAddress,
) -> Result<Order, Error> {
    for _ in 0..CAS_ATTEMPTS {
        let order = store::get_order(tx, id).await?.ok_or(Error::NotFound(id))?;
        if !order.status.address_editable() {
            return Err(Error::AddressLocked(order.status.name()));
        }
        let now = now_us();
        if store::set_address(tx, id, order.status, address, now).await? {
            return Ok(Order {
                shipping_address: Some(address.clone()),
                updated_at: now,
                version: order.version + 1,
                ..order
            });
        }
    }
    Err(Error::Contended(id))
}

/// The order service's business metrics, counted where the status changes ([`apply`],
/// [`create`]), so a change from an event counts as one from a request does. They count in the
/// use case's transaction, before its commit: a transaction that then fails to commit (and is
/// retried) counts twice, which is rare enough for a rate. Labels stay bounded: states and
/// cancel reasons, never an order.
pub struct OrderMetrics {
    created: IntCounter,
    paid: IntCounter,
    cancelled: IntCounterVec,
    time_to_paid: Histogram,
    in_state: IntGaugeVec,
    oldest_in_state: GaugeVec,
}

impl OrderMetrics {
    pub fn new(registry: &prometheus::Registry) -> Arc<OrderMetrics> {
        use mercato_kit::metrics::register;
        Arc::new(OrderMetrics {
            created: register(
                registry,
                IntCounter::new("orders_created_total", "Orders accepted (PENDING)"),
            ),
            paid: register(
                registry,
                IntCounter::new("orders_paid_total", "Orders that reached PAID"),
            ),
            cancelled: register(
                registry,
                IntCounterVec::new(
                    Opts::new("orders_cancelled_total", "Orders cancelled, by reason"),
                    &["reason"],
                ),
            ),
            time_to_paid: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "order_time_to_paid_seconds",
                        "Time from an order's acceptance to PAID",
                    )
                    .buckets(vec![
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                        1800.0,
                    ]),
                ),
            ),
            in_state: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "orders_in_state",
                        "Orders in each non-final state, read from the database",
                    ),
                    &["state"],
                ),
            ),
            oldest_in_state: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "orders_oldest_in_state_seconds",
                        "Time since the longest-waiting order in each non-final state last changed",
                    ),
                    &["state"],
                ),
            ),
        })
    }

    /// Metrics of their own, for tests that drive the use cases without a service.
    pub fn detached() -> Arc<OrderMetrics> {
        OrderMetrics::new(&prometheus::Registry::new())
    }

    /// An order moved to `next`, `age_us` after it was accepted.
    fn changed(&self, next: domain::OrderStatus, age_us: i64) {
        match next {
            domain::OrderStatus::Paid => {
                self.paid.inc();
                self.time_to_paid.observe(age_us.max(0) as f64 / 1e6);
            }
            domain::OrderStatus::Cancelled(reason) => self
                .cancelled
                .with_label_values(&[domain::reason_name(reason)])
                .inc(),
            _ => {}
        }
    }
}

/// Reads the non-final states' gauges from the database, so they are right after a restart
/// and the same on every replica.
pub struct OrdersProbe {
    pub db: Db,
    pub metrics: Arc<OrderMetrics>,
}

#[async_trait::async_trait]
impl mercato_kit::metrics::Probe for OrdersProbe {
    async fn sample(&self) -> anyhow::Result<()> {
        let open = store::open_states(self.db.reader()).await?;
        let now = now_us();
        for state in store::OPEN_STATES {
            let (n, oldest) = open
                .iter()
                .find(|(s, _, _)| s == state)
                .map(|(_, n, t)| (*n, (now - t).max(0) as f64 / 1e6))
                .unwrap_or((0, 0.0));
            self.metrics.in_state.with_label_values(&[state]).set(n);
            self.metrics
                .oldest_in_state
                .with_label_values(&[state])
                .set(oldest);
        }
        Ok(())
    }
}

/// How often the backlog gauge is read again from the database.
pub const BACKLOG_REFRESH: Duration = Duration::from_millis(200);

/// How long a refused client is told to wait: past the next refreshes of every replica's
/// gauge, so a retry sees the backlog anew.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 2;

/// Back-pressure's view of the saga: a gauge of the backlog that a background task
/// ([`Orders::watch_backlog`]) reads from the database every [`BACKLOG_REFRESH`], so deciding
/// whether to take an order costs two atomic loads, never a query. Each order this process
/// accepts adds one at once, so a burst between two refreshes is counted too.
///
/// With replicas, every replica reads the same shared database, so each sees the whole
/// backlog (its own and the others' orders) at most one refresh late: together they may
/// overshoot the bound by what all of them accept in one refresh, never more, and nothing has
/// to be kept in step between them.
pub struct Admission {
    limits: domain::BacklogLimits,
    orders: AtomicI64,
    /// µs; `i64::MAX` when nothing is PENDING.
    oldest_pending_at: AtomicI64,
    backlog_gauge: IntGauge,
    age_gauge: Gauge,
    refused: IntCounterVec,
}

impl Admission {
    /// Limits and the metrics `orders_backlog`, `orders_backlog_oldest_pending_seconds` and
    /// `orders_overloaded_total{reason}`, registered in `registry`.
    pub fn new(limits: domain::BacklogLimits, registry: &Registry) -> prometheus::Result<Self> {
        let a = Self::unregistered(limits)?;
        registry.register(Box::new(a.backlog_gauge.clone()))?;
        registry.register(Box::new(a.age_gauge.clone()))?;
        registry.register(Box::new(a.refused.clone()))?;
        for reason in ["backlog", "age"] {
            a.refused.with_label_values(&[reason]);
        }
        Ok(a)
    }

    fn unregistered(limits: domain::BacklogLimits) -> prometheus::Result<Self> {
        Ok(Admission {
            limits,
            orders: AtomicI64::new(0),
            oldest_pending_at: AtomicI64::new(i64::MAX),
            backlog_gauge: IntGauge::new(
                "orders_backlog",
                "Orders in the saga (PENDING or CONFIRMED, not waiting on an outage), as back-pressure last read them",
            )?,
            age_gauge: Gauge::new(
                "orders_backlog_oldest_pending_seconds",
                "Age of the oldest PENDING order, as back-pressure last read it",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "orders_overloaded_total",
                    "New orders refused with 503 overloaded, by the bound that was passed",
                ),
                &["reason"],
            )?,
        })
    }

    /// The backlog as last read (plus what this process accepted since).
    pub fn backlog(&self) -> domain::Backlog {
        let oldest = self.oldest_pending_at.load(Ordering::Relaxed);
        domain::Backlog {
            orders: self.orders.load(Ordering::Relaxed),
            oldest_pending_at: (oldest != i64::MAX).then_some(oldest),
        }
    }

    /// Refuses a new order while the saga is behind a bound (counted), before any work.
    pub fn admit(&self) -> Result<(), Error> {
        match self.limits.refuses(self.backlog(), now_us()) {
            None => Ok(()),
            Some(o) => {
                self.refused.with_label_values(&[o.reason()]).inc();
                Err(Error::Overloaded(o))
            }
        }
    }

    fn accepted(&self) {
        self.orders.fetch_add(1, Ordering::Relaxed);
    }

    fn set(&self, b: domain::Backlog) {
        self.orders.store(b.orders, Ordering::Relaxed);
        let oldest = b.oldest_pending_at.unwrap_or(i64::MAX);
        self.oldest_pending_at.store(oldest, Ordering::Relaxed);
        self.backlog_gauge.set(b.orders);
        let age = b
            .oldest_pending_at
            .map_or(0.0, |at| ((now_us() - at).max(0)) as f64 / 1e6);
        self.age_gauge.set(age);
    }
}

/// The order service's shared parts: its database (which holds its outbox relay's waker), the
/// status feed, the stock pre-check and back-pressure.
pub struct Orders {
    db: Db,
    feed: StatusFeed,
    stock: Arc<dyn StockChecker>,
    metrics: Arc<OrderMetrics>,
    admission: Admission,
}

impl Orders {
    /// With metrics of its own and no back-pressure (tests); a service passes its registry's
    /// metrics and its bounds to [`Orders::counted`].
    #[expect(
        clippy::expect_used,
        reason = "fixed metric names on a registry of its own"
    )]
    pub fn new(db: Db, stock: Arc<dyn StockChecker>) -> Arc<Orders> {
        let admission =
            Admission::unregistered(domain::BacklogLimits::OFF).expect("valid metric names");
        Orders::counted(db, stock, OrderMetrics::detached(), admission)
    }

    pub fn counted(
        db: Db,
        stock: Arc<dyn StockChecker>,
        metrics: Arc<OrderMetrics>,
        admission: Admission,
    ) -> Arc<Orders> {
        Arc::new(Orders {
            db,
            feed: StatusFeed::default(),
            stock,
            metrics,
            admission,
        })
    }

    pub fn metrics(&self) -> &OrderMetrics {
        &self.metrics
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Keeps the backlog gauge current until `stop`. A failed read keeps the last values (and
    /// says so): the database being down stops orders by itself.
    pub async fn watch_backlog(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            match self.read_backlog().await {
                Ok(b) => self.admission.set(b),
                Err(e) => tracing::warn!(error = %e, "reading the saga backlog failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(BACKLOG_REFRESH) => {}
            }
        }
    }

    async fn read_backlog(&self) -> Result<domain::Backlog, mercato_kit::db::Error> {
        let mut conn = self.db.reader().acquire().await?;
        store::saga_backlog(&mut conn).await
    }

    /// Orders in id order after `after`, for the audit.
    pub async fn audit_page(
        &self,
        after: Option<OrderId>,
        limit: i64,
    ) -> Result<Vec<store::AuditedOrder>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        Ok(store::audit_orders(&mut conn, after, limit).await?)
    }

    /// Keys that placed more than one order, at most `limit`.
    pub async fn duplicate_keys(&self, limit: i64) -> Result<Vec<store::DuplicateKey>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        Ok(store::duplicate_keys(&mut conn, limit).await?)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn feed(&self) -> &StatusFeed {
        &self.feed
    }

    /// Checks a new order, prices it from the products read model and pre-checks its stock.
    /// Runs outside any transaction: the pre-check is an HTTP call.
    pub async fn prepare(
        &self,
        input: &CreateOrder,
        ctx: Option<&RequestContext>,
    ) -> Result<PricedOrder, Error> {
        let mut errors = Errors::new();
        let new = NewOrder::parse(input, &mut errors);
        let new = checked(new, errors)?;
        let ids: Vec<_> = new.lines.iter().map(|l| l.product_id).collect();
        let products = {
            let mut conn = self.db.reader().acquire().await?;
            store::products(&mut conn, &ids).await?
        };
        let mut errors = Errors::new();
        let priced = domain::price(&new, &products, &mut errors);
        let mut priced = checked(priced, errors)?;
        let lines: Vec<_> = priced
            .items
            .iter()
            .map(|i| (i.product_id, i.quantity))
            .collect();
        priced.stock_check = match self.stock.check(&lines, ctx).await {
            StockAnswer::Available => StockCheck::Passed,
            StockAnswer::Short(lines) => return Err(Error::InsufficientStock(lines)),
            StockAnswer::Unknown(_) => StockCheck::Deferred,
        };
        Ok(priced)
    }

    /// After a commit that changed `order` (from HTTP): its events leave now, and whoever
    /// waits on it looks again.
    pub fn committed(&self, order: &Order) {
        self.db.outbox_waker().wake();
        self.feed.publish(order.id, order.status);
    }

    /// After the commit that placed `order`: as [`committed`](Self::committed), and counted
    /// in the backlog at once.
    pub fn placed(&self, order: &Order) {
        self.admission.accepted();
        self.committed(order);
    }

    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        Ok(store::get_order(&mut conn, id).await?)
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Order>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        Ok(store::list_orders(&mut conn, filter).await?)
    }

    pub async fn history(&self, id: OrderId) -> Result<Vec<HistoryEntry>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        Ok(store::history(&mut conn, id).await?)
    }

    /// The order once it has left PENDING/CONFIRMED, or as it is at `deadline`. Woken by the
    /// status feed, and reading again every [`REREAD`](crate::feed::REREAD) for changes other
    /// replicas commit; `None` if there is no such order.
    pub async fn wait_while_in_saga(
        &self,
        id: OrderId,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Order>, Error> {
        let mut changes = self.feed.subscribe();
        loop {
            let Some(order) = self.get(id).await? else {
                return Ok(None);
            };
            if !order.status.awaits_saga() {
                return Ok(Some(order));
            }
            loop {
                // Woken by this process's feed, or looking again anyway: another replica may
                // have made the change.
                let look = (tokio::time::Instant::now() + crate::feed::REREAD).min(deadline);
                match tokio::time::timeout_at(look, changes.recv()).await {
                    Err(_elapsed) if look >= deadline => return Ok(Some(order)),
                    Err(_elapsed) => break,
                    Ok(Ok(change)) if change.order_id != id => continue,
                    Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) => return Ok(Some(order)),
                }
            }
        }
    }
}
