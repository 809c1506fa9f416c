//! Token checks every service does itself: RS256 JWTs signed by the auth service, verified
//! against its JWKS (cached; fetched again when a token names an unknown `kid`), with the
//! algorithm pinned, expiry, issuer and audience checked. Roles are checked by the handlers
//! through [`Principal::require`].

use crate::problem::Problem;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Customer,
    Seller,
    Admin,
    /// Another Mercato service calling on its own behalf, never on a user's.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "CUSTOMER",
            Role::Seller => "SELLER",
            Role::Admin => "ADMIN",
            Role::Service => "SERVICE",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "CUSTOMER" => Ok(Role::Customer),
            "SELLER" => Ok(Role::Seller),
            "ADMIN" => Ok(Role::Admin),
            "SERVICE" => Ok(Role::Service),
            _ => Err("must be one of CUSTOMER, SELLER, ADMIN".into()),
        }
    }
}

/// The claims of a Mercato access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
}

/// The caller of a request, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// A user id, or `service:<name>` for a service.
    pub subject: String,
    pub role: Role,
    pub email: Option<String>,
}

impl Principal {
    pub fn user_id(&self) -> Option<crate::ids::UserId> {
        self.subject.parse().ok()
    }

    /// The user id, for routes only users may call.
    pub fn require_user(&self) -> Result<crate::ids::UserId, Problem> {
        self.user_id()
            .ok_or_else(|| Problem::forbidden("this route is for user accounts"))
    }

    pub fn is(&self, role: Role) -> bool {
        self.role == role
    }

    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let names: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
            Err(Problem::forbidden(format!(
                "requires role {}",
                names.join(" or ")
            )))
        }
    }
}

/// Where verification keys come from.
enum Keys {
    /// The auth service's own keys, in memory.
    Local(HashMap<String, DecodingKey>),
    /// Another service's view: the auth service's JWKS over HTTP, cached.
    Remote(Box<JwksCache>),
}

struct JwksCache {
    url: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
}

/// Unknown `kid`s trigger at most one JWKS fetch per this interval, so a flood of forged
/// tokens cannot turn into a flood of requests to the auth service.
const REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// Attempts per JWKS fetch: a GET of a small document, safe to repeat, and every request that
/// carries a new key waits on it.
const FETCH_ATTEMPTS: u32 = 3;

impl JwksCache {
    async fn fetch(&self) -> Result<JwkSet, Problem> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                self.http
                    .get(&self.url)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<JwkSet>()
                    .await
            }
            .await;
            match result {
                Ok(set) => return Ok(set),
                Err(e) if attempt < FETCH_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, url = %self.url, "fetching JWKS failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.url, "fetching JWKS failed");
                    return Err(Problem::unavailable(
                        "the signing keys could not be fetched from the auth service",
                    ));
                }
            }
        }
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, Problem> {
        if let Some(k) = self.keys.read().await.get(kid) {
            return Ok(k.clone());
        }
        let mut last = self.last_fetch.lock().await;
        // Someone may have fetched while we waited for the lock.
        if let Some(k) = self.keys.read().await.get(kid) {
            return Ok(k.clone());
        }
        if last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
            return Err(Problem::unauthorized(
                "the token was signed by an unknown key",
            ));
        }
        // Only a fetch that worked starts the interval: after a failed one (auth restarting,
        // a lost answer) the next request tries again, and meanwhile callers hear 503, not a
        // 401 that would tell a valid token it is not.
        let set = self.fetch().await?;
        *last = Some(Instant::now());
        let mut fresh = HashMap::new();
        for jwk in &set.keys {
            if let (Some(id), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) {
                fresh.insert(id, key);
            }
        }
        let found = fresh.get(kid).cloned();
        *self.keys.write().await = fresh;
        found.ok_or_else(|| Problem::unauthorized("the token was signed by an unknown key"))
    }
}

/// Verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Keys>,
    issuer: String,
    audience: String,
}

impl Verifier {
    pub fn local(keys: HashMap<String, DecodingKey>, issuer: &str, audience: &str) -> Self {
        Verifier {
            keys: Arc::new(Keys::Local(keys)),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// Verifies against the JWKS of the auth service at `auth_url`.
    pub fn remote(auth_url: &str, issuer: &str, audience: &str) -> Self {
        let cache = JwksCache {
            url: format!("{}/.well-known/jwks.json", auth_url.trim_end_matches('/')),
            http: crate::client::pooled_client(),
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
        };
        Verifier {
            keys: Arc::new(Keys::Remote(Box::new(cache))),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Problem::unauthorized("the token is malformed"))?;
        // Pinned: RS256 only. `none` does not even parse; HS256 (the public key used as an
        // HMAC secret) is refused here before any key is looked at.
        if header.alg != Algorithm::RS256 {
            return Err(Problem::unauthorized(
                "the token's algorithm is not accepted",
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| Problem::unauthorized("the token names no key"))?;
        let key = match &*self.keys {
            Keys::Local(map) => map
                .get(&kid)
                .cloned()
                .ok_or_else(|| Problem::unauthorized("the token was signed by an unknown key"))?,
            Keys::Remote(cache) => cache.key(&kid).await?,
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Problem::unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidIssuer => "the token was issued by someone else",
                ErrorKind::InvalidAudience => "the token is meant for someone else",
                ErrorKind::InvalidSignature => "the token's signature is not valid",
                _ => "the token is not valid",
            })
        })?;
        Ok(Principal {
            subject: data.claims.sub,
            role: data.claims.role,
            email: data.claims.email,
        })
    }
}

fn bearer(parts: &Parts) -> Option<Result<&str, Problem>> {
    let v = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let s = match v.to_str() {
        Ok(s) => s,
        Err(_) => {
            return Some(Err(Problem::unauthorized(
                "the Authorization header is not valid",
            )))
        }
    };
    Some(match s.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Problem::unauthorized(
            "expected Authorization: Bearer <token>",
        )),
    })
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Verifier: FromRef<S>,
{
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let token = bearer(parts)
            .ok_or_else(|| Problem::unauthorized("sign in: this route needs a Bearer token"))??;
        let verifier = Verifier::from_ref(state);
        verifier.verify(token).await
    }
}

/// The caller when a token was sent, `None` when not. A token that was sent must be valid.
#[derive(Clone, Debug)]
pub struct MaybePrincipal(pub Option<Principal>);

impl<S> FromRequestParts<S> for MaybePrincipal
where
    S: Send + Sync,
    Verifier: FromRef<S>,
{
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match bearer(parts) {
            None => Ok(MaybePrincipal(None)),
            Some(token) => Ok(MaybePrincipal(Some(
                Verifier::from_ref(state).verify(token?).await?,
            ))),
        }
    }
}

/// A service's own access token (role SERVICE) for calls to other services, fetched from the
/// auth service with the shared service secret and renewed before it expires.
pub struct ServiceTokens {
    url: String,
    service: String,
    secret: crate::config::Secret,
    http: reqwest::Client,
    cached: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

impl ServiceTokens {
    pub fn new(auth_url: &str, service: &str, secret: crate::config::Secret) -> Self {
        ServiceTokens {
            url: format!(
                "{}/api/v1/auth/service-token",
                auth_url.trim_end_matches('/')
            ),
            service: service.into(),
            secret,
            http: crate::client::pooled_client(),
            cached: Mutex::new(None),
        }
    }

    pub async fn token(&self) -> anyhow::Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some((t, renew_at)) = &*cached {
            if Instant::now() < *renew_at {
                return Ok(t.clone());
            }
        }
        let answer: TokenAnswer = self
            .http
            .post(&self.url)
            .timeout(Duration::from_secs(5))
            .json(&serde_json::json!({"service": self.service, "secret": self.secret.expose()}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        // Renew at two thirds of the lifetime, well before expiry.
        let renew_at = Instant::now() + Duration::from_secs(answer.expires_in * 2 / 3);
        *cached = Some((answer.access_token.clone(), renew_at));
        Ok(answer.access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_check() {
        assert_eq!("SELLER".parse::<Role>().unwrap(), Role::Seller);
        assert!("seller".parse::<Role>().is_err());
        let p = Principal {
            subject: "x".into(),
            role: Role::Customer,
            email: None,
        };
        assert!(p.require(&[Role::Customer]).is_ok());
        assert_eq!(
            p.require(&[Role::Admin, Role::Seller]).unwrap_err().status,
            403
        );
        assert!(p.user_id().is_none());
    }
}
