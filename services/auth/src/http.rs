//! The auth service's routes: extract, call the use case, answer. Rules live in `service` and
//! `domain`.

use crate::keys::Jwks;
use crate::service::{self, Auth, ServiceToken, Tokens};
use crate::store::User;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mercato_kit::auth::{Principal, RevocationPage, Role, Verifier};
use mercato_kit::http::BearerAuth;
use mercato_kit::http::{Json, Path, Query, RequestContext};
use mercato_kit::idempotency::IdempotencyKey;
use mercato_kit::ids::UserId;
use mercato_kit::Problem;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub auth: Arc<Auth>,
    pub verifier: Verifier,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Mercato auth service", description = "Accounts, sign-in, tokens and roles."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The one place the auth use cases' errors become problem documents.
impl From<service::Error> for Problem {
    fn from(e: service::Error) -> Self {
        use service::Error as E;
        match e {
            E::Invalid(invalid) => invalid.into(),
            E::InvalidCredentials => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "Wrong email or password",
            ),
            E::Throttled {
                detail,
                retry_after_secs,
            } => Problem::too_many_requests(detail, retry_after_secs),
            E::EmailTaken => Problem::conflict("email_taken", e.to_string()),
            E::Unauthorized(detail) => Problem::unauthorized(detail),
            E::Forbidden(detail) => Problem::forbidden(detail),
            E::NotFound(what) => Problem::not_found(what),
            E::Unavailable(detail) => Problem::unavailable(detail),
            E::Db(e) => e.into(),
            E::Internal(e) => e.into(),
        }
    }
}

pub fn router(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, update_me))
        .routes(routes!(service_token))
        .routes(routes!(revocations))
        .routes(routes!(list_users))
        .routes(routes!(get_user, change_role));
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api)
        .routes(routes!(jwks))
        .with_state(state)
        .split_for_parts();
    (api, doc)
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterInput {
    email: String,
    password: String,
    name: String,
}

/// Creates a customer account.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterInput,
    responses((status = 201, body = User), (status = 409, description = "email taken", body = Problem),
              (status = 422, description = "weak password or bad email", body = Problem)))]
async fn register(
    State(s): State<AppState>,
    ctx: RequestContext,
    key: IdempotencyKey,
    Json(input): Json<RegisterInput>,
) -> Result<Response, Problem> {
    s.auth.registration_allowed(ctx.client_ip)?;
    // Never store the password in the idempotency record's fingerprint input in clear: hash it.
    let fp_input = (&input.email, &input.name, sha_hex(&input.password));
    let mut claim = key.claim(&s.auth.db, "anonymous", &fp_input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let (email, name, hash) = s
        .auth
        .prepare_registration(&input.email, &input.password, &input.name)
        .await?;
    let mut tx = s.auth.db.begin().await?;
    let user = match s
        .auth
        .insert_user(&mut tx, UserId::new(), &email, &name, &hash, Role::Customer)
        .await
    {
        Ok(user) => user,
        Err(e) => {
            if matches!(e, service::Error::EmailTaken) {
                s.auth.registration_refused(ctx.client_ip);
            }
            return Err(e.into());
        }
    };
    claim.finish(tx, StatusCode::CREATED, &user).await
}

fn sha_hex(s: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(s.as_bytes()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    email: String,
    password: String,
}

/// Signs in; failures are throttled per account and per client address.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginInput,
    responses((status = 200, body = Tokens), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn login(
    State(s): State<AppState>,
    ctx: RequestContext,
    Json(input): Json<LoginInput>,
) -> Result<Json<Tokens>, Problem> {
    if input.email.len() > 254 || input.password.len() > 1024 {
        return Err(service::Error::InvalidCredentials.into());
    }
    Ok(Json(
        s.auth
            .login(&input.email, &input.password, ctx.client_ip)
            .await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshInput {
    refresh_token: String,
}

/// Exchanges a refresh token for new tokens. A token works once: presenting a spent one ends
/// every session of that sign-in.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshInput,
    responses((status = 200, body = Tokens), (status = 401, body = Problem)))]
async fn refresh(
    State(s): State<AppState>,
    Json(input): Json<RefreshInput>,
) -> Result<Json<Tokens>, Problem> {
    if input.refresh_token.len() > 512 {
        return Err(Problem::unauthorized("the refresh token is not valid"));
    }
    Ok(Json(s.auth.refresh(&input.refresh_token).await?))
}

/// Ends the sign-in the refresh token belongs to.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = RefreshInput, responses((status = 204)))]
async fn logout(
    State(s): State<AppState>,
    Json(input): Json<RefreshInput>,
) -> Result<StatusCode, Problem> {
    if input.refresh_token.len() <= 512 {
        s.auth.logout(&input.refresh_token).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own profile.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = Problem)))]
async fn me(State(s): State<AppState>, p: Principal) -> Result<Json<User>, Problem> {
    Ok(Json(s.auth.me(&p).await?))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    name: Option<String>,
    password: Option<String>,
    current_password: Option<String>,
}

/// Changes the caller's name or password (the current password is required for the latter,
/// and every other session ends).
#[utoipa::path(patch, path = "/auth/me", tag = "auth", security(("bearer" = [])), request_body = ProfileInput,
    responses((status = 200, body = User), (status = 422, body = Problem)))]
async fn update_me(
    State(s): State<AppState>,
    p: Principal,
    key: IdempotencyKey,
    Json(input): Json<ProfileInput>,
) -> Result<Response, Problem> {
    let fp_input = (
        &input.name,
        input.password.as_deref().map(sha_hex),
        input.current_password.as_deref().map(sha_hex),
    );
    let mut claim = key.claim(&s.auth.db, &p.subject, &fp_input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let (id, name, hash) = s
        .auth
        .prepare_profile_change(
            &p,
            input.name.as_deref(),
            input.password.as_deref(),
            input.current_password.as_deref(),
        )
        .await?;
    let mut tx = s.auth.db.begin().await?;
    let user = s
        .auth
        .apply_profile_change(&mut tx, id, name.as_deref(), hash.as_deref())
        .await?;
    let answer = claim.finish(tx, StatusCode::OK, &user).await?;
    if hash.is_some() {
        s.auth.revoked().await;
    }
    Ok(answer)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenInput {
    service: String,
    secret: String,
}

/// A token for another Mercato service (role SERVICE), given the shared service secret.
#[utoipa::path(post, path = "/auth/service-token", tag = "auth", request_body = ServiceTokenInput,
    responses((status = 200, body = ServiceToken), (status = 401, body = Problem)))]
async fn service_token(
    State(s): State<AppState>,
    Json(input): Json<ServiceTokenInput>,
) -> Result<Json<ServiceToken>, Problem> {
    Ok(Json(
        s.auth.service_token(&input.service, &input.secret).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    role: Option<String>,
    /// Only accounts whose email or name contains this (any case), at most 100 characters.
    q: Option<String>,
    /// 1 to 100, default 50.
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserPage {
    items: Vec<User>,
    next_cursor: Option<String>,
}

/// Every account, oldest first (ADMIN).
#[utoipa::path(get, path = "/admin/users", tag = "admin", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = UserPage), (status = 403, body = Problem)))]
async fn list_users(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<ListParams>,
) -> Result<Json<UserPage>, Problem> {
    p.require(&[Role::Admin])?;
    let mut errors = mercato_kit::validate::Errors::new();
    let role = q
        .role
        .as_deref()
        .and_then(|r| errors.take("role", r.parse::<Role>()));
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        errors.add("limit", "must be from 1 to 100");
    }
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 100) {
        errors.add("q", "must be at most 100 characters");
    }
    let after = q.cursor.as_deref().and_then(|c| {
        errors.take(
            "cursor",
            c.parse::<UserId>()
                .map_err(|_| "is not a cursor from this list".into()),
        )
    });
    errors.finish()?;
    let mut items = s.auth.list_users(role, search, after, limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|u| u.id.to_string())
    } else {
        None
    };
    Ok(Json(UserPage { items, next_cursor }))
}

/// One account (ADMIN).
#[utoipa::path(get, path = "/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = User), (status = 404, body = Problem)))]
async fn get_user(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<UserId>,
) -> Result<Json<User>, Problem> {
    p.require(&[Role::Admin])?;
    crate::store::user_by_id(s.auth.db.reader(), id)
        .await?
        .map(|u| Json(u.user))
        .ok_or_else(|| Problem::not_found(format!("no user {id}")))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    /// CUSTOMER, SELLER or ADMIN.
    role: String,
}

/// Changes an account's role (ADMIN; not its own).
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "admin", security(("bearer" = [])), request_body = RoleInput,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = User), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn change_role(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<UserId>,
    key: IdempotencyKey,
    Json(input): Json<RoleInput>,
) -> Result<Response, Problem> {
    p.require(&[Role::Admin])?;
    let role = input
        .role
        .parse::<Role>()
        .ok()
        .filter(|r| *r != Role::Service)
        .ok_or_else(|| Problem::field("role", "must be one of CUSTOMER, SELLER, ADMIN"))?;
    let mut claim = key.claim(&s.auth.db, &p.subject, &input).await?;
    if let Some(r) = claim.replayed() {
        return Ok(r);
    }
    let mut tx = s.auth.db.begin().await?;
    let user = s.auth.change_role(&mut tx, &p, id, role).await?;
    let answer = claim.finish(tx, StatusCode::OK, &user).await?;
    s.auth.revoked().await;
    Ok(answer)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RevocationParams {
    /// Entries recorded at or after this time (µs since the epoch); 0 for all that matter.
    since: Option<i64>,
}

/// The revocation list: what retired access tokens before they expire (role and password
/// changes, sign-outs) within the last access-token lifetime, oldest first. Every service's
/// verifier reads it every two seconds (SERVICE, ADMIN).
#[utoipa::path(get, path = "/auth/revocations", tag = "auth", security(("bearer" = [])), params(RevocationParams),
    responses((status = 200, body = RevocationPage), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn revocations(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<RevocationParams>,
) -> Result<Json<RevocationPage>, Problem> {
    p.require(&[Role::Service, Role::Admin])?;
    Ok(Json(s.auth.revocations_since(q.since.unwrap_or(0)).await?))
}

/// The public keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, body = Jwks)))]
async fn jwks(State(s): State<AppState>) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(s.auth.key.jwks()),
    )
        .into_response()
}
