//! The order's rules, free of HTTP and SQL. This is where an order changes state: the one
//! function [`transition`] decides, for every status and every command, the next status and
//! the events to announce, or refuses. Nothing else in the crate compares statuses to decide
//! what may happen.
//!
//! Beside it: what a new order must look like (lines, payment method, address), how it is
//! priced from the product snapshots, who may see an order, and the list cursor.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mercato_kit::auth::{Principal, Role};
use mercato_kit::contracts::CancelReason;
use mercato_kit::ids::{Currency, OrderId, ProductId, UserId};
use mercato_kit::validate::{self, Errors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------------
// The state machine.

/// Where an order is in its life. `Cancelled` carries why, because what the other services
/// must undo depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Paid,
    Processing,
    Fulfilled,
    Cancelled(CancelReason),
    Refunded,
}

/// Every cancel reason, for parsing and for the tests that walk the whole table.
pub const CANCEL_REASONS: [CancelReason; 5] = [
    CancelReason::OutOfStock,
    CancelReason::PaymentDeclined,
    CancelReason::ReservationExpired,
    CancelReason::CustomerCancelled,
    CancelReason::AdminCancelled,
];

/// A cancel reason as stored and shown (the contract's snake_case spelling).
pub fn reason_name(r: CancelReason) -> &'static str {
    match r {
        CancelReason::OutOfStock => "out_of_stock",
        CancelReason::PaymentDeclined => "payment_declined",
        CancelReason::ReservationExpired => "reservation_expired",
        CancelReason::CustomerCancelled => "customer_cancelled",
        CancelReason::AdminCancelled => "admin_cancelled",
    }
}

pub fn parse_reason(s: &str) -> Option<CancelReason> {
    CANCEL_REASONS.into_iter().find(|r| reason_name(*r) == s)
}

impl OrderStatus {
    /// The status names, as stored in `orders.status` and shown by the API.
    pub const NAMES: [&'static str; 7] = [
        "PENDING",
        "CONFIRMED",
        "PAID",
        "PROCESSING",
        "FULFILLED",
        "CANCELLED",
        "REFUNDED",
    ];

    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Paid => "PAID",
            OrderStatus::Processing => "PROCESSING",
            OrderStatus::Fulfilled => "FULFILLED",
            OrderStatus::Cancelled(_) => "CANCELLED",
            OrderStatus::Refunded => "REFUNDED",
        }
    }

    pub fn cancel_reason(self) -> Option<CancelReason> {
        match self {
            OrderStatus::Cancelled(r) => Some(r),
            _ => None,
        }
    }

    /// Rebuilds a status from its two stored columns.
    pub fn from_parts(status: &str, reason: Option<&str>) -> Result<OrderStatus, String> {
        let bad = || format!("not a valid order status: {status:?} / {reason:?}");
        Ok(match (status, reason) {
            ("PENDING", None) => OrderStatus::Pending,
            ("CONFIRMED", None) => OrderStatus::Confirmed,
            ("PAID", None) => OrderStatus::Paid,
            ("PROCESSING", None) => OrderStatus::Processing,
            ("FULFILLED", None) => OrderStatus::Fulfilled,
            ("REFUNDED", None) => OrderStatus::Refunded,
            ("CANCELLED", Some(r)) => OrderStatus::Cancelled(parse_reason(r).ok_or_else(bad)?),
            _ => return Err(bad()),
        })
    }

    /// Still waiting for the saga (stock, payment): what `?wait` waits out.
    pub fn awaits_saga(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::Confirmed)
    }

    /// Where a status stream ends: nothing a watcher waits for comes after these.
    pub fn ends_stream(self) -> bool {
        matches!(
            self,
            OrderStatus::Fulfilled | OrderStatus::Cancelled(_) | OrderStatus::Refunded
        )
    }

    /// The shipping address may change until the goods leave (and not on a dead order).
    pub fn address_editable(self) -> bool {
        matches!(
            self,
            OrderStatus::Pending
                | OrderStatus::Confirmed
                | OrderStatus::Paid
                | OrderStatus::Processing
        )
    }
}

/// Something that asks an order to move: a saga event from another service, or a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    InventoryReserved,
    ReservationFailed,
    PaymentAuthorized,
    PaymentFailed,
    InventoryReleasedExpired,
    Cancel { by_admin: bool },
    Process,
    Fulfill,
    Refund { amount_cents: Option<i64> },
}

/// The history label of the creation, the first entry of every order's history.
pub const CREATED: &str = "order.created";

impl Command {
    /// What the order's history calls this step: the saga event that caused it, or the
    /// order event it announces.
    pub fn history_type(self) -> &'static str {
        match self {
            Command::InventoryReserved => "inventory.reserved",
            Command::ReservationFailed => "inventory.reservation_failed",
            Command::PaymentAuthorized => "payment.authorized",
            Command::PaymentFailed => "payment.failed",
            Command::InventoryReleasedExpired => "inventory.released",
            Command::Cancel { .. } => "order.cancelled",
            Command::Process => "order.processing",
            Command::Fulfill => "order.fulfilled",
            Command::Refund { .. } => "order.refunded",
        }
    }

    /// The status this command leads to when it is allowed, for refusals that name it.
    pub fn target(self) -> &'static str {
        match self {
            Command::InventoryReserved => "CONFIRMED",
            Command::PaymentAuthorized => "PAID",
            Command::ReservationFailed
            | Command::PaymentFailed
            | Command::InventoryReleasedExpired
            | Command::Cancel { .. } => "CANCELLED",
            Command::Process => "PROCESSING",
            Command::Fulfill => "FULFILLED",
            Command::Refund { .. } => "REFUNDED",
        }
    }

    /// The command a history entry records (see [`fold`]). A refund's amount is not part of
    /// the status, so it is not needed to replay one.
    pub fn from_history(event_type: &str, to: OrderStatus) -> Option<Command> {
        Some(match event_type {
            "inventory.reserved" => Command::InventoryReserved,
            "inventory.reservation_failed" => Command::ReservationFailed,
            "payment.authorized" => Command::PaymentAuthorized,
            "payment.failed" => Command::PaymentFailed,
            "inventory.released" => Command::InventoryReleasedExpired,
            "order.cancelled" => Command::Cancel {
                by_admin: to == OrderStatus::Cancelled(CancelReason::AdminCancelled),
            },
            "order.processing" => Command::Process,
            "order.fulfilled" => Command::Fulfill,
            "order.refunded" => Command::Refund { amount_cents: None },
            _ => return None,
        })
    }
}

/// An event a transition announces (written to the outbox with the status change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    OrderPaid,
    OrderCancelled(CancelReason),
    OrderFulfilled,
    OrderRefunded { amount_cents: Option<i64> },
}

/// A command the order's status does not allow. Never applied: an HTTP caller gets a 409, a
/// late or repeated saga event is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from {} to {} ({})", .from.name(), .command.target(), .command.history_type())]
pub struct Refusal {
    pub from: OrderStatus,
    pub command: Command,
}

impl Refusal {
    /// A cancel of an order already cancelled: asking twice is answered with the order as it
    /// is, not an error.
    pub fn is_repeated_cancel(&self) -> bool {
        matches!(
            (self.from, self.command),
            (OrderStatus::Cancelled(_), Command::Cancel { .. })
        )
    }
}

/// The order state machine. Payment and stock answers come from different producers, so a
/// payment may be authorized before the reservation is seen (PENDING → PAID directly, and the
/// reservation then changes nothing). Everything not listed is refused.
pub fn transition(
    status: OrderStatus,
    command: &Command,
) -> Result<(OrderStatus, Vec<Effect>), Refusal> {
    use CancelReason as R;
    use Command as C;
    use OrderStatus as S;
    let cancel = |r: CancelReason| Ok((S::Cancelled(r), vec![Effect::OrderCancelled(r)]));
    match (status, *command) {
        (S::Pending, C::InventoryReserved) => Ok((S::Confirmed, vec![])),
        (S::Pending, C::ReservationFailed) => cancel(R::OutOfStock),
        (S::Pending | S::Confirmed, C::PaymentAuthorized) => Ok((S::Paid, vec![Effect::OrderPaid])),
        (S::Pending | S::Confirmed, C::PaymentFailed) => cancel(R::PaymentDeclined),
        // Also once PROCESSING: inventory may have swept the reservation before it heard the
        // order was paid, and the payment service voids the hold when stock is released for
        // expiry. Goods without their stock and money must not be fulfilled.
        (S::Pending | S::Confirmed | S::Paid | S::Processing, C::InventoryReleasedExpired) => {
            cancel(R::ReservationExpired)
        }
        (S::Pending | S::Confirmed | S::Paid | S::Processing, C::Cancel { by_admin }) => {
            cancel(if by_admin {
                R::AdminCancelled
            } else {
                R::CustomerCancelled
            })
        }
        (S::Paid, C::Process) => Ok((S::Processing, vec![])),
        (S::Paid | S::Processing, C::Fulfill) => Ok((S::Fulfilled, vec![Effect::OrderFulfilled])),
        (S::Fulfilled, C::Refund { amount_cents }) => {
            Ok((S::Refunded, vec![Effect::OrderRefunded { amount_cents }]))
        }
        _ => Err(Refusal {
            from: status,
            command: *command,
        }),
    }
}

/// A partial refund gives back part of what was paid, never more and never nothing.
pub fn check_refund(amount_cents: i64, total_cents: i64) -> Result<(), String> {
    if (1..=total_cents).contains(&amount_cents) {
        Ok(())
    } else {
        Err(format!(
            "must be from 1 to the order total ({total_cents}); leave it out to refund everything"
        ))
    }
}

/// One recorded step of an order's history, as far as its status is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub event_type: String,
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
}

/// Rebuilds an order's status from its history by replaying each step through [`transition`];
/// fails on a history the state machine could not have produced.
pub fn fold(history: &[Step]) -> Result<OrderStatus, String> {
    let (first, rest) = history.split_first().ok_or("the history is empty")?;
    if first.event_type != CREATED || first.from.is_some() || first.to != OrderStatus::Pending {
        return Err(format!(
            "the history must open with {CREATED} into PENDING, not {first:?}"
        ));
    }
    rest.iter().try_fold(OrderStatus::Pending, |status, step| {
        if step.from != Some(status) {
            return Err(format!("step {step:?} does not start from {status:?}"));
        }
        let command = Command::from_history(&step.event_type, step.to)
            .ok_or_else(|| format!("unknown history entry {:?}", step.event_type))?;
        let (next, _) = transition(status, &command).map_err(|r| r.to_string())?;
        if next != step.to {
            return Err(format!("step {step:?} should have led to {next:?}"));
        }
        Ok(next)
    })
}

// ---------------------------------------------------------------------------------------------
// Orders as data.

/// Whether the pre-check at creation saw the stock, or inventory could not be asked and the
/// saga alone decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StockCheck {
    Passed,
    Deferred,
}

impl StockCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            StockCheck::Passed => "passed",
            StockCheck::Deferred => "deferred",
        }
    }

    pub fn parse(s: &str) -> Option<StockCheck> {
        match s {
            "passed" => Some(StockCheck::Passed),
            "deferred" => Some(StockCheck::Deferred),
            _ => None,
        }
    }
}

/// A step of the saga that can keep an order waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitStep {
    /// The payment's authorization: the card processor is unreachable or failing, and the
    /// payment service retries until the reservation expires.
    Payment,
}

impl WaitStep {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitStep::Payment => "payment",
        }
    }

    pub fn parse(s: &str) -> Option<WaitStep> {
        match s {
            "payment" => Some(WaitStep::Payment),
            _ => None,
        }
    }

    /// The status in which an order can be waiting on this step.
    pub fn waits_in(self, status: OrderStatus) -> bool {
        match self {
            WaitStep::Payment => status == OrderStatus::Confirmed,
        }
    }
}

/// Why an order is waiting, as the step it waits on last reported (`payment.delayed`). Not a
/// state: it changes no status, adds no history step, and is forgotten once the order moves
/// on. Times in µs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub step: WaitStep,
    /// For people: "the card processor is unavailable (circuit breaker open)".
    pub reason: String,
    /// The attempt that failed, from 1; a report of an older attempt never replaces a newer one.
    pub attempt: i64,
    pub next_attempt_at: i64,
    /// The step is retried until then (the reservation's expiry), when known.
    pub retry_until: Option<i64>,
    /// When the order started waiting on this step (its first report).
    pub since: i64,
}

/// Where an order goes. Short strings only; the country is an ISO 3166-1 alpha-2 code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// Two letters, like US or DE.
    pub country: String,
}

impl ShippingAddress {
    /// The address trimmed and checked; every bad field is recorded under `shipping_address.`.
    pub fn checked(&self, errors: &mut Errors) -> Option<ShippingAddress> {
        let mut field = |name: &str, value: &str, min: usize, max: usize| {
            errors.take(
                &format!("shipping_address.{name}"),
                validate::line(value, min, max),
            )
        };
        let name = field("name", &self.name, 1, 100);
        let line1 = field("line1", &self.line1, 1, 200);
        let line2 = match &self.line2 {
            Some(l) => field("line2", l, 0, 200).map(|l| Some(l).filter(|l| !l.is_empty())),
            None => Some(None),
        };
        let city = field("city", &self.city, 1, 100);
        let postal_code = field("postal_code", &self.postal_code, 1, 20);
        let country = self.country.trim();
        let country = if country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()) {
            Some(country.to_ascii_uppercase())
        } else {
            errors.add(
                "shipping_address.country",
                "must be a two-letter country code like US",
            );
            None
        };
        Some(ShippingAddress {
            name: name?,
            line1: line1?,
            line2: line2?,
            city: city?,
            postal_code: postal_code?,
            country: country?,
        })
    }
}

/// An order line as the customer asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub product_id: ProductId,
    /// 1 to 1000.
    pub quantity: i64,
}

/// `POST /orders` as sent.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// 1 to 50 lines; lines naming the same product are merged.
    pub items: Vec<LineRequest>,
    /// A processor token like `pm_card_visa`; Mercato never sees a card number.
    pub payment_method: String,
    #[serde(default)]
    pub shipping_address: Option<ShippingAddress>,
}

pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: i64 = 1000;

/// A line after merging: `index` is where the product first appeared in the request, so an
/// error about it points at what the customer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergedLine {
    pub index: usize,
    pub product_id: ProductId,
    pub quantity: i64,
}

/// A new order whose input is valid, before pricing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub lines: Vec<MergedLine>,
    pub payment_method: String,
    pub shipping_address: Option<ShippingAddress>,
}

/// A processor token: `pm_` then letters, digits and underscores, at most 100 characters.
pub fn payment_method(raw: &str) -> Result<String, String> {
    let rest = raw.strip_prefix("pm_");
    let ok = raw.len() <= 100
        && rest.is_some_and(|r| {
            !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("must be a payment method token like pm_card_visa (pm_ then letters, digits or _, at most 100 characters)".into())
    }
}

impl NewOrder {
    /// Checks everything that needs no lookup, naming every bad field at once.
    pub fn parse(input: &CreateOrder, errors: &mut Errors) -> Option<NewOrder> {
        if input.items.is_empty() || input.items.len() > MAX_LINES {
            errors.add("items", format!("must have 1 to {MAX_LINES} lines"));
        }
        let mut lines: Vec<MergedLine> = Vec::new();
        for (i, l) in input.items.iter().enumerate() {
            if !(1..=MAX_QUANTITY).contains(&l.quantity) {
                errors.add(
                    &format!("items[{i}].quantity"),
                    format!("must be from 1 to {MAX_QUANTITY}"),
                );
                continue;
            }
            match lines.iter_mut().find(|m| m.product_id == l.product_id) {
                Some(m) => {
                    m.quantity += l.quantity;
                    if m.quantity > MAX_QUANTITY {
                        errors.add(
                            &format!("items[{i}].quantity"),
                            format!(
                                "the lines for product {} add up to more than {MAX_QUANTITY}",
                                l.product_id
                            ),
                        );
                    }
                }
                None => lines.push(MergedLine {
                    index: i,
                    product_id: l.product_id,
                    quantity: l.quantity,
                }),
            }
        }
        let pm = errors.take("payment_method", payment_method(&input.payment_method));
        let address = match &input.shipping_address {
            Some(a) => a.checked(errors).map(Some),
            None => Some(None),
        };
        if !errors.is_empty() {
            return None;
        }
        Some(NewOrder {
            lines,
            payment_method: pm?,
            shipping_address: address?,
        })
    }
}

/// A product as the catalog last announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductSnapshot {
    pub product_id: ProductId,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub seller_id: UserId,
    pub active: bool,
}

/// A line with its price and seller frozen at ordering time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub seller_id: UserId,
    pub quantity: i64,
    /// The unit price when ordered, in minor units of the order's currency.
    pub price_cents: i64,
    pub name: String,
}

/// A new order priced from the snapshots and ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedOrder {
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: Currency,
    pub payment_method: String,
    pub shipping_address: Option<ShippingAddress>,
    pub stock_check: StockCheck,
    /// The Idempotency-Key it is placed with, stored with it (see the audit).
    pub idempotency_key: Option<String>,
}

/// Prices `order` from `products`: every product must be known and on sale, and all in one
/// currency (an order is paid in one).
pub fn price(
    order: &NewOrder,
    products: &HashMap<ProductId, ProductSnapshot>,
    errors: &mut Errors,
) -> Option<PricedOrder> {
    let mut items = Vec::with_capacity(order.lines.len());
    let mut currencies: Vec<&str> = Vec::new();
    let mut total: Option<i64> = Some(0);
    for line in &order.lines {
        let field = format!("items[{}].product_id", line.index);
        match products.get(&line.product_id) {
            None => errors.add(&field, format!("no product {}", line.product_id)),
            Some(p) if !p.active => errors.add(
                &field,
                format!("product {} is no longer for sale", line.product_id),
            ),
            Some(p) => {
                if !currencies.contains(&p.currency.as_str()) {
                    currencies.push(&p.currency);
                }
                total =
                    total.and_then(|t| t.checked_add(p.price_cents.checked_mul(line.quantity)?));
                items.push(OrderItem {
                    product_id: p.product_id,
                    seller_id: p.seller_id,
                    quantity: line.quantity,
                    price_cents: p.price_cents,
                    name: p.name.clone(),
                });
            }
        }
    }
    if currencies.len() > 1 {
        errors.add(
            "items",
            format!(
                "the products are priced in different currencies ({}); order them separately",
                currencies.join(", ")
            ),
        );
    }
    let currency = currencies.first().and_then(|c| c.parse::<Currency>().ok());
    if items.len() == order.lines.len() && currency.is_none() {
        errors.add("items", "the products have no valid currency");
    }
    let Some(total_cents) = total else {
        errors.add("items", "the order total is too large");
        return None;
    };
    if !errors.is_empty() {
        return None;
    }
    Some(PricedOrder {
        items,
        total_cents,
        currency: currency?,
        payment_method: order.payment_method.clone(),
        shipping_address: order.shipping_address.clone(),
        stock_check: StockCheck::Passed,
        idempotency_key: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Back-pressure.

/// The orders still in the saga (PENDING or CONFIRMED, leaving out those that reported waiting
/// on an outage: they have their own deadline, the reservation's expiry), and when the oldest
/// PENDING one was placed. PENDING is the step entirely inside the shop (order.created to the
/// reservation), so its age is the saga's own lag, not a customer's slow card.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub orders: i64,
    /// µs since the epoch; `None` when nothing is PENDING.
    pub oldest_pending_at: Option<i64>,
}

/// How far behind the saga may fall before new orders are refused (0 turns a bound off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacklogLimits {
    /// At most this many orders in the saga.
    pub max_orders: i64,
    /// No PENDING order older than this, in seconds.
    pub max_age_secs: i64,
}

impl BacklogLimits {
    pub const OFF: BacklogLimits = BacklogLimits {
        max_orders: 0,
        max_age_secs: 0,
    };

    /// Why a new order is refused now, if it is.
    pub fn refuses(&self, b: Backlog, now_us: i64) -> Option<Overload> {
        if self.max_orders > 0 && b.orders >= self.max_orders {
            return Some(Overload::Backlog {
                orders: b.orders,
                max: self.max_orders,
            });
        }
        let age_secs = b
            .oldest_pending_at
            .map(|at| (now_us - at).max(0) / 1_000_000)?;
        (self.max_age_secs > 0 && age_secs >= self.max_age_secs).then_some(Overload::Age {
            age_secs,
            max: self.max_age_secs,
        })
    }
}

/// Why the saga counts as behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overload {
    Backlog { orders: i64, max: i64 },
    Age { age_secs: i64, max: i64 },
}

impl Overload {
    /// The `reason` label of `orders_overloaded_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Overload::Backlog { .. } => "backlog",
            Overload::Age { .. } => "age",
        }
    }
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overload::Backlog { orders, max } => write!(
                f,
                "{orders} orders are still in the saga (the bound is {max}); new orders are refused until it catches up"
            ),
            Overload::Age { age_secs, max } => write!(
                f,
                "the oldest order waiting for stock was placed {age_secs} s ago (the bound is {max} s); new orders are refused until the saga catches up"
            ),
        }
    }
}

/// An order as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: UserId,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_method: String,
    pub shipping_address: Option<ShippingAddress>,
    pub stock_check: StockCheck,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
    /// What the saga last said it is waiting on, if anything; see [`Order::waiting_for`].
    pub waiting: Option<Waiting>,
}

impl Order {
    /// Why the order has not moved on, while that still matters: only a CONFIRMED order waits
    /// for its payment, so a wait recorded before it moved on is not shown.
    pub fn waiting_for(&self) -> Option<&Waiting> {
        self.waiting
            .as_ref()
            .filter(|w| w.step.waits_in(self.status))
    }

    pub fn is_owner(&self, p: &Principal) -> bool {
        p.user_id() == Some(self.customer_id)
    }

    /// A seller with at least one line in this order.
    pub fn is_seller_of(&self, p: &Principal) -> bool {
        p.is(Role::Seller)
            && p.user_id()
                .is_some_and(|id| self.items.iter().any(|i| i.seller_id == id))
    }

    /// Who may see the order at all; anyone else is told it does not exist.
    pub fn visible_to(&self, p: &Principal) -> bool {
        self.is_owner(p) || self.is_seller_of(p) || p.is(Role::Admin) || p.is(Role::Service)
    }

    /// Who may move it along after payment.
    pub fn may_work_on(&self, p: &Principal) -> bool {
        self.is_seller_of(p) || p.is(Role::Admin)
    }
}

// ---------------------------------------------------------------------------------------------
// Listing.

/// A position in the newest-first list: the last order of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: OrderId,
}

impl Cursor {
    pub fn of(order: &Order) -> Cursor {
        Cursor {
            created_at: order.created_at,
            id: order.id,
        }
    }

    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at, self.id))
    }

    pub fn decode(s: &str) -> Result<Cursor, String> {
        let bad = || "is not a cursor from this list".to_owned();
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (at, id) = text.split_once(':').ok_or_else(bad)?;
        Ok(Cursor {
            created_at: at.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use CancelReason as R;
    use OrderStatus as S;

    fn all_statuses() -> Vec<OrderStatus> {
        let mut v = vec![
            S::Pending,
            S::Confirmed,
            S::Paid,
            S::Processing,
            S::Fulfilled,
        ];
        v.extend(CANCEL_REASONS.map(S::Cancelled));
        v.push(S::Refunded);
        v
    }

    const COMMANDS: [Command; 11] = [
        Command::InventoryReserved,
        Command::ReservationFailed,
        Command::PaymentAuthorized,
        Command::PaymentFailed,
        Command::InventoryReleasedExpired,
        Command::Cancel { by_admin: false },
        Command::Cancel { by_admin: true },
        Command::Process,
        Command::Fulfill,
        Command::Refund { amount_cents: None },
        Command::Refund {
            amount_cents: Some(5),
        },
    ];

    /// The expected next status of every (status, command) pair, written out by hand: one
    /// row per status, one column per entry of `COMMANDS`. `-` is a refusal; `X:why` is
    /// CANCELLED for out_of_stock, payment_declined, reservation_expired, customer_cancelled
    /// or admin_cancelled.
    const TABLE: &str = "
        status      reserved   res_failed authorized pay_failed expired    cancel     cancel_adm process    fulfill    refund     refund_5
        PENDING     CONFIRMED  X:oos      PAID       X:dec      X:exp      X:cus      X:adm      -          -          -          -
        CONFIRMED   -          -          PAID       X:dec      X:exp      X:cus      X:adm      -          -          -          -
        PAID        -          -          -          -          X:exp      X:cus      X:adm      PROCESSING FULFILLED  -          -
        PROCESSING  -          -          -          -          X:exp      X:cus      X:adm      -          FULFILLED  -          -
        FULFILLED   -          -          -          -          -          -          -          -          -          REFUNDED   REFUNDED
        CANCELLED   -          -          -          -          -          -          -          -          -          -          -
        REFUNDED    -          -          -          -          -          -          -          -          -          -          -
    ";

    fn cell(token: &str) -> Option<OrderStatus> {
        let reason = |short| match short {
            "oos" => R::OutOfStock,
            "dec" => R::PaymentDeclined,
            "exp" => R::ReservationExpired,
            "cus" => R::CustomerCancelled,
            "adm" => R::AdminCancelled,
            other => panic!("no reason {other}"),
        };
        match token {
            "-" => None,
            t if t.starts_with("X:") => Some(S::Cancelled(reason(&t[2..]))),
            t => Some(OrderStatus::from_parts(t, None).expect("a status name")),
        }
    }

    fn expected(status: OrderStatus) -> Vec<Option<OrderStatus>> {
        let row = TABLE
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&status.name()))
            .expect("a row for every status");
        assert_eq!(row.len(), COMMANDS.len() + 1, "row {}", status.name());
        row[1..].iter().map(|t| cell(t)).collect()
    }

    /// The events each kind of arrival announces, stated independently of `transition`.
    fn expected_effects(to: OrderStatus, command: Command) -> Vec<Effect> {
        match (to, command) {
            (S::Paid, _) => vec![Effect::OrderPaid],
            (S::Cancelled(r), _) => vec![Effect::OrderCancelled(r)],
            (S::Fulfilled, _) => vec![Effect::OrderFulfilled],
            (S::Refunded, Command::Refund { amount_cents }) => {
                vec![Effect::OrderRefunded { amount_cents }]
            }
            _ => vec![],
        }
    }

    #[test]
    fn every_status_and_command_pair_follows_the_table() {
        let mut checked = 0;
        for status in all_statuses() {
            for (command, want) in COMMANDS.iter().zip(expected(status)) {
                let got = transition(status, command);
                match want {
                    Some(to) => {
                        let (next, effects) =
                            got.unwrap_or_else(|r| panic!("{status:?} + {command:?}: {r}"));
                        assert_eq!(next, to, "{status:?} + {command:?}");
                        assert_eq!(
                            effects,
                            expected_effects(to, *command),
                            "{status:?} + {command:?}"
                        );
                        assert_eq!(
                            next.name(),
                            command.target(),
                            "{command:?} names its target"
                        );
                    }
                    None => {
                        let refusal = got.expect_err(&format!("{status:?} + {command:?}"));
                        assert_eq!(
                            refusal,
                            Refusal {
                                from: status,
                                command: *command
                            }
                        );
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 11 * 11);
    }

    #[test]
    fn refusals_name_from_and_to() {
        let r = transition(S::Fulfilled, &Command::Cancel { by_admin: false }).unwrap_err();
        assert_eq!(
            r.to_string(),
            "an order cannot go from FULFILLED to CANCELLED (order.cancelled)"
        );
        assert!(!r.is_repeated_cancel());
        let r = transition(
            S::Cancelled(R::OutOfStock),
            &Command::Cancel { by_admin: true },
        )
        .unwrap_err();
        assert!(r.is_repeated_cancel());
    }

    #[test]
    fn statuses_round_trip_through_their_columns() {
        for s in all_statuses() {
            let back = OrderStatus::from_parts(s.name(), s.cancel_reason().map(reason_name));
            assert_eq!(back, Ok(s));
            assert!(OrderStatus::NAMES.contains(&s.name()));
        }
        assert!(OrderStatus::from_parts("CANCELLED", None).is_err());
        assert!(OrderStatus::from_parts("PAID", Some("out_of_stock")).is_err());
        assert!(OrderStatus::from_parts("LOST", None).is_err());
        for r in CANCEL_REASONS {
            // The stored spelling is the contract's serde spelling.
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(reason_name(r))
            );
        }
    }

    fn any_command() -> impl Strategy<Value = Command> {
        (0..COMMANDS.len()).prop_map(|i| COMMANDS[i])
    }

    /// Applies `commands` from PENDING as the store does: refused ones leave no trace.
    fn run(commands: &[Command]) -> (OrderStatus, Vec<Step>, Vec<Effect>) {
        let mut status = S::Pending;
        let mut history = vec![Step {
            event_type: CREATED.into(),
            from: None,
            to: S::Pending,
        }];
        let mut effects = Vec::new();
        for c in commands {
            if let Ok((next, e)) = transition(status, c) {
                history.push(Step {
                    event_type: c.history_type().into(),
                    from: Some(status),
                    to: next,
                });
                effects.extend(e);
                status = next;
            }
        }
        (status, history, effects)
    }

    proptest! {
        #[test]
        fn any_sequence_folds_back_and_announces_each_outcome_at_most_once(
            commands in proptest::collection::vec(any_command(), 0..24)
        ) {
            let (status, history, effects) = run(&commands);
            prop_assert_eq!(fold(&history), Ok(status));
            let count = |f: fn(&Effect) -> bool| effects.iter().filter(|e| f(e)).count();
            let cancelled = count(|e| matches!(e, Effect::OrderCancelled(_)));
            let paid = count(|e| matches!(e, Effect::OrderPaid));
            let fulfilled = count(|e| matches!(e, Effect::OrderFulfilled));
            let refunded = count(|e| matches!(e, Effect::OrderRefunded { .. }));
            prop_assert!(cancelled <= 1 && paid <= 1 && fulfilled <= 1 && refunded <= 1, "{:?}", effects);
            // A cancelled order was cancelled by its last step, and nothing moved it after.
            if let S::Cancelled(_) = status {
                let last_cancelled = matches!(effects.last(), Some(Effect::OrderCancelled(_)));
                prop_assert!(last_cancelled, "{:?}", effects);
            }
            // Money without goods: a refund only ever follows a fulfilment.
            if refunded > 0 {
                prop_assert!(fulfilled == 1, "{:?}", effects);
            }
        }

        #[test]
        fn terminal_statuses_absorb_every_command(command in any_command(), r in 0..5usize) {
            prop_assert!(transition(S::Cancelled(CANCEL_REASONS[r]), &command).is_err());
            prop_assert!(transition(S::Refunded, &command).is_err());
        }
    }

    #[test]
    fn folding_refuses_histories_the_machine_cannot_make() {
        let step = |t: &str, from: Option<OrderStatus>, to| Step {
            event_type: t.into(),
            from,
            to,
        };
        assert!(fold(&[]).is_err());
        assert!(fold(&[step("payment.authorized", None, S::Paid)]).is_err());
        let ok = vec![
            step(CREATED, None, S::Pending),
            step("payment.authorized", Some(S::Pending), S::Paid),
            step(
                "order.cancelled",
                Some(S::Paid),
                S::Cancelled(R::AdminCancelled),
            ),
        ];
        assert_eq!(fold(&ok), Ok(S::Cancelled(R::AdminCancelled)));
        let mut skipped = ok.clone();
        skipped[1].to = S::Confirmed;
        assert!(fold(&skipped).is_err());
        let mut illegal = ok;
        illegal.push(step(
            "order.fulfilled",
            Some(S::Cancelled(R::AdminCancelled)),
            S::Fulfilled,
        ));
        assert!(fold(&illegal).is_err());
    }

    fn product(id: ProductId, price: i64, currency: &str, active: bool) -> ProductSnapshot {
        ProductSnapshot {
            product_id: id,
            sku: "SKU-1".into(),
            name: "Thing".into(),
            price_cents: price,
            currency: currency.into(),
            seller_id: UserId(uuid::Uuid::from_u128(7)),
            active,
        }
    }

    fn input(items: Vec<(ProductId, i64)>) -> CreateOrder {
        CreateOrder {
            items: items
                .into_iter()
                .map(|(product_id, quantity)| LineRequest {
                    product_id,
                    quantity,
                })
                .collect(),
            payment_method: "pm_card_visa".into(),
            shipping_address: None,
        }
    }

    fn fields(errors: Errors) -> Vec<String> {
        errors
            .finish()
            .err()
            .map(|p| p.errors.into_iter().map(|e| e.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn new_orders_merge_lines_and_name_every_bad_field() {
        let (a, b) = (ProductId::new(), ProductId::new());
        let mut e = Errors::new();
        let o = NewOrder::parse(&input(vec![(a, 2), (b, 1), (a, 3)]), &mut e).unwrap();
        assert_eq!(
            o.lines,
            vec![
                MergedLine {
                    index: 0,
                    product_id: a,
                    quantity: 5
                },
                MergedLine {
                    index: 1,
                    product_id: b,
                    quantity: 1
                }
            ]
        );

        let mut e = Errors::new();
        let mut bad = input(vec![(a, 0), (b, 1001)]);
        bad.payment_method = "card 4242".into();
        bad.shipping_address = Some(ShippingAddress {
            name: "".into(),
            line1: "1 Main St".into(),
            line2: None,
            city: "Springfield".into(),
            postal_code: "12345".into(),
            country: "USA".into(),
        });
        assert!(NewOrder::parse(&bad, &mut e).is_none());
        assert_eq!(
            fields(e),
            [
                "items[0].quantity",
                "items[1].quantity",
                "payment_method",
                "shipping_address.name",
                "shipping_address.country"
            ]
        );

        let mut e = Errors::new();
        assert!(NewOrder::parse(&input(vec![]), &mut e).is_none());
        assert_eq!(fields(e), ["items"]);
        let mut e = Errors::new();
        assert!(NewOrder::parse(&input(vec![(a, 600), (a, 600)]), &mut e).is_none());
        assert_eq!(fields(e), ["items[1].quantity"]);
        let mut e = Errors::new();
        let many: Vec<_> = (0..51).map(|_| (ProductId::new(), 1)).collect();
        assert!(NewOrder::parse(&input(many), &mut e).is_none());
        assert_eq!(fields(e), ["items"]);
    }

    #[test]
    fn payment_methods_are_tokens() {
        for good in ["pm_card_visa", "pm_1", "pm_card_chargeDeclined"] {
            assert!(payment_method(good).is_ok(), "{good}");
        }
        let long = format!("pm_{}", "a".repeat(98));
        for bad in [
            "",
            "pm_",
            "card_visa",
            "pm_card visa",
            "pm_card-visa",
            "pm_ü",
            &long,
        ] {
            assert!(payment_method(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_trimmed_and_country_upper_cased() {
        let mut e = Errors::new();
        let a = ShippingAddress {
            name: " Casey ".into(),
            line1: "1 Main St".into(),
            line2: Some("  ".into()),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "de".into(),
        }
        .checked(&mut e)
        .unwrap();
        assert!(e.is_empty());
        assert_eq!(
            (a.name.as_str(), a.line2, a.country.as_str()),
            ("Casey", None, "DE")
        );
        let mut e = Errors::new();
        let long = ShippingAddress {
            name: "x".into(),
            line1: "y\u{0}".into(),
            line2: Some("z".repeat(201)),
            city: "c".into(),
            postal_code: "1".repeat(21),
            country: "1A".into(),
        };
        assert!(long.checked(&mut e).is_none());
        assert_eq!(
            fields(e),
            [
                "shipping_address.line1",
                "shipping_address.line2",
                "shipping_address.postal_code",
                "shipping_address.country"
            ]
        );
    }

    #[test]
    fn pricing_snapshots_prices_and_refuses_unknown_inactive_and_mixed() {
        let (a, b, c) = (ProductId::new(), ProductId::new(), ProductId::new());
        let products = HashMap::from([
            (a, product(a, 250, "USD", true)),
            (b, product(b, 1000, "USD", true)),
            (c, product(c, 99, "USD", false)),
        ]);
        let mut e = Errors::new();
        let o = NewOrder::parse(&input(vec![(a, 2), (b, 1)]), &mut e).unwrap();
        let p = price(&o, &products, &mut e).unwrap();
        assert_eq!(p.total_cents, 1500);
        assert_eq!(p.currency, Currency::USD);
        assert_eq!(p.items[0].price_cents, 250);

        let unknown = ProductId::new();
        let o = NewOrder::parse(&input(vec![(a, 1), (unknown, 1), (c, 1)]), &mut e).unwrap();
        let mut e = Errors::new();
        assert!(price(&o, &products, &mut e).is_none());
        let p = e.finish().unwrap_err();
        assert_eq!(p.errors[0].field, "items[1].product_id");
        assert!(p.errors[0].message.contains(&unknown.to_string()));
        assert_eq!(p.errors[1].field, "items[2].product_id");

        let d = ProductId::new();
        let mut products = products;
        products.insert(d, product(d, 5, "EUR", true));
        let mut e = Errors::new();
        let o = NewOrder::parse(&input(vec![(a, 1), (d, 1)]), &mut e).unwrap();
        assert!(price(&o, &products, &mut e).is_none());
        assert_eq!(fields(e), ["items"]);
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            created_at: 1_700_000_000_000_000,
            id: OrderId::new(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in ["", "x", "!!!", &URL_SAFE_NO_PAD.encode("12:not-a-uuid")] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_payment_wait_is_shown_only_while_confirmed() {
        for status in all_statuses() {
            assert_eq!(
                WaitStep::Payment.waits_in(status),
                status == S::Confirmed,
                "{status:?}"
            );
        }
        assert_eq!(WaitStep::parse("payment"), Some(WaitStep::Payment));
        assert_eq!(
            WaitStep::parse(WaitStep::Payment.as_str()),
            Some(WaitStep::Payment)
        );
        assert_eq!(WaitStep::parse("stock"), None);
    }

    #[test]
    fn back_pressure_refuses_past_either_bound_and_never_when_off() {
        let now = 1_000_000_000_000;
        let limits = BacklogLimits {
            max_orders: 100,
            max_age_secs: 30,
        };
        let at = |secs_ago: i64| Some(now - secs_ago * 1_000_000);
        for (orders, oldest, refused) in [
            (0, None, None),
            (99, at(29), None),
            (100, None, Some("backlog")),
            (5_000, at(0), Some("backlog")),
            (1, at(30), Some("age")),
            (1, at(3_600), Some("age")),
            // A clock a little behind the writer's is no reason to refuse.
            (1, Some(now + 5_000_000), None),
        ] {
            let b = Backlog {
                orders,
                oldest_pending_at: oldest,
            };
            assert_eq!(
                limits.refuses(b, now).map(Overload::reason),
                refused,
                "{b:?}"
            );
        }
        let huge = Backlog {
            orders: i64::MAX,
            oldest_pending_at: at(1_000_000),
        };
        assert_eq!(BacklogLimits::OFF.refuses(huge, now), None);
        let text = limits
            .refuses(
                Backlog {
                    orders: 100,
                    oldest_pending_at: None,
                },
                now,
            )
            .unwrap()
            .to_string();
        assert!(
            text.contains("100 orders") && text.contains("bound is 100"),
            "{text}"
        );
    }
}
