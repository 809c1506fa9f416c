//! What a call answers: a whole [`Response`] when the dependency answered anything but a
//! failure, else an [`Error`] that names the dependency and says whether an attempt was made.

use axum::body::Bytes;
use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// A whole answer: status, headers and body, read within the timeout.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{dependency}: circuit breaker open")]
    BreakerOpen { dependency: Arc<str> },
    #[error("{dependency}: too many calls in flight")]
    BulkheadFull { dependency: Arc<str> },
    #[error("{dependency}: no answer within {after:?}")]
    Timeout {
        dependency: Arc<str>,
        after: Duration,
    },
    #[error("{dependency}: cannot connect: {message}")]
    Connect {
        dependency: Arc<str>,
        message: String,
    },
    /// The exchange broke after connecting (reset, closed, malformed answer).
    #[error("{dependency}: exchange failed: {message}")]
    Transport {
        dependency: Arc<str>,
        message: String,
    },
    /// A 5xx or a 429, after whatever retries were allowed.
    #[error("{dependency}: answered {}", response.status)]
    Status {
        dependency: Arc<str>,
        response: Response,
    },
    /// The request could not be built (a bad URL, a bad header): a bug of the caller.
    #[error("{dependency}: invalid request: {message}")]
    Invalid {
        dependency: Arc<str>,
        message: String,
    },
}

impl Error {
    pub fn dependency(&self) -> &str {
        match self {
            Error::BreakerOpen { dependency }
            | Error::BulkheadFull { dependency }
            | Error::Timeout { dependency, .. }
            | Error::Connect { dependency, .. }
            | Error::Transport { dependency, .. }
            | Error::Status { dependency, .. }
            | Error::Invalid { dependency, .. } => dependency,
        }
    }

    /// The status of the answer, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Status { response, .. } => Some(response.status),
            _ => None,
        }
    }
}
