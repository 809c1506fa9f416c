//! One API document for the whole shop, and a page to explore it.
//!
//! `/openapi.json` is assembled from every service's own document when asked (kept for a few
//! seconds), so it always describes the code that is running; a service that cannot be
//! reached is named in the document's description instead of failing the whole page. `/docs`
//! is Swagger UI served from assets compiled into the binary: it works with no network.

use crate::upstream::Upstreams;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long an assembled document is reused.
const KEEP: Duration = Duration::from_secs(10);
/// How long one service may take to hand over its document.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Docs {
    http: reqwest::Client,
    upstreams: Arc<Upstreams>,
    /// What the gateway answers itself (the operator console's routes).
    own: Value,
    cached: Mutex<Option<(Instant, Value)>>,
}

impl Docs {
    #[expect(
        clippy::expect_used,
        reason = "a generated document serializes, and a client without TLS always builds"
    )]
    pub fn new(upstreams: Arc<Upstreams>) -> Docs {
        use utoipa::OpenApi;
        Docs {
            own: serde_json::to_value(crate::console::ApiDoc::openapi())
                .expect("a document serializes"),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("HTTP client"),
            upstreams,
            cached: Mutex::new(None),
        }
    }

    async fn fetch(&self, service: &'static str) -> Result<Value, String> {
        let upstream = self.upstreams.get(service).ok_or("not configured")?;
        let mut last = String::from("no replicas configured");
        for replica in upstream.candidates() {
            let url = format!("{}/openapi.json", replica.base);
            match self.http.get(&url).send().await {
                Ok(res) if res.status().is_success() => {
                    return res.json::<Value>().await.map_err(|e| e.to_string())
                }
                Ok(res) => last = format!("answered {}", res.status()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// The merged document; rebuilt when older than [`KEEP`] or when a service was missing.
    pub async fn document(&self) -> Value {
        let mut cached = self.cached.lock().await;
        if let Some((at, doc)) = &*cached {
            if at.elapsed() < KEEP {
                return doc.clone();
            }
        }
        let services: Vec<&'static str> = self.upstreams.keys().copied().collect();
        let fetched = futures::future::join_all(
            services
                .iter()
                .map(|s| async move { (*s, self.fetch(s).await) }),
        )
        .await;
        let mut docs = vec![(crate::SERVICE, self.own.clone())];
        let mut missing = Vec::new();
        for (service, result) in fetched {
            match result {
                Ok(doc) => docs.push((service, doc)),
                Err(e) => {
                    tracing::warn!(service, error = %e, "API document unavailable");
                    missing.push(service);
                }
            }
        }
        let merged = merge(&docs, &missing);
        if missing.is_empty() {
            *cached = Some((Instant::now(), merged.clone()));
        }
        merged
    }
}

/// Merges the services' documents. Paths never collide (each family belongs to one service);
/// schema names may (two services may both call something `Item`), so a clashing schema of a
/// later service is renamed `<Service><Name>` and that service's references follow it.
/// The path a service's route has at the gateway: a service's own admin routes are reached
/// as `/api/v1/admin/{service}/...` there (see [`crate::routes::route`]), auth's user
/// administration as it is; everything else keeps its path.
fn at_gateway(service: &str, path: &str) -> String {
    if service == crate::SERVICE {
        return path.to_owned();
    }
    match path.strip_prefix("/api/v1/admin/") {
        Some(rest) if !(rest == "users" || rest.starts_with("users/")) => {
            format!("/api/v1/admin/{service}/{rest}")
        }
        _ => path.to_owned(),
    }
}

pub fn merge(docs: &[(&str, Value)], missing: &[&str]) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut security_schemes = Map::new();
    let mut tags = Vec::new();
    for (service, doc) in docs {
        let mut doc = doc.clone();
        let mut renames = Vec::new();
        if let Some(own) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, schema) in own {
                if schemas.get(name).is_some_and(|seen| seen != schema) {
                    renames.push((name.clone(), format!("{}{name}", title_case(service))));
                }
            }
        }
        for (from, to) in &renames {
            rename_refs(
                &mut doc,
                &format!("#/components/schemas/{from}"),
                &format!("#/components/schemas/{to}"),
            );
        }
        if let Some(own) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, schema) in own {
                let name = renames
                    .iter()
                    .find(|(from, _)| from == name)
                    .map(|(_, to)| to.clone())
                    .unwrap_or_else(|| name.clone());
                schemas.entry(name).or_insert_with(|| schema.clone());
            }
        }
        if let Some(own) = doc
            .pointer("/components/securitySchemes")
            .and_then(Value::as_object)
        {
            for (name, scheme) in own {
                security_schemes
                    .entry(name.clone())
                    .or_insert_with(|| scheme.clone());
            }
        }
        if let Some(own) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in own {
                let path = &at_gateway(service, path);
                let mut item = item.clone();
                // Group operations by service unless the service grouped them itself.
                if let Some(ops) = item.as_object_mut() {
                    for op in ops.values_mut().filter_map(Value::as_object_mut) {
                        op.entry("tags").or_insert_with(|| json!([service]));
                    }
                }
                match paths.get_mut(path).and_then(Value::as_object_mut) {
                    Some(existing) => {
                        if let Some(ops) = item.as_object() {
                            for (k, v) in ops {
                                existing.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                    }
                    None => {
                        paths.insert(path.clone(), item);
                    }
                }
            }
        }
        tags.push(json!({"name": service, "description": format!("the {service} service")}));
    }
    let mut description = String::from(
        "Every Mercato service behind one address. Errors are application/problem+json \
         (RFC 9457); POST/PATCH take an Idempotency-Key.",
    );
    if !missing.is_empty() {
        description.push_str(&format!(
            "\n\nNot included (the service could not be reached when this document was \
             assembled): {}.",
            missing.join(", ")
        ));
    }
    let mut merged = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Mercato API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security_schemes},
        "tags": tags,
    });
    // What the gateway answers itself, on any route.
    mercato_kit::openapi::add_to_every_operation(
        &mut merged,
        &[
            (
                "401",
                "A token was sent and is not valid (refused at the gateway)",
            ),
            (
                "429",
                "Too many requests from this address or account (with Retry-After)",
            ),
            ("502", "The owning service refused the connection"),
            (
                "503",
                "The owning service is unavailable, or its circuit breaker is open",
            ),
            ("504", "The owning service did not answer in time"),
        ],
    );
    merged
}

fn title_case(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn rename_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "$ref" && child.as_str() == Some(from) {
                    *child = Value::String(to.to_owned());
                } else {
                    rename_refs(child, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rename_refs(i, from, to)),
        _ => {}
    }
}

async fn openapi(State(docs): State<Arc<Docs>>) -> Response {
    axum::Json(docs.document().await).into_response()
}

const INDEX: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Mercato API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"#;

/// Kept out of the page so the page's policy can forbid inline scripts.
const INIT: &str = r##"window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    tryItOutEnabled: true
  });
};
"##;

/// Scripts, styles and images from this address only (Swagger UI injects inline styles and
/// data: images); nothing from anywhere else.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

fn with_csp(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    res
}

/// `/openapi.json`, `/docs` and its assets.
pub fn router(docs: Arc<Docs>) -> Router {
    let assets = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/docs/assets",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
        title: Some("Mercato API"),
    })
    .layer(axum::middleware::map_response(|res: Response| async {
        with_csp(res)
    }));
    Router::new()
        .route("/openapi.json", get(openapi).with_state(docs))
        .route(
            "/docs",
            get(|| async { with_csp(axum::response::Html(INDEX).into_response()) }),
        )
        .route(
            "/docs/",
            get(|| async { axum::response::Redirect::permanent("/docs") }),
        )
        .route(
            "/docs/init.js",
            get(|| async {
                with_csp(([(header::CONTENT_TYPE, "text/javascript")], INIT).into_response())
            }),
        )
        .merge(assets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_services_admin_routes_are_documented_where_the_gateway_serves_them() {
        let own = |path: &str| json!({"paths": {path: {"get": {"responses": {}}}}});
        let merged = merge(
            &[
                ("order", own("/api/v1/admin/audit/events")),
                ("payment", own("/api/v1/admin/audit/events")),
                ("auth", own("/api/v1/admin/users/{id}")),
            ],
            &[],
        );
        let paths = merged["paths"].as_object().unwrap();
        for path in [
            "/api/v1/admin/order/audit/events",
            "/api/v1/admin/payment/audit/events",
            "/api/v1/admin/users/{id}",
        ] {
            assert!(paths.contains_key(path), "{path}: {:?}", paths.keys());
            let concrete = path.replace("{id}", "0190");
            assert!(
                crate::routes::route(&concrete).is_some(),
                "{path} is routed"
            );
        }
        assert_eq!(paths.len(), 3);
    }

    #[test]
    fn documents_merge_and_clashing_schemas_are_renamed() {
        let order = json!({
            "openapi": "3.1.0",
            "paths": {"/api/v1/orders": {"post": {"responses": {"201": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}}}},
            "components": {
                "schemas": {"Item": {"type": "object", "properties": {"quantity": {"type": "integer"}}}, "Shared": {"type": "string"}},
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
            }
        });
        let cart = json!({
            "openapi": "3.1.0",
            "paths": {"/api/v1/cart": {"get": {"tags": ["carts"], "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}}}},
            "components": {"schemas": {"Item": {"type": "object", "properties": {"name": {"type": "string"}}}, "Shared": {"type": "string"}}}
        });
        let merged = merge(&[("order", order), ("cart", cart)], &["inventory"]);
        let schemas = merged["components"]["schemas"].as_object().unwrap();
        assert!(schemas["Item"]["properties"].get("quantity").is_some());
        assert!(schemas["CartItem"]["properties"].get("name").is_some());
        assert!(
            !schemas.contains_key("CartShared"),
            "identical schemas are shared"
        );
        assert_eq!(
            merged.pointer(
                "/paths/~1api~1v1~1cart/get/responses/200/content/application~1json/schema/$ref"
            ),
            Some(&json!("#/components/schemas/CartItem"))
        );
        assert_eq!(
            merged.pointer(
                "/paths/~1api~1v1~1orders/post/responses/201/content/application~1json/schema/$ref"
            ),
            Some(&json!("#/components/schemas/Item"))
        );
        assert_eq!(
            merged.pointer("/paths/~1api~1v1~1orders/post/tags"),
            Some(&json!(["order"]))
        );
        assert_eq!(
            merged.pointer("/paths/~1api~1v1~1cart/get/tags"),
            Some(&json!(["carts"]))
        );
        assert!(merged["components"]["securitySchemes"]
            .get("bearer")
            .is_some());
        assert!(merged["info"]["description"]
            .as_str()
            .unwrap()
            .contains("inventory"));
    }
}
