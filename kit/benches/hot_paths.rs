//! The kit's hot paths, one order's worth each: an event's envelope through JSON and back, an
//! idempotency key claimed (or only looked up) and finished with its answer, one event appended
//! to the outbox in a transaction. On SQLite (a temporary file, the services' settings), as `mercato up` runs them.
//! `cargo bench -p mercato-kit`; figures in docs/BENCHMARKS.md.

use axum::extract::FromRequestParts;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mercato_kit::db::{Db, Migrations};
use mercato_kit::events::{self, Envelope};
use mercato_kit::idempotency::IdempotencyKey;
use sqlx::migrate::Migrator;
use std::hint::black_box;

fn envelope() -> Envelope {
    let payload = serde_json::json!({
        "order_id": "0193a1c2-7c4e-7d1a-9a41-5b1f3c2d4e5f",
        "customer_id": "0193a1c2-7c4e-7d1a-9a41-5b1f3c2d4e60",
        "currency": "EUR",
        "total_cents": 4_998,
        "lines": [
            {"product_id": "0193a1c2-7c4e-7d1a-9a41-5b1f3c2d4e61", "quantity": 1, "unit_price_cents": 2_499},
            {"product_id": "0193a1c2-7c4e-7d1a-9a41-5b1f3c2d4e62", "quantity": 1, "unit_price_cents": 2_499}
        ]
    });
    let mut env = Envelope::new(
        "order",
        "order.created",
        "0193a1c2-7c4e-7d1a-9a41-5b1f3c2d4e5f",
        &payload,
    );
    env.correlation_id = Some("req-0193a1c2".into());
    env.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    env
}

fn envelope_json(c: &mut Criterion) {
    let env = envelope();
    let bytes = serde_json::to_vec(&env).unwrap();
    c.bench_function("envelope encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&env)).unwrap())
    });
    c.bench_function("envelope decode", |b| {
        b.iter(|| serde_json::from_slice::<Envelope>(black_box(&bytes)).unwrap())
    });
}

async fn sqlite(dir: &tempfile::TempDir) -> Db {
    let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
    let none = Migrations {
        sqlite: Migrator::DEFAULT,
        postgres: Migrator::DEFAULT,
    };
    Db::connect(&url, "bench", 4, &none).await.unwrap()
}

async fn key(n: u64) -> IdempotencyKey {
    let (mut parts, ()) = axum::http::Request::post("/api/v1/orders")
        .header("idempotency-key", format!("bench-{n}"))
        .body(())
        .unwrap()
        .into_parts();
    IdempotencyKey::from_request_parts(&mut parts, &())
        .await
        .unwrap()
}

fn storage(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = rt.block_on(sqlite(&dir));
    let body = serde_json::json!({"lines": [{"product_id": "p", "quantity": 2}]});
    let mut n = 0u64;
    c.bench_function("idempotency claim + finish (SQLite)", |b| {
        b.to_async(&rt).iter_batched(
            || {
                n += 1;
                n
            },
            |n| {
                let db = db.clone();
                let body = body.clone();
                async move {
                    let k = key(n).await;
                    let claim = k.claim(&db, "customer", &body).await.unwrap();
                    let tx = db.begin().await.unwrap();
                    claim
                        .finish(
                            tx,
                            axum::http::StatusCode::CREATED,
                            &serde_json::json!({"id": n}),
                        )
                        .await
                        .unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The form `POST /orders` uses: a read-only lookup, the record written in the effect's
    // transaction.
    c.bench_function("idempotency check + finish (SQLite)", |b| {
        b.to_async(&rt).iter_batched(
            || {
                n += 1;
                n
            },
            |n| {
                let db = db.clone();
                let body = body.clone();
                async move {
                    let k = key(n).await;
                    let checked = k.check(&db, "customer", &body).await.unwrap();
                    let tx = db.begin().await.unwrap();
                    checked
                        .finish(
                            tx,
                            axum::http::StatusCode::CREATED,
                            &serde_json::json!({"id": n}),
                        )
                        .await
                        .unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("outbox append + commit (SQLite)", |b| {
        b.to_async(&rt).iter(|| {
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                events::append(&mut tx, &envelope()).await.unwrap();
                tx.commit().await.unwrap();
            }
        })
    });
}

criterion_group!(benches, envelope_json, storage);
criterion_main!(benches);
