//! The event envelope every service publishes, and the outbox that makes publishing safe.
//!
//! A producer appends its events to its own `outbox` table inside the transaction that changes
//! its state, so an event exists exactly when its change was committed (invariant 5: no event is
//! lost). A relay publishes outbox rows afterwards, in `seq` order.

pub mod bus;
pub mod consumer;
pub mod kafka;
pub mod nats;
pub mod relay;

pub use bus::{Bus, Delivery, EmbeddedBus, Subscription};
pub use consumer::{Consumer, EventHandler};
pub use kafka::{KafkaBus, KafkaOptions};
pub use nats::{NatsBus, NatsOptions};
pub use relay::{OutboxWaker, Relay};

use crate::db::Tx;
use crate::http::RequestContext;
use crate::time::{now_us, to_rfc3339};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The domain of an event type: its first part (`order` of `order.created`). The bus adapters
/// name streams, subjects and topics after it.
pub(crate) fn domain_of(event_type: &str) -> anyhow::Result<&str> {
    let mut parts = event_type.split('.');
    let domain = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    if !is_name_part(domain) || rest.is_empty() || !rest.iter().all(|t| is_name_part(t)) {
        anyhow::bail!(
            "the event type {event_type:?} is not <domain>.<name> made of letters, digits, '-' and '_'"
        );
    }
    Ok(domain)
}

/// A part of a name on every bus: a NATS subject token, a part of a Kafka topic or group name
/// (both allow more; the dot separates parts).
pub(crate) fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An event as it travels between services.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub aggregate_id: String,
    pub occurred_at: String,
    pub producer: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<Uuid>,
    pub traceparent: Option<String>,
    /// The payload schema version; consumers refuse versions they do not know.
    pub version: u32,
    pub payload: serde_json::Value,
}

impl Envelope {
    pub fn new<P: Serialize>(
        producer: &str,
        event_type: &str,
        aggregate_id: impl ToString,
        payload: &P,
    ) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            aggregate_id: aggregate_id.to_string(),
            occurred_at: to_rfc3339(now_us()),
            producer: producer.to_owned(),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            version: 1,
            payload: serde_json::to_value(payload).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Marks this event as caused by `cause`: same correlation and trace, `causation_id` set.
    pub fn caused_by_event(mut self, cause: &Envelope) -> Self {
        self.correlation_id = cause.correlation_id.clone();
        self.traceparent = cause.traceparent.clone();
        self.causation_id = Some(cause.event_id);
        self
    }

    /// Carries the request's correlation id and trace context into the event.
    pub fn caused_by_request(mut self, ctx: &RequestContext) -> Self {
        self.correlation_id = Some(ctx.correlation_id.clone());
        self.traceparent = Some(ctx.traceparent.clone());
        self
    }
}

/// Appends an event to the outbox within the caller's transaction.
///
/// The event's trace context becomes the span that writes it (the request, the event handler,
/// the job), so whoever handles it is that span's child; outside any span it keeps its cause's.
pub async fn append(tx: &mut Tx, env: &Envelope) -> Result<(), crate::db::Error> {
    let stamped;
    let env = match crate::telemetry::current_traceparent() {
        Some(tp) if env.traceparent.as_deref() != Some(tp.as_str()) => {
            stamped = Envelope {
                traceparent: Some(tp),
                ..env.clone()
            };
            &stamped
        }
        _ => env,
    };
    let body = serde_json::to_string(env).map_err(|e| crate::db::Error::Encode(Box::new(e)))?;
    crate::db::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_id, envelope, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(env.event_id.to_string())
    .bind(&env.event_type)
    .bind(&env.aggregate_id)
    .bind(body)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Reads outbox rows not yet published, oldest first (for the relay and for tests).
pub async fn pending(
    pool: &crate::db::Pool,
    limit: i64,
) -> Result<Vec<(i64, Envelope)>, crate::db::Error> {
    let rows = crate::db::query(
        "SELECT seq, envelope FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let seq: i64 = r.try_get("seq")?;
            let text: String = r.try_get("envelope")?;
            let env =
                serde_json::from_str(&text).map_err(|e| crate::db::Error::Decode(Box::new(e)))?;
            Ok((seq, env))
        })
        .collect()
}
