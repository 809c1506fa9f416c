//! Creating and changing products: the request shapes, and the checked drafts the store writes.

use mercato_kit::ids::{Currency, UserId};
use mercato_kit::validate::Errors;
use serde::{Deserialize, Serialize};
// The request shapes carry their OpenAPI schema here, beside the rules that read them: they are
// the wire contract, as serde's derives are, and `utoipa` knows nothing of HTTP or axum.
use utoipa::ToSchema;

use super::values::{
    optional, required, CategorySlug, Description, PriceCents, ProductName, SellerRef, Sku,
};
use super::Error;

/// A new product: `sku`, `name`, `category` and `price_cents` are required.
// Every field is optional in Rust so that all missing and bad ones are reported in one answer;
// `NewProduct` is where "required" is enforced.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// `^[A-Z0-9][A-Z0-9-]{1,39}$`, unique across the catalog.
    #[schema(required = true, value_type = String, example = "ELEC-0042")]
    pub sku: Option<String>,
    /// One line, 1 to 200 characters.
    #[schema(required = true, value_type = String)]
    pub name: Option<String>,
    /// Up to 5000 characters; may hold line breaks.
    pub description: Option<String>,
    /// A slug: lower-case letters, digits and hyphens, 2 to 48 characters.
    #[schema(required = true, value_type = String, example = "electronics")]
    pub category: Option<String>,
    /// 1 to 100000000.
    #[schema(required = true, value_type = i64, minimum = 1, maximum = 100_000_000)]
    pub price_cents: Option<i64>,
    /// ISO 4217, upper case; USD when absent.
    #[schema(example = "USD")]
    pub currency: Option<String>,
    /// ADMIN only: the seller who owns the product. Others own what they create.
    #[schema(format = Uuid)]
    pub seller_id: Option<String>,
}

/// A product to create, every field checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub description: Description,
    pub category: CategorySlug,
    pub price: PriceCents,
    pub currency: Currency,
    /// The owner asked for; whether the caller may ask is [`seller_for_new`]'s question.
    pub seller_id: Option<UserId>,
}

impl TryFrom<CreateProduct> for NewProduct {
    type Error = Error;
    fn try_from(input: CreateProduct) -> Result<Self, Error> {
        let mut e = Errors::new();
        let sku = required::<_, Sku>(&mut e, "sku", input.sku);
        let name = required::<_, ProductName>(&mut e, "name", input.name);
        let description = optional::<_, Description>(&mut e, "description", input.description);
        let category = required::<_, CategorySlug>(&mut e, "category", input.category);
        let price = required::<_, PriceCents>(&mut e, "price_cents", input.price_cents);
        let currency = optional::<_, Currency>(&mut e, "currency", input.currency);
        let seller = optional::<_, SellerRef>(&mut e, "seller_id", input.seller_id);
        // `required` records an error for every field it leaves unset, so the four are set
        // exactly when nothing was recorded.
        match (sku, name, category, price) {
            (Some(sku), Some(name), Some(category), Some(price)) if e.is_empty() => {
                Ok(NewProduct {
                    sku,
                    name,
                    description: description.unwrap_or_default(),
                    category,
                    price,
                    currency: currency.unwrap_or(Currency::USD),
                    seller_id: seller.map(|s| s.0),
                })
            }
            _ => Err(Error::InvalidBody(e.into_invalid())),
        }
    }
}

/// A change to a product: any of these fields, at least one. The owner cannot be changed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    pub sku: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    /// `false` takes the product off sale (as DELETE does); `true` puts it back.
    pub active: Option<bool>,
}

/// A checked change to a product.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProductPatch {
    pub sku: Option<Sku>,
    pub name: Option<ProductName>,
    pub description: Option<Description>,
    pub category: Option<CategorySlug>,
    pub price: Option<PriceCents>,
    pub currency: Option<Currency>,
    pub active: Option<bool>,
}

impl TryFrom<UpdateProduct> for ProductPatch {
    type Error = Error;
    fn try_from(input: UpdateProduct) -> Result<Self, Error> {
        let mut e = Errors::new();
        let given = input.sku.is_some()
            || input.name.is_some()
            || input.description.is_some()
            || input.category.is_some()
            || input.price_cents.is_some()
            || input.currency.is_some()
            || input.active.is_some();
        if !given {
            e.add(
                "body",
                "must change at least one of sku, name, description, category, price_cents, currency, active",
            );
        }
        let patch = ProductPatch {
            sku: optional(&mut e, "sku", input.sku),
            name: optional(&mut e, "name", input.name),
            description: optional(&mut e, "description", input.description),
            category: optional(&mut e, "category", input.category),
            price: optional(&mut e, "price_cents", input.price_cents),
            currency: optional(&mut e, "currency", input.currency),
            active: input.active,
        };
        e.check().map_err(Error::InvalidBody)?;
        Ok(patch)
    }
}
