//! Upstream wire formats. Each provider file turns the client's request into the upstream's
//! request for one backend and reads token usage from the answer; [`openai`] is the
//! OpenAI-compatible format (also what clients speak to poolgate).

pub mod anthropic;
pub mod openai;
pub mod openai_chat;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::domain::InvalidRequest;

/// What can go wrong building an upstream request. The client's own mistakes are
/// [`InvalidRequest`]s; the rest are poolgate's (500, the detail logged).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    InvalidRequest(#[from] InvalidRequest),
    /// The backend's stored key cannot be sent as an HTTP header value.
    #[error("the upstream key is not a valid header value")]
    InvalidKey,
    #[error("encoding the upstream body: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The two fields every request format is routed by: `model` (a non-empty string) and `stream`
/// (a boolean, absent or null = false).
pub fn model_and_stream(
    model: Option<Value>,
    stream: Option<Value>,
) -> Result<(String, bool), InvalidRequest> {
    let model = match model {
        Some(Value::String(model)) if !model.is_empty() => model,
        Some(Value::String(_)) | None => {
            return Err(InvalidRequest::param(
                "you must provide a `model` parameter",
                "model",
                "missing_required_parameter",
            ))
        }
        Some(_) => {
            return Err(InvalidRequest::param(
                "`model` must be a string",
                "model",
                "invalid_type",
            ))
        }
    };
    let stream = match stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => stream,
        Some(_) => {
            return Err(InvalidRequest::param(
                "`stream` must be a boolean",
                "stream",
                "invalid_type",
            ))
        }
    };
    Ok((model, stream))
}

/// The client-facing endpoints poolgate proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API (`/v1/messages`).
    Messages,
}

impl Endpoint {
    /// The name used in usage records.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
        }
    }

    /// The route clients call (`http.route` in traces).
    pub fn client_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Messages => "/v1/messages",
        }
    }

    /// Path below an OpenAI-compatible base URL.
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Messages => "/chat/completions",
        }
    }

    /// Whether a backend of this API kind can serve the endpoint (with translation if needed).
    pub fn served_by(self, api: crate::domain::ApiKind) -> bool {
        match self {
            Endpoint::ChatCompletions | Endpoint::Messages => true,
            Endpoint::Completions | Endpoint::Embeddings => api == crate::domain::ApiKind::Openai,
        }
    }

    /// Whether the endpoint can answer with an SSE stream.
    pub fn can_stream(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }
}

/// Token counts reported by an upstream (OpenAI names; Anthropic's are mapped onto them). Also the
/// `usage` object of OpenAI's chat completions and chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TokenUsage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

/// The model an answer says answered: `model` of a JSON answer (OpenAI and Anthropic alike), or
/// of the first event in a stream's first bytes (`model` of an OpenAI chunk, `message.model` of
/// Anthropic's `message_start`). `None` when there is none to read.
pub fn answered_model(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Answered {
        model: Option<String>,
        message: Option<AnsweredMessage>,
    }
    #[derive(Deserialize)]
    struct AnsweredMessage {
        model: Option<String>,
    }
    let read = |json: &[u8]| {
        let answered: Answered = serde_json::from_slice(json).ok()?;
        answered
            .model
            .or_else(|| answered.message.and_then(|message| message.model))
    };
    if body.trim_ascii_start().starts_with(b"{") {
        return read(body);
    }
    body.split(|&byte| byte == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .find_map(|data| read(data.trim_ascii()))
}

/// One request ready to send upstream.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answering_model_is_read_from_answers_and_first_events() {
        let chat =
            br#"{"id":"c1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[]}"#;
        assert_eq!(answered_model(chat).as_deref(), Some("gpt-4o-2024-08-06"));
        let message = br#"{"id":"m1","type":"message","model":"claude-sonnet-4","content":[]}"#;
        assert_eq!(answered_model(message).as_deref(), Some("claude-sonnet-4"));
        let chunk = b"data: {\"id\":\"c1\",\"model\":\"up-gpt\",\"choices\":[]}\n\n";
        assert_eq!(answered_model(chunk).as_deref(), Some("up-gpt"));
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\"}}\n\n";
        assert_eq!(answered_model(start).as_deref(), Some("claude-x"));
        assert_eq!(answered_model(b"data: [DONE]\n\n"), None);
        assert_eq!(answered_model(b"not json"), None);
    }
}
