//! The catalog's rules in plain Rust: what a product is, what input is acceptable, how search
//! words and list parameters are read, how a page cursor is written, and who may change what.
//!
//! Nothing here touches HTTP or SQL. Input arrives as the raw request shapes (`CreateProduct`,
//! `UpdateProduct`, `ListParams`, every field optional so one answer can name every bad field)
//! and leaves as parsed values (`NewProduct`, `ProductPatch`, `ProductQuery`) that the store
//! can write without checking anything again.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mercato_kit::auth::{Principal, Role};
use mercato_kit::ids::{Currency, ProductId, UserId};
use mercato_kit::time::Micros;
use mercato_kit::validate::{self, Errors, FieldError, Invalid};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
// The request shapes carry their OpenAPI schema here, beside the rules that read them: they are
// the wire contract, as serde's derives are, and `utoipa` knows nothing of HTTP or axum.
use utoipa::{IntoParams, ToSchema};

/// A product as the catalog keeps it. Text fields were validated on the way in; rows read back
/// from the database are trusted rather than parsed again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub id: ProductId,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_cents: i64,
    pub currency: Currency,
    pub seller_id: UserId,
    pub active: bool,
    pub created_at: Micros,
    pub updated_at: Micros,
}

impl Product {
    pub fn new(id: ProductId, draft: NewProduct, seller_id: UserId, now: Micros) -> Product {
        Product {
            id,
            sku: draft.sku.0,
            name: draft.name.0,
            description: draft.description.0,
            category: draft.category.0,
            price_cents: draft.price.0,
            currency: draft.currency,
            seller_id,
            active: true,
            created_at: now,
            updated_at: now,
        }
    }

    /// What search words are matched against.
    pub fn search_text(&self) -> String {
        search_text(&self.name, &self.description)
    }

    /// What `name_asc`/`name_desc` sort on, so "apple" and "Banana" sort as a reader expects.
    pub fn name_key(&self) -> String {
        name_key(&self.name)
    }

    /// The product with the patch applied; `updated_at` is left for the caller to set, so an
    /// empty change compares equal to the original.
    pub fn patched(&self, patch: &ProductPatch) -> Product {
        let mut p = self.clone();
        if let Some(v) = &patch.sku {
            p.sku = v.0.clone();
        }
        if let Some(v) = &patch.name {
            p.name = v.0.clone();
        }
        if let Some(v) = &patch.description {
            p.description = v.0.clone();
        }
        if let Some(v) = &patch.category {
            p.category = v.0.clone();
        }
        if let Some(v) = patch.price {
            p.price_cents = v.0;
        }
        if let Some(v) = patch.currency {
            p.currency = v;
        }
        if let Some(v) = patch.active {
            p.active = v;
        }
        p
    }

    /// What kind of change going from `self` to `after` is, or `None` when nothing changed (and
    /// so nothing is written and no event is sent).
    pub fn change_to(&self, after: &Product) -> Option<Change> {
        if self == after {
            None
        } else if self.active && !after.active {
            Some(Change::Deactivated)
        } else {
            Some(Change::Updated)
        }
    }
}

/// How a product changed, which decides the event announced. Going inactive is its own kind
/// because carts and orders must stop offering the product, whatever else changed with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Updated,
    Deactivated,
}

pub fn search_text(name: &str, description: &str) -> String {
    // The newline keeps a search word from matching across the end of the name and the start
    // of the description: words never contain whitespace.
    format!("{name}\n{description}").to_lowercase()
}

pub fn name_key(name: &str) -> String {
    name.to_lowercase()
}

/// Input the catalog refuses, as plain data: which fields are wrong and why. `http` decides
/// how each is answered (status, code, title), in one place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A product body with bad fields, every one named.
    #[error("{0}")]
    InvalidBody(Invalid),
    /// List parameters with bad values, every one named.
    #[error("{0}")]
    InvalidQuery(Invalid),
    /// A cursor this service did not issue, or issued for another sort; says which.
    #[error("cursor: {0}")]
    InvalidCursor(String),
}

impl Error {
    /// The bad fields this error names, in order.
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            Error::InvalidBody(i) | Error::InvalidQuery(i) => i.0.clone(),
            Error::InvalidCursor(message) => vec![FieldError {
                field: "cursor".into(),
                message: message.clone(),
            }],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated values. Each one can only be built through `TryFrom`, so holding one is the proof.

/// A stock-keeping unit: `^[A-Z0-9][A-Z0-9-]{1,39}$`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sku(String);

impl TryFrom<String> for Sku {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        let mut bytes = s.bytes();
        let first = bytes
            .next()
            .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        let rest = bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
        if first && rest && (2..=40).contains(&s.len()) {
            Ok(Sku(s.to_owned()))
        } else {
            Err("must be 2 to 40 upper-case letters, digits or hyphens, starting with a letter or digit".into())
        }
    }
}

/// A product name: one line, 1 to 200 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductName(String);

impl TryFrom<String> for ProductName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        validate::line(&s, 1, 200).map(ProductName)
    }
}

/// A product description: paragraphs, up to 5000 characters.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Description(String);

impl TryFrom<String> for Description {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        validate::paragraph(&s, 0, 5000).map(Description)
    }
}

/// A category slug: 2 to 48 of `[a-z0-9-]`. It must also start and end with a letter or digit,
/// as slugs do, so "-x-" and "--" never become categories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategorySlug(String);

impl CategorySlug {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CategorySlug {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        let b = s.as_bytes();
        let allowed = b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        let ends = |c: Option<&u8>| c.is_some_and(|c| *c != b'-');
        if allowed && ends(b.first()) && ends(b.last()) && (2..=48).contains(&b.len()) {
            Ok(CategorySlug(s.to_owned()))
        } else {
            Err("must be 2 to 48 lower-case letters, digits or hyphens, starting and ending with a letter or digit".into())
        }
    }
}

/// A price in minor units: 1 to 100 000 000 (a million in a two-decimal currency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceCents(i64);

impl PriceCents {
    pub const MAX: i64 = 100_000_000;
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for PriceCents {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (1..=Self::MAX).contains(&v) {
            Ok(PriceCents(v))
        } else {
            Err(format!("must be from 1 to {} minor units", Self::MAX))
        }
    }
}

/// Kept local so [`required`] and [`optional`] can parse a seller id like every other field.
struct SellerRef(UserId);

impl TryFrom<String> for SellerRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.trim()
            .parse()
            .map(SellerRef)
            .map_err(|_| "must be a UUID".into())
    }
}

fn required<T, R: TryFrom<T, Error = String>>(
    e: &mut Errors,
    field: &str,
    v: Option<T>,
) -> Option<R> {
    match v {
        None => {
            e.add(field, "is required");
            None
        }
        Some(v) => e.take(field, R::try_from(v)),
    }
}

fn optional<T, R: TryFrom<T, Error = String>>(
    e: &mut Errors,
    field: &str,
    v: Option<T>,
) -> Option<R> {
    v.and_then(|v| e.take(field, R::try_from(v)))
}

// ---------------------------------------------------------------------------------------------
// Creating and changing products.

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

// ---------------------------------------------------------------------------------------------
// Who may do what.

/// Who may create, change and deactivate products (their own, for sellers); customers and
/// services only read them.
pub const MANAGERS: [Role; 2] = [Role::Seller, Role::Admin];

/// An admin may change any product; a seller only their own.
pub fn may_edit(principal: &Principal, product: &Product) -> bool {
    match principal.role {
        Role::Admin => true,
        Role::Seller => principal.user_id() == Some(product.seller_id),
        Role::Customer | Role::Service => false,
    }
}

/// A caller asking for what their role or their ownership does not allow; says what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub &'static str);

impl Forbidden {
    pub const NOT_OWNER_CHANGE: Forbidden =
        Forbidden("only the seller who owns this product or an admin may change it");
    pub const NOT_OWNER_DEACTIVATE: Forbidden =
        Forbidden("only the seller who owns this product or an admin may deactivate it");
}

/// Who owns a product being created: the seller who creates it, or whoever an admin names.
pub fn seller_for_new(
    principal: &Principal,
    requested: Option<UserId>,
) -> Result<UserId, Forbidden> {
    let caller = principal.user_id();
    match (principal.role, requested) {
        (Role::Admin, Some(seller)) => Ok(seller),
        (Role::Admin | Role::Seller, None) => {
            caller.ok_or(Forbidden("this route is for user accounts"))
        }
        (Role::Seller, Some(seller)) if caller == Some(seller) => Ok(seller),
        (Role::Seller, Some(_)) => Err(Forbidden(
            "only an admin may create a product for another seller",
        )),
        (Role::Customer | Role::Service, _) => Err(Forbidden("requires role SELLER or ADMIN")),
    }
}

// ---------------------------------------------------------------------------------------------
// Listing: search words, filters, sort and cursor.

/// The words of a search: each must appear (case-insensitively) in the name or description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Search(Vec<String>);

impl Search {
    pub const MAX_CHARS: usize = 200;
    pub const MAX_WORDS: usize = 10;

    pub fn parse(q: &str) -> Result<Search, String> {
        if q.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        // Whitespace separates words; any other control character (NUL above all, which
        // PostgreSQL refuses in text) is refused rather than silently dropped.
        if q.chars().any(|c| c.is_control() && !c.is_whitespace()) {
            return Err("must not contain control characters".into());
        }
        let mut words: Vec<String> = Vec::new();
        for w in q.split_whitespace().map(str::to_lowercase) {
            if !words.contains(&w) {
                words.push(w);
            }
        }
        if words.len() > Self::MAX_WORDS {
            return Err(format!("must have at most {} words", Self::MAX_WORDS));
        }
        Ok(Search(words))
    }

    pub fn words(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    #[default]
    Newest,
    PriceAsc,
    PriceDesc,
    NameAsc,
    NameDesc,
}

impl Sort {
    pub const ALL: [Sort; 5] = [
        Sort::Newest,
        Sort::PriceAsc,
        Sort::PriceDesc,
        Sort::NameAsc,
        Sort::NameDesc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Newest => "newest",
            Sort::PriceAsc => "price_asc",
            Sort::PriceDesc => "price_desc",
            Sort::NameAsc => "name_asc",
            Sort::NameDesc => "name_desc",
        }
    }

    pub fn descending(self) -> bool {
        matches!(self, Sort::Newest | Sort::PriceDesc | Sort::NameDesc)
    }

    /// The value of `product` this sort orders by (ties are broken by id).
    pub fn key_of(self, product: &Product) -> SortKey {
        match self {
            Sort::Newest => SortKey::Int(product.created_at),
            Sort::PriceAsc | Sort::PriceDesc => SortKey::Int(product.price_cents),
            Sort::NameAsc | Sort::NameDesc => SortKey::Text(product.name_key()),
        }
    }

    fn key_is_text(self) -> bool {
        matches!(self, Sort::NameAsc | Sort::NameDesc)
    }
}

impl FromStr for Sort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Sort::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                "must be one of newest, price_asc, price_desc, name_asc, name_desc".into()
            })
    }
}

impl fmt::Display for Sort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which products a list shows by their `active` flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActiveFilter {
    #[default]
    Active,
    Inactive,
    All,
}

impl FromStr for ActiveFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => Ok(ActiveFilter::Active),
            "false" => Ok(ActiveFilter::Inactive),
            "all" => Ok(ActiveFilter::All),
            _ => Err("must be true, false or all".into()),
        }
    }
}

/// A sort key's value. Keys of one sort are all of one kind, so the derived order (which would
/// put every `Int` before every `Text`) only ever compares like with like.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortKey {
    Int(i64),
    Text(String),
}

/// Where the next page starts: just after the product with this sort key and id. It names its
/// sort because a position in one order means nothing in another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub sort: Sort,
    pub key: SortKey,
    pub id: ProductId,
}

impl Cursor {
    /// Cursors are a few hundred characters at most (a 200-character name key); anything far
    /// longer is not one of ours and is refused before decoding.
    pub const MAX_CHARS: usize = 2048;

    pub fn after(product: &Product, sort: Sort) -> Cursor {
        Cursor {
            sort,
            key: sort.key_of(product),
            id: product.id,
        }
    }

    pub fn encode(&self) -> String {
        let wire = (self.sort, &self.key, self.id);
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default())
    }

    pub fn decode(text: &str) -> Result<Cursor, String> {
        const BAD: &str = "is not a cursor this service issued";
        if text.len() > Self::MAX_CHARS {
            return Err(BAD.into());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| BAD.to_owned())?;
        let (sort, key, id): (Sort, SortKey, ProductId) =
            serde_json::from_slice(&bytes).map_err(|_| BAD.to_owned())?;
        if sort.key_is_text() != matches!(key, SortKey::Text(_)) {
            return Err(BAD.into());
        }
        Ok(Cursor { sort, key, id })
    }
}

/// The query string of `GET /products`, as sent. Values are read as text and parsed by
/// [`ProductQuery`], so a bad one is answered with the parameter's name and what it expects.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Search words (up to 10, 200 characters in all); every word must appear in the name or
    /// the description, ignoring case.
    pub q: Option<String>,
    /// A category slug.
    pub category: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    pub min_price_cents: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    pub max_price_cents: Option<String>,
    #[param(value_type = Option<String>, format = Uuid)]
    pub seller_id: Option<String>,
    /// `true` (the default), `false`, or `all`.
    #[param(example = "true")]
    pub active: Option<String>,
    /// `newest` (the default), `price_asc`, `price_desc`, `name_asc` or `name_desc`.
    #[param(inline, value_type = Option<Sort>)]
    pub sort: Option<String>,
    /// 1 to 100; 20 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page, used with the same `sort`.
    pub cursor: Option<String>,
}

/// A checked list request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductQuery {
    pub search: Search,
    pub category: Option<CategorySlug>,
    pub min_price_cents: Option<i64>,
    pub max_price_cents: Option<i64>,
    pub seller_id: Option<UserId>,
    pub active: ActiveFilter,
    pub sort: Sort,
    pub limit: u32,
    pub after: Option<Cursor>,
}

impl Default for ProductQuery {
    fn default() -> Self {
        ProductQuery {
            search: Search::default(),
            category: None,
            min_price_cents: None,
            max_price_cents: None,
            seller_id: None,
            active: ActiveFilter::Active,
            sort: Sort::Newest,
            limit: ProductQuery::DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl ProductQuery {
    pub const DEFAULT_LIMIT: u32 = 20;
    pub const MAX_LIMIT: u32 = 100;
}

fn parsed<T: FromStr>(e: &mut Errors, field: &str, v: Option<&str>, expected: &str) -> Option<T> {
    v.and_then(|v| e.take(field, v.trim().parse().map_err(|_| expected.to_owned())))
}

impl TryFrom<ListParams> for ProductQuery {
    type Error = Error;
    fn try_from(p: ListParams) -> Result<Self, Error> {
        // An empty parameter (`?q=`) is how forms send "no value".
        let given = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let mut e = Errors::new();
        let search = given(p.q)
            .and_then(|q| e.take("q", Search::parse(&q)))
            .unwrap_or_default();
        let category = optional(&mut e, "category", given(p.category));
        const AMOUNT: &str = "must be a whole number of minor units, 0 or more";
        let price = |e: &mut Errors, field: &str, v: Option<String>| {
            parsed::<i64>(e, field, v.as_deref(), AMOUNT).filter(|n| {
                let ok = *n >= 0;
                if !ok {
                    e.add(field, AMOUNT);
                }
                ok
            })
        };
        let min_price_cents = price(&mut e, "min_price_cents", given(p.min_price_cents));
        let max_price_cents = price(&mut e, "max_price_cents", given(p.max_price_cents));
        if let (Some(min), Some(max)) = (min_price_cents, max_price_cents) {
            if min > max {
                e.add(
                    "min_price_cents",
                    "must not be greater than max_price_cents",
                );
            }
        }
        let seller_id = optional::<_, SellerRef>(&mut e, "seller_id", given(p.seller_id));
        let active = given(p.active)
            .and_then(|v| e.take("active", v.trim().parse()))
            .unwrap_or_default();
        let sort = given(p.sort)
            .and_then(|v| e.take("sort", v.trim().parse()))
            .unwrap_or_default();
        let limit_msg = format!("must be a whole number from 1 to {}", Self::MAX_LIMIT);
        let limit = parsed::<u32>(&mut e, "limit", given(p.limit).as_deref(), &limit_msg)
            .filter(|n| {
                let ok = (1..=Self::MAX_LIMIT).contains(n);
                if !ok {
                    e.add("limit", limit_msg.clone());
                }
                ok
            })
            .unwrap_or(Self::DEFAULT_LIMIT);
        e.check().map_err(Error::InvalidQuery)?;
        let after = match given(p.cursor) {
            None => None,
            Some(text) => {
                let c = Cursor::decode(text.trim()).map_err(Error::InvalidCursor)?;
                if c.sort != sort {
                    return Err(Error::InvalidCursor(format!(
                        "was issued for sort={}, not sort={sort}; send the same sort, or start again without a cursor",
                        c.sort
                    )));
                }
                Some(c)
            }
        };
        Ok(ProductQuery {
            search,
            category,
            min_price_cents,
            max_price_cents,
            seller_id: seller_id.map(|s| s.0),
            active,
            sort,
            limit,
            after,
        })
    }
}

/// One category and how many active products it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategoryCount {
    pub slug: String,
    pub product_count: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn principal(role: Role, id: Option<UserId>) -> Principal {
        Principal {
            subject: id.map_or_else(|| "service:order".to_owned(), |i| i.to_string()),
            role,
            email: None,
        }
    }

    fn product(seller: UserId) -> Product {
        let draft = NewProduct::try_from(CreateProduct {
            sku: Some("ABC-1".into()),
            name: Some("Lamp".into()),
            category: Some("home".into()),
            price_cents: Some(1000),
            ..Default::default()
        })
        .unwrap();
        Product::new(ProductId::new(), draft, seller, 1)
    }

    /// The fields a refusal of a body names, in order.
    fn body_fields(e: Error) -> Vec<String> {
        match e {
            Error::InvalidBody(i) => i.0.into_iter().map(|f| f.field).collect(),
            other => panic!("not a body refusal: {other:?}"),
        }
    }

    #[test]
    fn sku_rule() {
        for ok in [
            "AB",
            "A1",
            "0-",
            "ELEC-0001",
            "X-Y-Z",
            &"A".repeat(40),
            " ABC ",
        ] {
            assert!(Sku::try_from(ok.to_owned()).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "A",
            "-AB",
            "abc",
            "AB_C",
            "AB C",
            "ÄB",
            "AB%",
            &"A".repeat(41),
            "A\0B",
        ] {
            assert!(Sku::try_from(bad.to_owned()).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Sku::try_from(" AB-1 ".to_owned()).unwrap().0, "AB-1");
    }

    #[test]
    fn category_rule() {
        for ok in ["ab", "home-kitchen", "a1", &"a".repeat(48)] {
            assert!(
                CategorySlug::try_from(ok.to_owned()).is_ok(),
                "{ok:?} refused"
            );
        }
        for bad in [
            "a",
            "Home",
            "a_b",
            "-ab",
            "ab-",
            "--",
            "a b",
            &"a".repeat(49),
            "ü",
        ] {
            assert!(
                CategorySlug::try_from(bad.to_owned()).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn creating_reports_every_bad_field_at_once() {
        let err = NewProduct::try_from(CreateProduct {
            sku: Some("bad sku".into()),
            name: Some("two\nlines".into()),
            description: Some("x".repeat(5001)),
            category: None,
            price_cents: Some(0),
            currency: Some("usd".into()),
            seller_id: Some("nope".into()),
        })
        .unwrap_err();
        assert_eq!(
            body_fields(err),
            [
                "sku",
                "name",
                "description",
                "category",
                "price_cents",
                "currency",
                "seller_id"
            ]
        );
        let err = NewProduct::try_from(CreateProduct::default()).unwrap_err();
        assert!(err
            .field_errors()
            .iter()
            .all(|e| e.message == "is required"));
        assert_eq!(body_fields(err), ["sku", "name", "category", "price_cents"]);
    }

    #[test]
    fn creating_trims_and_defaults() {
        let p = NewProduct::try_from(CreateProduct {
            sku: Some("ELEC-1".into()),
            name: Some("  Lamp 💡 ".into()),
            category: Some("home".into()),
            price_cents: Some(PriceCents::MAX),
            description: Some("line one\nline two".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.name.0, "Lamp 💡");
        assert_eq!(p.currency, Currency::USD);
        assert_eq!(p.price.get(), PriceCents::MAX);
        assert_eq!(p.description.0, "line one\nline two");
        assert!(PriceCents::try_from(PriceCents::MAX + 1).is_err());
        assert!(PriceCents::try_from(-5).is_err());
        assert!(ProductName::try_from("a\0b".to_owned()).is_err());
        assert!(ProductName::try_from("x".repeat(201)).is_err());
        assert!(ProductName::try_from("😀".repeat(200)).is_ok());
    }

    #[test]
    fn a_patch_needs_a_field_and_checks_each() {
        let err = ProductPatch::try_from(UpdateProduct::default()).unwrap_err();
        assert_eq!(body_fields(err), ["body"]);
        let err = ProductPatch::try_from(UpdateProduct {
            price_cents: Some(-1),
            category: Some("X".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(body_fields(err), ["category", "price_cents"]);
        let patch = ProductPatch::try_from(UpdateProduct {
            active: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(patch.active, Some(false));
    }

    #[test]
    fn changes_are_classified() {
        let p = product(UserId::new());
        let same = p.patched(&ProductPatch {
            name: Some(ProductName("Lamp".into())),
            ..Default::default()
        });
        assert_eq!(p.change_to(&same), None);
        let cheaper = p.patched(&ProductPatch {
            price: Some(PriceCents(500)),
            ..Default::default()
        });
        assert_eq!(p.change_to(&cheaper), Some(Change::Updated));
        let off = p.patched(&ProductPatch {
            price: Some(PriceCents(500)),
            active: Some(false),
            ..Default::default()
        });
        assert_eq!(p.change_to(&off), Some(Change::Deactivated));
        assert_eq!(off.change_to(&p), Some(Change::Updated));
    }

    #[test]
    fn ownership_rule() {
        let owner = UserId::new();
        let other = UserId::new();
        let p = product(owner);
        let table = [
            (Role::Admin, Some(other), true),
            (Role::Admin, Some(owner), true),
            (Role::Seller, Some(owner), true),
            (Role::Seller, Some(other), false),
            // A seller demoted to customer keeps no rights over their old products.
            (Role::Customer, Some(owner), false),
            (Role::Customer, Some(other), false),
            (Role::Service, None, false),
        ];
        for (role, id, allowed) in table {
            assert_eq!(
                may_edit(&principal(role, id), &p),
                allowed,
                "{role:?} {id:?}"
            );
        }
        assert!(principal(Role::Seller, Some(owner))
            .require(&MANAGERS)
            .is_ok());
        assert!(principal(Role::Customer, Some(owner))
            .require(&MANAGERS)
            .is_err());
    }

    #[test]
    fn who_owns_a_new_product() {
        let me = UserId::new();
        let other = UserId::new();
        let seller = principal(Role::Seller, Some(me));
        let admin = principal(Role::Admin, Some(me));
        assert_eq!(seller_for_new(&seller, None).unwrap(), me);
        assert_eq!(seller_for_new(&seller, Some(me)).unwrap(), me);
        assert_eq!(
            seller_for_new(&seller, Some(other)),
            Err(Forbidden(
                "only an admin may create a product for another seller"
            ))
        );
        assert_eq!(seller_for_new(&admin, None).unwrap(), me);
        assert_eq!(seller_for_new(&admin, Some(other)).unwrap(), other);
        let customer = principal(Role::Customer, Some(me));
        assert_eq!(
            seller_for_new(&customer, None),
            Err(Forbidden("requires role SELLER or ADMIN"))
        );
        let service = principal(Role::Service, None);
        assert_eq!(
            seller_for_new(&service, None),
            Err(Forbidden("requires role SELLER or ADMIN"))
        );
    }

    #[test]
    fn search_splits_lowercases_and_dedupes() {
        let s = Search::parse("  Red\tWOOL red  scarf ").unwrap();
        assert_eq!(s.words(), ["red", "wool", "scarf"]);
        assert!(Search::parse("   ").unwrap().is_empty());
        assert!(Search::parse(&"a ".repeat(10)).unwrap().words().len() == 1);
        let eleven: Vec<String> = (0..11).map(|i| format!("w{i}")).collect();
        assert!(Search::parse(&eleven.join(" ")).is_err());
        assert!(Search::parse(&"x".repeat(201)).is_err());
        assert!(Search::parse(&"😀".repeat(200)).is_ok());
    }

    #[test]
    fn hostile_search_strings_are_inert_or_refused() {
        // SQL text is only ever bound as a parameter (its wildcards escaped by `store`); here
        // it is just words.
        let s = Search::parse("'; DROP TABLE products; --").unwrap();
        assert_eq!(s.words(), ["';", "drop", "table", "products;", "--"]);
        let s = Search::parse("100% under_score").unwrap();
        assert_eq!(s.words(), ["100%", "under_score"]);
        assert!(Search::parse("nul\0byte").is_err());
        assert!(Search::parse("bell\u{7}").is_err());
        let s = Search::parse("Crème 🧣").unwrap();
        assert_eq!(s.words(), ["crème", "🧣"]);
    }

    #[test]
    fn search_text_keeps_name_and_description_apart() {
        assert_eq!(
            search_text("Red Lamp", "WARM light"),
            "red lamp\nwarm light"
        );
    }

    fn params(pairs: &[(&str, &str)]) -> ListParams {
        let qs = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        serde_json::from_value(serde_json::Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).into())))
                .collect(),
        ))
        .unwrap_or_else(|e| panic!("{qs}: {e}"))
    }

    #[test]
    fn list_parameters_default_and_parse() {
        let q = ProductQuery::try_from(ListParams::default()).unwrap();
        assert_eq!(q, ProductQuery::default());
        let seller = UserId::new();
        let q = ProductQuery::try_from(params(&[
            ("q", "Lamp"),
            ("category", "home"),
            ("min_price_cents", "0"),
            ("max_price_cents", "500"),
            ("seller_id", &seller.to_string()),
            ("active", "all"),
            ("sort", "price_desc"),
            ("limit", "100"),
            ("cursor", ""),
        ]))
        .unwrap();
        assert_eq!(q.search.words(), ["lamp"]);
        assert_eq!(q.category.unwrap().as_str(), "home");
        assert_eq!((q.min_price_cents, q.max_price_cents), (Some(0), Some(500)));
        assert_eq!(q.seller_id, Some(seller));
        assert_eq!(q.active, ActiveFilter::All);
        assert_eq!(q.sort, Sort::PriceDesc);
        assert_eq!(q.limit, 100);
        assert_eq!(q.after, None);
    }

    #[test]
    fn bad_list_parameters_are_named() {
        // (query parameters, the fields the answer must name)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
        );
        let cases: [Case; 8] = [
            (&[("limit", "0")], &["limit"]),
            (&[("limit", "101")], &["limit"]),
            (&[("limit", "ten")], &["limit"]),
            (&[("sort", "cheapest")], &["sort"]),
            (&[("active", "yes")], &["active"]),
            (
                &[("min_price_cents", "10"), ("max_price_cents", "5")],
                &["min_price_cents"],
            ),
            (
                &[("min_price_cents", "-1"), ("seller_id", "x")],
                &["min_price_cents", "seller_id"],
            ),
            (&[("q", "a\0"), ("category", "A B")], &["q", "category"]),
        ];
        for (pairs, fields) in cases {
            let err = ProductQuery::try_from(params(pairs)).unwrap_err();
            let Error::InvalidQuery(invalid) = &err else {
                panic!("{pairs:?}: not a query refusal: {err:?}");
            };
            assert_eq!(invalid.fields(), fields, "{pairs:?}");
            assert!(err.to_string().contains(fields[0]));
        }
    }

    #[test]
    fn a_cursor_only_works_with_its_own_sort() {
        let p = product(UserId::new());
        let c = Cursor::after(&p, Sort::PriceAsc).encode();
        let q = ProductQuery::try_from(params(&[("sort", "price_asc"), ("cursor", &c)])).unwrap();
        assert_eq!(q.after.unwrap().key, SortKey::Int(1000));
        let err =
            ProductQuery::try_from(params(&[("sort", "name_asc"), ("cursor", &c)])).unwrap_err();
        assert!(matches!(err, Error::InvalidCursor(_)), "{err:?}");
        // Default sort is newest, which this cursor is not for either.
        let err = ProductQuery::try_from(params(&[("cursor", &c)])).unwrap_err();
        assert!(matches!(err, Error::InvalidCursor(_)), "{err:?}");
        for junk in ["x", "!!!", "bnVsbA", &"A".repeat(5000)] {
            let err = ProductQuery::try_from(params(&[("cursor", junk)])).unwrap_err();
            assert!(matches!(err, Error::InvalidCursor(_)), "{junk}: {err:?}");
        }
        // A key of the wrong kind for its sort is refused too.
        let forged =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&("name_asc", 5, ProductId::new())).unwrap());
        assert!(Cursor::decode(&forged).is_err());
    }

    fn any_sort() -> impl Strategy<Value = Sort> {
        prop::sample::select(Sort::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn cursors_round_trip(sort in any_sort(), n in any::<i64>(), text in ".{0,200}", id in any::<u128>()) {
            let key = if sort.key_is_text() { SortKey::Text(text) } else { SortKey::Int(n) };
            let c = Cursor { sort, key, id: ProductId(uuid::Uuid::from_u128(id)) };
            let encoded = c.encode();
            prop_assert!(encoded.len() <= Cursor::MAX_CHARS);
            prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Cursor::decode(&encoded).unwrap(), c);
        }

        #[test]
        fn decoding_anything_never_panics(s in ".{0,300}") {
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn search_parsing_is_total_and_bounded(q in ".{0,250}") {
            match Search::parse(&q) {
                Ok(s) => {
                    prop_assert!(s.words().len() <= Search::MAX_WORDS);
                    for w in s.words() {
                        prop_assert!(!w.is_empty());
                        prop_assert!(!w.chars().any(char::is_whitespace));
                        prop_assert_eq!(w, &w.to_lowercase());
                    }
                }
                Err(_) => prop_assert!(
                    q.chars().count() > Search::MAX_CHARS
                        || q.chars().any(|c| c.is_control() && !c.is_whitespace())
                        || q.split_whitespace().count() > Search::MAX_WORDS
                ),
            }
        }
    }
}
