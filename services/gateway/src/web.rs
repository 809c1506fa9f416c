//! The web app at `/`: the storefront and the seller's back office, built from `web/` (a Vite
//! single-page app) into `web/dist/`, whose files are compiled into the binary, so
//! `mercato up` serves it with no Node.js, no CDN and no network.
//!
//! Vite names every built asset after its content (`/assets/index-3f9a1c.js`), so those are
//! cached for a year as immutable; `index.html` names the current ones and is `no-cache`
//! (revalidated with its ETag every time), so a new build is picked up on the next load.
//! Any other path that looks like a page of the app (`/orders/<id>`, `/seller/products`) gets
//! `index.html` too and the app's router shows it; paths under `/api/`, and files that do not
//! exist, keep getting problem+json 404s, so a client that mistypes an API path is not
//! answered with a web page.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use mercato_kit::problem::Problem;

#[derive(rust_embed::Embed)]
#[folder = "../../web/dist"]
struct Dist;

/// Scripts, styles, images and API calls from this address only; no inline scripts, no
/// frames, no form posts elsewhere.
pub const APP_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                           img-src 'self' data:; font-src 'self'; connect-src 'self'; \
                           base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// Paths that belong to the API or the operations side, never to the app.
const NOT_THE_APP: &[&str] = &["api", "health", "metrics", "docs", ".well-known", "assets"];

/// What the app is told at start (`GET /api/v1/web/config`) about the shop it runs in.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppConfig {
    /// The card processor is psp-mock: checkout offers its test card tokens.
    pub demo_cards: bool,
}

/// psp-mock's test tokens (services/psp-mock), as checkout offers them.
const DEMO_CARDS: &[(&str, &str)] = &[
    ("pm_card_visa", "Visa ending 4242 (pays)"),
    ("pm_card_chargeDeclined", "Card ending 0002 (declined)"),
    (
        "pm_card_chargeDeclinedInsufficientFunds",
        "Card ending 9995 (declined: insufficient funds)",
    ),
    (
        "pm_card_processingError",
        "Card ending 0119 (processor errors, then pays)",
    ),
    ("pm_card_pending", "Pending card (settled by webhook)"),
];

/// `/`, `/api/v1/web/config`, and every path no other route of the gateway claims.
pub fn router(config: AppConfig) -> Router {
    let cards: Vec<_> = if config.demo_cards {
        DEMO_CARDS
            .iter()
            .map(|(token, label)| serde_json::json!({"token": token, "label": label}))
            .collect()
    } else {
        Vec::new()
    };
    let body = serde_json::json!({ "demo_cards": cards });
    Router::new()
        .route(
            "/api/v1/web/config",
            get(move || async move {
                (
                    [(header::CACHE_CONTROL, REVALIDATE)],
                    axum::Json(body.clone()),
                )
            }),
        )
        .route("/", get(serve))
        .route("/{*path}", get(serve))
}

async fn serve(req: Request) -> Response {
    let path = req.uri().path().trim_start_matches('/');
    let headers = req.headers();
    if path.is_empty() || path == "index.html" {
        return index(headers);
    }
    if let Some(file) = Dist::get(path) {
        let cache = if path.starts_with("assets/") {
            IMMUTABLE
        } else {
            REVALIDATE
        };
        return respond(headers, path, file, cache);
    }
    if is_page(path) {
        return index(headers);
    }
    Problem::not_found("no such route").into_response()
}

/// A path the app's router may show: not under a reserved prefix, and not a file name (a
/// missing `favicon.png` is a 404, not a page).
fn is_page(path: &str) -> bool {
    let first = path.split('/').next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    !NOT_THE_APP.contains(&first) && !last.contains('.')
}

fn index(headers: &HeaderMap) -> Response {
    match Dist::get("index.html") {
        Some(file) => respond(headers, "index.html", file, REVALIDATE),
        // Only a build without `web/dist` gets here; say so rather than serve nothing.
        None => Problem::not_found("the web app is not part of this build").into_response(),
    }
}

fn respond(
    headers: &HeaderMap,
    path: &str,
    file: rust_embed::EmbeddedFile,
    cache: &'static str,
) -> Response {
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let content_type = match mime.type_() {
        mime_guess::mime::TEXT => format!("{mime}; charset=utf-8"),
        _ if mime.subtype() == mime_guess::mime::JAVASCRIPT => {
            "text/javascript; charset=utf-8".to_owned()
        }
        _ => mime.to_string(),
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.data.into_owned().into_response()
    };
    let h = res.headers_mut();
    // A MIME type and a quoted hex digest are always header values.
    if let (false, Ok(v)) = (fresh, HeaderValue::from_str(&content_type)) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(APP_CSP),
    );
    res
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_paths_of_the_app_not_files_or_reserved_prefixes() {
        for page in [
            "orders/0190",
            "seller/products",
            "cart",
            "products/abc",
            "signin",
        ] {
            assert!(is_page(page), "{page}");
        }
        for not in [
            "api/v2/orders",
            "api",
            "health/whatever",
            "assets/missing.js",
            "favicon.png",
            "orders/0190/x.json",
            ".well-known/other",
        ] {
            assert!(!is_page(not), "{not}");
        }
    }
}
