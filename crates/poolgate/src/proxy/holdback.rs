//! Holding back a stream's content-free leading events, so that a stream that dies after its
//! role chunk (OpenAI) or its `message_start` (Anthropic) can still fail over to the next
//! backend (and a Responses API stream after its `response.created`). A retry is only possible while no byte has reached the client; these first events say
//! nothing yet (a role, an empty block, a ping), so they wait — within what is left of the
//! backend's time-to-first-byte budget — until the first event that carries something: content,
//! a tool call, a finish or stop reason (an empty answer is an answer), or anything this module
//! does not recognise. Then everything held goes out at once and the relay starts. A stream that
//! ends, breaks, reports an error, or falls silent for the stream idle timeout before that is a
//! retryable failure; the held events are dropped. When the budget runs out while events are
//! held, they are released as they are (a slow model is not a failed one): from then on nothing
//! changes compared with relaying at once.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::classify::{shorten_reason, Failure};
use crate::sse::{SseEvent, SseFramer};
use crate::translate::Wire;
use crate::upstream::UpstreamBody;

/// The most poolgate holds back (beyond it, the held events are released).
pub const MAX_HELD_BYTES: usize = 64 * 1024;

/// The event format of the upstream's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeadFormat {
    /// OpenAI chunks (Chat Completions, Completions).
    Chat,
    /// Anthropic Messages events.
    Messages,
    /// Responses API events (`response.created`, …) from a backend with the Responses API.
    Responses,
}

impl From<Wire> for LeadFormat {
    fn from(wire: Wire) -> Self {
        match wire {
            Wire::OpenAi => LeadFormat::Chat,
            Wire::Anthropic => LeadFormat::Messages,
        }
    }
}

/// What a leading event means for the hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Lead {
    /// Content-free: keep holding.
    Hold,
    /// It carries something (or is unknown): release everything and relay.
    Release,
    /// The upstream reported an error before any content: fail over.
    Fail(String),
}

/// The chunks read before the relay starts, ready for it.
pub struct Held {
    pub chunks: VecDeque<Bytes>,
}

/// Reads the stream's leading events until one carries content (or the budget is spent, or the
/// hold is full); Err when the stream fails before that.
pub async fn hold_leading_events(
    upstream: &mut UpstreamBody,
    format: LeadFormat,
    budget: Duration,
    idle_timeout: Duration,
) -> Result<Held, Failure> {
    let deadline = Instant::now() + budget;
    let mut chunks = VecDeque::new();
    let mut held_bytes = 0;
    let mut framer = SseFramer::with_max_event_bytes(MAX_HELD_BYTES);
    let mut events = Vec::new();
    loop {
        // Silence longer than the idle timeout after a held event is a stall.
        let stalled_at = Instant::now() + idle_timeout;
        let wait_until = if chunks.is_empty() {
            deadline
        } else {
            deadline.min(stalled_at)
        };
        let chunk = match tokio::time::timeout_at(wait_until, upstream.next()).await {
            // Out of budget: a stream that sent nothing timed out; one that sent only
            // content-free events is slow, not failed — relay what it sent. Silent for the idle
            // timeout before that: stalled, worth another backend.
            Err(_) if chunks.is_empty() => return Err(Failure::Timeout),
            Err(_) if wait_until < deadline => {
                return Err(Failure::Server {
                    status: None,
                    detail: "the stream stalled before any content".into(),
                })
            }
            Err(_) => return Ok(Held { chunks }),
            Ok(None) => {
                let detail = if chunks.is_empty() {
                    "the stream ended before its first byte"
                } else {
                    "the stream ended before any content"
                };
                return Err(Failure::Server {
                    status: None,
                    detail: detail.into(),
                });
            }
            Ok(Some(Err(error))) => {
                return Err(Failure::transport(
                    "stream failed before any content",
                    &error,
                ))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        held_bytes += chunk.len();
        chunks.push_back(chunk.clone());
        if framer.push(chunk, &mut events).is_err() {
            // An event larger than the hold: the relay deals with it.
            return Ok(Held { chunks });
        }
        for event in events.drain(..) {
            match lead(format, &event) {
                Lead::Hold => {}
                Lead::Release => return Ok(Held { chunks }),
                Lead::Fail(detail) => {
                    return Err(Failure::Server {
                        status: None,
                        detail,
                    })
                }
            }
        }
        if held_bytes >= MAX_HELD_BYTES {
            return Ok(Held { chunks });
        }
    }
}

/// Whether a leading event (of a stream in `format`) may be held back.
pub fn lead(format: LeadFormat, event: &SseEvent) -> Lead {
    let Some(data) = event.data.as_deref() else {
        // Comments, keep-alives, blank lines.
        return Lead::Hold;
    };
    match format {
        LeadFormat::Chat => openai_lead(data),
        LeadFormat::Messages => anthropic_lead(event.event.as_deref(), data),
        LeadFormat::Responses => responses_lead(data),
    }
}

/// An OpenAI chunk is content-free when it reports no error and each choice has no finish
/// reason, no text, and nothing in its delta but the role (or empty / null values).
fn openai_lead(data: &str) -> Lead {
    if data.trim() == "[DONE]" {
        return Lead::Release;
    }
    // Not a chunk's shape (not an object, `choices` not an array, a choice not an object) or a
    // field named twice: relay it.
    let Ok(chunk) = serde_json::from_str::<ChatLead>(data) else {
        return Lead::Release;
    };
    if let Some(error) = &chunk.error {
        return Lead::Fail(format!(
            "the upstream sent an error event before any content: {}",
            short(error)
        ));
    }
    let Some(choices) = chunk.choices else {
        return Lead::Release;
    };
    let content_free = choices
        .iter()
        .all(|choice| choice.finish_reason.is_none() && !choice.text.0 && !choice.delta.0);
    if content_free {
        Lead::Hold
    } else {
        Lead::Release
    }
}

/// What the hold reads of an OpenAI chunk: every other field is skipped, nothing is built for
/// it (the first events of every stream come through here before its first byte goes out).
#[derive(Deserialize)]
struct ChatLead {
    /// Not null: the upstream reported an error (`null` reads as `None`).
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    choices: Option<Vec<ChoiceLead>>,
}

#[derive(Deserialize)]
struct ChoiceLead {
    /// Present and not null.
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
    #[serde(default)]
    text: CarriesSomething,
    #[serde(default)]
    delta: DeltaCarriesSomething,
}

/// The value is not null, not an empty string, array or object.
#[derive(Default)]
struct CarriesSomething(bool);

/// The value is an object with a field other than `role` that [`CarriesSomething`].
#[derive(Default)]
struct DeltaCarriesSomething(bool);

impl<'de> Deserialize<'de> for CarriesSomething {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Judge { delta: false })
            .map(CarriesSomething)
    }
}

impl<'de> Deserialize<'de> for DeltaCarriesSomething {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Judge { delta: true })
            .map(DeltaCarriesSomething)
    }
}

/// Reads one JSON value, whole, into a yes or no: [`CarriesSomething`], or with `delta`,
/// [`DeltaCarriesSomething`] (only an object can say yes).
struct Judge {
    delta: bool,
}

impl Judge {
    fn scalar<E>(&self, carries: bool) -> Result<bool, E> {
        Ok(carries && !self.delta)
    }
}

impl<'de> Visitor<'de> for Judge {
    type Value = bool;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        self.scalar(true)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        self.scalar(true)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        self.scalar(true)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        self.scalar(true)
    }

    fn visit_str<E>(self, text: &str) -> Result<bool, E> {
        self.scalar(!text.is_empty())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<bool, A::Error> {
        let mut any = false;
        while items.next_element::<IgnoredAny>()?.is_some() {
            any = true;
        }
        self.scalar(any)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<bool, A::Error> {
        let mut any = false;
        while let Some(IsRole(role)) = fields.next_key::<IsRole>()? {
            any |= if self.delta && role {
                fields.next_value::<IgnoredAny>()?;
                false
            } else if self.delta {
                fields.next_value::<CarriesSomething>()?.0
            } else {
                fields.next_value::<IgnoredAny>()?;
                true
            };
        }
        Ok(any)
    }
}

/// A field name, read as whether it is `role`.
struct IsRole(bool);

impl<'de> Deserialize<'de> for IsRole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = bool;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a field name")
            }
            fn visit_str<E>(self, name: &str) -> Result<bool, E> {
                Ok(name == "role")
            }
        }
        deserializer.deserialize_str(Name).map(IsRole)
    }
}

/// Not null, not an empty string, array or object (for the events read as a JSON tree).
fn carries_something(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content_block: Option<Map<String, Value>>,
    #[serde(default)]
    error: Option<Value>,
}

/// Anthropic's content-free events: `message_start`, `ping`, and the start of an empty text or
/// thinking block.
fn anthropic_lead(name: Option<&str>, data: &str) -> Lead {
    let Ok(event) = serde_json::from_str::<AnthropicEvent>(data) else {
        return Lead::Release;
    };
    match name.unwrap_or(event.kind.as_str()) {
        "message_start" | "ping" => Lead::Hold,
        "content_block_start" => {
            let empty = event.content_block.as_ref().is_some_and(|block| {
                let kind = block.get("type").and_then(Value::as_str);
                matches!(kind, Some("text" | "thinking"))
                    && block
                        .iter()
                        .filter(|(key, _)| key.as_str() != "type")
                        .all(|(_, value)| !carries_something(value))
            });
            if empty {
                Lead::Hold
            } else {
                Lead::Release
            }
        }
        "error" => Lead::Fail(format!(
            "the upstream sent an error event before any content: {}",
            event.error.as_ref().map_or_else(String::new, short)
        )),
        _ => Lead::Release,
    }
}

#[derive(Deserialize)]
struct ResponsesEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    item: Option<Map<String, Value>>,
    #[serde(default)]
    part: Option<Map<String, Value>>,
    #[serde(default)]
    response: Option<Map<String, Value>>,
    #[serde(default)]
    message: Option<String>,
}

/// The Responses API's content-free events: the response created, queued or in progress, and
/// an output item or content part added while still empty (a message or reasoning item with no
/// content yet, an empty text part). `error` and `response.failed` before content fail over.
fn responses_lead(data: &str) -> Lead {
    let Ok(event) = serde_json::from_str::<ResponsesEvent>(data) else {
        return Lead::Release;
    };
    let empty_but = |fields: &Map<String, Value>, kept: &[&str]| {
        fields
            .iter()
            .filter(|(key, _)| !kept.contains(&key.as_str()))
            .all(|(_, value)| !carries_something(value))
    };
    match event.kind.as_str() {
        "response.created" | "response.queued" | "response.in_progress" => Lead::Hold,
        "response.output_item.added" => {
            let empty = event.item.as_ref().is_some_and(|item| {
                let kind = item.get("type").and_then(Value::as_str);
                matches!(kind, Some("message" | "reasoning"))
                    && empty_but(item, &["type", "id", "role", "status"])
            });
            if empty {
                Lead::Hold
            } else {
                Lead::Release
            }
        }
        "response.content_part.added" => {
            let empty = event.part.as_ref().is_some_and(|part| {
                let kind = part.get("type").and_then(Value::as_str);
                matches!(kind, Some("output_text")) && empty_but(part, &["type"])
            });
            if empty {
                Lead::Hold
            } else {
                Lead::Release
            }
        }
        "error" => Lead::Fail(format!(
            "the upstream sent an error event before any content: {}",
            shorten_reason(&event.message.unwrap_or_default())
        )),
        "response.failed" => Lead::Fail(format!(
            "the upstream's response failed before any content: {}",
            event
                .response
                .as_ref()
                .and_then(|response| response.get("error"))
                .map_or_else(String::new, short)
        )),
        _ => Lead::Release,
    }
}

/// An upstream error, shortened for a log line and `last_error`.
fn short(value: &Value) -> String {
    match value.get("message").and_then(Value::as_str) {
        Some(message) => shorten_reason(message),
        None => shorten_reason(&value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            raw: Bytes::new(),
            event: name.map(str::to_owned),
            data: Some(data.to_owned()),
            id: None,
        }
    }

    #[test]
    fn openai_role_chunks_are_held_and_content_releases() {
        let held = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null}}]}"#,
            r#"{"choices":[],"usage":null}"#,
            r#"{"choices":[{"index":0,"text":""}]}"#,
            // Whatever else a chunk carries is skipped, read whole.
            r#"{"id":"c-1","created":1,"choices":[{"index":0,"logprobs":{"content":[{"t":[1,{"x":null}]}]},"delta":{"role":"assistant","content":null,"tool_calls":[],"audio":{}}}],"usage":{"prompt_tokens":3},"error":null}"#,
            // The role's name escaped is still the role; a delta that is no object says nothing.
            r#"{"choices":[{"delta":{"r\u006fle":"assistant"}}]}"#,
            r#"{"choices":[{"delta":"text","text":null}]}"#,
        ];
        for data in held {
            assert_eq!(
                lead(LeadFormat::Chat, &event(None, data)),
                Lead::Hold,
                "{data}"
            );
        }
        let released = [
            r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c"}]}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"text":"once"}]}"#,
            "[DONE]",
            "not json",
            r#"{"object":"something.else"}"#,
            r#"{"choices":{"0":{"delta":{}}}}"#,
            r#"{"choices":[1]}"#,
            r#"{"choices":[{"delta":{"content":""}}],"choices":[]}"#,
            r#"{"choices":[{"delta":{"role":"assistant","n":0}}]}"#,
            r#"{"choices":[{"delta":{"function_call":{"name":"f"}}}]}"#,
            r#"{"choices":[{"delta":{"audio":[{}]}}]}"#,
            r#"{"choices":[{"delta":{}},{"delta":{"content":"Hi"}}]}"#,
        ];
        for data in released {
            assert_eq!(
                lead(LeadFormat::Chat, &event(None, data)),
                Lead::Release,
                "{data}"
            );
        }
        let comment = SseEvent {
            data: None,
            ..event(None, "")
        };
        assert_eq!(lead(LeadFormat::Chat, &comment), Lead::Hold);
        assert!(matches!(
            lead(LeadFormat::Chat, &event(None, r#"{"error":{"message":"overloaded"}}"#)),
            Lead::Fail(detail) if detail.contains("overloaded")
        ));
    }

    #[test]
    fn anthropic_message_start_is_held_and_deltas_release() {
        let start = r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3}}}"#;
        assert_eq!(
            lead(LeadFormat::Messages, &event(Some("message_start"), start)),
            Lead::Hold
        );
        assert_eq!(
            lead(
                LeadFormat::Messages,
                &event(Some("ping"), r#"{"type":"ping"}"#)
            ),
            Lead::Hold
        );
        let empty_block =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        assert_eq!(
            lead(
                LeadFormat::Messages,
                &event(Some("content_block_start"), empty_block)
            ),
            Lead::Hold
        );
        let tool = r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#;
        assert_eq!(
            lead(
                LeadFormat::Messages,
                &event(Some("content_block_start"), tool)
            ),
            Lead::Release
        );
        let delta =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
        assert_eq!(
            lead(
                LeadFormat::Messages,
                &event(Some("content_block_delta"), delta)
            ),
            Lead::Release
        );
        let stop = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#;
        assert_eq!(
            lead(LeadFormat::Messages, &event(None, stop)),
            Lead::Release,
            "the type in the data counts when there is no event name"
        );
        let error =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            lead(LeadFormat::Messages, &event(Some("error"), error)),
            Lead::Fail(detail) if detail.contains("Overloaded")
        ));
    }

    #[test]
    fn responses_leading_events_are_held_and_text_releases() {
        let held = [
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","output":[],"error":null}}"#,
            r#"{"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1"}}"#,
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"message","id":"msg_1","status":"in_progress","role":"assistant","content":[]}}"#,
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[]}}"#,
            r#"{"type":"response.content_part.added","item_id":"msg_1","part":{"type":"output_text","text":"","annotations":[]}}"#,
        ];
        for data in held {
            assert_eq!(
                lead(LeadFormat::Responses, &event(None, data)),
                Lead::Hold,
                "{data}"
            );
        }
        let released = [
            r#"{"type":"response.output_text.delta","item_id":"msg_1","delta":"Hi"}"#,
            r#"{"type":"response.output_item.added","item":{"type":"function_call","name":"f","arguments":""}}"#,
            r#"{"type":"response.completed","response":{"id":"resp_1","output":[]}}"#,
            r#"{"type":"response.incomplete","response":{"id":"resp_1"}}"#,
            "not json",
        ];
        for data in released {
            assert_eq!(
                lead(LeadFormat::Responses, &event(None, data)),
                Lead::Release,
                "{data}"
            );
        }
        for data in [
            r#"{"type":"error","code":"server_error","message":"boom"}"#,
            r#"{"type":"response.failed","response":{"error":{"code":"server_error","message":"boom"}}}"#,
        ] {
            assert!(
                matches!(lead(LeadFormat::Responses, &event(None, data)), Lead::Fail(detail) if detail.contains("boom")),
                "{data}"
            );
        }
    }
}
