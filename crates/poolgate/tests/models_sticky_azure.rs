//! Model names, sticky sessions and Azure OpenAI through a real gateway and real mock upstreams
//! on 127.0.0.1: aliases and wildcard mappings (exact over wildcard, longer over shorter,
//! `/v1/models`, and one model by name), the alias admin API and the config file's aliases, sticky routing (50
//! conversations over 4 backends stay put while their backend is ready and move when it cools;
//! the cached-token share shows in the stats), and Azure's URLs, `api-key` header and errors.
#![expect(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{send, Gateway};
use mock_upstream::{MockUpstream, Reply};
use reqwest::Method;
use serde_json::{json, Value};

async fn backend(gateway: &Gateway, name: &str, upstream: &MockUpstream, mappings: Value) -> Value {
    gateway
        .add_backend(json!({
            "name": name, "api_base_url": upstream.openai_base_url(),
            "api_key": format!("sk-{name}-key-000001"), "model_mappings": mappings,
        }))
        .await
}

/// `exact` maps `gpt-4o` to a dated id; `prefix` serves every `openai/…` name as the rest of it.
async fn exact_and_prefix_backends(gateway: &Gateway, exact: &MockUpstream, prefix: &MockUpstream) {
    backend(
        gateway,
        "exact",
        exact,
        json!({"gpt-4o": "gpt-4o-2024-08-06"}),
    )
    .await;
    backend(gateway, "prefix", prefix, json!({"openai/*": "*"})).await;
}

/// Sends a chat completion for `model`; returns (status, upstream model the mock was asked for,
/// which mock it was).
async fn chat_route(
    gateway: &Gateway,
    model: &str,
    mocks: &[&MockUpstream],
) -> (u16, String, usize) {
    let before: Vec<usize> = mocks.iter().map(|m| m.calls()).collect();
    let (status, _) = gateway.chat(model).await;
    let hit = mocks
        .iter()
        .enumerate()
        .find(|(i, m)| m.calls() > before[*i])
        .map(|(i, _)| i)
        .unwrap_or(usize::MAX);
    let upstream = mocks
        .get(hit)
        .and_then(|m| m.last_request())
        .map(|r| r.body["model"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (status, upstream, hit)
}

async fn models(gateway: &Gateway) -> Vec<(String, Option<String>)> {
    let answer = send(
        gateway
            .client
            .get(format!("{}/v1/models", gateway.url))
            .bearer_auth(common::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(answer.status, 200);
    answer.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["alias_of"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn aliases_and_wildcards_follow_the_precedence_rules() {
    let exact = MockUpstream::start().await;
    let prefix = MockUpstream::start().await;
    let longer = MockUpstream::start().await;
    let catch_all = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    exact_and_prefix_backends(&gateway, &exact, &prefix).await;
    backend(
        &gateway,
        "longer",
        &longer,
        json!({"openai/gpt-*": "azure-gpt-*"}),
    )
    .await;
    gateway
        .add_backend(json!({
            "name": "catch-all", "api_base_url": catch_all.openai_base_url(),
            "api_key": "sk-catch-key-000001", "pool": "fallback",
            "model_mappings": {"*": "*"},
        }))
        .await;
    let mocks = [&exact, &prefix, &longer, &catch_all];

    // Exact beats every wildcard; the longer wildcard beats the shorter; the rest falls to `*`.
    assert_eq!(
        chat_route(&gateway, "gpt-4o", &mocks).await,
        (200, "gpt-4o-2024-08-06".into(), 0)
    );
    assert_eq!(
        chat_route(&gateway, "openai/o3", &mocks).await,
        (200, "o3".into(), 1)
    );
    assert_eq!(
        chat_route(&gateway, "openai/gpt-4.1", &mocks).await,
        (200, "azure-gpt-4.1".into(), 2)
    );
    assert_eq!(
        chat_route(&gateway, "mistral-large", &mocks).await,
        (200, "mistral-large".into(), 3)
    );
    // Routes are kept: the same wildcard model again goes the same way.
    assert_eq!(
        chat_route(&gateway, "openai/o3", &mocks).await,
        (200, "o3".into(), 1)
    );

    // Aliases: one step to the canonical model, then the same rules.
    for (alias, target) in [("latest", "gpt-4o"), ("fast", "openai/o4-mini")] {
        let answer = send(
            gateway
                .admin(Method::PUT, &format!("/aliases/{alias}"))
                .json(&json!({"target": target})),
        )
        .await;
        assert_eq!(answer.status, 200, "{answer}");
        assert_eq!(answer.json["served"], true);
        assert_eq!(answer.json["source"], "api");
    }
    assert_eq!(
        chat_route(&gateway, "latest", &mocks).await,
        (200, "gpt-4o-2024-08-06".into(), 0)
    );
    assert_eq!(
        chat_route(&gateway, "fast", &mocks).await,
        (200, "o4-mini".into(), 1)
    );
    // Usage records keep the canonical model.
    let records = gateway.usage_records(7).await;
    assert_eq!(records[0]["canonical_model"], "openai/o4-mini");
    assert_eq!(records[1]["canonical_model"], "gpt-4o");

    // /v1/models: exact mappings, aliases whose target is served, and those targets; no
    // wildcard patterns.
    assert_eq!(
        models(&gateway).await,
        vec![
            ("fast".to_owned(), Some("openai/o4-mini".to_owned())),
            ("gpt-4o".to_owned(), None),
            ("latest".to_owned(), Some("gpt-4o".to_owned())),
            ("openai/o4-mini".to_owned(), None),
        ]
    );

    // A key allowed only `gpt-4o` may use its alias too, and sees both.
    let (_, key) = gateway
        .create_key(json!({"name": "narrow", "allowed_models": ["gpt-4o"]}))
        .await;
    let as_key = |model: &str| {
        gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
    };
    assert_eq!(send(as_key("latest")).await.status, 200);
    assert_eq!(send(as_key("fast")).await.status, 403);
    let listed = send(
        gateway
            .client
            .get(format!("{}/v1/models", gateway.url))
            .bearer_auth(&key),
    )
    .await;
    let ids: Vec<&str> = listed.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o", "latest"]);

    // Bad aliases are refused, naming what is wrong; deleting works once.
    for (alias, target, message) in [
        ("chain", "latest", "itself an alias"),
        ("loop", "loop", "itself"),
        ("wild*", "gpt-4o", "wildcard"),
        ("x", "gpt-*", "wildcard"),
    ] {
        let answer = send(
            gateway
                .admin(Method::PUT, &format!("/aliases/{alias}"))
                .json(&json!({"target": target})),
        )
        .await;
        assert_eq!(answer.status, 400, "{alias}: {answer}");
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{answer}"
        );
    }
    let answer = send(
        gateway
            .admin(Method::PUT, "/aliases/y")
            .json(&json!({"to": "gpt-4o"})),
    )
    .await;
    assert_eq!(answer.status, 400, "unknown fields are refused");
    assert_eq!(
        send(gateway.admin(Method::DELETE, "/aliases/latest"))
            .await
            .status,
        204
    );
    assert_eq!(
        send(gateway.admin(Method::DELETE, "/aliases/latest"))
            .await
            .status,
        404
    );
    assert_eq!(
        gateway.chat("latest").await.0,
        200,
        "the catch-all serves the name now"
    );
    let aliases = send(gateway.admin(Method::GET, "/aliases")).await;
    assert_eq!(aliases.json.as_array().unwrap().len(), 1);

    // A bad wildcard mapping is refused at the backend, naming the mapping.
    let answer = send(gateway.admin(Method::POST, "/backends").json(&json!({
        "name": "bad", "api_base_url": exact.openai_base_url(), "api_key": "sk-bad-key-000001",
        "model_mappings": {"a*b": "x"},
    })))
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(answer.json["error"]["param"], "model_mappings.a*b");
}

/// `GET /v1/models/{model}`: as the OpenAI SDK's `models.retrieve` sends it.
async fn retrieve(gateway: &Gateway, model: &str, bearer: Option<&str>) -> common::Answer {
    let mut request = gateway
        .client
        .get(format!("{}/v1/models/{model}", gateway.url));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    send(request).await
}

#[tokio::test]
async fn one_model_is_retrieved_by_name_when_the_caller_may_use_it() {
    let exact = MockUpstream::start().await;
    let prefix = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    exact_and_prefix_backends(&gateway, &exact, &prefix).await;
    let alias = send(
        gateway
            .admin(Method::PUT, "/aliases/latest")
            .json(&json!({"target": "gpt-4o"})),
    )
    .await;
    assert_eq!(alias.status, 200, "{alias}");
    let admin = Some(common::ADMIN_TOKEN);

    // A listed model, an alias (with what it names), and a name only a wildcard serves (with a
    // `/` in it, the rest of the path): each as `/v1/models` shows a model.
    for (model, alias_of) in [
        ("gpt-4o", None),
        ("latest", Some("gpt-4o")),
        ("openai/o3-mini", None),
    ] {
        let answer = retrieve(&gateway, model, admin).await;
        assert_eq!(answer.status, 200, "{model}: {answer}");
        assert_eq!(answer.json["id"], model);
        assert_eq!(answer.json["object"], "model");
        assert_eq!(answer.json["owned_by"], "poolgate");
        assert!(answer.json["created"].is_i64(), "{answer}");
        assert_eq!(answer.json["alias_of"].as_str(), alias_of, "{answer}");
    }

    // Not served: 404 in OpenAI's shape, naming the model.
    let missing = retrieve(&gateway, "mistral-large", admin).await;
    assert_eq!(missing.status, 404, "{missing}");
    missing.assert_openai_error();
    assert_eq!(missing.json["error"]["code"], "model_not_found");
    assert_eq!(missing.json["error"]["param"], "model");
    assert!(
        missing.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`mistral-large`"),
        "{missing}"
    );
    // A name longer than any model's (1 KiB): not there to look up, and refused in a request
    // before it is routed (400 naming `model`), while one just within the limit is routed.
    let long = format!("openai/{}", "x".repeat(1024));
    assert_eq!(retrieve(&gateway, &long, admin).await.status, 404);
    let (status, body) = gateway.chat(&long).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1024"),
        "{body}"
    );
    let (status, body) = gateway.chat(&long[..1024]).await;
    assert_eq!(status, 200, "{body}");

    // A path that is not UTF-8 once decoded: 400 in OpenAI's shape, naming `model`.
    let garbled = retrieve(&gateway, "gpt-%FF", admin).await;
    assert_eq!(garbled.status, 400, "{garbled}");
    garbled.assert_openai_error();
    assert_eq!(garbled.json["error"]["param"], "model");

    // With `anthropic-version` (as the Anthropic SDKs send it): Anthropic's shapes.
    let as_anthropic = |path: &str| {
        send(
            gateway
                .client
                .get(format!("{}{path}", gateway.url))
                .bearer_auth(common::ADMIN_TOKEN)
                .header("anthropic-version", "2023-06-01"),
        )
    };
    let page = as_anthropic("/v1/models").await;
    assert_eq!(page.status, 200, "{page}");
    let ids: Vec<&str> = page.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "model", "{m}");
            assert_eq!(m["display_name"], m["id"], "{m}");
            assert_eq!(m["created_at"], "1970-01-01T00:00:00Z", "{m}");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["gpt-4o", "latest"]);
    assert_eq!(page.json["has_more"], false);
    assert_eq!(page.json["first_id"], "gpt-4o");
    assert_eq!(page.json["last_id"], "latest");
    let one = as_anthropic("/v1/models/latest").await;
    assert_eq!(one.status, 200, "{one}");
    assert_eq!(
        (&one.json["type"], &one.json["id"], &one.json["alias_of"]),
        (&json!("model"), &json!("latest"), &json!("gpt-4o"))
    );
    let none = as_anthropic("/v1/models/mistral-large").await;
    assert_eq!(none.status, 404, "{none}");
    assert_eq!(none.json["type"], "error", "{none}");
    assert_eq!(none.json["error"]["type"], "not_found_error", "{none}");

    // No key: 401, as for the list.
    let anonymous = retrieve(&gateway, "gpt-4o", None).await;
    assert_eq!(anonymous.status, 401, "{anonymous}");
    anonymous.assert_openai_error();

    // A key allowed only `gpt-4o` gets it and its alias; any other model is not there for it.
    let (_, key) = gateway
        .create_key(json!({"name": "narrow", "allowed_models": ["gpt-4o"]}))
        .await;
    for (model, status) in [("gpt-4o", 200), ("latest", 200), ("openai/o3-mini", 404)] {
        let answer = retrieve(&gateway, model, Some(&key)).await;
        assert_eq!(answer.status, status, "{model}: {answer}");
    }
    assert_eq!(
        (exact.calls(), prefix.calls()),
        (0, 1),
        "lookups are answered by the gateway itself; only the chat within the limit went up"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn config_file_aliases_are_synced_and_validated() {
    let upstream = MockUpstream::start().await;
    let toml = format!(
        r#"
        [aliases]
        "gpt-4o-latest" = "gpt-4o"

        [routing.sticky]
        enabled = true
        key = ["header:x-session-id"]
        ttl_seconds = 600

        [[backends]]
        name = "oa"
        api_base_url = "{}"
        api_key = "sk-oa-key-000001"
        [backends.model_mappings]
        "gpt-4o" = "up-gpt-4o"
        "#,
        upstream.openai_base_url()
    );
    let gateway = Gateway::start_with(&toml, None).await;
    assert_eq!(gateway.chat("gpt-4o-latest").await.0, 200);
    assert_eq!(upstream.last_request().unwrap().body["model"], "up-gpt-4o");
    let aliases = send(gateway.admin(Method::GET, "/aliases")).await;
    assert_eq!(aliases.json[0]["alias"], "gpt-4o-latest");
    assert_eq!(aliases.json[0]["source"], "config");
    let sticky = send(gateway.admin(Method::GET, "/settings/sticky")).await;
    assert_eq!(
        sticky.json,
        json!({"enabled": true, "key": ["header:x-session-id"], "leading_turns": 1,
               "ttl_seconds": 600, "models": []})
    );
    // A config alias pointing at an alias is refused before the gateway starts.
    let raw = poolgate::config::parse_toml("[aliases]\na = \"b\"\nb = \"c\"\n").unwrap();
    let error = poolgate::config::Config::from_raw(raw, Default::default(), &|_| None).unwrap_err();
    assert_eq!(error.field, "aliases.a");
}

/// A Responses request of conversation `n` (its own `prompt_cache_key`); returns the port of the
/// mock that answered (from the response id) and its cached tokens.
async fn turn(gateway: &Gateway, n: usize, mocks: &[MockUpstream]) -> (usize, u64) {
    let answer = send(gateway.proxy("/v1/responses").json(&json!({
        "model": "agent", "prompt_cache_key": format!("conversation-{n}"),
        "instructions": "You are a coding agent.", "input": format!("task {n}"),
    })))
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    let id = answer.json["id"].as_str().unwrap();
    let which = mocks
        .iter()
        .position(|m| id.starts_with(&m.response_id_prefix()))
        .unwrap();
    let cached = answer.json["usage"]["input_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    (which, cached)
}

#[tokio::test]
async fn sticky_sessions_stay_on_their_backend_while_it_is_ready_and_move_when_it_cools() {
    const CONVERSATIONS: usize = 50;
    let mocks: Vec<MockUpstream> = vec![
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ];
    let gateway = Gateway::start().await;
    let mut ids = Vec::new();
    for (i, mock) in mocks.iter().enumerate() {
        let created = backend(
            &gateway,
            &format!("b{i}"),
            mock,
            json!({"agent": "up-agent"}),
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // Off by default: round-robin spreads one conversation over every backend.
    let default = send(gateway.admin(Method::GET, "/settings/sticky")).await;
    assert_eq!(default.json["enabled"], false);
    let spread: BTreeSet<usize> = {
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            seen.insert(turn(&gateway, 999, &mocks).await.0);
        }
        seen
    };
    assert_eq!(
        spread.len(),
        4,
        "without sticky routing a conversation goes everywhere"
    );

    let answer = send(
        gateway
            .admin(Method::PUT, "/settings/sticky")
            .json(&json!({"enabled": true, "models": ["agent"]})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["key"][0], "prompt_cache_key");

    // Three turns per conversation: each stays on one backend, whose cache hits from turn 2.
    let mut home: BTreeMap<usize, usize> = BTreeMap::new();
    for round in 0..3 {
        for n in 0..CONVERSATIONS {
            let (which, cached) = turn(&gateway, n, &mocks).await;
            let first = *home.entry(n).or_insert(which);
            assert_eq!(which, first, "conversation {n} moved in round {round}");
            assert_eq!(cached > 0, round > 0, "conversation {n}, round {round}");
        }
    }
    let per_backend: Vec<usize> = (0..4)
        .map(|b| home.values().filter(|&&h| h == b).count())
        .collect();
    assert!(
        per_backend.iter().all(|&n| n >= 10),
        "spread: {per_backend:?}"
    );

    // Backend 2's upstream answers 429 once: it cools for a minute. Its conversations move
    // (the one that met the 429 fails over at once) and stay where they moved; the others stay.
    mocks[2].push(Reply::rate_limited(Some(60)));
    let mut moved: BTreeMap<usize, usize> = BTreeMap::new();
    for round in 0..2 {
        for n in 0..CONVERSATIONS {
            let (which, _) = turn(&gateway, n, &mocks).await;
            if home[&n] == 2 {
                assert_ne!(which, 2, "conversation {n} stayed on the cooling backend");
                let first = *moved.entry(n).or_insert(which);
                assert_eq!(
                    which, first,
                    "moved conversation {n} moved again in round {round}"
                );
            } else {
                assert_eq!(which, home[&n], "conversation {n} left a ready backend");
            }
        }
    }
    assert_eq!(moved.len(), per_backend[2]);
    let cooled = gateway.backend(&ids[2]).await;
    assert_eq!(cooled["status"], "cooling");

    // The stats show the cached-token share per backend (once every record is written).
    gateway.usage_records(4 + 5 * CONVERSATIONS).await;
    let stats = send(gateway.admin(Method::GET, "/stats")).await;
    for id in &ids {
        let backend = &stats.json["by_backend"][id];
        assert!(
            backend["cached_tokens"].as_u64().unwrap() > 0,
            "{id}: {backend}"
        );
        let share = backend["cached_share"].as_f64().unwrap();
        assert!(share > 0.3 && share < 0.8, "{id}: {share}");
    }
}

/// Pushes `reply` (a 429), sends a chat that meets it, and returns how long the backend cools
/// (then ends the cooldown).
async fn cooling_ms(gateway: &Gateway, upstream: &MockUpstream, id: &str, reply: Reply) -> u64 {
    upstream.push(reply);
    let (status, _) = gateway.chat("gpt-4o").await;
    assert_eq!(status, 429);
    let backend = gateway.backend(id).await;
    assert_eq!(backend["status"], "cooling");
    let remaining = backend["cooldown_remaining_ms"].as_u64().unwrap();
    let path = format!("/backends/{id}/reset-cooldown");
    assert_eq!(send(gateway.admin(Method::POST, &path)).await.status, 200);
    remaining
}

#[tokio::test]
async fn azure_backends_use_deployment_urls_the_api_key_header_and_azure_errors() {
    let azure = MockUpstream::start().await;
    azure.set_azure_api_key("azure-key-0001");
    azure.set_azure_deployments(["gpt4o-prod", "gpt4o-b"]);
    let gateway = Gateway::start().await;
    let created = gateway
        .add_backend(json!({
            "name": "az", "api": "azure", "api_base_url": azure.azure_endpoint(),
            "api_key": "azure-key-0001", "model_mappings": {"gpt-4o": "gpt4o-prod"},
        }))
        .await;
    assert_eq!(created["api"], "azure");
    assert_eq!(
        created["responses"], false,
        "2024-10-21 has no Responses API"
    );

    let (status, body) = gateway.chat("gpt-4o").await;
    assert_eq!(status, 200, "{body}");
    let seen = azure.last_request().unwrap();
    assert_eq!(seen.path, "/openai/deployments/gpt4o-prod/chat/completions");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some("azure-key-0001"));
    assert_eq!(seen.header("authorization"), None);

    // A 429 with `retry-after-ms` cools the backend that long; the client gets 429 +
    // Retry-After (no other backend). Without headers, the wait Azure's message says.
    let id = created["id"].as_str().unwrap().to_owned();
    let limited = Reply::error(429)
        .with_header("retry-after-ms", "20000")
        .with_header("x-ratelimit-remaining-requests", "0");
    let remaining = cooling_ms(&gateway, &azure, &id, limited).await;
    assert!((15_000..=20_000).contains(&remaining), "{remaining}");
    let in_message = Reply::Status {
        status: 429,
        body: json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation have exceeded the rate limit. Please retry after 7 seconds."}}),
        headers: Vec::new(),
    };
    let remaining = cooling_ms(&gateway, &azure, &id, in_message).await;
    assert!((3_000..=7_000).contains(&remaining), "{remaining}");

    // Azure's content filter is the client's: relayed as is, no cooldown.
    azure.push(Reply::Status {
        status: 400,
        body: json!({"error": {"code": "content_filter", "message": "The response was filtered", "param": "prompt", "status": 400}}),
        headers: Vec::new(),
    });
    let (status, body) = gateway.chat("gpt-4o").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("content_filter"))
    );
    assert_eq!(
        gateway.backend(created["id"].as_str().unwrap()).await["status"],
        "healthy"
    );

    // A mapping naming a deployment Azure does not have is the backend's fault: the request
    // fails over to the next backend and the broken one is taken out until it is fixed.
    let broken = gateway
        .add_backend(json!({
            "name": "az-missing", "api": "azure", "api_base_url": azure.azure_endpoint(),
            "api_key": "azure-key-0001", "model_mappings": {"gpt-4o": "no-such-deployment"},
        }))
        .await;
    let broken_id = broken["id"].as_str().unwrap();
    for _ in 0..2 {
        let (status, _) = gateway.chat("gpt-4o").await;
        assert_eq!(status, 200);
    }
    let broken = gateway.backend(broken_id).await;
    assert_eq!(broken["status"], "error");
    assert!(
        broken["last_error"]
            .as_str()
            .unwrap()
            .contains("DeploymentNotFound"),
        "{broken}"
    );
    let deployments: Vec<String> = azure
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .filter(|p| p.contains("no-such-deployment"))
        .collect();
    assert_eq!(deployments.len(), 1, "tried once, then out of rotation");

    // Responses on Azure: the v1 base URL has it by default; the body's model is the deployment.
    let v1 = gateway
        .add_backend(json!({
            "name": "az-v1", "api": "azure", "api_base_url": format!("{}/openai/v1", azure.azure_endpoint()),
            "api_key": "azure-key-0001", "model_mappings": {"o4": "gpt4o-b"},
        }))
        .await;
    assert_eq!(v1["responses"], true);
    let answer = send(
        gateway
            .proxy("/v1/responses")
            .json(&json!({"model": "o4", "input": "hi"})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    let seen = azure.last_request().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/openai/v1/responses", None)
    );
    assert_eq!(seen.body["model"], "gpt4o-b");
    let id = answer.json["id"].as_str().unwrap();
    let answer = send(
        gateway
            .client
            .get(format!("{}/v1/responses/{id}", gateway.url))
            .bearer_auth(common::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(
        azure.last_request().unwrap().path,
        format!("/openai/v1/responses/{id}")
    );

    // Azure's settings are checked: a version with Responses, only on azure, valid text.
    for (body, param) in [
        (json!({"api": "azure", "responses": true}), "responses"),
        (
            json!({"api": "openai", "api_version": "2024-10-21"}),
            "api_version",
        ),
        (
            json!({"api": "azure", "api_version": "2024-10-21&x=1"}),
            "api_version",
        ),
        (json!({"api": "anthropic", "responses": true}), "responses"),
        (
            json!({"api": "azure", "model_mappings": {"m": "a/b"}}),
            "model_mappings.m.upstream_model",
        ),
    ] {
        let mut input = json!({"name": "check", "api_base_url": azure.azure_endpoint(),
                               "api_key": "azure-key-0001"});
        input
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let answer = send(gateway.admin(Method::POST, "/backends").json(&input)).await;
        assert_eq!(answer.status, 400, "{input}: {answer}");
        assert_eq!(answer.json["error"]["param"], param, "{answer}");
    }
    let answer = send(gateway.admin(Method::POST, "/backends").json(&json!({
        "name": "az-new", "api": "azure", "api_base_url": azure.azure_endpoint(),
        "api_key": "azure-key-0001", "api_version": "2025-04-01-preview", "responses": true,
    })))
    .await;
    assert_eq!(answer.status, 201, "{answer}");
    assert_eq!(answer.json["api_version"], "2025-04-01-preview");
}
