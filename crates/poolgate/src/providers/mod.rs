//! Upstream wire formats. Each provider file turns the client's request into the upstream's
//! request for one backend and reads token usage from the answer; [`openai`] is the
//! OpenAI-compatible format (also what clients speak to poolgate).

pub mod anthropic;
pub mod azure;
pub mod count_tokens;
pub mod openai;
pub mod openai_chat;
pub mod responses;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;

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

/// Token counts reported by an upstream (OpenAI names; Anthropic's are mapped onto them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TokenUsage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

/// One request ready to send upstream.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}
