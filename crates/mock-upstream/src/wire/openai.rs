//! OpenAI shapes: chat completions, legacy completions, embeddings, models, errors.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::{json_bytes, sse_data, Meta};
use crate::body::SsePlan;
use crate::reply::count_tokens;

/// `prompt_tokens` reported by chat and legacy completions, whatever the prompt.
pub(crate) const PROMPT_TOKENS: u64 = 10;

const DONE: &[u8] = b"data: [DONE]\n\n";

#[derive(Clone, Copy, Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<CachedDetails>,
}

#[derive(Clone, Copy, Serialize)]
struct CachedDetails {
    cached_tokens: u64,
}

impl Usage {
    fn for_text(text: &str) -> Usage {
        let completion_tokens = count_tokens(text);
        Usage {
            prompt_tokens: PROMPT_TOKENS,
            completion_tokens,
            total_tokens: PROMPT_TOKENS + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    /// The reported figures if the mock was told to report some, else [`Usage::for_text`].
    fn of(meta: Meta<'_>, text: &str) -> Usage {
        match meta.usage {
            Some(usage) => Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                total_tokens: usage.prompt_tokens + usage.completion_tokens,
                prompt_tokens_details: Some(CachedDetails {
                    cached_tokens: usage.cached_tokens,
                }),
            },
            None => Usage::for_text(text),
        }
    }
}

/// `"usage"` on a stream chunk: absent without `include_usage`, else `null` until the last chunk.
type ChunkUsage = Option<Option<Usage>>;

fn chunk_usage(include_usage: bool) -> ChunkUsage {
    include_usage.then_some(None)
}

// === chat completions ===

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    finish_reason: &'static str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: ChunkUsage,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

fn chat_id(meta: Meta<'_>) -> String {
    format!("chatcmpl-mock-{}", meta.seq)
}

/// A `chat.completion` answering with `text`.
pub(crate) fn chat(meta: Meta<'_>, text: &str) -> Bytes {
    json_bytes(&ChatCompletion {
        id: &chat_id(meta),
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices: [ChatChoice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content: text,
            },
            finish_reason: "stop",
            logprobs: None,
        }],
        usage: Usage::of(meta, text),
    })
}

/// `chat.completion.chunk` events: the role chunk, one chunk per piece, the `finish_reason`
/// chunk, the usage chunk if `include_usage`, then `[DONE]`.
pub(crate) fn chat_stream(meta: Meta<'_>, pieces: &[String], include_usage: bool) -> SsePlan {
    let id = chat_id(meta);
    let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        sse_data(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: meta.created,
            model: meta.model,
            choices: &[ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: chunk_usage(include_usage),
        })
    };
    let mut events = Vec::with_capacity(pieces.len() + 4);
    events.push(chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    ));
    let content_start = events.len();
    for piece in pieces {
        events.push(chunk(
            Delta {
                role: None,
                content: Some(piece),
            },
            None,
        ));
    }
    let content = content_start..events.len();
    events.push(chunk(
        Delta {
            role: None,
            content: None,
        },
        Some("stop"),
    ));
    if include_usage {
        events.push(sse_data(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: meta.created,
            model: meta.model,
            choices: &[],
            usage: Some(Some(Usage::of(meta, &pieces.concat()))),
        }));
    }
    events.push(Bytes::from_static(DONE));
    SsePlan { events, content }
}

// === legacy completions ===

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [TextChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: ChunkUsage,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

fn completion_id(meta: Meta<'_>) -> String {
    format!("cmpl-mock-{}", meta.seq)
}

/// A `text_completion` answering with `text`.
pub(crate) fn completion(meta: Meta<'_>, text: &str) -> Bytes {
    json_bytes(&TextCompletion {
        id: &completion_id(meta),
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        choices: &[TextChoice {
            text,
            index: 0,
            logprobs: None,
            finish_reason: Some("stop"),
        }],
        usage: Some(Some(Usage::for_text(text))),
    })
}

/// `text_completion` events: one per piece, the `finish_reason` event, the usage event if
/// `include_usage`, then `[DONE]` (legacy completions have no role chunk).
pub(crate) fn completion_stream(meta: Meta<'_>, pieces: &[String], include_usage: bool) -> SsePlan {
    let id = completion_id(meta);
    let event = |text: &str, finish_reason: Option<&'static str>| {
        sse_data(&TextCompletion {
            id: &id,
            object: "text_completion",
            created: meta.created,
            model: meta.model,
            choices: &[TextChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason,
            }],
            usage: chunk_usage(include_usage),
        })
    };
    let mut events: Vec<Bytes> = pieces.iter().map(|p| event(p, None)).collect();
    let content = 0..events.len();
    events.push(event("", Some("stop")));
    if include_usage {
        events.push(sse_data(&TextCompletion {
            id: &id,
            object: "text_completion",
            created: meta.created,
            model: meta.model,
            choices: &[],
            usage: Some(Some(Usage::for_text(&pieces.concat()))),
        }));
    }
    events.push(Bytes::from_static(DONE));
    SsePlan { events, content }
}

// === embeddings ===

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: [f32; 8],
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// One 8-float embedding per input. `input` may be a string, an array of strings, an array of
/// token ids, or an array of token-id arrays. Tokens: words of each string, or the token ids.
/// Each vector is derived from a hash of its input, so equal inputs embed equally.
pub(crate) fn embeddings(model: &str, input: Option<&Value>) -> Bytes {
    let inputs: Vec<&Value> = match input {
        None | Some(Value::Null) => Vec::new(),
        // One input given as token ids.
        Some(ids @ Value::Array(items))
            if !items.is_empty() && items.iter().all(Value::is_number) =>
        {
            vec![ids]
        }
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
    };
    let mut tokens = 0;
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            tokens += match input {
                Value::String(text) => count_tokens(text),
                Value::Array(ids) => ids.len() as u64,
                _ => 0,
            };
            Embedding {
                object: "embedding",
                index,
                embedding: vector(input),
            }
        })
        .collect();
    json_bytes(&EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
}

/// 8 floats in [-1, 1] from an FNV-1a hash of the input's JSON text.
fn vector(input: &Value) -> [f32; 8] {
    let text = match input {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut out = [0.0; 8];
    for (k, slot) in out.iter_mut().enumerate() {
        let byte = (hash >> (k * 8)) & 0xff;
        *slot = byte as f32 / 127.5 - 1.0;
    }
    out
}

// === models ===

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: [Model<'a>; 1],
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// Created time of every listed model.
const MODEL_CREATED: u64 = 1_700_000_000;

fn model(id: &str) -> Model<'_> {
    Model {
        id,
        object: "model",
        created: MODEL_CREATED,
        owned_by: "mock-upstream",
    }
}

/// `GET /v1/models`: one model, `mock-model`.
pub(crate) fn models() -> Bytes {
    json_bytes(&ModelList {
        object: "list",
        data: [model("mock-model")],
    })
}

/// `GET /v1/models/{id}`: that model.
pub(crate) fn model_info(id: &str) -> Bytes {
    json_bytes(&model(id))
}

// === errors ===

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

/// `{"error":{"message","type","param","code"}}`, with `type`/`code` as OpenAI sends for `status`.
pub(crate) fn error(status: u16, message: &str) -> Bytes {
    let (kind, code) = match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("invalid_request_error", Some("permission_denied")),
        404 => ("invalid_request_error", Some("not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    json_bytes(&ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param: None,
            code,
        },
    })
}

/// An `invalid_request_error` naming the offending `param` and a `code`.
pub(crate) fn invalid_request(
    message: &str,
    param: Option<&'static str>,
    code: Option<&'static str>,
) -> Bytes {
    json_bytes(&ErrorBody {
        error: ErrorDetail {
            message,
            kind: "invalid_request_error",
            param,
            code,
        },
    })
}
