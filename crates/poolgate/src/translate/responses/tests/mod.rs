//! Tests of the Responses translations: field by field for requests and JSON answers, whole
//! event sequences for streams.

mod passthrough;
mod request;
mod response;
mod stream;

use bytes::BytesMut;
use serde_json::Value;

use super::{encode_event, SseEvent};
use crate::providers::responses::request::ResponsesRequest;
use crate::translate::{Mapped, StreamMapper};

fn parse_request(value: Value) -> ResponsesRequest {
    serde_json::from_value(value).unwrap()
}

/// One upstream SSE event.
fn sse(name: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        raw: encode_event(name, data),
        event: name.map(str::to_owned),
        data: Some(data.to_owned()),
        id: None,
    }
}

/// The events poolgate wrote: `(event name, data)`; asserts that each name is its data's
/// `type`.
fn parse_events(bytes: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.split_terminator("\n\n")
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(d).unwrap());
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            let (name, data) = (name.unwrap(), data.unwrap());
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

/// Feeds upstream events one by one, then the clean end; returns what the client got, and
/// asserts the sequence numbers count 0, 1, 2… without a gap.
fn run(mapper: &mut dyn StreamMapper, upstream: &[SseEvent]) -> Vec<(String, Value)> {
    let mut out = BytesMut::new();
    for event in upstream {
        match mapper.map(event, &mut out) {
            Mapped::Pass => out.extend_from_slice(&event.raw),
            Mapped::Drop | Mapped::Replaced => {}
        }
    }
    mapper.finish(&mut out);
    let events = parse_events(&out);
    assert_sequence(&events);
    events
}

fn assert_sequence(events: &[(String, Value)]) {
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i, "event {i} ({name})");
    }
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}
