//! The web app as the gateway serves it: `/`, its hashed assets and deep links with the right
//! content types and caching, while API paths that nothing owns stay problem+json; and the
//! browser session routes, against a stand-in auth service.

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::routing::post;
use axum::Json;
use mercato_kit::config::Env;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

async fn send(router: &axum::Router, req: Request<Body>) -> Got {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 22)
        .await
        .unwrap();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(router: &axum::Router, uri: &str) -> Got {
    send(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn gateway(vars: &[(&str, &str)]) -> axum::Router {
    // Port 0: the operator port is bound when the gateway is built, and 8089 may be taken.
    let mut env = Env::from_pairs(
        [("MERCATO_GATEWAY_OPS_PORT", "0")]
            .into_iter()
            .chain(vars.iter().copied()),
    );
    let config = mercato_gateway::Config::read(&mut env);
    env.check().unwrap();
    mercato_gateway::build(&config).await.unwrap().router()
}

/// The asset paths `index.html` loads.
fn assets(index: &str) -> Vec<String> {
    index
        .split(['"', '\''])
        .filter(|s| s.starts_with("/assets/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_app_its_assets_and_deep_links_are_served_with_their_types_and_caching() {
    let gw = gateway(&[]).await;
    let index = get(&gw, "/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(
        index.header(header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(index.header(header::CACHE_CONTROL), "no-cache");
    assert!(index.body.contains(r#"<div id="app">"#), "{}", index.body);
    let csp = index.header(header::CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(index.header("x-content-type-options"), "nosniff");
    let etag = index.header(header::ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");

    // Revalidation: the same ETag gets 304 and no body.
    let again = send(
        &gw,
        Request::get("/")
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header(header::CACHE_CONTROL), "no-cache");

    // Hashed assets are immutable for a year, with their own types.
    let files = assets(&index.body);
    assert!(files.iter().any(|f| f.ends_with(".js")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".css")), "{files:?}");
    for file in &files {
        let a = get(&gw, file).await;
        assert_eq!(a.status, StatusCode::OK, "{file}");
        let want = if file.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(a.header(header::CONTENT_TYPE), want, "{file}");
        assert_eq!(
            a.header(header::CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{file}"
        );
        assert!(!a.body.is_empty());
    }
    let icon = get(&gw, "/favicon.svg").await;
    assert_eq!(icon.header(header::CONTENT_TYPE), "image/svg+xml");
    assert_eq!(icon.header(header::CACHE_CONTROL), "no-cache");

    // Deep links are the app's pages: index.html, revalidated, so a reload of any page works.
    for page in [
        "/orders/0193a7c2-0000-7000-8000-000000000001",
        "/cart",
        "/seller/products/new",
        "/signin?next=%2Forders",
    ] {
        let p = get(&gw, page).await;
        assert_eq!(p.status, StatusCode::OK, "{page}");
        assert_eq!(
            p.header(header::CONTENT_TYPE),
            "text/html; charset=utf-8",
            "{page}"
        );
        assert_eq!(p.header(header::CACHE_CONTROL), "no-cache", "{page}");
        assert_eq!(p.header(header::ETAG), etag, "{page}");
    }
    let head = send(&gw, Request::head("/orders/x").body(Body::empty()).unwrap()).await;
    assert_eq!(head.status, StatusCode::OK);
}

#[tokio::test]
async fn paths_nothing_owns_stay_problem_json_not_the_app() {
    let gw = gateway(&[]).await;
    for path in [
        "/api/v1/nothing",
        "/api/v1",
        "/api/v2/orders",
        "/api",
        "/assets/index-missing.js",
        "/favicon.png",
        "/health/nothing",
        "/.well-known/other",
    ] {
        let got = get(&gw, path).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{path}: {}", got.body);
        assert_eq!(
            got.header(header::CONTENT_TYPE),
            "application/problem+json",
            "{path}"
        );
        let p: Value = serde_json::from_str(&got.body).unwrap();
        assert_eq!(p["code"], "not_found", "{path}");
    }
    // Operations and the API explorer keep their own answers.
    let live = get(&gw, "/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    assert!(live
        .header(header::CONTENT_TYPE)
        .starts_with("application/json"));
    let docs = get(&gw, "/docs").await;
    assert!(docs.body.contains("swagger-ui"), "{}", docs.body);
}

#[tokio::test]
async fn the_app_is_told_whether_checkout_offers_the_test_cards() {
    let config = |gw: axum::Router| async move {
        let got = get(&gw, "/api/v1/web/config").await;
        assert_eq!(got.status, StatusCode::OK);
        serde_json::from_str::<Value>(&got.body).unwrap()
    };
    let embedded = config(gateway(&[("MERCATO_DEMO_CARDS", "true")]).await).await;
    let tokens: Vec<_> = embedded["demo_cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["token"].as_str().unwrap().to_owned())
        .collect();
    assert!(tokens.contains(&"pm_card_visa".to_owned()), "{tokens:?}");
    assert!(tokens.contains(&"pm_card_chargeDeclined".to_owned()));
    let real = config(gateway(&[]).await).await;
    assert_eq!(real["demo_cards"], json!([]));
}

/// What the stand-in auth service was asked.
#[derive(Default)]
struct AuthLog {
    calls: Vec<(String, Value)>,
    cookies_seen: usize,
}

/// An auth service with one account; refresh tokens rotate r1 → r2 → r3 and work once.
async fn fake_auth() -> (String, Arc<Mutex<AuthLog>>) {
    let log = Arc::new(Mutex::new(AuthLog::default()));
    let current = Arc::new(Mutex::new(0u32));
    let record = |log: &Arc<Mutex<AuthLog>>, path: &str, headers: &HeaderMap, body: &Value| {
        let mut l = log.lock().unwrap();
        l.calls.push((path.to_owned(), body.clone()));
        l.cookies_seen += usize::from(headers.contains_key(header::COOKIE));
    };
    let tokens = |n: u32| {
        Json(
            json!({"access_token": format!("access-{n}"), "refresh_token": format!("r{n}"), "token_type": "Bearer", "expires_in": 900}),
        )
    };
    let problem = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/problem+json")],
            r#"{"code":"unauthorized","status":401}"#,
        )
    };
    let app = axum::Router::new()
        .route("/api/v1/auth/login", {
            let (log, current) = (log.clone(), current.clone());
            post(
                move |headers: HeaderMap, Json(body): Json<Value>| async move {
                    record(&log, "login", &headers, &body);
                    if body != json!({"email": "a@example.com", "password": "right"}) {
                        return Err(problem());
                    }
                    let mut c = current.lock().unwrap();
                    *c += 1;
                    Ok(tokens(*c))
                },
            )
        })
        .route("/api/v1/auth/refresh", {
            let (log, current) = (log.clone(), current.clone());
            post(
                move |headers: HeaderMap, Json(body): Json<Value>| async move {
                    record(&log, "refresh", &headers, &body);
                    let mut c = current.lock().unwrap();
                    if body["refresh_token"] != format!("r{c}") {
                        return Err(problem());
                    }
                    *c += 1;
                    Ok(tokens(*c))
                },
            )
        })
        .route("/api/v1/auth/logout", {
            let log = log.clone();
            post(
                move |headers: HeaderMap, Json(body): Json<Value>| async move {
                    record(&log, "logout", &headers, &body);
                    StatusCode::NO_CONTENT
                },
            )
        });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), log)
}

fn session_req(
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:8080")
        .header("sec-fetch-site", "same-origin");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, format!("other=1; mercato_refresh={c}"));
    }
    match body {
        Some(b) => r
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => r.body(Body::empty()).unwrap(),
    }
}

fn cookie_value(got: &Got) -> (String, String) {
    let set = got.header(header::SET_COOKIE).to_owned();
    let value = set
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("mercato_refresh=")
        .unwrap_or_else(|| panic!("{set}"))
        .to_owned();
    (value, set)
}

#[tokio::test]
async fn the_refresh_token_lives_in_an_http_only_strict_cookie_and_rotates() {
    let (auth, log) = fake_auth().await;
    let gw = gateway(&[("MERCATO_AUTH_URL", auth.as_str())]).await;

    // Signing in: the page gets the access token, the cookie gets the refresh token.
    let good = json!({"email": "a@example.com", "password": "right"});
    let signed = send(
        &gw,
        session_req("POST", "/api/v1/session", None, Some(good.clone())),
    )
    .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.body);
    let body: Value = serde_json::from_str(&signed.body).unwrap();
    assert_eq!(body["access_token"], "access-1");
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(signed.header(header::CACHE_CONTROL), "no-store");
    let (r1, set) = cookie_value(&signed);
    assert_eq!(r1, "r1");
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/api/v1/session",
        "Max-Age=2592000",
    ] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain http on loopback: {set}");

    // Anywhere but this machine's own name the cookie is Secure.
    let mut remote = session_req("POST", "/api/v1/session", None, Some(good));
    remote
        .headers_mut()
        .insert(header::HOST, "shop.example.com".parse().unwrap());
    let remote = send(&gw, remote).await;
    assert!(remote.header(header::SET_COOKIE).contains("Secure"));
    let (r2, _) = cookie_value(&remote);

    // Wrong password: auth's 401 passes through, no cookie.
    let bad = send(
        &gw,
        session_req(
            "POST",
            "/api/v1/session",
            None,
            Some(json!({"email": "a@example.com", "password": "wrong"})),
        ),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.header(header::CONTENT_TYPE), "application/problem+json");
    assert!(bad.headers.get(header::SET_COOKIE).is_none());

    // A refresh rotates the cookie; the spent token then clears it.
    let fresh = send(
        &gw,
        session_req("POST", "/api/v1/session/refresh", Some(&r2), None),
    )
    .await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
    let (r3, _) = cookie_value(&fresh);
    assert_eq!(r3, "r3");
    assert!(!fresh.body.contains("r3"), "{}", fresh.body);
    let spent = send(
        &gw,
        session_req("POST", "/api/v1/session/refresh", Some(&r2), None),
    )
    .await;
    assert_eq!(spent.status, StatusCode::UNAUTHORIZED);
    assert!(spent.header(header::SET_COOKIE).contains("Max-Age=0"));
    let none = send(
        &gw,
        session_req("POST", "/api/v1/session/refresh", None, None),
    )
    .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);

    // Another site cannot make the browser refresh or sign out: refused before auth is asked.
    let asked = log.lock().unwrap().calls.len();
    for (method, path) in [
        ("POST", "/api/v1/session/refresh"),
        ("DELETE", "/api/v1/session"),
    ] {
        let mut req = session_req(method, path, Some(&r3), None);
        req.headers_mut()
            .insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert_eq!(send(&gw, req).await.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(log.lock().unwrap().calls.len(), asked);

    // Signing out ends the sign-in at auth and clears the cookie.
    let out = send(
        &gw,
        session_req("DELETE", "/api/v1/session", Some(&r3), None),
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.header(header::SET_COOKIE).contains("Max-Age=0"));
    let l = log.lock().unwrap();
    assert_eq!(
        l.calls.last().unwrap(),
        &("logout".to_owned(), json!({"refresh_token": "r3"}))
    );
    assert_eq!(
        l.cookies_seen, 0,
        "the browser's cookies are not passed to auth"
    );
}
