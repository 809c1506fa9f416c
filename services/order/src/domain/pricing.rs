//! How a new order is priced from the catalog's product snapshots.

use super::{NewOrder, ShippingAddress, StockCheck};
use mercato_kit::ids::{Currency, ProductId, UserId};
use mercato_kit::validate::Errors;
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::{fields, input};
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
}
