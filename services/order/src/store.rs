//! The order service's SQL: orders, their items and history, and the products read model. One
//! path for SQLite and PostgreSQL (see `mercato_kit::db`).
//!
//! Reads take a connection (`&mut **tx` inside a transaction, an acquired pool connection
//! outside), because reading an order is two queries and must see one state. Status changes
//! are compare-and-set on the previous status, so two replicas (or a request and an event)
//! can never both apply a transition to the same order.

use crate::domain::{
    reason_name, Backlog, Cursor, Order, OrderItem, OrderStatus, PricedOrder, ProductSnapshot,
    ShippingAddress, Step, StockCheck, WaitStep, Waiting,
};
use mercato_kit::contracts::ProductChanged;
use mercato_kit::db::{get_bool, Tx};
use mercato_kit::db::{parse_uuid, Conn, Pool, Row};
use mercato_kit::ids::{OrderId, ProductId, UserId};
use mercato_kit::time::Micros;
use std::collections::HashMap;

fn decode(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> mercato_kit::db::Error {
    mercato_kit::db::Error::Decode(e.into())
}

fn status_from(
    row: &Row,
    status: &str,
    reason: &str,
) -> Result<OrderStatus, mercato_kit::db::Error> {
    let s: String = row.try_get(status)?;
    let r: Option<String> = row.try_get(reason)?;
    OrderStatus::from_parts(&s, r.as_deref()).map_err(decode)
}

// ---------------------------------------------------------------------------------------------
// The products read model.

/// Records a product as announced at `at` (µs), unless a newer announcement is already here.
pub async fn upsert_product(
    tx: &mut Tx,
    p: &ProductChanged,
    at: i64,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO products (product_id, sku, name, price_cents, currency, seller_id, active, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (product_id) DO UPDATE SET sku = excluded.sku, name = excluded.name, \
         price_cents = excluded.price_cents, currency = excluded.currency, seller_id = excluded.seller_id, \
         active = excluded.active, updated_at = excluded.updated_at \
         WHERE products.updated_at <= excluded.updated_at",
    )
    .bind(p.product_id.to_string())
    .bind(&p.sku)
    .bind(&p.name)
    .bind(p.price_cents)
    .bind(&p.currency)
    .bind(p.seller_id.to_string())
    .bind(p.active as i64)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The known products among `ids`.
pub async fn products(
    conn: &mut Conn,
    ids: &[ProductId],
) -> Result<HashMap<ProductId, ProductSnapshot>, mercato_kit::db::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT product_id, sku, name, price_cents, currency, seller_id, active FROM products \
         WHERE product_id IN ({})",
        marks.join(", ")
    );
    let mut q = mercato_kit::db::query(&sql);
    for id in ids {
        q = q.bind(id.to_string());
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            let p = ProductSnapshot {
                product_id: ProductId(parse_uuid(&r.try_get::<String, _>("product_id")?)?),
                sku: r.try_get("sku")?,
                name: r.try_get("name")?,
                price_cents: r.try_get("price_cents")?,
                currency: r.try_get("currency")?,
                seller_id: UserId(parse_uuid(&r.try_get::<String, _>("seller_id")?)?),
                active: get_bool(r, "active")?,
            };
            Ok((p.product_id, p))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Orders.

const ORDER_COLS: &str =
    "id, customer_id, status, cancel_reason, total_cents, currency, payment_method, \
                          shipping_address, stock_check, created_at, updated_at, version, \
                          waiting_step, waiting_reason, waiting_attempt, waiting_next_attempt_at, \
                          waiting_retry_until, waiting_since";

/// The `waiting_*` columns: all set, or (nothing reported) the step NULL.
fn waiting_from(row: &Row) -> Result<Option<Waiting>, mercato_kit::db::Error> {
    let Some(step) = row.try_get::<Option<String>, _>("waiting_step")? else {
        return Ok(None);
    };
    let step = WaitStep::parse(&step).ok_or_else(|| decode(format!("waiting_step {step:?}")))?;
    let required = |column: &str| {
        row.try_get::<Option<i64>, _>(column)?
            .ok_or_else(|| decode(format!("{column} is NULL while waiting")))
    };
    Ok(Some(Waiting {
        step,
        reason: row
            .try_get::<Option<String>, _>("waiting_reason")?
            .unwrap_or_default(),
        attempt: required("waiting_attempt")?,
        next_attempt_at: required("waiting_next_attempt_at")?,
        retry_until: row.try_get("waiting_retry_until")?,
        since: required("waiting_since")?,
    }))
}

fn order_from(row: &Row) -> Result<Order, mercato_kit::db::Error> {
    let address: Option<String> = row.try_get("shipping_address")?;
    let stock: String = row.try_get("stock_check")?;
    Ok(Order {
        id: OrderId(parse_uuid(&row.try_get::<String, _>("id")?)?),
        customer_id: UserId(parse_uuid(&row.try_get::<String, _>("customer_id")?)?),
        status: status_from(row, "status", "cancel_reason")?,
        items: Vec::new(),
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        payment_method: row.try_get("payment_method")?,
        shipping_address: address
            .map(|a| serde_json::from_str::<ShippingAddress>(&a))
            .transpose()
            .map_err(decode)?,
        stock_check: StockCheck::parse(&stock)
            .ok_or_else(|| decode(format!("stock_check {stock:?}")))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        waiting: waiting_from(row)?,
    })
}

fn item_from(row: &Row) -> Result<(OrderId, OrderItem), mercato_kit::db::Error> {
    Ok((
        OrderId(parse_uuid(&row.try_get::<String, _>("order_id")?)?),
        OrderItem {
            product_id: ProductId(parse_uuid(&row.try_get::<String, _>("product_id")?)?),
            seller_id: UserId(parse_uuid(&row.try_get::<String, _>("seller_id")?)?),
            quantity: row.try_get("quantity")?,
            price_cents: row.try_get("price_cents")?,
            name: row.try_get("name")?,
        },
    ))
}

fn address_json(a: &Option<ShippingAddress>) -> Result<Option<String>, mercato_kit::db::Error> {
    a.as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| mercato_kit::db::Error::Encode(Box::new(e)))
}

/// Stores a new order (PENDING) with its items and the first entry of its history.
pub async fn insert_order(
    tx: &mut Tx,
    id: OrderId,
    customer: UserId,
    order: &PricedOrder,
    now: i64,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO orders (id, customer_id, status, cancel_reason, total_cents, currency, payment_method, \
         shipping_address, stock_check, created_at, updated_at, version, idempotency_key) \
         VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, $9, 1, $10)",
    )
    .bind(id.to_string())
    .bind(customer.to_string())
    .bind(OrderStatus::Pending.name())
    .bind(order.total_cents)
    .bind(order.currency.as_str())
    .bind(&order.payment_method)
    .bind(address_json(&order.shipping_address)?)
    .bind(order.stock_check.as_str())
    .bind(now)
    .bind(order.idempotency_key.as_deref())
    .execute(&mut **tx)
    .await?;
    for (n, item) in order.items.iter().enumerate() {
        mercato_kit::db::query(
            "INSERT INTO order_items (order_id, line_no, product_id, seller_id, quantity, price_cents, name) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.to_string())
        .bind(n as i64 + 1)
        .bind(item.product_id.to_string())
        .bind(item.seller_id.to_string())
        .bind(item.quantity)
        .bind(item.price_cents)
        .bind(&item.name)
        .execute(&mut **tx)
        .await?;
    }
    append_history(
        tx,
        id,
        crate::domain::CREATED,
        None,
        OrderStatus::Pending,
        now,
    )
    .await
}

/// One order with its items, as `conn` sees it.
pub async fn get_order(
    conn: &mut Conn,
    id: OrderId,
) -> Result<Option<Order>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(&format!("SELECT {ORDER_COLS} FROM orders WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(mut order) = row.as_ref().map(order_from).transpose()? else {
        return Ok(None);
    };
    let rows = mercato_kit::db::query(
        "SELECT order_id, product_id, seller_id, quantity, price_cents, name FROM order_items \
         WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    order.items = rows
        .iter()
        .map(|r| item_from(r).map(|(_, i)| i))
        .collect::<Result<_, _>>()?;
    Ok(Some(order))
}

/// The order's status alone.
pub async fn status_of(
    conn: &mut Conn,
    id: OrderId,
) -> Result<Option<OrderStatus>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query("SELECT status, cancel_reason FROM orders WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| status_from(&r, "status", "cancel_reason"))
        .transpose()
}

/// Moves the order from `from` to `to` if it is still in `from`; false when someone else moved
/// it first. Whatever the order was waiting on is forgotten once it leaves CONFIRMED (the step
/// answered, or the order was cancelled); a report received while PENDING is kept, since the
/// payment may be heard of before the reservation that confirms the order.
pub async fn set_status(
    tx: &mut Tx,
    id: OrderId,
    from: OrderStatus,
    to: OrderStatus,
    now: i64,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE orders SET status = $3, cancel_reason = $4, updated_at = $5, version = version + 1, \
         waiting_step = CASE WHEN $3 = 'CONFIRMED' THEN waiting_step END, \
         waiting_reason = CASE WHEN $3 = 'CONFIRMED' THEN waiting_reason END, \
         waiting_attempt = CASE WHEN $3 = 'CONFIRMED' THEN waiting_attempt END, \
         waiting_next_attempt_at = CASE WHEN $3 = 'CONFIRMED' THEN waiting_next_attempt_at END, \
         waiting_retry_until = CASE WHEN $3 = 'CONFIRMED' THEN waiting_retry_until END, \
         waiting_since = CASE WHEN $3 = 'CONFIRMED' THEN waiting_since END \
         WHERE id = $1 AND status = $2",
    )
    .bind(id.to_string())
    .bind(from.name())
    .bind(to.name())
    .bind(to.cancel_reason().map(reason_name))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records why the order waits, if it is still PENDING or CONFIRMED and nothing newer was
/// recorded (a report of a later attempt, or of a later wait); false otherwise, which is how a
/// late or repeated report is dropped. The wait keeps the `since` of the report that started
/// it. Neither the status, the version nor the history changes: waiting is not a state.
pub async fn record_wait(
    tx: &mut Tx,
    id: OrderId,
    w: &Waiting,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE orders SET waiting_step = $2, waiting_reason = $3, waiting_attempt = $4, \
         waiting_next_attempt_at = $5, waiting_retry_until = $6, \
         waiting_since = CASE WHEN waiting_step = $2 THEN waiting_since ELSE $7 END \
         WHERE id = $1 AND status IN ('PENDING', 'CONFIRMED') \
         AND (waiting_step IS NULL OR waiting_step <> $2 OR waiting_attempt < $4)",
    )
    .bind(id.to_string())
    .bind(w.step.as_str())
    .bind(&w.reason)
    .bind(w.attempt)
    .bind(w.next_attempt_at)
    .bind(w.retry_until)
    .bind(w.since)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Changes the shipping address if the order is still in `status`; false when it moved.
pub async fn set_address(
    tx: &mut Tx,
    id: OrderId,
    status: OrderStatus,
    address: &ShippingAddress,
    now: i64,
) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE orders SET shipping_address = $3, updated_at = $4, version = version + 1 \
         WHERE id = $1 AND status = $2",
    )
    .bind(id.to_string())
    .bind(status.name())
    .bind(address_json(&Some(address.clone()))?)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

// ---------------------------------------------------------------------------------------------
// History.

/// One entry of an order's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: i64,
    pub event_type: String,
    pub from_status: Option<OrderStatus>,
    pub to_status: OrderStatus,
    pub at: i64,
}

impl HistoryEntry {
    pub fn step(&self) -> Step {
        Step {
            event_type: self.event_type.clone(),
            from: self.from_status,
            to: self.to_status,
        }
    }
}

/// Appends a step to the order's history. Called only after the compare-and-set that made the
/// step won, so the next `seq` cannot be taken by a concurrent writer of the same order.
pub async fn append_history(
    tx: &mut Tx,
    id: OrderId,
    event_type: &str,
    from: Option<OrderStatus>,
    to: OrderStatus,
    at: i64,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO order_history (order_id, seq, event_type, from_status, to_status, reason, at) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6 FROM order_history WHERE order_id = $1",
    )
    .bind(id.to_string())
    .bind(event_type)
    .bind(from.map(|s| s.name()))
    .bind(to.name())
    .bind(to.cancel_reason().map(reason_name))
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The order's history, oldest first.
pub async fn history(
    conn: &mut Conn,
    id: OrderId,
) -> Result<Vec<HistoryEntry>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT seq, event_type, from_status, to_status, reason, at FROM order_history \
         WHERE order_id = $1 ORDER BY seq",
    )
    .bind(id.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let to = status_from(r, "to_status", "reason")?;
            let from: Option<String> = r.try_get("from_status")?;
            // The reason column belongs to `to`; a step never starts from a cancelled order,
            // so `from` needs none.
            let from = from
                .map(|f| OrderStatus::from_parts(&f, None).map_err(decode))
                .transpose()?;
            Ok(HistoryEntry {
                seq: r.try_get("seq")?,
                event_type: r.try_get("event_type")?,
                from_status: from,
                to_status: to,
                at: r.try_get("at")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Lists.

/// Which orders a list shows; every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub customer_id: Option<UserId>,
    /// Orders with at least one line of this seller.
    pub seller_id: Option<UserId>,
    pub status: Option<&'static str>,
    /// Placed at or after this time.
    pub created_from: Option<Micros>,
    /// Placed before this time.
    pub created_to: Option<Micros>,
    /// Still PENDING or CONFIRMED (the saga's own states) with no change since this time.
    pub stuck_since: Option<Micros>,
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// Orders newest first, after the cursor.
pub async fn list_orders(
    conn: &mut Conn,
    f: &ListFilter,
) -> Result<Vec<Order>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(&format!(
        "SELECT {ORDER_COLS} FROM orders o \
         WHERE ($1 IS NULL OR o.customer_id = $1) \
         AND ($2 IS NULL OR EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id AND i.seller_id = $2)) \
         AND ($3 IS NULL OR o.status = $3) \
         AND ($4 IS NULL OR o.created_at < $4 OR (o.created_at = $4 AND o.id < $5)) \
         AND ($7 IS NULL OR o.created_at >= $7) \
         AND ($8 IS NULL OR o.created_at < $8) \
         AND ($9 IS NULL OR (o.status IN ('PENDING', 'CONFIRMED') AND o.updated_at < $9)) \
         ORDER BY o.created_at DESC, o.id DESC LIMIT $6"
    ))
    .bind(f.customer_id.map(|c| c.to_string()))
    .bind(f.seller_id.map(|s| s.to_string()))
    .bind(f.status)
    .bind(f.after.map(|c| c.created_at))
    .bind(f.after.map(|c| c.id.to_string()))
    .bind(f.limit)
    .bind(f.created_from)
    .bind(f.created_to)
    .bind(f.stuck_since)
    .fetch_all(&mut *conn)
    .await?;
    let mut orders: Vec<Order> = rows.iter().map(order_from).collect::<Result<_, _>>()?;
    if orders.is_empty() {
        return Ok(orders);
    }
    let marks: Vec<String> = (1..=orders.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT order_id, product_id, seller_id, quantity, price_cents, name FROM order_items \
         WHERE order_id IN ({}) ORDER BY order_id, line_no",
        marks.join(", ")
    );
    let mut q = mercato_kit::db::query(&sql);
    for o in &orders {
        q = q.bind(o.id.to_string());
    }
    let mut by_order: HashMap<OrderId, Vec<OrderItem>> = HashMap::new();
    for row in q.fetch_all(&mut *conn).await? {
        let (id, item) = item_from(&row)?;
        by_order.entry(id).or_default().push(item);
    }
    for o in &mut orders {
        o.items = by_order.remove(&o.id).unwrap_or_default();
    }
    Ok(orders)
}

// ---------------------------------------------------------------------------------------------
// Back-pressure and the audit.

/// The saga's backlog as back-pressure measures it (see [`Backlog`]); both aggregates run over
/// the `orders_by_status` index, so they cost what the backlog is, not the history.
pub async fn saga_backlog(conn: &mut Conn) -> Result<Backlog, mercato_kit::db::Error> {
    let count = mercato_kit::db::query(
        "SELECT COUNT(*) AS n FROM orders WHERE status IN ('PENDING', 'CONFIRMED') \
         AND waiting_step IS NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    let oldest = mercato_kit::db::query(
        "SELECT MIN(created_at) AS oldest FROM orders WHERE status IN ('PENDING', 'CONFIRMED') \
         AND status = 'PENDING' AND waiting_step IS NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Backlog {
        orders: count.try_get("n")?,
        oldest_pending_at: oldest.try_get("oldest")?,
    })
}

/// An order as the audit compares it with the other services' records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedOrder {
    pub id: OrderId,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Whether it reported waiting on an outage (`waiting_for`).
    pub waiting: bool,
}

/// Orders in id order after `after`: ids are UUIDv7, so this is roughly placement order, and
/// a cursor survives orders being added behind it.
pub async fn audit_orders(
    conn: &mut Conn,
    after: Option<OrderId>,
    limit: i64,
) -> Result<Vec<AuditedOrder>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT id, status, cancel_reason, total_cents, currency, created_at, updated_at, waiting_step \
         FROM orders WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditedOrder {
                id: OrderId(parse_uuid(&r.try_get::<String, _>("id")?)?),
                status: status_from(r, "status", "cancel_reason")?,
                total_cents: r.try_get("total_cents")?,
                currency: r.try_get("currency")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                waiting: r.try_get::<Option<String>, _>("waiting_step")?.is_some(),
            })
        })
        .collect()
}

/// A customer's Idempotency-Key that placed more than one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    pub customer_id: UserId,
    pub idempotency_key: String,
    pub orders: Vec<OrderId>,
}

/// At most `limit` keys that placed more than one order (there should be none).
pub async fn duplicate_keys(
    conn: &mut Conn,
    limit: i64,
) -> Result<Vec<DuplicateKey>, mercato_kit::db::Error> {
    let groups = mercato_kit::db::query(
        "SELECT customer_id, idempotency_key FROM orders WHERE idempotency_key IS NOT NULL \
         GROUP BY customer_id, idempotency_key HAVING COUNT(*) > 1 \
         ORDER BY customer_id, idempotency_key LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(groups.len());
    for g in &groups {
        let customer: String = g.try_get("customer_id")?;
        let key: String = g.try_get("idempotency_key")?;
        let orders = mercato_kit::db::query(
            "SELECT id FROM orders WHERE customer_id = $1 AND idempotency_key = $2 ORDER BY id",
        )
        .bind(&customer)
        .bind(&key)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok(OrderId(parse_uuid(&r.try_get::<String, _>("id")?)?)))
        .collect::<Result<_, mercato_kit::db::Error>>()?;
        out.push(DuplicateKey {
            customer_id: UserId(parse_uuid(&customer)?),
            idempotency_key: key,
            orders,
        });
    }
    Ok(out)
}

/// The states an order waits in (the saga's and the seller's), as stored.
pub const OPEN_STATES: [&str; 4] = ["PENDING", "CONFIRMED", "PAID", "PROCESSING"];

/// For each non-final state with orders in it: how many, and when the longest-waiting one
/// last changed.
pub async fn open_states(pool: &Pool) -> Result<Vec<(String, i64, i64)>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT status, COUNT(*) AS n, MIN(updated_at) AS oldest FROM orders \
         WHERE status IN ('PENDING', 'CONFIRMED', 'PAID', 'PROCESSING') GROUP BY status",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("status")?, r.try_get("n")?, r.try_get("oldest")?)))
        .collect()
}
