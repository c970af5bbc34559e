//! Estimating a request before it is sent: its prompt tokens and the output tokens to reserve,
//! from the raw JSON body, in one borrowed parse that keeps only the text fields (strings without
//! escapes are not even copied; everything else is skipped by the parser).
//!
//! # Counting rules
//! - **Chat Completions** (OpenAI's published formula for gpt-3.5-turbo-0613 and later, gpt-4,
//!   gpt-4o and newer): 3 tokens to prime the reply, plus per message 3 tokens, the role, the
//!   content and the name (+1 for having a name). Tool calls in the history count their name and
//!   arguments; tool and function definitions and `response_format` count their JSON text.
//! - **Messages** (Anthropic): the same per-message shape over `system` and `messages`, text,
//!   thinking, tool inputs and tool results counted; tool definitions add their JSON text plus
//!   the 346 tokens of Anthropic's tool-use system prompt.
//! - **Responses**: `instructions` plus every `input` item (messages as in chat, function calls
//!   and their outputs); a `previous_response_id` conversation held by the upstream is not
//!   visible here, so such a prompt is under-estimated (the settle corrects it).
//! - **Completions / embeddings**: the `prompt` / `input` strings; arrays of token ids count
//!   one token per id.
//! - Images count as a guess (OpenAI: 85 tokens at `detail: low`, else 765 — a 1024×1024 image;
//!   Anthropic: 1 600, the largest size it bills) and files or audio as nothing; any guess makes
//!   the count inexact.
//!
//! The output reserve is `max_completion_tokens` / `max_tokens` (× `n`), `max_output_tokens`,
//! or the API's own default (16 for legacy completions), else
//! [`EstimateSettings::default_output_tokens`], capped at
//! [`EstimateSettings::max_output_reserve`]. A body that is not the expected JSON never fails
//! here: it is estimated from its size (the upstream will say what is wrong with it).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{byte_estimate, EstimateSettings, Tally, TokenCount, TokenCounter};
use crate::providers::Endpoint;

/// Tokens added per message by the chat format, and to prime the reply.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;
/// Anthropic's tool-use system prompt (`tool_choice` auto / none), per its documentation.
const ANTHROPIC_TOOL_PROMPT: u64 = 346;
const OPENAI_IMAGE_LOW: u64 = 85;
const OPENAI_IMAGE_DEFAULT: u64 = 765;
const ANTHROPIC_IMAGE: u64 = 1_600;
/// `max_tokens` of the legacy completions endpoint when the request has none.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u64 = 16;

/// The request formats poolgate can estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic Messages.
    Messages,
    /// OpenAI Responses.
    Responses,
}

impl From<Endpoint> for WireFormat {
    fn from(endpoint: Endpoint) -> Self {
        match endpoint {
            Endpoint::ChatCompletions => WireFormat::ChatCompletions,
            Endpoint::Completions => WireFormat::Completions,
            Endpoint::Embeddings => WireFormat::Embeddings,
            Endpoint::Messages | Endpoint::CountTokens => WireFormat::Messages,
            Endpoint::Responses
            | Endpoint::ResponsesRetrieve
            | Endpoint::ResponsesDelete
            | Endpoint::ResponsesCancel
            | Endpoint::ResponsesInputItems => WireFormat::Responses,
        }
    }
}

/// What a request is expected to cost in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestEstimate {
    pub prompt: TokenCount,
    /// What the request declared it may answer with (`max_tokens` & co., × `n`).
    pub declared_output: Option<u64>,
    /// Output tokens to reserve: the declared figure or the default, capped.
    pub output_reserve: u64,
}

impl RequestEstimate {
    /// Prompt plus output reserve: what a TPM reservation takes.
    pub fn total(&self) -> u64 {
        self.prompt.tokens.saturating_add(self.output_reserve)
    }
}

/// Estimates a request body of `format` for a model counted by `counter`.
pub fn estimate_request(
    format: WireFormat,
    body: &[u8],
    counter: TokenCounter,
    settings: &EstimateSettings,
) -> RequestEstimate {
    let mut tally = Tally::new(counter, settings.exact_budget_bytes);
    let declared = match format {
        WireFormat::ChatCompletions => parse(body).map(|b: ChatBody<'_>| b.count(&mut tally)),
        WireFormat::Completions => parse(body).map(|b: PromptBody<'_>| {
            let n = b.n.unwrap_or(1).max(1);
            b.count(&mut tally);
            Some(
                b.max_tokens
                    .unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS)
                    .saturating_mul(n),
            )
        }),
        WireFormat::Embeddings => parse(body).map(|b: PromptBody<'_>| {
            b.count(&mut tally);
            Some(0)
        }),
        WireFormat::Messages => parse(body).map(|b: MessagesBody<'_>| b.count(&mut tally)),
        WireFormat::Responses => parse(body).map(|b: ResponsesBody<'_>| b.count(&mut tally)),
    };
    let (prompt, declared_output) = match declared {
        Some(declared) => (tally.finish(), declared),
        None => (
            TokenCount {
                tokens: byte_estimate(body.len() as u64),
                exact: false,
            },
            None,
        ),
    };
    RequestEstimate {
        prompt,
        declared_output,
        output_reserve: declared_output
            .unwrap_or(settings.default_output_tokens)
            .min(settings.max_output_reserve),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

// === shared pieces ===

/// A JSON field that is either a string or an array of parts; `null` is empty text.
enum TextOrParts<'a, P> {
    Text(Cow<'a, str>),
    Parts(Vec<P>),
}

impl<'de: 'a, 'a, P: Deserialize<'de>> Deserialize<'de> for TextOrParts<'a, P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextOrPartsVisitor<'a, P>(PhantomData<(&'a (), P)>);

        impl<'de: 'a, 'a, P: Deserialize<'de>> Visitor<'de> for TextOrPartsVisitor<'a, P> {
            type Value = TextOrParts<'a, P>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(TextOrParts::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(TextOrParts::Text(Cow::Owned(text.to_owned())))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TextOrParts::Text(Cow::Borrowed("")))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(TextOrParts::Parts(parts))
            }
        }

        deserializer.deserialize_any(TextOrPartsVisitor(PhantomData))
    }
}

/// One content part or block of any of the formats (the union of the fields that hold text).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    /// `text` / `input_text` / `output_text` parts, Anthropic text blocks.
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    /// Anthropic `thinking` blocks.
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    /// Anthropic `tool_use` blocks.
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    /// Anthropic `tool_result` blocks.
    #[serde(borrow, default)]
    content: Option<TextOrParts<'a, Part<'a>>>,
    /// OpenAI chat `image_url` parts: `{"url", "detail"}` (or, from old clients, a string).
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
    /// Responses `input_image` parts.
    #[serde(borrow, default)]
    detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ImageDetail<'a> {
    #[serde(borrow, default)]
    detail: Option<Cow<'a, str>>,
}

/// The `detail` of an `image_url` object; `None` for a bare URL string or anything else.
fn image_detail(image_url: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<ImageDetail<'_>>(image_url.get())
        .ok()?
        .detail
}

/// Which image guess a format uses.
#[derive(Clone, Copy)]
enum Images {
    OpenAi,
    Anthropic,
}

impl<'a> TextOrParts<'a, Part<'a>> {
    fn count(&self, tally: &mut Tally, images: Images) {
        match self {
            TextOrParts::Text(text) => tally.text(text),
            TextOrParts::Parts(parts) => {
                for part in parts {
                    part.count(tally, images);
                }
            }
        }
    }
}

impl Part<'_> {
    fn count(&self, tally: &mut Tally, images: Images) {
        for text in [&self.text, &self.thinking, &self.refusal, &self.name]
            .into_iter()
            .flatten()
        {
            tally.text(text);
        }
        if let Some(input) = self.input {
            tally.text(input.get());
        }
        if let Some(content) = &self.content {
            content.count(tally, images);
        }
        let kind = self.kind.as_deref().unwrap_or("");
        match (kind, images) {
            ("image_url" | "input_image", Images::OpenAi) => {
                let detail = self.image_url.and_then(image_detail);
                let detail = detail.as_deref().or(self.detail.as_deref());
                tally.approximate(if detail == Some("low") {
                    OPENAI_IMAGE_LOW
                } else {
                    OPENAI_IMAGE_DEFAULT
                });
            }
            ("image", Images::Anthropic) => tally.approximate(ANTHROPIC_IMAGE),
            // Files, audio, documents: not knowable from the request.
            ("file" | "input_file" | "input_audio" | "document", _) => tally.approximate(0),
            _ => {}
        }
    }
}

/// Counts a JSON definition (tools, schemas) by its text: an approximation of how the upstream
/// renders it to the model.
fn count_json(tally: &mut Tally, json: Option<&RawValue>) {
    if let Some(json) = json {
        tally.text(json.get());
        tally.approximate(0);
    }
}

/// Counts one chat-shaped message: overhead, role, name, content.
fn count_message(
    tally: &mut Tally,
    role: Option<&str>,
    name: Option<&str>,
    content: Option<&TextOrParts<'_, Part<'_>>>,
    images: Images,
) {
    tally.fixed(TOKENS_PER_MESSAGE);
    if let Some(role) = role {
        tally.text(role);
    }
    if let Some(name) = name {
        tally.text(name);
        tally.fixed(TOKENS_PER_NAME);
    }
    if let Some(content) = content {
        content.count(tally, images);
    }
}

// === Chat Completions ===

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response_format: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<TextOrParts<'a, Part<'a>>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionCall<'a>>,
}

/// A function call (or, in a stream, a piece of one): name and JSON arguments.
#[derive(Deserialize)]
pub(super) struct FunctionCall<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

impl FunctionCall<'_> {
    /// The name and arguments text.
    pub(super) fn texts(&self) -> impl Iterator<Item = &str> {
        [&self.name, &self.arguments]
            .into_iter()
            .flatten()
            .map(|text| text.as_ref())
    }

    fn count(&self, tally: &mut Tally) {
        for text in self.texts() {
            tally.text(text);
        }
        tally.approximate(TOKENS_PER_MESSAGE);
    }
}

impl ChatBody<'_> {
    /// Counts the prompt; returns the declared output.
    fn count(&self, tally: &mut Tally) -> Option<u64> {
        tally.fixed(REPLY_PRIMING);
        for message in &self.messages {
            count_message(
                tally,
                message.role.as_deref(),
                message.name.as_deref(),
                message.content.as_ref(),
                Images::OpenAi,
            );
            let calls = message.tool_calls.iter().flatten();
            for call in calls.filter_map(|call| call.function.as_ref()) {
                call.count(tally);
            }
            if let Some(call) = &message.function_call {
                call.count(tally);
            }
        }
        for json in [self.tools, self.functions, self.response_format] {
            count_json(tally, json);
        }
        let n = self.n.unwrap_or(1).max(1);
        self.max_completion_tokens
            .or(self.max_tokens)
            .map(|tokens| tokens.saturating_mul(n))
    }
}

// === Completions and embeddings ===

#[derive(Deserialize)]
struct PromptBody<'a> {
    /// `prompt` (completions) or `input` (embeddings).
    #[serde(borrow, default, alias = "input")]
    prompt: Option<Prompt<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
}

/// `"text"`, `["a", "b"]`, `[1, 2, 3]` or `[[1, 2], [3]]`.
struct Prompt<'a>(Vec<Cow<'a, str>>, u64);

impl<'de: 'a, 'a> Deserialize<'de> for Prompt<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PromptVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for PromptVisitor<'a> {
            type Value = Prompt<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or an array of strings or token ids")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Prompt(vec![Cow::Borrowed(text)], 0))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Prompt(vec![Cow::Owned(text.to_owned())], 0))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Prompt(Vec::new(), 1))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Prompt(Vec::new(), 1))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut prompt = Prompt(Vec::new(), 0);
                while let Some(Prompt(texts, tokens)) = seq.next_element::<Prompt<'a>>()? {
                    prompt.0.extend(texts);
                    prompt.1 += tokens;
                }
                Ok(prompt)
            }
        }

        deserializer.deserialize_any(PromptVisitor(PhantomData))
    }
}

impl PromptBody<'_> {
    fn count(&self, tally: &mut Tally) {
        if let Some(Prompt(texts, token_ids)) = &self.prompt {
            for text in texts {
                tally.text(text);
            }
            tally.fixed(*token_ids);
        }
    }
}

// === Anthropic Messages ===

#[derive(Deserialize)]
struct MessagesBody<'a> {
    #[serde(borrow, default)]
    system: Option<TextOrParts<'a, Part<'a>>>,
    #[serde(borrow, default)]
    messages: Vec<AnthropicMessage<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<TextOrParts<'a, Part<'a>>>,
}

impl MessagesBody<'_> {
    fn count(&self, tally: &mut Tally) -> Option<u64> {
        tally.fixed(REPLY_PRIMING);
        if let Some(system) = &self.system {
            count_message(tally, None, None, Some(system), Images::Anthropic);
        }
        for message in &self.messages {
            count_message(
                tally,
                message.role.as_deref(),
                None,
                message.content.as_ref(),
                Images::Anthropic,
            );
        }
        if self.tools.is_some() {
            tally.approximate(ANTHROPIC_TOOL_PROMPT);
            count_json(tally, self.tools);
        }
        self.max_tokens
    }
}

// === OpenAI Responses ===

#[derive(Deserialize)]
struct ResponsesBody<'a> {
    #[serde(borrow, default)]
    instructions: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<TextOrParts<'a, ResponsesItem<'a>>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    /// `text.format` may carry a JSON schema.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ResponsesItem<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<TextOrParts<'a, Part<'a>>>,
    /// `function_call` items.
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
    /// `function_call_output` items.
    #[serde(borrow, default)]
    output: Option<TextOrParts<'a, Part<'a>>>,
}

impl ResponsesBody<'_> {
    fn count(&self, tally: &mut Tally) -> Option<u64> {
        tally.fixed(REPLY_PRIMING);
        if let Some(instructions) = &self.instructions {
            count_message(tally, Some("system"), None, None, Images::OpenAi);
            tally.text(instructions);
        }
        match &self.input {
            Some(TextOrParts::Text(text)) => {
                count_message(tally, Some("user"), None, None, Images::OpenAi);
                tally.text(text);
            }
            Some(TextOrParts::Parts(items)) => {
                for item in items {
                    count_message(
                        tally,
                        item.role.as_deref(),
                        None,
                        item.content.as_ref(),
                        Images::OpenAi,
                    );
                    for text in [&item.name, &item.arguments].into_iter().flatten() {
                        tally.text(text);
                    }
                    if let Some(output) = &item.output {
                        output.count(tally, Images::OpenAi);
                    }
                }
            }
            None => {}
        }
        for json in [self.tools, self.text] {
            count_json(tally, json);
        }
        self.max_output_tokens
    }
}

#[cfg(test)]
mod tests;
