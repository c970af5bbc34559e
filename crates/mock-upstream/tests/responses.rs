//! The Responses API and count_tokens of a real `MockUpstream`, over HTTP.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on failure, like the tests that call them"
)]

use mock_upstream::{MockUpstream, Reply, StreamSpec};
use serde_json::{json, Value};

async fn send(
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.json().await.unwrap(), headers)
}

async fn create(mock: &MockUpstream, body: Value) -> (u16, Value) {
    let (status, body, _) = send(
        reqwest::Method::POST,
        format!("{}/responses", mock.openai_base_url()),
        Some(body),
    )
    .await;
    (status, body)
}

/// `(event name, data)` of each SSE event.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split_terminator("\n\n")
        .map(|block| {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .expect("every event is named")
                .to_owned();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn create_answers_a_response_object_and_keeps_it() {
    let mock = MockUpstream::start().await;
    let (status, body) = create(&mock, json!({"model": "gpt-test", "input": "Hello"})).await;
    assert_eq!(status, 200);
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id, format!("{}1", mock.response_id_prefix()));
    let created_at = body["created_at"].as_u64().unwrap();
    assert_eq!(
        body,
        json!({
            "id": id, "object": "response", "created_at": created_at, "status": "completed",
            "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
            "model": "gpt-test",
            "output": [{"type": "message", "id": id.replace("resp_", "msg_"), "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "chunk0 chunk1 chunk2", "annotations": [], "logprobs": []}]}],
            "parallel_tool_calls": true, "previous_response_id": null, "store": true, "background": false,
            "temperature": null, "tool_choice": "auto", "tools": [], "top_p": null,
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13},
            "metadata": {}
        })
    );
    assert_eq!(mock.stored_responses(), vec![id.clone()]);

    let (status, fetched, _) = send(
        reqwest::Method::GET,
        format!("{}/responses/{id}", mock.openai_base_url()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fetched, body);
}

#[tokio::test]
async fn the_same_prompt_again_reports_cached_tokens() {
    let mock = MockUpstream::start().await;
    let cached = |body: &Value| body["usage"]["input_tokens_details"]["cached_tokens"].clone();
    let (_, first) = create(
        &mock,
        json!({"model": "m", "input": "x", "prompt_cache_key": "conv-1"}),
    )
    .await;
    let (_, again) = create(
        &mock,
        json!({"model": "m", "input": "y", "prompt_cache_key": "conv-1"}),
    )
    .await;
    let (_, other) = create(
        &mock,
        json!({"model": "m", "input": "x", "prompt_cache_key": "conv-2"}),
    )
    .await;
    assert_eq!(
        (cached(&first), cached(&again), cached(&other)),
        (json!(0), json!(8), json!(0))
    );
    let turn = |n: u32| {
        json!({"model": "m", "instructions": "Be brief.", "input": [
            {"role": "user", "content": "Plan a trip"},
            {"role": "user", "content": format!("turn {n}")}]})
    };
    let (_, one) = create(&mock, turn(1)).await;
    let (_, two) = create(&mock, turn(2)).await;
    assert_eq!((cached(&one), cached(&two)), (json!(0), json!(8)));
    // Another mock (another upstream key) has its own cache.
    let elsewhere = MockUpstream::start().await;
    let (_, cold) = create(&elsewhere, turn(3)).await;
    assert_eq!(cached(&cold), json!(0));
}

#[tokio::test]
async fn streams_the_typed_events_in_order() {
    let mock = MockUpstream::start().await;
    let response = reqwest::Client::new()
        .post(format!("{}/responses", mock.openai_base_url()))
        .json(&json!({"model": "gpt-test", "input": "Hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(events[0].1["response"]["usage"], Value::Null);
    let deltas: String = events[4..7]
        .iter()
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "chunk0 chunk1 chunk2");
    assert_eq!(events[7].1["text"], deltas);
    assert_eq!(events[9].1["item"]["content"][0]["text"], deltas);
    let done = &events[10].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"]["total_tokens"], 13);
    assert_eq!(done["id"], events[0].1["response"]["id"]);
    assert_eq!(mock.completed_streams(), 1);
}

#[tokio::test]
async fn a_dying_stream_never_completes() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Stream(StreamSpec::new(4).die_after(2)));
    let mut response = reqwest::Client::new()
        .post(format!("{}/responses", mock.openai_base_url()))
        .json(&json!({"model": "m", "input": "Hi"}))
        .send()
        .await
        .unwrap();
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("stream ended cleanly"),
            Err(e) => break e,
        }
    };
    assert!(error.is_body() || error.is_decode(), "{error:?}");
    let events = parse_sse(&String::from_utf8(received).unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
        ]
    );
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn previous_response_id_must_be_one_of_this_mocks() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let (_, made) = create(&first, json!({"model": "m", "input": "Hi"})).await;
    let id = made["id"].as_str().unwrap();
    assert!(id.starts_with(&first.response_id_prefix()));
    assert_ne!(first.response_id_prefix(), second.response_id_prefix());

    let (status, follow_up) = create(
        &first,
        json!({"model": "m", "input": "More", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(follow_up["previous_response_id"], id);

    let (status, error) = create(
        &second,
        json!({"model": "m", "input": "More", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        error,
        json!({"error": {"message": format!("Previous response with id '{id}' not found."),
                         "type": "invalid_request_error", "param": "previous_response_id",
                         "code": "previous_response_not_found"}})
    );
}

#[tokio::test]
async fn delete_cancel_and_store_false() {
    let mock = MockUpstream::start().await;
    let base = mock.openai_base_url();
    let (_, plain) = create(&mock, json!({"model": "m", "input": "Hi"})).await;
    let id = plain["id"].as_str().unwrap().to_owned();

    let (status, error, _) = send(
        reqwest::Method::POST,
        format!("{base}/responses/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let (status, deleted, _) = send(
        reqwest::Method::DELETE,
        format!("{base}/responses/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted,
        json!({"id": id, "object": "response.deleted", "deleted": true})
    );
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, error, _) = send(method, format!("{base}/responses/{id}"), None).await;
        assert_eq!(status, 404);
        assert_eq!(
            error["error"]["message"],
            format!("Response with id '{id}' not found.")
        );
    }

    let (_, background) = create(
        &mock,
        json!({"model": "m", "input": "Hi", "background": true}),
    )
    .await;
    assert_eq!(background["status"], "queued");
    assert_eq!(background["output"], json!([]));
    let bg_id = background["id"].as_str().unwrap();
    let (status, cancelled, _) = send(
        reqwest::Method::POST,
        format!("{base}/responses/{bg_id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "cancelled");

    let (_, unstored) = create(&mock, json!({"model": "m", "input": "Hi", "store": false})).await;
    assert_eq!(unstored["store"], false);
    let (status, _, _) = send(
        reqwest::Method::GET,
        format!("{base}/responses/{}", unstored["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(mock.stored_responses(), vec![bg_id.to_owned()]);
}

#[tokio::test]
async fn scripted_replies_apply_to_responses() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::rate_limited(Some(3)));
    mock.push(Reply::content("Scripted answer here"));
    let (status, error, headers) = send(
        reqwest::Method::POST,
        format!("{}/responses", mock.openai_base_url()),
        Some(json!({"model": "m", "input": "Hi"})),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    let (status, body) = create(&mock, json!({"model": "m", "input": "Hi"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Scripted answer here"
    );
    assert_eq!(body["usage"]["output_tokens"], 3);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn count_tokens_answers_anthropic_style() {
    let mock = MockUpstream::start().await;
    let (status, body, _) = send(
        reqwest::Method::POST,
        format!("{}/v1/messages/count_tokens", mock.base_url()),
        Some(json!({"model": "claude", "messages": [{"role": "user", "content": "Hi"}]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"input_tokens": 10}));
    let recorded = mock.last_request().unwrap();
    assert_eq!(recorded.path, "/v1/messages/count_tokens");
    assert_eq!(recorded.body["model"], "claude");
}
