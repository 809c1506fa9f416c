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
//!
//! [`IdempotencyKey::check`] is the cheaper form for a hot route whose work before `finish`
//! only reads (placing an order: pricing, the stock pre-check): it looks the key up without
//! writing, and [`Checked::finish`] writes the record with the effect. Two requests racing
//! with one key both do the reading; the first commit wins, and the other's effect is rolled
//! back and answered with the winner's reply. One write transaction per request instead of two.

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
        let mut tx = db.begin().await?;
        match lookup(&mut *tx, principal, &key, &fingerprint, now).await? {
            Found::Replay { status, body } => return Ok(Claim::replay(db, status, body)),
            Found::Absent => {
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
            Found::Stale { locked_until } => {
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

    /// Looks the key up without claiming it, for work that only reads before
    /// [`Checked::finish`] (see the module docs): a replay, 422 for a key used for another
    /// request, 409 while another request holds it, or leave to go on.
    pub async fn check<T: Serialize>(
        &self,
        db: &Db,
        principal: &str,
        body: &T,
    ) -> Result<Checked, Problem> {
        let mut checked = Checked {
            db: db.clone(),
            free: None,
            replay: None,
        };
        let Some(key) = self.key.clone() else {
            return Ok(checked);
        };
        let fingerprint = self.fingerprint(body);
        match lookup(db.reader(), principal, &key, &fingerprint, now_us()).await? {
            Found::Replay { status, body } => {
                checked.replay = Some(replay_response(status, body));
            }
            Found::Absent | Found::Stale { .. } => {
                checked.free = Some(FreeKey {
                    principal: principal.to_owned(),
                    key,
                    fingerprint,
                });
            }
        }
        Ok(checked)
    }
}

/// What the store holds for a key, as far as a new request with `fingerprint` is concerned.
enum Found {
    /// Nothing: the key is new.
    Absent,
    /// The finished request's answer, to send again.
    Replay { status: i64, body: String },
    /// A record that no longer holds the key: past retention, or a claim whose lease ran out
    /// (its holder died). `locked_until` is its lease, for a compare-and-set take-over.
    Stale { locked_until: i64 },
}

/// The record of `principal`'s `key`; 422 when it was used for another request, 409 while
/// another request holds it.
async fn lookup<'e, E: Into<crate::db::Exec<'e>>>(
    exec: E,
    principal: &str,
    key: &str,
    fingerprint: &str,
    now: i64,
) -> Result<Found, Problem> {
    let row = crate::db::query(
        "SELECT fingerprint, state, locked_until, status, body, created_at FROM idempotency_keys \
         WHERE principal = $1 AND idem_key = $2",
    )
    .bind(principal)
    .bind(key)
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else {
        return Ok(Found::Absent);
    };
    let created_at: i64 = row.try_get("created_at")?;
    let stored_fp: String = row.try_get("fingerprint")?;
    let state: String = row.try_get("state")?;
    let locked_until: i64 = row.try_get("locked_until")?;
    // Past retention the key is free again, whatever it held.
    let live = created_at >= now - RETENTION.as_micros() as i64;
    if live && stored_fp != fingerprint {
        Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different request",
        )
        .with_detail("use a new Idempotency-Key for a different request"))
    } else if live && state == "completed" {
        Ok(Found::Replay {
            status: row.try_get("status")?,
            body: row.try_get("body")?,
        })
    } else if live && locked_until > now {
        Err(in_flight())
    } else {
        Ok(Found::Stale { locked_until })
    }
}

fn replay_response(status: i64, body: String) -> Response {
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    let mut res = raw_json_response(status, body);
    res.headers_mut()
        .insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
    res
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
    Replay(Response),
}

/// A claimed key (or no key at all). See the module docs.
pub struct Claim {
    db: Db,
    record: Option<Record>,
    done: bool,
}

impl Claim {
    fn replay(db: &Db, status: i64, body: String) -> Claim {
        Claim {
            db: db.clone(),
            record: Some(Record::Replay(replay_response(status, body))),
            done: true,
        }
    }

    /// The stored answer, when this request is a replay: send it and do nothing else.
    pub fn replayed(&mut self) -> Option<Response> {
        match self.record.take() {
            Some(Record::Replay(res)) => Some(res),
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

/// A key no record holds: the one this request writes with its effect.
struct FreeKey {
    principal: String,
    key: String,
    fingerprint: String,
}

/// A key [`IdempotencyKey::check`] looked up (or no key at all). See the module docs.
pub struct Checked {
    db: Db,
    free: Option<FreeKey>,
    replay: Option<Response>,
}

/// How [`Checked::finish`] answered.
pub enum Finished {
    /// This request's effect committed with its record: its answer.
    Stored(Response),
    /// Another request with the same key and body committed first: this one's effect was
    /// rolled back, and the answer is the first one's, replayed.
    Replayed(Response),
}

impl Finished {
    pub fn into_response(self) -> Response {
        match self {
            Finished::Stored(r) | Finished::Replayed(r) => r,
        }
    }
}

impl Checked {
    /// The stored answer, when this request is a replay: send it and do nothing else.
    pub fn replayed(&mut self) -> Option<Response> {
        self.replay.take()
    }

    /// Stores the answer with the effect and commits both, unless another request with the
    /// key committed first: then `tx` is rolled back and that request's answer replayed.
    pub async fn finish<T: Serialize>(
        self,
        mut tx: Tx,
        status: StatusCode,
        body: &T,
    ) -> Result<Finished, Problem> {
        let text = serde_json::to_string(body).map_err(|e| Problem::internal(&e))?;
        if let Some(FreeKey {
            principal,
            key,
            fingerprint,
        }) = &self.free
        {
            let now = now_us();
            // A record that no longer holds the key (past retention, or a claim whose holder
            // died) gives way; a live one, committed meanwhile by a racing request, wins. On
            // PostgreSQL the insert waits for a racing transaction's outcome, then decides.
            let stored = crate::db::query(
                "INSERT INTO idempotency_keys \
                 (principal, idem_key, fingerprint, state, locked_until, status, body, created_at) \
                 VALUES ($1, $2, $3, 'completed', $4, $5, $6, $4) \
                 ON CONFLICT (principal, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                 state = 'completed', locked_until = excluded.locked_until, status = excluded.status, \
                 body = excluded.body, created_at = excluded.created_at \
                 WHERE idempotency_keys.created_at < $7 \
                 OR (idempotency_keys.state = 'in_flight' AND idempotency_keys.locked_until <= $4)",
            )
            .bind(principal)
            .bind(key)
            .bind(fingerprint)
            .bind(now)
            .bind(status.as_u16() as i64)
            .bind(&text)
            .bind(now - RETENTION.as_micros() as i64)
            .execute(&mut *tx)
            .await?;
            if stored.rows_affected() != 1 {
                drop(tx);
                return match lookup(self.db.reader(), principal, key, fingerprint, now_us()).await?
                {
                    Found::Replay { status, body } => {
                        Ok(Finished::Replayed(replay_response(status, body)))
                    }
                    // The other request holds the key with a claim of its own, or has let it
                    // go again (it failed): this one may try again.
                    Found::Absent | Found::Stale { .. } => Err(in_flight()),
                };
            }
        }
        tx.commit().await?;
        // The effect may have appended events: let the relay publish them now.
        self.db.outbox_waker().wake();
        Ok(Finished::Stored(raw_json_response(status, text)))
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

    async fn effects(db: &Db) -> Vec<i64> {
        crate::db::query("SELECT n FROM effects ORDER BY n")
            .fetch_all(db.reader())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("n"))
            .collect()
    }

    /// `finish` of a checked key, with the effect `n` written in its transaction.
    async fn finish_checked(db: &Db, checked: Checked, n: i64) -> Finished {
        let mut tx = db.begin().await.unwrap();
        crate::db::query("INSERT INTO effects (n) VALUES ($1)")
            .bind(n)
            .execute(&mut *tx)
            .await
            .unwrap();
        checked
            .finish(tx, StatusCode::CREATED, &serde_json::json!({ "n": n }))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_checked_key_is_recorded_with_its_effect_and_the_first_of_a_race_wins() {
        let (_d, db) = db().await;
        crate::db::query("CREATE TABLE effects (n BIGINT)")
            .execute(db.writer())
            .await
            .unwrap();
        let k = key("k3");
        // Two requests with the key both find it free, and both do their work.
        let mut first = k.check(&db, "u1", &"body").await.unwrap();
        let mut second = k.check(&db, "u1", &"body").await.unwrap();
        assert!(first.replayed().is_none() && second.replayed().is_none());
        let Finished::Stored(res) = finish_checked(&db, first, 1).await else {
            panic!("the first commit stores its answer");
        };
        assert_eq!(res.status(), StatusCode::CREATED);
        assert!(res.headers().get(IDEMPOTENCY_REPLAYED).is_none());
        // The second commits after: its effect is rolled back, and it hears the first's answer.
        let Finished::Replayed(res) = finish_checked(&db, second, 2).await else {
            panic!("the second request's effect committed too");
        };
        assert_eq!(res.headers()[IDEMPOTENCY_REPLAYED], "true");
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"n":1}"#);
        assert_eq!(effects(&db).await, vec![1]);
        // Later: a replay without any work; another body is refused.
        let mut again = k.check(&db, "u1", &"body").await.unwrap();
        assert_eq!(again.replayed().expect("a replay").status(), 201);
        let err = k.check(&db, "u1", &"other").await.err().unwrap();
        assert_eq!(err.status, 422);
        // A claim made the old way is seen too: the same key in flight is 409.
        let held = key("k4").claim(&db, "u1", &"body").await.unwrap();
        let err = key("k4").check(&db, "u1", &"body").await.err().unwrap();
        assert_eq!(err.status, 409);
        drop(held);
    }

    #[tokio::test]
    async fn a_checked_key_takes_over_a_dead_claim_and_an_expired_record() {
        let (_d, db) = db().await;
        crate::db::query("CREATE TABLE effects (n BIGINT)")
            .execute(db.writer())
            .await
            .unwrap();
        // A claim whose holder died: its lease ran out and nobody released it.
        let dead = IdempotencyKey {
            lease: Duration::ZERO,
            ..key("k5")
        };
        std::mem::forget(dead.claim(&db, "u1", &"body").await.unwrap());
        let checked = key("k5").check(&db, "u1", &"body").await.unwrap();
        assert!(matches!(
            finish_checked(&db, checked, 5).await,
            Finished::Stored(_)
        ));
        // A record past retention, even for another body, no longer holds its key.
        let old = now_us() - RETENTION.as_micros() as i64 - 1;
        crate::db::query("UPDATE idempotency_keys SET created_at = $1 WHERE idem_key = 'k5'")
            .bind(old)
            .execute(db.writer())
            .await
            .unwrap();
        let checked = key("k5").check(&db, "u1", &"another body").await.unwrap();
        assert!(matches!(
            finish_checked(&db, checked, 6).await,
            Finished::Stored(_)
        ));
        assert_eq!(effects(&db).await, vec![5, 6]);
        let mut replay = key("k5").check(&db, "u1", &"another body").await.unwrap();
        assert!(replay.replayed().is_some());
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
