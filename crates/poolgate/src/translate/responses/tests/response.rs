//! `chat.completion` and Anthropic `message` → Response object, field by field.

use serde_json::json;

use super::parse_request;
use crate::translate::responses::echo;
use crate::translate::responses::response::{from_chat_body, from_messages_body};

#[test]
fn chat_completion_becomes_a_response() {
    let request = parse_request(
        json!({"model": "gpt", "input": "hi", "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
        "temperature": 0.2, "metadata": {"k": "v"}, "max_output_tokens": 50}),
    );
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
            "role": "assistant", "content": "Checking.",
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
                  "prompt_tokens_details": {"cached_tokens": 16},
                  "completion_tokens_details": {"reasoning_tokens": 4}}
    });
    let response = from_chat_body(
        body.to_string().as_bytes(),
        echo(&request),
        "resp_abc".to_owned(),
        1_700_000_000,
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({
            "id": "resp_abc", "object": "response", "created_at": 1_700_000_000,
            "status": "completed", "error": null, "incomplete_details": null,
            "model": "gpt-4o-2024-08-06",
            "output": [
                {"type": "message", "id": "msg_abc_0", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}]},
                {"type": "function_call", "id": "fc_abc_1", "call_id": "call_a", "name": "weather",
                 "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
                {"type": "function_call", "id": "fc_abc_2", "call_id": "call_b", "name": "weather",
                 "arguments": "{\"city\":\"Rome\"}", "status": "completed"}
            ],
            "usage": {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
                      "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 4},
                      "total_tokens": 29},
            "previous_response_id": null,
            "instructions": "Be brief.", "max_output_tokens": 50, "parallel_tool_calls": true,
            "temperature": 0.2, "top_p": null, "tool_choice": "auto",
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": null}],
            "metadata": {"k": "v"}, "store": false, "background": false
        })
    );
}

#[test]
fn chat_finish_reasons_and_refusals_map() {
    let request = parse_request(json!({"model": "gpt", "input": "hi"}));
    let answer = |finish: &str, message: serde_json::Value| {
        let body = json!({"id": "c", "model": "gpt", "choices": [
            {"index": 0, "finish_reason": finish, "message": message}]});
        serde_json::to_value(
            from_chat_body(
                body.to_string().as_bytes(),
                echo(&request),
                "resp_1".into(),
                0,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let cut = answer(
        "length",
        json!({"role": "assistant", "content": "Once upon"}),
    );
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(
        cut["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(cut["output"][0]["status"], "incomplete");
    assert_eq!(cut["usage"], serde_json::Value::Null);
    let filtered = answer(
        "content_filter",
        json!({"role": "assistant", "content": null}),
    );
    assert_eq!(filtered["incomplete_details"]["reason"], "content_filter");
    assert_eq!(filtered["output"], json!([]));
    let refused = answer(
        "stop",
        json!({"role": "assistant", "content": null, "refusal": "I can't."}),
    );
    assert_eq!(refused["status"], "completed");
    assert_eq!(
        refused["output"][0]["content"],
        json!([{"type": "refusal", "refusal": "I can't."}])
    );
    assert!(from_chat_body(b"{\"nope\":1}", echo(&request), "resp_1".into(), 0).is_err());
}

#[test]
fn anthropic_message_becomes_a_response() {
    let request = parse_request(json!({"model": "claude", "input": "hi"}));
    let body = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
            {"type": "text", "text": "Let me look"},
            {"type": "text", "text": " that up."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": 40, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 20}
    });
    let response = from_messages_body(
        body.to_string().as_bytes(),
        echo(&request),
        "resp_x".into(),
        7,
    )
    .unwrap();
    let value = serde_json::to_value(&response).unwrap();
    assert_eq!(value["model"], "claude-sonnet-4-5");
    assert_eq!(value["status"], "completed");
    assert_eq!(
        value["output"],
        json!([
            {"type": "reasoning", "id": "rs_x_0", "summary": [{"type": "summary_text", "text": "The user wants weather."}], "status": "completed"},
            {"type": "message", "id": "msg_x_1", "role": "assistant", "status": "completed", "content": [
                {"type": "output_text", "text": "Let me look", "annotations": [], "logprobs": []},
                {"type": "output_text", "text": " that up.", "annotations": [], "logprobs": []}
            ]},
            {"type": "function_call", "id": "fc_x_2", "call_id": "toolu_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
            {"type": "function_call", "id": "fc_x_3", "call_id": "toolu_2", "name": "now", "arguments": "{}", "status": "completed"}
        ])
    );
    assert_eq!(
        value["usage"],
        json!({"input_tokens": 125, "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
               "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 165})
    );
}

#[test]
fn anthropic_stop_reasons_map() {
    let request = parse_request(json!({"model": "claude", "input": "hi"}));
    for (stop, status, reason) in [
        ("end_turn", "completed", None),
        ("stop_sequence", "completed", None),
        ("pause_turn", "completed", None),
        ("max_tokens", "incomplete", Some("max_output_tokens")),
        ("refusal", "incomplete", Some("content_filter")),
    ] {
        let body = json!({"id": "m", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "x"}], "stop_reason": stop,
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let value = serde_json::to_value(
            from_messages_body(
                body.to_string().as_bytes(),
                echo(&request),
                "resp_1".into(),
                0,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(value["status"], status, "{stop}");
        assert_eq!(
            value["incomplete_details"]["reason"].as_str(),
            reason,
            "{stop}"
        );
    }
}
