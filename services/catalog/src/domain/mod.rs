//! The catalog's rules in plain Rust: what a product is, what input is acceptable, how search
//! words and list parameters are read, how a page cursor is written, and who may change what.
//!
//! Nothing here touches HTTP or SQL. Input arrives as the raw request shapes (`CreateProduct`,
//! `UpdateProduct`, `ListParams`, every field optional so one answer can name every bad field)
//! and leaves as parsed values (`NewProduct`, `ProductPatch`, `ProductQuery`) that the store
//! can write without checking anything again.
//!
//! The product and the catalog's refusals stand here; each seam has its own file: `values`
//! (the validated fields), `edit` (creating and changing), `access` (who may), `listing`
//! (search words, filters, sort, cursor). All are re-exported, so callers name `domain::X`.

use mercato_kit::ids::{Currency, ProductId, UserId};
use mercato_kit::time::Micros;
use mercato_kit::validate::{FieldError, Invalid};

mod access;
mod edit;
mod listing;
mod values;

pub use access::*;
pub use edit::*;
pub use listing::*;
pub use values::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use mercato_kit::auth::{Principal, Role};
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
