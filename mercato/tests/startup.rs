//! Starting before the database is reachable: the service waits, answers live but not ready
//! meanwhile, and serves once the database answers. It never exits on its own.
//!
//! Needs `MERCATO_TEST_DATABASE_URL` (a PostgreSQL server to put a gate in front of): ignored
//! otherwise, run by CI's backend tier with `--include-ignored`.

mod support;

use mercato_kit::config::Env;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use support::eventually;

#[tokio::test]
#[ignore = "needs MERCATO_TEST_DATABASE_URL (CI's backend tier)"]
async fn a_service_waits_for_its_database_and_says_it_is_not_ready() {
    let pg = mercato_kit::testing::backend("MERCATO_TEST_DATABASE_URL");
    let (admin_url, db_url) = support::fresh_pg_database(&pg).await;
    let authority = support::pg_authority(&db_url);
    let (gate_port, gate) = support::gate(authority.clone(), false).await;
    let gated_url = db_url.replacen(&authority, &format!("127.0.0.1:{gate_port}"), 1);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_pairs([
        ("MERCATO_DATA_DIR", dir.path().display().to_string()),
        ("MERCATO_DATABASE_URL", gated_url),
        ("MERCATO_CATALOG_PORT", port.to_string()),
        ("MERCATO_SERVICE_SECRET", "startup-secret".into()),
    ]);
    let stop = tokio_util::sync::CancellationToken::new();
    let starting = tokio::spawn({
        let stop = stop.clone();
        async move { mercato::stack::start_until(env, &["catalog"], stop).await }
    });
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    // Up, waiting: live, not ready, requests answered 503 with a problem.
    eventually(Duration::from_secs(10), || async {
        let r = http.get(format!("{base}/health/live")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "starting");
    let res = http
        .get(format!("{base}/api/v1/products"))
        .send()
        .await
        .unwrap();
    support::problem(res, 503).await;
    assert!(!starting.is_finished(), "it waits, it does not give up");

    // The database comes up: the service follows.
    gate.send_replace(true);
    eventually(Duration::from_secs(30), || async {
        let r = http.get(format!("{base}/health/ready")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let res = http
        .get(format!("{base}/api/v1/products"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let stack = starting.await.unwrap().expect("started");
    stack.stop().await.unwrap();
    support::drop_pg_database(&admin_url, &db_url).await;
}

#[tokio::test]
async fn a_stop_while_waiting_ends_the_start_with_an_error() {
    // Nothing listens on this port: the database never comes.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, catalog_port) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_pairs([
        ("MERCATO_DATA_DIR", dir.path().display().to_string()),
        (
            "MERCATO_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/nothing"),
        ),
        ("MERCATO_CATALOG_PORT", catalog_port.to_string()),
        ("MERCATO_SERVICE_SECRET", "startup-secret".into()),
    ]);
    let stop = tokio_util::sync::CancellationToken::new();
    let starting = tokio::spawn({
        let stop = stop.clone();
        async move { mercato::stack::start_until(env, &["catalog"], stop).await }
    });
    // Its port says "starting" while it retries; it has not given up on its own.
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(10), || async {
        let r = http
            .get(format!("http://127.0.0.1:{catalog_port}/health/ready"))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(!starting.is_finished());
    stop.cancel();
    let err = match starting.await.unwrap() {
        Ok(_) => panic!("a start without a database cannot succeed"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("stopped while"), "{err}");
}
