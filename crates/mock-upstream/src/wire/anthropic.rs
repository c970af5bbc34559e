//! Anthropic shapes: the Messages API (JSON and named SSE events), token counting, models, errors.

use bytes::Bytes;
use serde::Serialize;

use super::{json_bytes, sse_event, Meta};
use crate::body::SsePlan;
use crate::reply::count_tokens;

/// `input_tokens` reported for every request, whatever the prompt.
pub(crate) const INPUT_TOKENS: u64 = 10;

#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [TextBlock<'a>],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: Usage,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_creation_input_tokens: Option<u64>,
}

impl Usage {
    /// The input figures the mock was told to report (Anthropic counts cache reads and writes
    /// apart from `input_tokens`), else the default input; with `output_tokens`.
    fn of(meta: Meta<'_>, output_tokens: u64) -> Usage {
        match meta.usage {
            Some(usage) => Usage {
                input_tokens: usage
                    .prompt_tokens
                    .saturating_sub(usage.cached_tokens)
                    .saturating_sub(usage.cache_write_tokens),
                output_tokens,
                cache_read_input_tokens: Some(usage.cached_tokens),
                cache_creation_input_tokens: Some(usage.cache_write_tokens),
            },
            None => Usage {
                input_tokens: INPUT_TOKENS,
                output_tokens,
                cache_read_input_tokens: None,
                cache_creation_input_tokens: None,
            },
        }
    }
}

fn message_id(meta: Meta<'_>) -> String {
    format!("msg_mock_{}", meta.seq)
}

/// A `message` answering with `text`.
pub(crate) fn message(meta: Meta<'_>, text: &str) -> Bytes {
    json_bytes(&Message {
        id: &message_id(meta),
        kind: "message",
        role: "assistant",
        model: meta.model,
        content: &[TextBlock { kind: "text", text }],
        stop_reason: Some("end_turn"),
        stop_sequence: None,
        usage: Usage::of(
            meta,
            meta.usage
                .map_or_else(|| count_tokens(text), |usage| usage.completion_tokens),
        ),
    })
}

// === stream ===

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: Message<'a>,
}

#[derive(Serialize)]
struct ContentBlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: TextBlock<'a>,
}

#[derive(Serialize)]
struct ContentBlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: TextDelta<'a>,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct ContentBlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: OutputUsage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

/// `{"type": X}` (`ping`, `message_stop`).
#[derive(Serialize)]
struct Bare {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Named events as Anthropic sends them: `message_start` (empty content, `output_tokens: 1` as
/// the real API reports), `content_block_start`, `ping`, one `content_block_delta` per piece,
/// `content_block_stop`, `message_delta` (final `output_tokens`), `message_stop`.
pub(crate) fn message_stream(meta: Meta<'_>, pieces: &[String]) -> SsePlan {
    let id = message_id(meta);
    let mut events = Vec::with_capacity(pieces.len() + 6);
    events.push(sse_event(
        "message_start",
        &MessageStart {
            kind: "message_start",
            message: Message {
                id: &id,
                kind: "message",
                role: "assistant",
                model: meta.model,
                content: &[],
                stop_reason: None,
                stop_sequence: None,
                usage: Usage::of(meta, 1),
            },
        },
    ));
    events.push(sse_event(
        "content_block_start",
        &ContentBlockStart {
            kind: "content_block_start",
            index: 0,
            content_block: TextBlock {
                kind: "text",
                text: "",
            },
        },
    ));
    events.push(sse_event("ping", &Bare { kind: "ping" }));
    let content_start = events.len();
    for piece in pieces {
        events.push(sse_event(
            "content_block_delta",
            &ContentBlockDelta {
                kind: "content_block_delta",
                index: 0,
                delta: TextDelta {
                    kind: "text_delta",
                    text: piece,
                },
            },
        ));
    }
    let content = content_start..events.len();
    events.push(sse_event(
        "content_block_stop",
        &ContentBlockStop {
            kind: "content_block_stop",
            index: 0,
        },
    ));
    events.push(sse_event(
        "message_delta",
        &MessageDelta {
            kind: "message_delta",
            delta: StopDelta {
                stop_reason: "end_turn",
                stop_sequence: None,
            },
            usage: OutputUsage {
                output_tokens: meta.usage.map_or_else(
                    || count_tokens(&pieces.concat()),
                    |usage| usage.completion_tokens,
                ),
            },
        },
    ));
    events.push(sse_event(
        "message_stop",
        &Bare {
            kind: "message_stop",
        },
    ));
    SsePlan { events, content }
}

// === token counting, models ===

#[derive(Serialize)]
struct TokenCount {
    input_tokens: u64,
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens_reply() -> Bytes {
    json_bytes(&TokenCount {
        input_tokens: INPUT_TOKENS,
    })
}

#[derive(Serialize)]
struct ModelList<'a> {
    data: [Model<'a>; 1],
    has_more: bool,
    first_id: &'a str,
    last_id: &'a str,
}

#[derive(Serialize)]
struct Model<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    display_name: &'a str,
    created_at: &'static str,
}

fn model(id: &str) -> Model<'_> {
    Model {
        kind: "model",
        id,
        display_name: id,
        created_at: "2023-11-14T22:13:20Z",
    }
}

/// `GET /v1/models` with an `anthropic-version` header: one model, `mock-model`.
pub(crate) fn models() -> Bytes {
    json_bytes(&ModelList {
        data: [model("mock-model")],
        has_more: false,
        first_id: "mock-model",
        last_id: "mock-model",
    })
}

/// `GET /v1/models/{id}` with an `anthropic-version` header.
pub(crate) fn model_info(id: &str) -> Bytes {
    json_bytes(&model(id))
}

// === errors ===

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// `{"type":"error","error":{"type","message"}}`, with the error `type` Anthropic uses for `status`.
pub(crate) fn error(status: u16, message: &str) -> Bytes {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    json_bytes(&ErrorBody {
        kind: "error",
        error: ErrorDetail { kind, message },
    })
}
