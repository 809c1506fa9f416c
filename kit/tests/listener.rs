//! The listener on a real socket: a client that sends nothing, a slow head, an idle
//! keep-alive and a slow body are let go within the configured time, one address cannot hold
//! more than its share of connections, and meanwhile normal clients are served, long
//! streamed answers included.

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use axum::Router;
use mercato_kit::http::{HttpSettings, Json};
use mercato_kit::server::ConnectionLimits;
use mercato_kit::testing::{bare_service, eventually, serve};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const HEADER: Duration = Duration::from_millis(400);
const IDLE: Duration = Duration::from_millis(700);
const BODY: Duration = Duration::from_millis(400);
/// Far longer than any timeout above: a connection still open then was never let go.
const NEVER: Duration = Duration::from_secs(10);

struct App {
    addr: std::net::SocketAddr,
    base: String,
    stop: CancellationToken,
}

async fn app(max_per_address: Option<usize>) -> App {
    let api = Router::new()
        .route("/api/v1/hello", get(|| async { "hello" }))
        .route(
            "/api/v1/echo",
            post(|Json(v): Json<Value>| async move { Json(v) }),
        )
        // A long answer, as Server-Sent Events or `?wait=` are: longer than every timeout.
        .route(
            "/api/v1/stream",
            get(|| async {
                let chunks = futures::stream::unfold(0, |n| async move {
                    if n == 15 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from("tick\n")), n + 1))
                });
                Body::from_stream(chunks)
            }),
        );
    let settings = HttpSettings {
        body_timeout: BODY,
        connections: ConnectionLimits {
            header_timeout: HEADER,
            idle_timeout: IDLE,
            max_connections: 200,
            max_per_address,
            exempt: vec![],
        },
        ..HttpSettings::default()
    };
    let (addr, stop) = serve(bare_service(api, &settings)).await;
    App {
        addr,
        base: format!("http://{addr}"),
        stop,
    }
}

/// Reads until the server closes the connection; what it sent, and when it closed.
async fn until_closed(s: &mut TcpStream) -> (String, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(NEVER, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Instant::now())
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after {NEVER:?}: {got:?}"),
        }
    }
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_header_timeout() {
    let app = app(None).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let (sent, closed) = until_closed(&mut s).await;
    assert_eq!(
        sent, "",
        "nothing is answered to a client that asked nothing"
    );
    assert!(
        closed - started >= HEADER,
        "closed early: {:?}",
        closed - started
    );
    app.stop.cancel();
}

#[tokio::test]
async fn a_head_sent_a_line_at_a_time_is_cut_off() {
    let app = app(None).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One more header line every 100 ms, for far longer than the header timeout.
    let (mut reader, mut writer) = s.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(NEVER, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Instant::now(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("a trickled head kept its connection for {NEVER:?}"),
        }
    };
    trickle.abort();
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "a head that never finished was answered"
    );
    assert!(closed - started >= HEADER);
    app.stop.cancel();
}

/// A connection to `addr` that has been served one GET (200) and is kept alive.
async fn served(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

#[tokio::test]
async fn an_idle_keep_alive_is_closed_after_the_idle_timeout_not_before() {
    let app = app(None).await;
    let mut s = served(app.addr).await;
    let answered = Instant::now();
    let mut buf = [0u8; 1024];
    // Longer than the header timeout: an idle keep-alive is not a slow head.
    tokio::time::sleep(HEADER + Duration::from_millis(100)).await;
    s.write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the kept-alive connection still serves within the idle timeout"
    );
    let second = Instant::now();
    let (rest, closed) = until_closed(&mut s).await;
    assert_eq!(rest, "");
    assert!(
        closed - second >= IDLE,
        "closed early: {:?}",
        closed - second
    );
    assert!(second - answered < IDLE + HEADER);
    app.stop.cancel();
}

#[tokio::test]
async fn a_slow_body_is_answered_408_and_the_connection_closed() {
    let app = app(None).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"a\":",
    )
    .await
    .unwrap();
    let (answer, _) = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    app.stop.cancel();
}

#[tokio::test]
async fn normal_clients_and_long_answers_are_served_while_slow_sockets_wait() {
    let app = app(None).await;
    // Fifty sockets that say nothing.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let http = reqwest::Client::new();
    let hello = http
        .get(format!("{}/api/v1/hello", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.text().await.unwrap(), "hello");
    let echoed: Value = http
        .post(format!("{}/api/v1/echo", app.base))
        .json(&serde_json::json!({"a": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["a"], 1);
    // 1.5 s of streaming, longer than the header and idle timeouts together: not cut.
    let streamed = http
        .get(format!("{}/api/v1/stream", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(streamed.lines().count(), 15);
    for mut s in silent {
        let (sent, _) = until_closed(&mut s).await;
        assert_eq!(sent, "");
    }
    app.stop.cancel();
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() {
    let app = app(Some(3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        // Each is served, so it is counted before the next connects.
        held.push(served(app.addr).await);
    }
    let mut fourth = TcpStream::connect(app.addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (sent, _) = until_closed(&mut fourth).await;
    assert_eq!(sent, "", "the fourth connection is closed unanswered");
    drop(held.pop());
    // Once one is given back, the address may connect again.
    eventually(NEVER, || async {
        let mut s = TcpStream::connect(app.addr).await.ok()?;
        s.write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.ok()?;
        String::from_utf8_lossy(&buf[..n])
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    app.stop.cancel();
}

#[tokio::test]
async fn shutdown_lets_the_answer_in_flight_finish() {
    let app = app(None).await;
    let http = reqwest::Client::new();
    // The head has arrived: the answer is in flight when shutdown begins.
    let long = http
        .get(format!("{}/api/v1/stream", app.base))
        .send()
        .await
        .unwrap();
    app.stop.cancel();
    assert_eq!(long.text().await.unwrap().lines().count(), 15);
}
