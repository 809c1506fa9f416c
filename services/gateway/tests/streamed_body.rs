//! A body with no length announced is counted as it streams: past the limit the gateway
//! answers 413 itself, whatever the service would have said.

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use mercato_kit::config::Env;
use tower::ServiceExt;

/// A stand-in service that reads the whole body and says how long it was.
async fn echo_length_service() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().fallback(|body: Bytes| async move { body.len().to_string() });
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

async fn post_streamed(router: axum::Router, chunks: usize) -> (StatusCode, String) {
    let stream = futures::stream::iter(
        (0..chunks).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 512]))),
    );
    let req = Request::post("/api/v1/products")
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_refused_and_one_under_it_passes() {
    let catalog = echo_length_service().await;
    let mut env = Env::from_pairs([
        ("MERCATO_CATALOG_URL", catalog.as_str()),
        ("MERCATO_BODY_LIMIT_BYTES", "2048"),
        // Any free port: a test never takes a fixed one.
        ("MERCATO_GATEWAY_OPS_PORT", "0"),
    ]);
    let config = mercato_gateway::Config::read(&mut env);
    env.check().unwrap();
    let gateway = mercato_gateway::build(&config).await.unwrap();

    let (status, body) = post_streamed(gateway.router(), 3).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "1536"),
        "streamed through whole"
    );

    let (status, body) = post_streamed(gateway.router(), 8).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
}
