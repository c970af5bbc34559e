//! Counting the output of a stream as it passes, for the stream whose client left before the
//! usage frame (or whose upstream never sends one): the completion tokens are then estimated
//! from the text that went by.
//!
//! Nothing is buffered: with a BPE encoding each delta is tokenized on its own and the counts
//! added up (upstreams send deltas on token boundaries, so this matches a count of the whole
//! text up to a token at a delta seam); with the byte estimate only a byte count is kept and
//! divided once at the end. Reasoning tokens an upstream does not stream (OpenAI o-series) are
//! not visible here: such an estimate is low, and says it is inexact.
//!
//! The events read are the ones that carry generated text:
//! - OpenAI chat chunks: `choices[].delta.{content, refusal, reasoning_content}` and the tool
//!   call deltas' `function.{name, arguments}`; legacy completions: `choices[].text`;
//! - Anthropic: `content_block_delta` (`text`, `thinking`, `partial_json`) and a
//!   `content_block_start` tool name;
//! - Responses: every `response.*.delta` event's `delta` string.

mod openai_chunk;

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;

use super::request::FunctionCall;
use super::{Tally, TokenCount, TokenCounter};

/// Exact-count budget of a stream counter: every delta is counted exactly.
const STREAM_BUDGET: usize = usize::MAX;

/// Adds up the output text of one stream.
pub struct StreamedOutputCounter {
    tally: Tally,
}

impl StreamedOutputCounter {
    pub fn new(counter: TokenCounter) -> Self {
        Self {
            tally: Tally::new(counter, STREAM_BUDGET),
        }
    }

    /// Counts a piece of generated text.
    pub fn text(&mut self, text: &str) {
        self.tally.text(text);
    }

    /// An OpenAI chat or completions stream chunk's `data`.
    pub fn openai_chunk(&mut self, data: &str) {
        openai_texts(data, |text| self.text(text));
    }

    /// An Anthropic stream event's `data`.
    pub fn anthropic_event(&mut self, data: &str) {
        anthropic_texts(data, |text| self.text(text));
    }

    /// A Responses stream event's `data` (`response.output_text.delta`, …).
    pub fn responses_event(&mut self, data: &str) {
        responses_texts(data, |text| self.text(text));
    }

    /// The output tokens so far.
    pub fn count(self) -> TokenCount {
        self.tally.finish()
    }
}

/// `"choices"`, searched for in every OpenAI chunk (a SIMD search set up once).
static CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\""));

/// Calls `each` with every piece of generated text in an OpenAI chat or completions chunk: a
/// chunk that names no `"choices"` has none; the common shapes are read by
/// [`openai_chunk`]'s single pass, anything else by the serde parse.
pub fn openai_texts(data: &str, mut each: impl FnMut(&str)) {
    if CHOICES.find(data.as_bytes()).is_none() {
        return;
    }
    if openai_chunk::openai_texts(data, &mut each).is_ok() {
        return;
    }
    openai_texts_parsed(data, each);
}

/// [`openai_texts`] by the serde parse (a chunk that is not JSON has no text).
fn openai_texts_parsed(data: &str, mut each: impl FnMut(&str)) {
    let Ok(chunk) = serde_json::from_str::<OpenAiChunk<'_>>(data) else {
        return;
    };
    for choice in &chunk.choices {
        if let Some(text) = &choice.text {
            each(text);
        }
        let Some(delta) = &choice.delta else {
            continue;
        };
        for text in [&delta.content, &delta.refusal, &delta.reasoning_content]
            .into_iter()
            .flatten()
        {
            each(text);
        }
        let calls = delta.tool_calls.iter().flatten();
        for function in calls.filter_map(|call| call.function.as_ref()) {
            for text in function.texts() {
                each(text);
            }
        }
    }
}

/// Calls `each` with every piece of generated text in an Anthropic stream event.
pub fn anthropic_texts(data: &str, mut each: impl FnMut(&str)) {
    let Some(event) = parse_marked::<AnthropicEvent<'_>>(data, "content_block_") else {
        return;
    };
    let pieces = [
        event.delta.as_ref().and_then(|d| d.text.as_ref()),
        event.delta.as_ref().and_then(|d| d.thinking.as_ref()),
        event.delta.as_ref().and_then(|d| d.partial_json.as_ref()),
        event.content_block.as_ref().and_then(|b| b.name.as_ref()),
    ];
    for text in pieces.into_iter().flatten() {
        each(text);
    }
}

/// Calls `each` with the `delta` of a Responses stream `response.*.delta` event.
pub fn responses_texts(data: &str, mut each: impl FnMut(&str)) {
    let Some(event) = parse_marked::<ResponsesEvent<'_>>(data, ".delta\"") else {
        return;
    };
    if let (true, Some(delta)) = (event.kind.ends_with(".delta"), &event.delta) {
        each(delta);
    }
}

/// Parses `data` only if it contains `marker` (a cheap scan that skips the events without text).
fn parse_marked<'a, T: Deserialize<'a>>(data: &'a str, marker: &str) -> Option<T> {
    if !data.contains(marker) {
        return None;
    }
    serde_json::from_str(data).ok()
}

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<OpenAiChoice<'a>>,
}

#[derive(Deserialize)]
struct OpenAiChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<OpenAiDelta<'a>>,
    /// Legacy completions.
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OpenAiDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    /// Sent by several OpenAI-compatible reasoning models.
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<OpenAiToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct OpenAiToolCallDelta<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(borrow, default)]
    delta: Option<AnthropicDelta<'a>>,
    #[serde(borrow, default)]
    content_block: Option<AnthropicBlockStart<'a>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnthropicBlockStart<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests;
