//! What a new order must look like: its lines, payment method and shipping address, checked
//! and merged before anything is priced or written.

use mercato_kit::ids::ProductId;
use mercato_kit::validate::{self, Errors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::{fields, input};
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
}
