//! Upstream wire formats. Each provider file turns the client's request into the upstream's
//! request for one backend and reads token usage from the answer; [`openai`] is the
//! OpenAI-compatible format (also what clients speak to poolgate). [`target`] holds what every
//! request to one backend shares (its parsed URLs, its auth header), built with the snapshot.

pub mod anthropic;
pub mod azure;
pub mod body;
pub mod count_tokens;
pub mod openai;
pub mod openai_chat;
pub mod responses;
pub mod target;

use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::{ApiKind, BackendRecord, InvalidRequest};

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
    /// The backend's settings cannot make a request (Azure values that would break its URL).
    #[error("building the upstream request: {0}")]
    Internal(String),
}

/// The two fields every request format is routed by: `model` (a non-empty string) and `stream`
/// (a boolean, absent or null = false).
pub fn model_and_stream(
    model: Option<Value>,
    stream: Option<Value>,
) -> Result<(String, bool), InvalidRequest> {
    let model = match model {
        Some(Value::String(model)) if !model.is_empty() => {
            crate::domain::check_model_name_length(&model)?;
            model
        }
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
    /// Anthropic's `/v1/messages/count_tokens` (Anthropic backends only).
    CountTokens,
    /// `POST /v1/responses`.
    Responses,
    /// `GET /v1/responses/{id}`.
    ResponsesRetrieve,
    /// `DELETE /v1/responses/{id}`.
    ResponsesDelete,
    /// `POST /v1/responses/{id}/cancel`.
    ResponsesCancel,
    /// `GET /v1/responses/{id}/input_items`.
    ResponsesInputItems,
}

impl Endpoint {
    /// The name used in usage records.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "messages.count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::ResponsesRetrieve => "responses.retrieve",
            Endpoint::ResponsesDelete => "responses.delete",
            Endpoint::ResponsesCancel => "responses.cancel",
            Endpoint::ResponsesInputItems => "responses.input_items",
        }
    }

    /// The route clients call (`http.route` in traces).
    pub fn client_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            Endpoint::Responses => "/v1/responses",
            Endpoint::ResponsesRetrieve | Endpoint::ResponsesDelete => "/v1/responses/{id}",
            Endpoint::ResponsesCancel => "/v1/responses/{id}/cancel",
            Endpoint::ResponsesInputItems => "/v1/responses/{id}/input_items",
        }
    }

    /// The HTTP method clients call it with (`http.request.method` in traces).
    pub fn client_method(self) -> &'static str {
        match self {
            Endpoint::ResponsesRetrieve | Endpoint::ResponsesInputItems => "GET",
            Endpoint::ResponsesDelete => "DELETE",
            _ => "POST",
        }
    }

    /// Path below an OpenAI-compatible base URL (the Responses API's calls build their own).
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions | Endpoint::Messages => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::Responses
            | Endpoint::ResponsesRetrieve
            | Endpoint::ResponsesDelete
            | Endpoint::ResponsesCancel
            | Endpoint::ResponsesInputItems => "/responses",
        }
    }

    /// Whether a backend can serve the endpoint (with translation if needed). Whether a
    /// Responses request needs the backend's own Responses API is the request's to say.
    pub fn served_by(self, backend: &BackendRecord) -> bool {
        match self {
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => true,
            Endpoint::Completions | Endpoint::Embeddings => backend.api.speaks_openai(),
            Endpoint::CountTokens => backend.api == ApiKind::Anthropic,
            Endpoint::ResponsesRetrieve
            | Endpoint::ResponsesDelete
            | Endpoint::ResponsesCancel
            | Endpoint::ResponsesInputItems => backend.speaks_responses(),
        }
    }

    /// Whether the endpoint can answer with an SSE stream.
    pub fn can_stream(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Messages
                | Endpoint::Responses
                | Endpoint::ResponsesRetrieve
        )
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
    /// `prompt_tokens_details.cached_tokens`: prompt tokens read from the upstream's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Prompt tokens written to the upstream's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`; part of `prompt_tokens`). Not in OpenAI's `usage` shape:
    /// never read from or written to the wire here.
    #[serde(skip)]
    pub cache_write_tokens: Option<u32>,
}

/// The part of `prompt_tokens_details` poolgate reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u32,
}

impl TokenUsage {
    /// Prompt tokens read from the upstream's prompt cache, when it said.
    pub fn cached_tokens(&self) -> Option<u32> {
        self.prompt_tokens_details
            .map(|details| details.cached_tokens)
    }

    /// With `cached` prompt tokens from the cache (`None` when the upstream did not say).
    pub fn with_cached(mut self, cached: Option<u32>) -> Self {
        self.prompt_tokens_details =
            cached.map(|cached_tokens| PromptTokensDetails { cached_tokens });
        self
    }
}

/// The model an answer says answered: `model` of a JSON answer (OpenAI and Anthropic alike), or
/// of the first event in a stream's first bytes (`model` of an OpenAI chunk, `message.model` of
/// Anthropic's `message_start`, `response.model` of the Responses API's `response.created`).
/// `None` when there is none to read.
pub fn answered_model(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Answered {
        model: Option<String>,
        message: Option<AnsweredMessage>,
        response: Option<AnsweredMessage>,
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
            .or_else(|| answered.response.and_then(|response| response.model))
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
    /// POST for every call but the Responses API's reads and deletes.
    pub method: Method,
    pub url: target::UpstreamUrl,
    pub headers: HeaderMap,
    pub body: body::SplicedBody,
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
        let created = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-r\"}}\n\n";
        assert_eq!(answered_model(created).as_deref(), Some("gpt-r"));
        assert_eq!(answered_model(b"data: [DONE]\n\n"), None);
        assert_eq!(answered_model(b"not json"), None);
    }
}
