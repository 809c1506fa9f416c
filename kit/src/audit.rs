//! What every event-carrying service tells `mercato audit` about its own plumbing: how far its
//! outbox is behind (invariant 5: no event is lost, so a row left unpublished is a problem once
//! it is old) and which events its consumer parked in dead letters. The outbox and the dead
//! letters are the kit's tables, so their admin route is the kit's too; each service merges it
//! (and its OpenAPI entry) beside its own audit routes.

use crate::auth::{Principal, Role, Verifier};
use crate::db::Db;
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

/// `GET /api/v1/admin/audit/events` (ADMIN) and its OpenAPI document.
pub fn router(db: Db, verifier: Verifier) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(events))
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
