//! Responses → Responses pass-through: bytes untouched, id, usage and numbering read.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::{names, parse_events, run, sse};
use crate::translate::responses::passthrough::ResponsesPassthrough;
use crate::translate::{Mapped, StreamMapper};

fn upstream_events() -> Vec<crate::translate::responses::SseEvent> {
    let created = json!({"type": "response.created", "sequence_number": 0, "response": {
        "id": "resp_up", "object": "response", "created_at": 1_700_000_123, "status": "in_progress",
        "model": "gpt-5-2025", "output": []}});
    let delta = json!({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1",
        "output_index": 0, "content_index": 0, "delta": "Hi"});
    let completed = json!({"type": "response.completed", "sequence_number": 2, "response": {
        "id": "resp_up", "object": "response", "status": "completed", "model": "gpt-5-2025", "output": [],
        "usage": {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 24}, "output_tokens": 2,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 32}}});
    [created, delta, completed]
        .iter()
        .map(|data| sse(data["type"].as_str(), &data.to_string()))
        .collect()
}

#[test]
fn passes_bytes_through_and_reads_id_and_usage() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = Arc::clone(&seen);
    let mut mapper = ResponsesPassthrough::new().with_response_id_hook(Box::new(move |id| {
        hook_seen.lock().unwrap().push(id.to_owned());
    }));
    let upstream = upstream_events();
    let mut out = bytes::BytesMut::new();
    for event in &upstream {
        assert!(matches!(mapper.map(event, &mut out), Mapped::Pass));
    }
    assert!(out.is_empty());
    assert_eq!(*seen.lock().unwrap(), ["resp_up"]);
    assert_eq!(mapper.response_id(), Some("resp_up"));
    let usage = mapper.usage().unwrap();
    assert_eq!((usage.prompt_tokens, usage.total_tokens), (30, 32));
    assert!(mapper.completed());
    assert!(!mapper.upstream_failed());
    // Unchanged bytes reach the client.
    let events = run(&mut ResponsesPassthrough::new(), &upstream);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.output_text.delta",
            "response.completed"
        ]
    );
}

#[test]
fn reads_events_without_an_event_name() {
    let mut mapper = ResponsesPassthrough::new();
    let mut out = bytes::BytesMut::new();
    for event in upstream_events() {
        let unnamed = sse(None, event.data.as_deref().unwrap());
        mapper.map(&unnamed, &mut out);
    }
    assert_eq!(mapper.response_id(), Some("resp_up"));
    assert!(mapper.completed());
}

#[test]
fn failure_events_continue_the_upstream_numbering() {
    let mut mapper = ResponsesPassthrough::new();
    let mut out = bytes::BytesMut::new();
    for event in &upstream_events()[..2] {
        mapper.map(event, &mut out);
    }
    let events = parse_events(&mapper.error_event("upstream_stream_error", "broken"));
    assert_eq!(names(&events), ["error", "response.failed"]);
    assert_eq!(events[0].1["sequence_number"], 2);
    assert_eq!(events[1].1["sequence_number"], 3);
    let response = &events[1].1["response"];
    assert_eq!(response["id"], "resp_up");
    assert_eq!(response["model"], "gpt-5-2025");
    assert_eq!(response["created_at"], 1_700_000_123);
    assert_eq!(response["status"], "failed");
    assert!(!mapper.completed());
}

#[test]
fn upstream_failures_are_noticed() {
    for data in [
        json!({"type": "error", "sequence_number": 3, "code": "server_error", "message": "x", "param": null}),
        json!({"type": "response.failed", "sequence_number": 3, "response": {"id": "resp_up", "status": "failed"}}),
    ] {
        let mut mapper = ResponsesPassthrough::new();
        mapper.map(
            &sse(data["type"].as_str(), &data.to_string()),
            &mut bytes::BytesMut::new(),
        );
        assert!(mapper.upstream_failed(), "{data}");
    }
}
