//! The cart's rules, without I/O: what a cart holds, how each change is judged, how a cart is
//! priced from what the catalog says now, and how a paid checkout is taken out of it.
//!
//! A cart keeps only product ids and quantities (plus the currency its lines are priced in).
//! Names and prices are never stored: they are looked up when the cart is shown, so the customer
//! always sees the catalog as it is, and a product taken off sale shows as unavailable instead
//! of vanishing.

use mercato_kit::ids::{Currency, OrderId, ProductId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The most of one product a line may hold; the order service takes no more either.
pub const MAX_QUANTITY: i64 = 1000;

/// How many paid checkouts a cart remembers having taken out, so a repeated settlement (a
/// store without transactions, a crash between two steps) subtracts nothing twice. A customer
/// has at most a few checkouts in flight at once.
const SETTLED_MEMORY: usize = 20;

/// How many keyed changes a cart remembers having applied (see [`Cart::applied`]). A retry
/// comes within seconds of its first try, a few changes later at most.
const APPLIED_MEMORY: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: ProductId,
    pub quantity: i64,
}

/// A customer's cart as stored. Lines keep the order they were added in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub lines: Vec<Line>,
    /// The currency of the lines; `None` exactly when there are none.
    pub currency: Option<Currency>,
    /// The latest checkouts taken out of this cart (see [`Cart::settle`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settled: Vec<OrderId>,
    /// The latest changes made with an Idempotency-Key ([`request_id`]s). The request's
    /// idempotency record is committed after the cart is written when the cart is not in the
    /// SQL database (Redis); if that commit fails, the client's retry must not add twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<String>,
}

/// What the catalog says about a product now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductInfo {
    pub name: String,
    pub price_cents: i64,
    pub currency: Currency,
    pub active: bool,
}

/// The catalog's answer per product: `None` when it does not know the product.
pub type Products = HashMap<ProductId, Option<ProductInfo>>;

/// Limits set by configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_lines: usize,
}

/// Why a change was refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no product {0}")]
    UnknownProduct(ProductId),
    #[error("product {0} is no longer for sale")]
    ProductInactive(ProductId),
    #[error("{field}: {message}")]
    Quantity {
        field: &'static str,
        message: String,
    },
    #[error("a cart holds at most {max} different products")]
    TooManyLines { max: usize },
    #[error("product {product_id} is priced in {product}, the cart in {cart}; a cart is paid in one currency")]
    CurrencyMismatch {
        product_id: ProductId,
        cart: Currency,
        product: Currency,
    },
    #[error("product {0} is not in the cart")]
    NotInCart(ProductId),
}

fn check_quantity(quantity: i64) -> Result<(), Refusal> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(Refusal::Quantity {
            field: "quantity",
            message: format!("must be from 1 to {MAX_QUANTITY}"),
        })
    }
}

/// A change a customer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds to the product's line, or starts one.
    Add {
        product_id: ProductId,
        quantity: i64,
    },
    /// Sets the quantity of a line that is there.
    Set {
        product_id: ProductId,
        quantity: i64,
    },
    Remove {
        product_id: ProductId,
    },
}

impl Change {
    /// The product the change needs the catalog's word on before it is judged.
    pub fn looks_up(&self) -> Option<ProductId> {
        match self {
            Change::Add { product_id, .. } => Some(*product_id),
            Change::Set { .. } | Change::Remove { .. } => None,
        }
    }

    /// Applies the change to `cart`, or refuses it and leaves `cart` as it was.
    /// `products` must hold the catalog's answer for [`Change::looks_up`].
    pub fn apply(
        &self,
        cart: &mut Cart,
        products: &Products,
        limits: Limits,
    ) -> Result<(), Refusal> {
        match *self {
            Change::Add {
                product_id,
                quantity,
            } => {
                let info = products.get(&product_id).and_then(Option::as_ref);
                cart.add(product_id, info, quantity, limits)
            }
            Change::Set {
                product_id,
                quantity,
            } => cart.set(product_id, quantity),
            Change::Remove { product_id } => cart.remove(product_id),
        }
    }
}

impl Cart {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn quantity_of(&self, product_id: ProductId) -> Option<i64> {
        self.lines
            .iter()
            .find(|l| l.product_id == product_id)
            .map(|l| l.quantity)
    }

    /// Adds `quantity` of a product the catalog described as `info` (`None`: unknown to it),
    /// merging into its line when there is one.
    pub fn add(
        &mut self,
        product_id: ProductId,
        info: Option<&ProductInfo>,
        quantity: i64,
        limits: Limits,
    ) -> Result<(), Refusal> {
        check_quantity(quantity)?;
        let info = info.ok_or(Refusal::UnknownProduct(product_id))?;
        if !info.active {
            return Err(Refusal::ProductInactive(product_id));
        }
        if let Some(cart) = self.currency.filter(|c| *c != info.currency) {
            return Err(Refusal::CurrencyMismatch {
                product_id,
                cart,
                product: info.currency,
            });
        }
        match self.lines.iter_mut().find(|l| l.product_id == product_id) {
            Some(line) => {
                let merged = line.quantity + quantity;
                if merged > MAX_QUANTITY {
                    return Err(Refusal::Quantity {
                        field: "quantity",
                        message: format!(
                            "the cart holds {} of this product already; together at most {MAX_QUANTITY}",
                            line.quantity
                        ),
                    });
                }
                line.quantity = merged;
            }
            None => {
                if self.lines.len() >= limits.max_lines {
                    return Err(Refusal::TooManyLines {
                        max: limits.max_lines,
                    });
                }
                self.lines.push(Line {
                    product_id,
                    quantity,
                });
                self.currency = Some(info.currency);
            }
        }
        Ok(())
    }

    /// Sets the quantity of a line that is in the cart.
    pub fn set(&mut self, product_id: ProductId, quantity: i64) -> Result<(), Refusal> {
        check_quantity(quantity)?;
        let line = self
            .lines
            .iter_mut()
            .find(|l| l.product_id == product_id)
            .ok_or(Refusal::NotInCart(product_id))?;
        line.quantity = quantity;
        Ok(())
    }

    pub fn remove(&mut self, product_id: ProductId) -> Result<(), Refusal> {
        let before = self.lines.len();
        self.lines.retain(|l| l.product_id != product_id);
        if self.lines.len() == before {
            return Err(Refusal::NotInCart(product_id));
        }
        self.forget_currency_when_empty();
        Ok(())
    }

    fn forget_currency_when_empty(&mut self) {
        if self.lines.is_empty() {
            self.currency = None;
        }
    }

    /// Whether the keyed change `request` (a [`request_id`]) was applied to this cart already.
    pub fn has_applied(&self, request: &str) -> bool {
        self.applied.iter().any(|r| r == request)
    }

    /// Remembers that the keyed change `request` was applied, forgetting the oldest beyond
    /// what a retry can need.
    pub fn remember_applied(&mut self, request: &str) {
        self.applied.push(request.to_owned());
        if self.applied.len() > APPLIED_MEMORY {
            self.applied.remove(0);
        }
    }

    /// Takes a paid checkout's `ordered` lines out of the cart: each product's quantity goes
    /// down by what was ordered, and lines that reach zero go. What the customer added after
    /// checking out stays. Returns false, changing nothing, when `order` was taken out already.
    pub fn settle(&mut self, order: OrderId, ordered: &[Line]) -> bool {
        if self.settled.contains(&order) {
            return false;
        }
        for o in ordered {
            if let Some(line) = self.lines.iter_mut().find(|l| l.product_id == o.product_id) {
                line.quantity -= o.quantity;
            }
        }
        self.lines.retain(|l| l.quantity > 0);
        self.forget_currency_when_empty();
        self.settled.push(order);
        if self.settled.len() > SETTLED_MEMORY {
            self.settled.remove(0);
        }
        true
    }
}

/// One line as shown: the catalog's current name and price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedLine {
    pub product_id: ProductId,
    pub name: String,
    pub price_cents: i64,
    pub quantity: i64,
    pub line_total_cents: i64,
    /// False when the product is off sale, unknown to the catalog, or now priced in another
    /// currency than the cart: such a line is shown but not counted in the total.
    pub available: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedCart {
    pub items: Vec<PricedLine>,
    pub total_cents: i64,
    pub currency: Option<Currency>,
}

/// What a line shows when the catalog no longer knows its product (products are never deleted,
/// so only a catalog that lost data gets here).
pub const UNKNOWN_PRODUCT_NAME: &str = "(no longer in the catalog)";

/// Prices `cart` with the catalog's current answers. Sums saturate: prices and quantities are
/// bounded, but a total must never wrap into a small number.
pub fn price(cart: &Cart, products: &Products) -> PricedCart {
    let items: Vec<PricedLine> = cart
        .lines
        .iter()
        .map(|l| {
            let info = products.get(&l.product_id).and_then(Option::as_ref);
            let (name, price_cents, available) = match info {
                Some(p) => (
                    p.name.clone(),
                    p.price_cents,
                    p.active && Some(p.currency) == cart.currency,
                ),
                None => (UNKNOWN_PRODUCT_NAME.to_owned(), 0, false),
            };
            PricedLine {
                product_id: l.product_id,
                name,
                price_cents,
                quantity: l.quantity,
                line_total_cents: price_cents.saturating_mul(l.quantity),
                available,
            }
        })
        .collect();
    let total_cents = items
        .iter()
        .filter(|l| l.available)
        .fold(0i64, |t, l| t.saturating_add(l.line_total_cents));
    PricedCart {
        items,
        total_cents,
        currency: cart.currency,
    }
}

/// What the cart remembers of a checkout until the order is decided, under
/// `checkout:<order_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CheckoutRecord {
    /// The order was placed from this customer's cart with these lines.
    Placed {
        customer_id: UserId,
        lines: Vec<Line>,
    },
    /// `order.paid` arrived before the checkout that placed the order recorded it (the saga can
    /// outrun the order service's answer to us); the checkout settles the cart when it records.
    PaidFirst,
}

/// What to do when a checkout's order turns out paid or cancelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Take these lines out of the customer's cart, then drop the record.
    TakeOut {
        customer_id: UserId,
        lines: Vec<Line>,
    },
    /// Drop the record; the cart stays as it is.
    Drop,
    /// Remember that the order was paid (no record yet).
    MarkPaid,
    Nothing,
}

/// `order.paid` for the order whose record is `record`.
pub fn on_paid(record: Option<&CheckoutRecord>) -> Settlement {
    match record {
        Some(CheckoutRecord::Placed { customer_id, lines }) => Settlement::TakeOut {
            customer_id: *customer_id,
            lines: lines.clone(),
        },
        Some(CheckoutRecord::PaidFirst) => Settlement::Nothing,
        None => Settlement::MarkPaid,
    }
}

/// `order.cancelled`: the customer keeps the cart to try again.
pub fn on_cancelled(record: Option<&CheckoutRecord>) -> Settlement {
    match record {
        Some(_) => Settlement::Drop,
        None => Settlement::Nothing,
    }
}

/// The checkout recording its order, finding `record` there.
pub fn on_recorded(
    record: Option<&CheckoutRecord>,
    customer_id: UserId,
    lines: &[Line],
) -> Recording {
    match record {
        None => Recording::Write(CheckoutRecord::Placed {
            customer_id,
            lines: lines.to_vec(),
        }),
        // A retried checkout of the same order.
        Some(CheckoutRecord::Placed { .. }) => Recording::AlreadyThere,
        Some(CheckoutRecord::PaidFirst) => Recording::Settle(Settlement::TakeOut {
            customer_id,
            lines: lines.to_vec(),
        }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recording {
    Write(CheckoutRecord),
    AlreadyThere,
    Settle(Settlement),
}

/// The Idempotency-Key the cart sends the order service for a checkout with the client's
/// `key`: derived, so a retried checkout places one order; prefixed, so it never collides with
/// a key the customer uses on the order service directly; hashed when the prefixed key would
/// pass the 255 characters a key may have.
pub fn order_key(key: &str) -> String {
    const PREFIX: &str = "cart-checkout:";
    if PREFIX.len() + key.len() <= 255 {
        format!("{PREFIX}{key}")
    } else {
        use sha2::{Digest, Sha256};
        format!("{PREFIX}sha256:{:x}", Sha256::digest(key.as_bytes()))
    }
}

/// What identifies a keyed change in [`Cart::applied`]: the client's Idempotency-Key with the
/// request's fingerprint (a key reused for another request is another request), hashed so a
/// cart never holds 20 keys of 255 characters.
pub fn request_id(idempotency_key: &str, fingerprint: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(idempotency_key.as_bytes())
        .chain_update(b"\n")
        .chain_update(fingerprint.as_bytes())
        .finalize();
    format!("{digest:x}")[..32].to_owned()
}

pub fn cart_key(customer: UserId) -> String {
    format!("cart:{customer}")
}

pub fn checkout_key(order: OrderId) -> String {
    format!("checkout:{order}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_lines: 3 };

    fn usd(price: i64) -> ProductInfo {
        ProductInfo {
            name: "Widget".into(),
            price_cents: price,
            currency: Currency::USD,
            active: true,
        }
    }

    fn eur(price: i64) -> ProductInfo {
        ProductInfo {
            currency: "EUR".parse().unwrap(),
            ..usd(price)
        }
    }

    #[test]
    fn adding_the_same_product_merges_into_one_line() {
        let (a, b) = (ProductId::new(), ProductId::new());
        let mut cart = Cart::default();
        cart.add(a, Some(&usd(100)), 2, LIMITS).unwrap();
        cart.add(b, Some(&usd(250)), 1, LIMITS).unwrap();
        cart.add(a, Some(&usd(100)), 3, LIMITS).unwrap();
        assert_eq!(
            cart.lines,
            vec![
                Line {
                    product_id: a,
                    quantity: 5
                },
                Line {
                    product_id: b,
                    quantity: 1
                }
            ]
        );
        assert_eq!(cart.currency, Some(Currency::USD));
    }

    #[test]
    fn quantities_stay_within_bounds_also_after_merging() {
        let a = ProductId::new();
        let mut cart = Cart::default();
        for bad in [0, -1, MAX_QUANTITY + 1] {
            let r = cart.add(a, Some(&usd(100)), bad, LIMITS).unwrap_err();
            assert!(
                matches!(
                    r,
                    Refusal::Quantity {
                        field: "quantity",
                        ..
                    }
                ),
                "{r}"
            );
        }
        assert!(cart.is_empty(), "a refused add changes nothing");
        cart.add(a, Some(&usd(100)), 600, LIMITS).unwrap();
        let before = cart.clone();
        let r = cart.add(a, Some(&usd(100)), 401, LIMITS).unwrap_err();
        assert!(r.to_string().contains("600"), "{r}");
        assert_eq!(cart, before);
        cart.add(a, Some(&usd(100)), 400, LIMITS).unwrap();
        assert_eq!(cart.quantity_of(a), Some(MAX_QUANTITY));
        assert!(matches!(
            cart.set(a, 0),
            Err(Refusal::Quantity {
                field: "quantity",
                ..
            })
        ));
        assert!(matches!(
            cart.set(a, 1001),
            Err(Refusal::Quantity {
                field: "quantity",
                ..
            })
        ));
    }

    #[test]
    fn unknown_and_inactive_products_are_refused() {
        let a = ProductId::new();
        let mut cart = Cart::default();
        assert_eq!(
            cart.add(a, None, 1, LIMITS),
            Err(Refusal::UnknownProduct(a))
        );
        let off = ProductInfo {
            active: false,
            ..usd(100)
        };
        assert_eq!(
            cart.add(a, Some(&off), 1, LIMITS),
            Err(Refusal::ProductInactive(a))
        );
        assert!(cart.is_empty());
    }

    #[test]
    fn the_number_of_lines_is_bounded_but_merging_is_not_a_new_line() {
        let mut cart = Cart::default();
        let ids: Vec<_> = (0..3).map(|_| ProductId::new()).collect();
        for id in &ids {
            cart.add(*id, Some(&usd(1)), 1, LIMITS).unwrap();
        }
        assert_eq!(
            cart.add(ProductId::new(), Some(&usd(1)), 1, LIMITS),
            Err(Refusal::TooManyLines { max: 3 })
        );
        cart.add(ids[0], Some(&usd(1)), 1, LIMITS).unwrap();
        assert_eq!(cart.lines.len(), 3);
    }

    #[test]
    fn a_cart_holds_one_currency_until_it_is_empty_again() {
        let (a, b) = (ProductId::new(), ProductId::new());
        let mut cart = Cart::default();
        cart.add(a, Some(&usd(100)), 1, LIMITS).unwrap();
        let r = cart.add(b, Some(&eur(100)), 1, LIMITS).unwrap_err();
        assert!(matches!(r, Refusal::CurrencyMismatch { .. }), "{r}");
        cart.remove(a).unwrap();
        assert_eq!(cart.currency, None);
        cart.add(b, Some(&eur(100)), 1, LIMITS).unwrap();
        assert_eq!(cart.currency, Some("EUR".parse().unwrap()));
    }

    #[test]
    fn set_and_remove_need_the_line_to_be_there() {
        let (a, b) = (ProductId::new(), ProductId::new());
        let mut cart = Cart::default();
        cart.add(a, Some(&usd(100)), 1, LIMITS).unwrap();
        cart.set(a, 7).unwrap();
        assert_eq!(cart.quantity_of(a), Some(7));
        assert_eq!(cart.set(b, 1), Err(Refusal::NotInCart(b)));
        assert_eq!(cart.remove(b), Err(Refusal::NotInCart(b)));
        cart.remove(a).unwrap();
        assert!(cart.is_empty());
        assert_eq!(cart.remove(a), Err(Refusal::NotInCart(a)));
    }

    #[test]
    fn changes_are_judged_with_the_catalogs_answer() {
        let a = ProductId::new();
        let mut cart = Cart::default();
        let mut products = Products::new();
        let add = Change::Add {
            product_id: a,
            quantity: 2,
        };
        assert_eq!(add.looks_up(), Some(a));
        assert_eq!(
            add.apply(&mut cart, &products, LIMITS),
            Err(Refusal::UnknownProduct(a))
        );
        products.insert(a, Some(usd(10)));
        add.apply(&mut cart, &products, LIMITS).unwrap();
        let set = Change::Set {
            product_id: a,
            quantity: 9,
        };
        assert_eq!(set.looks_up(), None);
        set.apply(&mut cart, &Products::new(), LIMITS).unwrap();
        assert_eq!(cart.quantity_of(a), Some(9));
        Change::Remove { product_id: a }
            .apply(&mut cart, &Products::new(), LIMITS)
            .unwrap();
        assert!(cart.is_empty());
    }

    #[test]
    fn totals_count_available_lines_at_current_prices() {
        let (a, b, c, d) = (
            ProductId::new(),
            ProductId::new(),
            ProductId::new(),
            ProductId::new(),
        );
        let mut cart = Cart::default();
        for (id, q) in [(a, 2), (b, 3), (c, 1), (d, 4)] {
            cart.add(id, Some(&usd(100)), q, LIMITS.with_room())
                .unwrap();
        }
        let products = Products::from([
            // The price changed since it was added: the current one counts.
            (a, Some(usd(150))),
            (
                b,
                Some(ProductInfo {
                    active: false,
                    ..usd(100)
                }),
            ),
            (c, Some(eur(100))),
            (d, None),
        ]);
        let priced = price(&cart, &products);
        assert_eq!(priced.currency, Some(Currency::USD));
        let shown: Vec<_> = priced
            .items
            .iter()
            .map(|l| (l.product_id, l.line_total_cents, l.available))
            .collect();
        assert_eq!(
            shown,
            vec![
                (a, 300, true),
                (b, 300, false),
                (c, 100, false),
                (d, 0, false)
            ]
        );
        assert_eq!(priced.total_cents, 300);
        assert_eq!(priced.items[3].name, UNKNOWN_PRODUCT_NAME);

        let empty = price(&Cart::default(), &Products::new());
        assert_eq!((empty.items.len(), empty.total_cents), (0, 0));
        assert_eq!(empty.currency, None);
    }

    #[test]
    fn totals_saturate_instead_of_wrapping() {
        let (a, b) = (ProductId::new(), ProductId::new());
        let mut cart = Cart::default();
        cart.add(a, Some(&usd(1)), 1000, LIMITS).unwrap();
        cart.add(b, Some(&usd(1)), 1000, LIMITS).unwrap();
        let products = Products::from([(a, Some(usd(i64::MAX / 2))), (b, Some(usd(i64::MAX / 2)))]);
        assert_eq!(price(&cart, &products).total_cents, i64::MAX);
    }

    #[test]
    fn a_paid_checkout_is_taken_out_once_and_later_additions_stay() {
        let (a, b, c) = (ProductId::new(), ProductId::new(), ProductId::new());
        let mut cart = Cart::default();
        cart.add(a, Some(&usd(1)), 2, LIMITS).unwrap();
        cart.add(b, Some(&usd(1)), 1, LIMITS).unwrap();
        let ordered = cart.lines.clone();
        // After checking out, the customer adds more of `a` and a new product.
        cart.add(a, Some(&usd(1)), 3, LIMITS).unwrap();
        cart.add(c, Some(&usd(1)), 1, LIMITS).unwrap();
        let order = OrderId::new();
        assert!(cart.settle(order, &ordered));
        assert_eq!(
            cart.lines,
            vec![
                Line {
                    product_id: a,
                    quantity: 3
                },
                Line {
                    product_id: c,
                    quantity: 1
                }
            ]
        );
        let after = cart.clone();
        assert!(!cart.settle(order, &ordered), "settled twice");
        assert_eq!(cart, after);
        // Taking out everything empties the cart and frees its currency.
        let rest = cart.lines.clone();
        assert!(cart.settle(OrderId::new(), &rest));
        assert!(cart.is_empty());
        assert_eq!(cart.currency, None);
        // A line removed meanwhile is simply not there to take out.
        let mut other = Cart::default();
        assert!(other.settle(OrderId::new(), &ordered));
        assert!(other.is_empty());
    }

    #[test]
    fn the_memory_of_settled_checkouts_is_bounded() {
        let mut cart = Cart::default();
        let first = OrderId::new();
        cart.settle(first, &[]);
        for _ in 0..SETTLED_MEMORY {
            cart.settle(OrderId::new(), &[]);
        }
        assert_eq!(cart.settled.len(), SETTLED_MEMORY);
        assert!(!cart.settled.contains(&first));
    }

    #[test]
    fn keyed_changes_are_remembered_boundedly_and_told_apart_by_key_and_request() {
        let first = request_id("k1", "fp");
        assert_eq!(first, request_id("k1", "fp"));
        assert_eq!(first.len(), 32);
        assert_ne!(first, request_id("k1", "other body"));
        assert_ne!(first, request_id("k2", "fp"));
        // The separator keeps "ab"+"c" apart from "a"+"bc".
        assert_ne!(request_id("ab", "c"), request_id("a", "bc"));

        let mut cart = Cart::default();
        assert!(!cart.has_applied(&first));
        cart.remember_applied(&first);
        assert!(cart.has_applied(&first));
        for i in 0..APPLIED_MEMORY {
            cart.remember_applied(&request_id(&i.to_string(), "fp"));
        }
        assert_eq!(cart.applied.len(), APPLIED_MEMORY);
        assert!(!cart.has_applied(&first), "the oldest is forgotten");
        // Stored only when there is something to store.
        let json = serde_json::to_value(Cart::default()).unwrap();
        assert!(json.get("applied").is_none(), "{json}");
        let old: Cart =
            serde_json::from_value(serde_json::json!({"lines": [], "currency": null})).unwrap();
        assert!(old.applied.is_empty());
    }

    #[test]
    fn checkout_records_meet_their_order_events_in_either_order() {
        let customer = UserId::new();
        let lines = vec![Line {
            product_id: ProductId::new(),
            quantity: 2,
        }];
        let placed = CheckoutRecord::Placed {
            customer_id: customer,
            lines: lines.clone(),
        };
        let take_out = Settlement::TakeOut {
            customer_id: customer,
            lines: lines.clone(),
        };
        // Recorded first, then paid or cancelled.
        assert_eq!(
            on_recorded(None, customer, &lines),
            Recording::Write(placed.clone())
        );
        assert_eq!(on_paid(Some(&placed)), take_out);
        assert_eq!(on_cancelled(Some(&placed)), Settlement::Drop);
        // Paid first: remembered, then settled when the checkout records.
        assert_eq!(on_paid(None), Settlement::MarkPaid);
        assert_eq!(
            on_recorded(Some(&CheckoutRecord::PaidFirst), customer, &lines),
            Recording::Settle(take_out)
        );
        // Redelivered or repeated: nothing more.
        assert_eq!(
            on_paid(Some(&CheckoutRecord::PaidFirst)),
            Settlement::Nothing
        );
        assert_eq!(on_cancelled(None), Settlement::Nothing);
        assert_eq!(
            on_recorded(Some(&placed), customer, &lines),
            Recording::AlreadyThere
        );
    }

    #[test]
    fn records_round_trip_through_json() {
        let placed = CheckoutRecord::Placed {
            customer_id: UserId::new(),
            lines: vec![],
        };
        let v = serde_json::to_value(&placed).unwrap();
        assert_eq!(v["state"], "placed");
        assert_eq!(serde_json::from_value::<CheckoutRecord>(v).unwrap(), placed);
        let mut cart = Cart::default();
        cart.add(ProductId::new(), Some(&usd(1)), 1, LIMITS)
            .unwrap();
        let v = serde_json::to_value(&cart).unwrap();
        assert_eq!(serde_json::from_value::<Cart>(v).unwrap(), cart);
    }

    #[test]
    fn order_keys_are_derived_and_always_fit() {
        assert_eq!(order_key("abc"), "cart-checkout:abc");
        assert_eq!(order_key("abc"), order_key("abc"));
        let long = "k".repeat(255);
        let derived = order_key(&long);
        assert!(derived.len() <= 255, "{}", derived.len());
        assert_eq!(derived, order_key(&long));
        assert_ne!(derived, order_key(&"k".repeat(254)));
    }

    impl Limits {
        fn with_room(self) -> Limits {
            Limits { max_lines: 50 }
        }
    }
}
