//! Auth service scenarios over real HTTP: accounts, tokens, refresh rotation, roles, throttling,
//! bad input and forged tokens.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn register_login_me_refresh_and_reuse_detection() {
    let t = TestStack::start().await;
    let res = t
        .register("Ada@Example.com", PASSWORD, "Ada Lovelace")
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["role"], "CUSTOMER");
    assert!(user.get("password_hash").is_none());

    let tokens = t.login("ada@example.com", PASSWORD).await;
    let me: Value = t
        .http
        .get(t.api("auth", "/auth/me"))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], user["id"]);

    // Rotate once: the new pair works.
    let res = t
        .http
        .post(t.api("auth", "/auth/refresh"))
        .json(&json!({"refresh_token": tokens.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let second: Value = res.json().await.unwrap();
    assert_eq!(second["token_type"], "Bearer");
    assert!(second["expires_in"].as_u64().unwrap() > 0);
    let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, tokens.refresh);

    // The spent token again: refused, and the whole family is revoked with it.
    let res = t
        .http
        .post(t.api("auth", "/auth/refresh"))
        .json(&json!({"refresh_token": tokens.refresh}))
        .send()
        .await
        .unwrap();
    problem(res, 401).await;
    let res = t
        .http
        .post(t.api("auth", "/auth/refresh"))
        .json(&json!({"refresh_token": second_refresh}))
        .send()
        .await
        .unwrap();
    problem(res, 401).await;

    // A new login starts a new family that works.
    let again = t.login("ada@example.com", PASSWORD).await;
    let res = t
        .http
        .post(t.api("auth", "/auth/refresh"))
        .json(&json!({"refresh_token": again.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Logout ends it.
    let res = t
        .http
        .post(t.api("auth", "/auth/logout"))
        .json(&json!({"refresh_token": res.json::<Value>().await.unwrap()["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    t.stop().await;
}

#[tokio::test]
async fn registration_rules_and_idempotency() {
    let t = TestStack::start().await;
    assert_eq!(
        t.register("dup@example.com", PASSWORD, "One")
            .await
            .status(),
        StatusCode::CREATED
    );
    let p = problem(t.register("DUP@example.com", PASSWORD, "Two").await, 409).await;
    assert_eq!(p["code"], "email_taken");
    let p = problem(t.register("weak@example.com", "short", "Weak").await, 422).await;
    assert_eq!(p["errors"][0]["field"], "password");
    let p = problem(t.register("not-an-email", PASSWORD, "X").await, 422).await;
    assert_eq!(p["errors"][0]["field"], "email");
    let p = problem(t.register("bad", "short", "").await, 422).await;
    assert_eq!(
        p["errors"].as_array().unwrap().len(),
        3,
        "every bad field named at once: {p}"
    );

    // Same key, same body: the first answer again, one account.
    let body = json!({"email": "idem@example.com", "password": PASSWORD, "name": "Idem"});
    let send = |b: Value, key: &'static str| {
        t.http
            .post(t.api("auth", "/auth/register"))
            .header("Idempotency-Key", key)
            .json(&b)
            .send()
    };
    let first = send(body.clone(), "reg-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotency-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let replay = send(body.clone(), "reg-1").await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotency-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    // Same key, other body: refused.
    let other = json!({"email": "idem2@example.com", "password": PASSWORD, "name": "Idem"});
    let p = problem(send(other, "reg-1").await.unwrap(), 422).await;
    assert_eq!(p["code"], "idempotency_key_reused");
    let admin = t.admin().await;
    let users: Value = t
        .http
        .get(t.api("auth", "/admin/users?limit=100"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let idem = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["email"].as_str().unwrap().starts_with("idem"))
        .count();
    assert_eq!(idem, 1);
    t.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_problem_and_writes_nothing() {
    let t = TestStack::start_with(&[("MERCATO_BODY_LIMIT_BYTES", "4096")]).await;
    let admin = t.admin().await;
    let count = || async {
        let v: Value = t
            .http
            .get(t.api("auth", "/admin/users?limit=100"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["items"].as_array().unwrap().len()
    };
    let before = count().await;
    let url = t.api("auth", "/auth/register");
    let raw = |body: &'static str| {
        t.http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        problem(raw("{not json").await.unwrap(), 400).await["code"],
        "malformed_json"
    );
    problem(
        raw(r#"{"email": 5, "password": "x", "name": "y"}"#)
            .await
            .unwrap(),
        422,
    )
    .await;
    let p = problem(raw(r#"{"email": "a@b.co"}"#).await.unwrap(), 422).await;
    assert!(
        p["detail"].as_str().unwrap().contains("missing field"),
        "{p}"
    );
    problem(
        raw(r#"{"email": "a@b.co", "password": "Str0ng-enough-pw", "name": "y", "role": "ADMIN"}"#)
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(t.http.post(&url).body("{}").send().await.unwrap(), 415).await;
    let huge = format!(
        r#"{{"email": "a@b.co", "password": "{}", "name": "y"}}"#,
        "x".repeat(10_000)
    );
    problem(
        t.http
            .post(&url)
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    for (email, name) in [
        ("robert'); DROP TABLE users;--@x.com", "Bobby"),
        ("nul@example.com", "a\u{0}b"),
        ("long@example.com", &*"n".repeat(10_000)),
        (&*format!("{}@example.com", "l".repeat(300)), "Long"),
        ("emoji😀@example.com", "Emoji"),
    ] {
        let res = t.register(email, PASSWORD, name).await;
        let status = res.status().as_u16();
        assert!(
            (400..500).contains(&status),
            "{email:?}/{name:.20}: {status}"
        );
        problem(res, status).await;
    }
    // A hostile but valid name is stored as text, not run.
    let res = t
        .register(
            "bobby@example.com",
            PASSWORD,
            "Robert'); DROP TABLE users;-- 😀",
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        res.json::<Value>().await.unwrap()["name"],
        "Robert'); DROP TABLE users;-- 😀"
    );
    assert_eq!(count().await, before + 1);
    // Unknown route and wrong method are problems too.
    problem(
        t.http.get(t.api("auth", "/nope")).send().await.unwrap(),
        404,
    )
    .await;
    problem(
        t.http
            .delete(t.api("auth", "/auth/login"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    t.stop().await;
}

fn forge(header: Value, claims: Value, sign: impl FnOnce(&str) -> Vec<u8>) -> String {
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let input = format!("{h}.{c}");
    let sig = URL_SAFE_NO_PAD.encode(sign(&input));
    format!("{input}.{sig}")
}

#[tokio::test]
async fn forged_and_stale_tokens_are_refused() {
    let t = TestStack::start().await;
    let (id, good) = t.user("CUSTOMER").await;
    let me = t.api("auth", "/auth/me");
    let call = |tok: String| t.http.get(&me).bearer_auth(tok).send();
    assert_eq!(call(good.clone()).await.unwrap().status(), StatusCode::OK);

    let jwks: Value = t
        .http
        .get(format!("{}/.well-known/jwks.json", t.base("auth")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |iss: &str, aud: &str, exp: i64| json!({"sub": id, "role": "ADMIN", "iss": iss, "aud": aud, "exp": exp, "iat": now, "nbf": now, "jti": "x"});

    // Tampered: flip the payload to claim ADMIN while keeping the signature.
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["role"] = json!("ADMIN");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    problem(call(tampered).await.unwrap(), 401).await;

    // alg none, with and without a signature.
    let none = forge(
        json!({"alg": "none", "typ": "JWT", "kid": kid}),
        claims("mercato-auth", "mercato", now + 600),
        |_| vec![],
    );
    problem(call(none).await.unwrap(), 401).await;

    // HS256 keyed with the public key (the classic algorithm confusion).
    let n = jwks["keys"][0]["n"].as_str().unwrap();
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some(kid.clone()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("mercato-auth", "mercato", now + 600),
        &EncodingKey::from_secret(n.as_bytes()),
    )
    .unwrap();
    problem(call(hs).await.unwrap(), 401).await;

    // Properly signed with the real key, but expired or meant for someone else.
    let pem = std::fs::read(t.dir.path().join("auth-signing-key.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let header = Header {
        kid: Some(kid.clone()),
        ..Header::new(Algorithm::RS256)
    };
    let sign = |c: Value| jsonwebtoken::encode(&header, &c, &key).unwrap();
    assert_eq!(
        call(sign(claims("mercato-auth", "mercato", now + 600)))
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "control"
    );
    let p = problem(
        call(sign(claims("mercato-auth", "mercato", now - 600)))
            .await
            .unwrap(),
        401,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("expired"));
    // Not valid yet (nbf an hour ahead), or with no nbf at all: every token auth issues has one.
    let mut early = claims("mercato-auth", "mercato", now + 7200);
    early["nbf"] = json!(now + 3600);
    let p = problem(call(sign(early)).await.unwrap(), 401).await;
    assert!(
        p["detail"].as_str().unwrap().contains("not valid yet"),
        "{p}"
    );
    let mut without = claims("mercato-auth", "mercato", now + 600);
    without.as_object_mut().unwrap().remove("nbf");
    problem(call(sign(without)).await.unwrap(), 401).await;
    problem(
        call(sign(claims("evil", "mercato", now + 600)))
            .await
            .unwrap(),
        401,
    )
    .await;
    problem(
        call(sign(claims("mercato-auth", "other", now + 600)))
            .await
            .unwrap(),
        401,
    )
    .await;
    let unknown_kid = jsonwebtoken::encode(
        &Header {
            kid: Some("nope".into()),
            ..Header::new(Algorithm::RS256)
        },
        &claims("mercato-auth", "mercato", now + 600),
        &key,
    )
    .unwrap();
    problem(call(unknown_kid).await.unwrap(), 401).await;
    problem(call("garbage".into()).await.unwrap(), 401).await;
    let res = t
        .http
        .get(&me)
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    problem(res, 401).await;
    problem(t.http.get(&me).send().await.unwrap(), 401).await;
    t.stop().await;
}

#[tokio::test]
async fn admins_manage_roles_and_nobody_else_does() {
    let t = TestStack::start().await;
    let admin = t.admin().await;
    let (cid, customer) = t.user("CUSTOMER").await;
    let users = t.api("auth", "/admin/users");
    problem(
        t.http
            .get(&users)
            .bearer_auth(&customer)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    let target = t.api("auth", &format!("/admin/users/{cid}"));
    problem(
        t.http
            .patch(&target)
            .bearer_auth(&customer)
            .json(&json!({"role": "ADMIN"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        t.http
            .patch(&target)
            .bearer_auth(&admin)
            .json(&json!({"role": "SERVICE"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(
        t.http
            .patch(&target)
            .bearer_auth(&admin)
            .json(&json!({"role": "KING"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    let res = t
        .http
        .patch(&target)
        .bearer_auth(&admin)
        .json(&json!({"role": "SELLER"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["role"], "SELLER");
    let me: Value = t
        .http
        .get(t.api("auth", "/auth/me"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let own = t.api(
        "auth",
        &format!("/admin/users/{}", me["id"].as_str().unwrap()),
    );
    problem(
        t.http
            .patch(&own)
            .bearer_auth(&admin)
            .json(&json!({"role": "CUSTOMER"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        t.http
            .get(t.api("auth", &format!("/admin/users/{}", uuid::Uuid::now_v7())))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        t.http
            .get(t.api("auth", "/admin/users/not-a-uuid"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;

    // Pagination visits every user once.
    for _ in 0..4 {
        t.user("CUSTOMER").await;
    }
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let url = match &cursor {
            Some(c) => format!("{users}?limit=2&cursor={c}"),
            None => format!("{users}?limit=2"),
        };
        let page: Value = t
            .http
            .get(url)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(seen.len(), 6, "admin + 5 customers: {seen:?}");
    assert_eq!(unique.len(), seen.len());
    problem(
        t.http
            .get(format!("{users}?limit=0"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    t.stop().await;
}

#[tokio::test]
async fn profile_changes_need_the_current_password() {
    let t = TestStack::start().await;
    let email = "pat@example.com";
    t.register(email, PASSWORD, "Pat").await;
    let tokens = t.login(email, PASSWORD).await;
    let me = t.api("auth", "/auth/me");
    let res = t
        .http
        .patch(&me)
        .bearer_auth(&tokens.access)
        .json(&json!({"name": "Patricia"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["name"], "Patricia");
    let p = problem(
        t.http
            .patch(&me)
            .bearer_auth(&tokens.access)
            .json(&json!({"password": "An0ther-password"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "current_password");
    let p = problem(
        t.http
            .patch(&me)
            .bearer_auth(&tokens.access)
            .json(&json!({"password": "An0ther-password", "current_password": "wrong-one-123"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "current_password");
    let res = t
        .http
        .patch(&me)
        .bearer_auth(&tokens.access)
        .json(&json!({"password": "An0ther-password", "current_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The old sessions ended; the new password works.
    problem(
        t.http
            .post(t.api("auth", "/auth/refresh"))
            .json(&json!({"refresh_token": tokens.refresh}))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    t.login(email, "An0ther-password").await;
    t.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let t = TestStack::start_with(&[("MERCATO_LOGIN_MAX_FAILURES", "3")]).await;
    t.register("tom@example.com", PASSWORD, "Tom").await;
    let login = |pw: &'static str| {
        t.http
            .post(t.api("auth", "/auth/login"))
            .json(&json!({"email": "tom@example.com", "password": pw}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            problem(login("wrong-password-1").await.unwrap(), 401).await["code"],
            "invalid_credentials"
        );
    }
    let res = login(PASSWORD).await.unwrap();
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    problem(res, 429).await;
    // Another account from the same address is not locked by Tom's failures.
    t.register("tim@example.com", PASSWORD, "Tim").await;
    t.login("tim@example.com", PASSWORD).await;
    // An unknown email is refused the same way as a wrong password.
    let res = t
        .http
        .post(t.api("auth", "/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(res, 401).await["code"], "invalid_credentials");
    t.stop().await;
}

#[tokio::test]
async fn services_get_their_own_tokens() {
    let t = TestStack::start().await;
    let url = t.api("auth", "/auth/service-token");
    let secret = std::fs::read_to_string(t.dir.path().join("service-secret"))
        .unwrap_or_else(|_| "test-service-secret".into());
    problem(
        t.http
            .post(&url)
            .json(&json!({"service": "order", "secret": "wrong"}))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let res = t
        .http
        .post(&url)
        .json(&json!({"service": "order", "secret": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let tok = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(tok.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["role"], "SERVICE");
    assert_eq!(claims["sub"], "service:order");
    // A service token is not a user: user-only routes refuse it.
    problem(
        t.http
            .get(t.api("auth", "/auth/me"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // The kit's client gets and caches the same kind of token.
    let client = mercato_kit::auth::ServiceTokens::new(
        &t.base("auth"),
        "catalog",
        mercato_kit::config::Secret::new(secret),
    );
    let a = client.token().await.unwrap();
    assert_eq!(a, client.token().await.unwrap(), "cached");
    t.stop().await;
}

#[tokio::test]
async fn operational_routes_and_request_context() {
    let t = TestStack::start().await;
    let base = t.base("auth");
    for path in ["/health/live", "/health/ready", "/health/deep"] {
        let res = t.http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let deep: Value = t
        .http
        .get(format!("{base}/health/deep"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deep["dependencies"][0]["name"], "database");
    assert_eq!(deep["dependencies"][0]["status"], "up");
    let res = t
        .http
        .post(t.api("auth", "/auth/login"))
        .header("x-correlation-id", "corr-123")
        .json(&json!({"email": "x@y.zz", "password": "nope-nope-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-correlation-id"], "corr-123");
    assert!(res.headers().contains_key("x-request-id"));
    assert!(res.headers()["traceparent"]
        .to_str()
        .unwrap()
        .starts_with("00-"));
    let metrics = t
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let login_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains(r#"route="/api/v1/auth/login""#)
                && l.contains(r#"status="401""#)
        })
        .unwrap_or_else(|| panic!("no login counter in {metrics}"));
    assert!(
        login_line.contains(r#"service="auth""#)
            && login_line.contains(r#"method="POST""#)
            && login_line.ends_with(" 1"),
        "{login_line}"
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket"));
    let doc: Value = t
        .http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for p in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/admin/users/{id}",
        "/.well-known/jwks.json",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    t.stop().await;
}
