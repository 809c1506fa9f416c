//! Who may do what.

use super::Product;
use mercato_kit::auth::{Principal, Role};
use mercato_kit::ids::UserId;

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
