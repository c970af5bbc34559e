//! Upstream streams → Responses events: whole sequences, numbering, indexes, usage, failures.

use serde_json::{json, Value};

use super::{names, parse_events, parse_request, run, sse};
use crate::translate::responses::echo;
use crate::translate::responses::stream::{ChatToResponsesStream, MessagesToResponsesStream};
use crate::translate::StreamMapper;

fn chat_stream() -> ChatToResponsesStream {
    let request = parse_request(json!({"model": "gpt", "input": "hi", "stream": true}));
    ChatToResponsesStream::new("resp_s".into(), echo(&request), 1_700_000_000)
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    .to_string()
}

const CHAT_USAGE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":6}}}"#;

#[test]
fn chat_text_stream_becomes_the_full_event_sequence() {
    let upstream = [
        sse(
            None,
            &chunk(json!({"role": "assistant", "content": ""}), None),
        ),
        sse(None, &chunk(json!({"content": "Hel"}), None)),
        sse(None, &chunk(json!({"content": "lo"}), None)),
        sse(None, &chunk(json!({}), Some("stop"))),
        sse(None, CHAT_USAGE),
        sse(None, "[DONE]"),
    ];
    let mut mapper = chat_stream();
    let events = run(&mut mapper, &upstream);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let created = &events[0].1["response"];
    assert_eq!(created["id"], "resp_s");
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["model"], "gpt-4o");
    assert_eq!(created["output"], json!([]));
    assert_eq!(
        events[2].1["item"],
        json!({"type": "message", "id": "msg_s_0", "role": "assistant", "status": "in_progress", "content": []})
    );
    assert_eq!(
        events[3].1["part"],
        json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    );
    for (_, data) in &events[3..8] {
        assert_eq!(data["item_id"], "msg_s_0");
        assert_eq!(data["output_index"], 0);
        assert_eq!(data["content_index"], 0);
    }
    assert_eq!(events[4].1["delta"], "Hel");
    assert_eq!(events[6].1["text"], "Hello");
    assert_eq!(events[7].1["part"]["text"], "Hello");
    assert_eq!(events[8].1["item"]["status"], "completed");
    assert_eq!(events[8].1["item"]["content"][0]["text"], "Hello");
    let done = &events[9].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0], events[8].1["item"]);
    assert_eq!(
        done["usage"],
        json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 0}, "output_tokens": 3,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13})
    );
    assert!(mapper.completed());
    assert!(!mapper.upstream_failed());
    assert_eq!(mapper.usage().unwrap().total_tokens, 13);
}

#[test]
fn chat_tool_calls_stream_as_function_call_items() {
    let tool = |index: u32, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut function = json!({"arguments": args});
        if let Some(name) = name {
            function["name"] = json!(name);
        }
        let mut call = json!({"index": index, "function": function});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
        }
        sse(None, &chunk(json!({"tool_calls": [call]}), None))
    };
    let upstream = [
        sse(
            None,
            &chunk(json!({"role": "assistant", "content": "Checking."}), None),
        ),
        tool(0, Some("call_a"), Some("weather"), ""),
        tool(0, None, None, "{\"city\":"),
        tool(0, None, None, "\"Paris\"}"),
        tool(1, Some("call_b"), Some("time"), "{}"),
        sse(None, &chunk(json!({}), Some("tool_calls"))),
        sse(None, CHAT_USAGE),
        sse(None, "[DONE]"),
    ];
    let mut mapper = chat_stream();
    let events = run(&mut mapper, &upstream);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(
        events[8].1,
        json!({"type": "response.output_item.added", "sequence_number": 8, "output_index": 1,
               "item": {"type": "function_call", "id": "fc_s_1", "call_id": "call_a", "name": "weather",
                        "arguments": "", "status": "in_progress"}})
    );
    assert_eq!(events[10].1["delta"], "\"Paris\"}");
    assert_eq!(events[10].1["item_id"], "fc_s_1");
    assert_eq!(events[12].1["output_index"], 2);
    assert_eq!(events[13].1["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(events[13].1["name"], "weather");
    assert_eq!(events[14].1["item"]["status"], "completed");
    assert_eq!(events[15].1["arguments"], "{}");
    let output = &events[17].1["response"]["output"];
    assert_eq!(output.as_array().unwrap().len(), 3);
    assert_eq!(output[1]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(output[2]["call_id"], "call_b");
}

#[test]
fn chat_length_finish_ends_incomplete() {
    let upstream = [
        sse(None, &chunk(json!({"content": "Once"}), None)),
        sse(None, &chunk(json!({}), Some("length"))),
        sse(None, "[DONE]"),
    ];
    let events = run(&mut chat_stream(), &upstream);
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");
}

#[test]
fn chat_stream_without_done_still_completes() {
    let upstream = [sse(None, &chunk(json!({"content": "Hi"}), Some("stop")))];
    let mut mapper = chat_stream();
    let events = run(&mut mapper, &upstream);
    assert_eq!(events.last().unwrap().0, "response.completed");
    assert!(mapper.completed());
    assert_eq!(mapper.usage(), None);
}

#[test]
fn chat_error_chunk_fails_the_response() {
    let upstream = [
        sse(None, &chunk(json!({"content": "Hi"}), None)),
        sse(
            None,
            r#"{"error":{"message":"model overloaded","type":"server_error","code":null}}"#,
        ),
        sse(None, &chunk(json!({"content": " more"}), None)),
    ];
    let mut mapper = chat_stream();
    let events = run(&mut mapper, &upstream);
    let tail: Vec<&str> = names(&events)[events.len() - 2..].to_vec();
    assert_eq!(tail, ["error", "response.failed"]);
    let error = &events[events.len() - 2].1;
    assert_eq!(error["code"], "server_error");
    assert_eq!(error["message"], "model overloaded");
    let failed = &events[events.len() - 1].1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        json!({"code": "server_error", "message": "model overloaded"})
    );
    assert_eq!(failed["output"][0]["content"][0]["text"], "Hi");
    assert!(mapper.upstream_failed());
    assert!(!mapper.completed());
}

#[test]
fn a_failure_noticed_by_the_relay_continues_the_numbering() {
    let mut mapper = chat_stream();
    let mut out = bytes::BytesMut::new();
    for event in [
        sse(None, &chunk(json!({"content": "Hi"}), None)),
        sse(None, &chunk(json!({"content": " there"}), None)),
    ] {
        mapper.map(&event, &mut out);
    }
    out.extend_from_slice(&mapper.error_event(
        "upstream_stream_stalled",
        "the upstream stopped sending in the middle of the stream",
    ));
    let events = parse_events(&out);
    super::assert_sequence(&events);
    assert_eq!(
        names(&events)[events.len() - 2..],
        ["error", "response.failed"]
    );
    assert_eq!(
        events[events.len() - 2].1["code"],
        "upstream_stream_stalled"
    );
}

#[test]
fn a_failure_before_any_event_still_starts_the_response() {
    let mapper = chat_stream();
    let events = parse_events(&mapper.error_event("upstream_stream_error", "broken"));
    super::assert_sequence(&events);
    assert_eq!(
        names(&events),
        ["response.created", "error", "response.failed"]
    );
    assert_eq!(events[0].1["response"]["id"], events[2].1["response"]["id"]);
}

#[test]
fn an_empty_chat_stream_fails() {
    let mut mapper = chat_stream();
    let events = run(&mut mapper, &[sse(None, "[DONE]")]);
    assert_eq!(
        names(&events),
        ["response.created", "error", "response.failed"]
    );
    assert!(mapper.upstream_failed());
}

// === Anthropic ===

fn messages_stream() -> MessagesToResponsesStream {
    let request = parse_request(json!({"model": "claude", "input": "hi", "stream": true}));
    MessagesToResponsesStream::new("resp_m".into(), echo(&request), 1_700_000_000)
}

fn event(data: Value) -> crate::translate::responses::SseEvent {
    let name = data["type"].as_str().unwrap().to_owned();
    sse(Some(&name), &data.to_string())
}

fn message_start() -> crate::translate::responses::SseEvent {
    event(
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
        "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1,
        "cache_read_input_tokens": 30, "cache_creation_input_tokens": 0}}}),
    )
}

#[test]
fn anthropic_stream_with_thinking_text_and_tools() {
    let upstream = [
        message_start(),
        event(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Weather "}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "needed."}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
        ),
        event(json!({"type": "content_block_stop", "index": 0})),
        event(
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        ),
        event(json!({"type": "ping"})),
        event(
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking"}}),
        ),
        event(json!({"type": "content_block_stop", "index": 1})),
        event(
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}}),
        ),
        event(json!({"type": "content_block_stop", "index": 2})),
        event(
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}}),
        ),
        event(json!({"type": "content_block_stop", "index": 3})),
        event(
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
        ),
        event(json!({"type": "message_stop"})),
    ];
    let mut mapper = messages_stream();
    let events = run(&mut mapper, &upstream);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(events[6].1["text"], "Weather needed.");
    assert_eq!(events[8].1["item"]["type"], "reasoning");
    assert_eq!(events[11].1["output_index"], 1);
    assert_eq!(events[17].1["arguments"], "{\"city\": \"Paris\"}");
    assert_eq!(events[20].1["delta"], "{}");
    let response = &events[23].1["response"];
    assert_eq!(response["model"], "claude-sonnet-4-5");
    assert_eq!(response["output"][3]["call_id"], "toolu_2");
    assert_eq!(
        response["usage"],
        json!({"input_tokens": 42, "input_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 0},
               "output_tokens": 42, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 84})
    );
    let usage = mapper.usage().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (42, 42));
    assert!(mapper.completed());
}

#[test]
fn anthropic_consecutive_text_blocks_share_one_message() {
    let text_block = |index: u32, text: &str| {
        [
            event(
                json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            ),
            event(json!({"type": "content_block_stop", "index": index})),
        ]
    };
    let mut upstream = vec![message_start()];
    upstream.extend(text_block(0, "The answer"));
    upstream.extend(text_block(1, " is 42."));
    upstream.push(event(json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 5}})));
    upstream.push(event(json!({"type": "message_stop"})));
    let events = run(&mut messages_stream(), &upstream);
    let added: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "response.content_part.added")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(added.len(), 2);
    assert_eq!(
        (
            added[0]["output_index"].clone(),
            added[0]["content_index"].clone()
        ),
        (json!(0), json!(0))
    );
    assert_eq!(
        (
            added[1]["output_index"].clone(),
            added[1]["content_index"].clone()
        ),
        (json!(0), json!(1))
    );
    let last = &events.last().unwrap().1["response"];
    assert_eq!(last["status"], "incomplete");
    assert_eq!(last["output"][0]["status"], "incomplete");
    assert_eq!(last["output"][0]["content"][1]["text"], " is 42.");
}

#[test]
fn anthropic_error_event_fails_the_response() {
    let upstream = [
        message_start(),
        event(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Par"}}),
        ),
        event(
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "is"}}),
        ),
    ];
    let mut mapper = messages_stream();
    let events = run(&mut mapper, &upstream);
    assert_eq!(
        names(&events)[events.len() - 2..],
        ["error", "response.failed"]
    );
    assert_eq!(events[events.len() - 2].1["code"], "overloaded_error");
    assert_eq!(
        events.last().unwrap().1["response"]["output"][0]["content"][0]["text"],
        "Par"
    );
    assert!(mapper.upstream_failed());
    assert!(!mapper.completed());
    assert_eq!(mapper.usage().unwrap().prompt_tokens, 42);
}
