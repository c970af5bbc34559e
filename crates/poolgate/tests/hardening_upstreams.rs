//! What upstreams send back and where backends may point, against the real `poolgate serve`
//! binary and real mock upstreams (issue #14, items 2, 5, 6, 9, 12): an echoing upstream's key
//! never reaches the client; metadata and rebinding targets are refused; an oversized answer is
//! a clear 502 and not retried; a redirect is a clear 502; backends all cooling after errors
//! give 503; a 4xx answer to a half-open probe does not close the cooldown; a stream that dies
//! after its role chunk (or `message_start`) fails over; an Anthropic base URL ending in `/v1`
//! is normalised; a body naming `model` twice is refused. The Responses API, count_tokens and
//! Azure backends are covered where their path differs.

mod common;

use std::time::Duration;

use base64::Engine;
use common::binary::Binary;
use common::{send, ADMIN_TOKEN};
use mock_upstream::{MockUpstream, Reply, StreamSpec};
use serde_json::{json, Value};

/// A key long enough for every form of it to be scrubbed.
const KEY: &str = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78";

fn chat() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn messages() -> Value {
    json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
}

/// A 400 whose message and `content-type` echo the credentials every way an upstream might.
fn echoing_error(anthropic: bool) -> Reply {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{KEY}"));
    let message = format!(
        "invalid request for key {KEY}; headers: Authorization: Bearer {KEY}, x-api-key: {KEY}, \
         proxy: Basic {basic}; key prefix {}…",
        &KEY[..20]
    );
    let body = if anthropic {
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    } else {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
    };
    Reply::status(400, body).with_header("content-type", format!("application/json; key={KEY}"))
}

/// `POST /v1/messages` (Anthropic's surface) with the admin token as the key.
fn messages_request(gateway: &Binary, body: &Value) -> reqwest::RequestBuilder {
    gateway
        .client
        .post(format!("{}/v1/messages", gateway.url))
        .header("x-api-key", ADMIN_TOKEN)
        .json(body)
}

/// Tries to create a backend at `url`.
async fn create_at(gateway: &Binary, url: &str) -> common::Answer {
    send(
        gateway
            .admin(reqwest::Method::POST, "/backends")
            .json(&json!({
        "name": "bad", "api_base_url": url, "api_key": "sk-test-0000000001",
        "model_mappings": {"m": "m"}})),
    )
    .await
}

fn assert_no_key(answer: &common::Answer) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{KEY}"));
    for secret in [KEY, &KEY[3..20], &KEY[20..], &basic[..24]] {
        assert!(
            !answer.text.contains(secret),
            "`{secret}` reached the client: {}",
            answer.text
        );
    }
    assert!(answer.text.contains("[REDACTED]"), "{}", answer.text);
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(!content_type.contains(&KEY[..12]), "{content_type}");
}

#[tokio::test]
async fn an_echoing_upstreams_key_never_reaches_the_client() {
    let openai = MockUpstream::start().await;
    let anthropic = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "").await;
    gateway
        .add_backend(
            json!({"name": "oa", "api_base_url": openai.openai_base_url(),
            "api_key": KEY, "model_mappings": {"m": "up-m"}}),
        )
        .await;
    gateway
        .add_backend(
            json!({"name": "an", "api": "anthropic", "api_base_url": anthropic.base_url(),
            "api_key": KEY, "model_mappings": {"claude": "up-claude"}}),
        )
        .await;

    // OpenAI client, OpenAI backend: relayed as is, minus the key.
    openai.push(echoing_error(false));
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_no_key(&answer);
    assert!(answer.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid request"));

    // Anthropic client, Anthropic backend.
    anthropic.push(echoing_error(true));
    let mut body = messages();
    body["model"] = json!("claude");
    let answer = send(messages_request(&gateway, &body)).await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_no_key(&answer);

    // OpenAI client, Anthropic backend: the error is translated, and still has no key.
    anthropic.push(echoing_error(true));
    let mut body = chat();
    body["model"] = json!("claude");
    let answer = send(gateway.proxy("/v1/chat/completions").json(&body)).await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_no_key(&answer);
    // The upstreams did get the key (the scrub is on the way back only).
    assert_eq!(common::bearer_seen(&openai), format!("Bearer {KEY}"));

    // The Responses API passed through, and count_tokens: scrubbed the same way.
    openai.push(echoing_error(false));
    let answer = send(
        gateway
            .proxy("/v1/responses")
            .json(&json!({"model": "m", "input": "hi"})),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_no_key(&answer);
    anthropic.push(echoing_error(true));
    let mut body = messages();
    body["model"] = json!("claude");
    let count_tokens = gateway
        .client
        .post(format!("{}/v1/messages/count_tokens", gateway.url))
        .header("x-api-key", ADMIN_TOKEN)
        .json(&body);
    let answer = send(count_tokens).await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_no_key(&answer);

    // Azure (`api-key` header): relayed scrubbed too.
    let azure = MockUpstream::start().await;
    gateway
        .add_backend(
            json!({"name": "az", "api": "azure", "api_base_url": azure.azure_endpoint(),
            "api_key": KEY, "model_mappings": {"gpt-4o": "gpt4o-prod"}}),
        )
        .await;
    azure.push(echoing_error(false));
    let mut body = chat();
    body["model"] = json!("gpt-4o");
    let answer = send(gateway.proxy("/v1/chat/completions").json(&body)).await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_no_key(&answer);
    gateway.stop().await;
}

#[tokio::test]
async fn metadata_and_rebinding_targets_are_refused() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Defaults: loopback allowed (local model servers), metadata and link-local refused.
    let gateway = Binary::start(dir.path(), "[network]\ndeny = [\"*.corp.example\"]\n").await;
    for url in [
        "http://169.254.169.254/latest/v1",
        "http://[fd00:ec2::254]/v1",
        "http://metadata.google.internal/v1",
        "http://169.254.10.1/v1",
        "http://0.0.0.0:8000/v1",
        "http://llm.corp.example/v1",
    ] {
        let answer = create_at(&gateway, url).await;
        assert_eq!(answer.status, 400, "{url}: {answer}");
        assert_eq!(
            answer.json["error"]["param"], "api_base_url",
            "{url}: {answer}"
        );
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("egress policy"),
            "{url}: {answer}"
        );
    }
    gateway
        .add_openai_backend("local", &upstream.openai_base_url(), "m")
        .await;
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(
        answer.status, 200,
        "loopback is allowed by default: {answer}"
    );
    gateway.stop().await;

    // Private addresses switched off: every spelling of loopback is refused at create, and a
    // name that resolves to loopback is refused when it is resolved (no rebinding).
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "[network]\nallow_private = false\n").await;
    let port = upstream.addr().port();
    for host in [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "127.1",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "10.1.2.3",
    ] {
        let url = format!("http://{host}:{port}/v1");
        let answer = create_at(&gateway, &url).await;
        assert_eq!(answer.status, 400, "{url}: {answer}");
        assert_eq!(answer.json["error"]["param"], "api_base_url");
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("allow_private"),
            "{url}: {answer}"
        );
    }
    let backend = gateway
        .add_openai_backend("by-name", &format!("http://localhost:{port}/v1"), "m")
        .await;
    let calls_before = upstream.calls();
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 502, "{answer}");
    assert!(answer.text.contains("egress policy"), "{answer}");
    assert_eq!(upstream.calls(), calls_before, "nothing was sent");
    let id = backend["id"].as_str().unwrap();
    let shown: Value = gateway
        .admin(reqwest::Method::GET, &format!("/backends/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        shown["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("localhost"),
        "{shown}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn oversized_answers_and_redirects_are_clear_502s() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "[proxy]\nmax_response_bytes = 1048576\n").await;
    gateway
        .add_backend(
            json!({"name": "first", "api_base_url": first.openai_base_url(),
        "api_key": "sk-first-000000001", "model_mappings": {"m": "m"}}),
        )
        .await;
    gateway
        .add_backend(
            json!({"name": "second", "api_base_url": second.openai_base_url(),
        "api_key": "sk-second-00000001", "pool": "fallback", "model_mappings": {"m": "m"}}),
        )
        .await;

    // 2 MiB of content against a 1 MiB cap: refused, and not tried on the other backend.
    first.push(Reply::content("word ".repeat(400_000)));
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 502, "{answer}");
    assert!(answer.text.contains("max_response_bytes"), "{answer}");
    assert_eq!((first.calls(), second.calls()), (1, 0));

    // A redirect is never followed (it would carry the key elsewhere): the next backend is
    // tried, and when none is left the client gets a 502 that says why.
    first.push(Reply::status(302, json!({})).with_header("location", "http://evil.example/v1"));
    second.push(Reply::status(307, json!({})).with_header("location", "http://evil.example/v1"));
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 502, "{answer}");
    assert!(answer.text.contains("redirect"), "{answer}");
    assert!(answer.header("location").is_none());
    assert_eq!((first.calls(), second.calls()), (2, 1));
    gateway.stop().await;
}

#[tokio::test]
async fn backends_cooling_after_errors_give_503_and_a_4xx_probe_does_not_heal() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "[cooldown]\nerror_seconds = 1\njitter = 0\n").await;
    let backend = gateway
        .add_openai_backend("flaky", &upstream.openai_base_url(), "m")
        .await;
    let id = backend["id"].as_str().unwrap().to_owned();
    let status = |gateway: &Binary| {
        let request = gateway.admin(reqwest::Method::GET, &format!("/backends/{id}"));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap()["status"].clone() }
    };

    upstream.push(Reply::server_error());
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 502, "{answer}");
    // Cooling after a 5xx: not "rate limited" — 503 with Retry-After.
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 503, "{answer}");
    assert_eq!(answer.retry_after(), Some(1), "{answer}");
    assert!(
        answer.text.contains("cooling down after upstream errors"),
        "{answer}"
    );
    assert_eq!(upstream.calls(), 1);

    // After the cooldown the next request is the probe; a 400 (the request's own fault) is
    // relayed but proves nothing: still cooling, and the next request probes again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    upstream.push(Reply::error(400));
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(status(&gateway).await, "cooling");
    let answer = send(gateway.proxy("/v1/chat/completions").json(&chat())).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(upstream.calls(), 3);
    assert_eq!(status(&gateway).await, "healthy");
    gateway.stop().await;
}

/// The data lines of an SSE body.
fn data_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect()
}

#[tokio::test]
async fn a_stream_that_dies_after_its_role_chunk_message_start_or_response_created_fails_over() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "").await;
    for (name, upstream, pool) in [
        ("first", &first, "primary"),
        ("second", &second, "fallback"),
    ] {
        gateway
            .add_backend(
                json!({"name": name, "api_base_url": upstream.openai_base_url(),
            "api_key": format!("sk-{name}-000000001"), "pool": pool,
            "model_mappings": {"m": "m"}}),
            )
            .await;
        gateway
            .add_backend(json!({"name": format!("{name}-an"), "api": "anthropic",
            "api_base_url": upstream.base_url(), "api_key": format!("sk-{name}-an-0000001"),
            "pool": pool, "model_mappings": {"claude": "claude"}}))
            .await;
        // Its own backend for the Responses API (the chat one is cooling by then).
        gateway
            .add_backend(
                json!({"name": format!("{name}-r"), "api_base_url": upstream.openai_base_url(),
            "api_key": format!("sk-{name}-r-00000001"), "pool": pool,
            "model_mappings": {"r": "r"}}),
            )
            .await;
    }

    // OpenAI: the role chunk, then the connection dies.
    first.push(Reply::Stream(StreamSpec::new(3).die_after(0)));
    let mut body = chat();
    body["stream"] = json!(true);
    let answer = send(gateway.proxy("/v1/chat/completions").json(&body)).await;
    assert_eq!(answer.status, 200, "{answer}");
    let chunks = data_lines(&answer.text);
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"].is_string())
        .count();
    assert_eq!(
        roles, 1,
        "one role chunk reached the client: {}",
        answer.text
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "chunk0 chunk1 chunk2");
    assert!(
        answer.text.trim_end().ends_with("data: [DONE]"),
        "{}",
        answer.text
    );
    assert!(!answer.text.contains("error"), "{}", answer.text);

    // Anthropic: `message_start` (and the empty block start), then the connection dies.
    first.push(Reply::Stream(StreamSpec::new(3).die_after(0)));
    let mut body = messages();
    body["model"] = json!("claude");
    body["stream"] = json!(true);
    let answer = send(messages_request(&gateway, &body)).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(
        answer.text.matches("event: message_start").count(),
        1,
        "{}",
        answer.text
    );
    assert!(
        answer.text.contains("event: message_stop"),
        "{}",
        answer.text
    );
    assert!(!answer.text.contains("event: error"), "{}", answer.text);

    // The Responses API (passed through): `response.created`, `response.in_progress`, the empty
    // message item and text part, then the connection dies.
    first.push(Reply::Stream(StreamSpec::new(3).die_after(0)));
    let answer = send(
        gateway
            .proxy("/v1/responses")
            .json(&json!({"model": "r", "input": "hi", "stream": true})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(
        answer.text.matches("event: response.created").count(),
        1,
        "{}",
        answer.text
    );
    assert!(
        answer.text.contains("event: response.completed"),
        "{}",
        answer.text
    );
    assert!(!answer.text.contains("event: error"), "{}", answer.text);

    assert_eq!((first.calls(), second.calls()), (3, 3));
    let records = gateway.usage_records(3).await;
    for record in &records {
        assert_eq!(record["outcome"], "success", "{record}");
        assert_eq!(record["attempts"], 2, "{record}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn small_things_anthropic_v1_normalised_and_a_doubled_model_refused() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "").await;
    let created = gateway
        .add_backend(json!({"name": "an", "api": "anthropic",
        "api_base_url": format!("{}/v1/", upstream.base_url()), "api_key": "sk-ant-000000001",
        "model_mappings": {"claude": "claude"}}))
        .await;
    assert_eq!(created["api_base_url"], upstream.base_url(), "{created}");
    let mut body = messages();
    body["model"] = json!("claude");
    let answer = send(messages_request(&gateway, &body)).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(upstream.last_request().unwrap().path, "/v1/messages");

    // Routing and the upstream must read the same `model`.
    let doubled =
        r#"{"model":"claude","messages":[{"role":"user","content":"hi"}],"model":"other"}"#;
    let answer = send(
        gateway
            .proxy("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(doubled),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(answer.json["error"]["param"], "model");
    gateway.stop().await;
}
