//! The statuses every route can answer because of the kit rather than its handler, written
//! into each service's OpenAPI document in one place, so the document is the contract the
//! code keeps.
//!
//! A handler's own annotations list what it decides (201, 404 for an unknown id, 409, 422 for
//! its rules). The kit's layers answer the rest, the same way on every route: 401 and 403 for
//! a route behind a token (a bad token; a SERVICE or another role where a user is needed),
//! 400, 408, 413, 415 and 422 for a JSON body (malformed, too slow, too large, not JSON,
//! wrong types), 400 and 422 for path and query parameters, and 503 everywhere (the request
//! timeout, a service still starting, the token list not readable). Every error answer is
//! `application/problem+json` with the `Problem` schema.

use serde_json::{json, Map, Value};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The Problem schema's reference in a document that has it (every service's does).
fn problem_content(schema: Value) -> Value {
    json!({ "application/problem+json": { "schema": schema } })
}

/// Completes `doc` (an OpenAPI 3.1 document as JSON) as described in the module header.
pub fn complete(doc: &mut Value) {
    let schema = if doc.pointer("/components/schemas/Problem").is_some() {
        json!({"$ref": "#/components/schemas/Problem"})
    } else {
        json!({"type": "object"})
    };
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        for method in METHODS {
            if let Some(op) = item.get_mut(method) {
                complete_operation(op, &schema);
            }
        }
    }
}

/// Adds `statuses` (as problem documents) to every operation of `doc` that lacks them: what
/// a proxy in front of the services answers itself.
pub fn add_to_every_operation(doc: &mut Value, statuses: &[(&str, &str)]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        for method in METHODS {
            let Some(responses) = item
                .get_mut(method)
                .and_then(|op| op.get_mut("responses"))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (status, description) in statuses {
                responses.entry(*status).or_insert_with(|| {
                    json!({
                        "description": description,
                        "content": problem_content(json!({"$ref": "#/components/schemas/Problem"})),
                    })
                });
            }
        }
    }
}

#[expect(
    clippy::expect_used,
    reason = "utoipa writes operations and responses as objects"
)]
fn complete_operation(op: &mut Value, schema: &Value) {
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let has_body = op.get("requestBody").is_some();
    let has_params = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|p| {
            p.iter()
                .any(|p| matches!(p["in"].as_str(), Some("path" | "query")))
        });
    let mut added: Vec<(&str, &str)> = vec![(
        "503",
        "Unavailable: the request timed out, the service is starting, or a dependency it needs now is down",
    )];
    if secured {
        added.push((
            "401",
            "No valid token (missing, malformed, expired, revoked)",
        ));
        added.push(("403", "The token's role may not do this"));
    }
    if has_body {
        added.push(("400", "Malformed JSON, or a required header missing"));
        added.push(("408", "The body did not arrive in time"));
        added.push(("413", "The body is too large"));
        added.push(("415", "The body is not application/json"));
        added.push(("422", "The body has invalid or missing fields"));
    }
    if has_params {
        added.push(("400", "A path or query parameter is not valid"));
        added.push(("422", "A query parameter's value is not allowed"));
    }
    let responses = op
        .as_object_mut()
        .expect("an operation is an object")
        .entry("responses")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(responses) = responses.as_object_mut() else {
        return;
    };
    for (status, description) in added {
        responses
            .entry(status)
            .or_insert_with(|| json!({ "description": description }));
    }
    for (status, response) in responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if !is_error {
            continue;
        }
        // Whatever the annotation said (utoipa writes application/json for a Problem body),
        // an error answer is a problem document.
        let r = response.as_object_mut().expect("a response is an object");
        let own_schema = r
            .get("content")
            .and_then(Value::as_object)
            .and_then(|c| c.values().next())
            .and_then(|c| c.get("schema"))
            .cloned();
        r.insert(
            "content".into(),
            problem_content(own_schema.unwrap_or_else(|| schema.clone())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kit_statuses_are_added_and_errors_are_problem_documents() {
        let mut doc = json!({
            "paths": {
                "/api/v1/things": {
                    "post": {
                        "security": [{"bearer": []}],
                        "requestBody": {"content": {"application/json": {}}},
                        "responses": {
                            "201": {"description": "made", "content": {"application/json": {"schema": {"type": "object"}}}},
                            "409": {"description": "taken", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                        }
                    },
                    "get": {"parameters": [{"in": "query", "name": "q"}], "responses": {"200": {"description": "ok"}}}
                }
            },
            "components": {"schemas": {"Problem": {"type": "object"}}}
        });
        complete(&mut doc);
        let post = &doc["paths"]["/api/v1/things"]["post"]["responses"];
        for s in [
            "401", "403", "400", "408", "413", "415", "422", "503", "409",
        ] {
            assert!(
                post[s]["content"]["application/problem+json"]["schema"].is_object(),
                "{s}: {post}"
            );
            assert!(post[s]["content"].get("application/json").is_none(), "{s}");
        }
        assert!(post["201"]["content"]["application/json"].is_object());
        let get = &doc["paths"]["/api/v1/things"]["get"]["responses"];
        assert!(get["400"].is_object() && get["422"].is_object() && get["503"].is_object());
        assert!(get.get("401").is_none(), "a public route answers no 401");
    }
}
