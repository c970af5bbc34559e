//! The Response object (`object: "response"`), its output items and usage, typed as in the
//! official `openai` SDK (`types/responses/response.py`, `response_output_item.py`,
//! `response_usage.py`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::request::{FunctionCall, ReasoningConfig, ReasoningItem, TextConfig, Tool, ToolChoice};
use super::tagged::{KnownTags, Tagged};
use crate::providers::TokenUsage;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: String,
    /// Always `"response"`.
    pub object: String,
    pub created_at: i64,
    pub status: ResponseStatus,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub model: String,
    pub output: Vec<Tagged<OutputItem>>,
    pub usage: Option<ResponseUsage>,
    /// Always `null` here: poolgate only builds Response objects for stateless requests.
    pub previous_response_id: Option<String>,
    /// The request parameters the Response object echoes.
    #[serde(flatten)]
    pub echo: RequestEcho,
}

/// What a Response object repeats from its request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEcho {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub parallel_tool_calls: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tool_choice: ToolChoice,
    pub tools: Vec<Tagged<Tool>>,
    pub metadata: Map<String, Value>,
    pub store: bool,
    pub background: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<ReasoningConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
}

impl Default for RequestEcho {
    /// The API's defaults: no tools, `tool_choice: "auto"`, parallel tool calls allowed.
    fn default() -> Self {
        Self {
            instructions: None,
            max_output_tokens: None,
            parallel_tool_calls: true,
            temperature: None,
            top_p: None,
            tool_choice: ToolChoice::Mode("auto".to_owned()),
            tools: Vec::new(),
            metadata: Map::new(),
            store: false,
            background: false,
            text: None,
            reasoning: None,
            truncation: None,
            user: None,
            prompt_cache_key: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    Completed,
    Failed,
    InProgress,
    Cancelled,
    Queued,
    Incomplete,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseError {
    /// `server_error`, `rate_limit_exceeded`, `invalid_prompt`, …
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    /// `max_output_tokens` or `content_filter`.
    pub reason: String,
}

// === output items ===

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message(OutputMessage),
    FunctionCall(FunctionCall),
    Reasoning(ReasoningItem),
}

impl KnownTags for OutputItem {
    const TAGS: &'static [&'static str] = &["message", "function_call", "reasoning"];
}

/// An assistant message: `role: "assistant"`, `output_text` / `refusal` parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputMessage {
    pub id: String,
    /// Always `"assistant"`.
    pub role: String,
    pub status: super::request::ItemStatus,
    pub content: Vec<OutputContent>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputContent {
    OutputText {
        text: String,
        annotations: Vec<Value>,
        #[serde(default)]
        logprobs: Vec<Value>,
    },
    Refusal {
        refusal: String,
    },
}

impl OutputContent {
    /// An empty `output_text` part.
    pub fn text(text: impl Into<String>) -> Self {
        OutputContent::OutputText {
            text: text.into(),
            annotations: Vec::new(),
            logprobs: Vec::new(),
        }
    }
}

// === usage ===

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseUsage {
    /// All input tokens, cached ones included.
    pub input_tokens: u32,
    #[serde(default)]
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u32,
    #[serde(default)]
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cached_tokens: u32,
    /// Input tokens written to the prompt cache (Anthropic reports them; 0 when unknown).
    #[serde(default)]
    pub cache_write_tokens: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: u32,
}

impl ResponseUsage {
    /// The counts usage records keep.
    pub fn token_usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.input_tokens,
            completion_tokens: self.output_tokens,
            total_tokens: self.total_tokens,
            prompt_tokens_details: None,
            cache_write_tokens: None,
        }
        .with_cached(Some(self.input_tokens_details.cached_tokens))
    }
}
