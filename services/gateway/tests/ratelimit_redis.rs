//! Rate limits in Redis: a burst passes and then the bucket is empty, with a wait that says
//! when a token is back; two gateway replicas draw from one bucket; a bucket refills; and a
//! Redis that refuses connections or never answers leaves the decisions to each replica's
//! memory, promptly, counted in `gateway_ratelimit_fallbacks_total`.
//!
//! The tests that need Redis are ignored unless run with `--include-ignored` and
//! `MERCATO_TEST_REDIS_URL` (for example `redis://127.0.0.1:6379`), as CI's backend tier does;
//! each works under a key prefix of its own that it deletes when done. The fallback tests need
//! no Redis.

use mercato_gateway::ratelimit::{fallback_counter, Limit, RateLimit, RedisRateLimit};
use mercato_kit::redis as redis_conn;
use mercato_kit::testing::{backend, RedisKeys};
use prometheus::{IntCounter, Registry};
use std::time::{Duration, Instant};

/// The test Redis and a prefix of this test's own.
fn test_redis() -> (String, RedisKeys) {
    let url = backend("MERCATO_TEST_REDIS_URL");
    let keys = RedisKeys::new(
        &url,
        format!("test:gateway:{}:", uuid::Uuid::new_v4().simple()),
    );
    (url, keys)
}

fn counter() -> IntCounter {
    fallback_counter(&Registry::new()).unwrap()
}

/// One gateway replica's limiter: a connection of its own.
fn replica(url: &str, prefix: &str, limit: Limit, fallbacks: &IntCounter) -> RedisRateLimit {
    RedisRateLimit::new(
        redis_conn::connect(url).unwrap(),
        prefix,
        limit,
        fallbacks.clone(),
    )
}

const TWO_PER_SEC: Limit = Limit {
    per_second: 2,
    burst: 3,
};

#[tokio::test]
#[ignore = "needs MERCATO_TEST_REDIS_URL (CI's backend tier)"]
async fn a_burst_passes_then_the_bucket_is_empty_until_a_token_is_back() {
    let (url, keys) = test_redis();
    let fallbacks = counter();
    let l = replica(&url, &keys.prefix, TWO_PER_SEC, &fallbacks);
    for i in 0..3 {
        assert_eq!(l.check("ip:a").await, Ok(()), "request {i} of the burst");
    }
    let wait = l.check("ip:a").await.unwrap_err();
    // One token comes back every 500 ms.
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    assert_eq!(
        l.check("ip:b").await,
        Ok(()),
        "another key has its own bucket"
    );

    // Refused requests take nothing; once the wait is over, a token is there again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = 0;
    loop {
        match l.check("ip:a").await {
            Ok(()) => break,
            Err(wait) => {
                refused += 1;
                assert!(Instant::now() < deadline, "no token came back");
                // The limiter says how long; waiting that long is the point of the test.
                tokio::time::sleep(wait).await;
            }
        }
    }
    assert!(refused >= 1);
    assert!(l.check("ip:a").await.is_err(), "and only the one token");
    assert_eq!(fallbacks.get(), 0, "Redis decided every request");
}

#[tokio::test]
#[ignore = "needs MERCATO_TEST_REDIS_URL (CI's backend tier)"]
async fn two_replicas_draw_from_one_bucket() {
    let (url, keys) = test_redis();
    let fallbacks = counter();
    let slow = Limit {
        per_second: 1,
        burst: 4,
    };
    let a = replica(&url, &keys.prefix, slow, &fallbacks);
    let b = replica(&url, &keys.prefix, slow, &fallbacks);
    assert_eq!(a.check("user:u1").await, Ok(()));
    assert_eq!(b.check("user:u1").await, Ok(()));
    assert_eq!(a.check("user:u1").await, Ok(()));
    assert_eq!(b.check("user:u1").await, Ok(()));
    // Four between them: the bucket is empty for both, as it would be for one replica.
    let wait_b = b.check("user:u1").await.unwrap_err();
    let wait_a = a.check("user:u1").await.unwrap_err();
    assert!(wait_a <= Duration::from_secs(1) && wait_b <= Duration::from_secs(1));
    // Each replica alone would still have let these through.
    assert_eq!(a.check("user:u2").await, Ok(()));
    assert_eq!(fallbacks.get(), 0);

    // A third replica with another prefix (another shop on the same Redis) shares nothing.
    let other = replica(&url, &format!("{}other:", keys.prefix), slow, &fallbacks);
    assert_eq!(other.check("user:u1").await, Ok(()));
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A server that takes connections and never answers.
async fn silent_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = l.accept().await {
            held.push(socket);
        }
    });
    port
}

/// With Redis out of reach, a limiter still decides every request promptly, with the
/// replica's own buckets, and counts each such decision.
async fn decided_in_memory(url: &str) {
    let fallbacks = counter();
    let l = replica(url, "test:unreachable:", TWO_PER_SEC, &fallbacks);
    for i in 0..3 {
        let t = Instant::now();
        assert_eq!(l.check("ip:a").await, Ok(()), "request {i} of the burst");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    let wait = l.check("ip:a").await.unwrap_err();
    assert!(wait <= Duration::from_millis(500), "{wait:?}");
    assert_eq!(l.check("ip:b").await, Ok(()));
    assert_eq!(fallbacks.get(), 5);
}

#[tokio::test]
async fn a_redis_that_refuses_connections_leaves_the_decisions_to_memory() {
    decided_in_memory(&format!("redis://127.0.0.1:{}", closed_port().await)).await;
}

#[tokio::test]
async fn a_redis_that_never_answers_leaves_the_decisions_to_memory_within_the_budget() {
    decided_in_memory(&format!("redis://127.0.0.1:{}", silent_server().await)).await;
}

#[test]
fn the_fallback_counter_is_exported_under_its_name() {
    let registry = Registry::new();
    let c = fallback_counter(&registry).unwrap();
    c.inc();
    let families = registry.gather();
    assert_eq!(families.len(), 1);
    assert_eq!(families[0].name(), "gateway_ratelimit_fallbacks_total");
}
