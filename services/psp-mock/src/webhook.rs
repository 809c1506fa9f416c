//! Signed webhooks to the payment service, delivered in the background.
//!
//! A real processor tells the merchant about asynchronous outcomes by webhook, retries when the
//! merchant is down, and signs each delivery; the payment service must be built against exactly
//! that, so the mock does the same. Handlers only enqueue ([`Webhooks::send`]): delivery runs in
//! the service's background task ([`Dispatcher::run`]), so a slow or dead receiver never holds
//! up a request, and shutdown stops the retries.
//!
//! Every attempt of one event carries the same event id and body (receivers deduplicate on the
//! id) and a fresh signature timestamp (receivers refuse stale ones).
//!
//! Processor chaos (see `chaos`) acts here, where events are taken off the queue: a duplicated
//! event is delivered twice, concurrently, as two deliveries with the same body; while
//! reordering is on, events are held for the profile's window and then delivered one after the
//! other, newest first, each acknowledged before the next is offered, so the receiver sees
//! them in exactly that order.

use crate::chaos::{Kind, ProcessorChaos};
use mercato_kit::config::Secret;
use mercato_kit::contracts::webhook as signature;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// How many times one event is offered before it is given up (logged).
const ATTEMPTS: u32 = 5;
/// The wait before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most events held back for reordering; a full hold is sent at once, so a burst of events
/// cannot pile up without bound.
const MAX_HELD: usize = 100;

/// The body of a webhook.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Event {
    /// `evt_<32 hex>`, new per event, the same on every retry of it.
    pub id: String,
    /// `payment.succeeded` or `payment.failed`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix seconds when the event happened.
    pub created: i64,
    pub data: EventData,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventData {
    pub provider_ref: String,
    pub status: &'static str,
    pub amount_cents: u64,
    pub currency: String,
    pub reference: String,
}

/// The sending side, held by the processor.
#[derive(Clone)]
pub struct Webhooks {
    queue: Option<mpsc::UnboundedSender<Event>>,
    delivered: Arc<AtomicU64>,
}

impl Webhooks {
    /// Queues an event for delivery; without a configured URL it is dropped (and said so), as
    /// a processor account without a webhook endpoint would.
    pub fn send(&self, event: Event) {
        match &self.queue {
            Some(q) => {
                // The receiver lives as long as the service; after shutdown there is nobody
                // left to deliver to.
                if q.send(event).is_err() {
                    tracing::debug!("webhook dispatcher stopped; event dropped");
                }
            }
            None => tracing::debug!(event = %event.id, "no webhook URL configured; event not sent"),
        }
    }

    /// Deliveries acknowledged by the receiver with a 2xx (a duplicated event counts twice).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// The delivering side, run as the service's background task.
pub struct Dispatcher {
    queue: Option<(mpsc::UnboundedReceiver<Event>, Endpoint)>,
    chaos: Arc<ProcessorChaos>,
}

#[derive(Clone)]
struct Endpoint {
    url: String,
    secret: Secret,
    client: reqwest::Client,
    delivered: Arc<AtomicU64>,
}

/// The two halves of webhook delivery for an optional endpoint; `chaos` says which deliveries
/// to duplicate or reorder.
pub fn channel(
    url: Option<String>,
    secret: Secret,
    chaos: Arc<ProcessorChaos>,
) -> anyhow::Result<(Webhooks, Dispatcher)> {
    let delivered = Arc::new(AtomicU64::new(0));
    let Some(url) = url else {
        return Ok((
            Webhooks {
                queue: None,
                delivered,
            },
            Dispatcher { queue: None, chaos },
        ));
    };
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let endpoint = Endpoint {
        url,
        secret,
        client,
        delivered: delivered.clone(),
    };
    Ok((
        Webhooks {
            queue: Some(tx),
            delivered,
        },
        Dispatcher {
            queue: Some((rx, endpoint)),
            chaos,
        },
    ))
}

impl Dispatcher {
    /// Delivers queued events, each in its own task so one dead receiver's retries do not
    /// delay the next event, until `stop` fires; deliveries still retrying then are abandoned.
    pub async fn run(self, stop: CancellationToken) {
        let chaos = self.chaos;
        let Some((mut rx, endpoint)) = self.queue else {
            return;
        };
        let mut deliveries = JoinSet::new();
        let mut held = Held::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = rx.recv() => match event {
                    Some(event) => {
                        let plan = chaos.plan_delivery();
                        let copies = if plan.duplicate {
                            chaos.record(Kind::WebhookDuplicate);
                            tracing::debug!(event = %event.id, "chaos: delivering an event twice");
                            vec![event.clone(), event]
                        } else {
                            vec![event]
                        };
                        match plan.hold {
                            Some(window) => {
                                held.hold(copies, window);
                                if held.events.len() >= MAX_HELD {
                                    release(&chaos, &mut held, &mut deliveries, &endpoint);
                                }
                            }
                            None => {
                                for copy in copies {
                                    deliveries.spawn(deliver(endpoint.clone(), copy));
                                }
                            }
                        }
                    }
                    None => break,
                },
                _ = held.due(), if held.until.is_some() => {
                    release(&chaos, &mut held, &mut deliveries, &endpoint);
                }
                // Reap finished deliveries so the set does not grow without bound.
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            }
        }
        if !held.events.is_empty() {
            tracing::warn!(
                abandoned = held.events.len(),
                "stopping with webhook deliveries held back by chaos"
            );
        }
        if !deliveries.is_empty() {
            tracing::warn!(
                abandoned = deliveries.len(),
                "stopping with webhook deliveries still retrying"
            );
        }
    }
}

/// Sends what was held, newest first, one delivery after the other.
fn release(
    chaos: &ProcessorChaos,
    held: &mut Held,
    deliveries: &mut JoinSet<()>,
    endpoint: &Endpoint,
) {
    let mut batch = std::mem::take(&mut held.events);
    held.until = None;
    batch.reverse();
    if batch.len() > 1 {
        // Each held delivery of a reversed batch reached the receiver out of its order.
        for _ in &batch {
            chaos.record(Kind::WebhookReorder);
        }
        tracing::debug!(
            events = batch.len(),
            "chaos: delivering held webhooks newest first"
        );
    }
    let endpoint = endpoint.clone();
    deliveries.spawn(async move {
        for event in batch {
            deliver(endpoint.clone(), event).await;
        }
    });
}

/// Deliveries held back for reordering, and when they are due.
#[derive(Default)]
struct Held {
    events: Vec<Event>,
    until: Option<Instant>,
}

impl Held {
    /// Holds events; the window starts with the first event held.
    fn hold(&mut self, events: Vec<Event>, window: Duration) {
        self.until.get_or_insert_with(|| Instant::now() + window);
        self.events.extend(events);
    }

    async fn due(&self) {
        match self.until {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    }
}

async fn deliver(endpoint: Endpoint, event: Event) {
    let body = match serde_json::to_vec(&event) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "webhook event does not serialize");
            return;
        }
    };
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let now = chrono::Utc::now().timestamp();
        let header = signature::sign(endpoint.secret.expose().as_bytes(), now, &body);
        let result = endpoint
            .client
            .post(&endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::HEADER, header)
            .body(body.clone())
            .send()
            .await;
        let failure = match result {
            Ok(res) if res.status().is_success() => {
                endpoint.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = %event.id, kind = event.kind, attempt, "webhook delivered");
                return;
            }
            Ok(res) => format!("answered {}", res.status()),
            Err(e) => e.to_string(),
        };
        if attempt == ATTEMPTS {
            tracing::warn!(event = %event.id, attempt, %failure, "webhook given up");
            return;
        }
        tracing::info!(event = %event.id, attempt, %failure, retry_in_ms = backoff.as_millis() as u64, "webhook failed; will retry");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}
