//! Streams of backends without the Responses API → the Responses event stream:
//! `chat.completion.chunk`s ([`ChatToResponsesStream`]) and Anthropic Messages events
//! ([`MessagesToResponsesStream`]). Both drive a [`ResponseBuilder`], which numbers the events.

use bytes::{Bytes, BytesMut};

use super::builder::ResponseBuilder;
use super::{usage_from_anthropic, usage_from_chat, ChatUsageDetails, Finish, SseEvent};
use crate::providers::anthropic::{self, BlockDelta, ContentBlock, StreamEvent as AnthropicEvent};
use crate::providers::openai_chat::ChatChunk;
use crate::providers::responses::response::{RequestEcho, ResponseUsage};
use crate::providers::TokenUsage;
use crate::translate::{error_parts, merge_delta_usage, Mapped, StreamMapper};

// === Chat Completions ===

/// `chat.completion.chunk` stream → Responses events. The backend is asked for
/// `stream_options.include_usage`, so `response.completed` carries real token counts.
pub struct ChatToResponsesStream {
    builder: ResponseBuilder,
    usage: Option<ResponseUsage>,
    finish: Option<Finish>,
}

impl ChatToResponsesStream {
    /// `response_id` is the id the client will see (poolgate's; the backend's chunk ids are
    /// not response ids).
    pub fn new(response_id: String, echo: RequestEcho, created_at: i64) -> Self {
        Self {
            builder: ResponseBuilder::new(response_id, String::new(), created_at, echo, true),
            usage: None,
            finish: None,
        }
    }

    pub fn response_id(&self) -> &str {
        self.builder.response_id()
    }

    fn end(&mut self, out: &mut BytesMut) {
        let finish = self.finish.unwrap_or(Finish::Completed);
        self.builder.end(out, finish, self.usage);
    }
}

impl StreamMapper for ChatToResponsesStream {
    fn map(&mut self, event: &SseEvent, out: &mut BytesMut) -> Mapped {
        let Some(data) = event.data.as_deref() else {
            return Mapped::Drop;
        };
        if self.builder.finished() {
            return Mapped::Drop;
        }
        if event.is_done() {
            self.end(out);
            return Mapped::Replaced;
        }
        if data.contains("\"error\"") {
            if let Some((kind, message)) = error_parts(data.as_bytes()) {
                self.builder.fail(out, &kind, &message);
                return Mapped::Replaced;
            }
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk>(data) else {
            return Mapped::Drop;
        };
        self.builder.set_model(&chunk.model);
        self.builder.start(out);
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage_from_chat(
                usage,
                ChatUsageDetails::of(data.as_bytes()),
            ));
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.builder.text(out, text);
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let function = call.function.as_ref();
                if !self.builder.has_key(call.index) {
                    let call_id = call
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("call_{}", call.index));
                    let name = function.and_then(|f| f.name.as_deref()).unwrap_or_default();
                    self.builder
                        .start_function_call(out, call.index, &call_id, name);
                }
                if let Some(arguments) = function
                    .and_then(|f| f.arguments.as_deref())
                    .filter(|a| !a.is_empty())
                {
                    self.builder.function_arguments(out, call.index, arguments);
                }
            }
            if let Some(reason) = choice.finish_reason.as_deref() {
                let finish = Finish::from_chat(Some(reason));
                self.finish = Some(finish);
                self.builder.close_all(out, finish.item_status());
            }
        }
        Mapped::Replaced
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.end(out);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(|u| u.token_usage())
    }

    fn upstream_failed(&self) -> bool {
        self.builder.failed()
    }

    fn completed(&self) -> bool {
        self.builder.succeeded()
    }

    fn error_event(&self, code: &str, message: &str) -> Bytes {
        self.builder.failure_events(code, message)
    }
}

// === Anthropic Messages ===

/// Anthropic Messages events → Responses events: text blocks → `output_text` parts of one
/// message item, `tool_use` → `function_call` items, `thinking` → `reasoning` items.
pub struct MessagesToResponsesStream {
    builder: ResponseBuilder,
    usage: anthropic::Usage,
    seen_usage: bool,
    /// `message_delta` brought the final output count.
    final_usage: bool,
    stop_reason: Option<String>,
    /// Content block indexes of the text blocks.
    text_blocks: Vec<u32>,
    /// Content block indexes of the tool_use blocks, and whether arguments arrived for each.
    tool_blocks: Vec<(u32, bool)>,
}

impl MessagesToResponsesStream {
    pub fn new(response_id: String, echo: RequestEcho, created_at: i64) -> Self {
        Self {
            builder: ResponseBuilder::new(response_id, String::new(), created_at, echo, true),
            usage: anthropic::Usage::default(),
            seen_usage: false,
            final_usage: false,
            stop_reason: None,
            text_blocks: Vec::new(),
            tool_blocks: Vec::new(),
        }
    }

    pub fn response_id(&self) -> &str {
        self.builder.response_id()
    }

    fn end(&mut self, out: &mut BytesMut) {
        let finish = Finish::from_anthropic(self.stop_reason.as_deref());
        let usage = self.seen_usage.then(|| usage_from_anthropic(&self.usage));
        self.builder.end(out, finish, usage);
    }

    fn block_start(&mut self, out: &mut BytesMut, index: u32, block: ContentBlock) {
        match block {
            ContentBlock::Text { text } => {
                self.text_blocks.push(index);
                if !text.is_empty() {
                    self.builder.text(out, &text);
                }
            }
            ContentBlock::ToolUse { id, name, .. } => {
                self.tool_blocks.push((index, false));
                self.builder.start_function_call(out, index, &id, &name);
            }
            ContentBlock::Thinking { thinking, .. } => {
                self.builder.start_reasoning(out, index);
                if !thinking.is_empty() {
                    self.builder.reasoning_text(out, index, &thinking);
                }
            }
            ContentBlock::RedactedThinking { .. }
            | ContentBlock::Image { .. }
            | ContentBlock::ToolResult { .. } => {}
        }
    }

    fn block_delta(&mut self, out: &mut BytesMut, index: u32, delta: BlockDelta) {
        match delta {
            BlockDelta::TextDelta { text } if self.text_blocks.contains(&index) => {
                self.builder.text(out, &text);
            }
            BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                if let Some(tool) = self.tool_blocks.iter_mut().find(|(i, _)| *i == index) {
                    tool.1 = true;
                }
                self.builder.function_arguments(out, index, &partial_json);
            }
            BlockDelta::ThinkingDelta { thinking } => {
                self.builder.reasoning_text(out, index, &thinking);
            }
            _ => {}
        }
    }

    fn block_stop(&mut self, out: &mut BytesMut, index: u32) {
        if self.text_blocks.contains(&index) {
            self.builder.close_text_part(out);
            return;
        }
        if let Some((_, false)) = self.tool_blocks.iter().find(|(i, _)| *i == index) {
            // A tool called without arguments: `{}`, as in the non-streamed answer.
            self.builder.function_arguments(out, index, "{}");
        }
        self.builder.close_keyed(out, index);
    }
}

impl StreamMapper for MessagesToResponsesStream {
    fn map(&mut self, event: &SseEvent, out: &mut BytesMut) -> Mapped {
        let Some(data) = event.data.as_deref() else {
            return Mapped::Drop;
        };
        if self.builder.finished() {
            return Mapped::Drop;
        }
        let Ok(parsed) = serde_json::from_str::<AnthropicEvent>(data) else {
            return Mapped::Drop;
        };
        match parsed {
            AnthropicEvent::MessageStart { message } => {
                self.builder.set_model(&message.model);
                self.usage = message.usage;
                self.seen_usage = true;
                self.builder.start(out);
            }
            AnthropicEvent::ContentBlockStart {
                index,
                content_block,
            } => self.block_start(out, index, content_block),
            AnthropicEvent::ContentBlockDelta { index, delta } => {
                self.block_delta(out, index, delta);
            }
            AnthropicEvent::ContentBlockStop { index } => self.block_stop(out, index),
            AnthropicEvent::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    merge_delta_usage(&mut self.usage, &usage);
                    self.seen_usage = true;
                    self.final_usage = true;
                }
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
            }
            AnthropicEvent::MessageStop => self.end(out),
            AnthropicEvent::Error { error } => {
                self.builder.fail(out, &error.kind, &error.message);
            }
            AnthropicEvent::Ping => return Mapped::Drop,
        }
        Mapped::Replaced
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.end(out);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.seen_usage.then(|| self.usage.token_usage())
    }

    fn usage_final(&self) -> bool {
        self.final_usage
    }

    fn upstream_failed(&self) -> bool {
        self.builder.failed()
    }

    fn completed(&self) -> bool {
        self.builder.succeeded()
    }

    fn error_event(&self, code: &str, message: &str) -> Bytes {
        self.builder.failure_events(code, message)
    }
}
