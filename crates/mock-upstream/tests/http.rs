//! Drives a real `MockUpstream` over HTTP with reqwest: wire shapes, scripting, streams, records.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests that call them"
)]

use std::time::{Duration, Instant};

use mock_upstream::{MockConfig, MockUpstream, Reply, StreamSpec};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(url: String, body: Value) -> reqwest::Response {
    client().post(url).json(&body).send().await.unwrap()
}

/// One SSE event: its `event:` name (if any) and its `data:` payload.
#[derive(Debug, PartialEq)]
struct Event {
    name: Option<String>,
    data: String,
}

fn parse_sse(text: &str) -> Vec<Event> {
    assert!(
        text.ends_with("\n\n"),
        "stream does not end with a blank line: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            Event {
                name,
                data: data.expect("event without data"),
            }
        })
        .collect()
}

fn json_of(event: &Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

/// Polls `f` until it is true, for at most two seconds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn chat_json() {
    let mock = MockUpstream::start().await;
    let resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    let created = body["created"].as_u64().unwrap();
    assert!(created > 1_700_000_000);
    assert_eq!(
        body,
        json!({
            "id": "chatcmpl-mock-1",
            "object": "chat.completion",
            "created": created,
            "model": "gpt-test",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "chunk0 chunk1 chunk2"},
                "finish_reason": "stop",
                "logprobs": null
            }],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
        })
    );
}

#[tokio::test]
async fn chat_content_json() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::content("Hello there world, again"));
    let body: Value = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({"model": "m"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello there world, again"
    );
    assert_eq!(body["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn chat_stream_without_usage() {
    let mock = MockUpstream::start().await;
    let resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({"model": "gpt-test", "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(events.iter().all(|e| e.name.is_none()));
    assert_eq!(events[5].data, "[DONE]");

    let chunks: Vec<Value> = events[..5].iter().map(json_of).collect();
    for chunk in &chunks {
        assert_eq!(chunk["id"], "chatcmpl-mock-1");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-test");
        assert!(
            chunk.get("usage").is_none(),
            "usage without include_usage: {chunk}"
        );
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
    );
    let text: String = chunks[1..4]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "chunk0 chunk1 chunk2");
    assert_eq!(
        chunks[4]["choices"],
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
    );
    eventually("completed stream", || mock.completed_streams() == 1).await;
    assert_eq!(mock.cancelled_streams(), 0);
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::content("one two three four five"));
    let resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = parse_sse(&resp.text().await.unwrap());
    // role, 3 content chunks, finish, usage, [DONE]
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(events[6].data, "[DONE]");
    for event in &events[..5] {
        let chunk = json_of(event);
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some());
    }
    let text: String = events[1..4]
        .iter()
        .map(|e| {
            json_of(e)["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "one two three four five");
    assert_eq!(json_of(&events[4])["choices"][0]["finish_reason"], "stop");
    let usage = json_of(&events[5]);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );
}

#[tokio::test]
async fn completions_json_and_stream() {
    let mock = MockUpstream::start().await;
    let url = format!("{}/completions", mock.openai_base_url());
    let body: Value = post(url.clone(), json!({"model": "davinci", "prompt": "x"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["id"], "cmpl-mock-1");
    assert_eq!(
        body["choices"],
        json!([{"text": "chunk0 chunk1 chunk2", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(body["usage"]["total_tokens"], 13);

    let text = post(
        url,
        json!({"model": "davinci", "prompt": "x", "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(events[4].data, "[DONE]");
    assert_eq!(json_of(&events[0])["choices"][0]["text"], "chunk0");
    assert_eq!(json_of(&events[3])["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn embeddings_and_models() {
    let mock = MockUpstream::start().await;
    let url = format!("{}/embeddings", mock.openai_base_url());
    let body: Value = post(
        url.clone(),
        json!({"model": "emb", "input": ["a b", "c", "a b"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "emb");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(item["embedding"].as_array().unwrap().len(), 8);
    }
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    let single: Value = post(url, json!({"model": "emb", "input": "just one"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(single["data"].as_array().unwrap().len(), 1);

    let models: Value = client()
        .get(format!("{}/models", mock.openai_base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "mock-model");
    assert_eq!(models["data"][0]["object"], "model");
}

#[tokio::test]
async fn scripted_rate_limit_then_default_ok() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::rate_limited(Some(7)));
    assert_eq!(mock.queued(), 1);
    let url = format!("{}/chat/completions", mock.openai_base_url());

    let resp = post(url.clone(), json!({"model": "m"})).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"].is_string());
    assert_eq!(body["error"]["param"], Value::Null);

    let resp = post(url, json!({"model": "m"})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.calls(), 2);
    assert_eq!(mock.queued(), 0);
}

#[tokio::test]
async fn error_shapes_follow_the_path_and_status_is_verbatim() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::rate_limited(None));
    mock.push(Reply::overloaded());
    mock.push(Reply::Status {
        status: 400,
        body: json!({"custom": true}),
        headers: vec![("x-extra".into(), "yes".into())],
    });
    mock.set_default(Reply::server_error());
    let url = format!("{}/v1/messages", mock.base_url());

    let resp = post(url.clone(), json!({"model": "claude"})).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    let resp = post(url.clone(), json!({})).await;
    assert_eq!(resp.status(), 529);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");

    let resp = post(url.clone(), json!({})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-extra"], "yes");
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"custom": true}));

    let resp = post(url, json!({})).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "api_error"
    );

    let resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({}),
    )
    .await;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "server_error"
    );
}

#[tokio::test]
async fn delay_holds_the_headers() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Delay {
        ms: 150,
        then: Box::new(Reply::rate_limited(Some(1))),
    });
    let started = Instant::now();
    let resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({}),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.status(), 429);
}

#[tokio::test]
async fn die_after_truncates_the_stream() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Stream(StreamSpec::new(5).die_after(2)));
    // A forced stream even though the request did not ask for one.
    let mut resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!(
                "stream ended cleanly: {}",
                String::from_utf8_lossy(&received)
            ),
            Err(e) => break e,
        }
    };
    assert!(error.is_body() || error.is_decode(), "{error:?}");
    let text = String::from_utf8(received).unwrap();
    let events = parse_sse(&text);
    // role chunk + 2 content chunks, nothing after.
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(
        json_of(&events[2])["choices"][0]["delta"]["content"],
        " chunk1"
    );
    assert_eq!(mock.cancelled_streams(), 0);
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn die_after_zero_still_sends_the_headers() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Stream(StreamSpec::new(3).die_after(0)));
    let mut resp = post(format!("{}/completions", mock.openai_base_url()), json!({})).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.is_err());
}

#[tokio::test]
async fn gaps_send_each_event_separately() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Stream(
        StreamSpec::new(3).gap_ms(30).content("a b c"),
    ));
    let started = Instant::now();
    let mut resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({}),
    )
    .await;
    let mut reads = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        reads.push(String::from_utf8(chunk.to_vec()).unwrap());
    }
    assert!(started.elapsed() >= Duration::from_millis(90));
    // The role chunk and each content chunk arrive on their own.
    assert!(reads.len() >= 4, "{reads:?}");
    for read in &reads[..4] {
        assert_eq!(parse_sse(read).len(), 1, "{reads:?}");
    }
    let events = parse_sse(&reads.concat());
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

#[tokio::test]
async fn dropping_a_slow_stream_counts_as_cancelled() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Stream(StreamSpec::new(100).gap_ms(20)));
    let mut resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({}),
    )
    .await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(resp);
    eventually("cancelled stream", || mock.cancelled_streams() == 1).await;
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn anthropic_message_json() {
    let mock = MockUpstream::start().await;
    let resp = post(
        format!("{}/v1/messages", mock.base_url()),
        json!({"model": "claude-test", "max_tokens": 10, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({
            "id": "msg_mock_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": "chunk0 chunk1 chunk2"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 3}
        })
    );
}

#[tokio::test]
async fn anthropic_message_stream() {
    let mock = MockUpstream::start().await;
    let resp = post(
        format!("{}/v1/messages", mock.base_url()),
        json!({"model": "claude-test", "stream": true}),
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for event in &events {
        assert_eq!(json_of(event)["type"], event.name.as_deref().unwrap());
    }
    let start = json_of(&events[0]);
    assert_eq!(start["message"]["id"], "msg_mock_1");
    assert_eq!(start["message"]["model"], "claude-test");
    assert_eq!(start["message"]["content"], json!([]));
    assert_eq!(start["message"]["usage"]["input_tokens"], 10);
    assert_eq!(
        json_of(&events[1]),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        json_of(&events[3]),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "chunk0"}})
    );
    assert_eq!(
        json_of(&events[7]),
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 3}
        })
    );
    eventually("completed stream", || mock.completed_streams() == 1).await;
}

#[tokio::test]
async fn records_method_path_headers_and_body() {
    let mock = MockUpstream::start().await;
    assert!(mock.last_request().is_none());
    client()
        .post(format!(
            "{}/chat/completions?trace=1",
            mock.openai_base_url()
        ))
        .header("Authorization", "Bearer sk-test")
        .header("X-Custom", "abc")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{}/v1/nowhere", mock.base_url()))
        .body("not json")
        .send()
        .await
        .unwrap();

    assert_eq!(mock.calls(), 2);
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.query.as_deref(), Some("trace=1"));
    assert_eq!(first.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(first.header("X-CUSTOM"), Some("abc"));
    assert!(first.headers.iter().any(|(n, _)| n == "x-custom"));
    assert_eq!(first.body["messages"][0]["content"], "hi");

    let last = mock.last_request().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(last.path, "/v1/nowhere");
    assert_eq!(last.body, Value::Null);
}

#[tokio::test]
async fn unknown_route_is_404() {
    let mock = MockUpstream::start().await;
    let resp = post(format!("{}/v1/nowhere", mock.base_url()), json!({})).await;
    assert_eq!(resp.status(), 404);
    assert!(resp.json::<Value>().await.unwrap()["error"]["message"].is_string());
}

#[tokio::test]
async fn hang_never_answers() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Hang);
    let err = client()
        .post(format!("{}/chat/completions", mock.openai_base_url()))
        .json(&json!({}))
        .timeout(Duration::from_millis(150))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn drop_closes_without_a_response() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Drop);
    let started = Instant::now();
    let err = client()
        .post(format!("{}/chat/completions", mock.openai_base_url()))
        .json(&json!({}))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none());
    assert!(started.elapsed() < Duration::from_secs(1));
    // The server goes on serving new connections.
    let resp = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({}),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn start_with_config_and_shutdown() {
    let mock = MockUpstream::start_with(MockConfig {
        stream_defaults: StreamSpec::new(2),
        default_reply: Reply::Ok.delayed(1),
        record_requests: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let text = post(
        format!("{}/chat/completions", mock.openai_base_url()),
        json!({"stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(parse_sse(&text).len(), 5);
    assert_eq!(mock.calls(), 1);
    assert!(mock.requests().is_empty());

    let addr = mock.addr();
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_control_route_scripts_errors_only_when_enabled() {
    let plain = MockUpstream::start().await;
    let resp = post(
        format!("{}/__mock/replies", plain.base_url()),
        json!({"status": 429}),
    )
    .await;
    assert_eq!(resp.status(), 404, "no control route by default");

    let mock = MockUpstream::start_with(MockConfig {
        control: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let resp = post(
        format!("{}/__mock/replies", mock.base_url()),
        json!({"status": 429, "retry_after": 7, "times": 2}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(mock.calls(), 0, "control requests are not counted");
    let url = format!("{}/chat/completions", mock.openai_base_url());
    for _ in 0..2 {
        let resp = post(url.clone(), json!({"model": "m"})).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "7");
    }
    assert_eq!(post(url, json!({"model": "m"})).await.status(), 200);
    let bad = post(
        format!("{}/__mock/replies", mock.base_url()),
        json!({"retry_after": 7}),
    )
    .await;
    assert_eq!(bad.status(), 400);
}

/// A client that speaks HTTP/2 from its first byte (h2c prior knowledge).
fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[tokio::test]
async fn h2c_prior_knowledge_gets_json_and_sse_over_one_connection() {
    let mock = MockUpstream::start().await;
    let client = h2c_client();
    let url = format!("{}/chat/completions", mock.openai_base_url());
    let resp = client
        .post(&url)
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "chunk0 chunk1 chunk2"
    );

    let streams = (0..20).map(|_| {
        let request = client
            .post(&url)
            .json(&json!({"model": "m", "stream": true}));
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            resp.text().await.unwrap()
        }
    });
    for text in spawn_all(streams).await {
        let events = parse_sse(&text);
        assert_eq!(events.last().unwrap().data, "[DONE]");
        assert_eq!(json_of(&events[0])["object"], "chat.completion.chunk");
    }
    assert_eq!(mock.calls(), 21);
    assert_eq!(mock.completed_streams(), 20);
    assert_eq!(
        mock.connections(),
        1,
        "every stream shares the one h2c connection"
    );
    assert!(mock.requests().iter().all(|r| r.version == "HTTP/2.0"));

    // HTTP/1.1 on the same port still works and is recorded as such.
    let resp = post(url, json!({"model": "m"})).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(mock.last_request().unwrap().version, "HTTP/1.1");
    assert_eq!(mock.connections(), 2);
}

#[tokio::test]
async fn one_h2c_connection_holds_hundreds_of_streams_at_once() {
    // hyper's own default would admit 200 concurrent streams; the mock admits far more.
    const HELD: usize = 300;
    let mock = MockUpstream::start().await;
    mock.set_default(Reply::Hang);
    let client = h2c_client();
    let url = format!("{}/chat/completions", mock.openai_base_url());
    let held: Vec<_> = (0..HELD)
        .map(|_| tokio::spawn(client.post(&url).json(&json!({"stream": true})).send()))
        .collect();
    eventually("every stream reaches the mock", || mock.calls() == HELD).await;
    assert_eq!(mock.connections(), 1);
    for task in held {
        task.abort();
    }
}

/// Runs every future as its own task and awaits them all, keeping their order.
async fn spawn_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}
