//! Translation between what the client speaks and what the backend speaks. Same format: pass
//! through (only the model id changes; streams are forwarded byte for byte). Different formats:
//! typed structs in, typed structs out — [`chat_to_messages`] serves OpenAI clients from Anthropic
//! backends, [`messages_to_chat`] serves Anthropic clients from OpenAI-compatible backends. A
//! third provider is one more pair of modules.
//!
//! Streams go through a [`StreamMapper`]: one upstream SSE event in, zero or more client events out.

pub mod chat_to_messages;
pub mod messages_to_chat;
pub mod responses;

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use serde::Deserialize;

use crate::domain::InvalidRequest;
use crate::providers::anthropic::{self, StreamEvent};
use crate::providers::{openai, TokenUsage};
use crate::sse::{encode_event, SseEvent};

/// What can go wrong translating between formats.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The client's request uses something the backend's format cannot express (400).
    #[error(transparent)]
    Unsupported(InvalidRequest),
    /// The backend's answer is not what its API promises: a backend fault, worth another
    /// candidate.
    #[error("unexpected {what}: {source}")]
    UnexpectedAnswer {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("encoding the translated body: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The wire formats poolgate speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

/// What a mapper did with one upstream event.
pub enum Mapped {
    /// Forward the upstream bytes unchanged.
    Pass,
    /// Forward nothing.
    Drop,
    /// Forward what was appended to `out` instead.
    Replaced,
}

/// Maps a stream event by event, reading usage on the way.
pub trait StreamMapper: Send {
    fn map(&mut self, event: &SseEvent, out: &mut BytesMut) -> Mapped;
    /// At a clean end of the upstream stream: anything still owed to the client.
    fn finish(&mut self, _out: &mut BytesMut) {}
    fn usage(&self) -> Option<TokenUsage>;
    /// The usage read so far is the upstream's final figure. Anthropic streams report the input
    /// in `message_start` and the output only in `message_delta`: until that, their usage is
    /// partial (a stream cut then has its output estimated).
    fn usage_final(&self) -> bool {
        self.usage().is_some()
    }
    /// The upstream reported an error inside the stream.
    fn upstream_failed(&self) -> bool {
        false
    }
    /// The final event (`[DONE]`, `message_stop`) went to the client: the answer is complete
    /// even if the client hangs up before the upstream closes its body.
    fn completed(&self) -> bool;
    /// An error event in the client's format.
    fn error_event(&self, code: &str, message: &str) -> Bytes;
}

/// An OpenAI-format error event (`data: {"error": …}`), what the OpenAI SDKs raise on.
pub fn openai_error_event(code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {"message": message, "type": "upstream_error", "param": null, "code": code}
    });
    encode_event(None, &body.to_string())
}

/// An Anthropic-format error event (`event: error`).
pub fn anthropic_error_event(kind: &str, message: &str) -> Bytes {
    let body = anthropic::ErrorResponse::new(kind, message);
    encode_event(
        Some("error"),
        &serde_json::to_string(&body).unwrap_or_default(),
    )
}

/// OpenAI client, OpenAI backend: pass everything through, read usage, and drop the usage-only
/// chunk when poolgate (not the client) asked for it.
pub struct OpenAiPassthrough {
    pub strip_usage_chunk: bool,
    usage: Option<TokenUsage>,
    done: bool,
}

impl OpenAiPassthrough {
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            strip_usage_chunk,
            usage: None,
            done: false,
        }
    }
}

/// What `include_usage` adds to every chunk; removed again when the client did not ask for it
/// (a SIMD substring search set up once).
static NULL_USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b",\"usage\":null"));

impl StreamMapper for OpenAiPassthrough {
    fn map(&mut self, event: &SseEvent, out: &mut BytesMut) -> Mapped {
        let Some(data) = event.data.as_deref() else {
            return Mapped::Pass;
        };
        if event.is_done() {
            self.done = true;
            return Mapped::Pass;
        }
        if let Some((usage, usage_only)) = openai::chunk_usage(data) {
            self.usage = Some(usage);
            if usage_only && self.strip_usage_chunk {
                return Mapped::Drop;
            }
        }
        if self.strip_usage_chunk {
            if let Some(at) = NULL_USAGE.find(&event.raw) {
                out.extend_from_slice(&event.raw[..at]);
                out.extend_from_slice(&event.raw[at + NULL_USAGE.needle().len()..]);
                return Mapped::Replaced;
            }
        }
        Mapped::Pass
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    fn completed(&self) -> bool {
        self.done
    }

    fn error_event(&self, code: &str, message: &str) -> Bytes {
        openai_error_event(code, message)
    }
}

/// Anthropic client, Anthropic backend: pass everything through, read usage and errors.
#[derive(Default)]
pub struct AnthropicPassthrough {
    usage: anthropic::Usage,
    seen_usage: bool,
    /// `message_delta` brought the final output count.
    final_usage: bool,
    failed: bool,
    done: bool,
}

#[derive(Deserialize)]
struct EventType<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

impl StreamMapper for AnthropicPassthrough {
    fn map(&mut self, event: &SseEvent, _out: &mut BytesMut) -> Mapped {
        let Some(data) = event.data.as_deref() else {
            return Mapped::Pass;
        };
        let kind = match event.event.as_deref() {
            Some(name) => name,
            None => match serde_json::from_str::<EventType<'_>>(data) {
                Ok(t) => t.kind,
                Err(_) => return Mapped::Pass,
            },
        };
        if kind == "message_stop" {
            self.done = true;
        }
        if matches!(kind, "message_start" | "message_delta" | "error") {
            match serde_json::from_str::<StreamEvent>(data) {
                Ok(StreamEvent::MessageStart { message }) => {
                    self.usage = message.usage;
                    self.seen_usage = true;
                }
                Ok(StreamEvent::MessageDelta {
                    usage: Some(usage), ..
                }) => {
                    merge_delta_usage(&mut self.usage, &usage);
                    self.seen_usage = true;
                    self.final_usage = true;
                }
                Ok(StreamEvent::Error { .. }) => self.failed = true,
                _ => {}
            }
        }
        Mapped::Pass
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.seen_usage.then(|| self.usage.token_usage())
    }

    fn usage_final(&self) -> bool {
        self.final_usage
    }

    fn upstream_failed(&self) -> bool {
        self.failed
    }

    fn completed(&self) -> bool {
        self.done
    }

    fn error_event(&self, _code: &str, message: &str) -> Bytes {
        anthropic_error_event("api_error", message)
    }
}

/// Folds a `message_delta` usage into the running usage (its counts are cumulative).
pub fn merge_delta_usage(usage: &mut anthropic::Usage, delta: &anthropic::DeltaUsage) {
    usage.output_tokens = delta.output_tokens;
    if let Some(input) = delta.input_tokens {
        usage.input_tokens = input;
    }
    if delta.cache_creation_input_tokens.is_some() {
        usage.cache_creation_input_tokens = delta.cache_creation_input_tokens;
    }
    if delta.cache_read_input_tokens.is_some() {
        usage.cache_read_input_tokens = delta.cache_read_input_tokens;
    }
}

/// Pulls `(type, message)` out of an error body of either format (for relaying a backend's 4xx
/// to a client that speaks the other format).
pub fn error_parts(body: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Any {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let parsed: Any = serde_json::from_slice(body).ok()?;
    Some((
        parsed.error.kind.unwrap_or_else(|| "api_error".to_owned()),
        parsed.error.message.unwrap_or_default(),
    ))
}

/// Re-shapes an upstream error body into the client's format.
pub fn convert_error_body(body: &[u8], status: u16, to: Wire) -> Bytes {
    let (kind, message) = error_parts(body).unwrap_or_else(|| {
        (
            "api_error".to_owned(),
            String::from_utf8_lossy(body).into_owned(),
        )
    });
    let value = match to {
        Wire::OpenAi => serde_json::json!({
            "error": {"message": message, "type": kind, "param": null, "code": null}
        }),
        Wire::Anthropic => {
            let kind = anthropic::error_type_for_status(status);
            serde_json::to_value(anthropic::ErrorResponse::new(kind, message)).unwrap_or_default()
        }
    };
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            raw: encode_event(name, data),
            event: name.map(str::to_owned),
            data: Some(data.to_owned()),
            id: None,
        }
    }

    #[test]
    fn openai_passthrough_strips_only_the_injected_usage_chunk() {
        let mut out = BytesMut::new();
        let mut strip = OpenAiPassthrough::new(true);
        let usage = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert!(matches!(
            strip.map(&event(None, usage), &mut out),
            Mapped::Drop
        ));
        assert_eq!(strip.usage().unwrap().total_tokens, 3);
        let mut keep = OpenAiPassthrough::new(false);
        assert!(matches!(
            keep.map(&event(None, usage), &mut out),
            Mapped::Pass
        ));
    }

    #[test]
    fn anthropic_passthrough_reads_usage_and_errors() {
        let mut out = BytesMut::new();
        let mut mapper = AnthropicPassthrough::default();
        mapper.map(&event(Some("message_start"), r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"c","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#), &mut out);
        mapper.map(&event(Some("message_delta"), r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":30}}"#), &mut out);
        let usage = mapper.usage().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (12, 30));
        assert!(!mapper.upstream_failed());
        mapper.map(
            &event(
                Some("error"),
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            &mut out,
        );
        assert!(mapper.upstream_failed());
    }

    #[test]
    fn error_bodies_convert_both_ways() {
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#;
        let openai: serde_json::Value =
            serde_json::from_slice(&convert_error_body(anthropic, 400, Wire::OpenAi)).unwrap();
        assert_eq!(openai["error"]["message"], "max_tokens: too big");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        let back: serde_json::Value = serde_json::from_slice(&convert_error_body(
            br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
            400,
            Wire::Anthropic,
        ))
        .unwrap();
        assert_eq!(back["type"], "error");
        assert_eq!(back["error"]["type"], "invalid_request_error");
        assert_eq!(back["error"]["message"], "bad");
    }
}
