//! The inventory's use cases: keep stock rows in step with the catalog, reserve an order's
//! lines (all or none), hold, commit, release and expire reservations, and change stock by
//! hand. Each takes the caller's transaction, so the HTTP handlers, the event handler and the
//! sweeper share them and put their own inbox row or idempotency record in the same commit.
//!
//! A saga step writes its whole effect itself: the reservation's status, the stock and its
//! ledger, and the `inventory.*` event that answers (reserved or reservation_failed for a new
//! order, committed, released) with its cause, so no caller can change stock and forget to
//! say so.
//!
//! Time is a parameter (`now`, µs since the epoch) rather than read inside, so tests can move
//! it without sleeping.

use crate::domain::{
    self, Command, Decision, Movement, OrderLines, Refusal, ReleaseReason, ReservationStatus,
    StockChange,
};
use crate::events;
use crate::store::{self, Entry, NewReservation, ProductFacts, Reservation, Stock};
use mercato_kit::auth::Principal;
use mercato_kit::contracts::{
    OrderCreated, ProductChanged, ReleaseReason as ReleasedBecause, ShortLine, StockLine,
};
use mercato_kit::db::{Db, Tx};
use mercato_kit::events::{Cause, Envelope};
use mercato_kit::http::RequestContext;
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::time::Micros;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct Settings {
    /// How long an unpaid reservation lasts (`MERCATO_RESERVATION_TTL_SECS`).
    pub reservation_ttl: Duration,
    /// Start demo products with their demo stock (`MERCATO_SEED_DEMO`).
    pub seed_demo: bool,
}

/// Failures of the use cases that are not plain storage errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] mercato_kit::db::Error),
    #[error("no stock is kept for product {0}")]
    UnknownProduct(ProductId),
    #[error("the product belongs to another seller")]
    NotOwner,
    #[error("on_hand cannot be set below the {reserved} units reserved")]
    BelowReserved { reserved: i64 },
    #[error("on_hand would exceed {}", domain::ON_HAND_MAX)]
    TooMuch,
    /// A release or commit found fewer units reserved than the reservation holds: the books
    /// disagree, which no input can cause. Refused so nothing is made worse.
    #[error("the stock of product {product_id} does not cover reservation {order_id}")]
    Inconsistent {
        product_id: ProductId,
        order_id: OrderId,
    },
}

/// Who changes stock and why: the ledger's actor, and the [`Cause`] its events and
/// reservations continue.
#[derive(Clone, Debug)]
pub struct Origin {
    pub actor: String,
    pub cause: Cause,
}

impl Origin {
    /// An HTTP request by this caller.
    pub fn request(principal: &Principal, ctx: &RequestContext) -> Origin {
        Origin {
            actor: principal.subject.clone(),
            cause: Cause::of_request(ctx),
        }
    }

    /// An event consumed from another service.
    pub fn event(env: &Envelope) -> Origin {
        Origin {
            actor: format!("event:{}", env.event_type),
            cause: Cause::of_event(env),
        }
    }

    /// The sweeper expiring this reservation: its events continue the reservation's trace.
    pub fn expiry(r: &Reservation) -> Origin {
        Origin {
            actor: "sweeper".into(),
            cause: Cause {
                correlation_id: r.correlation_id.clone(),
                traceparent: r.traceparent.clone(),
                causation_id: None,
            },
        }
    }

    /// Anything else (tests, tools), named.
    pub fn system(name: &str) -> Origin {
        Origin {
            actor: name.into(),
            cause: Cause::default(),
        }
    }

    fn correlation_id(&self) -> Option<&str> {
        self.cause.correlation_id.as_deref()
    }

    fn traceparent(&self) -> Option<&str> {
        self.cause.traceparent.as_deref()
    }
}

/// Tells the sweeper that a reservation expiring at some time exists, so it can sleep until
/// then instead of until its safety-net tick. A deadline rather than a "look now" wake: the
/// reservation's transaction may not have committed when the sweeper hears of it.
#[derive(Clone)]
pub struct SweepSignal {
    notify: Arc<Notify>,
    earliest: Arc<AtomicI64>,
}

impl Default for SweepSignal {
    fn default() -> Self {
        SweepSignal {
            notify: Arc::new(Notify::new()),
            earliest: Arc::new(AtomicI64::new(i64::MAX)),
        }
    }
}

impl SweepSignal {
    pub fn schedule(&self, expires_at: Micros) {
        let before = self.earliest.fetch_min(expires_at, Ordering::SeqCst);
        if expires_at < before {
            // notify_one keeps a permit when the sweeper is busy, so no wake is lost.
            self.notify.notify_one();
        }
    }

    /// The earliest deadline heard of that is still ahead of `now`; those already passed are
    /// forgotten (the sweep that follows finds them in the database).
    pub(crate) fn upcoming(&self, now: Micros) -> Option<Micros> {
        let h = self.earliest.swap(i64::MAX, Ordering::SeqCst);
        if h != i64::MAX && h > now {
            self.earliest.fetch_min(h, Ordering::SeqCst);
            Some(h)
        } else {
            None
        }
    }

    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }
}

/// The outcome of [`Inventory::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Reserved now.
    Created(Reservation),
    /// The order had a reservation already (in any status): returned as it is, nothing changed.
    Existing(Reservation),
    /// These lines lack stock; nothing was reserved.
    Short(Vec<ShortLine>),
}

/// The outcome of a command on an existing reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Applied: the reservation as it is now.
    Applied(Reservation),
    /// Nothing to do (already done, or not due): the reservation as it is.
    NoOp(Reservation),
    /// Refused because the reservation went the other way (see [`Decision::Conflict`]).
    Conflict(Reservation),
    /// A release for an order never reserved: a tombstone now stands for it, so a late
    /// `order.created` reserves nothing. No stock moved.
    Tombstoned(Reservation),
    /// No reservation for this order.
    Unknown,
}

/// A change of stock by hand.
#[derive(Clone, Copy, Debug)]
pub struct StockEdit<'a> {
    pub product_id: ProductId,
    pub change: StockChange,
    /// Why, for the ledger.
    pub note: Option<&'a str>,
    /// When set, the product must belong to this seller.
    pub seller: Option<UserId>,
}

pub struct Inventory {
    pub db: Db,
    pub settings: Settings,
    pub sweep: SweepSignal,
    /// Demo stock by sku, when seeding.
    demo_stock: HashMap<String, i64>,
    pub metrics: Arc<InventoryMetrics>,
}

/// Inventory's business metrics: reservations counted where they are made and released (in
/// the use case's transaction, before its commit), reservations open and low stock read from
/// the database by [`InventoryProbe`]. Stock is shown as counts of products at or under
/// thresholds, never per product.
pub struct InventoryMetrics {
    reservations: IntCounterVec,
    released: IntCounterVec,
    open: IntGaugeVec,
    low_stock: IntGaugeVec,
}

/// At or under this many available units a product counts as low on stock.
pub const LOW_STOCK: i64 = 5;

impl InventoryMetrics {
    pub fn new(registry: &prometheus::Registry) -> Arc<InventoryMetrics> {
        use mercato_kit::metrics::register;
        Arc::new(InventoryMetrics {
            reservations: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "inventory_reservations_total",
                        "Reservations asked for, by outcome (reserved, insufficient_stock)",
                    ),
                    &["outcome"],
                ),
            ),
            released: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "inventory_reservations_released_total",
                        "Reservations released, by reason (expired, cancelled)",
                    ),
                    &["reason"],
                ),
            ),
            open: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "inventory_reservations_open",
                        "Reservations holding stock: active (expiring) and held (paid, kept past the TTL)",
                    ),
                    &["status"],
                ),
            ),
            low_stock: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "inventory_products_low_stock",
                        "Active products by how little is available: out (0) or low (1 to 5)",
                    ),
                    &["level"],
                ),
            ),
        })
    }
}

/// Reads open reservations and low stock from the database (right after a restart, the same
/// on every replica).
pub struct InventoryProbe {
    pub db: Db,
    pub metrics: Arc<InventoryMetrics>,
}

#[async_trait::async_trait]
impl mercato_kit::metrics::Probe for InventoryProbe {
    async fn sample(&self) -> anyhow::Result<()> {
        let (active, held) = store::open_reservations(self.db.reader()).await?;
        self.metrics.open.with_label_values(&["active"]).set(active);
        self.metrics.open.with_label_values(&["held"]).set(held);
        let (out, low) = store::low_stock(self.db.reader(), LOW_STOCK).await?;
        self.metrics.low_stock.with_label_values(&["out"]).set(out);
        self.metrics.low_stock.with_label_values(&["low"]).set(low);
        Ok(())
    }
}

impl Inventory {
    pub fn new(db: Db, settings: Settings, sweep: SweepSignal) -> Self {
        let demo_stock = if settings.seed_demo {
            mercato_kit::demo::products()
                .into_iter()
                .map(|p| (p.sku, p.stock))
                .collect()
        } else {
            HashMap::new()
        };
        Inventory {
            db,
            settings,
            sweep,
            demo_stock,
            metrics: InventoryMetrics::new(&prometheus::Registry::new()),
        }
    }

    /// Counts into the service's registry (without it, into metrics of its own: tests).
    pub fn counted(mut self, metrics: Arc<InventoryMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Keeps the product's stock row in step with the catalog: creates it the first time (with
    /// the demo stock when seeding a demo sku, else empty) and updates seller, sku and active
    /// from any newer event. `seen_at` is when the catalog made this version.
    pub async fn product_changed(
        &self,
        tx: &mut Tx,
        p: &ProductChanged,
        seen_at: Micros,
        now: Micros,
        origin: &Origin,
    ) -> Result<(), Error> {
        let facts = ProductFacts {
            product_id: p.product_id,
            seller_id: p.seller_id,
            sku: &p.sku,
            active: p.active,
            seen_at,
        };
        if store::insert_stock(tx, &facts, now).await? {
            let initial = self.demo_stock.get(&p.sku).copied().unwrap_or(0);
            let entry = Entry {
                order_id: None,
                actor: &origin.actor,
                note: (initial > 0).then_some("demo stock"),
                now,
            };
            store::apply_movement(tx, p.product_id, Movement::Initial(initial), None, &entry)
                .await?
                .ok_or(Error::TooMuch)?;
        } else if !store::update_product(tx, &facts, now).await? {
            tracing::debug!(product_id = %p.product_id, "older product event ignored");
        }
        Ok(())
    }

    /// Makes the stock row of a product the catalog just created, before its event arrives,
    /// from the facts the catalog answered (see [`crate::catalog`]). Recorded as seen at time
    /// zero, so the product's events, whenever they come, still apply over it. Nothing happens
    /// when the row exists already.
    pub async fn adopt_product(
        &self,
        p: &ProductChanged,
        now: Micros,
        origin: &Origin,
    ) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        self.product_changed(&mut tx, p, 0, now, origin).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reserves every line of the order, or none: the lines are taken inside a savepoint that
    /// is rolled back when any line is short, so the caller's transaction stays usable for its
    /// inbox row and the failure event. Each line is one conditional update, in product order.
    ///
    /// Idempotent per order: when the order has a reservation already (even a released one),
    /// that reservation is returned and nothing changes.
    pub async fn reserve(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        lines: &OrderLines,
        ttl: Duration,
        now: Micros,
        origin: &Origin,
    ) -> Result<Reserved, Error> {
        let expires_at = domain::expires_at(now, ttl);
        let entry = Entry {
            order_id: Some(order_id),
            actor: &origin.actor,
            note: None,
            now,
        };
        let mut sp = tx.savepoint().await?;
        let fresh = store::insert_reservation(
            &mut sp,
            &NewReservation {
                order_id,
                status: ReservationStatus::Active,
                release_reason: None,
                expires_at: Some(expires_at),
                correlation_id: origin.correlation_id(),
                traceparent: origin.traceparent(),
                now,
            },
        )
        .await?;
        if !fresh {
            sp.rollback().await?;
            let existing = store::reservation(tx, order_id)
                .await?
                .ok_or(mercato_kit::db::Error::RowNotFound)?;
            return Ok(Reserved::Existing(existing));
        }
        let mut short = Vec::new();
        for line in lines.to_stock_lines() {
            let taken = store::apply_movement(
                &mut sp,
                line.product_id,
                Movement::Reserve(line.quantity),
                None,
                &entry,
            )
            .await?;
            if taken.is_some() {
                store::insert_line(&mut sp, order_id, &line).await?;
            } else {
                // Read in the same transaction right after the refusal, so the number reported
                // is the one that refused it (exactly so on SQLite's single writer).
                let available = store::stock(&mut sp, line.product_id)
                    .await?
                    .map(|s| s.available().max(0))
                    .unwrap_or(0);
                short.push(ShortLine {
                    product_id: line.product_id,
                    requested: line.quantity,
                    available,
                });
            }
        }
        if !short.is_empty() {
            sp.rollback().await?;
            self.metrics
                .reservations
                .with_label_values(&["insufficient_stock"])
                .inc();
            return Ok(Reserved::Short(short));
        }
        sp.commit().await?;
        self.metrics
            .reservations
            .with_label_values(&["reserved"])
            .inc();
        self.sweep.schedule(expires_at);
        Ok(Reserved::Created(Reservation {
            order_id,
            status: ReservationStatus::Active,
            release_reason: None,
            expires_at: Some(expires_at),
            lines: lines.to_stock_lines(),
            correlation_id: origin.correlation_id().map(str::to_owned),
            traceparent: origin.traceparent().map(str::to_owned),
            created_at: now,
            updated_at: now,
        }))
    }

    /// Records that the order's reservation was refused (its lines were short), so a later
    /// delivery of the same order reserves nothing either. True when recorded now.
    pub async fn record_refusal(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        now: Micros,
        origin: &Origin,
    ) -> Result<bool, Error> {
        Ok(store::insert_reservation(
            tx,
            &NewReservation {
                order_id,
                status: ReservationStatus::Released,
                release_reason: Some(ReleaseReason::Rejected),
                expires_at: None,
                correlation_id: origin.correlation_id(),
                traceparent: origin.traceparent(),
                now,
            },
        )
        .await?)
    }

    /// The saga's step for a new order: reserve its lines and answer `inventory.reserved` (with
    /// what payment needs to open the payment) or `inventory.reservation_failed` (the short
    /// lines), in the caller's transaction. A repeated `order.created` finds the reservation
    /// (or the refusal) it made and answers nothing again.
    pub async fn answer_order(
        &self,
        tx: &mut Tx,
        order: &OrderCreated,
        now: Micros,
        origin: &Origin,
    ) -> Result<(), Error> {
        let raw: Vec<_> = order
            .items
            .iter()
            .map(|l| (l.product_id, l.quantity))
            .collect();
        let lines = match OrderLines::parse(&raw) {
            Ok(lines) => lines,
            // The order service checks its lines, so this is a bug upstream; answering with a
            // failure still lets the order reach a final state instead of waiting forever.
            Err(errors) => {
                tracing::warn!(order_id = %order.order_id, ?errors, "order.created with invalid lines refused");
                if !self.record_refusal(tx, order.order_id, now, origin).await? {
                    return Ok(());
                }
                let mut short = Vec::with_capacity(order.items.len());
                for l in &order.items {
                    short.push(ShortLine {
                        product_id: l.product_id,
                        requested: l.quantity,
                        available: self.available(tx, l.product_id).await?,
                    });
                }
                return Ok(
                    events::reservation_failed(tx, order.order_id, short, &origin.cause).await?,
                );
            }
        };
        let ttl = self.settings.reservation_ttl;
        match self
            .reserve(tx, order.order_id, &lines, ttl, now, origin)
            .await?
        {
            Reserved::Created(r) => events::reserved(tx, order, &r, now, &origin.cause).await?,
            Reserved::Existing(r) => {
                tracing::debug!(order_id = %order.order_id, status = r.status.as_str(), "order already reserved; nothing to do");
            }
            Reserved::Short(short) => {
                self.record_refusal(tx, order.order_id, now, origin).await?;
                events::reservation_failed(tx, order.order_id, short, &origin.cause).await?;
            }
        }
        Ok(())
    }

    /// The order was paid: its reservation no longer expires.
    pub async fn hold(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        now: Micros,
        origin: &Origin,
    ) -> Result<Transition, Error> {
        self.apply(tx, order_id, Command::Hold, now, origin).await
    }

    /// The order was fulfilled: its units leave (on_hand and reserved both go down), announced
    /// with `inventory.committed` when applied now.
    pub async fn commit(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        now: Micros,
        origin: &Origin,
    ) -> Result<Transition, Error> {
        self.apply(tx, order_id, Command::Commit, now, origin).await
    }

    /// The order was cancelled: its units go back to available, announced with
    /// `inventory.released` {reason: cancelled} when applied now. An order never reserved gets a
    /// tombstone (and no event), because its `order.created` may still be on the way.
    pub async fn release(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        now: Micros,
        origin: &Origin,
    ) -> Result<Transition, Error> {
        // Twice at most: a reservation inserted by a concurrent reserve between our update and
        // our tombstone is released on the second round.
        for _ in 0..2 {
            match self
                .apply(tx, order_id, Command::Release, now, origin)
                .await?
            {
                Transition::Unknown => {}
                other => return Ok(other),
            }
            let tomb = NewReservation {
                order_id,
                status: ReservationStatus::Released,
                release_reason: Some(ReleaseReason::Cancelled),
                expires_at: None,
                correlation_id: origin.correlation_id(),
                traceparent: origin.traceparent(),
                now,
            };
            if store::insert_reservation(tx, &tomb).await? {
                let r = store::reservation(tx, order_id)
                    .await?
                    .ok_or(mercato_kit::db::Error::RowNotFound)?;
                return Ok(Transition::Tombstoned(r));
            }
        }
        Err(mercato_kit::db::Error::Protocol(format!(
            "releasing {order_id} kept racing a reservation"
        ))
        .into())
    }

    /// Releases the reservation if it is still active and its time has passed at `now`, and
    /// announces it with `inventory.released` {reason: expired} in the reservation's own trace.
    /// The conditional update decides who does it, so any number of sweepers may try at once.
    pub async fn expire(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        now: Micros,
    ) -> Result<Transition, Error> {
        self.apply(
            tx,
            order_id,
            Command::Expire,
            now,
            &Origin::system("sweeper"),
        )
        .await
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        order_id: OrderId,
        cmd: Command,
        now: Micros,
        origin: &Origin,
    ) -> Result<Transition, Error> {
        let reason = match cmd {
            Command::Release => Some(ReleaseReason::Cancelled),
            Command::Expire => Some(ReleaseReason::Expired),
            Command::Hold | Command::Commit => None,
        };
        let due_at = (cmd == Command::Expire).then_some(now);
        let moved = store::transition(
            tx,
            order_id,
            &cmd.sources(),
            cmd.target(),
            reason,
            due_at,
            now,
        )
        .await?;
        let Some(r) = store::reservation(tx, order_id).await? else {
            return Ok(Transition::Unknown);
        };
        if !moved {
            return Ok(match domain::decide(r.status, cmd) {
                Decision::Conflict => Transition::Conflict(r),
                // Apply here means an active reservation that is not due yet.
                Decision::NoOp | Decision::Apply(_) => Transition::NoOp(r),
            });
        }
        let entry = Entry {
            order_id: Some(order_id),
            actor: &origin.actor,
            note: None,
            now,
        };
        // Lines come in product order: the same lock order as reserving.
        for line in &r.lines {
            if let Some(m) = cmd.movement(line.quantity) {
                store::apply_movement(tx, line.product_id, m, None, &entry)
                    .await?
                    .ok_or(Error::Inconsistent {
                        product_id: line.product_id,
                        order_id,
                    })?;
            }
        }
        // The announcement, in the same transaction as the change it announces. An expiry
        // continues the trace of the checkout that made the reservation.
        match cmd {
            Command::Hold => {}
            Command::Commit => events::committed(tx, order_id, &origin.cause).await?,
            Command::Release => {
                events::released(tx, order_id, ReleasedBecause::Cancelled, &origin.cause).await?
            }
            Command::Expire => {
                events::released(
                    tx,
                    order_id,
                    ReleasedBecause::Expired,
                    &Origin::expiry(&r).cause,
                )
                .await?
            }
        }
        if let Some(reason) = reason {
            let reason = match reason {
                ReleaseReason::Expired => "expired",
                _ => "cancelled",
            };
            self.metrics.released.with_label_values(&[reason]).inc();
        }
        Ok(Transition::Applied(r))
    }

    /// Sets or adds to a product's on_hand by hand. The row is locked first, so the ledger's
    /// delta is exact and the owner check cannot be outdated.
    pub async fn change_stock(
        &self,
        tx: &mut Tx,
        edit: &StockEdit<'_>,
        now: Micros,
        origin: &Origin,
    ) -> Result<Stock, Error> {
        let StockEdit {
            product_id,
            change,
            note,
            seller,
        } = *edit;
        let before = store::lock_stock(tx, product_id)
            .await?
            .ok_or(Error::UnknownProduct(product_id))?;
        if seller.is_some_and(|s| s != before.seller_id) {
            return Err(Error::NotOwner);
        }
        let m = change.movement();
        if let Err(refusal) = before.levels.apply(m) {
            return Err(match refusal {
                Refusal::BelowReserved { reserved } => Error::BelowReserved { reserved },
                Refusal::TooMuch | Refusal::Short { .. } | Refusal::Inconsistent => Error::TooMuch,
            });
        }
        let entry = Entry {
            order_id: None,
            actor: &origin.actor,
            note,
            now,
        };
        let levels = store::apply_movement(tx, product_id, m, Some(before.levels), &entry)
            .await?
            // Under the row lock the rule cannot have changed; kept as a guard all the same.
            .ok_or(Error::BelowReserved {
                reserved: before.levels.reserved,
            })?;
        Ok(Stock { levels, ..before })
    }

    /// What each line could get now, without reserving: (line, available).
    pub async fn check(&self, lines: &OrderLines) -> Result<Vec<(StockLine, i64)>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        let mut out = Vec::with_capacity(lines.len());
        for line in lines.to_stock_lines() {
            let available = store::stock(&mut conn, line.product_id)
                .await?
                .map(|s| s.available().max(0))
                .unwrap_or(0);
            out.push((line, available));
        }
        Ok(out)
    }

    /// What a new reservation of the product could take now, read in `tx`.
    pub async fn available(&self, tx: &mut Tx, product_id: ProductId) -> Result<i64, Error> {
        Ok(store::stock(tx, product_id)
            .await?
            .map(|s| s.available().max(0))
            .unwrap_or(0))
    }

    pub async fn stock(&self, product_id: ProductId) -> Result<Option<Stock>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        Ok(store::stock(&mut conn, product_id).await?)
    }

    pub async fn reservation(&self, order_id: OrderId) -> Result<Option<Reservation>, Error> {
        let mut conn = self.db.reader().acquire().await?;
        Ok(store::reservation(&mut conn, order_id).await?)
    }

    /// A page of products' books for the audit (see [`store::Audit`]).
    pub async fn audit_stock(
        &self,
        after: Option<ProductId>,
        limit: i64,
    ) -> Result<Vec<store::Audit>, Error> {
        Ok(store::audit_page(self.db.reader(), after, limit).await?)
    }

    /// A page of reservations for the audit.
    pub async fn audit_reservations(
        &self,
        after: Option<OrderId>,
        limit: i64,
    ) -> Result<Vec<store::AuditedReservation>, Error> {
        Ok(store::audit_reservations(self.db.reader(), after, limit).await?)
    }
}
