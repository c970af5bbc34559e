//! Integration tests of the admin API over real HTTP on 127.0.0.1: authentication of every
//! documented route, backend CRUD and input validation, client keys, pools and their health
//! counts, cooldown reset, config-file sync across restarts, usage and statistics, and the
//! crypto-at-rest guarantees of the data dir (real SQLite files, real master key file).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{bearer_seen, contains_bytes, files_in, send, Answer, Gateway, ADMIN_TOKEN};
use mock_upstream::{MockUpstream, Reply};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde_json::{json, Value};

// === helpers ===

/// Asserts an OpenAI-shaped JSON error with the given status; returns the `error` object.
fn assert_error(answer: &Answer, status: u16, context: &str) -> Value {
    assert_eq!(answer.status, status, "{context}: {answer}");
    let content_type = answer
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "{context}: error is not JSON (content-type `{content_type}`): {answer}"
    );
    let error = answer
        .json
        .get("error")
        .unwrap_or_else(|| panic!("{context}: no `error` object: {answer}"));
    let object = error.as_object().expect("`error` is an object");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{context}: `error.message` missing: {answer}"
    );
    assert!(
        error["type"].is_string(),
        "{context}: `error.type` missing: {answer}"
    );
    assert!(
        object.contains_key("param") && object.contains_key("code"),
        "{context}: `error.param` / `error.code` missing: {answer}"
    );
    error.clone()
}

/// A valid backend body pointing at `base_url`, serving `model` (upstream `up-<model>`).
fn backend_body(name: &str, base_url: &str, key: &str, model: &str) -> Value {
    json!({
        "name": name,
        "api_base_url": base_url,
        "api_key": key,
        "model_mappings": { model: format!("up-{model}") },
    })
}

async fn list_backends(gateway: &Gateway) -> Vec<Value> {
    let answer = admin_call(gateway, Method::GET, "/backends").await;
    assert_eq!(answer.status, 200, "{answer}");
    answer.json.as_array().cloned().unwrap()
}

/// The backend named `name` in the list, if any.
async fn backend_named(gateway: &Gateway, name: &str) -> Option<Value> {
    list_backends(gateway)
        .await
        .into_iter()
        .find(|b| b["name"] == name)
}

/// A chat completion with an explicit bearer key.
async fn chat_with_key(gateway: &Gateway, key: &str, model: &str) -> Answer {
    send(
        gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
}

fn pool_stats_by_name(stats: &Value) -> BTreeMap<String, Value> {
    stats
        .as_array()
        .expect("pool stats is an array")
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

fn counts(stats: &Value) -> Vec<u64> {
    fields("total enabled healthy cooling error disabled")
        .map(|field| stats[field].as_u64().expect("a count"))
        .collect()
}

/// An admin API call with the token and a JSON body.
async fn admin_json(gateway: &Gateway, method: Method, path: &str, body: &Value) -> Answer {
    send(gateway.admin(method, path).json(body)).await
}

/// An admin API call with the token and no body.
async fn admin_call(gateway: &Gateway, method: Method, path: &str) -> Answer {
    send(gateway.admin(method, path)).await
}

/// The `message` of an error object.
fn message(error: &Value) -> &str {
    error["message"].as_str().unwrap_or_default()
}

/// Field names written as one space-separated string.
fn fields(names: &str) -> impl Iterator<Item = &str> {
    names.split_whitespace()
}

// === 1. authentication ===

#[tokio::test]
async fn every_documented_admin_route_requires_the_admin_token() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let backend = gateway
        .add_openai_backend(
            "auth-victim",
            &upstream.openai_base_url(),
            "primary",
            &["m-auth"],
        )
        .await;
    let backend_id = backend["id"].as_str().unwrap().to_owned();
    let (key_id, _) = gateway.create_key(json!({"name": "auth-victim-key"})).await;

    // The document itself is public and lists every admin route.
    let doc = send(
        gateway
            .client
            .get(format!("{}/admin/api/openapi.json", gateway.url)),
    )
    .await;
    assert_eq!(doc.status, 200, "{doc}");
    let paths = doc.json["paths"].as_object().expect("`paths` object");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    matches!(
                        k.as_str(),
                        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
                    )
                })
                .map(|method| (path.clone(), method.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("/admin/api/backends", "get"),
        ("/admin/api/backends", "post"),
        ("/admin/api/backends/{id}", "get"),
        ("/admin/api/backends/{id}", "patch"),
        ("/admin/api/backends/{id}", "delete"),
        ("/admin/api/backends/{id}/reset-cooldown", "post"),
        ("/admin/api/pools", "get"),
        ("/admin/api/pools", "post"),
        ("/admin/api/pools/stats", "get"),
        ("/admin/api/keys", "get"),
        ("/admin/api/keys", "post"),
        ("/admin/api/keys/{id}", "delete"),
        ("/admin/api/usage", "get"),
        ("/admin/api/stats", "get"),
        ("/admin/api/cluster", "get"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m.to_owned()))
    .collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:?}"
    );
    // Every operation has its own id (OpenAPI requires it; client generators name methods by it).
    let mut operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|operation| operation["operationId"].as_str())
        .collect();
    assert_eq!(
        operation_ids.len(),
        documented.len(),
        "one id per operation"
    );
    operation_ids.sort_unstable();
    let repeated: Vec<_> = operation_ids
        .windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
        .collect();
    assert!(repeated.is_empty(), "operationIds used twice: {repeated:?}");
    assert!(
        operation_ids.contains(&"create_backend"),
        "{operation_ids:?}"
    );
    // A backend's body is one flat object with the spend cap beside its fields, as the API
    // reads it (not `{"backend": {…}, …}`, not an `allOf` whose first part refuses the cap).
    for (path, method, required) in [
        (
            "/admin/api/backends",
            "post",
            &["name", "api_base_url", "api_key"][..],
        ),
        ("/admin/api/backends/{id}", "patch", &[][..]),
    ] {
        let body = &paths[path][method]["requestBody"]["content"]["application/json"]["schema"];
        let name = body["$ref"]
            .as_str()
            .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
            .unwrap_or_else(|| panic!("{method} {path}: body by reference: {body}"));
        let schema = &doc.json["components"]["schemas"][name];
        assert_eq!(schema["type"], "object", "{method} {path}: {schema}");
        let properties = schema["properties"].as_object().expect("properties");
        for field in ["name", "api_base_url", "pool", "monthly_spend_cap_usd"] {
            assert!(properties.contains_key(field), "{method} {path}: {field}");
        }
        assert!(
            !properties.contains_key("backend"),
            "{method} {path}: nested"
        );
        assert_eq!(schema["additionalProperties"], false, "{method} {path}");
        let required_fields = schema.get("required").cloned().unwrap_or(json!([]));
        assert_eq!(required_fields, json!(required), "{method} {path}");
        // A change's fields may be left out, not sent as `null` (refused with a 400), except
        // the cap, whose `null` removes it.
        if method == "patch" {
            for field in ["name", "rpm_limit", "api_key", "pool"] {
                let kind = &properties[field]["type"];
                assert!(kind.is_string(), "{field} is not nullable: {kind}");
            }
            assert_eq!(
                properties["monthly_spend_cap_usd"]["type"],
                json!(["number", "null"])
            );
        }
    }
    assert!(
        doc.json["components"]["securitySchemes"]["admin_token"]["scheme"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer")),
        "the document declares bearer auth: {}",
        doc.json["components"]
    );
    // Backend fields carry their schema: `http_version` with its three values, on the body of
    // a create, of a change and on the view.
    let schemas = &doc.json["components"]["schemas"];
    assert_eq!(
        schemas["HttpVersion"]["enum"],
        json!(["auto", "http1", "http2"]),
        "{}",
        schemas["HttpVersion"]
    );
    for schema in ["CreateBackend", "UpdateBackend", "BackendView"] {
        let field = &schemas[schema]["properties"]["http_version"];
        assert!(
            field
                .to_string()
                .contains("#/components/schemas/HttpVersion"),
            "{schema}.http_version: {field}"
        );
    }

    assert_eq!(
        poolgate::api::PUBLIC_ROUTES,
        &[
            "/healthz",
            "/health/live",
            "/health/ready",
            "/admin/api/openapi.json",
            "/",
            "/dashboard/"
        ],
        "the public allow-list"
    );

    // Each documented (path, method), with real ids so a handler reached by mistake would act.
    let unauthenticated: [(&str, Option<(&str, String)>); 5] = [
        ("no credentials", None),
        (
            "wrong bearer token",
            Some((
                "authorization",
                "Bearer pga-wrong-token-0000000000".to_owned(),
            )),
        ),
        (
            "token with a suffix",
            Some(("authorization", format!("Bearer {ADMIN_TOKEN}x"))),
        ),
        (
            "right token, wrong scheme",
            Some(("authorization", format!("Basic {ADMIN_TOKEN}"))),
        ),
        (
            "wrong x-api-key",
            Some(("x-api-key", "pga-wrong-token-0000000000".to_owned())),
        ),
    ];
    for (path, method) in &documented {
        assert!(
            !poolgate::api::PUBLIC_ROUTES.contains(&path.as_str()),
            "{path} is documented as protected but allow-listed"
        );
        let id = if path.starts_with("/admin/api/keys/") {
            key_id.as_str()
        } else {
            backend_id.as_str()
        };
        let url = format!("{}{}", gateway.url, path.replace("{id}", id));
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        for (what, header) in &unauthenticated {
            let mut request = gateway.client.request(method.clone(), &url);
            if let Some((name, value)) = header {
                request = request.header(*name, value);
            }
            if method == Method::POST || method == Method::PATCH {
                request = request.json(&json!({"name": "should-not-exist", "enabled": false}));
            }
            let answer = send(request).await;
            let error = assert_error(&answer, 401, &format!("{method} {path} with {what}"));
            assert_eq!(
                error["type"], "authentication_error",
                "{method} {path}: {answer}"
            );
        }
        // With the token, the GET routes answer 2xx (the ids above are real); HEAD is guarded
        // like GET.
        if method == Method::GET {
            let head = send(gateway.client.head(&url)).await;
            assert_eq!(head.status, 401, "HEAD {path} without the token: {head}");
            let answer = send(gateway.client.get(&url).bearer_auth(ADMIN_TOKEN)).await;
            assert_eq!(
                answer.status, 200,
                "{method} {path} with the token: {answer}"
            );
        }
    }

    // Nothing was changed by the refused requests.
    let after = gateway.backend(&backend_id).await;
    assert_eq!(after["enabled"], true, "{after}");
    assert_eq!(after["name"], "auth-victim");
    assert_eq!(list_backends(&gateway).await.len(), 1);
    let keys = admin_call(&gateway, Method::GET, "/keys").await;
    assert_eq!(keys.json.as_array().unwrap().len(), 1, "{keys}");
    assert!(keys.json[0]["revoked_at"].is_null(), "{keys}");
    let pools = admin_call(&gateway, Method::GET, "/pools").await;
    assert_eq!(pools.json.as_array().unwrap().len(), 2, "{pools}");

    // The public routes answer without credentials.
    for path in poolgate::api::PUBLIC_ROUTES {
        let answer = send(gateway.client.get(format!("{}{path}", gateway.url))).await;
        assert_eq!(answer.status, 200, "{path}: {answer}");
    }
    // The proxy routes want a client key too.
    let models = send(gateway.client.get(format!("{}/v1/models", gateway.url))).await;
    assert_error(&models, 401, "/v1/models without a key");
    let chat = chat_with_key(&gateway, "pga-wrong-token-0000000000", "m-auth").await;
    assert_error(&chat, 401, "chat with a wrong key");
    assert_eq!(upstream.calls(), 0, "no request reached the upstream");
    gateway.stop().await;
}

// === 2. backend CRUD ===

#[tokio::test]
async fn backend_crud_round_trip_keeps_the_key_write_only() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let original_key = "sk-crud-original-plaintext-0001";
    let body = json!({
        "name": "crud-1",
        "label": "CRUD one",
        "api_base_url": format!("{}/", upstream.openai_base_url()),
        "api_key": original_key,
        "timeout_seconds": 30,
        "rpm_limit": 100,
        "weight": 3,
        "pool": "primary",
        "model_mappings": { "m-crud": "up-crud", "m-crud-full": { "upstream_model": "up-full" } },
        "metadata": { "team": "infra" },
    });
    let created = admin_json(&gateway, Method::POST, "/backends", &body).await;
    assert_eq!(created.status, 201, "{created}");
    assert!(
        !created.text.contains(original_key) && !created.text.contains("original-plaintext"),
        "the plaintext key is echoed: {created}"
    );
    let b = &created.json;
    let id = b["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("bkd_"), "{id}");
    assert_eq!(b["name"], "crud-1");
    assert_eq!(b["label"], "CRUD one");
    assert_eq!(
        b["api_base_url"],
        upstream.openai_base_url(),
        "trailing slash removed"
    );
    assert_eq!(b["api_key"], "sk-…0001");
    assert_eq!(b["api"], "openai");
    assert_eq!(b["timeout_seconds"], 30);
    assert_eq!(b["rpm_limit"], 100);
    assert_eq!(b["weight"], 3);
    assert_eq!(b["pool"], "primary");
    assert_eq!(b["enabled"], true);
    assert_eq!(b["source"], "api");
    assert_eq!(b["status"], "healthy");
    assert_eq!(
        b["model_mappings"],
        json!({"m-crud": {"upstream_model": "up-crud"}, "m-crud-full": {"upstream_model": "up-full"}})
    );
    assert_eq!(b["metadata"], json!({"team": "infra"}));
    assert_eq!(b["http_version"], "auto");
    assert!(b["cooldown_until"].is_null());
    assert!(b["created_at"].as_str().is_some_and(|s| !s.is_empty()));

    // list and get show the same backend, masked.
    let list = admin_call(&gateway, Method::GET, "/backends").await;
    assert_eq!(list.status, 200);
    assert!(!list.text.contains(original_key), "{list}");
    let listed = list.json.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["api_key"], "sk-…0001");
    let got = admin_call(&gateway, Method::GET, &format!("/backends/{id}")).await;
    assert_eq!(got.status, 200, "{got}");
    assert!(!got.text.contains(original_key), "{got}");
    for field in fields("id name label api_base_url api_key timeout_seconds rpm_limit weight pool enabled source model_mappings metadata created_at") {
        assert_eq!(got.json[field], created.json[field], "field `{field}`");
    }

    // The stored key is the one used upstream.
    let (status, reply) = gateway.chat("m-crud").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(bearer_seen(&upstream), format!("Bearer {original_key}"));
    assert_eq!(upstream.last_request().unwrap().body["model"], "up-crud");

    // A partial patch changes only the fields given.
    let patched = admin_json(
        &gateway,
        Method::PATCH,
        &format!("/backends/{id}"),
        &json!({"rpm_limit": 50, "label": "renamed label"}),
    )
    .await;
    assert_eq!(patched.status, 200, "{patched}");
    assert_eq!(patched.json["rpm_limit"], 50);
    assert_eq!(patched.json["label"], "renamed label");
    for field in fields("id name api_base_url api_key timeout_seconds weight pool enabled source model_mappings metadata created_at") {
        assert_eq!(
            patched.json[field], created.json[field],
            "patch changed `{field}`"
        );
    }
    assert!(
        patched.json["updated_at"].as_str().unwrap()
            >= created.json["updated_at"].as_str().unwrap()
    );
    let reread = gateway.backend(&id).await;
    assert_eq!(reread["rpm_limit"], 50, "the patch was stored: {reread}");
    assert_eq!(reread["weight"], 3, "{reread}");

    // Patching the key: masked in the answer, and the upstream receives the new one.
    let new_key = "sk-crud-rotated-plaintext-0002";
    let rekeyed = admin_json(
        &gateway,
        Method::PATCH,
        &format!("/backends/{id}"),
        &json!({"api_key": new_key}),
    )
    .await;
    assert_eq!(rekeyed.status, 200, "{rekeyed}");
    assert!(!rekeyed.text.contains(new_key), "{rekeyed}");
    assert_eq!(rekeyed.json["api_key"], "sk-…0002");
    assert_eq!(rekeyed.json["rpm_limit"], 50, "earlier patch kept");
    let (status, reply) = gateway.chat("m-crud").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(bearer_seen(&upstream), format!("Bearer {new_key}"));
    assert_eq!(upstream.last_request().unwrap().version, "HTTP/1.1");

    // `http_version`: patched, shown, stored, and the next call goes over HTTP/2.
    let h2 = admin_json(
        &gateway,
        Method::PATCH,
        &format!("/backends/{id}"),
        &json!({"http_version": "http2"}),
    )
    .await;
    assert_eq!(h2.status, 200, "{h2}");
    assert_eq!(h2.json["http_version"], "http2");
    assert_eq!(gateway.backend(&id).await["http_version"], "http2");
    let (status, reply) = gateway.chat("m-crud").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(upstream.last_request().unwrap().version, "HTTP/2.0");

    // Delete: 204 with no body, then 404 everywhere.
    let deleted = admin_call(&gateway, Method::DELETE, &format!("/backends/{id}")).await;
    assert_eq!(deleted.status, 204, "{deleted}");
    assert!(deleted.text.is_empty(), "{deleted}");
    let gone = admin_call(&gateway, Method::GET, &format!("/backends/{id}")).await;
    let error = assert_error(&gone, 404, "get after delete");
    assert!(message(&error).contains(&id), "{gone}");
    let again = admin_call(&gateway, Method::DELETE, &format!("/backends/{id}")).await;
    assert_error(&again, 404, "second delete");
    assert!(list_backends(&gateway).await.is_empty());
    let calls = upstream.calls();
    let (status, reply) = gateway.chat("m-crud").await;
    assert_eq!(status, 404, "a deleted backend no longer serves: {reply}");
    assert_eq!(upstream.calls(), calls);

    // Unknown ids.
    let unknown = admin_call(&gateway, Method::GET, "/backends/bkd_doesnotexist000").await;
    assert_error(&unknown, 404, "get unknown");
    let unknown_patch = admin_json(
        &gateway,
        Method::PATCH,
        "/backends/bkd_doesnotexist000",
        &json!({"rpm_limit": 1}),
    )
    .await;
    assert_error(&unknown_patch, 404, "patch unknown");
    let unknown_reset = admin_call(
        &gateway,
        Method::POST,
        "/backends/bkd_doesnotexist000/reset-cooldown",
    )
    .await;
    assert_error(&unknown_reset, 404, "reset unknown");
    gateway.stop().await;
}

// === 3. validation ===

#[tokio::test]
async fn bad_backend_input_is_refused_with_a_json_error_naming_the_field() {
    let gateway = Gateway::start().await;
    let good = backend_body(
        "valid-1",
        "http://127.0.0.1:9/v1",
        "sk-valid-key-000001",
        "m-v",
    );
    let existing = gateway.add_backend(good.clone()).await;
    let before = list_backends(&gateway).await;

    let with = |field: &str, value: Value| {
        let mut body = backend_body(
            "bad-1",
            "http://127.0.0.1:9/v1",
            "sk-bad-key-0000001",
            "m-bad",
        );
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = backend_body(
            "bad-1",
            "http://127.0.0.1:9/v1",
            "sk-bad-key-0000001",
            "m-bad",
        );
        body.as_object_mut().unwrap().remove(field);
        body
    };
    // A bad value of one field: 400, `param` is the field, and the message names it.
    let bad_values = [
        ("ftp URL", "api_base_url", json!("ftp://x")),
        ("not a URL", "api_base_url", json!("not a url")),
        ("negative rpm", "rpm_limit", json!(-1)),
        ("wrong type", "rpm_limit", json!("abc")),
        ("timeout 0", "timeout_seconds", json!(0)),
        ("weight 0", "weight", json!(0)),
        ("name with a space", "name", json!("bad name")),
        ("key with whitespace", "api_key", json!("sk bad")),
        ("metadata not an object", "metadata", json!([1])),
        ("unknown pool", "pool", json!("no-such-pool")),
        ("unknown HTTP version", "http_version", json!("http3")),
        ("HTTP version not a string", "http_version", json!(2)),
        ("unknown field", "bogus_field", json!(1)),
        ("fractional rpm", "rpm_limit", json!(1.5)),
        (
            "mapping not a string",
            "model_mappings",
            json!({"m-bad": 5}),
        ),
    ];
    for (case, field, value) in bad_values {
        let answer = admin_json(&gateway, Method::POST, "/backends", &with(field, value)).await;
        let error = assert_error(&answer, 400, case);
        let field = if case == "mapping not a string" {
            "model_mappings.m-bad"
        } else {
            field
        };
        assert_eq!(error["param"], field, "{case}: {answer}");
        // Said in the API's words: no Rust type, no position in a body the client did not send.
        for internal in ["i64", "u32", "untagged", "MappingInput", " at line "] {
            assert!(!message(&error).contains(internal), "{case}: {answer}");
        }
        assert!(
            message(&error).contains(field),
            "{case}: the message does not name `{field}`: {answer}"
        );
        match case {
            "unknown pool" => assert_eq!(error["code"], "unknown_pool", "{answer}"),
            // The fields a misspelt one could have been include the spend cap.
            "unknown field" => assert!(
                message(&error).contains("`rpm_limit`")
                    && message(&error).contains("`monthly_spend_cap_usd`"),
                "{answer}"
            ),
            "fractional rpm" => {
                assert!(message(&error).contains("a whole number"), "{answer}");
            }
            "mapping not a string" => {
                assert!(message(&error).contains("upstream model id"), "{answer}");
            }
            _ => {}
        }
    }
    for field in fields("api_key name api_base_url") {
        let answer = admin_json(&gateway, Method::POST, "/backends", &without(field)).await;
        let error = assert_error(&answer, 400, &format!("missing {field}"));
        assert!(message(&error).contains(field), "{answer}");
        assert_eq!(error["param"], field, "{answer}");
        assert_eq!(error["code"], "missing_required_parameter", "{answer}");
    }
    let duplicate = backend_body(
        "valid-1",
        "http://127.0.0.1:9/v1",
        "sk-dup-key-0000001",
        "m-dup",
    );
    let answer = admin_json(&gateway, Method::POST, "/backends", &duplicate).await;
    let error = assert_error(&answer, 409, "duplicate name");
    assert_eq!(error["type"], "conflict_error", "{answer}");
    assert_eq!(
        error["param"], "name",
        "the form can show it next to the field: {answer}"
    );
    assert!(message(&error).contains("valid-1"), "{answer}");

    // Bodies that are not (valid) JSON.
    let syntax = send(
        gateway
            .admin(Method::POST, "/backends")
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"name": "bad-1", "api_key": "#),
    )
    .await;
    let error = assert_error(&syntax, 400, "invalid JSON syntax");
    assert!(message(&error).contains("JSON"), "{syntax}");

    let trailing = send(
        gateway
            .admin(Method::POST, "/backends")
            .header(CONTENT_TYPE, "application/json")
            .body(format!("{} {{}}", with("name", json!("bad-1")))),
    )
    .await;
    assert_error(&trailing, 400, "trailing data after the JSON value");

    let no_type = send(
        gateway
            .admin(Method::POST, "/backends")
            .body(serde_json::to_string(&with("name", json!("bad-1"))).unwrap()),
    )
    .await;
    let error = assert_error(&no_type, 415, "no content-type");
    assert!(message(&error).contains("application/json"), "{no_type}");
    let text_type = send(
        gateway
            .admin(Method::POST, "/backends")
            .header(CONTENT_TYPE, "text/plain")
            .body(serde_json::to_string(&with("name", json!("bad-1"))).unwrap()),
    )
    .await;
    assert_error(&text_type, 415, "text/plain content-type");

    let mut huge = with("name", json!("bad-1"));
    huge["metadata"] = json!({ "blob": "x".repeat(1024 * 1024 + 16) });
    let too_large = admin_json(&gateway, Method::POST, "/backends", &huge).await;
    let error = assert_error(&too_large, 413, "body over 1 MiB");
    assert_eq!(error["code"], "payload_too_large", "{too_large}");

    // A body just under the limit is read (and then refused for its own reason: metadata size).
    let mut near = with("name", json!("bad-1"));
    near["metadata"] = json!({ "blob": "x".repeat(1024 * 1024 - 1024) });
    let near_limit = admin_json(&gateway, Method::POST, "/backends", &near).await;
    let error = assert_error(&near_limit, 400, "body under 1 MiB with big metadata");
    assert_eq!(error["param"], "metadata", "{near_limit}");

    // PATCH validates too, and a refused patch changes nothing.
    let id = existing["id"].as_str().unwrap();
    for (case, patch, field) in [
        ("patch negative rpm", json!({"rpm_limit": -5}), "rpm_limit"),
        (
            "patch bad url",
            json!({"api_base_url": "ftp://x"}),
            "api_base_url",
        ),
        ("patch unknown field", json!({"nope": true}), "nope"),
        (
            "patch bad http_version",
            json!({"http_version": "h2c"}),
            "http_version",
        ),
        (
            "patch unknown pool",
            json!({"pool": "no-such-pool", "weight": 7}),
            "pool",
        ),
        (
            "patch bad weight after a good field",
            json!({"label": "changed", "weight": 1000}),
            "weight",
        ),
        // `null` would read as "left out" and change nothing: refused, naming the field.
        ("patch null name", json!({"name": null}), "name"),
        ("patch null rpm", json!({"rpm_limit": null}), "rpm_limit"),
        ("patch null key", json!({"api_key": null}), "api_key"),
    ] {
        let answer = admin_json(&gateway, Method::PATCH, &format!("/backends/{id}"), &patch).await;
        let error = assert_error(&answer, 400, case);
        assert!(message(&error).contains(field), "{case}: {answer}");
    }
    let dup = gateway
        .add_backend(backend_body(
            "valid-2",
            "http://127.0.0.1:9/v1",
            "sk-valid-key-000002",
            "m-v2",
        ))
        .await;
    let rename = send(
        gateway
            .admin(
                Method::PATCH,
                &format!("/backends/{}", dup["id"].as_str().unwrap()),
            )
            .json(&json!({"name": "valid-1"})),
    )
    .await;
    assert_error(&rename, 409, "patch to a duplicate name");
    let delete_dup = send(gateway.admin(
        Method::DELETE,
        &format!("/backends/{}", dup["id"].as_str().unwrap()),
    ))
    .await;
    assert_eq!(delete_dup.status, 204);

    // No half-written backend: the list is exactly as before, the stored one unchanged.
    let after = list_backends(&gateway).await;
    assert_eq!(after.len(), before.len(), "{after:?}");
    for (a, b) in after.iter().zip(&before) {
        for field in fields("id name label api_base_url api_key rpm_limit weight pool timeout_seconds model_mappings metadata updated_at") {
            assert_eq!(a[field], b[field], "`{field}` changed by a refused request");
        }
    }
    assert!(after.iter().all(|b| b["name"] != "bad-1"));
    let models = send(
        gateway
            .client
            .get(format!("{}/v1/models", gateway.url))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    let ids: Vec<&str> = models.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["m-v"], "{models}");
    gateway.stop().await;
}

// === 4. crypto at rest ===

#[tokio::test]
async fn upstream_keys_never_reach_the_disk_in_plaintext() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let keys: Vec<String> = (0..3)
        .map(|i| format!("sk-CANARY{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    let mut ids = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let created = gateway
            .add_backend(backend_body(
                &format!("canary-{i}"),
                &upstream.openai_base_url(),
                key,
                &format!("m-canary-{i}"),
            ))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // A key replaced by PATCH must not linger either.
    let replacement = format!("sk-CANARYR-{}", uuid::Uuid::new_v4().simple());
    let patched = admin_json(
        &gateway,
        Method::PATCH,
        &format!("/backends/{}", ids[0]),
        &json!({"api_key": replacement}),
    )
    .await;
    assert_eq!(patched.status, 200, "{patched}");
    // The keys are in use (so they are decrypted in memory, and requests are logged to the db).
    let (status, body) = gateway.chat("m-canary-0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bearer_seen(&upstream), format!("Bearer {replacement}"));
    let (status, body) = gateway.chat("m-canary-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bearer_seen(&upstream), format!("Bearer {}", keys[1]));
    gateway.usage_records(2).await;

    let all_keys: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .chain([replacement.as_str()])
        .collect();
    let scan = |dir: &Path, when: &str| {
        let files = files_in(dir);
        let names: Vec<String> = files
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"poolgate.db".to_owned()),
            "{when}: {names:?}"
        );
        assert!(
            names.contains(&"master.key".to_owned()),
            "{when}: {names:?}"
        );
        for (path, bytes) in &files {
            for key in &all_keys {
                assert!(
                    !contains_bytes(bytes, key.as_bytes()),
                    "{when}: the plaintext key `{key}` is in {}",
                    path.display()
                );
                // Not even the random part of it.
                let secret_part = key.rsplit('-').next().unwrap();
                assert!(
                    !contains_bytes(bytes, secret_part.as_bytes()),
                    "{when}: part of the key `{key}` is in {}",
                    path.display()
                );
            }
        }
        let stored: Vec<u8> = files
            .iter()
            .filter(|(p, _)| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("poolgate.db")
            })
            .flat_map(|(_, b)| b.clone())
            .collect();
        assert!(
            contains_bytes(&stored, b"pgenc:v1:"),
            "{when}: no sealed key found in the database files"
        );
        names
    };

    // While running (the WAL holds the recent writes) ...
    let running_names = scan(gateway.data_dir(), "while running");
    assert!(
        running_names.contains(&"poolgate.db-wal".to_owned()),
        "the database runs in WAL mode: {running_names:?}"
    );
    // ... and after a clean stop.
    let dir = gateway.stop().await;
    scan(dir.path(), "after stop");

    // The master key file is 32 bytes of base64, owner-only.
    let master = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    assert!(
        poolgate::crypto::MasterKey::from_base64(&master).is_ok(),
        "{master:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "master.key mode {mode:o}");
    }

    // After a restart, the sealed keys still open and reach the upstream.
    let gateway = Gateway::start_with("", Some(dir)).await;
    let (status, body) = gateway.chat("m-canary-2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bearer_seen(&upstream), format!("Bearer {}", keys[2]));
    gateway.stop().await;
}

// === 5. wrong master key ===

#[tokio::test]
async fn a_wrong_master_key_is_refused_at_start_and_the_right_one_works() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let key = "sk-masterkey-test-plaintext-0005";
    gateway
        .add_backend(backend_body(
            "mk-1",
            &upstream.openai_base_url(),
            key,
            "m-mk",
        ))
        .await;
    let dir = gateway.stop().await;
    let key_path = dir.path().join("master.key");
    let original = std::fs::read_to_string(&key_path).unwrap();

    // Another valid key.
    let other = poolgate::crypto::MasterKey::generate();
    let other_text = secrecy::ExposeSecret::expose_secret(&other.to_base64()).to_owned();
    assert_ne!(other_text.trim(), original.trim());
    std::fs::write(&key_path, &other_text).unwrap();
    let message = match poolgate::server::start(common::config_for("", dir.path()), false).await {
        Ok(running) => {
            running.shutdown().await.unwrap();
            panic!("the gateway started with the wrong master key");
        }
        Err(error) => error.to_string(),
    };
    assert!(message.contains("master key"), "{message}");
    assert!(message.contains("fingerprint"), "{message}");
    assert!(
        !message.contains(other_text.trim()) && !message.contains(original.trim()),
        "the error shows key material: {message}"
    );

    // A file that is not a key at all.
    std::fs::write(&key_path, "definitely not base64 !!").unwrap();
    let message = match poolgate::server::start(common::config_for("", dir.path()), false).await {
        Ok(running) => {
            running.shutdown().await.unwrap();
            panic!("the gateway started with a garbage master key");
        }
        Err(error) => error.to_string(),
    };
    assert!(message.contains("master key"), "{message}");
    assert!(message.contains("master.key"), "names the file: {message}");

    // The original key: starts, and the upstream key decrypts to the original plaintext.
    std::fs::write(&key_path, &original).unwrap();
    let gateway = Gateway::start_with("", Some(dir)).await;
    assert!(gateway.data().live().unreadable.is_empty());
    let (status, body) = gateway.chat("m-mk").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bearer_seen(&upstream), format!("Bearer {key}"));
    gateway.stop().await;
}

// === 6. pools ===

#[tokio::test]
async fn pools_are_listed_created_and_counted() {
    let gateway = Gateway::start().await;
    let pools = admin_call(&gateway, Method::GET, "/pools").await;
    assert_eq!(pools.status, 200, "{pools}");
    let names: Vec<(&str, i64)> = pools
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["priority"].as_i64().unwrap()))
        .collect();
    assert_eq!(names, vec![("primary", 0), ("fallback", 1)]);

    let created = admin_json(
        &gateway,
        Method::POST,
        "/pools",
        &json!({"name": "batch", "priority": 5, "description": "bulk jobs"}),
    )
    .await;
    assert_eq!(created.status, 201, "{created}");
    assert_eq!(
        created.json,
        json!({"name": "batch", "priority": 5, "description": "bulk jobs"})
    );
    let between = admin_json(
        &gateway,
        Method::POST,
        "/pools",
        &json!({"name": "early", "priority": -1}),
    )
    .await;
    assert_eq!(between.status, 201, "{between}");
    let pools = admin_call(&gateway, Method::GET, "/pools").await;
    let order: Vec<&str> = pools
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        vec!["early", "primary", "fallback", "batch"],
        "priority order"
    );

    let dup = admin_json(
        &gateway,
        Method::POST,
        "/pools",
        &json!({"name": "batch", "priority": 9}),
    )
    .await;
    let error = assert_error(&dup, 409, "duplicate pool");
    assert!(message(&error).contains("batch"), "{dup}");
    let dup_builtin = admin_json(
        &gateway,
        Method::POST,
        "/pools",
        &json!({"name": "primary", "priority": 9}),
    )
    .await;
    assert_error(&dup_builtin, 409, "duplicate of a built-in pool");
    for (case, body, field) in [
        (
            "bad name",
            json!({"name": "bad name", "priority": 1}),
            "name",
        ),
        ("empty name", json!({"name": "", "priority": 1}), "name"),
        (
            "priority out of range",
            json!({"name": "far", "priority": 10_000_000}),
            "priority",
        ),
        ("missing priority", json!({"name": "nopri"}), "priority"),
        (
            "unknown field",
            json!({"name": "x", "priority": 1, "weight": 2}),
            "weight",
        ),
    ] {
        let answer = admin_json(&gateway, Method::POST, "/pools", &body).await;
        let error = assert_error(&answer, 400, case);
        assert!(message(&error).contains(field), "{case}: {answer}");
    }
    // The refused pool (and the existing one) are unchanged.
    let pools = admin_call(&gateway, Method::GET, "/pools").await;
    assert_eq!(pools.json.as_array().unwrap().len(), 4, "{pools}");
    assert_eq!(pools.json[3]["priority"], 5, "{pools}");

    // Health counts per pool.
    let limited = MockUpstream::start().await;
    let healthy = MockUpstream::start().await;
    let refusing = MockUpstream::start().await;
    let cooling = gateway
        .add_backend(backend_body(
            "p-cooling",
            &limited.openai_base_url(),
            "sk-pool-key-00000001",
            "m-cool",
        ))
        .await;
    let mut disabled = backend_body(
        "p-disabled",
        &healthy.openai_base_url(),
        "sk-pool-key-00000002",
        "m-cool",
    );
    disabled["enabled"] = json!(false);
    let disabled = gateway.add_backend(disabled).await;
    assert_eq!(disabled["status"], "disabled", "{disabled}");
    let mut batch_ok = backend_body(
        "p-batch-ok",
        &healthy.openai_base_url(),
        "sk-pool-key-00000003",
        "m-batch",
    );
    batch_ok["pool"] = json!("batch");
    gateway.add_backend(batch_ok).await;
    let mut batch_bad = backend_body(
        "p-batch-bad",
        &refusing.openai_base_url(),
        "sk-pool-key-00000004",
        "m-refused",
    );
    batch_bad["pool"] = json!("batch");
    let batch_bad = gateway.add_backend(batch_bad).await;

    let stats = admin_call(&gateway, Method::GET, "/pools/stats").await;
    assert_eq!(stats.status, 200, "{stats}");
    let by_name = pool_stats_by_name(&stats.json);
    assert_eq!(by_name.len(), 4, "{stats}");
    // [total, enabled, healthy, cooling, error, disabled]
    assert_eq!(counts(&by_name["primary"]), [2, 1, 1, 0, 0, 1], "{stats}");
    assert_eq!(counts(&by_name["batch"]), [2, 2, 2, 0, 0, 0], "{stats}");
    assert_eq!(counts(&by_name["fallback"]), [0; 6], "{stats}");
    assert_eq!(counts(&by_name["early"]), [0; 6], "{stats}");

    // A 429 puts `p-cooling` into cooling; a 401 puts `p-batch-bad` into error.
    limited.push(Reply::rate_limited(Some(30)));
    let (status_429, body_429) = gateway.chat("m-cool").await;
    assert_eq!(limited.calls(), 1);
    assert_eq!(healthy.calls(), 0, "the disabled backend got no request");
    refusing.push(Reply::unauthorized());
    let (status_401, body_401) = gateway.chat("m-refused").await;
    assert_eq!(refusing.calls(), 1);

    let stats = admin_call(&gateway, Method::GET, "/pools/stats").await;
    let by_name = pool_stats_by_name(&stats.json);
    assert_eq!(counts(&by_name["primary"]), [2, 1, 0, 1, 0, 1], "{stats}");
    assert_eq!(counts(&by_name["batch"]), [2, 2, 1, 0, 1, 0], "{stats}");
    assert_eq!(by_name["batch"]["priority"], 5);
    let cooling = gateway.backend(cooling["id"].as_str().unwrap()).await;
    assert_eq!(cooling["status"], "cooling", "{cooling}");
    assert!(
        cooling["cooldown_remaining_ms"].as_u64().unwrap() > 25_000,
        "{cooling}"
    );
    let broken = gateway.backend(batch_bad["id"].as_str().unwrap()).await;
    assert_eq!(broken["status"], "error", "{broken}");
    // And `GET /backends` agrees with the counts.
    let statuses: BTreeMap<String, String> = list_backends(&gateway)
        .await
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_owned(),
                b["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(statuses["p-cooling"], "cooling");
    assert_eq!(statuses["p-disabled"], "disabled");
    assert_eq!(statuses["p-batch-ok"], "healthy");
    assert_eq!(statuses["p-batch-bad"], "error");

    // What the client saw when the only backend for its model was rate limited / refused the
    // key: no upstream could serve it. A 429 upstream should surface as 429 with Retry-After.
    assert_eq!(
        status_429, 429,
        "the only backend answered 429 (retry-after 30): the client should get 429, got {status_429} {body_429}"
    );
    assert!(status_401 >= 500, "{status_401} {body_401}");
    gateway.stop().await;
}

// === 7. reset-cooldown ===

#[tokio::test]
async fn reset_cooldown_brings_a_cooling_backend_back_at_once() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let a = gateway
        .add_openai_backend(
            "reset-a",
            &primary.openai_base_url(),
            "primary",
            &["m-reset"],
        )
        .await;
    gateway
        .add_openai_backend(
            "reset-b",
            &fallback.openai_base_url(),
            "fallback",
            &["m-reset"],
        )
        .await;
    let id = a["id"].as_str().unwrap().to_owned();

    // The primary answers 429 (retry-after 60): the request fails over to the fallback.
    primary.push(Reply::rate_limited(Some(60)));
    let (status, body) = gateway.chat("m-reset").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((primary.calls(), fallback.calls()), (1, 1));
    let cooling = gateway.backend(&id).await;
    assert_eq!(cooling["status"], "cooling", "{cooling}");
    assert!(cooling["cooldown_until"].is_string(), "{cooling}");
    let remaining = cooling["cooldown_remaining_ms"].as_u64().unwrap();
    assert!((55_000..=60_000).contains(&remaining), "{cooling}");
    assert_eq!(cooling["consecutive_429_count"], 1, "{cooling}");
    assert!(
        cooling["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("429")),
        "{cooling}"
    );

    // While cooling, requests skip it.
    let (status, _) = gateway.chat("m-reset").await;
    assert_eq!(status, 200);
    assert_eq!((primary.calls(), fallback.calls()), (1, 2));

    let reset = admin_call(
        &gateway,
        Method::POST,
        &format!("/backends/{id}/reset-cooldown"),
    )
    .await;
    assert_eq!(reset.status, 200, "{reset}");
    assert_eq!(reset.json["id"], id.as_str());
    assert_eq!(reset.json["status"], "healthy", "{reset}");
    assert!(reset.json["cooldown_until"].is_null(), "{reset}");
    assert!(reset.json["cooldown_remaining_ms"].is_null(), "{reset}");
    assert_eq!(reset.json["consecutive_429_count"], 0, "{reset}");
    assert!(reset.json["last_error"].is_null(), "{reset}");
    assert!(
        !reset.text.contains("sk-reset-a-secret-key-0001"),
        "{reset}"
    );
    let reread = gateway.backend(&id).await;
    assert_eq!(reread["status"], "healthy", "{reread}");
    assert!(reread["cooldown_until"].is_null(), "{reread}");

    // The very next request goes to the primary again.
    let (status, body) = gateway.chat("m-reset").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((primary.calls(), fallback.calls()), (2, 2));

    // The reset is persisted: after a restart the backend is still healthy and still first.
    let dir = gateway.stop().await;
    let gateway = Gateway::start_with("", Some(dir)).await;
    let restarted = gateway.backend(&id).await;
    assert_eq!(restarted["status"], "healthy", "{restarted}");
    assert!(restarted["cooldown_until"].is_null(), "{restarted}");
    let (status, _) = gateway.chat("m-reset").await;
    assert_eq!(status, 200);
    assert_eq!((primary.calls(), fallback.calls()), (3, 2));
    gateway.stop().await;
}

#[tokio::test]
async fn a_cooldown_survives_a_restart_until_reset() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let a = gateway
        .add_openai_backend(
            "persist-a",
            &primary.openai_base_url(),
            "primary",
            &["m-persist"],
        )
        .await;
    gateway
        .add_openai_backend(
            "persist-b",
            &fallback.openai_base_url(),
            "fallback",
            &["m-persist"],
        )
        .await;
    let id = a["id"].as_str().unwrap().to_owned();
    primary.push(Reply::rate_limited(Some(120)));
    let (status, body) = gateway.chat("m-persist").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.backend(&id).await["status"], "cooling");
    // The cooldown is written behind; wait until it reached the database.
    let db = gateway.db_path();
    common::eventually("the cooldown is persisted", || {
        let (db, id) = (db.clone(), id.clone());
        async move { sqlite_backend_status(&db, &id).await == "cooling" }
    })
    .await;
    let dir = gateway.stop().await;
    let gateway = Gateway::start_with("", Some(dir)).await;
    let restarted = gateway.backend(&id).await;
    assert_eq!(restarted["status"], "cooling", "{restarted}");
    assert!(
        restarted["cooldown_remaining_ms"].as_u64().unwrap() > 100_000,
        "{restarted}"
    );
    let (status, _) = gateway.chat("m-persist").await;
    assert_eq!(status, 200);
    assert_eq!(
        (primary.calls(), fallback.calls()),
        (1, 2),
        "still skipped after restart"
    );
    let reset = admin_call(
        &gateway,
        Method::POST,
        &format!("/backends/{id}/reset-cooldown"),
    )
    .await;
    assert_eq!(reset.json["status"], "healthy", "{reset}");
    let (status, _) = gateway.chat("m-persist").await;
    assert_eq!(status, 200);
    assert_eq!((primary.calls(), fallback.calls()), (2, 2));
    gateway.stop().await;
}

/// The `status` column of a backend row, read with a separate SQLite connection.
async fn sqlite_backend_status(db: &Path, id: &str) -> String {
    use sqlx::{ConnectOptions, Row};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let row = sqlx::query("SELECT status FROM backends WHERE id = ?")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    row.try_get::<String, _>("status").unwrap()
}

// === 8. client keys ===

/// An admin token written like a client key (`pgk-<id>-<secret>`) still opens the proxy routes
/// and the admin API, and a client key that is neither it nor stored does not.
#[tokio::test]
async fn an_admin_token_shaped_like_a_client_key_works_as_one() {
    let shaped = "pgk-abcdefghij12-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start_with_admin_token("", None, shaped).await;
    gateway
        .add_openai_backend("shaped", &upstream.openai_base_url(), "primary", &["m-a"])
        .await;
    let answer = chat_with_key(&gateway, shaped, "m-a").await;
    assert_eq!(answer.status, 200, "{answer}");
    let other = chat_with_key(
        &gateway,
        "pgk-abcdefghij12-ABCDEFGHIJKLMNOPQRSTUVWXYZ012346",
        "m-a",
    )
    .await;
    assert_eq!(other.status, 401, "{other}");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn client_keys_are_shown_once_work_and_can_be_revoked() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    gateway
        .add_openai_backend(
            "keys-1",
            &upstream.openai_base_url(),
            "primary",
            &["m-a", "m-b"],
        )
        .await;

    let created = admin_json(
        &gateway,
        Method::POST,
        "/keys",
        &json!({"name": "ci runner"}),
    )
    .await;
    assert_eq!(created.status, 201, "{created}");
    let key = created.json["key"].as_str().unwrap().to_owned();
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pgk-"), "{key}");
    assert!(key.starts_with(&format!("pgk-{id}-")), "{key} / {id}");
    let prefix = created.json["display_prefix"].as_str().unwrap();
    assert_eq!(prefix, format!("pgk-{id}-…"));
    assert_eq!(created.json["name"], "ci runner");
    assert_eq!(created.json["rpm_limit"], 0);
    assert_eq!(created.json["allowed_models"], json!([]));
    assert!(created.json["revoked_at"].is_null());
    let secret = key.rsplit('-').next().unwrap().to_owned();

    let list = admin_call(&gateway, Method::GET, "/keys").await;
    assert_eq!(list.status, 200, "{list}");
    assert!(!list.text.contains(&key), "{list}");
    assert!(!list.text.contains(&secret), "{list}");
    assert!(!list.text.contains("hash"), "{list}");
    let listed = list.json.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(listed[0].get("key").is_none(), "{list}");
    assert_eq!(listed[0]["display_prefix"], prefix);

    // The key works, and usage is attributed to it.
    let answer = chat_with_key(&gateway, &key, "m-a").await;
    assert_eq!(answer.status, 200, "{answer}");
    let records = gateway.usage_records(1).await;
    assert_eq!(records[0]["client_key_id"], id.as_str());
    let (status, _) = gateway.chat("m-a").await;
    assert_eq!(status, 200, "the admin token works as a client key");
    gateway.usage_records(2).await;
    let mine = admin_call(&gateway, Method::GET, &format!("/usage?client_key_id={id}")).await;
    let rows = mine.json["records"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{mine}");
    assert_eq!(rows[0]["client_key_id"], id.as_str());
    // So does `x-api-key`.
    let via_header = send(
        gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .header("x-api-key", &key)
            .json(&json!({"model": "m-a", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(via_header.status, 200, "{via_header}");
    // A tampered secret does not.
    let mut tampered = key.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'a' { 'b' } else { 'a' });
    let refused = chat_with_key(&gateway, &tampered, "m-a").await;
    assert_error(&refused, 401, "tampered key");

    // Revoke: 204, then the same key is refused; the list shows it revoked.
    let calls = upstream.calls();
    let revoked = admin_call(&gateway, Method::DELETE, &format!("/keys/{id}")).await;
    assert_eq!(revoked.status, 204, "{revoked}");
    let refused = chat_with_key(&gateway, &key, "m-a").await;
    let error = assert_error(&refused, 401, "revoked key");
    assert_eq!(error["type"], "authentication_error");
    assert_eq!(
        upstream.calls(),
        calls,
        "a revoked key reached the upstream"
    );
    let list = admin_call(&gateway, Method::GET, "/keys").await;
    assert!(list.json[0]["revoked_at"].is_string(), "{list}");
    let again = admin_call(&gateway, Method::DELETE, &format!("/keys/{id}")).await;
    assert_error(&again, 404, "revoking twice");
    let unknown = admin_call(&gateway, Method::DELETE, "/keys/nosuchkey000").await;
    assert_error(&unknown, 404, "revoking an unknown key");

    // allowed_models.
    let (_, limited_models) = gateway
        .create_key(json!({"name": "only a", "allowed_models": ["m-a"]}))
        .await;
    let ok = chat_with_key(&gateway, &limited_models, "m-a").await;
    assert_eq!(ok.status, 200, "{ok}");
    let calls = upstream.calls();
    let forbidden = chat_with_key(&gateway, &limited_models, "m-b").await;
    let error = assert_error(&forbidden, 403, "model not allowed");
    assert!(message(&error).contains("m-b"), "{forbidden}");
    assert_eq!(upstream.calls(), calls);

    // rpm_limit 1: the second request in the minute is refused with Retry-After.
    let (_, slow) = gateway
        .create_key(json!({"name": "slow", "rpm_limit": 1}))
        .await;
    let first = chat_with_key(&gateway, &slow, "m-a").await;
    assert_eq!(first.status, 200, "{first}");
    let calls = upstream.calls();
    let second = chat_with_key(&gateway, &slow, "m-a").await;
    let error = assert_error(&second, 429, "second request within the key's rpm");
    assert_eq!(error["code"], "rate_limit_exceeded", "{second}");
    let retry_after: u64 = second
        .headers
        .get(RETRY_AFTER)
        .expect("Retry-After on 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        upstream.calls(),
        calls,
        "the refused request reached the upstream"
    );

    // Bad key bodies.
    for (case, body, field) in [
        ("empty name", json!({"name": "  "}), "name"),
        (
            "negative rpm",
            json!({"name": "x", "rpm_limit": -1}),
            "rpm_limit",
        ),
        (
            "bad model",
            json!({"name": "x", "allowed_models": ["a b"]}),
            "allowed_models",
        ),
        (
            "unknown field",
            json!({"name": "x", "expires": 1}),
            "expires",
        ),
    ] {
        let answer = admin_json(&gateway, Method::POST, "/keys", &body).await;
        let error = assert_error(&answer, 400, case);
        assert!(message(&error).contains(field), "{case}: {answer}");
    }
    let list = admin_call(&gateway, Method::GET, "/keys").await;
    assert_eq!(list.json.as_array().unwrap().len(), 3, "{list}");
    gateway.stop().await;
}

// === 9. config file sync ===

#[tokio::test]
async fn config_file_backends_are_synced_on_every_start() {
    let upstream_a = MockUpstream::start().await;
    let upstream_b = MockUpstream::start().await;
    let env_var = "POOLGATE_TEST_CONFIG_FILE_BACKENDS_ARE_SYNCED_KEY_A";
    let env_key = "sk-from-env-config-sync-000a";
    std::env::set_var(env_var, env_key);

    let first = format!(
        r#"
[[pools]]
name = "cfgpool"
priority = 3
description = "declared in the file"

[[backends]]
name = "cfg-a"
api_base_url = "{a}"
api_key = "env:{env_var}"
pool = "cfgpool"
model_mappings = {{ "m-cfg-a" = "up-a" }}

[[backends]]
name = "cfg-b"
api_base_url = "{b}"
api_key = "sk-cfg-b-literal-key-0001"
rpm_limit = 10
http_version = "http2"
model_mappings = {{ "m-cfg-b" = "up-b" }}
"#,
        a = upstream_a.openai_base_url(),
        b = upstream_b.openai_base_url(),
    );
    let gateway = Gateway::start_with(&first, None).await;
    let a = backend_named(&gateway, "cfg-a")
        .await
        .expect("cfg-a synced");
    let b = backend_named(&gateway, "cfg-b")
        .await
        .expect("cfg-b synced");
    assert_eq!(a["source"], "config", "{a}");
    assert_eq!(b["source"], "config", "{b}");
    assert_eq!(a["pool"], "cfgpool");
    assert_eq!(a["api_key"], "sk-…000a", "{a}");
    assert_eq!(b["rpm_limit"], 10);
    let pools = admin_call(&gateway, Method::GET, "/pools").await;
    assert!(
        pools
            .json
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "cfgpool"
                && p["priority"] == 3
                && p["description"] == "declared in the file"),
        "{pools}"
    );
    let (status, body) = gateway.chat("m-cfg-a").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bearer_seen(&upstream_a), format!("Bearer {env_key}"));
    let (status, body) = gateway.chat("m-cfg-b").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bearer_seen(&upstream_b), "Bearer sk-cfg-b-literal-key-0001");
    assert_eq!(
        (&a["http_version"], &b["http_version"]),
        (&json!("auto"), &json!("http2"))
    );
    assert_eq!(upstream_a.last_request().unwrap().version, "HTTP/1.1");
    assert_eq!(upstream_b.last_request().unwrap().version, "HTTP/2.0");

    // An API edit of a config backend lasts until the next start.
    let edited = send(
        gateway
            .admin(
                Method::PATCH,
                &format!("/backends/{}", b["id"].as_str().unwrap()),
            )
            .json(&json!({"weight": 7, "rpm_limit": 99})),
    )
    .await;
    assert_eq!(edited.status, 200, "{edited}");
    assert_eq!(edited.json["source"], "config", "{edited}");
    // cfg-b is rate limited (cooling) when the gateway stops.
    upstream_b.push(Reply::rate_limited(Some(300)));
    let (status, _) = gateway.chat("m-cfg-b").await;
    assert_eq!(status, 429);
    assert_eq!(
        gateway.backend(b["id"].as_str().unwrap()).await["status"],
        "cooling"
    );

    // An API backend lives beside them.
    let api = gateway
        .add_openai_backend(
            "api-x",
            &upstream_b.openai_base_url(),
            "primary",
            &["m-api"],
        )
        .await;
    assert_eq!(api["source"], "api");
    let dir = gateway.stop().await;

    // Restart: cfg-a removed from the file, cfg-b changed (key, rpm, label, mapping).
    let second = format!(
        r#"
[[pools]]
name = "cfgpool"
priority = 3

[[backends]]
name = "cfg-b"
label = "changed label"
api_base_url = "{b}"
api_key = "sk-cfg-b-rotated-key-0002"
rpm_limit = 20
model_mappings = {{ "m-cfg-b" = "up-b2" }}
"#,
        b = upstream_b.openai_base_url(),
    );
    let gateway = Gateway::start_with(&second, Some(dir)).await;
    let all = list_backends(&gateway).await;
    assert!(
        all.iter().all(|x| x["name"] != "cfg-a"),
        "cfg-a was deleted: {all:?}"
    );
    assert_eq!(all.len(), 2, "{all:?}");
    let gone = send(gateway.admin(
        Method::GET,
        &format!("/backends/{}", a["id"].as_str().unwrap()),
    ))
    .await;
    assert_error(&gone, 404, "the removed config backend");
    let b2 = backend_named(&gateway, "cfg-b").await.unwrap();
    assert_eq!(b2["id"], b["id"], "the changed backend keeps its id");
    assert_eq!(b2["created_at"], b["created_at"]);
    assert_eq!(b2["source"], "config");
    assert_eq!(b2["rpm_limit"], 20);
    assert_eq!(b2["label"], "changed label");
    assert_eq!(b2["api_key"], "sk-…0002");
    assert_eq!(
        b2["model_mappings"],
        json!({"m-cfg-b": {"upstream_model": "up-b2"}})
    );
    assert_eq!(
        b2["weight"], 1,
        "the API edit was replaced by the file: {b2}"
    );
    assert_eq!(
        b2["status"], "cooling",
        "the cooldown is kept across the sync (matched by name): {b2}"
    );
    assert_eq!(b2["consecutive_429_count"], 1, "{b2}");
    let reset = send(gateway.admin(
        Method::POST,
        &format!("/backends/{}/reset-cooldown", b["id"].as_str().unwrap()),
    ))
    .await;
    assert_eq!(reset.status, 200, "{reset}");
    let api2 = backend_named(&gateway, "api-x").await.unwrap();
    for field in fields("id source api_key pool model_mappings created_at updated_at") {
        assert_eq!(
            api2[field], api[field],
            "the API backend's `{field}` was touched"
        );
    }
    let (status, body) = gateway.chat("m-cfg-b").await;
    assert_eq!(status, 200, "{body}");
    let seen = upstream_b.last_request().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-cfg-b-rotated-key-0002")
    );
    assert_eq!(seen.body["model"], "up-b2");
    let (status, _) = gateway.chat("m-cfg-a").await;
    assert_eq!(status, 404, "the removed backend's model is gone");
    let (status, _) = gateway.chat("m-api").await;
    assert_eq!(status, 200);
    let dir = gateway.stop().await;

    // A config backend named like an API backend: start fails, clearly, and changes nothing.
    let clash = format!(
        r#"
[[backends]]
name = "api-x"
api_base_url = "{b}"
api_key = "sk-clashing-key-00000003"
"#,
        b = upstream_b.openai_base_url(),
    );
    let message = match poolgate::server::start(common::config_for(&clash, dir.path()), false).await
    {
        Ok(running) => {
            running.shutdown().await.unwrap();
            panic!("the gateway started with a config backend clashing with an API backend");
        }
        Err(error) => error.to_string(),
    };
    assert!(message.contains("api-x"), "{message}");
    assert!(message.contains("API"), "{message}");
    // A config backend in a pool that exists nowhere: start fails naming the pool.
    let orphan = format!(
        r#"
[[backends]]
name = "cfg-orphan"
api_base_url = "{b}"
api_key = "sk-orphan-key-000000004"
pool = "undeclared-pool"
"#,
        b = upstream_b.openai_base_url(),
    );
    let message =
        match poolgate::server::start(common::config_for(&orphan, dir.path()), false).await {
            Ok(running) => {
                running.shutdown().await.unwrap();
                panic!("the gateway started with a backend in an undeclared pool");
            }
            Err(error) => error.to_string(),
        };
    assert!(message.contains("undeclared-pool"), "{message}");
    let gateway = Gateway::start_with(&second, Some(dir)).await;
    let api3 = backend_named(&gateway, "api-x").await.unwrap();
    assert_eq!(api3["source"], "api");
    assert_eq!(api3["api_key"], api["api_key"]);
    assert_eq!(list_backends(&gateway).await.len(), 2);
    gateway.stop().await;
}

// === 10. health, unknown routes, wrong methods ===

#[tokio::test]
async fn healthz_unknown_routes_and_wrong_methods_answer_json() {
    let gateway = Gateway::start().await;
    let health = send(gateway.client.get(format!("{}/healthz", gateway.url))).await;
    assert_eq!(health.status, 200, "{health}");
    assert_eq!(health.json, json!({"status": "ok"}));
    assert_eq!(
        health
            .headers
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );

    for path in ["/nope", "/v1/nope", "/admin/nope"] {
        let answer = send(gateway.client.get(format!("{}{path}", gateway.url))).await;
        let error = assert_error(&answer, 404, path);
        assert_eq!(error["type"], "not_found_error", "{path}: {answer}");
    }
    let admin_unknown = admin_call(&gateway, Method::GET, "/nope").await;
    assert_error(&admin_unknown, 404, "unknown admin route with the token");
    let with_admin_token = |method: &Method, path: &str| {
        send(
            gateway
                .client
                .request(method.clone(), format!("{}{path}", gateway.url))
                .bearer_auth(ADMIN_TOKEN),
        )
    };

    for (method, path) in [
        (Method::DELETE, "/healthz"),
        (Method::GET, "/v1/chat/completions"),
        (Method::PUT, "/admin/api/backends"),
        (Method::POST, "/admin/api/pools/stats"),
    ] {
        let answer = with_admin_token(&method, path).await;
        let error = assert_error(&answer, 405, &format!("{method} {path}"));
        assert_eq!(error["code"], "method_not_allowed", "{answer}");
        assert_eq!(error["type"], "invalid_request_error", "{answer}");
        assert!(
            answer.headers.get("allow").is_some(),
            "{method} {path}: a 405 must carry an Allow header: {:?}",
            answer.headers
        );
    }
    // Under `/v1/messages` both are in Anthropic's shape, as every other error there is.
    for (method, path, status, kind) in [
        (Method::GET, "/v1/messages", 405, "invalid_request_error"),
        (
            Method::GET,
            "/v1/messages/count_tokens",
            405,
            "invalid_request_error",
        ),
        (Method::POST, "/v1/messages/batches", 404, "not_found_error"),
    ] {
        let answer = with_admin_token(&method, path).await;
        assert_eq!(answer.status, status, "{method} {path}: {answer}");
        assert_eq!(answer.json["type"], "error", "{method} {path}: {answer}");
        assert_eq!(
            answer.json["error"]["type"], kind,
            "{method} {path}: {answer}"
        );
        assert!(answer.json["error"]["message"].is_string(), "{answer}");
    }
    gateway.stop().await;
}

// === 11. usage and stats ===

#[tokio::test]
async fn usage_and_stats_report_proxied_requests() {
    let one = MockUpstream::start().await;
    let two = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let b1 = gateway
        .add_openai_backend("usage-1", &one.openai_base_url(), "primary", &["m-u1"])
        .await;
    let b2 = gateway
        .add_openai_backend("usage-2", &two.openai_base_url(), "primary", &["m-u2"])
        .await;
    let (b1, b2) = (b1["id"].as_str().unwrap(), b2["id"].as_str().unwrap());

    let sequence = ["m-u1", "m-u2", "m-u1", "m-unknown", "m-u2", "m-u1"];
    for model in sequence {
        let (status, body) = gateway.chat(model).await;
        let expected = if model == "m-unknown" { 404 } else { 200 };
        assert_eq!(status, expected, "{model}: {body}");
    }
    let records = gateway.usage_records(sequence.len()).await;
    assert_eq!(records.len(), sequence.len(), "{records:?}");
    // Newest first.
    let models: Vec<&str> = records
        .iter()
        .map(|r| r["canonical_model"].as_str().unwrap())
        .collect();
    let mut newest_first = sequence.to_vec();
    newest_first.reverse();
    assert_eq!(models, newest_first);
    assert!(records
        .windows(2)
        .all(|w| w[0]["ts_ms"].as_i64() >= w[1]["ts_ms"].as_i64()));
    for record in &records {
        match record["canonical_model"].as_str().unwrap() {
            "m-u1" => assert_eq!(record["backend_id"], b1, "{record}"),
            "m-u2" => assert_eq!(record["backend_id"], b2, "{record}"),
            _ => {
                assert!(record["backend_id"].is_null(), "{record}");
                assert_eq!(record["status"], 404, "{record}");
                assert_eq!(record["outcome"], "error", "{record}");
            }
        }
        assert_eq!(record["client_key_id"], "admin", "{record}");
    }

    // Filters.
    let by_model = admin_call(&gateway, Method::GET, "/usage?model=m-u1").await;
    assert_eq!(by_model.status, 200, "{by_model}");
    let rows = by_model.json["records"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{by_model}");
    assert!(rows.iter().all(|r| r["canonical_model"] == "m-u1"));
    let by_backend = admin_call(&gateway, Method::GET, &format!("/usage?backend_id={b2}")).await;
    let rows = by_backend.json["records"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{by_backend}");
    assert!(rows.iter().all(|r| r["backend_id"] == b2));
    assert!(by_backend.json["next_cursor"].is_null(), "{by_backend}");
    let none = admin_call(&gateway, Method::GET, "/usage?model=m-never-used").await;
    assert_eq!(none.json["records"], json!([]), "{none}");
    let future = records[0]["ts_ms"].as_i64().unwrap() + 1;
    let window = admin_call(&gateway, Method::GET, &format!("/usage?from_ms={future}")).await;
    assert_eq!(window.json["records"], json!([]), "{window}");

    // Cursor pagination: pages of 4 then 2 give every record once, in order.
    let page1 = admin_call(&gateway, Method::GET, "/usage?limit=4").await;
    assert_eq!(page1.status, 200, "{page1}");
    let rows1 = page1.json["records"].as_array().unwrap().clone();
    assert_eq!(rows1.len(), 4);
    let cursor = page1.json["next_cursor"].as_i64().expect("a next cursor");
    let page2 = admin_call(
        &gateway,
        Method::GET,
        &format!("/usage?limit=4&before={cursor}"),
    )
    .await;
    let rows2 = page2.json["records"].as_array().unwrap().clone();
    assert_eq!(rows2.len(), 2, "{page2}");
    assert!(page2.json["next_cursor"].is_null(), "{page2}");
    let paged: Vec<&Value> = rows1.iter().chain(&rows2).collect();
    let ids: Vec<&str> = paged
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    let expected_ids: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected_ids);
    // Pages with a filter.
    let f1 = admin_call(&gateway, Method::GET, "/usage?model=m-u1&limit=2").await;
    assert_eq!(f1.json["records"].as_array().unwrap().len(), 2, "{f1}");
    let cursor = f1.json["next_cursor"].as_i64().unwrap();
    let f2 = admin_call(
        &gateway,
        Method::GET,
        &format!("/usage?model=m-u1&limit=2&before={cursor}"),
    )
    .await;
    let rows = f2.json["records"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{f2}");
    assert_eq!(rows[0]["canonical_model"], "m-u1");

    // Bad queries.
    for query in [
        "limit=abc",
        "before=yesterday",
        "from_ms=1.5",
        "outcome=bogus",
    ] {
        let answer = admin_call(&gateway, Method::GET, &format!("/usage?{query}")).await;
        let error = assert_error(&answer, 400, query);
        assert_eq!(error["code"], "invalid_query", "{answer}");
    }
    let answer = admin_call(&gateway, Method::GET, "/usage?outcome=succes").await;
    assert_eq!(assert_error(&answer, 400, "typo")["param"], "outcome");
    let answer = admin_call(&gateway, Method::GET, "/usage?outcome=error").await;
    assert_eq!(answer.status, 200, "{answer}");
    assert!(
        answer.json["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|record| record["outcome"] == "error"),
        "{answer}"
    );
    let answer = admin_call(&gateway, Method::GET, "/stats?bucket_seconds=x").await;
    assert_error(&answer, 400, "stats with a bad query");

    // Statistics add up.
    let stats = admin_call(&gateway, Method::GET, "/stats").await;
    assert_eq!(stats.status, 200, "{stats}");
    let s = &stats.json;
    assert_eq!(s["total"]["requests"], 6, "{stats}");
    assert_eq!(s["total"]["errors"], 1, "{stats}");
    let rate = s["total"]["error_rate"].as_f64().unwrap();
    assert!((rate - 1.0 / 6.0).abs() < 1e-9, "{rate}");
    assert_eq!(s["by_backend"][b1]["requests"], 3, "{stats}");
    assert_eq!(s["by_backend"][b2]["requests"], 2, "{stats}");
    assert_eq!(s["by_backend"]["-"]["requests"], 1, "{stats}");
    assert_eq!(s["by_model"]["m-u1"]["requests"], 3, "{stats}");
    assert_eq!(s["by_model"]["m-u2"]["requests"], 2, "{stats}");
    assert_eq!(s["by_model"]["m-unknown"]["errors"], 1, "{stats}");
    let sum = |map: &Value, field: &str| -> u64 {
        map.as_object()
            .unwrap()
            .values()
            .map(|v| v[field].as_u64().unwrap())
            .sum()
    };
    for field in ["requests", "errors", "prompt_tokens", "completion_tokens"] {
        let total = s["total"][field].as_u64().unwrap();
        assert_eq!(sum(&s["by_backend"], field), total, "by_backend {field}");
        assert_eq!(sum(&s["by_model"], field), total, "by_model {field}");
        let series: u64 = s["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[field].as_u64().unwrap())
            .sum();
        assert_eq!(series, total, "series {field}");
    }
    let prompt: u64 = records
        .iter()
        .filter_map(|r| r["prompt_tokens"].as_u64())
        .sum();
    let completion: u64 = records
        .iter()
        .filter_map(|r| r["completion_tokens"].as_u64())
        .sum();
    assert_eq!(s["total"]["prompt_tokens"], prompt);
    assert_eq!(s["total"]["completion_tokens"], completion);
    assert_eq!(prompt, 50, "the mock counts 10 prompt tokens per request");
    assert!(s["total"]["p50_latency_ms"].is_u64(), "{stats}");

    let filtered = admin_call(&gateway, Method::GET, &format!("/stats?backend_id={b1}")).await;
    assert_eq!(filtered.json["total"]["requests"], 3, "{filtered}");
    let filtered = admin_call(&gateway, Method::GET, "/stats?model=m-u2").await;
    assert_eq!(filtered.json["total"]["requests"], 2, "{filtered}");
    let past = admin_call(&gateway, Method::GET, "/stats?from_ms=0&to_ms=1000").await;
    assert_eq!(past.json["total"]["requests"], 0, "{past}");
    // Requests made with the admin token carry the caller id `admin`.
    let by_admin = admin_call(&gateway, Method::GET, "/stats?client_key_id=admin").await;
    assert_eq!(
        by_admin.json["total"]["requests"], s["total"]["requests"],
        "{by_admin}"
    );
    let by_other = admin_call(&gateway, Method::GET, "/stats?client_key_id=nobody").await;
    assert_eq!(by_other.json["total"]["requests"], 0, "{by_other}");
    // A month answers from the hourly rollup: the same counts, tokens and groups, no percentiles.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let month = admin_call(
        &gateway,
        Method::GET,
        &format!("/stats?from_ms={}&to_ms={now}", now - 30 * 86_400_000),
    )
    .await;
    let m = &month.json;
    assert_eq!(m["source"], "rollup", "{month}");
    assert_eq!(s["source"], "raw", "{stats}");
    assert_eq!(m["bucket_ms"].as_i64().unwrap() % 3_600_000, 0, "{month}");
    for field in [
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ] {
        assert_eq!(m["total"][field], s["total"][field], "month {field}");
    }
    assert_eq!(m["by_backend"][b1]["requests"], 3, "{month}");
    assert_eq!(m["by_model"]["m-unknown"]["errors"], 1, "{month}");
    assert!(m["total"]["p50_latency_ms"].is_null(), "{month}");
    assert_eq!(
        m["total"]["avg_latency_ms"], s["total"]["avg_latency_ms"],
        "{month}"
    );
    // "Errors only" across pages.
    let errors = admin_call(&gateway, Method::GET, "/usage?status_min=400").await;
    let errors = errors.json["records"].as_array().unwrap().clone();
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|r| r["status"].as_u64().unwrap() >= 400));
    assert_eq!(errors.len() as u64, s["total"]["errors"].as_u64().unwrap());
    let ok = admin_call(&gateway, Method::GET, "/usage?outcome=success").await;
    assert!(ok.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["outcome"] == "success"));
    gateway.stop().await;
}

// === concurrency and robustness ===

#[tokio::test]
async fn concurrent_patches_to_one_backend_are_all_kept() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let created = gateway
        .add_backend(backend_body(
            "concurrent",
            &upstream.openai_base_url(),
            "sk-concurrent-key-0000",
            "m-conc",
        ))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/backends/{id}");
    let mut lost = Vec::new();
    for round in 1..=5_u32 {
        // Six partial updates of six different fields, sent at once: each answers 200 and
        // each must be kept (PATCH changes only the fields given).
        let patches = [
            json!({"label": format!("label-{round}")}),
            json!({"rpm_limit": 100 + round}),
            json!({"weight": 1 + round}),
            json!({"timeout_seconds": 10 + round}),
            json!({"metadata": {"round": round}}),
            json!({"api_key": format!("sk-concurrent-key-{round:04}")}),
        ];
        let answers = futures_util::future::join_all(
            patches
                .iter()
                .map(|patch| send(gateway.admin(Method::PATCH, &path).json(patch))),
        )
        .await;
        for answer in &answers {
            assert_eq!(answer.status, 200, "{answer}");
        }
        let now = gateway.backend(&id).await;
        let expected = json!({
            "label": format!("label-{round}"),
            "rpm_limit": 100 + round,
            "weight": 1 + round,
            "timeout_seconds": 10 + round,
            "metadata": {"round": round},
            "api_key": format!("sk-…{round:04}"),
        });
        let kept: serde_json::Map<String, Value> = expected
            .as_object()
            .unwrap()
            .keys()
            .map(|field| (field.clone(), now[field].clone()))
            .collect();
        let kept = Value::Object(kept);
        if kept != expected {
            lost.push(format!("round {round}: expected {expected}, stored {kept}"));
        }
    }
    // Whatever is stored, the live key is the stored one.
    let (status, body) = gateway.chat("m-conc").await;
    assert_eq!(status, 200, "{body}");
    let stored = gateway.backend(&id).await;
    let suffix = stored["api_key"]
        .as_str()
        .unwrap()
        .trim_start_matches("sk-…");
    assert_eq!(
        bearer_seen(&upstream),
        format!("Bearer sk-concurrent-key-{suffix}"),
        "the live key matches the stored one"
    );
    assert!(
        lost.is_empty(),
        "concurrent PATCHes of different fields overwrote each other (each answered 200):\n{}",
        lost.join("\n")
    );
    gateway.stop().await;
}

#[tokio::test]
async fn stats_answer_extreme_query_values_instead_of_dropping_the_connection() {
    let gateway = Gateway::start().await;
    for query in [
        "bucket_seconds=9223372036854775807",
        "from_ms=-9223372036854775808",
        "to_ms=-9223372036854775808",
        "from_ms=-9223372036854775808&to_ms=9223372036854775807",
    ] {
        let response = match gateway
            .admin(Method::GET, &format!("/stats?{query}"))
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => panic!("GET /admin/api/stats?{query}: no HTTP answer ({error})"),
        };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status == 200 || status == 400,
            "GET /admin/api/stats?{query}: {status} {body}"
        );
        assert!(
            body.is_object(),
            "GET /admin/api/stats?{query}: {status} {body}"
        );
    }
    // The gateway still answers afterwards.
    let stats = admin_call(&gateway, Method::GET, "/stats").await;
    assert_eq!(stats.status, 200, "{stats}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_short_admin_token_file_is_refused_like_a_short_environment_token() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    for (what, content) in [("a 3-character token", "abc"), ("an empty file", "\n")] {
        std::fs::write(data_dir.join("admin-token"), content).unwrap();
        match poolgate::server::start(common::config_for("", &data_dir), false).await {
            Ok(running) => {
                running.shutdown().await.unwrap();
                panic!(
                    "the gateway started with {what} in `admin-token`, although \
                     POOLGATE_ADMIN_TOKEN must have at least 16 characters"
                );
            }
            Err(error) => {
                let message = error.to_string();
                assert!(
                    message.contains("admin"),
                    "{what}: unclear error: {message}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_backend_whose_key_cannot_be_decrypted_says_why() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let created = gateway
        .add_openai_backend(
            "tampered",
            &upstream.openai_base_url(),
            "primary",
            &["m-tamper"],
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let dir = gateway.stop().await;

    // Flip one character of the sealed key's ciphertext (the tag check must fail).
    {
        use sqlx::{ConnectOptions, Row};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("poolgate.db"))
            .connect()
            .await
            .unwrap();
        let row = sqlx::query("SELECT api_key_sealed FROM backends WHERE id = ?")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let sealed: String = row.try_get("api_key_sealed").unwrap();
        let mut chars: Vec<char> = sealed.chars().collect();
        let last = chars.len() - 3;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_ne!(tampered, sealed);
        sqlx::query("UPDATE backends SET api_key_sealed = ? WHERE id = ?")
            .bind(&tampered)
            .bind(&id)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    // The gateway starts, keeps the backend out of routing, and the API says why.
    let gateway = Gateway::start_with("", Some(dir)).await;
    assert_eq!(gateway.data().live().unreadable.len(), 1);
    let (status, _) = gateway.chat("m-tamper").await;
    assert_ne!(status, 200);
    assert_eq!(upstream.calls(), 0, "no request with a garbage key");
    let view = gateway.backend(&id).await;
    assert_ne!(view["status"], "healthy", "{view}");
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("key") || e.contains("decrypt")),
        "an operator cannot tell why the backend is out of rotation: {view}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn the_cluster_view_of_a_single_instance_says_it_keeps_its_own_state() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start_with("instance_id = \"solo-1\"\n", None).await;
    gateway
        .add_backend(backend_body(
            "one",
            &upstream.openai_base_url(),
            "sk-one-key-000001",
            "m",
        ))
        .await;
    assert_eq!(gateway.chat("m").await.0, 200);
    let view = admin_call(&gateway, Method::GET, "/cluster").await;
    assert_eq!(view.status, 200, "{view}");
    let view = view.json;
    assert_eq!(view["instance_id"], "solo-1");
    assert_eq!(view["database"], "sqlite");
    assert_eq!(view["config_feed"]["kind"], "local");
    assert_eq!(view["runtime_state"]["mode"], "local");
    assert_eq!(view["runtime_state"]["live_instances"], 1);
    assert_eq!(view["usage_writer"]["database_failing"], false);
    let backends = view["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 1);
    assert_eq!(backends[0]["name"], "one");
    assert_eq!(backends[0]["status"], "healthy");
    assert_eq!(backends[0]["in_flight_here"], 0);
    assert!(backends[0]["in_flight_cluster"].is_null());
    gateway.stop().await;
}
