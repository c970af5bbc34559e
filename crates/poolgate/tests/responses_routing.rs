//! The Responses API through a real gateway and real mock upstreams on 127.0.0.1: pass-through
//! (JSON and typed SSE) to backends with the Responses API, translation to Chat Completions and
//! Messages for backends without it, response affinity (follow-ups, reads, deletes and cancels
//! reach the backend that made the response; 429 with `Retry-After` while it cools; owners
//! survive a restart), `count_tokens` pass-through, and both served past a spent monthly spend
//! cap.

mod common;

use std::collections::BTreeMap;

use common::{send, Gateway, ADMIN_TOKEN};
use mock_upstream::{MockUpstream, Reply};
use reqwest::Method;
use serde_json::{json, Value};

/// A Responses-capable OpenAI backend named `name` serving `model` as `up-{model}`.
async fn openai_backend(gateway: &Gateway, name: &str, upstream: &MockUpstream, model: &str) {
    let url = upstream.openai_base_url();
    gateway
        .add_openai_backend(name, &url, "primary", &[model])
        .await;
}

fn create(gateway: &Gateway, body: Value) -> reqwest::RequestBuilder {
    gateway.proxy("/v1/responses").json(&body)
}

fn call(gateway: &Gateway, method: Method, path: &str) -> reqwest::RequestBuilder {
    gateway
        .client
        .request(method, format!("{}{path}", gateway.url))
        .bearer_auth(ADMIN_TOKEN)
}

/// The Anthropic backend `claude` (`sonnet` as `claude-up`) and the OpenAI backend `oa` (`gpt`).
async fn claude_and_gpt(gateway: &Gateway, anthropic: &MockUpstream, openai: &MockUpstream) {
    gateway
        .add_backend(json!({
            "name": "claude", "api": "anthropic", "api_base_url": anthropic.base_url(),
            "api_key": "sk-ant-key-000001", "model_mappings": {"sonnet": "claude-up"},
        }))
        .await;
    openai_backend(gateway, "oa", openai, "gpt").await;
}

/// `POST /v1/messages/count_tokens` for `model`, as the Anthropic SDK sends it.
fn count_tokens(gateway: &Gateway, model: &str) -> reqwest::RequestBuilder {
    gateway
        .client
        .post(format!("{}/v1/messages/count_tokens", gateway.url))
        .header("x-api-key", ADMIN_TOKEN)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "token-counting-2024-11-01")
        .json(&json!({"model": model, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Hello"}]}))
}

/// The usage record of request `id`, once written.
async fn record_of(gateway: &Gateway, id: &str) -> Value {
    for _ in 0..400 {
        let records = gateway.usage_records(1).await;
        if let Some(record) = records
            .into_iter()
            .find(|record| record["request_id"] == id)
        {
            return record;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no usage record for {id}");
}

/// (event name, data) of every SSE event of a body.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(rest) = line.strip_prefix("event: ") {
                    name = rest.to_owned();
                } else if let Some(rest) = line.strip_prefix("data: ") {
                    data.push_str(rest);
                }
            }
            (name, serde_json::from_str(&data).unwrap_or(Value::Null))
        })
        .collect()
}

/// Which mock made a response id (`resp_mock_{port}_…`).
fn maker<'m>(id: &str, mocks: &'m [MockUpstream]) -> &'m MockUpstream {
    mocks
        .iter()
        .find(|mock| id.starts_with(&mock.response_id_prefix()))
        .unwrap_or_else(|| panic!("no mock made `{id}`"))
}

#[tokio::test]
async fn responses_pass_through_to_backends_that_have_the_api() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    openai_backend(&gateway, "oa", &upstream, "gpt").await;

    let body = json!({"model": "gpt", "instructions": "Be brief.", "input": "Hello",
        "metadata": {"k": "v"}, "custom_field": [1, 2]});
    let answer = send(create(&gateway, body)).await;
    assert_eq!(answer.status, 200, "{answer}");
    let id = answer.json["id"].as_str().unwrap();
    assert!(id.starts_with(&upstream.response_id_prefix()), "{id}");
    assert_eq!(answer.json["object"], "response");
    assert_eq!(
        answer.json["output"][0]["content"][0]["text"],
        "chunk0 chunk1 chunk2"
    );
    // Only the model changed on the way up; unknown fields pass untouched.
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/responses")
    );
    assert_eq!(seen.body["model"], "up-gpt");
    assert_eq!(seen.body["custom_field"], json!([1, 2]));
    assert_eq!(seen.body["metadata"], json!({"k": "v"}));

    // Streaming: the backend's typed events, byte for byte.
    let answer = send(create(
        &gateway,
        json!({"model": "gpt", "instructions": "Be brief.", "input": "Hello", "stream": true}),
    ))
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = events(&answer.text);
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    let numbers: Vec<u64> = events
        .iter()
        .map(|(_, data)| data["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());

    // Usage records: tokens of both, the second prompt came back to the same cache.
    let records = gateway.usage_records(2).await;
    let (stream_record, json_record) = (&records[0], &records[1]);
    for record in [stream_record, json_record] {
        assert_eq!(record["endpoint"], "responses");
        assert_eq!(record["status"], 200);
        assert_eq!(record["outcome"], "success");
        assert_eq!(record["prompt_tokens"], 10);
        assert_eq!(record["completion_tokens"], 3);
    }
    assert_eq!(stream_record["streamed"], true);
    assert_eq!(json_record["cached_tokens"], 0);
    assert_eq!(
        stream_record["cached_tokens"], 8,
        "the same prompt hit the mock's cache"
    );
}

#[tokio::test]
async fn backends_without_the_api_get_the_stateless_subset_translated() {
    let chat_only = MockUpstream::start().await;
    let anthropic = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    gateway
        .add_backend(json!({
            "name": "vllm", "api_base_url": chat_only.openai_base_url(),
            "api_key": "sk-vllm-key-000001", "responses": false,
            "model_mappings": {"local": "llama"},
        }))
        .await;
    gateway
        .add_backend(json!({
            "name": "claude", "api": "anthropic", "api_base_url": anthropic.base_url(),
            "api_key": "sk-ant-key-000001", "model_mappings": {"sonnet": "claude-up"},
        }))
        .await;

    for (model, mock, path) in [
        ("local", &chat_only, "/v1/chat/completions"),
        ("sonnet", &anthropic, "/v1/messages"),
    ] {
        let answer = send(create(
            &gateway,
            json!({"model": model, "instructions": "Be brief.", "input": "Hello",
                   "max_output_tokens": 50}),
        ))
        .await;
        assert_eq!(answer.status, 200, "{model}: {answer}");
        assert!(answer.json["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(answer.json["status"], "completed");
        assert_eq!(answer.json["store"], false);
        assert_eq!(
            answer.json["output"][0]["content"][0]["type"],
            "output_text"
        );
        assert_eq!(
            answer.json["output"][0]["content"][0]["text"],
            "chunk0 chunk1 chunk2"
        );
        assert_eq!(answer.json["usage"]["input_tokens"], 10);
        let seen = mock.last_request().unwrap();
        assert_eq!(seen.path, path);

        let answer = send(create(
            &gateway,
            json!({"model": model, "input": "Hello", "stream": true}),
        ))
        .await;
        assert_eq!(answer.status, 200, "{model}: {answer}");
        let events = events(&answer.text);
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names[..2],
            ["response.created", "response.in_progress"],
            "{model}"
        );
        assert!(names.contains(&"response.output_text.delta"), "{names:?}");
        assert_eq!(*names.last().unwrap(), "response.completed", "{model}");
        let completed = &events.last().unwrap().1["response"];
        assert_eq!(
            completed["output"][0]["content"][0]["text"],
            "chunk0 chunk1 chunk2"
        );
        assert_eq!(completed["usage"]["output_tokens"], 3, "{model}");

        // Stateful features cannot be translated: a clear 400, nothing sent upstream.
        let before = mock.calls();
        for (field, value) in [
            ("previous_response_id", json!("resp_abc")),
            ("store", json!(true)),
            ("background", json!(true)),
        ] {
            let mut body = json!({"model": model, "input": "Hello"});
            body[field] = value;
            let answer = send(create(&gateway, body)).await;
            assert_eq!(answer.status, 400, "{model} {field}: {answer}");
            answer.assert_openai_error();
            assert_eq!(answer.json["error"]["code"], "stateful_feature_unsupported");
            assert_eq!(answer.json["error"]["param"], field);
        }
        assert_eq!(mock.calls(), before);
        // A hosted tool the backend's format cannot carry: refused before any upstream call,
        // and recorded so (no backend, no upstream model, no attempt, no cost).
        let body = json!({"model": model, "input": "Hello", "tools": [{"type": "web_search"}]});
        let answer = send(create(&gateway, body)).await;
        assert_eq!(answer.status, 400, "{model}: {answer}");
        assert_eq!(answer.json["error"]["code"], "unsupported_for_backend");
        assert_eq!(mock.calls(), before);
        let request_id = answer.header("x-request-id").unwrap().to_owned();
        let record = record_of(&gateway, &request_id).await;
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["backend_id"], Value::Null, "{record}");
        assert_eq!(record["upstream_model"], Value::Null, "{record}");
        assert_eq!(record["attempts"], 0, "{record}");
        assert_eq!(record["cost_usd"], Value::Null, "{record}");
    }
    // The Chat request asked for usage in the stream (the final event needs it).
    let chats = chat_only.requests();
    assert_eq!(chats[0].body["model"], "llama");
    assert_eq!(chats[0].body["max_tokens"], 50);
    assert_eq!(
        chats[0].body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    );
    assert_eq!(chats[1].body["stream_options"]["include_usage"], true);
    // Reading back a translated response: nobody stores it.
    let answer = send(call(
        &gateway,
        Method::GET,
        "/v1/responses/resp_0123456789abcdef",
    ))
    .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json["error"]["code"], "response_not_found");
}

#[tokio::test]
async fn follow_ups_reads_and_deletes_reach_the_backend_that_made_the_response() {
    let mocks = vec![
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ];
    let gateway = Gateway::start().await;
    let mut ids = BTreeMap::new();
    for (i, mock) in mocks.iter().enumerate() {
        openai_backend(&gateway, &format!("oa-{i}"), mock, "gpt").await;
    }
    // Round-robin spreads the first turns over all three.
    for turn in 0..6 {
        let answer = send(create(
            &gateway,
            json!({"model": "gpt", "input": format!("first {turn}")}),
        ))
        .await;
        assert_eq!(answer.status, 200, "{answer}");
        let id = answer.json["id"].as_str().unwrap().to_owned();
        ids.insert(id.clone(), maker(&id, &mocks).addr());
    }
    let makers: std::collections::BTreeSet<_> = ids.values().collect();
    assert_eq!(makers.len(), 3, "round-robin used every backend");

    for (id, addr) in &ids {
        let owner = mocks.iter().find(|m| &m.addr() == addr).unwrap();
        let calls: Vec<usize> = mocks.iter().map(MockUpstream::calls).collect();
        // A follow-up (JSON and streaming) lands on the owner; the mock would 404 an id it
        // did not make.
        for stream in [false, true] {
            let answer = send(create(
                &gateway,
                json!({"model": "gpt", "input": "next", "previous_response_id": id, "stream": stream}),
            ))
            .await;
            assert_eq!(answer.status, 200, "{answer}");
            let follow_up = if stream {
                events(&answer.text)[0].1["response"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            } else {
                answer.json["id"].as_str().unwrap().to_owned()
            };
            assert_eq!(maker(&follow_up, &mocks).addr(), *addr);
        }
        let answer = send(call(&gateway, Method::GET, &format!("/v1/responses/{id}"))).await;
        assert_eq!(answer.status, 200, "{answer}");
        assert_eq!(answer.json["id"], id.as_str());
        assert_eq!(owner.last_request().unwrap().method, "GET");
        for (i, mock) in mocks.iter().enumerate() {
            let expected = calls[i] + if &mock.addr() == addr { 3 } else { 0 };
            assert_eq!(mock.calls(), expected, "only the owner was called");
        }
    }

    // Delete one: the owner deletes it, poolgate forgets it.
    let (deleted, _) = ids.iter().next().unwrap();
    let path = format!("/v1/responses/{deleted}");
    let answer = send(call(&gateway, Method::DELETE, &path)).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["deleted"], true);
    let before: usize = mocks.iter().map(MockUpstream::calls).sum();
    let answer = send(call(&gateway, Method::GET, &path)).await;
    assert_eq!(answer.status, 404);
    assert_eq!(
        mocks.iter().map(MockUpstream::calls).sum::<usize>(),
        before,
        "no fan-out"
    );

    // Cancel reaches the owner, whose answer (a 400: not a background response) is relayed.
    let (kept, addr) = ids.iter().nth(1).unwrap();
    let answer = send(call(
        &gateway,
        Method::POST,
        &format!("/v1/responses/{kept}/cancel"),
    ))
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    let owner = mocks.iter().find(|m| &m.addr() == addr).unwrap();
    assert_eq!(
        owner.last_request().unwrap().path,
        format!("/v1/responses/{kept}/cancel")
    );

    // Another client key can neither read it nor continue from it (nothing is sent upstream).
    let (_, other_key) = gateway.create_key(json!({"name": "other"})).await;
    let before: usize = mocks.iter().map(MockUpstream::calls).sum();
    let answer = send(
        gateway
            .client
            .get(format!("{}/v1/responses/{kept}", gateway.url))
            .bearer_auth(&other_key),
    )
    .await;
    assert_eq!(answer.status, 404);
    let answer = send(
        gateway
            .client
            .post(format!("{}/v1/responses", gateway.url))
            .bearer_auth(&other_key)
            .json(&json!({"model": "gpt", "input": "x", "previous_response_id": kept})),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(answer.json["error"]["code"], "previous_response_not_found");
    assert_eq!(mocks.iter().map(MockUpstream::calls).sum::<usize>(), before);

    // The owner cools down (its upstream says 429): the follow-up gets 429 + Retry-After from
    // poolgate, never another backend's 404; while it cools nothing is sent at all.
    owner.push(Reply::rate_limited(Some(30)));
    let follow_up = json!({"model": "gpt", "input": "next", "previous_response_id": kept});
    let calls: Vec<usize> = mocks.iter().map(MockUpstream::calls).collect();
    let answer = send(create(&gateway, follow_up.clone())).await;
    assert_eq!(answer.status, 429, "{answer}");
    let retry_after = answer.retry_after().unwrap();
    assert!((25..=30).contains(&retry_after), "{retry_after}");
    let answer = send(create(&gateway, follow_up.clone())).await;
    assert_eq!(answer.status, 429, "{answer}");
    assert!(answer.retry_after().unwrap() > 0);
    assert_eq!(answer.json["error"]["type"], "rate_limit_error");
    let after: Vec<usize> = mocks.iter().map(MockUpstream::calls).collect();
    for (i, mock) in mocks.iter().enumerate() {
        let sent = if mock.addr() == *addr { 1 } else { 0 };
        assert_eq!(
            after[i],
            calls[i] + sent,
            "the only call is the one that got the 429"
        );
    }
    let answer = send(call(
        &gateway,
        Method::GET,
        &format!("/v1/responses/{kept}"),
    ))
    .await;
    assert_eq!(answer.status, 429);

    // Unknown ids: a 404 from poolgate for reads, the upstream's word for follow-ups.
    let answer = send(call(&gateway, Method::GET, "/v1/responses/resp_unknown")).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json["error"]["code"], "response_not_found");
    let answer = send(call(&gateway, Method::GET, "/v1/responses/bad%2Fid")).await;
    assert_eq!(answer.status, 400);
}

#[tokio::test]
async fn response_owners_survive_a_restart() {
    let mocks = vec![MockUpstream::start().await, MockUpstream::start().await];
    let gateway = Gateway::start().await;
    for (i, mock) in mocks.iter().enumerate() {
        openai_backend(&gateway, &format!("oa-{i}"), mock, "gpt").await;
    }
    let mut ids = Vec::new();
    for turn in 0..4 {
        let answer = send(create(
            &gateway,
            json!({"model": "gpt", "input": format!("t{turn}")}),
        ))
        .await;
        ids.push(answer.json["id"].as_str().unwrap().to_owned());
    }
    let dir = gateway.stop().await;
    let gateway = Gateway::start_with("", Some(dir)).await;
    for id in &ids {
        let answer = send(create(
            &gateway,
            json!({"model": "gpt", "input": "again", "previous_response_id": id}),
        ))
        .await;
        assert_eq!(answer.status, 200, "{answer}");
        let follow_up = answer.json["id"].as_str().unwrap();
        assert_eq!(maker(follow_up, &mocks).addr(), maker(id, &mocks).addr());
    }
}

#[tokio::test]
async fn count_tokens_passes_through_to_anthropic_backends() {
    let anthropic = MockUpstream::start().await;
    let openai = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    claude_and_gpt(&gateway, &anthropic, &openai).await;
    let count = |model: &str| count_tokens(&gateway, model);
    let answer = send(count("sonnet")).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json, json!({"input_tokens": 10}));
    let seen = anthropic.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    assert_eq!(seen.body["model"], "claude-up");
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-key-000001"));
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("token-counting-2024-11-01")
    );

    // A model only OpenAI-format backends serve: 501 in Anthropic's shape; unknown: 404.
    let answer = send(count("gpt")).await;
    assert_eq!(answer.status, 501, "{answer}");
    assert_eq!(answer.json["type"], "error");
    assert_eq!(
        answer.header("x-should-retry"),
        Some("false"),
        "not to retry"
    );
    assert_eq!(openai.calls(), 0);
    assert_eq!(send(count("nope")).await.status, 404);

    let records = gateway.usage_records(3).await;
    assert!(records
        .iter()
        .all(|r| r["endpoint"] == "messages.count_tokens" && r["prompt_tokens"].is_null()));
    let statuses: Vec<u64> = records
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [404, 501, 200]);
}

#[tokio::test]
async fn a_disabled_or_deleted_owner_is_said_so_never_another_keys_404() {
    let mocks = [MockUpstream::start().await, MockUpstream::start().await];
    let gateway = Gateway::start().await;
    let mut ids = Vec::new();
    for (i, mock) in mocks.iter().enumerate() {
        let url = mock.openai_base_url();
        let created = gateway
            .add_openai_backend(&format!("oa-{i}"), &url, "primary", &["gpt"])
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let answer = send(create(&gateway, json!({"model": "gpt", "input": "hi"}))).await;
    let id = answer.json["id"].as_str().unwrap().to_owned();
    let owner = mocks
        .iter()
        .position(|m| id.starts_with(&m.response_id_prefix()))
        .unwrap();
    let follow_up = json!({"model": "gpt", "input": "more", "previous_response_id": id});
    let read = format!("/v1/responses/{id}");

    let patch = format!("/backends/{}", ids[owner]);
    let disable = gateway
        .admin(Method::PATCH, &patch)
        .json(&json!({"enabled": false}));
    assert_eq!(send(disable).await.status, 200);
    let calls: usize = mocks.iter().map(MockUpstream::calls).sum();
    let answer = send(create(&gateway, follow_up.clone())).await;
    assert_eq!(answer.status, 503, "{answer}");
    assert_eq!(answer.json["error"]["code"], "response_backend_unavailable");
    assert_eq!(send(call(&gateway, Method::GET, &read)).await.status, 503);
    assert_eq!(
        mocks.iter().map(MockUpstream::calls).sum::<usize>(),
        calls,
        "no other key asked"
    );

    let enable = gateway
        .admin(Method::PATCH, &patch)
        .json(&json!({"enabled": true}));
    assert_eq!(send(enable).await.status, 200);
    assert_eq!(send(create(&gateway, follow_up.clone())).await.status, 200);

    let delete = gateway.admin(Method::DELETE, &patch);
    assert_eq!(send(delete).await.status, 204);
    let answer = send(create(&gateway, follow_up)).await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(answer.json["error"]["code"], "previous_response_not_found");
    assert_eq!(answer.json["error"]["param"], "previous_response_id");
    assert_eq!(send(call(&gateway, Method::GET, &read)).await.status, 404);
}

#[tokio::test]
async fn a_follow_up_may_wait_for_its_cooling_owner() {
    let mocks = [MockUpstream::start().await, MockUpstream::start().await];
    // A 429 with `retry-after: 1` cools the owner for one second.
    let gateway = Gateway::start_with("[cooldown]\nbase_seconds = 0.1\n", None).await;
    for (i, mock) in mocks.iter().enumerate() {
        openai_backend(&gateway, &format!("oa-{i}"), mock, "gpt").await;
    }
    let answer = send(create(&gateway, json!({"model": "gpt", "input": "hi"}))).await;
    let id = answer.json["id"].as_str().unwrap().to_owned();
    let owner = maker(&id, &mocks);
    owner.push(Reply::rate_limited(Some(1)));
    let follow_up = json!({"model": "gpt", "input": "more", "previous_response_id": id});
    assert_eq!(send(create(&gateway, follow_up.clone())).await.status, 429);
    // Allowed to wait, the next follow-up is served by the owner once it is ready again.
    let answer = send(create(&gateway, follow_up).header("x-poolgate-max-wait-ms", "5000")).await;
    assert_eq!(answer.status, 200, "{answer}");
    let made = answer.json["id"].as_str().unwrap();
    assert_eq!(maker(made, &mocks).addr(), owner.addr());
}

/// Calls that cost no upstream tokens — a stored response read or deleted, `count_tokens` —
/// are served by a backend whose monthly spend cap is spent; a call that costs is refused.
#[tokio::test]
async fn calls_that_cost_nothing_pass_a_spent_monthly_cap() {
    let anthropic = MockUpstream::start().await;
    let openai = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    claude_and_gpt(&gateway, &anthropic, &openai).await;
    let answer = send(create(&gateway, json!({"model": "gpt", "input": "hi"}))).await;
    assert_eq!(answer.status, 200, "{answer}");
    let id = answer.json["id"].as_str().unwrap().to_owned();
    for name in ["claude", "oa"] {
        let backend = gateway.backend_id(name).await;
        let answer = send(
            gateway
                .admin(Method::PATCH, &format!("/backends/{backend}"))
                .json(&json!({"monthly_spend_cap_usd": "0"})),
        )
        .await;
        assert_eq!(answer.status, 200, "{answer}");
    }
    let calls = openai.calls();
    let answer = send(create(&gateway, json!({"model": "gpt", "input": "again"}))).await;
    answer.assert_budget_exceeded();
    assert_eq!(openai.calls(), calls, "a call that costs is refused");

    let path = format!("/v1/responses/{id}");
    let answer = send(call(&gateway, Method::GET, &path)).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["id"], id.as_str());
    let answer = send(call(&gateway, Method::DELETE, &path)).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["deleted"], true);
    assert_eq!(openai.calls(), calls + 2);

    let answer = send(count_tokens(&gateway, "sonnet")).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json, json!({"input_tokens": 10}));
}
