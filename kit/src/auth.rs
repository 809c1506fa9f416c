//! Token checks every service does itself: RS256 JWTs signed by the auth service, verified
//! against its JWKS (cached; fetched again when a token names an unknown `kid`), with the
//! algorithm pinned, expiry, not-before, issuer and audience checked. Roles are checked by the
//! handlers through [`Principal::require`].
//!
//! A signature says what was true when the token was issued. What changed since (a role
//! taken away, a sign-out, a new password) is in the auth service's revocation list, which
//! each verifier keeps in memory ([`Revocations`]) and refreshes every two seconds, so the
//! hot path stays a map lookup: a token whose `ver` is below its account's current token
//! version, or whose session (`sid`) was ended, is refused. If the list cannot be refreshed,
//! ADMIN and SELLER tokens are refused (503) once it is 30 s old, since their authority is
//! what a revocation most often takes away; CUSTOMER tokens, which act only on their own
//! data, are still accepted from the last list.
//!
//! A token's signature is checked once per verifier: the claims of a token that passed are
//! kept by its exact text ([`Verified`]), and the next request with the same token checks only
//! its times and the revocation list. Through jsonwebtoken 9, ring rebuilds the RSA key from
//! its modulus and exponent on every verify; that was 3–5% of an order's CPU, paid twice per
//! order (the customer's token at the order service, the service token at inventory).

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
    /// Not before: a token is refused until then (auth sets it to `iat`).
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    /// The account's token version when issued; a role change or password change raises it
    /// and so retires every older token of the account.
    #[serde(default)]
    pub ver: i64,
    /// The sign-in (refresh-token family) the token belongs to; signing out ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
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
    /// Raised each time the key set is replaced, so a token verified against a key that is
    /// no longer served is checked again instead of being taken from [`Verified`].
    generation: std::sync::atomic::AtomicU64,
}

/// The most verified tokens a verifier keeps. An entry is a few hundred bytes; a shop's
/// signed-in shoppers within a token's lifetime (15 minutes) mostly fit, and a full map is
/// emptied of what expired, or of everything, so it stays bounded whatever arrives.
const VERIFIED_MAX: usize = 4096;

/// Claims of tokens whose signature, issuer and audience were checked, by the token's text.
/// Only a token that passed gets in, so a flood of forged tokens cannot fill it. Hand-written
/// because what it needs (a bounded map read on every request, cleared wholesale) is a few
/// lines, and a caching crate would bring eviction policies nothing here uses.
#[derive(Default)]
struct Verified(parking_lot::RwLock<HashMap<Box<str>, Arc<VerifiedToken>>>);

struct VerifiedToken {
    claims: Claims,
    /// The key set's generation it was verified against.
    generation: u64,
}

impl Verified {
    fn get(&self, token: &str, generation: u64) -> Option<Arc<VerifiedToken>> {
        self.0
            .read()
            .get(token)
            .filter(|v| v.generation == generation)
            .cloned()
    }

    fn insert(
        &self,
        token: &str,
        claims: Claims,
        generation: u64,
        now_secs: i64,
    ) -> Arc<VerifiedToken> {
        let mut map = self.0.write();
        if map.len() >= VERIFIED_MAX {
            map.retain(|_, v| times_hold(&v.claims, now_secs).is_ok());
            if map.len() >= VERIFIED_MAX {
                map.clear();
            }
        }
        let entry = Arc::new(VerifiedToken { claims, generation });
        map.insert(token.into(), entry.clone());
        entry
    }

    fn len(&self) -> usize {
        self.0.read().len()
    }
}

/// Seconds of clock difference allowed between the auth service and a verifier, on `exp` and
/// `nbf` alike.
const LEEWAY_SECS: i64 = 5;

/// The time checks jsonwebtoken makes on a fresh token, made again on a remembered one: an
/// entry of [`Verified`] must not outlive its token.
fn times_hold(claims: &Claims, now_secs: i64) -> Result<(), Problem> {
    if claims.exp < now_secs - LEEWAY_SECS {
        return Err(Problem::unauthorized("the token has expired"));
    }
    if claims.nbf > now_secs + LEEWAY_SECS {
        return Err(Problem::unauthorized("the token is not valid yet"));
    }
    Ok(())
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
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        found.ok_or_else(|| Problem::unauthorized("the token was signed by an unknown key"))
    }
}

/// One entry of the auth service's revocation list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    pub user_id: String,
    /// Tokens of the account with a lower `ver` are refused.
    pub min_version: i64,
    /// A sign-in that was ended: its tokens are refused whatever their version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When it was recorded, µs since the epoch.
    pub at: i64,
}

/// A page of the revocation list: entries recorded after the asked-for time, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RevocationPage {
    pub items: Vec<Revocation>,
    /// The auth service's clock when it answered, µs.
    pub now: i64,
    /// Whether more entries follow the last one (ask again from its `at`).
    pub more: bool,
    /// How long access tokens live: entries older than that retire nothing still valid.
    pub token_ttl_secs: u64,
}

/// Where a verifier reads the revocation list from.
#[async_trait::async_trait]
pub trait RevocationSource: Send + Sync {
    /// Entries recorded at or after `since` (µs).
    async fn since(&self, since: i64) -> anyhow::Result<RevocationPage>;
}

/// The revocation list as the auth service serves it at `GET /api/v1/auth/revocations`, read
/// with this service's own SERVICE token.
pub struct RemoteRevocations {
    url: String,
    tokens: ServiceTokens,
    http: reqwest::Client,
}

impl RemoteRevocations {
    pub fn new(auth_url: &str, tokens: ServiceTokens) -> Self {
        RemoteRevocations {
            url: format!("{}/api/v1/auth/revocations", auth_url.trim_end_matches('/')),
            tokens,
            http: crate::client::pooled_client(),
        }
    }
}

#[async_trait::async_trait]
impl RevocationSource for RemoteRevocations {
    async fn since(&self, since: i64) -> anyhow::Result<RevocationPage> {
        let token = self.tokens.token().await?;
        Ok(self
            .http
            .get(&self.url)
            .query(&[("since", since)])
            .bearer_auth(token)
            .timeout(Duration::from_secs(3))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// How often the list is read again.
pub const REVOCATION_REFRESH: Duration = Duration::from_secs(2);
/// How old the list may be before privileged tokens are refused.
const REVOCATION_MAX_AGE: Duration = Duration::from_secs(30);
/// Reads overlap by this much: an entry committed late (PostgreSQL transactions finish out of
/// order) is still seen. Applying an entry twice changes nothing.
const REVOCATION_OVERLAP_US: i64 = 10_000_000;

#[derive(Default)]
struct RevocationState {
    /// Account → (lowest version still valid, when recorded).
    min_version: HashMap<String, (i64, i64)>,
    /// Ended sessions → when recorded.
    ended: HashMap<String, i64>,
    /// Where the next read starts, µs on the auth service's clock.
    cursor: i64,
    token_ttl_us: i64,
}

/// A verifier's copy of the revocation list (see the module header).
pub struct Revocations {
    source: Box<dyn RevocationSource>,
    state: parking_lot::RwLock<RevocationState>,
    /// When the last read that worked began, and when the last read was tried.
    times: parking_lot::Mutex<(Option<Instant>, Option<Instant>)>,
    /// One read at a time.
    reading: Mutex<()>,
}

impl Revocations {
    pub fn new(source: impl RevocationSource + 'static) -> Self {
        Revocations {
            source: Box::new(source),
            state: parking_lot::RwLock::new(RevocationState::default()),
            times: parking_lot::Mutex::new((None, None)),
            reading: Mutex::new(()),
        }
    }

    /// Reads what was recorded since the last read, and forgets what no valid token can be
    /// affected by any more.
    pub async fn sync(&self) -> anyhow::Result<()> {
        let _one = self.reading.lock().await;
        self.read().await
    }

    async fn read(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.times.lock().1 = Some(started);
        loop {
            let since = self.state.read().cursor;
            let page = self.source.since(since).await?;
            let mut s = self.state.write();
            s.token_ttl_us = page.token_ttl_secs as i64 * 1_000_000;
            for r in &page.items {
                match &r.session_id {
                    Some(sid) => {
                        s.ended.insert(sid.clone(), r.at);
                    }
                    None => {
                        let e = s.min_version.entry(r.user_id.clone()).or_insert((0, 0));
                        *e = (e.0.max(r.min_version), e.1.max(r.at));
                    }
                }
            }
            // Older than a token lives (plus the overlap): nothing it retires is still valid.
            let horizon = page.now - s.token_ttl_us - REVOCATION_OVERLAP_US;
            s.min_version.retain(|_, (_, at)| *at >= horizon);
            s.ended.retain(|_, at| *at >= horizon);
            match page.items.last() {
                Some(last) if page.more => s.cursor = last.at,
                _ => {
                    s.cursor = page.now - REVOCATION_OVERLAP_US;
                    break;
                }
            }
        }
        self.times.lock().0 = Some(started);
        Ok(())
    }

    /// Keeps the list fresh until `stop`.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.sync().await {
                Ok(()) => {
                    if failing_since.take().is_some() {
                        tracing::info!("the revocation list is fresh again");
                    }
                }
                Err(e) => {
                    // Said once when it starts failing and every minute after, not every 2 s.
                    let say = failing_since.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                    if say {
                        tracing::warn!(error = %e, "the revocation list could not be read from the auth service");
                        failing_since = Some(Instant::now());
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REVOCATION_REFRESH) => {}
            }
        }
    }

    /// Whether the list was read less than [`REVOCATION_MAX_AGE`] ago.
    fn fresh(&self) -> bool {
        let (synced, _) = *self.times.lock();
        synced.is_some_and(|t| t.elapsed() < REVOCATION_MAX_AGE)
    }

    /// Refuses a token that was revoked; for a privileged one, also when the list is too old
    /// to tell (after trying to read it once more).
    async fn check(&self, claims: &Claims) -> Result<(), Problem> {
        if claims.role == Role::Service {
            return Ok(());
        }
        let privileged = matches!(claims.role, Role::Admin | Role::Seller);
        if privileged && !self.fresh() {
            // A read may be under way (the first one, at start): wait for it, then try one
            // more unless one was just tried, so an unreachable auth service is not asked
            // once per request.
            let _one = self.reading.lock().await;
            let (_, tried) = *self.times.lock();
            if !self.fresh() && tried.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                if let Err(e) = self.read().await {
                    tracing::warn!(error = %e, "the revocation list could not be read for a privileged token");
                }
            }
            if !self.fresh() {
                return Err(Problem::unavailable(
                    "whether this token is still valid cannot be checked now (the auth service's revocation list is unavailable)",
                )
                .with_retry_after(2));
            }
        }
        let s = self.state.read();
        let retired = s
            .min_version
            .get(&claims.sub)
            .is_some_and(|(min, _)| claims.ver < *min);
        let ended = claims
            .sid
            .as_ref()
            .is_some_and(|sid| s.ended.contains_key(sid));
        if retired || ended {
            return Err(Problem::unauthorized(if ended {
                "the token's sign-in was ended; sign in again"
            } else {
                "the token was issued before the account's role or password changed; sign in again"
            }));
        }
        Ok(())
    }
}

/// Verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Keys>,
    issuer: String,
    audience: String,
    revocations: Option<Arc<Revocations>>,
    verified: Arc<Verified>,
}

impl Verifier {
    pub fn local(keys: HashMap<String, DecodingKey>, issuer: &str, audience: &str) -> Self {
        Verifier {
            keys: Arc::new(Keys::Local(keys)),
            issuer: issuer.into(),
            audience: audience.into(),
            revocations: None,
            verified: Default::default(),
        }
    }

    /// Also refuses revoked tokens, as the list read from `revocations` says.
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// The revocation list this verifier consults, for the task that keeps it fresh.
    pub fn revocations(&self) -> Option<Arc<Revocations>> {
        self.revocations.clone()
    }

    /// A service's verifier: keys from the auth service's JWKS, revocations from its list
    /// (read with `secret`'s SERVICE token as `service`). Without a secret no list can be
    /// read: tokens are then trusted until they expire, and that is said at start.
    pub fn for_service(
        auth_url: &str,
        config: &crate::config::CommonConfig,
        service: &str,
    ) -> Self {
        let v = Verifier::remote(auth_url, &config.jwt_issuer, &config.jwt_audience);
        match &config.service_secret {
            Some(secret) => {
                let tokens = ServiceTokens::new(auth_url, service, secret.clone());
                v.with_revocations(Arc::new(Revocations::new(RemoteRevocations::new(
                    auth_url, tokens,
                ))))
            }
            None => {
                tracing::warn!(
                    service,
                    "no MERCATO_SERVICE_SECRET: revoked tokens are accepted until they expire"
                );
                v
            }
        }
    }

    /// Verifies against the JWKS of the auth service at `auth_url`.
    pub fn remote(auth_url: &str, issuer: &str, audience: &str) -> Self {
        let cache = JwksCache {
            url: format!("{}/.well-known/jwks.json", auth_url.trim_end_matches('/')),
            http: crate::client::pooled_client(),
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            generation: Default::default(),
        };
        Verifier {
            keys: Arc::new(Keys::Remote(Box::new(cache))),
            issuer: issuer.into(),
            audience: audience.into(),
            revocations: None,
            verified: Default::default(),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, Problem> {
        let now_secs = crate::time::now_us() / 1_000_000;
        let generation = self.key_generation();
        let claims = match self.verified.get(token, generation) {
            Some(known) => {
                times_hold(&known.claims, now_secs)?;
                known
            }
            None => {
                let claims = self.check_signature(token).await?;
                self.verified.insert(token, claims, generation, now_secs)
            }
        };
        let claims = &claims.claims;
        if let Some(r) = &self.revocations {
            r.check(claims).await?;
        }
        Ok(Principal {
            subject: claims.sub.clone(),
            role: claims.role,
            email: claims.email.clone(),
        })
    }

    fn key_generation(&self) -> u64 {
        match &*self.keys {
            Keys::Local(_) => 0,
            Keys::Remote(cache) => cache.generation.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// How many verified tokens this verifier remembers (for tests).
    pub fn remembered(&self) -> usize {
        self.verified.len()
    }

    /// The full check of a token not seen before: algorithm, key, signature, times, issuer
    /// and audience.
    async fn check_signature(&self, token: &str) -> Result<Claims, Problem> {
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
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY_SECS as u64;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Problem::unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidIssuer => "the token was issued by someone else",
                ErrorKind::InvalidAudience => "the token is meant for someone else",
                ErrorKind::InvalidSignature => "the token's signature is not valid",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                _ => "the token is not valid",
            })
        })?;
        Ok(data.claims)
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

    /// A revocation list that answers what it is given, or fails (`None`).
    struct Listed(parking_lot::Mutex<Option<Vec<Revocation>>>);

    #[async_trait::async_trait]
    impl RevocationSource for Arc<Listed> {
        async fn since(&self, since: i64) -> anyhow::Result<RevocationPage> {
            let items = self.0.lock().clone();
            let items = items.ok_or_else(|| anyhow::anyhow!("auth is down"))?;
            Ok(RevocationPage {
                items: items.into_iter().filter(|r| r.at >= since).collect(),
                now: crate::time::now_us(),
                more: false,
                token_ttl_secs: 900,
            })
        }
    }

    fn claims(sub: &str, role: Role, ver: i64, sid: Option<&str>) -> Claims {
        Claims {
            sub: sub.into(),
            role,
            email: None,
            iss: "i".into(),
            aud: "a".into(),
            exp: 0,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            ver,
            sid: sid.map(Into::into),
        }
    }

    #[tokio::test]
    async fn revoked_versions_and_sessions_are_refused_and_a_stale_list_stops_privilege() {
        let now = crate::time::now_us();
        let entries = vec![
            Revocation {
                user_id: "demoted".into(),
                min_version: 2,
                session_id: None,
                at: now,
            },
            Revocation {
                user_id: "left".into(),
                min_version: 0,
                session_id: Some("s-1".into()),
                at: now,
            },
        ];
        let source = Arc::new(Listed(parking_lot::Mutex::new(Some(entries))));
        let r = Revocations::new(source.clone());
        // Never read yet: a privileged token makes it read the list first.
        assert!(r
            .check(&claims("demoted", Role::Admin, 2, None))
            .await
            .is_ok());
        assert_eq!(
            r.check(&claims("demoted", Role::Admin, 1, None))
                .await
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            r.check(&claims("left", Role::Customer, 0, Some("s-1")))
                .await
                .unwrap_err()
                .status,
            401
        );
        assert!(r
            .check(&claims("left", Role::Customer, 0, Some("s-2")))
            .await
            .is_ok());
        assert!(r
            .check(&claims("service:x", Role::Service, 0, None))
            .await
            .is_ok());
        // The list is old and auth cannot be read: privileged tokens wait, customers do not.
        *source.0.lock() = None;
        r.times.lock().0 = Some(Instant::now() - REVOCATION_MAX_AGE);
        r.times.lock().1 = Some(Instant::now() - Duration::from_secs(5));
        assert_eq!(
            r.check(&claims("someone", Role::Seller, 0, None))
                .await
                .unwrap_err()
                .status,
            503
        );
        assert!(r
            .check(&claims("someone", Role::Customer, 0, None))
            .await
            .is_ok());
        assert_eq!(
            r.check(&claims("demoted", Role::Customer, 1, None))
                .await
                .unwrap_err()
                .status,
            401,
            "what the last list said still holds"
        );
    }

    #[test]
    fn a_remembered_token_is_held_to_its_times_as_a_fresh_one_is() {
        let mut c = claims("u", Role::Customer, 0, None);
        c.exp = 1_000;
        c.nbf = 900;
        assert!(times_hold(&c, 950).is_ok());
        assert!(
            times_hold(&c, 1_000 + LEEWAY_SECS).is_ok(),
            "within the leeway"
        );
        let late = times_hold(&c, 1_001 + LEEWAY_SECS).unwrap_err();
        assert_eq!(
            (late.status, late.detail.as_deref()),
            (401, Some("the token has expired"))
        );
        assert!(times_hold(&c, 900 - LEEWAY_SECS).is_ok());
        let early = times_hold(&c, 899 - LEEWAY_SECS).unwrap_err();
        assert_eq!(early.status, 401);
    }

    #[test]
    fn the_verified_map_stays_bounded_and_keeps_live_entries_over_expired_ones() {
        let v = Verified::default();
        let mut live = claims("u", Role::Customer, 0, None);
        live.exp = 10_000;
        let mut dead = live.clone();
        dead.exp = 10;
        for i in 0..VERIFIED_MAX - 1 {
            v.insert(&format!("dead-{i}"), dead.clone(), 0, 100);
        }
        v.insert("live", live.clone(), 0, 100);
        assert_eq!(v.len(), VERIFIED_MAX);
        v.insert("one-more", live, 0, 100);
        assert_eq!(v.len(), 2, "the expired entries made room");
        assert!(v.get("live", 0).is_some());
        assert!(
            v.get("live", 1).is_none(),
            "another key set's entry is not used"
        );
    }

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn a_token_is_checked_once_and_only_its_exact_text_is_remembered() {
        let now = crate::time::now_us();
        let source = Arc::new(Listed(parking_lot::Mutex::new(Some(vec![]))));
        let revocations = Arc::new(Revocations::new(source.clone()));
        let verifier = crate::testing::verifier().with_revocations(revocations.clone());
        let token = crate::testing::token("user-1", Role::Customer);
        assert_eq!(verifier.verify(&token).await.unwrap().subject, "user-1");
        assert_eq!(verifier.verify(&token).await.unwrap().subject, "user-1");
        assert_eq!(verifier.remembered(), 1);

        // The same signature over another payload: not a hit, and refused.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut payload: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1])
                .unwrap(),
        )
        .unwrap();
        payload["role"] = "ADMIN".into();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload.to_string(),
        );
        let forged = parts.join(".");
        let refused = verifier.verify(&forged).await.unwrap_err();
        assert_eq!(
            (refused.status, refused.detail.as_deref()),
            (401, Some("the token's signature is not valid"))
        );
        assert_eq!(
            verifier.remembered(),
            1,
            "a refused token is not remembered"
        );

        // A remembered token is still held to the revocation list.
        *source.0.lock() = Some(vec![Revocation {
            user_id: "user-1".into(),
            min_version: 1,
            session_id: None,
            at: now,
        }]);
        revocations.sync().await.unwrap();
        assert_eq!(verifier.verify(&token).await.unwrap_err().status, 401);
    }

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
