//! Listing: search words, filters, sort and cursor.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mercato_kit::ids::{ProductId, UserId};
use mercato_kit::validate::Errors;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
// The request shapes carry their OpenAPI schema here, beside the rules that read them: they are
// the wire contract, as serde's derives are, and `utoipa` knows nothing of HTTP or axum.
use utoipa::{IntoParams, ToSchema};

use super::values::{optional, CategorySlug, SellerRef};
use super::{Error, Product};

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

    pub(super) fn key_is_text(self) -> bool {
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
