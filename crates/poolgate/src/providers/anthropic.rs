//! The Anthropic Messages wire format: typed request, response and stream-event structs (as in
//! Anthropic's public API reference), building the upstream request for an Anthropic backend
//! (`{api_base_url}/v1/messages`, `x-api-key`, `anthropic-version`), and reading usage.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::body::{Required, SplicedBody, TopLevel};
use super::target::{UpstreamTarget, ANTHROPIC_MESSAGES};
use super::{ProviderError, TokenUsage, UpstreamRequest};
use crate::domain::InvalidRequest;

/// The API version poolgate speaks to Anthropic backends (unless the client names one).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

// === request ===

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// `system`: a string or a list of text blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum System {
    Text(String),
    Blocks(Vec<TextBlock>),
}

impl System {
    pub fn text(&self) -> String {
        match self {
            System::Text(text) => text.clone(),
            System::Blocks(blocks) => blocks
                .iter()
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextBlock {
    #[serde(rename = "type", default = "text_type")]
    pub kind: String,
    pub text: String,
}

fn text_type() -> String {
    "text".to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: MessageContent,
}

/// Message content: a plain string or content blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

impl MessageContent {
    pub fn into_blocks(self) -> Vec<ContentBlock> {
        match self {
            MessageContent::Text(text) => vec![ContentBlock::Text { text }],
            MessageContent::Blocks(blocks) => blocks,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
    Thinking {
        thinking: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolResultContent {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

impl ToolResultContent {
    /// The text of a tool result (text blocks joined).
    pub fn text(&self) -> String {
        match self {
            ToolResultContent::Text(text) => text.clone(),
            ToolResultContent::Blocks(blocks) => blocks
                .iter()
                .filter_map(|b| match b {
                    ContentBlock::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input_schema: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

// === response ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u32,
    #[serde(default)]
    pub output_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u32>,
}

impl Usage {
    /// All input tokens, cached ones included.
    pub fn total_input(&self) -> u32 {
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
    }

    pub fn token_usage(&self) -> TokenUsage {
        let prompt = self.total_input();
        TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: self.output_tokens,
            total_tokens: prompt.saturating_add(self.output_tokens),
            prompt_tokens_details: None,
            cache_write_tokens: self.cache_creation_input_tokens,
        }
        .with_cached(self.cache_read_input_tokens)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    pub id: String,
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    pub role: Role,
    pub model: String,
    pub content: Vec<ContentBlock>,
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

fn message_type() -> String {
    "message".to_owned()
}

// === stream events ===

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: MessagesResponse,
    },
    ContentBlockStart {
        index: u32,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorDetail,
    },
}

impl StreamEvent {
    /// The SSE event name Anthropic uses for this event.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Ping => "ping",
            StreamEvent::Error { .. } => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    TextDelta { text: String },
    InputJsonDelta { partial_json: String },
    ThinkingDelta { thinking: String },
    SignatureDelta { signature: String },
    CitationsDelta { citation: Value },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageDeltaBody {
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u32>,
    #[serde(default)]
    pub output_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u32>,
}

// === errors ===

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// `{"type": "error", "error": {"type", "message"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub error: ErrorDetail,
}

impl ErrorResponse {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: "error".to_owned(),
            error: ErrorDetail {
                kind: kind.to_owned(),
                message: message.into(),
            },
        }
    }
}

/// The Anthropic error type for an HTTP status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        // Any other client error (405, 408, 409, 431, …) is the request's, not the API's.
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

// === pass-through envelope for Anthropic clients ===

/// A client's Messages request, parsed just far enough to route it (and to check that
/// `messages` and `max_tokens` are there, [`Envelope::check_messages_request`]): where `model`
/// and `stream`
/// lie in the body; everything else passes through as the client sent it.
#[derive(Debug)]
pub struct Envelope {
    pub model: Option<Value>,
    pub stream: Option<Value>,
    top: TopLevel,
}

impl Envelope {
    pub fn parse(body: &[u8]) -> Result<Envelope, InvalidRequest> {
        let top = TopLevel::parse(body, &["model", "stream", "messages", "max_tokens"])?;
        let field = |name: &str| top.parse_value(body, name);
        Ok(Envelope {
            model: field("model")?,
            stream: field("stream")?,
            top,
        })
    }

    /// What a Messages request must carry, as Anthropic checks it: a `messages` array and a
    /// numeric `max_tokens`. Only each value's first byte is read (`body` is the one this
    /// envelope was parsed from); what is in them is the upstream's to judge.
    pub fn check_messages_request(&self, body: &[u8]) -> Result<(), InvalidRequest> {
        self.top.require(body, "messages", Required::Array)?;
        self.top.require(body, "max_tokens", Required::Number)
    }

    /// The pass-through body: the client's `raw` body (which this envelope was parsed from)
    /// with the upstream model id and an explicit boolean `stream` — slices of `raw` around the
    /// changed values, not a copy.
    pub fn passthrough_body(
        &self,
        raw: &Bytes,
        upstream_model: &str,
        stream: bool,
    ) -> Result<SplicedBody, ProviderError> {
        let mut edits = Vec::with_capacity(2);
        if let Some(span) = self.top.span("model") {
            edits.push((span, Bytes::from(serde_json::to_vec(upstream_model)?)));
        }
        // `"stream": null` means false to poolgate; say so upstream.
        if let (Some(span), Some(Value::Null)) = (self.top.span("stream"), &self.stream) {
            edits.push((
                span,
                Bytes::from_static(if stream { b"true" } else { b"false" }),
            ));
        }
        Ok(SplicedBody::splice(raw, edits))
    }
}

/// Builds the upstream request for an Anthropic backend. `client_headers` carries the client's
/// own `anthropic-version` / `anthropic-beta` when it spoke the Messages API itself.
pub fn build_request(
    target: &UpstreamTarget,
    body: SplicedBody,
    client_headers: &[(HeaderName, HeaderValue)],
) -> Result<UpstreamRequest, ProviderError> {
    let mut headers = HeaderMap::with_capacity(4 + client_headers.len());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("x-api-key"), target.auth()?);
    headers.insert(
        "anthropic-version",
        HeaderValue::from_static(ANTHROPIC_VERSION),
    );
    for (name, value) in client_headers {
        headers.insert(name.clone(), value.clone());
    }
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: target.url(ANTHROPIC_MESSAGES),
        headers,
        body,
    })
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

/// Token usage of a Messages JSON answer.
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage
        .map(|u| u.token_usage())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_needs_a_messages_array_and_an_integer_max_tokens() {
        let check = |body: &str| {
            Envelope::parse(body.as_bytes())
                .and_then(|envelope| envelope.check_messages_request(body.as_bytes()))
                .map_err(|error| (error.param, error.code))
        };
        let refused = |param: &str, code: &'static str| Err((Some(param.to_owned()), Some(code)));
        assert_eq!(
            check(r#"{"model":"m","max_tokens":5,"messages":[]}"#),
            Ok(())
        );
        assert_eq!(
            check(r#"{"model":"m","max_tokens":5}"#),
            refused("messages", "missing_required_parameter")
        );
        assert_eq!(
            check(r#"{"model":"m","max_tokens":5,"messages":null}"#),
            refused("messages", "missing_required_parameter")
        );
        assert_eq!(
            check(r#"{"model":"m","max_tokens":5,"messages":"hi"}"#),
            refused("messages", "invalid_type")
        );
        assert_eq!(
            check(r#"{"model":"m","messages":[]}"#),
            refused("max_tokens", "missing_required_parameter")
        );
        assert_eq!(
            check(r#"{"model":"m","messages":[],"max_tokens":"5"}"#),
            refused("max_tokens", "invalid_type")
        );
        assert_eq!(
            check(r#"{"model":"m","messages":[],"max_tokens":null}"#),
            refused("max_tokens", "missing_required_parameter")
        );
        // A negative or fractional count is the upstream's to refuse; whitespace is skipped.
        assert_eq!(
            check(r#"{"model":"m","messages":[],"max_tokens":1.5}"#),
            Ok(())
        );
        assert_eq!(
            check(r#"{"model":"m","messages":[],"max_tokens":-1}"#),
            Ok(())
        );
        assert_eq!(
            check("{\"model\":\"m\",\"messages\" :\n  [ ],\"max_tokens\":\t 5}"),
            Ok(())
        );
    }

    #[test]
    fn parses_the_reference_request_shape() {
        let request: MessagesRequest = serde_json::from_str(
            r#"{
              "model": "claude-sonnet-4-5", "max_tokens": 1024,
              "system": [{"type": "text", "text": "Be brief."}],
              "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                                             {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}
              ],
              "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
              "tool_choice": {"type": "auto"},
              "stop_sequences": ["END"], "temperature": 0.2
            }"#,
        )
        .unwrap();
        assert_eq!(request.system.unwrap().text(), "Be brief.");
        assert_eq!(request.messages.len(), 3);
        assert!(matches!(request.tool_choice, Some(ToolChoice::Auto { .. })));
    }

    #[test]
    fn parses_stream_events() {
        let event: StreamEvent = serde_json::from_str(
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"ci"}}"#,
        )
        .unwrap();
        assert_eq!(event.name(), "content_block_delta");
        let event: StreamEvent = serde_json::from_str(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        )
        .unwrap();
        assert!(matches!(
            event,
            StreamEvent::MessageDelta {
                usage: Some(DeltaUsage {
                    output_tokens: 15,
                    ..
                }),
                ..
            }
        ));
    }

    #[test]
    fn usage_counts_cached_input() {
        let usage = usage_of_body(
            br#"{"usage":{"input_tokens":5,"output_tokens":7,"cache_read_input_tokens":100}}"#,
        )
        .unwrap();
        assert_eq!(usage.prompt_tokens, 105);
        assert_eq!(usage.total_tokens, 112);
    }
}
