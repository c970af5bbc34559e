//! Responses API clients served by backends without it, statelessly: the request goes to Chat
//! Completions ([`request::to_chat`]) or to Anthropic Messages ([`request::to_messages`], by way
//! of the Chat request and [`super::chat_to_messages`]); answers come back as a Response object
//! ([`response`]) or as the Responses event stream ([`stream`]). Every Response object and event
//! is built by one [`builder::ResponseBuilder`], so JSON answers and streams cannot disagree.
//! Backends with the Responses API are served by pass-through ([`passthrough`]).
//!
//! Stateful features (`previous_response_id`, `store: true`, `background`, `conversation`,
//! stored prompts, `item_reference` items) cannot be translated: they are refused with a
//! [`ResponsesError::Stateful`] (a 400). docs/responses.md lists every field.

pub mod builder;
pub mod passthrough;
pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod tests;

use serde::Deserialize;

pub(crate) use crate::sse::{encode_event, SseEvent};

use crate::providers::anthropic;
use crate::providers::responses::request::{ItemStatus, ResponsesRequest, ToolChoice};
use crate::providers::responses::response::{
    InputTokensDetails, OutputTokensDetails, RequestEcho, ResponseUsage,
};
use crate::providers::responses::Stateful;
use crate::providers::TokenUsage;

/// Why a Responses request cannot be served by a backend without the Responses API. Each is a
/// 400 for the client; `param` is the JSON path of the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponsesError {
    /// The request needs state only a Responses-capable backend has.
    #[error("`{}` needs a backend with the Responses API; the backends serving this model translate to another API and keep no state", .feature.param())]
    Stateful { feature: Stateful },
    /// A field or item the backend's API has no equivalent for.
    #[error("{message}")]
    Unsupported { param: String, message: String },
    /// A value that is wrong whatever the backend.
    #[error("{message}")]
    Invalid { param: String, message: String },
}

impl ResponsesError {
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        ResponsesError::Unsupported {
            param: param.into(),
            message: message.into(),
        }
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ResponsesError::Invalid {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The JSON path of the offending field.
    pub fn param(&self) -> &str {
        match self {
            ResponsesError::Stateful { feature } => feature.param(),
            ResponsesError::Unsupported { param, .. } | ResponsesError::Invalid { param, .. } => {
                param
            }
        }
    }

    /// The OpenAI error `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ResponsesError::Stateful { .. } => "stateful_feature_unsupported",
            ResponsesError::Unsupported { .. } => "unsupported_for_backend",
            ResponsesError::Invalid { .. } => "invalid_value",
        }
    }
}

/// The parameters a Response object echoes, from the request it answers. `store` is always
/// `false`: a translated response is never stored.
pub fn echo(request: &ResponsesRequest) -> RequestEcho {
    RequestEcho {
        instructions: request.instructions.clone(),
        max_output_tokens: request.max_output_tokens,
        parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
        temperature: request.temperature,
        top_p: request.top_p,
        tool_choice: request
            .tool_choice
            .clone()
            .unwrap_or_else(|| ToolChoice::Mode("auto".to_owned())),
        tools: request.tools.clone().unwrap_or_default(),
        metadata: request.metadata.clone().unwrap_or_default(),
        store: false,
        background: false,
        text: request.text.clone(),
        reasoning: request.reasoning.clone(),
        truncation: request.truncation.clone(),
        user: request.user.clone(),
        prompt_cache_key: request.prompt_cache_key.clone(),
    }
}

/// A fresh response id, `resp_` and 32 hex digits.
pub fn new_response_id() -> String {
    format!("resp_{}", uuid::Uuid::new_v4().simple())
}

/// How the answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Completed,
    /// `status: "incomplete"` with `incomplete_details.reason`.
    Incomplete(&'static str),
}

impl Finish {
    /// From a Chat Completions `finish_reason`.
    pub fn from_chat(finish_reason: Option<&str>) -> Finish {
        match finish_reason {
            Some("length") => Finish::Incomplete("max_output_tokens"),
            Some("content_filter") => Finish::Incomplete("content_filter"),
            _ => Finish::Completed,
        }
    }

    /// The status of the items still open when the answer ends.
    pub fn item_status(self) -> ItemStatus {
        match self {
            Finish::Completed => ItemStatus::Completed,
            Finish::Incomplete(_) => ItemStatus::Incomplete,
        }
    }

    /// From an Anthropic `stop_reason`.
    pub fn from_anthropic(stop_reason: Option<&str>) -> Finish {
        match stop_reason {
            Some("max_tokens" | "model_context_window_exceeded") => {
                Finish::Incomplete("max_output_tokens")
            }
            Some("refusal") => Finish::Incomplete("content_filter"),
            _ => Finish::Completed,
        }
    }
}

/// The parts of a Chat Completions `usage` the shared [`TokenUsage`] does not keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ChatUsageDetails {
    #[serde(default)]
    pub prompt_tokens_details: Option<CachedTokens>,
    #[serde(default)]
    pub completion_tokens_details: Option<ReasoningTokens>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct CachedTokens {
    #[serde(default)]
    pub cached_tokens: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ReasoningTokens {
    #[serde(default)]
    pub reasoning_tokens: Option<u32>,
}

impl ChatUsageDetails {
    /// The details of a body's or chunk's `usage`; default when absent. Cheap when the text has
    /// no details at all.
    pub fn of(json: &[u8]) -> ChatUsageDetails {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            usage: Option<ChatUsageDetails>,
        }
        let has = |needle: &[u8]| json.windows(needle.len()).any(|w| w == needle);
        if !has(b"_tokens_details") {
            return ChatUsageDetails::default();
        }
        serde_json::from_slice::<Outer>(json)
            .ok()
            .and_then(|outer| outer.usage)
            .unwrap_or_default()
    }
}

/// Chat Completions usage → Responses usage.
pub fn usage_from_chat(usage: &TokenUsage, details: ChatUsageDetails) -> ResponseUsage {
    ResponseUsage {
        input_tokens: usage.prompt_tokens,
        input_tokens_details: InputTokensDetails {
            cached_tokens: details
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
        },
        output_tokens: usage.completion_tokens,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: details
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        },
        total_tokens: usage.total_tokens,
    }
}

/// Anthropic usage → Responses usage: input counts every input token, cache reads and writes
/// included (as OpenAI's does); the cache reads are `cached_tokens`.
pub fn usage_from_anthropic(usage: &anthropic::Usage) -> ResponseUsage {
    let input = usage.total_input();
    ResponseUsage {
        input_tokens: input,
        input_tokens_details: InputTokensDetails {
            cached_tokens: usage.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: usage.cache_creation_input_tokens.unwrap_or(0),
        },
        output_tokens: usage.output_tokens,
        output_tokens_details: OutputTokensDetails::default(),
        total_tokens: input.saturating_add(usage.output_tokens),
    }
}
