//! Validated values. Each one can only be built through `TryFrom`, so holding one is the proof.
//! What reads request fields into them (`required`, `optional`) is here too.

use mercato_kit::ids::UserId;
use mercato_kit::validate::{self, Errors};

/// A stock-keeping unit: `^[A-Z0-9][A-Z0-9-]{1,39}$`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sku(pub(super) String);

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
pub struct ProductName(pub(super) String);

impl TryFrom<String> for ProductName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        validate::line(&s, 1, 200).map(ProductName)
    }
}

/// A product description: paragraphs, up to 5000 characters.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Description(pub(super) String);

impl TryFrom<String> for Description {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        validate::paragraph(&s, 0, 5000).map(Description)
    }
}

/// A category slug: 2 to 48 of `[a-z0-9-]`. It must also start and end with a letter or digit,
/// as slugs do, so "-x-" and "--" never become categories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategorySlug(pub(super) String);

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
pub struct PriceCents(pub(super) i64);

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
pub(super) struct SellerRef(pub(super) UserId);

impl TryFrom<String> for SellerRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.trim()
            .parse()
            .map(SellerRef)
            .map_err(|_| "must be a UUID".into())
    }
}

pub(super) fn required<T, R: TryFrom<T, Error = String>>(
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

pub(super) fn optional<T, R: TryFrom<T, Error = String>>(
    e: &mut Errors,
    field: &str,
    v: Option<T>,
) -> Option<R> {
    v.and_then(|v| e.take(field, R::try_from(v)))
}
