//! The admin routes the kit mounts on a service, in one place: the chaos switch and the dead
//! letters of an event consumer (with test hooks, also the event types it fails on purpose).
//! ADMIN only, under `/api/v1/admin/`, where chaos never reaches.
//!
//! They sit here, above what they drive, because a route needs the whole HTTP skeleton (token
//! checks, the kit's extractors, problem documents): [`crate::chaos`] and
//! [`crate::events::consumer`] hold the state and the operations, these handlers only check
//! the caller, call them and say how it went.

use super::{Json, Path};
use crate::auth::{Principal, Role, Verifier};
use crate::chaos::{Chaos, ChaosView, Profile, ADMIN_PATH};
use crate::events::consumer::{Consumer, ReplayRefused};
use crate::problem::Problem;
use axum::extract::{FromRef, State};
use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use std::collections::BTreeSet;

/// What every admin route's state has: the verifier its [`Principal`] is checked with.
#[derive(Clone)]
struct Admin<T> {
    of: T,
    verifier: Verifier,
}

impl<T> FromRef<Admin<T>> for Verifier {
    fn from_ref(s: &Admin<T>) -> Verifier {
        s.verifier.clone()
    }
}

/// `GET/PUT/DELETE /api/v1/admin/chaos`, ADMIN only.
pub fn chaos_router(chaos: Chaos, verifier: Verifier) -> Router {
    Router::new()
        .route(
            ADMIN_PATH,
            get(show_chaos).put(replace_chaos).delete(clear_chaos),
        )
        .with_state(Admin {
            of: chaos,
            verifier,
        })
}

async fn show_chaos(
    State(s): State<Admin<Chaos>>,
    p: Principal,
) -> Result<Json<ChaosView>, Problem> {
    p.require(&[Role::Admin])?;
    Ok(Json(ChaosView::of(&s.of)))
}

async fn replace_chaos(
    State(s): State<Admin<Chaos>>,
    p: Principal,
    Json(profile): Json<Profile>,
) -> Result<Json<ChaosView>, Problem> {
    p.require(&[Role::Admin])?;
    profile.validate()?;
    tracing::warn!(by = ?p.user_id(), "chaos profile set through the admin API");
    s.of.set(profile);
    Ok(Json(ChaosView::of(&s.of)))
}

async fn clear_chaos(State(s): State<Admin<Chaos>>, p: Principal) -> Result<StatusCode, Problem> {
    p.require(&[Role::Admin])?;
    s.of.set(Profile::default());
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/admin/dead-letters` and `POST /api/v1/admin/dead-letters/{id}/replay`, ADMIN only;
/// with test hooks on, also `GET/PUT /api/v1/admin/test/failing-events`.
pub fn dead_letters_router(consumer: Consumer, verifier: Verifier) -> Router {
    let mut router = Router::new()
        .route("/api/v1/admin/dead-letters", get(list))
        .route("/api/v1/admin/dead-letters/{id}/replay", post(replay));
    if consumer.has_test_hooks() {
        router = router.route(
            "/api/v1/admin/test/failing-events",
            get(show_failing).put(set_failing),
        );
    }
    router.with_state(Admin {
        of: consumer,
        verifier,
    })
}

/// The event types a consumer fails on purpose (test hooks only).
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FailingEvents {
    event_types: BTreeSet<String>,
}

async fn show_failing(
    State(s): State<Admin<Consumer>>,
    p: Principal,
) -> Result<Json<FailingEvents>, Problem> {
    p.require(&[Role::Admin])?;
    let event_types = s.of.failing_events();
    Ok(Json(FailingEvents { event_types }))
}

async fn set_failing(
    State(s): State<Admin<Consumer>>,
    p: Principal,
    Json(body): Json<FailingEvents>,
) -> Result<Json<FailingEvents>, Problem> {
    p.require(&[Role::Admin])?;
    s.of.fail_events(body.event_types.clone());
    Ok(Json(body))
}

async fn list(
    State(s): State<Admin<Consumer>>,
    p: Principal,
) -> Result<Json<serde_json::Value>, Problem> {
    p.require(&[Role::Admin])?;
    Ok(Json(serde_json::json!({"items": s.of.parked().await?})))
}

async fn replay(
    State(s): State<Admin<Consumer>>,
    p: Principal,
    Path(id): Path<uuid::Uuid>,
) -> Result<Json<serde_json::Value>, Problem> {
    p.require(&[Role::Admin])?;
    let outcome = s.of.replay(id).await.map_err(|refused| match refused {
        ReplayRefused::NotFound(_) => Problem::not_found(refused.to_string()),
        ReplayRefused::AlreadyReplayed => {
            Problem::conflict("already_replayed", refused.to_string())
        }
        ReplayRefused::FailedAgain(_) => Problem::conflict("replay_failed", refused.to_string()),
        ReplayRefused::Unreadable(e) => Problem::internal(&e),
        ReplayRefused::Storage(e) => e.into(),
    })?;
    Ok(Json(
        serde_json::json!({"id": id, "outcome": format!("{outcome:?}").to_lowercase()}),
    ))
}
