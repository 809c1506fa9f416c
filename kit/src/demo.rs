//! The demo accounts of the embedded mode. Their ids are fixed so that each service can seed
//! its own demo data (the catalog's products belong to the demo seller) without asking another.

use crate::ids::UserId;
use uuid::Uuid;

pub struct DemoAccount {
    pub id: UserId,
    pub email: &'static str,
    pub password: &'static str,
    pub name: &'static str,
    pub role: crate::auth::Role,
}

pub const CUSTOMER: DemoAccount = DemoAccount {
    id: UserId(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001)),
    email: "customer@mercato.local",
    password: "Customer-demo-2026",
    name: "Casey Customer",
    role: crate::auth::Role::Customer,
};

pub const SELLER: DemoAccount = DemoAccount {
    id: UserId(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0002)),
    email: "seller@mercato.local",
    password: "Seller-demo-2026",
    name: "Sam Seller",
    role: crate::auth::Role::Seller,
};

pub const ADMIN: DemoAccount = DemoAccount {
    id: UserId(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0003)),
    email: "admin@mercato.local",
    password: "Admin-demo-2026",
    name: "Ada Admin",
    role: crate::auth::Role::Admin,
};

pub const ACCOUNTS: [&DemoAccount; 3] = [&CUSTOMER, &SELLER, &ADMIN];

/// One product of the demo catalog, with the stock the inventory service starts it with.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DemoProduct {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_cents: i64,
    pub stock: i64,
}

/// The demo catalog: 73 products in 8 categories, all sold by [`SELLER`] in USD.
#[expect(
    clippy::expect_used,
    reason = "the embedded catalog is checked by this module's test"
)]
pub fn products() -> Vec<DemoProduct> {
    serde_json::from_str(include_str!("../demo/products.json"))
        .expect("the demo catalog is valid JSON")
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_catalog_is_large_and_varied_enough() {
        let p = super::products();
        assert!(p.len() >= 50);
        let cats: std::collections::BTreeSet<_> = p.iter().map(|p| p.category.as_str()).collect();
        assert!(cats.len() >= 6);
        let skus: std::collections::BTreeSet<_> = p.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus.len(), p.len(), "SKUs are unique");
    }
}
