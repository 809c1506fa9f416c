//! Browser sessions for the web app, kept as a security review asks: the page holds only the
//! short-lived access token, in memory; the rotating refresh token lives in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/api/v1/session`, which this gateway sets and reads and
//! no script can see. A reload asks `POST /api/v1/session/refresh` for a new access token.
//!
//! - `POST /api/v1/session` `{email, password}`: signs in through the auth service's
//!   `/auth/login`; answers its tokens without the refresh token, which goes into the cookie.
//! - `POST /api/v1/session/refresh`: exchanges the cookie's refresh token at `/auth/refresh`
//!   (it rotates: the cookie is replaced); a spent or revoked one clears the cookie, 401.
//! - `DELETE /api/v1/session`: ends the sign-in at `/auth/logout` and clears the cookie.
//!
//! The auth service stays the only keeper of tokens: these routes call it through the same
//! proxy as every request (breaker, bulkhead, the client's address for its sign-in throttling)
//! and only move the refresh token between its answer and the cookie. Requests another site
//! started (`Sec-Fetch-Site: cross-site` or `same-site`) are refused before anything is asked,
//! on top of what `SameSite=Strict` already keeps out.

use crate::proxy::{self, Proxy};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use cookie::{Cookie, SameSite};
use mercato_kit::http::RequestContext;
use mercato_kit::problem::Problem;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The cookie's name and the one path it is sent to.
pub const COOKIE: &str = "mercato_refresh";
pub const PATH: &str = "/api/v1/session";

/// Larger than any token answer; an auth answer past it is not a token answer.
const ANSWER_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct Sessions {
    pub proxy: Arc<Proxy>,
    /// How long the browser keeps the cookie: the refresh token's lifetime
    /// (`MERCATO_REFRESH_TOKEN_TTL_SECS`, as the auth service reads it).
    pub max_age: Duration,
}

/// `/api/v1/session` and `/api/v1/session/refresh`.
pub fn router(sessions: Sessions) -> Router {
    Router::new()
        .route(PATH, post(sign_in).delete(sign_out))
        .route(&format!("{PATH}/refresh"), post(refresh))
        .with_state(sessions)
}

async fn sign_in(State(s): State<Sessions>, ctx: RequestContext, req: Request) -> Response {
    if let Some(refused) = cross_site(req.headers()) {
        return refused;
    }
    let secure = wants_secure(req.headers());
    let (parts, body) = req.into_parts();
    let answer = ask_auth(&s, ctx, parts, "/api/v1/auth/login", body).await;
    into_session(&s, answer, secure).await
}

async fn refresh(State(s): State<Sessions>, ctx: RequestContext, req: Request) -> Response {
    if let Some(refused) = cross_site(req.headers()) {
        return refused;
    }
    let secure = wants_secure(req.headers());
    let Some(token) = refresh_token(req.headers()) else {
        return Problem::unauthorized("not signed in").into_response();
    };
    let (parts, _) = req.into_parts();
    let body = serde_json::json!({ "refresh_token": token }).to_string();
    let answer = ask_auth(&s, ctx, parts, "/api/v1/auth/refresh", Body::from(body)).await;
    if answer.status() == StatusCode::UNAUTHORIZED {
        return with_cookie(answer, clear_cookie(secure));
    }
    into_session(&s, answer, secure).await
}

async fn sign_out(State(s): State<Sessions>, ctx: RequestContext, req: Request) -> Response {
    if let Some(refused) = cross_site(req.headers()) {
        return refused;
    }
    let secure = wants_secure(req.headers());
    if let Some(token) = refresh_token(req.headers()) {
        let (parts, _) = req.into_parts();
        let body = serde_json::json!({ "refresh_token": token }).to_string();
        let answer = ask_auth(&s, ctx, parts, "/api/v1/auth/logout", Body::from(body)).await;
        if !answer.status().is_success() {
            // The cookie goes anyway; the token expires on its own.
            tracing::warn!(status = %answer.status(), "auth did not end the sign-in");
        }
    }
    with_cookie(StatusCode::NO_CONTENT.into_response(), clear_cookie(secure))
}

/// Sends `body` to the auth service's `path` with the caller's context (address, trace), but
/// neither its cookies nor its body headers.
async fn ask_auth(
    s: &Sessions,
    ctx: RequestContext,
    mut parts: axum::http::request::Parts,
    path: &'static str,
    body: Body,
) -> Response {
    let forwarded_body = parts.uri.path() == PATH && parts.method == Method::POST;
    parts.method = Method::POST;
    parts.uri = Uri::from_static(path);
    parts.headers.remove(header::COOKIE);
    parts.headers.remove(header::AUTHORIZATION);
    if !forwarded_body {
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    proxy::forward(
        State(s.proxy.clone()),
        ctx,
        Request::from_parts(parts, body),
    )
    .await
}

/// Turns the auth service's token answer into the page's answer plus the cookie; any other
/// answer (401, 429, 503 ...) passes through as it came.
async fn into_session(s: &Sessions, answer: Response, secure: bool) -> Response {
    if answer.status() != StatusCode::OK {
        return answer;
    }
    let bytes = match axum::body::to_bytes(answer.into_body(), ANSWER_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return Problem::internal(&format!("reading the auth answer: {e}")).into_response()
        }
    };
    let mut tokens: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return Problem::internal(&format!("the auth answer is not JSON: {e}")).into_response()
        }
    };
    let Some(Value::String(refresh)) = tokens
        .as_object_mut()
        .and_then(|t| t.remove("refresh_token"))
    else {
        return Problem::internal(&"the auth answer has no refresh token").into_response();
    };
    let cookie = Cookie::build((COOKIE, refresh))
        .path(PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(s.max_age.as_secs() as i64))
        .build();
    let mut res = axum::Json(tokens).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_cookie(res, cookie)
}

fn clear_cookie(secure: bool) -> Cookie<'static> {
    let mut c = Cookie::build((COOKIE, ""))
        .path(PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build();
    c.make_removal();
    c
}

fn with_cookie(mut res: Response, cookie: Cookie<'_>) -> Response {
    match HeaderValue::from_str(&cookie.to_string()) {
        Ok(v) => {
            res.headers_mut().append(header::SET_COOKIE, v);
            res
        }
        Err(_) => Problem::internal(&"the refresh token cannot be put in a cookie").into_response(),
    }
}

/// The refresh token from the request's cookies.
fn refresh_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE && !c.value().is_empty())
        .map(|c| c.value().to_owned())
}

/// Refuses requests another site made the browser send.
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    let site = headers.get("sec-fetch-site")?.to_str().ok()?;
    matches!(site, "cross-site" | "same-site").then(|| {
        Problem::forbidden("sessions are only handed to pages of this site").into_response()
    })
}

/// `Secure` unless the page was loaded over plain HTTP from this machine's own name
/// (`http://127.0.0.1:8080`, `http://localhost:8080`), where some browsers drop `Secure`
/// cookies. Anywhere else the shop is behind TLS, and a cookie that plain HTTP cannot carry
/// fails closed.
fn wants_secure(headers: &HeaderMap) -> bool {
    if headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_refresh_token_is_read_from_its_cookie_only() {
        let h = headers(&[("cookie", "a=1; mercato_refresh=abc.DEF-_9; b=2")]);
        assert_eq!(refresh_token(&h).as_deref(), Some("abc.DEF-_9"));
        assert_eq!(
            refresh_token(&headers(&[("cookie", "mercato_refreshx=1")])),
            None
        );
        assert_eq!(
            refresh_token(&headers(&[("cookie", "mercato_refresh=")])),
            None
        );
        assert_eq!(refresh_token(&HeaderMap::new()), None);
    }

    #[test]
    fn secure_except_plain_http_on_loopback() {
        for (host, secure) in [
            ("127.0.0.1:8080", false),
            ("localhost:8080", false),
            ("[::1]:8080", false),
            ("localhost", false),
            ("shop.example.com", true),
            ("10.0.0.5:8080", true),
            ("", true),
        ] {
            assert_eq!(wants_secure(&headers(&[("host", host)])), secure, "{host}");
        }
        assert!(wants_secure(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-proto", "https")
        ])));
    }

    #[test]
    fn other_sites_are_refused() {
        for (site, refused) in [
            ("same-origin", false),
            ("none", false),
            ("same-site", true),
            ("cross-site", true),
        ] {
            assert_eq!(
                cross_site(&headers(&[("sec-fetch-site", site)])).is_some(),
                refused,
                "{site}"
            );
        }
        assert!(cross_site(&HeaderMap::new()).is_none());
    }
}
