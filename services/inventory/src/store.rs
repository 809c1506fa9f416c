//! The inventory's SQL, one path for SQLite and PostgreSQL (see `mercato_kit::db`).
//!
//! Every change of stock levels is one conditional `UPDATE ... WHERE <the rule> RETURNING` whose
//! row count decides whether it happened: never a read followed by a write, so no interleaving
//! of transactions (or replicas) can oversell. [`apply_movement`] is the only function that
//! changes levels, and it writes the ledger row in the same breath, so no movement goes
//! unrecorded.

use crate::domain::{LedgerKind, Levels, Movement, ReleaseReason, ReservationStatus, ON_HAND_MAX};
use mercato_kit::contracts::StockLine;
use mercato_kit::db::{parse_uuid, Conn, Pool, Row};
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::time::Micros;

/// A product's stock row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stock {
    pub product_id: ProductId,
    pub seller_id: UserId,
    pub sku: String,
    /// False once the catalog took the product off sale: nothing new can be reserved.
    pub active: bool,
    pub levels: Levels,
}

impl Stock {
    /// What a new reservation may take: nothing while the product is off sale.
    pub fn available(&self) -> i64 {
        if self.active {
            self.levels.available()
        } else {
            0
        }
    }
}

/// A reservation with its lines (none for a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: OrderId,
    pub status: ReservationStatus,
    pub release_reason: Option<ReleaseReason>,
    pub expires_at: Option<Micros>,
    pub lines: Vec<StockLine>,
    /// The trace of the request or event that made it, carried into the expiry event.
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// One row of the stock ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: i64,
    pub product_id: ProductId,
    pub kind: LedgerKind,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    pub order_id: Option<OrderId>,
    pub actor: String,
    pub note: Option<String>,
    pub created_at: Micros,
}

/// Who and what a movement is recorded with.
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    pub order_id: Option<OrderId>,
    pub actor: &'a str,
    pub note: Option<&'a str>,
    pub now: Micros,
}

fn decode<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, mercato_kit::db::Error> {
    s.parse()
        .map_err(|e: String| mercato_kit::db::Error::Decode(e.into()))
}

const STOCK_COLS: &str = "product_id, seller_id, sku, active, on_hand, reserved";

fn stock_from(row: &Row) -> Result<Stock, mercato_kit::db::Error> {
    Ok(Stock {
        product_id: ProductId(parse_uuid(&row.try_get::<String, _>("product_id")?)?),
        seller_id: UserId(parse_uuid(&row.try_get::<String, _>("seller_id")?)?),
        sku: row.try_get("sku")?,
        active: mercato_kit::db::get_bool(row, "active")?,
        levels: levels_from(row)?,
    })
}

fn levels_from(row: &Row) -> Result<Levels, mercato_kit::db::Error> {
    Ok(Levels {
        on_hand: row.try_get("on_hand")?,
        reserved: row.try_get("reserved")?,
    })
}

/// The product's catalog facts, as its events carry them.
#[derive(Clone, Debug)]
pub struct ProductFacts<'a> {
    pub product_id: ProductId,
    pub seller_id: UserId,
    pub sku: &'a str,
    pub active: bool,
    /// When the catalog made this version (the event's time).
    pub seen_at: Micros,
}

/// Creates the product's stock row with nothing on hand, unless it exists. True when created.
pub async fn insert_stock(
    conn: &mut Conn,
    p: &ProductFacts<'_>,
    now: Micros,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "INSERT INTO stock (product_id, seller_id, sku, active, on_hand, reserved, product_seen_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 0, 0, $5, $6, $6) ON CONFLICT (product_id) DO NOTHING",
    )
    .bind(p.product_id.to_string())
    .bind(p.seller_id.to_string())
    .bind(p.sku)
    .bind(p.active as i64)
    .bind(p.seen_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Brings the catalog facts up to date, unless a newer version was applied already (events
/// can arrive out of order). True when updated.
pub async fn update_product(
    conn: &mut Conn,
    p: &ProductFacts<'_>,
    now: Micros,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE stock SET seller_id = $2, sku = $3, active = $4, product_seen_at = $5, updated_at = $6 \
         WHERE product_id = $1 AND product_seen_at <= $5",
    )
    .bind(p.product_id.to_string())
    .bind(p.seller_id.to_string())
    .bind(p.sku)
    .bind(p.active as i64)
    .bind(p.seen_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn stock(
    conn: &mut Conn,
    product_id: ProductId,
) -> Result<Option<Stock>, mercato_kit::db::Error> {
    let sql = format!("SELECT {STOCK_COLS} FROM stock WHERE product_id = $1");
    one_stock(conn, &sql, product_id).await
}

/// The one stock row `sql` returns for `product_id` (its `$1`): the plain read and the locking
/// read differ only in their SQL, so they decode alike.
async fn one_stock(
    conn: &mut Conn,
    sql: &str,
    product_id: ProductId,
) -> Result<Option<Stock>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(sql)
        .bind(product_id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(stock_from).transpose()
}

/// Reads the row and, inside a transaction, locks it until the end of the transaction (an
/// update that changes nothing takes the row lock on PostgreSQL; SQLite has one writer anyway),
/// so a change computed from these levels cannot be based on stale ones.
pub async fn lock_stock(
    conn: &mut Conn,
    product_id: ProductId,
) -> Result<Option<Stock>, mercato_kit::db::Error> {
    let sql =
        format!("UPDATE stock SET on_hand = on_hand WHERE product_id = $1 RETURNING {STOCK_COLS}");
    one_stock(conn, &sql, product_id).await
}

/// Products in id order, after `after` when given.
pub async fn list_stock(
    pool: &Pool,
    after: Option<ProductId>,
    limit: i64,
) -> Result<Vec<Stock>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(&format!(
        "SELECT {STOCK_COLS} FROM stock WHERE ($1 IS NULL OR product_id > $1) ORDER BY product_id LIMIT $2"
    ))
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(stock_from).collect()
}

/// Applies one movement if its rule holds at this instant, and records it in the ledger.
/// `None` when the rule did not hold (or the product has no stock row): nothing changed.
///
/// The rules, each the `WHERE` of one update: a reservation needs the product on sale and the
/// units available; a release or commit needs the units reserved; a restock may not pass
/// [`ON_HAND_MAX`]; a count (`Adjust`) may not go below what is reserved. An `Adjust` also
/// needs `before`, the levels read under [`lock_stock`] in this transaction, for its delta.
pub async fn apply_movement(
    conn: &mut Conn,
    product_id: ProductId,
    m: Movement,
    before: Option<Levels>,
    entry: &Entry<'_>,
) -> Result<Option<Levels>, mercato_kit::db::Error> {
    let (set, rule, amount) = match m {
        Movement::Initial(n) | Movement::Restock(n) => (
            "on_hand = on_hand + $2",
            "on_hand + $2 <= $4 AND $2 >= 0",
            n,
        ),
        Movement::Adjust { to } => ("on_hand = $2", "reserved <= $2 AND $2 <= $4", to),
        Movement::Reserve(q) => (
            "reserved = reserved + $2",
            "active = 1 AND on_hand - reserved >= $2 AND $2 > 0",
            q,
        ),
        Movement::Release(q) => ("reserved = reserved - $2", "reserved >= $2 AND $2 > 0", q),
        Movement::Commit(q) => (
            "on_hand = on_hand - $2, reserved = reserved - $2",
            "reserved >= $2 AND $2 > 0",
            q,
        ),
    };
    // Every statement binds the same four values so the placeholders stay simple.
    let sql = format!(
        "UPDATE stock SET {set}, updated_at = $3 WHERE product_id = $1 AND {rule} AND $4 > 0 \
         RETURNING on_hand, reserved"
    );
    let row = mercato_kit::db::query(&sql)
        .bind(product_id.to_string())
        .bind(amount)
        .bind(entry.now)
        .bind(ON_HAND_MAX)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let after = levels_from(&row)?;
    let (dh, dr) = match (m, before) {
        (Movement::Adjust { .. }, Some(b)) => (after.on_hand - b.on_hand, 0),
        (Movement::Adjust { .. }, None) => {
            return Err(mercato_kit::db::Error::Protocol(
                "an adjustment needs the levels read under lock_stock".into(),
            ))
        }
        _ => m.deltas(Levels::default()),
    };
    mercato_kit::db::query(
        "INSERT INTO stock_ledger (product_id, kind, on_hand_delta, reserved_delta, on_hand_after, reserved_after, \
         order_id, actor, note, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(product_id.to_string())
    .bind(m.kind().as_str())
    .bind(dh)
    .bind(dr)
    .bind(after.on_hand)
    .bind(after.reserved)
    .bind(entry.order_id.map(|o| o.to_string()))
    .bind(entry.actor)
    .bind(entry.note)
    .bind(entry.now)
    .execute(&mut *conn)
    .await?;
    Ok(Some(after))
}

const LEDGER_COLS: &str = "id, product_id, kind, on_hand_delta, reserved_delta, on_hand_after, \
                           reserved_after, order_id, actor, note, created_at";

fn ledger_from(row: &Row) -> Result<LedgerEntry, mercato_kit::db::Error> {
    Ok(LedgerEntry {
        id: row.try_get("id")?,
        product_id: ProductId(parse_uuid(&row.try_get::<String, _>("product_id")?)?),
        kind: decode(&row.try_get::<String, _>("kind")?)?,
        on_hand_delta: row.try_get("on_hand_delta")?,
        reserved_delta: row.try_get("reserved_delta")?,
        on_hand_after: row.try_get("on_hand_after")?,
        reserved_after: row.try_get("reserved_after")?,
        order_id: row
            .try_get::<Option<String>, _>("order_id")?
            .map(|s| parse_uuid(&s).map(OrderId))
            .transpose()?,
        actor: row.try_get("actor")?,
        note: row.try_get("note")?,
        created_at: row.try_get("created_at")?,
    })
}

/// A product's ledger, oldest first, after the entry `after` (0 for the start).
pub async fn ledger(
    pool: &Pool,
    product_id: ProductId,
    after: i64,
    limit: i64,
) -> Result<Vec<LedgerEntry>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(&format!(
        "SELECT {LEDGER_COLS} FROM stock_ledger WHERE product_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(product_id.to_string())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(ledger_from).collect()
}

/// A reservation about to be written.
pub struct NewReservation<'a> {
    pub order_id: OrderId,
    pub status: ReservationStatus,
    pub release_reason: Option<ReleaseReason>,
    pub expires_at: Option<Micros>,
    pub correlation_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub now: Micros,
}

/// Inserts the reservation unless the order has one. True when inserted: the caller is the one
/// that reserves; false means another delivery or request got there first.
pub async fn insert_reservation(
    conn: &mut Conn,
    r: &NewReservation<'_>,
) -> Result<bool, mercato_kit::db::Error> {
    let res = mercato_kit::db::query(
        "INSERT INTO reservations (order_id, status, release_reason, expires_at, correlation_id, traceparent, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(r.order_id.to_string())
    .bind(r.status.as_str())
    .bind(r.release_reason.map(|x| x.as_str()))
    .bind(r.expires_at)
    .bind(r.correlation_id)
    .bind(r.traceparent)
    .bind(r.now)
    .execute(conn)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub async fn insert_line(
    conn: &mut Conn,
    order_id: OrderId,
    line: &StockLine,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO reservation_lines (order_id, product_id, quantity) VALUES ($1, $2, $3)",
    )
    .bind(order_id.to_string())
    .bind(line.product_id.to_string())
    .bind(line.quantity)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn reservation(
    conn: &mut Conn,
    order_id: OrderId,
) -> Result<Option<Reservation>, mercato_kit::db::Error> {
    let Some(row) = mercato_kit::db::query(
        "SELECT order_id, status, release_reason, expires_at, correlation_id, traceparent, created_at, updated_at \
         FROM reservations WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let lines = mercato_kit::db::query(
        "SELECT product_id, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order_id.to_string())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(StockLine {
            product_id: ProductId(parse_uuid(&r.try_get::<String, _>("product_id")?)?),
            quantity: r.try_get("quantity")?,
        })
    })
    .collect::<Result<Vec<_>, mercato_kit::db::Error>>()?;
    Ok(Some(Reservation {
        order_id,
        status: decode(&row.try_get::<String, _>("status")?)?,
        release_reason: row
            .try_get::<Option<String>, _>("release_reason")?
            .map(|s| decode(&s))
            .transpose()?,
        expires_at: row.try_get("expires_at")?,
        lines,
        correlation_id: row.try_get("correlation_id")?,
        traceparent: row.try_get("traceparent")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

/// Moves the reservation from any of `from` to `to`, if it is in one of them now. True when
/// moved: exactly one of any number of concurrent callers sees true.
///
/// With `due_at`, only an active reservation whose `expires_at` has passed moves (expiry).
pub async fn transition(
    conn: &mut Conn,
    order_id: OrderId,
    from: &[ReservationStatus],
    to: ReservationStatus,
    reason: Option<ReleaseReason>,
    due_at: Option<Micros>,
    now: Micros,
) -> Result<bool, mercato_kit::db::Error> {
    if from.is_empty() {
        return Ok(false);
    }
    let marks: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 6)).collect();
    let due = if due_at.is_some() {
        " AND expires_at <= $5"
    } else {
        " AND $5 IS NULL"
    };
    let sql = format!(
        "UPDATE reservations SET status = $2, release_reason = $3, expires_at = NULL, updated_at = $4 \
         WHERE order_id = $1 AND status IN ({}){due}",
        marks.join(", ")
    );
    let mut q = mercato_kit::db::query(&sql)
        .bind(order_id.to_string())
        .bind(to.as_str())
        .bind(reason.map(|r| r.as_str()))
        .bind(now)
        .bind(due_at);
    for s in from {
        q = q.bind(s.as_str());
    }
    Ok(q.execute(conn).await?.rows_affected() == 1)
}

/// A reservation whose time has passed, and the trace of the checkout that made it, in which
/// its expiry is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub order_id: OrderId,
    pub traceparent: Option<String>,
}

fn due_from(r: &Row) -> Result<Due, mercato_kit::db::Error> {
    Ok(Due {
        order_id: OrderId(parse_uuid(&r.try_get::<String, _>("order_id")?)?),
        traceparent: r.try_get("traceparent")?,
    })
}

/// Active reservations whose time has passed, soonest first.
pub async fn due(pool: &Pool, now: Micros, limit: i64) -> Result<Vec<Due>, mercato_kit::db::Error> {
    mercato_kit::db::query(
        "SELECT order_id, traceparent FROM reservations WHERE status = 'active' \
         AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(due_from)
    .collect()
}

/// Takes one due reservation for the caller's transaction to expire (PostgreSQL only): locked
/// until that transaction ends, and skipped by every other sweeper meanwhile, so sweepers of
/// several replicas work through different reservations instead of queueing on the same row.
pub async fn claim_due(
    conn: &mut Conn,
    now: Micros,
) -> Result<Option<Due>, mercato_kit::db::Error> {
    mercato_kit::db::query(
        "SELECT order_id, traceparent FROM reservations WHERE status = 'active' \
         AND expires_at <= $1 ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(due_from)
    .transpose()
}

/// When the next active reservation expires, if any is active.
pub async fn next_expiry(pool: &Pool) -> Result<Option<Micros>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(
        "SELECT expires_at FROM reservations WHERE status = 'active' ORDER BY expires_at LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.try_get("expires_at")).transpose()
}

/// One product's books, three ways: its row, its ledger summed, and its reservations summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    pub product_id: ProductId,
    pub levels: Levels,
    /// The ledger's deltas summed: initial + restocks + adjustments − commits, and
    /// reserves − releases − commits.
    pub ledger: Levels,
    /// Units in active and held reservations.
    pub reserved_by_reservations: i64,
}

impl Audit {
    /// Invariant 1 of ARCHITECTURE.md for this product.
    pub fn holds(&self) -> bool {
        self.levels == self.ledger
            && self.levels.reserved == self.reserved_by_reservations
            && self.levels.reserved >= 0
            && self.levels.available() >= 0
    }
}

/// The books of every product, for tests.
pub async fn audit(pool: &Pool) -> Result<Vec<Audit>, mercato_kit::db::Error> {
    audit_page(pool, None, i64::MAX).await
}

/// The books of the products after `after` in id order, `limit` of them: the operator's audit
/// reads the shop a page at a time.
pub async fn audit_page(
    pool: &Pool,
    after: Option<ProductId>,
    limit: i64,
) -> Result<Vec<Audit>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT s.product_id, s.on_hand, s.reserved, \
         (SELECT CAST(COALESCE(SUM(l.on_hand_delta), 0) AS BIGINT) FROM stock_ledger l WHERE l.product_id = s.product_id) AS ledger_on_hand, \
         (SELECT CAST(COALESCE(SUM(l.reserved_delta), 0) AS BIGINT) FROM stock_ledger l WHERE l.product_id = s.product_id) AS ledger_reserved, \
         (SELECT CAST(COALESCE(SUM(rl.quantity), 0) AS BIGINT) FROM reservation_lines rl \
            JOIN reservations r ON r.order_id = rl.order_id \
            WHERE rl.product_id = s.product_id AND r.status IN ('active', 'held')) AS held \
         FROM stock s WHERE ($1 IS NULL OR s.product_id > $1) ORDER BY s.product_id LIMIT $2",
    )
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Audit {
                product_id: ProductId(parse_uuid(&r.try_get::<String, _>("product_id")?)?),
                levels: levels_from(r)?,
                ledger: Levels {
                    on_hand: r.try_get("ledger_on_hand")?,
                    reserved: r.try_get("ledger_reserved")?,
                },
                reserved_by_reservations: r.try_get("held")?,
            })
        })
        .collect()
}

/// How many reservations are active (expiring) and held (paid, kept past the TTL).
pub async fn open_reservations(pool: &Pool) -> Result<(i64, i64), mercato_kit::db::Error> {
    let row = mercato_kit::db::query(
        "SELECT COUNT(CASE WHEN status = 'active' THEN 1 END) AS active, \
         COUNT(CASE WHEN status = 'held' THEN 1 END) AS held \
         FROM reservations WHERE status IN ('active', 'held')",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("active")?, row.try_get("held")?))
}

/// How many active products have nothing available, and how many have 1 to `low` units.
pub async fn low_stock(pool: &Pool, low: i64) -> Result<(i64, i64), mercato_kit::db::Error> {
    let row = mercato_kit::db::query(
        "SELECT COUNT(CASE WHEN on_hand - reserved <= 0 THEN 1 END) AS out_n, \
         COUNT(CASE WHEN on_hand - reserved BETWEEN 1 AND $1 THEN 1 END) AS low_n \
         FROM stock WHERE active = 1",
    )
    .bind(low)
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("out_n")?, row.try_get("low_n")?))
}

/// A reservation as the audit compares it with its order: no lines, only how many units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedReservation {
    pub order_id: OrderId,
    pub status: ReservationStatus,
    pub release_reason: Option<ReleaseReason>,
    pub expires_at: Option<Micros>,
    /// Units over all its lines (0 for a tombstone).
    pub units: i64,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// Reservations in order id order after `after`, `limit` of them.
pub async fn audit_reservations(
    pool: &Pool,
    after: Option<OrderId>,
    limit: i64,
) -> Result<Vec<AuditedReservation>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT r.order_id, r.status, r.release_reason, r.expires_at, r.created_at, r.updated_at, \
         (SELECT CAST(COALESCE(SUM(rl.quantity), 0) AS BIGINT) FROM reservation_lines rl \
            WHERE rl.order_id = r.order_id) AS units \
         FROM reservations r WHERE ($1 IS NULL OR r.order_id > $1) ORDER BY r.order_id LIMIT $2",
    )
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditedReservation {
                order_id: OrderId(parse_uuid(&r.try_get::<String, _>("order_id")?)?),
                status: decode(&r.try_get::<String, _>("status")?)?,
                release_reason: r
                    .try_get::<Option<String>, _>("release_reason")?
                    .map(|s| decode(&s))
                    .transpose()?,
                expires_at: r.try_get("expires_at")?,
                units: r.try_get("units")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect()
}
