//! `mercato audit`: checks the invariants of ARCHITECTURE.md across the services of a running
//! shop, through their ADMIN audit routes, so it works the same on SQLite and on PostgreSQL,
//! embedded or deployed.
//!
//! It reads each service a page at a time: the orders, the reservations and the payments are
//! all listed in order id order, so they are merged like sorted files (one page of each in
//! memory, whatever the size of the shop) and every order is judged with its reservation and
//! its payments side by side. Stock is judged per product, and every event service's outbox
//! and dead letters on their own.
//!
//! A running shop moves while it is read. Orders placed after the audit started are left
//! out, and a disagreement between services whose latest change is younger than `--settle` is
//! counted as "in flight" (an event on its way), not as a violation. Deadlines (an order
//! PENDING too long, a reservation past its expiry) are judged against the start of the audit.

use crate::shop::{Shop, ShopArgs};
use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub shop: ShopArgs,
    /// Seconds a disagreement between services may be explained by an event still on its way.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    /// Seconds an order may stay PENDING (waiting for its stock reservation).
    #[arg(long, default_value_t = 60)]
    pub pending_deadline: u64,
    /// Records per page asked of each service (1 to 1000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub page: i64,
}

/// How the audit judges, apart from where the shop is.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub settle: Duration,
    pub pending_deadline: Duration,
    pub page: i64,
}

impl From<&AuditArgs> for Options {
    fn from(a: &AuditArgs) -> Self {
        Options {
            settle: Duration::from_secs(a.settle),
            pending_deadline: Duration::from_secs(a.pending_deadline),
            page: a.page,
        }
    }
}

/// One broken invariant, with the ids to look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant: `stock`, `reservation`, `payment`, `idempotency`, `deadline`, `outbox`,
    /// `dead_letters`.
    pub check: &'static str,
    pub detail: String,
}

/// What an audit found.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Disagreements young enough to be events on their way.
    pub in_flight: Vec<String>,
    pub orders: u64,
    pub reservations: u64,
    pub payments: u64,
    pub products: u64,
    pub services: Vec<&'static str>,
    /// Orders left out because they were placed while the audit ran.
    pub too_new: u64,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations of one check.
    pub fn of(&self, check: &str) -> Vec<&Violation> {
        self.violations
            .iter()
            .filter(|v| v.check == check)
            .collect()
    }

    fn add(&mut self, check: &'static str, detail: String) {
        self.violations.push(Violation { check, detail });
    }

    /// The report for people.
    pub fn render(&self, shop: &str, o: &Options) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "mercato audit of {shop}");
        let _ = writeln!(
            out,
            "  read {} orders, {} reservations, {} payments, {} products; outbox and dead letters of {}",
            self.orders,
            self.reservations,
            self.payments,
            self.products,
            self.services.join(", ")
        );
        if self.too_new > 0 {
            let _ = writeln!(
                out,
                "  left out {} orders placed while the audit ran",
                self.too_new
            );
        }
        if !self.in_flight.is_empty() {
            let _ = writeln!(
                out,
                "  {} disagreements younger than {} s, taken as events on their way (run again to judge them):",
                self.in_flight.len(),
                o.settle.as_secs()
            );
            for d in self.in_flight.iter().take(10) {
                let _ = writeln!(out, "    - {d}");
            }
        }
        for (check, what) in CHECKS {
            let found = self.of(check);
            if found.is_empty() {
                let _ = writeln!(out, "  ok    {check:<12} {what}");
                continue;
            }
            let _ = writeln!(out, "  FAIL  {check:<12} {what}: {} found", found.len());
            for v in found.iter().take(50) {
                let _ = writeln!(out, "          - {}", v.detail);
            }
            if found.len() > 50 {
                let _ = writeln!(out, "          ... and {} more", found.len() - 50);
            }
        }
        let _ = writeln!(
            out,
            "{}",
            if self.clean() {
                "clean: every invariant holds".to_owned()
            } else {
                format!("{} violations", self.violations.len())
            }
        );
        out
    }
}

/// Every check, in report order, with what it means.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "stock",
        "stock is conserved: on_hand and reserved match the ledger and the live reservations, available >= 0",
    ),
    (
        "reservation",
        "every reservation matches its order's state",
    ),
    (
        "payment",
        "payments match orders: one authorization, captured <=> fulfilled, nothing live on a cancelled order, paid orders carry one live payment of their amount",
    ),
    ("idempotency", "no Idempotency-Key placed two orders"),
    ("deadline", "no order waits longer than its deadlines allow"),
    ("outbox", "every committed event is published"),
    ("dead_letters", "no event is parked in dead letters"),
];

/// The services with an outbox or an event consumer.
pub const EVENT_SERVICES: &[&str] = &["catalog", "order", "inventory", "payment", "cart"];

/// An RFC 3339 time as µs since the epoch.
fn micros(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_micros())
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn int(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The rules, on the records as the admin routes answer them.

/// An order as its audit page lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRow {
    pub id: String,
    pub status: String,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRow {
    pub order_id: String,
    pub status: String,
    pub expires_at: Option<i64>,
    pub units: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRow {
    pub id: String,
    pub order_id: String,
    pub status: String,
    pub amount_cents: i64,
    pub captured_cents: i64,
    pub currency: String,
    pub authorizations: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl OrderRow {
    fn from_json(v: &Value) -> Option<Self> {
        Some(OrderRow {
            id: v["id"].as_str()?.to_owned(),
            status: text(v, "status"),
            total_cents: int(v, "total_cents"),
            currency: text(v, "currency"),
            created_at: micros(&v["created_at"])?,
            updated_at: micros(&v["updated_at"])?,
        })
    }
}

impl ReservationRow {
    fn from_json(v: &Value) -> Option<Self> {
        Some(ReservationRow {
            order_id: v["order_id"].as_str()?.to_owned(),
            status: text(v, "status"),
            expires_at: micros(&v["expires_at"]),
            units: int(v, "units"),
            created_at: micros(&v["created_at"])?,
            updated_at: micros(&v["updated_at"])?,
        })
    }
}

impl PaymentRow {
    fn from_json(v: &Value) -> Option<Self> {
        Some(PaymentRow {
            id: text(v, "id"),
            order_id: v["order_id"].as_str()?.to_owned(),
            status: text(v, "status"),
            amount_cents: int(v, "amount_cents"),
            captured_cents: int(v, "captured_cents"),
            currency: text(v, "currency"),
            authorizations: int(v, "authorizations"),
            created_at: micros(&v["created_at"])?,
            updated_at: micros(&v["updated_at"])?,
        })
    }
}

/// The moment the audit judges at: records changed after `cutoff` are too fresh to hold
/// against the others.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// When the audit started (µs).
    pub started: i64,
    /// `started` − settle.
    pub cutoff: i64,
    pub pending_deadline_us: i64,
}

/// What the reservation of an order in `status` may be once the saga has settled.
fn reservation_fits(order: &str, reservation: Option<&str>) -> bool {
    match (order, reservation) {
        // Not reserved yet, reserving, or refused (the cancellation is on its way).
        ("PENDING", None | Some("active") | Some("released")) => true,
        ("CONFIRMED", Some("active")) => true,
        ("PAID" | "PROCESSING", Some("held")) => true,
        ("FULFILLED" | "REFUNDED", Some("committed")) => true,
        // Cancelled before inventory heard of it (a tombstone), or released.
        ("CANCELLED", None | Some("released")) => true,
        _ => false,
    }
}

/// Whether a payment holds or took the customer's money.
fn live(payment: &str) -> bool {
    matches!(payment, "AUTHORIZED" | "CAPTURED" | "PARTIALLY_REFUNDED")
}

/// What the payment of an order in `status` may be once the saga has settled.
fn payment_fits(order: &str, payment: Option<&str>) -> bool {
    match (order, payment) {
        // Not asked yet, or waiting for the processor (a pending card's webhook).
        ("PENDING" | "CONFIRMED", None | Some("PENDING")) => true,
        ("PAID" | "PROCESSING", Some("AUTHORIZED")) => true,
        ("FULFILLED", Some("CAPTURED")) => true,
        ("REFUNDED", Some("REFUNDED" | "PARTIALLY_REFUNDED")) => true,
        ("CANCELLED", None | Some("VOIDED" | "FAILED" | "REFUNDED")) => true,
        _ => false,
    }
}

/// Judges one order with its reservation and payments (any of the three may be missing).
pub fn judge_order(
    clock: &Clock,
    order: Option<&OrderRow>,
    reservation: Option<&ReservationRow>,
    payments: &[PaymentRow],
    report: &mut Report,
) {
    for p in payments.iter().filter(|p| p.authorizations > 1) {
        report.add(
            "payment",
            format!(
                "payment {} of order {}: the processor authorized it {} times (one live authorization per order)",
                p.id, p.order_id, p.authorizations
            ),
        );
    }
    let Some(o) = order else {
        // Another service knows an order the order service does not.
        if let Some(r) = reservation.filter(|r| r.created_at <= clock.cutoff) {
            if matches!(r.status.as_str(), "active" | "held" | "committed") {
                report.add(
                    "reservation",
                    format!(
                        "reservation of unknown order {} is {} ({} units)",
                        r.order_id, r.status, r.units
                    ),
                );
            }
        }
        for p in payments.iter().filter(|p| p.created_at <= clock.cutoff) {
            report.add(
                "payment",
                format!(
                    "payment {} ({}, {} {}) is for order {}, which does not exist",
                    p.id, p.status, p.amount_cents, p.currency, p.order_id
                ),
            );
        }
        return;
    };
    // Placed after the audit started: the services read before it may not have it yet.
    if o.created_at > clock.started {
        report.too_new += 1;
        return;
    }
    // Deadlines hold whatever is on its way.
    if o.status == "PENDING" && clock.started - o.created_at > clock.pending_deadline_us {
        report.add(
            "deadline",
            format!(
                "order {} PENDING for {} s (deadline {} s): its stock was never reserved or refused",
                o.id,
                (clock.started - o.created_at) / 1_000_000,
                clock.pending_deadline_us / 1_000_000
            ),
        );
    }
    if let Some(expired) = reservation
        .filter(|r| o.status == "CONFIRMED" && r.status == "active")
        .and_then(|r| r.expires_at)
        .filter(|at| *at < clock.cutoff)
    {
        report.add(
            "deadline",
            format!(
                "order {} CONFIRMED, its reservation expired {} s ago and was not released",
                o.id,
                (clock.started - expired) / 1_000_000
            ),
        );
    }
    if payments.len() > 1 {
        let ids: Vec<&str> = payments.iter().map(|p| p.id.as_str()).collect();
        report.add(
            "payment",
            format!(
                "order {} has {} payments: {}",
                o.id,
                payments.len(),
                ids.join(", ")
            ),
        );
    }
    let newest = payments
        .iter()
        .map(|p| p.updated_at)
        .chain(reservation.map(|r| r.updated_at))
        .fold(o.updated_at, i64::max);
    // An order still in the saga whose reservation or payment is a step ahead of it is being
    // moved along: the order service has yet to hear the event (its consumer may lag far
    // more than `settle` under load). Its deadlines above judge it if it never arrives.
    let ahead = matches!(o.status.as_str(), "PENDING" | "CONFIRMED")
        && (payments
            .iter()
            .any(|p| matches!(p.status.as_str(), "AUTHORIZED" | "FAILED" | "VOIDED"))
            || reservation.is_some_and(|r| r.status == "released"));
    let settled = newest <= clock.cutoff && !ahead;
    let mismatch = |report: &mut Report, check: &'static str, detail: String| {
        if settled {
            report.add(check, detail);
        } else {
            report.in_flight.push(detail);
        }
    };
    let r_status = reservation.map(|r| r.status.as_str());
    if !reservation_fits(&o.status, r_status) {
        let what = match (o.status.as_str(), r_status) {
            ("CANCELLED", Some(s @ ("active" | "held"))) => {
                format!("reservation left {s} for a cancelled order")
            }
            ("CANCELLED", Some("committed")) => "stock committed for a cancelled order".into(),
            (_, None) => "no reservation".into(),
            (_, Some(s)) => format!("reservation {s}"),
        };
        mismatch(
            report,
            "reservation",
            format!("order {} {}: {what}", o.id, o.status),
        );
    }
    let p = payments.first();
    let p_status = p.map(|p| p.status.as_str());
    if !payment_fits(&o.status, p_status) {
        let what = match (o.status.as_str(), p) {
            ("CANCELLED", Some(p)) if live(&p.status) || p.status == "PENDING" => {
                format!("payment {} still {} on a cancelled order", p.id, p.status)
            }
            ("FULFILLED", Some(p)) => {
                format!("goods without money: payment {} is {}", p.id, p.status)
            }
            (_, Some(p)) if p.captured_cents > 0 => format!(
                "money without goods: payment {} {} ({} captured)",
                p.id, p.status, p.captured_cents
            ),
            (_, Some(p)) => format!("payment {} {}", p.id, p.status),
            (_, None) => "no payment".into(),
        };
        mismatch(
            report,
            "payment",
            format!("order {} {}: {what}", o.id, o.status),
        );
    }
    if let Some(p) = p.filter(|_| matches!(o.status.as_str(), "PAID" | "PROCESSING" | "FULFILLED"))
    {
        if p.amount_cents != o.total_cents || p.currency != o.currency {
            report.add(
                "payment",
                format!(
                    "order {} {} totals {} {} but its payment {} is {} {}",
                    o.id, o.status, o.total_cents, o.currency, p.id, p.amount_cents, p.currency
                ),
            );
        }
    }
}

/// Judges one product's books.
pub fn judge_stock(v: &Value, report: &mut Report) {
    let id = text(v, "product_id");
    let (on_hand, reserved, available) =
        (int(v, "on_hand"), int(v, "reserved"), int(v, "available"));
    let (ledger_on_hand, ledger_reserved, by_reservations) = (
        int(v, "ledger_on_hand"),
        int(v, "ledger_reserved"),
        int(v, "reserved_by_reservations"),
    );
    if on_hand != ledger_on_hand {
        report.add(
            "stock",
            format!("product {id}: on_hand {on_hand} but the ledger adds up to {ledger_on_hand}"),
        );
    }
    if reserved != ledger_reserved {
        report.add(
            "stock",
            format!(
                "product {id}: reserved {reserved} but the ledger adds up to {ledger_reserved}"
            ),
        );
    }
    if reserved != by_reservations {
        report.add(
            "stock",
            format!(
                "product {id}: reserved {reserved} but live reservations hold {by_reservations}"
            ),
        );
    }
    if available < 0 || reserved < 0 {
        report.add(
            "stock",
            format!("product {id}: oversold (on_hand {on_hand}, reserved {reserved}, available {available})"),
        );
    }
}

/// Judges one service's outbox and dead letters.
pub fn judge_events(service: &str, v: &Value, clock: &Clock, report: &mut Report) {
    let pending = int(v, "outbox_pending");
    if let Some(oldest) = micros(&v["outbox_oldest_at"]).filter(|at| *at <= clock.cutoff) {
        report.add(
            "outbox",
            format!(
                "{service}: {pending} events unpublished, the oldest written {} s ago",
                (clock.started - oldest) / 1_000_000
            ),
        );
    }
    let open = int(v, "dead_letters_open");
    if open > 0 {
        let ids: Vec<&str> = v["dead_letter_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        report.add(
            "dead_letters",
            format!(
                "{service}: {open} events parked (GET /api/v1/admin/{service}/dead-letters): {}",
                ids.join(", ")
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the shop.

/// One audit list read a page at a time, in key order.
struct Pages<'a> {
    shop: &'a Shop,
    token: &'a str,
    url: String,
    page: i64,
    buffer: VecDeque<Value>,
    cursor: Option<String>,
    done: bool,
    key: &'static str,
    last_key: Option<String>,
}

impl<'a> Pages<'a> {
    fn new(shop: &'a Shop, token: &'a str, url: String, page: i64, key: &'static str) -> Self {
        Pages {
            shop,
            token,
            url,
            page,
            buffer: VecDeque::new(),
            cursor: None,
            done: false,
            key,
            last_key: None,
        }
    }

    /// The next record's key, fetching a page when needed.
    async fn peek_key(&mut self) -> anyhow::Result<Option<String>> {
        while self.buffer.is_empty() && !self.done {
            let mut url = format!("{}?limit={}", self.url, self.page);
            if let Some(c) = &self.cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self.shop.get_json(&url, Some(self.token)).await?;
            let items = page["items"]
                .as_array()
                .with_context(|| format!("{url} answered without items"))?;
            self.buffer.extend(items.iter().cloned());
            self.cursor = page["next_cursor"].as_str().map(str::to_owned);
            self.done = self.cursor.is_none();
        }
        let Some(front) = self.buffer.front() else {
            return Ok(None);
        };
        let key = text(front, self.key);
        // The merge needs every list in the same order; say so rather than judge wrongly. (A
        // repeated key is allowed: two payments of one order are for the audit to report.)
        if self.last_key.as_ref().is_some_and(|last| *last > key) {
            bail!(
                "{} is not in key order ({key} after {}); cannot merge it",
                self.url,
                self.last_key.as_deref().unwrap_or_default()
            );
        }
        Ok(Some(key))
    }

    /// The next record if its key is `key`.
    async fn take_if(&mut self, key: &str) -> anyhow::Result<Option<Value>> {
        if self.peek_key().await?.as_deref() != Some(key) {
            return Ok(None);
        }
        self.last_key = Some(key.to_owned());
        Ok(self.buffer.pop_front())
    }
}

/// Audits the shop as `admin` (an access token).
pub async fn audit(shop: &Shop, admin: &str, o: &Options) -> anyhow::Result<Report> {
    let started = chrono::Utc::now().timestamp_micros();
    let clock = Clock {
        started,
        cutoff: started - o.settle.as_micros() as i64,
        pending_deadline_us: o.pending_deadline.as_micros() as i64,
    };
    let mut report = Report::default();

    // Stock, a product at a time.
    let mut stock = Pages::new(
        shop,
        admin,
        shop.admin("inventory", "/audit/stock"),
        o.page,
        "product_id",
    );
    while let Some(key) = stock.peek_key().await? {
        if let Some(v) = stock.take_if(&key).await? {
            report.products += 1;
            judge_stock(&v, &mut report);
        }
    }

    // Orders, reservations and payments, merged on the order id.
    let mut orders = Pages::new(
        shop,
        admin,
        shop.admin("order", "/audit/orders"),
        o.page,
        "id",
    );
    let mut reservations = Pages::new(
        shop,
        admin,
        shop.admin("inventory", "/audit/reservations"),
        o.page,
        "order_id",
    );
    let mut payments = Pages::new(
        shop,
        admin,
        shop.admin("payment", "/audit/payments"),
        o.page,
        "order_id",
    );
    loop {
        let heads = [
            orders.peek_key().await?,
            reservations.peek_key().await?,
            payments.peek_key().await?,
        ];
        let Some(key) = heads.into_iter().flatten().min() else {
            break;
        };
        let order = orders.take_if(&key).await?;
        let reservation = reservations.take_if(&key).await?;
        let mut pays = Vec::new();
        while let Some(p) = payments.take_if(&key).await? {
            pays.push(p);
        }
        let order = order.as_ref().map(|v| {
            report.orders += 1;
            OrderRow::from_json(v).with_context(|| format!("an unreadable order: {v}"))
        });
        let reservation = reservation.as_ref().map(|v| {
            report.reservations += 1;
            ReservationRow::from_json(v).with_context(|| format!("an unreadable reservation: {v}"))
        });
        let order = order.transpose()?;
        let reservation = reservation.transpose()?;
        let pays = pays
            .iter()
            .map(|v| {
                PaymentRow::from_json(v).with_context(|| format!("an unreadable payment: {v}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        report.payments += pays.len() as u64;
        judge_order(
            &clock,
            order.as_ref(),
            reservation.as_ref(),
            &pays,
            &mut report,
        );
    }

    let keys = shop
        .get_json(&shop.admin("order", "/audit/order-keys"), Some(admin))
        .await?;
    for k in keys["items"].as_array().into_iter().flatten() {
        let ids: Vec<&str> = k["order_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        report.add(
            "idempotency",
            format!(
                "customer {} placed {} orders with Idempotency-Key {:?}: {}",
                text(k, "customer_id"),
                ids.len(),
                text(k, "idempotency_key"),
                ids.join(", ")
            ),
        );
    }

    for &service in EVENT_SERVICES {
        let v = shop
            .get_json(&shop.admin(service, "/audit/events"), Some(admin))
            .await?;
        judge_events(service, &v, &clock, &mut report);
        report.services.push(service);
    }
    Ok(report)
}

/// `mercato audit`: 0 when clean, 1 when anything is off, 2 when it could not run.
pub async fn main(a: AuditArgs) -> ExitCode {
    let options = Options::from(&a);
    let outcome = async {
        let shop = Shop::resolve(&a.shop, 4)?;
        let admin = shop
            .login(&a.shop.admin_email, &a.shop.admin_password)
            .await?;
        let report = audit(&shop, &admin, &options).await?;
        Ok::<_, anyhow::Error>((shop.describe(), report))
    }
    .await;
    match outcome {
        Ok((shop, report)) => {
            print!("{}", report.render(&shop, &options));
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("mercato audit: could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: i64 = 1_000_000;

    fn clock() -> Clock {
        Clock {
            started: 10_000 * S,
            cutoff: 9_990 * S,
            pending_deadline_us: 60 * S,
        }
    }

    fn order(status: &str, at: i64) -> OrderRow {
        OrderRow {
            id: "o1".into(),
            status: status.into(),
            total_cents: 1200,
            currency: "USD".into(),
            created_at: at,
            updated_at: at,
        }
    }

    fn reservation(status: &str, at: i64) -> ReservationRow {
        ReservationRow {
            order_id: "o1".into(),
            status: status.into(),
            expires_at: (status == "active").then_some(at + 1800 * S),
            units: 1,
            created_at: at,
            updated_at: at,
        }
    }

    fn payment(status: &str, at: i64) -> PaymentRow {
        PaymentRow {
            id: "p1".into(),
            order_id: "o1".into(),
            status: status.into(),
            amount_cents: 1200,
            captured_cents: if status == "CAPTURED" { 1200 } else { 0 },
            currency: "USD".into(),
            authorizations: u8::from(status != "PENDING") as i64,
            created_at: at,
            updated_at: at,
        }
    }

    fn judge(o: Option<OrderRow>, r: Option<ReservationRow>, p: Vec<PaymentRow>) -> Report {
        let mut report = Report::default();
        judge_order(&clock(), o.as_ref(), r.as_ref(), &p, &mut report);
        report
    }

    #[test]
    fn every_settled_saga_outcome_is_clean() {
        let old = 5_000 * S;
        for (o, r, p) in [
            ("CONFIRMED", Some("active"), Some("PENDING")),
            ("PAID", Some("held"), Some("AUTHORIZED")),
            ("PROCESSING", Some("held"), Some("AUTHORIZED")),
            ("FULFILLED", Some("committed"), Some("CAPTURED")),
            ("REFUNDED", Some("committed"), Some("REFUNDED")),
            ("CANCELLED", Some("released"), Some("VOIDED")),
            ("CANCELLED", Some("released"), None),
            ("CANCELLED", None, None),
            ("CANCELLED", Some("released"), Some("FAILED")),
        ] {
            let mut res = r.map(|s| reservation(s, old));
            // A CONFIRMED order's reservation has not expired yet.
            if let Some(r) = res.as_mut().filter(|r| r.status == "active") {
                r.expires_at = Some(clock().started + 600 * S);
            }
            let report = judge(
                Some(order(o, old)),
                res,
                p.map(|s| payment(s, old)).into_iter().collect(),
            );
            assert!(report.clean(), "{o} {r:?} {p:?}: {:?}", report.violations);
        }
    }

    #[test]
    fn a_settled_disagreement_is_a_violation_and_a_fresh_one_is_in_flight() {
        let old = 5_000 * S;
        let report = judge(
            Some(order("CANCELLED", old)),
            Some(reservation("active", old)),
            vec![],
        );
        assert_eq!(report.of("reservation").len(), 1);
        assert!(report.violations[0]
            .detail
            .contains("reservation left active for a cancelled order"));

        let fresh = 9_995 * S;
        let mut o = order("CANCELLED", old);
        o.updated_at = fresh;
        let report = judge(Some(o), Some(reservation("active", old)), vec![]);
        assert!(report.clean(), "{:?}", report.violations);
        assert_eq!(report.in_flight.len(), 1);
    }

    #[test]
    fn an_order_behind_its_payment_is_on_its_way_until_its_deadline() {
        let at = 9_950 * S;
        let r = judge(
            Some(order("PENDING", at)),
            Some(reservation("active", at)),
            vec![payment("AUTHORIZED", at)],
        );
        assert!(r.clean() && r.in_flight.len() == 1, "{r:?}");
        let r = judge(
            Some(order("PENDING", 1_000 * S)),
            Some(reservation("active", 1_000 * S)),
            vec![payment("AUTHORIZED", 1_000 * S)],
        );
        assert_eq!(r.of("deadline").len(), 1, "{r:?}");
        // Money taken is never a step of the saga for an order not yet paid.
        let r = judge(
            Some(order("CONFIRMED", at)),
            Some(reservation("active", at)),
            vec![payment("CAPTURED", at)],
        );
        assert!(
            r.of("payment")[0].detail.contains("money without goods"),
            "{r:?}"
        );
    }

    #[test]
    fn money_rules_name_the_payment() {
        let old = 5_000 * S;
        let r = judge(
            Some(order("CANCELLED", old)),
            Some(reservation("released", old)),
            vec![payment("AUTHORIZED", old)],
        );
        assert!(r.of("payment")[0]
            .detail
            .contains("still AUTHORIZED on a cancelled order"));
        let r = judge(
            Some(order("PAID", old)),
            Some(reservation("held", old)),
            vec![payment("CAPTURED", old)],
        );
        assert!(r.of("payment")[0].detail.contains("money without goods"));
        let mut twice = payment("AUTHORIZED", old);
        twice.authorizations = 2;
        let r = judge(
            Some(order("PAID", old)),
            Some(reservation("held", old)),
            vec![twice],
        );
        assert!(r.of("payment")[0].detail.contains("authorized it 2 times"));
        let mut short = payment("AUTHORIZED", old);
        short.amount_cents = 1100;
        let r = judge(
            Some(order("PAID", old)),
            Some(reservation("held", old)),
            vec![short],
        );
        assert!(r.of("payment")[0].detail.contains("totals 1200 USD"));
        let r = judge(None, None, vec![payment("AUTHORIZED", old)]);
        assert!(r.of("payment")[0].detail.contains("which does not exist"));
    }

    #[test]
    fn deadlines_and_fresh_orders() {
        let r = judge(Some(order("PENDING", 1_000 * S)), None, vec![]);
        assert!(r.of("deadline")[0].detail.contains("PENDING for 9000 s"));
        let mut res = reservation("active", 1_000 * S);
        res.expires_at = Some(2_000 * S);
        let r = judge(
            Some(order("CONFIRMED", 1_000 * S)),
            Some(res),
            vec![payment("PENDING", 1_000 * S)],
        );
        assert!(r.of("deadline")[0].detail.contains("expired 8000 s ago"));
        // Placed a moment before the audit: judged (and fine); during it: left out.
        let r = judge(Some(order("PENDING", 9_999 * S)), None, vec![]);
        assert!(r.clean() && r.too_new == 0, "{r:?}");
        let r = judge(Some(order("PENDING", 10_001 * S)), None, vec![]);
        assert!(r.clean());
        assert_eq!(r.too_new, 1);
    }

    #[test]
    fn books_that_do_not_add_up_and_old_outbox_rows() {
        let mut r = Report::default();
        judge_stock(
            &json!({"product_id": "p", "on_hand": 10, "reserved": 2, "available": 8,
                "ledger_on_hand": 10, "ledger_reserved": 2, "reserved_by_reservations": 2}),
            &mut r,
        );
        assert!(r.clean());
        judge_stock(
            &json!({"product_id": "p", "on_hand": 12, "reserved": 2, "available": 10,
                "ledger_on_hand": 10, "ledger_reserved": 2, "reserved_by_reservations": 2}),
            &mut r,
        );
        assert!(r.of("stock")[0]
            .detail
            .contains("on_hand 12 but the ledger adds up to 10"));
        let c = clock();
        let mut r = Report::default();
        judge_events(
            "order",
            &json!({"outbox_pending": 3, "outbox_oldest_at": "1970-01-01T02:00:00.000Z",
                "dead_letters_open": 1, "dead_letter_ids": ["d1"]}),
            &c,
            &mut r,
        );
        assert!(r.of("outbox")[0].detail.contains("3 events unpublished"));
        assert!(r.of("dead_letters")[0].detail.contains("d1"));
    }
}
