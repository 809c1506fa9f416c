//! RFC 9457 problem details: the one error format of every Mercato response.
//!
//! Every error a service returns becomes a `Problem` here, in one place. A 4xx says exactly what
//! is wrong; a 5xx is logged with its cause and answers an opaque body, so internal text never
//! reaches a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::borrow::Cow;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";
const TYPE_BASE: &str = "https://mercato.dev/problems/";

/// Marks a 503 as work shed on purpose by a service that is healthy but behind (as Envoy's
/// `x-envoy-overloaded` does), so callers' circuit breakers do not count it as a failure and
/// a caller passing the refusal on can say the same.
pub const OVERLOADED_HEADER: &str = "x-mercato-overloaded";

/// Whether an answer is a deliberate overload refusal (see [`OVERLOADED_HEADER`]).
pub fn is_overloaded(status: StatusCode, headers: &axum::http::HeaderMap) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key(OVERLOADED_HEADER)
}

pub use crate::validate::FieldError;

/// A problem details document. `code` is the stable, machine-readable part; `type` is the same
/// code as a URI, as RFC 9457 asks.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: Cow<'static, str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub code: Cow<'static, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        title: impl Into<Cow<'static, str>>,
    ) -> Self {
        let code = code.into();
        Problem {
            type_uri: format!("{TYPE_BASE}{code}"),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            code,
            errors: Vec::new(),
            retry_after_secs: None,
            extensions: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// Adds a member beside the standard ones (for example the lines that lack stock).
    pub fn with_extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    // The common problems, named once so every service spells them the same way.

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "The request is not valid",
        )
        .with_detail(detail)
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "The body is not valid JSON",
        )
        .with_detail(detail)
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = crate::validate::describe(&errors);
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "The request has invalid fields",
        )
        .with_detail(detail)
        .with_errors(errors)
    }

    /// A query string that does not parse; 400 rather than 422 because a query is not a body,
    /// with the same code the kit's `Query` extractor uses.
    pub fn invalid_query(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "The query string is not valid",
        )
        .with_detail(detail)
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        crate::validate::Invalid::field(field, message).into()
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication is required",
        )
        .with_detail(detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "You may not do this").with_detail(detail)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found").with_detail(what)
    }

    pub fn conflict(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            code,
            "The request conflicts with the current state",
        )
        .with_detail(detail)
    }

    pub fn too_many_requests(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many requests",
        )
        .with_detail(detail)
        .with_retry_after(retry_after_secs)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "The service is unavailable",
        )
        .with_detail(detail)
    }

    /// The service is behind and refuses new work for now (`Retry-After` says when to try
    /// again); marked with [`OVERLOADED_HEADER`].
    pub fn overloaded(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "The shop is busy; try again shortly",
        )
        .with_detail(detail)
        .with_retry_after(retry_after_secs)
    }

    /// An internal failure. The cause is logged here and never sent to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
        .with_detail("The server failed to handle the request; it has been logged.")
    }

    /// The problem a framework-produced error status should have been, when a layer or an
    /// extractor answered with plain text. 5xx text is dropped; 4xx text is short and safe.
    pub fn for_status(status: StatusCode, text: Option<String>) -> Self {
        let (code, title): (&'static str, &'static str) = match status {
            StatusCode::BAD_REQUEST => ("bad_request", "The request is not valid"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "Authentication is required"),
            StatusCode::FORBIDDEN => ("forbidden", "You may not do this"),
            StatusCode::NOT_FOUND => ("not_found", "Not found"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method_not_allowed", "Method not allowed on this route")
            }
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "The request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "The request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "Send the body as application/json",
            ),
            StatusCode::UNPROCESSABLE_ENTITY => {
                ("validation_failed", "The request has invalid fields")
            }
            StatusCode::TOO_MANY_REQUESTS => ("too_many_requests", "Too many requests"),
            StatusCode::SERVICE_UNAVAILABLE => {
                ("service_unavailable", "The service is unavailable")
            }
            StatusCode::GATEWAY_TIMEOUT => ("timeout", "The request timed out"),
            s if s.is_server_error() => ("internal", "Internal server error"),
            _ => ("error", "The request failed"),
        };
        let mut p = Problem::new(status, code, title);
        if status.is_client_error() {
            if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
                p.detail = Some(t.chars().take(500).collect());
            }
        }
        p
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

/// The `code` of the problem a response carries, kept beside the body for middleware.
#[derive(Clone, Debug)]
pub struct ProblemCode(pub Cow<'static, str>);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut res = (status, body).into_response();
        // For the layers that count outcomes by code (the metrics layer).
        res.extensions_mut().insert(ProblemCode(self.code.clone()));
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && self.code == "overloaded" {
            headers.insert(OVERLOADED_HEADER, HeaderValue::from_static("true"));
        }
        res
    }
}

/// Bad fields found by a domain's checks: a 422 naming each.
impl From<crate::validate::Invalid> for Problem {
    fn from(e: crate::validate::Invalid) -> Self {
        Problem::validation(e.0)
    }
}

/// Defined here rather than in `validate` (inherent methods may live anywhere in their crate):
/// `validate` is plain data beneath this module and does not know the problem document.
impl crate::validate::Errors {
    /// `Ok` when nothing was recorded, else a 422 problem naming every field; for code that
    /// answers HTTP itself (a handler), where [`Errors::check`](crate::validate::Errors::check)
    /// would only be mapped at once.
    pub fn finish(self) -> Result<(), Problem> {
        self.check().map_err(Problem::from)
    }
}

/// Storage errors are internal unless a service maps them to something more precise first.
impl From<crate::db::Error> for Problem {
    fn from(e: crate::db::Error) -> Self {
        Problem::internal(&e)
    }
}

impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Self {
        Problem::internal(&format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_never_echo_their_text() {
        let p = Problem::for_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("db password is hunter2".into()),
        );
        assert!(p.detail.is_none());
        let p = Problem::for_status(StatusCode::BAD_REQUEST, Some("bad query".into()));
        assert_eq!(p.detail.as_deref(), Some("bad query"));
    }

    #[test]
    fn type_is_the_code_as_uri() {
        let p = Problem::conflict("insufficient_stock", "x");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "https://mercato.dev/problems/insufficient_stock");
        assert_eq!(v["code"], "insufficient_stock");
        assert_eq!(v["status"], 409);
    }
}
