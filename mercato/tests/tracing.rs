//! One checkout is one trace. Every service exports its spans over OTLP (HTTP/protobuf) to a
//! receiver in this test (an axum route decoding `opentelemetry-proto`), and a checkout through
//! the gateway must come back as one trace id with spans from the gateway, order, inventory and
//! payment (its worker's processor call included), every parent link intact across HTTP and
//! across the bus. On SQLite and the embedded bus by default, on PostgreSQL + NATS with the
//! `MERCATO_TEST_*` variables.
//!
//! Its own test binary: a process has one tracer, set up once, here with the receiver's URL.

mod support;

use axum::body::Bytes;
use mercato_kit::telemetry::{self, Settings};
use mercato_kit::testing::eventually;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use support::{Shop, WAIT};

#[derive(Clone, Debug)]
struct Received {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    service: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP/HTTP traces endpoint that keeps what it is sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let keep = keep.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut keep = keep.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            keep.push(Received {
                                trace_id: hex(&s.trace_id),
                                span_id: hex(&s.span_id),
                                parent_span_id: hex(&s.parent_span_id),
                                name: s.name,
                                service: service.clone(),
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_from_the_gateway_to_the_payment_worker() {
    let (url, got) = receiver().await;
    let telemetry = Arc::new(telemetry::init_with(Settings {
        traces_endpoint: Some(format!("{url}/v1/traces")),
        log_filter: Some("warn".into()),
        pretty: Some(false),
        ..Settings::default()
    }));
    assert!(telemetry.exporting());

    let shop = Shop::open(&[]).await;
    let product = shop.product(1500, 10).await;
    let res = shop
        .t
        .http
        .post(shop.t.api("gateway", "/orders"))
        .bearer_auth(&shop.customer)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"items": [{"product_id": product, "quantity": 1}],
            "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let traceparent = res.headers()["traceparent"].to_str().unwrap().to_owned();
    let trace_id = traceparent.split('-').nth(1).unwrap().to_owned();
    let order: serde_json::Value = res.json().await.unwrap();
    shop.status_becomes(order["id"].as_str().unwrap(), "PAID")
        .await;

    // Spans arrive in batches; flush until the whole trace is in, parents and all.
    let spans = eventually(WAIT, || {
        let telemetry = telemetry.clone();
        let got = got.clone();
        let trace_id = trace_id.clone();
        async move {
            tokio::task::spawn_blocking(move || telemetry.flush())
                .await
                .unwrap();
            let spans: Vec<Received> = got
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
            let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
            let complete = ["gateway", "order", "inventory", "payment"]
                .iter()
                .all(|s| services.contains(s))
                && spans.iter().any(|s| s.name == "processor authorize")
                && spans.iter().any(|s| s.name == "process payment.authorized")
                && spans
                    .iter()
                    .any(|s| s.name == "transaction" && s.service == "order")
                && spans.iter().all(|s| {
                    s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str())
                });
            complete.then_some(spans)
        }
    })
    .await;

    // One root: the gateway's server span (the client sent no traceparent).
    let roots: Vec<&Received> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].service, "gateway");
    assert!(roots[0].name.starts_with("POST "), "{roots:#?}");

    // Across the bus: the consumer's span hangs under the producer's.
    let by_id = |id: &str| spans.iter().find(|s| s.span_id == id).unwrap();
    let reserved = spans
        .iter()
        .find(|s| s.name == "process order.created" && s.service == "inventory")
        .expect("inventory handled order.created in this trace");
    assert_eq!(by_id(&reserved.parent_span_id).service, "order");
    let authorized = spans
        .iter()
        .find(|s| s.name == "process payment.authorized" && s.service == "order")
        .expect("order handled payment.authorized in this trace");
    assert_eq!(by_id(&authorized.parent_span_id).service, "payment");
    // The worker's processor call, under the payment handler that queued it.
    let call = spans
        .iter()
        .find(|s| s.name == "processor authorize")
        .unwrap();
    assert_eq!(call.service, "payment");
    assert_eq!(
        by_id(&call.parent_span_id).name,
        "process inventory.reserved"
    );
    // SQL transactions are spans of their own, under the work that opened them: the order's
    // insert under the order service's request.
    let insert = spans
        .iter()
        .find(|s| s.name == "transaction" && s.service == "order")
        .unwrap();
    assert_eq!(by_id(&insert.parent_span_id).service, "order");
    assert_ne!(by_id(&insert.parent_span_id).name, "transaction");
    shop.t.stop().await;
}
