//! OpenAI Responses API shapes: the Response object (JSON), its typed SSE events, the deleted
//! object, and the errors for unknown ids.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::openai::invalid_request;
use super::{json_bytes, sse_event, Meta};
use crate::body::SsePlan;
use crate::reply::count_tokens;

/// `input_tokens` reported for every request, whatever the prompt.
pub(crate) const INPUT_TOKENS: u64 = 10;
/// Of which this many are `cached_tokens` when the mock saw the same prompt before.
pub(crate) const CACHED_TOKENS: u64 = 8;

/// What a response object is built from.
#[derive(Clone, Debug)]
pub(crate) struct ResponseMeta<'a> {
    pub(crate) meta: Meta<'a>,
    /// `resp_…`, unique across mock instances.
    pub(crate) id: &'a str,
    pub(crate) previous_response_id: Option<&'a str>,
    pub(crate) store: bool,
    pub(crate) background: bool,
    pub(crate) cached_tokens: u64,
}

#[derive(Clone, Serialize)]
pub(crate) struct ResponseObject {
    pub(crate) id: String,
    object: &'static str,
    created_at: u64,
    pub(crate) status: &'static str,
    error: Option<()>,
    incomplete_details: Option<()>,
    instructions: Option<()>,
    max_output_tokens: Option<()>,
    model: String,
    output: Vec<OutputMessage>,
    parallel_tool_calls: bool,
    previous_response_id: Option<String>,
    store: bool,
    pub(crate) background: bool,
    temperature: Option<()>,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: Option<()>,
    usage: Option<Usage>,
    metadata: Value,
}

#[derive(Clone, Serialize)]
struct OutputMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    role: &'static str,
    status: &'static str,
    content: Vec<OutputText>,
}

#[derive(Clone, Serialize)]
struct OutputText {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
    annotations: [(); 0],
    logprobs: [(); 0],
}

#[derive(Clone, Copy, Serialize)]
struct Usage {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Clone, Copy, Serialize)]
struct InputDetails {
    cached_tokens: u64,
    cache_write_tokens: u64,
}

#[derive(Clone, Copy, Serialize)]
struct OutputDetails {
    reasoning_tokens: u64,
}

fn text_part(text: &str) -> OutputText {
    OutputText {
        kind: "output_text",
        text: text.to_owned(),
        annotations: [],
        logprobs: [],
    }
}

fn message(id: &str, status: &'static str, text: Option<&str>) -> OutputMessage {
    OutputMessage {
        kind: "message",
        id: id.to_owned(),
        role: "assistant",
        status,
        content: text.map(text_part).into_iter().collect(),
    }
}

fn message_id(id: &str) -> String {
    format!("msg_{}", id.strip_prefix("resp_").unwrap_or(id))
}

impl ResponseObject {
    /// The response answering with `text`: completed, or (for `background`) queued with no
    /// output yet.
    pub(crate) fn new(meta: &ResponseMeta<'_>, text: &str) -> ResponseObject {
        let output_tokens = count_tokens(text);
        let done = !meta.background;
        ResponseObject {
            id: meta.id.to_owned(),
            object: "response",
            created_at: meta.meta.created,
            status: if done { "completed" } else { "queued" },
            error: None,
            incomplete_details: None,
            instructions: None,
            max_output_tokens: None,
            model: meta.meta.model.to_owned(),
            output: if done {
                vec![message(&message_id(meta.id), "completed", Some(text))]
            } else {
                Vec::new()
            },
            parallel_tool_calls: true,
            previous_response_id: meta.previous_response_id.map(str::to_owned),
            store: meta.store,
            background: meta.background,
            temperature: None,
            tool_choice: "auto",
            tools: [],
            top_p: None,
            usage: done.then_some(Usage {
                input_tokens: INPUT_TOKENS,
                input_tokens_details: InputDetails {
                    cached_tokens: meta.cached_tokens,
                    cache_write_tokens: 0,
                },
                output_tokens,
                output_tokens_details: OutputDetails {
                    reasoning_tokens: 0,
                },
                total_tokens: INPUT_TOKENS + output_tokens,
            }),
            metadata: Value::Object(serde_json::Map::new()),
        }
    }

    pub(crate) fn cancel(&mut self) {
        self.status = "cancelled";
    }

    pub(crate) fn to_bytes(&self) -> Bytes {
        json_bytes(self)
    }
}

// === stream ===

#[derive(Serialize)]
struct Lifecycle<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    response: &'a ResponseObject,
}

#[derive(Serialize)]
struct ItemEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    output_index: u32,
    item: &'a OutputMessage,
}

#[derive(Serialize)]
struct PartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: &'a OutputText,
}

#[derive(Serialize)]
struct TextEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    logprobs: [(); 0],
}

/// The events of a streamed response, numbered from 0, each with its `event:` name:
/// `response.created`, `response.in_progress`, `response.output_item.added`,
/// `response.content_part.added`, one `response.output_text.delta` per piece,
/// `response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
/// `response.completed` (with the whole output and usage).
pub(crate) fn response_stream(done: &ResponseObject, pieces: &[String]) -> SsePlan {
    let text = pieces.concat();
    let item_id = message_id(&done.id);
    let mut start = done.clone();
    start.status = "in_progress";
    start.output = Vec::new();
    start.usage = None;
    let mut seq = 0..;
    let mut next = || seq.next().unwrap_or_default();
    let mut events = Vec::with_capacity(pieces.len() + 8);
    for kind in ["response.created", "response.in_progress"] {
        let event = Lifecycle {
            kind,
            sequence_number: next(),
            response: &start,
        };
        events.push(sse_event(kind, &event));
    }
    let item = |status, text| message(&item_id, status, text);
    let added = ItemEvent {
        kind: "response.output_item.added",
        sequence_number: next(),
        output_index: 0,
        item: &item("in_progress", None),
    };
    events.push(sse_event(added.kind, &added));
    let empty = text_part("");
    let full = text_part(&text);
    let part_added = PartEvent {
        kind: "response.content_part.added",
        sequence_number: next(),
        item_id: &item_id,
        output_index: 0,
        content_index: 0,
        part: &empty,
    };
    events.push(sse_event(part_added.kind, &part_added));
    let content_start = events.len();
    for piece in pieces {
        let delta = TextEvent {
            kind: "response.output_text.delta",
            sequence_number: next(),
            item_id: &item_id,
            output_index: 0,
            content_index: 0,
            delta: Some(piece),
            text: None,
            logprobs: [],
        };
        events.push(sse_event(delta.kind, &delta));
    }
    let content = content_start..events.len();
    let text_done = TextEvent {
        kind: "response.output_text.done",
        sequence_number: next(),
        item_id: &item_id,
        output_index: 0,
        content_index: 0,
        delta: None,
        text: Some(&text),
        logprobs: [],
    };
    events.push(sse_event(text_done.kind, &text_done));
    let part_done = PartEvent {
        kind: "response.content_part.done",
        sequence_number: next(),
        item_id: &item_id,
        output_index: 0,
        content_index: 0,
        part: &full,
    };
    events.push(sse_event(part_done.kind, &part_done));
    let item_done = ItemEvent {
        kind: "response.output_item.done",
        sequence_number: next(),
        output_index: 0,
        item: &item("completed", Some(&text)),
    };
    events.push(sse_event(item_done.kind, &item_done));
    let completed = Lifecycle {
        kind: "response.completed",
        sequence_number: next(),
        response: done,
    };
    events.push(sse_event(completed.kind, &completed));
    SsePlan { events, content }
}

// === deletion and errors ===

#[derive(Serialize)]
struct Deleted<'a> {
    id: &'a str,
    object: &'static str,
    deleted: bool,
}

/// `DELETE /v1/responses/{id}`.
pub(crate) fn deleted(id: &str) -> Bytes {
    json_bytes(&Deleted {
        id,
        object: "response.deleted",
        deleted: true,
    })
}

/// 404 for a response id this mock did not make (or deleted, or was not asked to store).
pub(crate) fn not_found(id: &str) -> Bytes {
    invalid_request(&format!("Response with id '{id}' not found."), None, None)
}

/// 404 for a `previous_response_id` this mock did not make: what OpenAI answers when a
/// follow-up reaches another key.
pub(crate) fn previous_not_found(id: &str) -> Bytes {
    invalid_request(
        &format!("Previous response with id '{id}' not found."),
        Some("previous_response_id"),
        Some("previous_response_not_found"),
    )
}

/// 400 for cancelling a response that was not created with `background: true`.
pub(crate) fn not_cancellable() -> Bytes {
    invalid_request(
        "Only responses created with background=true can be cancelled.",
        None,
        None,
    )
}
