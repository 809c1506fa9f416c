//! The catalog's HTTP API under `/api/v1`, documented for `/openapi.json` as it is routed.
//!
//! Handlers stay thin: extract, check the caller's role, call one use case of `service`
//! inside the idempotency claim, answer. The use cases' errors are mapped to `Problem`s once,
//! below.

use crate::domain::{
    self, CategoryCount, CreateProduct, ListParams, NewProduct, Product, ProductPatch,
    ProductQuery, UpdateProduct,
};
use crate::{service, store};
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::Response;
use mercato_kit::auth::{Principal, Verifier};
use mercato_kit::db::Db;
use mercato_kit::events::Cause;
use mercato_kit::http::{BearerAuth, Json, Path, Query, RequestContext};
use mercato_kit::idempotency::IdempotencyKey;
use mercato_kit::ids::{Currency, ProductId, UserId};
use mercato_kit::time::to_rfc3339;
use mercato_kit::Problem;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone, FromRef)]
struct AppState {
    db: Db,
    verifier: Verifier,
}

/// The API routes with their state, and the OpenAPI document describing them.
pub(crate) fn router(db: Db, verifier: Verifier) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, update_product, deactivate_product))
        .routes(routes!(list_categories))
        .with_state(AppState { db, verifier })
        .split_for_parts()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mercato catalog",
        description = "Products, categories, prices and search."
    ),
    modifiers(&BearerAuth),
    tags((name = "catalog", description = "Products and categories"))
)]
struct ApiDoc;

impl From<service::Error> for Problem {
    fn from(e: service::Error) -> Self {
        match e {
            service::Error::NotFound(id) => Problem::not_found(format!("no product {id}")),
            service::Error::SkuTaken(sku) => Problem::conflict(
                "sku_taken",
                format!("the sku {sku} is already used by another product"),
            ),
            service::Error::Forbidden(f) => f.into(),
            service::Error::Db(e) => e.into(),
        }
    }
}

/// Refused input. A bad body is unprocessable (422); a bad query parameter or cursor is a bad
/// request (400), and says so with the code the kit's `Query` extractor uses for the same.
impl From<domain::Error> for Problem {
    fn from(e: domain::Error) -> Self {
        let errors = e.field_errors();
        match e {
            domain::Error::InvalidBody(invalid) => invalid.into(),
            domain::Error::InvalidQuery(invalid) => {
                Problem::invalid_query(invalid.to_string()).with_errors(errors)
            }
            domain::Error::InvalidCursor(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "The cursor is not valid",
            )
            .with_detail(e.to_string())
            .with_errors(errors),
        }
    }
}

impl From<domain::Forbidden> for Problem {
    fn from(f: domain::Forbidden) -> Self {
        Problem::forbidden(f.0)
    }
}

// ---------------------------------------------------------------------------------------------
// What the API answers.

/// A product.
#[derive(Serialize, ToSchema)]
struct ProductBody {
    id: ProductId,
    sku: String,
    name: String,
    description: String,
    category: String,
    /// The price in minor units of `currency`.
    price_cents: i64,
    #[schema(value_type = String, example = "USD")]
    currency: Currency,
    seller_id: UserId,
    /// False once taken off sale; such products are still served by id.
    active: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<&Product> for ProductBody {
    fn from(p: &Product) -> Self {
        ProductBody {
            id: p.id,
            sku: p.sku.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            category: p.category.clone(),
            price_cents: p.price_cents,
            currency: p.currency,
            seller_id: p.seller_id,
            active: p.active,
            created_at: to_rfc3339(p.created_at),
            updated_at: to_rfc3339(p.updated_at),
        }
    }
}

/// One page of products.
#[derive(Serialize, ToSchema)]
struct ProductPage {
    items: Vec<ProductBody>,
    /// Pass as `cursor` (with the same `sort`) for the next page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct CategoryBody {
    slug: String,
    /// Active products in the category.
    product_count: i64,
}

#[derive(Serialize, ToSchema)]
struct CategoryList {
    items: Vec<CategoryBody>,
}

impl From<CategoryCount> for CategoryBody {
    fn from(c: CategoryCount) -> Self {
        CategoryBody {
            slug: c.slug,
            product_count: c.product_count,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers.

#[utoipa::path(
    get,
    path = "/api/v1/products",
    tag = "catalog",
    params(ListParams),
    responses(
        (status = 200, description = "A page of products in the order asked", body = ProductPage),
        (status = 400, description = "A query parameter or the cursor is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_products(
    State(db): State<Db>,
    Query(params): Query<ListParams>,
) -> Result<Json<ProductPage>, Problem> {
    let query = ProductQuery::try_from(params)?;
    let page = store::list(db.reader(), &query).await?;
    Ok(Json(ProductPage {
        items: page.items.iter().map(ProductBody::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/products/{id}",
    tag = "catalog",
    params(("id" = ProductId, Path, description = "The product's id")),
    responses(
        (status = 200, description = "The product, active or not", body = ProductBody),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_product(
    State(db): State<Db>,
    Path(id): Path<ProductId>,
) -> Result<Json<ProductBody>, Problem> {
    let product = store::get(db.reader(), id)
        .await?
        .ok_or(service::Error::NotFound(id))?;
    Ok(Json(ProductBody::from(&product)))
}

#[utoipa::path(
    post,
    path = "/api/v1/products",
    tag = "catalog",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first answer instead of creating again")),
    request_body = CreateProduct,
    responses(
        (status = 201, description = "Created", body = ProductBody),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a seller or admin, or a seller naming another seller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The sku is taken (`sku_taken`), or the same Idempotency-Key is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, all of them named", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_product(
    State(db): State<Db>,
    principal: Principal,
    idem: IdempotencyKey,
    ctx: RequestContext,
    Json(input): Json<CreateProduct>,
) -> Result<Response, Problem> {
    principal.require(&domain::MANAGERS)?;
    let draft = NewProduct::try_from(input.clone())?;
    let seller = domain::seller_for_new(&principal, draft.seller_id)?;
    let mut claim = idem.claim(&db, &principal.subject, &input).await?;
    if let Some(replay) = claim.replayed() {
        return Ok(replay);
    }
    let mut tx = db.begin().await?;
    let product = service::create(&mut tx, draft, seller, &Cause::of_request(&ctx)).await?;
    claim
        .finish(tx, StatusCode::CREATED, &ProductBody::from(&product))
        .await
}

#[utoipa::path(
    put,
    path = "/api/v1/products/{id}",
    tag = "catalog",
    security(("bearer" = [])),
    params(
        ("id" = ProductId, Path, description = "The product's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first answer"),
    ),
    request_body = UpdateProduct,
    responses(
        (status = 200, description = "The product as changed", body = ProductBody),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither the owning seller nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new sku is taken (`sku_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown fields, or none at all", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_product(
    State(db): State<Db>,
    principal: Principal,
    idem: IdempotencyKey,
    ctx: RequestContext,
    Path(id): Path<ProductId>,
    Json(input): Json<UpdateProduct>,
) -> Result<Response, Problem> {
    principal.require(&domain::MANAGERS)?;
    let patch = ProductPatch::try_from(input.clone())?;
    let mut claim = idem.claim(&db, &principal.subject, &input).await?;
    if let Some(replay) = claim.replayed() {
        return Ok(replay);
    }
    let mut tx = db.begin().await?;
    let product =
        service::update(&mut tx, &principal, id, &patch, &Cause::of_request(&ctx)).await?;
    claim
        .finish(tx, StatusCode::OK, &ProductBody::from(&product))
        .await
}

#[utoipa::path(
    delete,
    path = "/api/v1/products/{id}",
    tag = "catalog",
    security(("bearer" = [])),
    params(
        ("id" = ProductId, Path, description = "The product's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first answer"),
    ),
    responses(
        (status = 200, description = "The product, now inactive; repeating is harmless", body = ProductBody),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither the owning seller nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn deactivate_product(
    State(db): State<Db>,
    principal: Principal,
    idem: IdempotencyKey,
    ctx: RequestContext,
    Path(id): Path<ProductId>,
) -> Result<Response, Problem> {
    principal.require(&domain::MANAGERS)?;
    let mut claim = idem.claim(&db, &principal.subject, &()).await?;
    if let Some(replay) = claim.replayed() {
        return Ok(replay);
    }
    let mut tx = db.begin().await?;
    let product = service::deactivate(&mut tx, &principal, id, &Cause::of_request(&ctx)).await?;
    claim
        .finish(tx, StatusCode::OK, &ProductBody::from(&product))
        .await
}

#[utoipa::path(
    get,
    path = "/api/v1/categories",
    tag = "catalog",
    responses(
        (status = 200, description = "Categories with active products, by slug", body = CategoryList),
    )
)]
async fn list_categories(State(db): State<Db>) -> Result<Json<CategoryList>, Problem> {
    let items = store::categories(db.reader()).await?;
    Ok(Json(CategoryList {
        items: items.into_iter().map(CategoryBody::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    //! The routes through the kit's full HTTP stack (context, problem layer, extractors), with
    //! tokens signed by a local key instead of the auth service.

    use super::*;
    use axum::http::header;
    use mercato_kit::auth::Role;
    use mercato_kit::http::{HttpSettings, Service};
    use mercato_kit::metrics::Metrics;
    use mercato_kit::testing::Answer;
    use serde_json::{json, Value};
    use std::collections::HashSet;
    use std::time::Duration;

    fn token(role: Role, user: UserId) -> String {
        mercato_kit::testing::token(&user.to_string(), role)
    }

    struct App {
        router: axum::Router,
        db: Db,
        _dir: tempfile::TempDir,
    }

    fn verifier() -> Verifier {
        mercato_kit::testing::verifier()
    }

    async fn app() -> App {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display());
        let db = crate::connect(&url, 2).await.unwrap();
        let (api, openapi) = router(db.clone(), verifier());
        let settings = HttpSettings {
            request_timeout: Duration::from_secs(10),
            body_limit_bytes: 64 * 1024,
            ..Default::default()
        };
        let service = Service::new(
            "catalog",
            api,
            openapi,
            Metrics::new("catalog"),
            vec![],
            &settings,
        );
        App {
            router: service.router(),
            db,
            _dir: dir,
        }
    }

    impl App {
        async fn call(
            &self,
            method: &str,
            uri: &str,
            token: Option<&str>,
            key: Option<&str>,
            body: Option<Value>,
        ) -> Answer {
            mercato_kit::testing::call(&self.router, method, uri, token, key, body).await
        }

        async fn get(&self, uri: &str) -> Answer {
            self.call("GET", uri, None, None, None).await
        }
    }

    fn lamp(sku: &str) -> Value {
        json!({"sku": sku, "name": "Desk Lamp", "category": "home", "price_cents": 2500})
    }

    fn is_problem(a: &Answer, status: u16, code: &str) -> bool {
        a.status.as_u16() == status
            && a.body["code"] == code
            && a.headers[header::CONTENT_TYPE] == "application/problem+json"
    }

    #[tokio::test]
    async fn sellers_create_and_anyone_reads() {
        let app = app().await;
        let seller = UserId::new();
        let t = token(Role::Seller, seller);
        let created = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&t),
                None,
                Some(lamp("LAMP-1")),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let p = &created.body;
        assert_eq!(p["seller_id"], seller.to_string());
        assert_eq!(
            (&p["currency"], &p["active"]),
            (&json!("USD"), &json!(true))
        );
        assert_eq!(p["description"], "");
        assert!(p["created_at"].as_str().unwrap().ends_with('Z'));
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "active",
                "category",
                "created_at",
                "currency",
                "description",
                "id",
                "name",
                "price_cents",
                "seller_id",
                "sku",
                "updated_at"
            ]
        );
        let id = p["id"].as_str().unwrap();
        let got = app.get(&format!("/api/v1/products/{id}")).await;
        assert_eq!((got.status, &got.body), (StatusCode::OK, p));

        let nobody = app
            .call("POST", "/api/v1/products", None, None, Some(lamp("LAMP-2")))
            .await;
        assert!(is_problem(&nobody, 401, "unauthorized"), "{}", nobody.body);
        let customer = token(Role::Customer, UserId::new());
        let refused = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&customer),
                None,
                Some(lamp("LAMP-2")),
            )
            .await;
        assert!(is_problem(&refused, 403, "forbidden"));
        let mut for_other = lamp("LAMP-2");
        for_other["seller_id"] = json!(UserId::new().to_string());
        let refused = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&t),
                None,
                Some(for_other.clone()),
            )
            .await;
        assert!(is_problem(&refused, 403, "forbidden"));
        let admin = token(Role::Admin, UserId::new());
        let by_admin = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&admin),
                None,
                Some(for_other.clone()),
            )
            .await;
        assert_eq!(by_admin.status, StatusCode::CREATED);
        assert_eq!(by_admin.body["seller_id"], for_other["seller_id"]);

        let dup = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&t),
                None,
                Some(lamp("LAMP-1")),
            )
            .await;
        assert!(is_problem(&dup, 409, "sku_taken"), "{}", dup.body);

        let missing = app
            .get(&format!("/api/v1/products/{}", ProductId::new()))
            .await;
        assert!(is_problem(&missing, 404, "not_found"));
        let bad = app.get("/api/v1/products/not-a-uuid").await;
        assert!(is_problem(&bad, 400, "invalid_path"));
    }

    #[tokio::test]
    async fn a_retried_create_returns_the_first_answer() {
        let app = app().await;
        let t = token(Role::Seller, UserId::new());
        let first = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&t),
                Some("k-1"),
                Some(lamp("RETRY-1")),
            )
            .await;
        let again = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&t),
                Some("k-1"),
                Some(lamp("RETRY-1")),
            )
            .await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert_eq!((again.status, &again.body), (first.status, &first.body));
        assert_eq!(again.headers["idempotency-replayed"], "true");
        let other = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&t),
                Some("k-1"),
                Some(lamp("RETRY-2")),
            )
            .await;
        assert!(is_problem(&other, 422, "idempotency_key_reused"));
        let listed = app.get("/api/v1/products").await;
        assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
        let outbox = mercato_kit::events::pending(app.db.reader(), 10)
            .await
            .unwrap();
        assert_eq!(outbox.len(), 1);
    }

    #[tokio::test]
    async fn bad_bodies_name_every_field() {
        let app = app().await;
        let t = token(Role::Seller, UserId::new());
        let post = |body: Value| app.call("POST", "/api/v1/products", Some(&t), None, Some(body));
        let a = post(json!({"sku": "x", "price_cents": 0, "currency": "usd"})).await;
        assert!(is_problem(&a, 422, "validation_failed"));
        assert_eq!(
            a.fields(),
            ["sku", "name", "category", "price_cents", "currency"]
        );
        let mut colour = lamp("COLOUR-1");
        colour["colour"] = json!("red");
        let a = post(colour).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.body["detail"].as_str().unwrap().contains("colour"));
        let a =
            post(json!({"sku": "A1", "name": "\u{0}", "category": "home", "price_cents": 1})).await;
        assert_eq!(a.fields(), ["name"]);

        let created = post(lamp("PUT-1")).await;
        let uri = format!("/api/v1/products/{}", created.body["id"].as_str().unwrap());
        let a = app.call("PUT", &uri, Some(&t), None, Some(json!({}))).await;
        assert_eq!(a.fields(), ["body"]);
        let a = app
            .call(
                "PUT",
                &uri,
                Some(&t),
                None,
                Some(json!({"seller_id": UserId::new()})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        let a = app
            .call(
                "PUT",
                &uri,
                Some(&t),
                None,
                Some(json!({"price_cents": "cheap"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.body["detail"].as_str().unwrap().contains("price_cents"));
    }

    #[tokio::test]
    async fn only_the_owner_or_an_admin_changes_a_product() {
        let app = app().await;
        let owner = token(Role::Seller, UserId::new());
        let rival = token(Role::Seller, UserId::new());
        let customer = token(Role::Customer, UserId::new());
        let admin = token(Role::Admin, UserId::new());
        let created = app
            .call(
                "POST",
                "/api/v1/products",
                Some(&owner),
                None,
                Some(lamp("OWN-1")),
            )
            .await;
        let uri = format!("/api/v1/products/{}", created.body["id"].as_str().unwrap());
        let cheaper = json!({"price_cents": 1999});
        for who in [&rival, &customer] {
            let a = app
                .call("PUT", &uri, Some(who), None, Some(cheaper.clone()))
                .await;
            assert!(is_problem(&a, 403, "forbidden"), "{}", a.body);
            let a = app.call("DELETE", &uri, Some(who), None, None).await;
            assert!(is_problem(&a, 403, "forbidden"));
        }
        let a = app
            .call("PUT", &uri, Some(&owner), None, Some(cheaper))
            .await;
        assert_eq!(
            (a.status, &a.body["price_cents"]),
            (StatusCode::OK, &json!(1999))
        );
        let a = app
            .call(
                "PUT",
                &uri,
                Some(&admin),
                None,
                Some(json!({"name": "Lamp", "description": "Warm\nlight"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body["description"], "Warm\nlight");
        let unknown = format!("/api/v1/products/{}", ProductId::new());
        let a = app
            .call(
                "PUT",
                &unknown,
                Some(&admin),
                None,
                Some(json!({"active": true})),
            )
            .await;
        assert!(is_problem(&a, 404, "not_found"));

        for key in ["del-1", "del-2"] {
            let a = app
                .call("DELETE", &uri, Some(&owner), Some(key), None)
                .await;
            assert_eq!(
                (a.status, &a.body["active"]),
                (StatusCode::OK, &json!(false))
            );
        }
        let a = app.get(&uri).await;
        assert_eq!(
            (a.status, &a.body["active"]),
            (StatusCode::OK, &json!(false))
        );
        let listed = app.get("/api/v1/products").await;
        assert_eq!(listed.body["items"], json!([]));
        let inactive = app.get("/api/v1/products?active=false").await;
        assert_eq!(inactive.body["items"][0]["sku"], "OWN-1");
        let outbox = mercato_kit::events::pending(app.db.reader(), 10)
            .await
            .unwrap();
        let types: Vec<&str> = outbox.iter().map(|(_, e)| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "product.created",
                "product.updated",
                "product.updated",
                "product.deactivated"
            ]
        );
    }

    #[tokio::test]
    async fn lists_page_filter_and_refuse_bad_parameters() {
        let app = app().await;
        crate::seed::seed_demo(&app.db).await.unwrap();
        let mut seen = HashSet::new();
        let mut uri = "/api/v1/products?limit=30&sort=price_asc".to_owned();
        let mut last_price = 0;
        loop {
            let a = app.get(&uri).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            for p in a.body["items"].as_array().unwrap() {
                assert!(seen.insert(p["id"].as_str().unwrap().to_owned()));
                let price = p["price_cents"].as_i64().unwrap();
                assert!(price >= last_price);
                last_price = price;
            }
            match a.body["next_cursor"].as_str() {
                Some(c) => uri = format!("/api/v1/products?limit=30&sort=price_asc&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 73);

        let a = app.get("/api/v1/products?q=Noise%20HEADPHONES").await;
        assert_eq!(a.body["items"][0]["sku"], "ELEC-0001");
        assert_eq!(a.body["next_cursor"], Value::Null);
        let a = app.get("/api/v1/products?category=books&limit=100").await;
        assert_eq!(a.body["items"].as_array().unwrap().len(), 9);

        for (query, field) in [
            ("limit=0", "limit"),
            ("sort=cheapest", "sort"),
            ("min_price_cents=5&max_price_cents=1", "min_price_cents"),
            ("active=maybe", "active"),
        ] {
            let a = app.get(&format!("/api/v1/products?{query}")).await;
            assert!(is_problem(&a, 400, "invalid_query"), "{query}: {}", a.body);
            assert_eq!(a.fields(), [field], "{query}");
        }
        // The whole documents, as API.md shows them: the domain names the fields, http.rs
        // words the rest.
        // A 400 naming one field, as a whole document.
        let bad_request = |code: &str, title: &str, field: &str, message: &str| {
            json!({
                "type": format!("https://mercato.dev/problems/{code}"),
                "title": title,
                "status": 400,
                "detail": format!("{field}: {message}"),
                "code": code,
                "errors": [{"field": field, "message": message}],
            })
        };
        let a = app.get("/api/v1/products?limit=0").await;
        let expected = bad_request(
            "invalid_query",
            "The query string is not valid",
            "limit",
            "must be a whole number from 1 to 100",
        );
        assert_eq!(a.body, expected);
        let a = app.get("/api/v1/products?colour=red").await;
        assert!(is_problem(&a, 400, "invalid_query"));
        let first = app.get("/api/v1/products?limit=2").await;
        let cursor = first.body["next_cursor"].as_str().unwrap();
        let a = app
            .get(&format!("/api/v1/products?sort=name_asc&cursor={cursor}"))
            .await;
        assert!(is_problem(&a, 400, "invalid_cursor"));
        let expected = bad_request(
            "invalid_cursor",
            "The cursor is not valid",
            "cursor",
            "was issued for sort=newest, not sort=name_asc; send the same sort, or start again without a cursor",
        );
        assert_eq!(a.body, expected);

        let cats = app.get("/api/v1/categories").await;
        let items = cats.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 8);
        assert_eq!(items[0], json!({"slug": "beauty", "product_count": 9}));
        let total: i64 = items
            .iter()
            .map(|c| c["product_count"].as_i64().unwrap())
            .sum();
        assert_eq!(total, 73);
    }

    #[tokio::test]
    async fn the_openapi_document_describes_every_route() {
        let app = app().await;
        let doc = app.get("/openapi.json").await.body;
        let ops = [
            ("/api/v1/products", "get"),
            ("/api/v1/products", "post"),
            ("/api/v1/products/{id}", "get"),
            ("/api/v1/products/{id}", "put"),
            ("/api/v1/products/{id}", "delete"),
            ("/api/v1/categories", "get"),
        ];
        for (path, method) in ops {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} missing");
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            let unique: HashSet<&&str> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{method} {path}: {names:?}");
        }
        let list_params = doc["paths"]["/api/v1/products"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(list_params, 9);
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        // Every `$ref` must resolve: a schema used only through a parameter is easy to forget.
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v.as_str()) {
                            ("$ref", Some(r)) => out.push(r),
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling {r}"
            );
        }
        for schema in [
            "ProductBody",
            "ProductPage",
            "CreateProduct",
            "UpdateProduct",
            "Problem",
        ] {
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "{schema} missing"
            );
        }
    }
}
