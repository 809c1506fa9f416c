//! The auth use cases: register, log in, rotate refresh tokens, change profiles and roles,
//! issue service tokens. Handlers call these; they know nothing of HTTP: they fail with
//! [`Error`], which `http` turns into problem documents in one place.

use crate::domain::{self, Email, RefreshDecision, Throttle, ThrottleLimits};
use crate::keys::SigningKey;
use crate::store::{self, User, UserWithHash};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mercato_kit::auth::{Claims, Principal, Revocation, RevocationPage, Revocations, Role};
use mercato_kit::config::Secret;
use mercato_kit::db::{is_unique_violation, Db, Tx};
use mercato_kit::ids::UserId;
use mercato_kit::time::now_us;
use mercato_kit::validate::Invalid;
use parking_lot::Mutex;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

#[derive(Clone, Debug)]
pub struct Settings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub login_window: Duration,
    pub max_failures_per_account: usize,
    pub max_failures_per_address: usize,
    pub max_login_delay: Duration,
    pub service_secret: Option<Secret>,
    pub argon2_memory_kib: u32,
}

#[derive(Serialize, ToSchema)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

pub struct Auth {
    pub db: Db,
    pub key: SigningKey,
    pub settings: Settings,
    /// This replica's copy of the revocation list, read again right after a change so the
    /// change holds here at once (other services read it within seconds).
    pub revocations: Arc<Revocations>,
    throttle: Mutex<Throttle>,
    /// A real hash to verify against when the email is unknown, so a wrong email takes as
    /// long as a wrong password and timing does not reveal which accounts exist.
    dummy_hash: String,
}

/// What the auth use cases can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad fields, every one named.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// Sign-in with an unknown email or a wrong password; which one is not said.
    #[error("wrong email or password")]
    InvalidCredentials,
    /// Too many failures from this account or address; try again after `retry_after_secs`.
    #[error("{detail}")]
    Throttled {
        detail: &'static str,
        retry_after_secs: u64,
    },
    #[error("an account with this email already exists")]
    EmailTaken,
    /// A token or secret that does not let the caller in; says why.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller is known but may not do this; says why.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A feature this deployment has not configured.
    #[error("{0}")]
    Unavailable(&'static str),
    #[error(transparent)]
    Db(#[from] mercato_kit::db::Error),
    /// Hashing or signing failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn token_hash(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

impl Auth {
    pub fn new(db: Db, key: SigningKey, settings: Settings) -> anyhow::Result<Arc<Auth>> {
        let limits = ThrottleLimits {
            window: settings.login_window,
            per_account_address: settings.max_failures_per_account,
            per_address: settings.max_failures_per_address,
            max_delay: settings.max_login_delay,
        };
        let revocations = Arc::new(Revocations::new(StoredRevocations {
            db: db.clone(),
            token_ttl: settings.access_ttl,
        }));
        let mut auth = Auth {
            db,
            key,
            settings,
            revocations,
            throttle: Mutex::new(Throttle::new(limits)),
            dummy_hash: String::new(),
        };
        auth.dummy_hash = auth.hash_now("not-a-real-password-0")?;
        Ok(Arc::new(auth))
    }

    fn argon(&self) -> Argon2<'static> {
        let params =
            argon2::Params::new(self.settings.argon2_memory_kib, 2, 1, None).unwrap_or_default();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    }

    fn hash_now(&self, password: &str) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut rand::thread_rng());
        Ok(self
            .argon()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string())
    }

    /// Hashes off the async threads: argon2id is deliberately slow.
    async fn hash(self: &Arc<Self>, password: String) -> Result<String, Error> {
        let me = self.clone();
        let hashed = tokio::task::spawn_blocking(move || me.hash_now(&password))
            .await
            .map_err(anyhow::Error::from)??;
        Ok(hashed)
    }

    async fn verify(self: &Arc<Self>, password: String, hash: String) -> bool {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| me.argon().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false)
    }

    /// An access token for `subject`. `version` and `session` tie it to the account's token
    /// version and to its sign-in, so either can retire it early (service tokens have
    /// neither).
    pub fn access_token(
        &self,
        subject: &str,
        role: Role,
        email: Option<&str>,
        version: i64,
        session: Option<&str>,
    ) -> Result<String, Error> {
        let now = now_us() / 1_000_000;
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            email: email.map(str::to_owned),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.settings.access_ttl.as_secs() as i64,
            jti: uuid::Uuid::now_v7().to_string(),
            ver: version,
            sid: session.map(str::to_owned),
        };
        Ok(self.key.sign(&claims)?)
    }

    /// Reads the revocation list again after a change was committed, so it holds on this
    /// replica at once. A failed read is caught up by the periodic one.
    pub async fn revoked(&self) {
        if let Err(e) = self.revocations.sync().await {
            tracing::warn!(error = %e, "re-reading the revocation list failed");
        }
    }

    /// The revocation list from `since` (µs), as every verifier reads it.
    pub async fn revocations_since(&self, since: i64) -> Result<RevocationPage, Error> {
        Ok(read_revocations(&self.db, self.settings.access_ttl, since).await?)
    }

    /// Issues an access token and the next refresh token of `family`.
    async fn issue(&self, tx: &mut Tx, user: &UserWithHash, family: &str) -> Result<Tokens, Error> {
        let refresh = random_token();
        let expires = now_us() + self.settings.refresh_ttl.as_micros() as i64;
        let u = &user.user;
        store::insert_refresh(tx, &token_hash(&refresh), family, u.id, expires).await?;
        Ok(Tokens {
            access_token: self.access_token(
                &u.id.to_string(),
                u.role,
                Some(&u.email),
                user.token_version,
                Some(family),
            )?,
            refresh_token: refresh,
            token_type: "Bearer",
            expires_in: self.settings.access_ttl.as_secs(),
        })
    }

    /// Validates a registration and hashes its password; the insert happens in the caller's
    /// transaction so it shares it with the idempotency record.
    #[expect(
        clippy::expect_used,
        reason = "errors.check() has refused a missing email or name"
    )]
    pub async fn prepare_registration(
        self: &Arc<Self>,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<(Email, String, String), Error> {
        let mut errors = mercato_kit::validate::Errors::new();
        let email = errors.take("email", Email::try_from(email));
        let name = errors.take("name", mercato_kit::validate::line(name, 1, 100));
        if let Err(m) = domain::check_password(password, email.as_ref()) {
            errors.add("password", m);
        }
        errors.check()?;
        let (email, name) = (email.expect("checked"), name.expect("checked"));
        let hash = self.hash(password.to_owned()).await?;
        Ok((email, name, hash))
    }

    /// Registration answers 409 for an email that has an account (the contract says so, and
    /// without a confirmation mail a vaguer answer would leave people believing they had
    /// registered). So that this cannot be used to list accounts any faster than sign-in can,
    /// an address that found emails taken spends the same per-address budget as failed
    /// sign-ins, and is refused (429) once it is spent. Both paths hash a password, so their
    /// timing does not tell either.
    pub fn registration_allowed(&self, client: Option<IpAddr>) -> Result<(), Error> {
        let addr = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        let blocked = self.throttle.lock().address_blocked(&addr, Instant::now());
        match blocked {
            Some(wait) => Err(Error::Throttled {
                detail: "too many failed sign-ins or registrations from this address; wait before trying again",
                retry_after_secs: wait,
            }),
            None => Ok(()),
        }
    }

    /// Counts a registration that found its email taken against the address.
    pub fn registration_refused(&self, client: Option<IpAddr>) {
        let addr = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        self.throttle.lock().fail_address(&addr, Instant::now());
    }

    pub async fn insert_user(
        &self,
        tx: &mut Tx,
        id: UserId,
        email: &Email,
        name: &str,
        hash: &str,
        role: Role,
    ) -> Result<User, Error> {
        store::insert_user(tx, id, email.as_str(), name, hash, role)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::EmailTaken
                } else {
                    e.into()
                }
            })
    }

    pub async fn login(
        self: &Arc<Self>,
        email: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Tokens, Error> {
        let normalized = email.trim().to_lowercase();
        // Without a known address (a test calling the router directly) every such caller
        // shares one.
        let addr = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        let blocked = self
            .throttle
            .lock()
            .blocked(&normalized, &addr, Instant::now());
        if let Some(wait) = blocked {
            return Err(Error::Throttled {
                detail: "too many failed sign-ins; wait before trying again",
                retry_after_secs: wait,
            });
        }
        let found = store::user_by_email(self.db.reader(), &normalized).await?;
        let hash = found
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self.verify(password.to_owned(), hash).await && found.is_some();
        let Some(found) = found.filter(|_| ok) else {
            self.throttle
                .lock()
                .fail(&normalized, &addr, Instant::now());
            return Err(Error::InvalidCredentials);
        };
        self.throttle
            .lock()
            .succeed(&normalized, &addr, Instant::now());
        let mut tx = self.db.begin().await?;
        let tokens = self
            .issue(&mut tx, &found, &uuid::Uuid::now_v7().to_string())
            .await?;
        tx.commit().await?;
        Ok(tokens)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, Error> {
        let hash = token_hash(refresh_token);
        let mut tx = self.db.begin().await?;
        let Some(stored) = store::refresh_by_hash(&mut tx, &hash).await? else {
            return Err(Error::Unauthorized("the refresh token is not valid"));
        };
        let decision = domain::refresh_decision(&stored.state, now_us());
        let spent =
            decision == RefreshDecision::Rotate && store::spend_refresh(&mut tx, &hash).await?;
        if !spent {
            let detail = match decision {
                RefreshDecision::Expired => "the refresh token has expired; sign in again",
                RefreshDecision::Revoked => "the refresh token was revoked; sign in again",
                _ => {
                    // A spent token came back: it was copied. End every session of this login,
                    // its access tokens included.
                    store::revoke_family(&mut tx, &stored.family_id).await?;
                    store::end_session(&mut tx, stored.user_id, &stored.family_id).await?;
                    tx.commit().await?;
                    self.revoked().await;
                    tracing::warn!(user = %stored.user_id, "refresh token reuse: login family revoked");
                    return Err(Error::Unauthorized("the refresh token was already used; every session of this sign-in was ended"));
                }
            };
            return Err(Error::Unauthorized(detail));
        }
        let user = store::user_by_id(&mut *tx, stored.user_id)
            .await?
            .ok_or(Error::Unauthorized("the account no longer exists"))?;
        let tokens = self.issue(&mut tx, &user, &stored.family_id).await?;
        tx.commit().await?;
        Ok(tokens)
    }

    /// Ends the sign-in the refresh token belongs to: its refresh tokens, and the access
    /// tokens issued in it.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        let Some(stored) = store::refresh_by_hash(&mut tx, &token_hash(refresh_token)).await?
        else {
            return Ok(());
        };
        store::revoke_family(&mut tx, &stored.family_id).await?;
        store::end_session(&mut tx, stored.user_id, &stored.family_id).await?;
        tx.commit().await?;
        self.revoked().await;
        Ok(())
    }

    pub async fn me(&self, principal: &Principal) -> Result<User, Error> {
        let id = principal
            .user_id()
            .ok_or_else(|| Error::Forbidden("this route is for user accounts".into()))?;
        store::user_by_id(self.db.reader(), id)
            .await?
            .map(|u| u.user)
            .ok_or_else(|| Error::NotFound("the account no longer exists".into()))
    }

    /// Checks a profile change; a password change needs the current password and ends every
    /// other session.
    pub async fn prepare_profile_change(
        self: &Arc<Self>,
        principal: &Principal,
        name: Option<&str>,
        password: Option<&str>,
        current_password: Option<&str>,
    ) -> Result<(UserId, Option<String>, Option<String>), Error> {
        let me = self.me(principal).await?;
        let stored = store::user_by_id(self.db.reader(), me.id)
            .await?
            .ok_or_else(|| Error::NotFound("account".into()))?;
        let mut errors = mercato_kit::validate::Errors::new();
        let name = name.and_then(|n| errors.take("name", mercato_kit::validate::line(n, 1, 100)));
        if name.is_none() && password.is_none() && errors.is_empty() {
            errors.add("body", "give name or password");
        }
        if let Some(p) = password {
            let email = Email::try_from(me.email.as_str()).ok();
            if let Err(m) = domain::check_password(p, email.as_ref()) {
                errors.add("password", m);
            }
            if current_password.is_none() {
                errors.add("current_password", "is required to change the password");
            }
        }
        errors.check()?;
        let hash = match (password, current_password) {
            (Some(p), Some(cur)) => {
                if !self
                    .verify(cur.to_owned(), stored.password_hash.clone())
                    .await
                {
                    return Err(
                        Invalid::field("current_password", "is not your current password").into(),
                    );
                }
                Some(self.hash(p.to_owned()).await?)
            }
            _ => None,
        };
        Ok((me.id, name, hash))
    }

    pub async fn apply_profile_change(
        &self,
        tx: &mut Tx,
        id: UserId,
        name: Option<&str>,
        hash: Option<&str>,
    ) -> Result<User, Error> {
        let user = store::update_user(tx, id, name, hash, None)
            .await?
            .ok_or_else(|| Error::NotFound("account".into()))?;
        if hash.is_some() {
            // Whoever knew the old password is signed out everywhere, this token included.
            store::revoke_all_of_user(tx, id).await?;
            store::retire_tokens(tx, id).await?;
        }
        Ok(user)
    }

    /// Gives `target` the role `role`. The actor's authority is its role now, read in the
    /// same transaction, not the one its token was issued with; the target's older tokens
    /// are retired when its role changes.
    pub async fn change_role(
        &self,
        tx: &mut Tx,
        actor: &Principal,
        target: UserId,
        role: Role,
    ) -> Result<User, Error> {
        let current = match actor.user_id() {
            Some(id) => store::user_by_id(&mut **tx, id).await?.map(|u| u.user.role),
            None => None,
        };
        domain::may_change_role(current, actor.user_id() == Some(target), role)
            .map_err(Error::Forbidden)?;
        let no_user = || Error::NotFound(format!("no user {target}"));
        let before = store::user_by_id(&mut **tx, target)
            .await?
            .ok_or_else(no_user)?;
        let user = store::update_user(tx, target, None, None, Some(role))
            .await?
            .ok_or_else(no_user)?;
        if before.user.role != role {
            store::retire_tokens(tx, target).await?;
        }
        Ok(user)
    }

    pub async fn service_token(&self, service: &str, secret: &str) -> Result<ServiceToken, Error> {
        let Some(expected) = &self.settings.service_secret else {
            return Err(Error::Unavailable(
                "service tokens are not configured (MERCATO_SERVICE_SECRET)",
            ));
        };
        let name_ok = (2..=32).contains(&service.len())
            && service.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        // Compare digests so the time taken does not depend on how much of the secret matched.
        let matches =
            Sha256::digest(secret.as_bytes()) == Sha256::digest(expected.expose().as_bytes());
        if !name_ok || !matches {
            return Err(Error::Unauthorized("unknown service or wrong secret"));
        }
        Ok(ServiceToken {
            access_token: self.access_token(
                &format!("service:{service}"),
                Role::Service,
                None,
                0,
                None,
            )?,
            token_type: "Bearer",
            expires_in: self.settings.access_ttl.as_secs(),
        })
    }

    /// Makes sure an account exists with this email (the admin bootstrap and the demo
    /// accounts). With `reset`, an existing account is given this password and role again;
    /// without, an existing account is left as its owner left it.
    pub async fn ensure_account(
        self: &Arc<Self>,
        id: UserId,
        email: &str,
        password: &str,
        name: &str,
        role: Role,
        reset: bool,
    ) -> anyhow::Result<()> {
        let email = Email::try_from(email).map_err(|m| anyhow::anyhow!("{email}: {m}"))?;
        let hash = self.hash(password.to_owned()).await?;
        let mut tx = self.db.begin().await?;
        match store::user_by_email(self.db.reader(), email.as_str()).await? {
            Some(_) if !reset => {}
            Some(existing) => {
                let same = self
                    .verify(password.to_owned(), existing.password_hash.clone())
                    .await;
                if !same || existing.user.role != role {
                    store::update_user(&mut tx, existing.user.id, None, Some(&hash), Some(role))
                        .await?;
                    store::retire_tokens(&mut tx, existing.user.id).await?;
                }
            }
            None => {
                store::insert_user(&mut tx, id, email.as_str(), name, &hash, role).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_users(
        &self,
        role: Option<Role>,
        search: Option<&str>,
        after: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<User>, Error> {
        Ok(store::list_users(self.db.reader(), role, search, after, limit).await?)
    }
}

/// Entries are read in pages of this many.
const REVOCATION_PAGE: i64 = 5000;

async fn read_revocations(
    db: &Db,
    token_ttl: Duration,
    since: i64,
) -> anyhow::Result<RevocationPage> {
    let now = now_us();
    // Nothing older than a token's lifetime retires a token still valid.
    let oldest = now - token_ttl.as_micros() as i64 - 60_000_000;
    let mut items: Vec<Revocation> =
        store::revocations_since(db.reader(), since.max(oldest), REVOCATION_PAGE + 1).await?;
    let more = items.len() as i64 > REVOCATION_PAGE;
    items.truncate(REVOCATION_PAGE as usize);
    Ok(RevocationPage {
        items,
        now,
        more,
        token_ttl_secs: token_ttl.as_secs(),
    })
}

/// The auth service reads the list from its own database (its replicas share it).
struct StoredRevocations {
    db: Db,
    token_ttl: Duration,
}

#[async_trait::async_trait]
impl mercato_kit::auth::RevocationSource for StoredRevocations {
    async fn since(&self, since: i64) -> anyhow::Result<RevocationPage> {
        read_revocations(&self.db, self.token_ttl, since).await
    }
}

/// Forgets, hourly, revocation entries no valid token can be affected by.
pub async fn purge_revocations_task(auth: Arc<Auth>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {
                let before = now_us() - auth.settings.access_ttl.as_micros() as i64 - 3_600_000_000;
                if let Err(e) = store::purge_revocations(auth.db.reader(), before).await {
                    tracing::warn!(error = %e, "purging old revocation entries failed");
                }
            }
        }
    }
}
