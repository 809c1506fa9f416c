//! What every event-carrying service tells `mercato audit` about its own plumbing: how far its
//! outbox is behind (invariant 5: no event is lost, so a row left unpublished is a problem once
//! it is old) and which events its consumer parked in dead letters. The outbox and the dead
//! letters are the kit's tables, so their admin route is the kit's too; each service merges it
//! (and its OpenAPI entry) beside its own audit routes.

use crate::auth::{Principal, Role, Verifier};
use crate::db::Db;
use crate::events::consumer::Consumer;
use crate::http::admin::dead_letters_router;
use crate::http::{BearerAuth, Json};
use crate::problem::Problem;
use crate::time::to_rfc3339;
use crate::validate::Errors;
use axum::extract::{FromRef, State};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// At most this many dead letter ids are listed; the count is always complete.
pub const MAX_LISTED: i64 = 20;

/// The largest page an audit list answers, and the page it answers without `limit`.
pub const MAX_PAGE: i64 = 1000;
pub const DEFAULT_PAGE: i64 = 500;

/// The query of every audit list: records in key order, after `cursor` (the last key of the
/// page before), `limit` at a time, so a shop of any size is read in bounded answers.
#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 1000, default 500.
    pub limit: Option<i64>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The cursor as a key and the limit, or a 422 naming what is wrong.
    pub fn parse<K: FromStr>(&self) -> Result<(Option<K>, i64), Problem> {
        let mut errors = Errors::new();
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            errors.add("limit", format!("must be from 1 to {MAX_PAGE}"));
        }
        let after = self.cursor.as_deref().and_then(|c| {
            errors.take(
                "cursor",
                c.parse::<K>()
                    .map_err(|_| "must be the next_cursor of an earlier page".into()),
            )
        });
        errors.finish()?;
        Ok((after, limit))
    }
}

/// The cursor of the page after `items`: the last key when the page is full (the next page
/// may then be empty), none after a short page.
pub fn next_cursor<T, K: ToString>(
    items: &[T],
    limit: i64,
    key: impl Fn(&T) -> K,
) -> Option<String> {
    (items.len() as i64 >= limit)
        .then(|| items.last().map(|i| key(i).to_string()))
        .flatten()
}

/// A page of an audit list, for an admin only, and the cursor of the page after it. The caller
/// is checked before the query and the query before `fetch` reads anything, so a customer
/// hears 403 and a bad cursor 422 without a query run; `key` is the list's order.
pub async fn admin_page<K, T, E, F, Fut>(
    p: Principal,
    q: PageQuery,
    fetch: F,
    key: impl Fn(&T) -> K,
) -> Result<(Vec<T>, Option<String>), Problem>
where
    K: FromStr + ToString,
    F: FnOnce(Option<K>, i64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, E>>,
    Problem: From<E>,
{
    p.require(&[Role::Admin])?;
    let (after, limit) = q.parse::<K>()?;
    let items = fetch(after, limit).await?;
    let next = next_cursor(&items, limit, key);
    Ok((items, next))
}

/// A service's outbox and dead letters, as the audit sees them.
#[derive(Serialize, ToSchema, Debug, PartialEq, Eq)]
pub struct EventsAudit {
    /// Outbox rows not yet published to the bus.
    pub outbox_pending: i64,
    /// When the oldest of them was written; null when none is pending.
    #[schema(format = DateTime)]
    pub outbox_oldest_at: Option<String>,
    /// Events parked in dead letters and not replayed.
    pub dead_letters_open: i64,
    /// The first of those (oldest first), at most 20: `GET /admin/dead-letters` has them all.
    pub dead_letter_ids: Vec<String>,
}

/// Reads the summary: two aggregate queries over partial indexes (`outbox_unpublished`,
/// `dead_letters_open`) and one short list.
pub async fn events_audit(db: &Db) -> Result<EventsAudit, crate::db::Error> {
    let outbox = crate::db::query(
        "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(db.reader())
    .await?;
    let open =
        crate::db::query("SELECT COUNT(*) AS open FROM dead_letters WHERE replayed_at IS NULL")
            .fetch_one(db.reader())
            .await?;
    let ids = crate::db::query(
        "SELECT id FROM dead_letters WHERE replayed_at IS NULL ORDER BY parked_at, id LIMIT $1",
    )
    .bind(MAX_LISTED)
    .fetch_all(db.reader())
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>("id"))
    .collect::<Result<_, _>>()?;
    Ok(EventsAudit {
        outbox_pending: outbox.try_get("pending")?,
        outbox_oldest_at: outbox.try_get::<Option<i64>, _>("oldest")?.map(to_rfc3339),
        dead_letters_open: open.try_get("open")?,
        dead_letter_ids: ids,
    })
}

#[derive(Clone)]
struct AuditState {
    db: Db,
    verifier: Verifier,
}

impl FromRef<AuditState> for Verifier {
    fn from_ref(s: &AuditState) -> Verifier {
        s.verifier.clone()
    }
}

#[derive(OpenApi)]
#[openapi(modifiers(&BearerAuth), tags((name = "audit", description = "What `mercato audit` checks (ADMIN)")))]
struct ApiDoc;

/// `GET /api/v1/admin/audit/events` and `GET /api/v1/admin/audit/trail` (ADMIN) and their
/// OpenAPI document.
pub fn router(db: Db, verifier: Verifier) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(events))
        .routes(routes!(trail_route))
        .with_state(AuditState { db, verifier })
        .split_for_parts()
}

/// A service's API (router and document) with the events audit route added to both.
pub fn with_events_audit(
    (api, mut doc): (axum::Router, utoipa::openapi::OpenApi),
    db: &Db,
    verifier: &Verifier,
) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (events, events_doc) = router(db.clone(), verifier.clone());
    doc.merge(events_doc);
    (api.merge(events), doc)
}

/// A consuming service's API with what an operator needs of its events: the events audit
/// route (router and document) and the dead letter routes (router only, like every admin
/// route), so no consuming service can offer one without the other.
pub fn with_event_admin(
    api: (axum::Router, utoipa::openapi::OpenApi),
    db: &Db,
    consumer: &Consumer,
    verifier: &Verifier,
) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (api, doc) = with_events_audit(api, db, verifier);
    let dead_letters = dead_letters_router(consumer.clone(), verifier.clone());
    (api.merge(dead_letters), doc)
}

/// This service's outbox backlog and open dead letters.
#[utoipa::path(get, path = "/api/v1/admin/audit/events", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, description = "The outbox backlog and the open dead letters", body = EventsAudit),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
async fn events(State(s): State<AuditState>, p: Principal) -> Result<Json<EventsAudit>, Problem> {
    p.require(&[Role::Admin])?;
    Ok(Json(events_audit(&s.db).await?))
}

/// The most events one trail lists per service; an order's saga has a dozen or so.
pub const MAX_TRAIL: i64 = 200;

/// What one trail asks a service.
#[derive(Deserialize, IntoParams, Debug)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrailQuery {
    /// The id (an order's, a payment's) the events must mention.
    pub mentions: String,
    /// Comma-separated event ids (at most 200): which of them this service's consumer handled.
    pub consumed: Option<String>,
}

/// An event this service wrote to its outbox.
#[derive(Serialize, ToSchema, Debug)]
pub struct TrailPublished {
    pub event_id: String,
    pub event_type: String,
    pub aggregate_id: String,
    /// When the change that produced it committed.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the relay handed it to the bus; null while it waits in the outbox.
    #[schema(format = DateTime)]
    pub published_at: Option<String>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// An event this service's consumer handled (its inbox row).
#[derive(Serialize, ToSchema, Debug)]
pub struct TrailConsumed {
    pub consumer: String,
    pub event_id: String,
    #[schema(format = DateTime)]
    pub processed_at: String,
}

/// One service's part of a saga's trail: what it published that mentions the id, which of
/// the given events it consumed, and what it parked that mentions the id.
#[derive(Serialize, ToSchema, Debug)]
pub struct Trail {
    pub published: Vec<TrailPublished>,
    pub consumed: Vec<TrailConsumed>,
    pub dead_letters: Vec<crate::events::consumer::DeadLetter>,
}

impl TrailQuery {
    /// The id and the event ids, parsed, or a 422 naming what is wrong. UUIDs only, so the
    /// id is safe inside a LIKE pattern.
    #[expect(
        clippy::expect_used,
        reason = "errors.finish() has refused a missing id"
    )]
    pub fn parse(&self) -> Result<(uuid::Uuid, Vec<uuid::Uuid>), Problem> {
        let mut errors = Errors::new();
        let mentions = errors.take(
            "mentions",
            self.mentions
                .parse::<uuid::Uuid>()
                .map_err(|_| "must be a UUID".into()),
        );
        let mut consumed = Vec::new();
        for part in self.consumed.as_deref().unwrap_or("").split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.parse::<uuid::Uuid>() {
                Ok(id) => consumed.push(id),
                Err(_) => {
                    errors.add("consumed", format!("{part:?} is not an event id (a UUID)"));
                    break;
                }
            }
        }
        if consumed.len() as i64 > MAX_TRAIL {
            errors.add("consumed", format!("at most {MAX_TRAIL} event ids"));
        }
        errors.finish()?;
        Ok((mentions.expect("checked above"), consumed))
    }
}

/// Reads one service's trail. The outbox and dead letters are scanned for the id in the
/// envelope (no index: an admin looks at one order at a time, and the relay prunes nothing
/// the scan needs).
pub async fn trail(
    db: &Db,
    mentions: uuid::Uuid,
    consumed: &[uuid::Uuid],
) -> Result<Trail, crate::db::Error> {
    let pattern = format!("%{mentions}%");
    let published = crate::db::query(
        "SELECT event_id, event_type, aggregate_id, envelope, created_at, published_at FROM outbox \
         WHERE aggregate_id = $1 OR envelope LIKE $2 ORDER BY seq LIMIT $3",
    )
    .bind(mentions.to_string())
    .bind(&pattern)
    .bind(MAX_TRAIL)
    .fetch_all(db.reader())
    .await?
    .iter()
    .map(|r| {
        let envelope: serde_json::Value =
            serde_json::from_str(&r.try_get::<String, _>("envelope")?).unwrap_or_default();
        Ok(TrailPublished {
            event_id: r.try_get("event_id")?,
            event_type: r.try_get("event_type")?,
            aggregate_id: r.try_get("aggregate_id")?,
            created_at: to_rfc3339(r.try_get("created_at")?),
            published_at: r.try_get::<Option<i64>, _>("published_at")?.map(to_rfc3339),
            payload: envelope.get("payload").cloned().unwrap_or_default(),
        })
    })
    .collect::<Result<Vec<_>, crate::db::Error>>()?;
    let mut handled = Vec::new();
    if !consumed.is_empty() {
        let placeholders = (1..=consumed.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT consumer, event_id, processed_at FROM inbox WHERE event_id IN ({placeholders}) \
             ORDER BY processed_at"
        );
        let mut q = crate::db::query(&sql);
        for id in consumed {
            q = q.bind(id.to_string());
        }
        handled = q
            .fetch_all(db.reader())
            .await?
            .iter()
            .map(|r| {
                Ok(TrailConsumed {
                    consumer: r.try_get("consumer")?,
                    event_id: r.try_get("event_id")?,
                    processed_at: to_rfc3339(r.try_get("processed_at")?),
                })
            })
            .collect::<Result<_, crate::db::Error>>()?;
    }
    let dead_letters =
        crate::events::consumer::dead_letters_mentioning(db, mentions, MAX_TRAIL).await?;
    Ok(Trail {
        published,
        consumed: handled,
        dead_letters,
    })
}

/// This service's part of one saga's trail, for the operator console's order timeline.
#[utoipa::path(get, path = "/api/v1/admin/audit/trail", tag = "audit", security(("bearer" = [])),
    params(TrailQuery),
    responses(
        (status = 200, description = "The events published, consumed and parked", body = Trail),
        (status = 400, description = "A malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`mentions` or `consumed` is not made of UUIDs", body = Problem, content_type = "application/problem+json"),
    ))]
async fn trail_route(
    State(s): State<AuditState>,
    p: Principal,
    crate::http::Query(q): crate::http::Query<TrailQuery>,
) -> Result<Json<Trail>, Problem> {
    p.require(&[Role::Admin])?;
    let (mentions, consumed) = q.parse()?;
    Ok(Json(trail(&s.db, mentions, &consumed).await?))
}

#[cfg(test)]
mod trail_tests {
    use super::*;

    #[test]
    fn a_trail_query_takes_uuids_only() {
        let id = uuid::Uuid::now_v7();
        let q = TrailQuery {
            mentions: id.to_string(),
            consumed: Some(format!(" {id}, ,{id}")),
        };
        assert_eq!(q.parse().unwrap(), (id, vec![id, id]));
        let bad = TrailQuery {
            mentions: "%' OR 1=1".into(),
            consumed: Some("nope".into()),
        };
        let p = bad.parse().unwrap_err();
        assert_eq!(p.status, 422);
    }
}
