//! The auth service's SQL. One path for SQLite and PostgreSQL (see `mercato_kit::db`).

use mercato_kit::auth::Role;
use mercato_kit::db::Tx;
use mercato_kit::db::{parse_uuid, Pool, Row};
use mercato_kit::ids::UserId;
use mercato_kit::time::{now_us, to_rfc3339};
use serde::Serialize;
use utoipa::ToSchema;

/// A user as the API shows it: never the password hash.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub updated_at: String,
}

pub struct UserWithHash {
    pub user: User,
    pub password_hash: String,
    /// Every access token carries it; raising it retires the older ones.
    pub token_version: i64,
}

const USER_COLS: &str =
    "id, email, name, role, password_hash, token_version, created_at, updated_at";

fn user_from(row: &Row) -> Result<UserWithHash, mercato_kit::db::Error> {
    let role: String = row.try_get("role")?;
    Ok(UserWithHash {
        user: User {
            id: UserId(parse_uuid(&row.try_get::<String, _>("id")?)?),
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            role: role
                .parse()
                .map_err(|e: String| mercato_kit::db::Error::Decode(e.into()))?,
            created_at: to_rfc3339(row.try_get("created_at")?),
            updated_at: to_rfc3339(row.try_get("updated_at")?),
        },
        password_hash: row.try_get("password_hash")?,
        token_version: row.try_get("token_version")?,
    })
}

pub async fn user_by_email(
    pool: &Pool,
    email: &str,
) -> Result<Option<UserWithHash>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(&format!("SELECT {USER_COLS} FROM users WHERE email = $1"))
        .bind(email)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(user_from).transpose()
}

pub async fn user_by_id<'e, E: Into<mercato_kit::db::Exec<'e>>>(
    exec: E,
    id: UserId,
) -> Result<Option<UserWithHash>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(user_from).transpose()
}

/// Inserts a user; a taken email surfaces as a unique violation.
pub async fn insert_user(
    tx: &mut Tx,
    id: UserId,
    email: &str,
    name: &str,
    hash: &str,
    role: Role,
) -> Result<User, mercato_kit::db::Error> {
    let now = now_us();
    mercato_kit::db::query(
        "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(id.to_string())
    .bind(email)
    .bind(name)
    .bind(hash)
    .bind(role.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(User {
        id,
        email: email.into(),
        name: name.into(),
        role,
        created_at: to_rfc3339(now),
        updated_at: to_rfc3339(now),
    })
}

pub async fn update_user(
    tx: &mut Tx,
    id: UserId,
    name: Option<&str>,
    hash: Option<&str>,
    role: Option<Role>,
) -> Result<Option<User>, mercato_kit::db::Error> {
    mercato_kit::db::query(
        "UPDATE users SET name = COALESCE($2, name), password_hash = COALESCE($3, password_hash), \
         role = COALESCE($4, role), updated_at = $5 WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(name)
    .bind(hash)
    .bind(role.map(|r| r.as_str()))
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(user_by_id(&mut **tx, id).await?.map(|u| u.user))
}

/// Users in creation order (ids are v7, so ordered by time), after `after` when given; with
/// `search`, only those whose email or name contains it (any case).
pub async fn list_users(
    pool: &Pool,
    role: Option<Role>,
    search: Option<&str>,
    after: Option<UserId>,
    limit: i64,
) -> Result<Vec<User>, mercato_kit::db::Error> {
    // LIKE's wildcards in the search are meant literally.
    let pattern = search.map(|q| {
        let escaped = q
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows = mercato_kit::db::query(&format!(
        "SELECT {USER_COLS} FROM users WHERE ($1 IS NULL OR role = $1) AND ($2 IS NULL OR id > $2) \
         AND ($4 IS NULL OR LOWER(email) LIKE $4 ESCAPE '\\' OR LOWER(name) LIKE $4 ESCAPE '\\') \
         ORDER BY id LIMIT $3"
    ))
    .bind(role.map(|r| r.as_str()))
    .bind(after.map(|a| a.to_string()))
    .bind(limit)
    .bind(pattern)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| user_from(r).map(|u| u.user)).collect()
}

pub struct StoredRefresh {
    pub family_id: String,
    pub user_id: UserId,
    pub state: crate::domain::RefreshState,
}

pub async fn insert_refresh(
    tx: &mut Tx,
    hash: &str,
    family: &str,
    user: UserId,
    expires_at: i64,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash)
    .bind(family)
    .bind(user.to_string())
    .bind(expires_at)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn refresh_by_hash(
    tx: &mut Tx,
    hash: &str,
) -> Result<Option<StoredRefresh>, mercato_kit::db::Error> {
    let row = mercato_kit::db::query("SELECT family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1")
        .bind(hash)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|r| {
        Ok(StoredRefresh {
            family_id: r.try_get("family_id")?,
            user_id: UserId(parse_uuid(&r.try_get::<String, _>("user_id")?)?),
            state: crate::domain::RefreshState {
                expires_at: r.try_get("expires_at")?,
                used: r.try_get::<Option<i64>, _>("used_at")?.is_some(),
                revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            },
        })
    })
    .transpose()
}

/// Spends a token if nobody spent it first; false when someone did (a race is a reuse).
pub async fn spend_refresh(tx: &mut Tx, hash: &str) -> Result<bool, mercato_kit::db::Error> {
    let r = mercato_kit::db::query(
        "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(hash)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn revoke_family(tx: &mut Tx, family: &str) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn revoke_all_of_user(tx: &mut Tx, user: UserId) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user.to_string())
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Raises the account's token version (retiring every token issued before) and records it in
/// the revocation list; the new version.
pub async fn retire_tokens(tx: &mut Tx, user: UserId) -> Result<i64, mercato_kit::db::Error> {
    mercato_kit::db::query("UPDATE users SET token_version = token_version + 1 WHERE id = $1")
        .bind(user.to_string())
        .execute(&mut **tx)
        .await?;
    let version: i64 = mercato_kit::db::query("SELECT token_version FROM users WHERE id = $1")
        .bind(user.to_string())
        .fetch_one(&mut **tx)
        .await?
        .try_get("token_version")?;
    insert_revocation(tx, user, version, None).await?;
    Ok(version)
}

/// Records that one sign-in (a refresh-token family) was ended.
pub async fn end_session(
    tx: &mut Tx,
    user: UserId,
    family: &str,
) -> Result<(), mercato_kit::db::Error> {
    insert_revocation(tx, user, 0, Some(family)).await
}

async fn insert_revocation(
    tx: &mut Tx,
    user: UserId,
    min_version: i64,
    session: Option<&str>,
) -> Result<(), mercato_kit::db::Error> {
    mercato_kit::db::query(
        "INSERT INTO token_revocations (id, user_id, min_version, session_id, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(user.to_string())
    .bind(min_version)
    .bind(session)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revocation entries recorded at or after `since` (µs), oldest first, at most `limit`.
pub async fn revocations_since(
    pool: &Pool,
    since: i64,
    limit: i64,
) -> Result<Vec<mercato_kit::auth::Revocation>, mercato_kit::db::Error> {
    let rows = mercato_kit::db::query(
        "SELECT user_id, min_version, session_id, created_at FROM token_revocations \
         WHERE created_at >= $1 ORDER BY created_at, id LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(mercato_kit::auth::Revocation {
                user_id: r.try_get("user_id")?,
                min_version: r.try_get("min_version")?,
                session_id: r.try_get("session_id")?,
                at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// Forgets revocation entries older than `before` (µs): no token they retire is still valid.
pub async fn purge_revocations(pool: &Pool, before: i64) -> Result<u64, mercato_kit::db::Error> {
    Ok(
        mercato_kit::db::query("DELETE FROM token_revocations WHERE created_at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
