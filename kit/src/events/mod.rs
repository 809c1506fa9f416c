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
pub use relay::Relay;

use crate::context::RequestContext;
use crate::db::Tx;
use crate::time::{now_us, to_rfc3339};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The span of handling an event: a child of the envelope's trace context, so the consumer's
/// work hangs under the producer's in one trace. Events it writes take it as their parent.
/// (Consumers are named after their service.)
pub fn process_span(consumer: &str, env: &Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "event.process",
        otel.name = %format!("process {}", env.event_type),
        otel.kind = "consumer",
        service = %consumer,
        consumer = %consumer,
        event_id = %env.event_id,
        event_type = %env.event_type,
        aggregate_id = %env.aggregate_id,
        messaging.operation.type = "process",
        messaging.message.id = %env.event_id,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, env.traceparent.as_deref());
    span
}

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

/// The domains of what `consumer` subscribes to, each with its event types, after checking
/// that the names can be spelled on every bus (`broker` names the bus in the error).
pub(crate) fn subscription_domains<'a>(
    broker: &str,
    consumer: &str,
    event_types: &[&'a str],
) -> anyhow::Result<std::collections::BTreeMap<&'a str, Vec<&'a str>>> {
    anyhow::ensure!(
        is_name_part(consumer),
        "the consumer name {consumer:?} is not a {broker} name part (letters, digits, '-' and '_')"
    );
    anyhow::ensure!(!event_types.is_empty(), "no event types to subscribe to");
    let mut by_domain: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for t in event_types {
        by_domain.entry(domain_of(t)?).or_default().push(*t);
    }
    Ok(by_domain)
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
    pub fn caused_by_event(self, cause: &Envelope) -> Self {
        Cause::of_event(cause).stamp(self)
    }

    /// Carries the request's correlation id and trace context into the event.
    pub fn caused_by_request(self, ctx: &RequestContext) -> Self {
        Cause::of_request(ctx).stamp(self)
    }
}

/// Why something happened, carried into the events it leads to: the correlation id and trace
/// context they continue, and the event that caused them. Plain data, so a use case takes one
/// whoever calls it (a request, an event handler, a sweeper or worker), and work queued for
/// later can store it and stamp its events when it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cause {
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
    /// The event that caused this one, when an event did.
    pub causation_id: Option<Uuid>,
}

impl Cause {
    /// An HTTP request: its correlation id and trace context.
    pub fn of_request(ctx: &RequestContext) -> Cause {
        Cause {
            correlation_id: Some(ctx.correlation_id.clone()),
            traceparent: Some(ctx.traceparent.clone()),
            causation_id: None,
        }
    }

    /// An incoming event: its correlation and trace, and itself as the causation.
    pub fn of_event(env: &Envelope) -> Cause {
        Cause {
            correlation_id: env.correlation_id.clone(),
            traceparent: env.traceparent.clone(),
            causation_id: Some(env.event_id),
        }
    }

    /// The same cause, continued from the span running now when there is one: work queued now
    /// and done later then hangs under the span that queued it.
    pub fn in_current_span(self) -> Cause {
        Cause {
            traceparent: crate::telemetry::current_traceparent().or(self.traceparent),
            ..self
        }
    }

    /// `env` carrying this cause (its correlation id, trace context and causation id).
    pub fn stamp(&self, env: Envelope) -> Envelope {
        Envelope {
            correlation_id: self.correlation_id.clone(),
            traceparent: self.traceparent.clone(),
            causation_id: self.causation_id,
            ..env
        }
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

#[cfg(test)]
mod cause_tests {
    use super::*;

    #[test]
    fn a_cause_stamps_what_it_carries_and_nothing_else() {
        let incoming = Envelope {
            correlation_id: Some("corr".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..Envelope::new("order", "order.created", "o", &())
        };
        let next = Cause::of_event(&incoming).stamp(Envelope::new(
            "inventory",
            "inventory.reserved",
            "o",
            &(),
        ));
        assert_eq!(next.correlation_id, incoming.correlation_id);
        assert_eq!(next.traceparent, incoming.traceparent);
        assert_eq!(next.causation_id, Some(incoming.event_id));
        assert_eq!(next.event_type, "inventory.reserved");

        let ctx = RequestContext {
            request_id: "r".into(),
            correlation_id: "c".into(),
            traceparent: "t".into(),
            client_ip: None,
        };
        let by_request =
            Cause::of_request(&ctx).stamp(Envelope::new("order", "order.created", "o", &()));
        assert_eq!(
            (
                by_request.correlation_id.as_deref(),
                by_request.traceparent.as_deref(),
                by_request.causation_id
            ),
            (Some("c"), Some("t"), None)
        );

        // Outside any span the cause keeps its own trace.
        assert_eq!(
            Cause::of_event(&incoming).in_current_span(),
            Cause::of_event(&incoming)
        );
        assert_eq!(Cause::default().stamp(incoming.clone()).causation_id, None);
    }
}
