//! Anthropic clients served by OpenAI-compatible backends: Messages request → Chat Completions
//! request, `chat.completion` → Messages response, and the chunk stream → Anthropic's named events
//! (`message_start`, `content_block_*`, `message_delta`, `message_stop`).

use bytes::{Bytes, BytesMut};

use super::{anthropic_error_event, Mapped, StreamMapper};
use crate::providers::anthropic::{
    BlockDelta, ContentBlock, DeltaUsage, ImageSource, MessageDeltaBody, MessagesRequest,
    MessagesResponse, Role, StreamEvent, ToolChoice, Usage,
};
use crate::providers::openai_chat::{
    ChatChunk, ChatCompletion, ChatContent, ChatMessage, ChatRequest, ChatTool, ChatToolChoice,
    ContentPart, FunctionCall, FunctionDef, ImageUrl, NamedFunction, NamedToolChoice, Stop,
    StreamOptions, ToolCall,
};
use crate::providers::TokenUsage;
use crate::sse::{encode_event, SseEvent};

fn image_url(source: ImageSource) -> ContentPart {
    let url = match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url,
    };
    ContentPart::ImageUrl {
        image_url: ImageUrl { url, detail: None },
    }
}

/// Messages request → Chat Completions request.
pub fn request(messages: MessagesRequest, upstream_model: &str) -> ChatRequest {
    let mut chat: Vec<ChatMessage> = Vec::new();
    if let Some(system) = &messages.system {
        chat.push(ChatMessage {
            role: "system".to_owned(),
            content: Some(ChatContent::Text(system.text())),
            ..ChatMessage::default()
        });
    }
    for message in messages.messages {
        let mut parts: Vec<ContentPart> = Vec::new();
        let mut tool_calls: Vec<ToolCall> = Vec::new();
        let mut tool_results: Vec<ChatMessage> = Vec::new();
        for block in message.content.into_blocks() {
            match block {
                ContentBlock::Text { text } => parts.push(ContentPart::Text { text }),
                ContentBlock::Image { source } => parts.push(image_url(source)),
                ContentBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                    id,
                    kind: "function".to_owned(),
                    function: FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                }),
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } => {
                    let mut text = content.map(|c| c.text()).unwrap_or_default();
                    if is_error == Some(true) {
                        text = format!("Error: {text}");
                    }
                    tool_results.push(ChatMessage {
                        role: "tool".to_owned(),
                        content: Some(ChatContent::Text(text)),
                        tool_call_id: Some(tool_use_id),
                        ..ChatMessage::default()
                    });
                }
                ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {}
            }
        }
        // Tool results answer the previous assistant turn, so they come first.
        chat.extend(tool_results);
        let only_text = parts.iter().all(|p| matches!(p, ContentPart::Text { .. }));
        let content = if parts.is_empty() {
            None
        } else if only_text {
            Some(ChatContent::Text(
                parts
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text } => Some(text.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ))
        } else {
            Some(ChatContent::Parts(parts))
        };
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        if content.is_some() || !tool_calls.is_empty() {
            chat.push(ChatMessage {
                role: role.to_owned(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                ..ChatMessage::default()
            });
        }
    }

    let (tool_choice, parallel_tool_calls) = match messages.tool_choice {
        None => (None, None),
        Some(ToolChoice::Auto {
            disable_parallel_tool_use,
        }) => (
            Some(ChatToolChoice::Mode("auto".into())),
            disable_parallel_tool_use.map(|d| !d),
        ),
        Some(ToolChoice::Any {
            disable_parallel_tool_use,
        }) => (
            Some(ChatToolChoice::Mode("required".into())),
            disable_parallel_tool_use.map(|d| !d),
        ),
        Some(ToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        }) => (
            Some(ChatToolChoice::Named(NamedToolChoice {
                kind: "function".into(),
                function: NamedFunction { name },
            })),
            disable_parallel_tool_use.map(|d| !d),
        ),
        Some(ToolChoice::None) => (Some(ChatToolChoice::Mode("none".into())), None),
    };
    let stream = messages.stream.unwrap_or(false);
    ChatRequest {
        model: upstream_model.to_owned(),
        messages: chat,
        max_tokens: Some(messages.max_tokens),
        max_completion_tokens: None,
        temperature: messages.temperature,
        top_p: messages.top_p,
        stop: messages.stop_sequences.map(Stop::Many),
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools: messages.tools.map(|tools| {
            tools
                .into_iter()
                .map(|tool| ChatTool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: tool.name,
                        description: tool.description,
                        parameters: Some(tool.input_schema),
                    },
                })
                .collect()
        }),
        tool_choice,
        parallel_tool_calls,
        user: messages.metadata.and_then(|m| m.user_id),
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> Option<String> {
    finish_reason.map(|reason| {
        match reason {
            "length" => "max_tokens",
            "tool_calls" | "function_call" => "tool_use",
            "content_filter" => "refusal",
            _ => "end_turn",
        }
        .to_owned()
    })
}

fn parse_arguments(arguments: &str) -> serde_json::Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| serde_json::json!({}))
}

/// `chat.completion` → Messages response.
pub fn response(completion: ChatCompletion) -> MessagesResponse {
    let mut content = Vec::new();
    let choice = completion.choices.into_iter().next();
    let finish = choice.as_ref().and_then(|c| c.finish_reason.clone());
    if let Some(choice) = choice {
        if let Some(text) = choice.message.content.filter(|t| !t.is_empty()) {
            content.push(ContentBlock::Text { text });
        }
        for call in choice.message.tool_calls.unwrap_or_default() {
            content.push(ContentBlock::ToolUse {
                id: call.id,
                name: call.function.name,
                input: parse_arguments(&call.function.arguments),
            });
        }
    }
    let usage = completion.usage.unwrap_or_default();
    MessagesResponse {
        id: completion.id,
        kind: "message".to_owned(),
        role: Role::Assistant,
        model: completion.model,
        content,
        stop_reason: stop_reason(finish.as_deref()),
        stop_sequence: None,
        usage: Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            cache_creation_input_tokens: None,
            cache_read_input_tokens: None,
        },
    }
}

/// Which Anthropic content block is open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    None,
    Text,
    /// A tool call, by its OpenAI tool-call index.
    Tool(u32),
}

/// `chat.completion.chunk` stream → Anthropic's event stream.
pub struct OpenAiToAnthropicStream {
    started: bool,
    open: OpenBlock,
    /// Index of the next Anthropic content block.
    next_index: u32,
    stop_reason: Option<String>,
    usage: Option<TokenUsage>,
    done: bool,
}

impl Default for OpenAiToAnthropicStream {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenAiToAnthropicStream {
    pub fn new() -> Self {
        Self {
            started: false,
            open: OpenBlock::None,
            next_index: 0,
            stop_reason: None,
            usage: None,
            done: false,
        }
    }

    fn emit(out: &mut BytesMut, event: &StreamEvent) {
        if let Ok(json) = serde_json::to_string(event) {
            out.extend_from_slice(&encode_event(Some(event.name()), &json));
        }
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if self.open != OpenBlock::None {
            Self::emit(
                out,
                &StreamEvent::ContentBlockStop {
                    index: self.next_index - 1,
                },
            );
            self.open = OpenBlock::None;
        }
    }

    fn open_block(&mut self, out: &mut BytesMut, block: ContentBlock, kind: OpenBlock) {
        self.close_block(out);
        Self::emit(
            out,
            &StreamEvent::ContentBlockStart {
                index: self.next_index,
                content_block: block,
            },
        );
        self.next_index += 1;
        self.open = kind;
    }

    fn start(&mut self, out: &mut BytesMut, chunk: &ChatChunk) {
        if self.started {
            return;
        }
        self.started = true;
        Self::emit(
            out,
            &StreamEvent::MessageStart {
                message: MessagesResponse {
                    id: chunk.id.clone(),
                    kind: "message".to_owned(),
                    role: Role::Assistant,
                    model: chunk.model.clone(),
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: Usage::default(),
                },
            },
        );
    }

    fn end(&mut self, out: &mut BytesMut) {
        if self.done || !self.started {
            return;
        }
        self.done = true;
        self.close_block(out);
        let usage = self.usage.unwrap_or_default();
        Self::emit(
            out,
            &StreamEvent::MessageDelta {
                delta: MessageDeltaBody {
                    stop_reason: Some(
                        self.stop_reason
                            .clone()
                            .unwrap_or_else(|| "end_turn".to_owned()),
                    ),
                    stop_sequence: None,
                },
                usage: Some(DeltaUsage {
                    input_tokens: Some(usage.prompt_tokens),
                    output_tokens: usage.completion_tokens,
                    cache_creation_input_tokens: None,
                    cache_read_input_tokens: None,
                }),
            },
        );
        Self::emit(out, &StreamEvent::MessageStop);
    }
}

impl StreamMapper for OpenAiToAnthropicStream {
    fn map(&mut self, event: &SseEvent, out: &mut BytesMut) -> Mapped {
        let Some(data) = event.data.as_deref() else {
            return Mapped::Drop;
        };
        if event.is_done() {
            self.end(out);
            return Mapped::Replaced;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk>(data) else {
            return Mapped::Drop;
        };
        self.start(out, &chunk);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                if self.open != OpenBlock::Text {
                    self.open_block(
                        out,
                        ContentBlock::Text {
                            text: String::new(),
                        },
                        OpenBlock::Text,
                    );
                }
                Self::emit(
                    out,
                    &StreamEvent::ContentBlockDelta {
                        index: self.next_index - 1,
                        delta: BlockDelta::TextDelta {
                            text: text.to_owned(),
                        },
                    },
                );
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let starts_new = call.id.is_some() || self.open != OpenBlock::Tool(call.index);
                if starts_new {
                    let name = call
                        .function
                        .as_ref()
                        .and_then(|f| f.name.clone())
                        .unwrap_or_default();
                    self.open_block(
                        out,
                        ContentBlock::ToolUse {
                            id: call
                                .id
                                .clone()
                                .unwrap_or_else(|| format!("toolu_{}", call.index)),
                            name,
                            input: serde_json::json!({}),
                        },
                        OpenBlock::Tool(call.index),
                    );
                }
                if let Some(arguments) = call
                    .function
                    .as_ref()
                    .and_then(|f| f.arguments.as_deref())
                    .filter(|a| !a.is_empty())
                {
                    Self::emit(
                        out,
                        &StreamEvent::ContentBlockDelta {
                            index: self.next_index - 1,
                            delta: BlockDelta::InputJsonDelta {
                                partial_json: arguments.to_owned(),
                            },
                        },
                    );
                }
            }
            if let Some(reason) = choice.finish_reason.as_deref() {
                self.stop_reason = stop_reason(Some(reason));
                self.close_block(out);
            }
        }
        Mapped::Replaced
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.end(out);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    fn completed(&self) -> bool {
        self.done
    }

    fn error_event(&self, _code: &str, message: &str) -> Bytes {
        anthropic_error_event("api_error", message)
    }
}

#[cfg(test)]
mod tests;
