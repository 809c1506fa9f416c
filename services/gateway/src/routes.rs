//! Which service answers which path: the gateway's one routing table, plain data so it can be
//! read (and tested) at a glance.

/// The services behind the gateway, as named in configuration, problems and metrics.
pub const UPSTREAMS: &[&str] = &["auth", "catalog", "order", "payment", "cart", "inventory"];

/// Where a request goes: the service and the path to ask it for.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub service: &'static str,
    pub path: String,
}

/// The first path segment after `/api/v1` and the service that owns it.
const FAMILIES: &[(&str, &str)] = &[
    ("auth", "auth"),
    ("products", "catalog"),
    ("categories", "catalog"),
    ("cart", "cart"),
    ("orders", "order"),
    ("inventory", "inventory"),
    ("payments", "payment"),
];

/// Routes `path` (without the query), or `None` when no service owns it.
///
/// Administration is split: `/api/v1/admin/users…` belongs to auth, and
/// `/api/v1/admin/{service}/…` reaches that service's own `/api/v1/admin/…` (dead letters,
/// chaos), so an operator can address any one service through the front door.
pub fn route(path: &str) -> Option<Route> {
    if path == "/.well-known/jwks.json" {
        return Some(Route {
            service: "auth",
            path: path.to_owned(),
        });
    }
    let rest = path.strip_prefix("/api/v1/")?;
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if first == "admin" {
        let (second, tail) = tail.split_once('/').unwrap_or((tail, ""));
        if second == "users" {
            return Some(Route {
                service: "auth",
                path: path.to_owned(),
            });
        }
        let service = UPSTREAMS.iter().copied().find(|s| *s == second)?;
        if tail.is_empty() {
            return None;
        }
        return Some(Route {
            service,
            path: format!("/api/v1/admin/{tail}"),
        });
    }
    let service = FAMILIES
        .iter()
        .find(|(family, _)| *family == first)
        .map(|(_, s)| *s)?;
    Some(Route {
        service,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(path: &str) -> Option<(&'static str, String)> {
        route(path).map(|r| (r.service, r.path))
    }

    #[test]
    fn every_family_has_its_service() {
        for (path, service) in [
            ("/api/v1/auth/login", "auth"),
            ("/api/v1/auth/me", "auth"),
            ("/.well-known/jwks.json", "auth"),
            ("/api/v1/admin/users", "auth"),
            ("/api/v1/admin/users/0190", "auth"),
            ("/api/v1/products", "catalog"),
            ("/api/v1/products/abc", "catalog"),
            ("/api/v1/categories", "catalog"),
            ("/api/v1/cart", "cart"),
            ("/api/v1/cart/items/abc", "cart"),
            ("/api/v1/orders", "order"),
            ("/api/v1/orders/abc/stream", "order"),
            ("/api/v1/inventory/check", "inventory"),
            ("/api/v1/payments/webhook", "payment"),
        ] {
            assert_eq!(to(path), Some((service, path.to_owned())), "{path}");
        }
    }

    #[test]
    fn admin_paths_name_their_service() {
        assert_eq!(
            to("/api/v1/admin/order/dead-letters"),
            Some(("order", "/api/v1/admin/dead-letters".to_owned()))
        );
        assert_eq!(
            to("/api/v1/admin/payment/dead-letters/7/replay"),
            Some(("payment", "/api/v1/admin/dead-letters/7/replay".to_owned()))
        );
        assert_eq!(to("/api/v1/admin/order"), None);
        assert_eq!(to("/api/v1/admin/psp-mock/x"), None);
        assert_eq!(to("/api/v1/admin/nothing/x"), None);
    }

    #[test]
    fn nothing_else_is_routed() {
        for path in [
            "/",
            "/api/v1",
            "/api/v1/",
            "/api/v2/orders",
            "/api/v1/ordersx",
            "/api/v1/unknown",
            "/health/live",
            "/api/v1/../auth",
        ] {
            assert_eq!(to(path), None, "{path}");
        }
    }
}
