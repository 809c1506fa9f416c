//! `Idempotency-Key` for POST/PATCH/PUT handlers (Stripe's and the IETF draft's semantics).
//!
//! Same key and same request → the stored status and body, with `Idempotency-Replayed: true`;
//! same key and another request → 422; same key while the first is still running → 409.
//! Records are kept 24 hours.
//!
//! How a handler uses it:
//! ```ignore
//! let claim = Idempotency::claim(&db, key, &principal, &fingerprint).await?; // may replay
//! let mut tx = db.begin().await?;
//! /* the effect, written through tx */
//! claim.finish(tx, StatusCode::CREATED, &body).await
//! ```
//! `claim` marks the key in flight in a short transaction of its own, so a concurrent
//! duplicate sees it and gets 409 instead of waiting. `finish` stores the response in the
//! effect's transaction and commits both together: a crash can never leave an effect without
//! its record. If the handler fails before `finish`, the claim is released on drop so the
//! client can retry; if the process dies, the claim's lease runs out and a retry takes it over.

use crate::db::{Db, Tx};
use crate::http::{raw_json_response, IDEMPOTENCY_KEY, IDEMPOTENCY_REPLAYED};
use crate::problem::Problem;
use crate::time::now_us;
use axum::extract::FromRequestParts;
use axum::http::{request::Parts, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a record is kept.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long a claim holds a key before a retry may take it over (the process died), beyond
/// the request's own timeout: no live request holds a claim longer than that.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// The lease when the request's timeout is unknown (outside the kit's HTTP stack).
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The `Idempotency-Key` header of a request, if it has one, and what identifies the request.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    key: Option<String>,
    method: String,
    path: String,
    lease: Duration,
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let key = match parts.headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => {
                let k = v.to_str().unwrap_or("").trim();
                if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_idempotency_key",
                        "The Idempotency-Key header is not valid",
                    )
                    .with_detail("Idempotency-Key must be 1 to 255 visible ASCII characters"));
                }
                Some(k.to_owned())
            }
        };
        let lease = parts
            .extensions
            .get::<crate::http::RequestTimeout>()
            .map(|t| t.0 + LEASE_MARGIN)
            .unwrap_or(DEFAULT_LEASE);
        Ok(IdempotencyKey {
            key,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            lease,
        })
    }
}

impl IdempotencyKey {
    pub fn none() -> Self {
        IdempotencyKey {
            key: None,
            method: String::new(),
            path: String::new(),
            lease: DEFAULT_LEASE,
        }
    }

    /// The key the client sent, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The key, for routes whose contract requires one (an order placed twice is two
    /// orders): without it, 400 `idempotency_key_required` saying why `what` needs it.
    pub fn required(&self, what: &str) -> Result<&str, Problem> {
        self.key.as_deref().ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "An Idempotency-Key is required",
            )
            .with_detail(format!(
                "{what}: send an Idempotency-Key header, and the same one when retrying"
            ))
        })
    }

    /// What identifies "the same request": method, path and the request's parsed body.
    pub fn fingerprint<T: Serialize>(&self, body: &T) -> String {
        let mut h = Sha256::new();
        h.update(self.method.as_bytes());
        h.update(b" ");
        h.update(self.path.as_bytes());
        h.update(b"\n");
        h.update(serde_json::to_vec(body).unwrap_or_default());
        format!("{:x}", h.finalize())
    }

    /// Claims the key for this request, or answers from the store.
    ///
    /// `principal` scopes the key: two users' keys never collide.
    pub async fn claim<T: Serialize>(
        &self,
        db: &Db,
        principal: &str,
        body: &T,
    ) -> Result<Claim, Problem> {
        let Some(key) = self.key.clone() else {
            return Ok(Claim {
                db: db.clone(),
                record: None,
                done: false,
            });
        };
        let fingerprint = self.fingerprint(body);
        let now = now_us();
        let lease_until = now + self.lease.as_micros() as i64;
        let expired_before = now - RETENTION.as_micros() as i64;
        let mut tx = db.begin().await?;
        let row = crate::db::query(
            "SELECT fingerprint, state, locked_until, status, body, created_at FROM idempotency_keys \
             WHERE principal = $1 AND idem_key = $2",
        )
        .bind(principal)
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            None => {
                let inserted = crate::db::query(
                    "INSERT INTO idempotency_keys (principal, idem_key, fingerprint, state, locked_until, created_at) \
                     VALUES ($1, $2, $3, 'in_flight', $4, $5)",
                )
                .bind(principal)
                .bind(&key)
                .bind(&fingerprint)
                .bind(lease_until)
                .bind(now)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => {}
                    // Another replica inserted it between our read and write: it is in flight.
                    Err(e) if crate::db::is_unique_violation(&e) => return Err(in_flight()),
                    Err(e) => return Err(e.into()),
                }
            }
            Some(row) => {
                let created_at: i64 = row.try_get("created_at")?;
                let stored_fp: String = row.try_get("fingerprint")?;
                let state: String = row.try_get("state")?;
                let locked_until: i64 = row.try_get("locked_until")?;
                // Past retention the key is free again, whatever it held.
                let live = created_at >= expired_before;
                if live && stored_fp != fingerprint {
                    return Err(Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "This Idempotency-Key was used for a different request",
                    )
                    .with_detail("use a new Idempotency-Key for a different request"));
                } else if live && state == "completed" {
                    let status: i64 = row.try_get("status")?;
                    let body: String = row.try_get("body")?;
                    return Ok(Claim::replay(db, status, body));
                } else if live && locked_until > now {
                    return Err(in_flight());
                }
                // Expired, or a lease whose holder stopped without finishing: ours now.
                take_over(
                    &mut tx,
                    principal,
                    &key,
                    &fingerprint,
                    lease_until,
                    now,
                    locked_until,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Claim {
            db: db.clone(),
            record: Some(Record::Claimed {
                principal: principal.to_owned(),
                key,
            }),
            done: false,
        })
    }
}

fn in_flight() -> Problem {
    Problem::conflict(
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still being processed; retry shortly",
    )
    .with_retry_after(1)
}

async fn take_over(
    tx: &mut Tx,
    principal: &str,
    key: &str,
    fingerprint: &str,
    lease_until: i64,
    now: i64,
    old_lock: i64,
) -> Result<(), Problem> {
    // Compare-and-set on the old lease, so two retries cannot both take it over.
    let r = crate::db::query(
        "UPDATE idempotency_keys SET fingerprint = $3, state = 'in_flight', locked_until = $4, status = NULL, \
         body = NULL, created_at = $5 WHERE principal = $1 AND idem_key = $2 AND locked_until = $6",
    )
    .bind(principal)
    .bind(key)
    .bind(fingerprint)
    .bind(lease_until)
    .bind(now)
    .bind(old_lock)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() == 1 {
        Ok(())
    } else {
        Err(in_flight())
    }
}

enum Record {
    Claimed { principal: String, key: String },
    Replay { status: StatusCode, body: String },
}

/// A claimed key (or no key at all). See the module docs.
pub struct Claim {
    db: Db,
    record: Option<Record>,
    done: bool,
}

impl Claim {
    fn replay(db: &Db, status: i64, body: String) -> Claim {
        let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
        Claim {
            db: db.clone(),
            record: Some(Record::Replay { status, body }),
            done: true,
        }
    }

    /// The stored answer, when this request is a replay: send it and do nothing else.
    pub fn replayed(&mut self) -> Option<Response> {
        match self.record.take() {
            Some(Record::Replay { status, body }) => {
                let mut res = raw_json_response(status, body);
                res.headers_mut()
                    .insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
                Some(res)
            }
            other => {
                self.record = other;
                None
            }
        }
    }

    /// Stores the answer with the effect and commits both.
    pub async fn finish<T: Serialize>(
        mut self,
        mut tx: Tx,
        status: StatusCode,
        body: &T,
    ) -> Result<Response, Problem> {
        let text = serde_json::to_string(body).map_err(|e| Problem::internal(&e))?;
        if let Some(Record::Claimed { principal, key }) = &self.record {
            crate::db::query(
                "UPDATE idempotency_keys SET state = 'completed', status = $3, body = $4 \
                 WHERE principal = $1 AND idem_key = $2",
            )
            .bind(principal)
            .bind(key)
            .bind(status.as_u16() as i64)
            .bind(&text)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.done = true;
        // The effect may have appended events: let the relay publish them now.
        self.db.outbox_waker().wake();
        Ok(raw_json_response(status, text))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(Record::Claimed { principal, key }) = self.record.take() {
            // The handler failed before storing an answer: free the key for a retry.
            let db = self.db.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = crate::db::query(
                        "DELETE FROM idempotency_keys WHERE principal = $1 AND idem_key = $2 AND state = 'in_flight'",
                    )
                    .bind(principal)
                    .bind(key)
                    .execute(db.writer())
                    .await;
                });
            }
        }
    }
}

/// Deletes records past retention; run periodically by every service.
pub async fn purge_expired(db: &Db) -> Result<u64, crate::db::Error> {
    let before = now_us() - RETENTION.as_micros() as i64;
    let r = crate::db::query(
        "DELETE FROM idempotency_keys WHERE created_at < $1 AND state = 'completed'",
    )
    .bind(before)
    .execute(db.writer())
    .await?;
    Ok(r.rows_affected())
}

/// The purge as a background task, hourly until shutdown.
pub async fn purge_task(db: Db, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {
                if let Err(e) = purge_expired(&db).await {
                    tracing::warn!(error = %e, "purging idempotency records failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Migrations;
    use sqlx::migrate::Migrator;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/i.db?mode=rwc", dir.path().display());
        let m = Migrations {
            sqlite: Migrator::DEFAULT,
            postgres: Migrator::DEFAULT,
        };
        let db = Db::connect(&url, "i", 2, &m).await.unwrap();
        (dir, db)
    }

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey {
            key: Some(k.into()),
            method: "POST".into(),
            path: "/x".into(),
            lease: DEFAULT_LEASE,
        }
    }

    #[tokio::test]
    async fn replays_refuses_other_bodies_and_in_flight_duplicates() {
        let (_d, db) = db().await;
        let k = key("k1");
        let mut first = k.claim(&db, "u1", &"body").await.unwrap();
        assert!(first.replayed().is_none());
        // While the first holds the key, a duplicate is told to wait.
        let err = k.claim(&db, "u1", &"body").await.err().unwrap();
        assert_eq!(err.status, 409);
        // Another principal's identical key is independent.
        let other = k.claim(&db, "u2", &"body").await.unwrap();
        drop(other);
        let tx = db.begin().await.unwrap();
        first
            .finish(tx, StatusCode::CREATED, &serde_json::json!({"n": 1}))
            .await
            .unwrap();
        let mut again = k.claim(&db, "u1", &"body").await.unwrap();
        let res = again.replayed().expect("a replay");
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()[IDEMPOTENCY_REPLAYED], "true");
        let err = k.claim(&db, "u1", &"other body").await.err().unwrap();
        assert_eq!(err.status, 422);
    }

    #[tokio::test]
    async fn a_failed_handler_frees_the_key() {
        let (_d, db) = db().await;
        let k = key("k2");
        let claim = k.claim(&db, "u1", &1).await.unwrap();
        drop(claim);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match k.claim(&db, "u1", &1).await {
                Ok(mut c) => {
                    assert!(c.replayed().is_none());
                    break;
                }
                Err(p) if p.status == 409 && std::time::Instant::now() < deadline => {
                    tokio::task::yield_now().await
                }
                Err(p) => panic!("key never freed: {p}"),
            }
        }
    }
}
