//! What a request carries from service to service: who asks under which correlation
//! ([`RequestContext`]), and the names of the headers the kit reads and writes.
//!
//! Plain data with no behaviour of its own, so the layers that pass it on (events stamp it into
//! envelopes, the HTTP client forwards it, metrics read a header) need not import the HTTP
//! skeleton that fills it in: [`crate::http`] mints it per request and extracts it for handlers.

use http::HeaderName;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// Who is asking and under which correlation, as the context middleware found or minted it.
/// Handlers pass it on to events and outgoing calls.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
    pub traceparent: String,
    pub client_ip: Option<std::net::IpAddr>,
}
