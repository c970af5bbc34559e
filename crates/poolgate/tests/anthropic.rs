//! Anthropic backends and the Anthropic Messages API, end to end: OpenAI clients on Anthropic
//! backends and Anthropic clients on both kinds, JSON and streaming, errors in the client's
//! format, and 529/429 cooling an Anthropic backend with failover to an OpenAI one.
#![expect(clippy::unwrap_used, reason = "test helpers")]

mod common;

use common::{Gateway, ADMIN_TOKEN};
use mock_upstream::{MockUpstream, Reply};
use serde_json::{json, Value};

async fn add_anthropic_backend(
    gateway: &Gateway,
    name: &str,
    upstream: &MockUpstream,
    model: &str,
) -> Value {
    gateway
        .add_backend(json!({
            "name": name,
            "api": "anthropic",
            "api_base_url": upstream.base_url(),
            "api_key": format!("sk-ant-{name}-key-0001"),
            "model_mappings": { model: { "upstream_model": "claude-up" } },
        }))
        .await
}

fn messages_request(gateway: &Gateway) -> reqwest::RequestBuilder {
    gateway
        .client
        .post(format!("{}/v1/messages", gateway.url))
        .header("x-api-key", ADMIN_TOKEN)
        .header("anthropic-version", "2023-06-01")
}

/// Splits an SSE body into (event name, data JSON) pairs; `[DONE]` becomes `Value::Null`.
fn sse_events(body: &str) -> Vec<(Option<String>, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let value = if data == "[DONE]" {
                Value::Null
            } else {
                serde_json::from_str(&data).unwrap()
            };
            (name, value)
        })
        .collect()
}

#[tokio::test]
async fn openai_client_on_an_anthropic_backend_json() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    add_anthropic_backend(&gateway, "claude", &upstream, "smart").await;
    let response = gateway
        .proxy("/v1/chat/completions")
        .json(&json!({"model": "smart", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"}], "temperature": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "chunk0 chunk1 chunk2"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 13);

    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-claude-key-0001"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the client's credentials never go upstream"
    );
    assert_eq!(seen.body["model"], "claude-up");
    assert_eq!(seen.body["system"], "Be brief.");
    assert_eq!(
        seen.body["max_tokens"], 4096,
        "the configured default when the client gives none"
    );
    assert_eq!(seen.body["messages"][0]["role"], "user");

    let records = gateway.usage_records(1).await;
    assert_eq!(records[0]["prompt_tokens"], 10);
    assert_eq!(records[0]["outcome"], "success");
}

#[tokio::test]
async fn openai_client_on_an_anthropic_backend_streaming() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    add_anthropic_backend(&gateway, "claude", &upstream, "smart").await;
    let response = gateway
        .proxy("/v1/chat/completions")
        .json(
            &json!({"model": "smart", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = sse_events(&text);
    let chunks: Vec<&Value> = events
        .iter()
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "chunk0 chunk1 chunk2");
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, vec!["stop"]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(upstream.last_request().unwrap().body["stream"], true);
    let records = gateway.usage_records(1).await;
    assert_eq!(records[0]["total_tokens"], 13);
    assert_eq!(records[0]["streamed"], true);
}

#[tokio::test]
async fn anthropic_tool_use_becomes_openai_tool_calls() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::status(
        200,
        json!({"id": "msg_tool", "type": "message", "role": "assistant", "model": "claude-up",
               "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
               "stop_reason": "tool_use", "stop_sequence": null,
               "usage": {"input_tokens": 30, "output_tokens": 12}}),
    ));
    let gateway = Gateway::start().await;
    add_anthropic_backend(&gateway, "claude", &upstream, "smart").await;
    let (status, body) = {
        let response = gateway
            .proxy("/v1/chat/completions")
            .json(&json!({"model": "smart", "messages": [{"role": "user", "content": "weather?"}],
                          "tools": [{"type": "function", "function": {"name": "weather",
                                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                          "tool_choice": "required"}))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_1");
    assert_eq!(call["function"]["name"], "weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["city"], "Paris");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body["tools"][0]["name"], "weather");
    assert_eq!(
        seen.body["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(seen.body["tool_choice"]["type"], "any");
}

#[tokio::test]
async fn anthropic_client_on_an_anthropic_backend_passes_through() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    add_anthropic_backend(&gateway, "claude", &upstream, "smart").await;
    let response = messages_request(&gateway)
        .header("anthropic-beta", "tools-2024-04-04")
        .json(&json!({"model": "smart", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
                      "top_k": 5, "some_new_field": {"kept": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], "chunk0 chunk1 chunk2");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body["model"], "claude-up");
    assert_eq!(seen.body["top_k"], 5);
    assert_eq!(
        seen.body["some_new_field"]["kept"], true,
        "unknown fields pass through"
    );
    assert_eq!(seen.header("anthropic-beta"), Some("tools-2024-04-04"));
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-claude-key-0001"));

    // Streaming passes through byte for byte (event names included).
    let response = messages_request(&gateway)
        .json(&json!({"model": "smart", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let names: Vec<String> = sse_events(&text)
        .into_iter()
        .filter_map(|(n, _)| n)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(
        names.iter().any(|n| n == "ping"),
        "ping events pass through: {names:?}"
    );
    let records = gateway.usage_records(2).await;
    assert_eq!(records[0]["endpoint"], "messages");
    assert_eq!(records[0]["prompt_tokens"], 10);
    assert_eq!(records[0]["completion_tokens"], 3);
}

#[tokio::test]
async fn anthropic_client_on_an_openai_backend_is_translated() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    gateway
        .add_openai_backend("gpt", &upstream.openai_base_url(), "primary", &["smart"])
        .await;
    let response = messages_request(&gateway)
        .json(
            &json!({"model": "smart", "max_tokens": 64, "system": "Be brief.",
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["content"][0]["text"], "chunk0 chunk1 chunk2");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 10);
    assert_eq!(body["usage"]["output_tokens"], 3);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.body["model"], "up-smart");
    assert_eq!(seen.body["max_tokens"], 64);
    assert_eq!(seen.body["messages"][0]["role"], "system");
    assert_eq!(seen.body["messages"][1]["content"], "hi");

    let response = messages_request(&gateway)
        .json(&json!({"model": "smart", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(names[1], "content_block_start");
    assert_eq!(names[names.len() - 3], "content_block_stop");
    assert_eq!(names[names.len() - 2], "message_delta");
    assert_eq!(names[names.len() - 1], "message_stop");
    let text_out: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text_out, "chunk0 chunk1 chunk2");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["usage"]["output_tokens"], 3);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn overloaded_anthropic_backend_cools_and_fails_over_to_openai() {
    let anthropic = MockUpstream::start().await;
    anthropic.push(Reply::overloaded());
    let openai = MockUpstream::start().await;
    let gateway = Gateway::start_with("[cooldown]\nbase_seconds = 30\n", None).await;
    let claude = add_anthropic_backend(&gateway, "claude", &anthropic, "smart").await;
    gateway
        .add_openai_backend("gpt", &openai.openai_base_url(), "primary", &["smart"])
        .await;
    // Whichever is tried first, both requests succeed, and the 529 cools `claude`.
    for _ in 0..2 {
        let (status, body) = gateway.chat("smart").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(anthropic.calls(), 1);
    let view = gateway.backend(claude["id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "cooling", "{view}");
    assert_eq!(view["consecutive_429_count"], 1);
    // Cooling: further requests all go to the OpenAI backend.
    for _ in 0..3 {
        assert_eq!(gateway.chat("smart").await.0, 200);
    }
    assert_eq!(anthropic.calls(), 1);
}

#[tokio::test]
async fn anthropic_rate_limit_honours_retry_after() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::rate_limited(Some(40)));
    let gateway = Gateway::start_with("[cooldown]\nbase_seconds = 1\n", None).await;
    let claude = add_anthropic_backend(&gateway, "claude", &upstream, "smart").await;
    let response = messages_request(&gateway)
        .json(&json!({"model": "smart", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((35..=41).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let view = gateway.backend(claude["id"].as_str().unwrap()).await;
    let remaining = view["cooldown_remaining_ms"].as_u64().unwrap();
    assert!((35_000..=40_000).contains(&remaining), "{view}");
}

#[tokio::test]
async fn errors_use_the_format_the_client_spoke() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    add_anthropic_backend(&gateway, "claude", &upstream, "smart").await;

    // Unknown model, Anthropic client.
    let response = messages_request(&gateway)
        .json(&json!({"model": "nope", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");

    // No key.
    let response = gateway
        .client
        .post(format!("{}/v1/messages", gateway.url))
        .json(&json!({"model": "smart", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["type"],
        "authentication_error"
    );

    // An upstream 400 in Anthropic's shape reaches an OpenAI client in OpenAI's shape, unretried.
    upstream.push(Reply::status(
        400,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: 999999 > 8192"}}),
    ));
    let (status, body) = gateway.chat("smart").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "max_tokens: 999999 > 8192");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // A Messages request without `messages` or `max_tokens`: Anthropic's 400, in its shape,
    // without an upstream call.
    let calls = upstream.calls();
    for body in [
        json!({"model": "smart", "max_tokens": 10}),
        json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "smart", "max_tokens": 10, "messages": "hi"}),
    ] {
        let response = messages_request(&gateway).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        let field = if body.get("max_tokens").is_none() {
            "max_tokens"
        } else {
            "messages"
        };
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {error}");
    }
    assert_eq!(
        upstream.calls(),
        calls,
        "refused requests reach no upstream"
    );

    // count_tokens with a bad body: a 400 in Anthropic's shape (the pass-through itself is
    // tested in tests/responses_routing.rs).
    let response = gateway
        .client
        .post(format!("{}/v1/messages/count_tokens", gateway.url))
        .header("x-api-key", ADMIN_TOKEN)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["type"], "error");

    // Every upstream failing: a 502 in Anthropic's shape, generic, naming the request id.
    upstream.set_default(Reply::server_error());
    let response = messages_request(&gateway)
        .json(&json!({"model": "smart", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let request_id = response.headers()["request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.headers()["x-request-id"], request_id.as_str());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(
        body["error"]["message"],
        format!("upstream failed (request id {request_id})")
    );
}

#[tokio::test]
async fn endpoints_anthropic_cannot_serve_skip_anthropic_backends() {
    let anthropic = MockUpstream::start().await;
    let openai = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    add_anthropic_backend(&gateway, "claude", &anthropic, "emb").await;
    gateway
        .add_openai_backend("gpt", &openai.openai_base_url(), "primary", &["emb"])
        .await;
    for _ in 0..4 {
        let response = gateway
            .proxy("/v1/embeddings")
            .json(&json!({"model": "emb", "input": "hello"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(anthropic.calls(), 0);
    assert_eq!(openai.calls(), 4);
}

#[tokio::test]
async fn embeddings_for_a_model_only_anthropic_serves_is_a_clear_400() {
    let anthropic = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    add_anthropic_backend(&gateway, "claude", &anthropic, "claude-only").await;
    for (path, body) in [
        (
            "/v1/embeddings",
            json!({"model": "claude-only", "input": "hello"}),
        ),
        (
            "/v1/completions",
            json!({"model": "claude-only", "prompt": "hello"}),
        ),
    ] {
        let response = gateway.proxy(path).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], "model", "{error}");
        assert_eq!(error["error"]["code"], "model_not_supported", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("claude-only") && message.contains(path),
            "{message}"
        );
    }
    assert_eq!(anthropic.calls(), 0);
}
