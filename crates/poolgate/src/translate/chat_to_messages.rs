//! OpenAI clients served by Anthropic backends: Chat Completions request → Messages request,
//! Messages response → `chat.completion`, and the Messages event stream → `chat.completion.chunk`
//! events ending in `data: [DONE]`.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::{merge_delta_usage, openai_error_event, Mapped, StreamMapper, TranslateError};
use crate::domain::InvalidRequest;
use crate::providers::anthropic::{
    self, BlockDelta, ContentBlock, ImageSource, Message, MessageContent, MessagesRequest,
    MessagesResponse, Metadata, Role, StreamEvent, System, Tool, ToolChoice, ToolResultContent,
};
use crate::providers::openai_chat::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatContent, ChatRequest, ChatToolChoice, Choice,
    ChunkChoice, ContentPart, Delta, FunctionCall, FunctionDelta, ToolCall, ToolCallDelta,
};
use crate::providers::TokenUsage;
use crate::sse::{encode_event, SseEvent};

fn invalid(message: impl Into<String>, param: &str) -> TranslateError {
    TranslateError::Unsupported(InvalidRequest::param(
        message,
        param,
        "unsupported_for_backend",
    ))
}

/// An image part: `data:` URLs become base64 sources, http(s) URLs become URL sources.
fn image_block(url: &str) -> Result<ContentBlock, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| invalid("image data URL has no `,`", "messages"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| invalid("image data URLs must be base64", "messages"))?;
        return Ok(ContentBlock::Image {
            source: ImageSource::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            },
        });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(ContentBlock::Image {
            source: ImageSource::Url {
                url: url.to_owned(),
            },
        });
    }
    Err(invalid(
        "image_url must be an http(s) or data: URL",
        "messages",
    ))
}

fn content_blocks(content: Option<ChatContent>) -> Result<Vec<ContentBlock>, TranslateError> {
    match content {
        None => Ok(Vec::new()),
        Some(ChatContent::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(ChatContent::Text(text)) => Ok(vec![ContentBlock::Text { text }]),
        Some(ChatContent::Parts(parts)) => parts
            .into_iter()
            .map(|part| match part {
                ContentPart::Text { text } => Ok(ContentBlock::Text { text }),
                ContentPart::ImageUrl { image_url } => image_block(&image_url.url),
                ContentPart::Unsupported => Err(invalid(
                    "this content part type cannot be sent to an Anthropic backend",
                    "messages",
                )),
            })
            .collect(),
    }
}

/// Appends blocks to the conversation, merging consecutive turns of the same role (Anthropic
/// requires user and assistant turns to alternate).
fn push_turn(messages: &mut Vec<Message>, role: Role, blocks: Vec<ContentBlock>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut() {
        if last.role == role {
            let mut merged =
                std::mem::replace(&mut last.content, MessageContent::Blocks(Vec::new()))
                    .into_blocks();
            merged.extend(blocks);
            last.content = MessageContent::Blocks(merged);
            return;
        }
    }
    messages.push(Message {
        role,
        content: MessageContent::Blocks(blocks),
    });
}

/// Chat Completions request → Messages request.
pub fn request(
    chat: ChatRequest,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<MessagesRequest, TranslateError> {
    let mut system_parts: Vec<String> = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    for message in chat.messages {
        match message.role.as_str() {
            "system" | "developer" => {
                if let Some(content) = message.content {
                    system_parts.push(content.text());
                }
            }
            "user" => push_turn(&mut messages, Role::User, content_blocks(message.content)?),
            "assistant" => {
                let mut blocks = content_blocks(message.content)?;
                for call in message.tool_calls.unwrap_or_default() {
                    let input = if call.function.arguments.trim().is_empty() {
                        serde_json::json!({})
                    } else {
                        serde_json::from_str(&call.function.arguments).map_err(|_| {
                            invalid(
                                format!("tool call `{}` has arguments that are not JSON", call.id),
                                "messages",
                            )
                        })?
                    };
                    blocks.push(ContentBlock::ToolUse {
                        id: call.id,
                        name: call.function.name,
                        input,
                    });
                }
                push_turn(&mut messages, Role::Assistant, blocks);
            }
            "tool" => {
                let tool_use_id = message
                    .tool_call_id
                    .ok_or_else(|| invalid("tool messages need `tool_call_id`", "messages"))?;
                let text = message.content.map(|c| c.text()).unwrap_or_default();
                push_turn(
                    &mut messages,
                    Role::User,
                    vec![ContentBlock::ToolResult {
                        tool_use_id,
                        content: Some(ToolResultContent::Text(text)),
                        is_error: None,
                    }],
                );
            }
            other => {
                return Err(invalid(
                    format!("unknown message role `{other}`"),
                    "messages",
                ))
            }
        }
    }

    let disable_parallel = chat.parallel_tool_calls.map(|parallel| !parallel);
    let tool_choice = match chat.tool_choice {
        None => disable_parallel.map(|d| ToolChoice::Auto {
            disable_parallel_tool_use: Some(d),
        }),
        Some(ChatToolChoice::Mode(mode)) => Some(match mode.as_str() {
            "none" => ToolChoice::None,
            "required" => ToolChoice::Any {
                disable_parallel_tool_use: disable_parallel,
            },
            _ => ToolChoice::Auto {
                disable_parallel_tool_use: disable_parallel,
            },
        }),
        Some(ChatToolChoice::Named(named)) => Some(ToolChoice::Tool {
            name: named.function.name,
            disable_parallel_tool_use: disable_parallel,
        }),
    };
    let tools = chat.tools.map(|tools| {
        tools
            .into_iter()
            .map(|tool| Tool {
                name: tool.function.name,
                description: tool.function.description,
                input_schema: tool
                    .function
                    .parameters
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            })
            .collect()
    });

    Ok(MessagesRequest {
        model: upstream_model.to_owned(),
        messages,
        max_tokens: chat
            .max_completion_tokens
            .or(chat.max_tokens)
            .unwrap_or(default_max_tokens),
        system: (!system_parts.is_empty()).then(|| System::Text(system_parts.join("\n\n"))),
        // Anthropic accepts 0..=1; OpenAI clients may send up to 2.
        temperature: chat.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: chat.top_p,
        top_k: None,
        stop_sequences: chat.stop.map(|s| s.into_vec()).filter(|s| !s.is_empty()),
        stream: chat.stream.filter(|s| *s),
        tools,
        tool_choice,
        metadata: chat.user.map(|user| Metadata {
            user_id: Some(user),
        }),
    })
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> Option<String> {
    stop_reason.map(|reason| {
        match reason {
            "max_tokens" | "model_context_window_exceeded" => "length",
            "tool_use" => "tool_calls",
            "refusal" => "content_filter",
            _ => "stop",
        }
        .to_owned()
    })
}

/// Messages response → `chat.completion`.
pub fn response(message: MessagesResponse, created: i64) -> ChatCompletion {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            ContentBlock::Text { text: part } => text.push_str(&part),
            ContentBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            _ => {}
        }
    }
    ChatCompletion {
        id: message.id,
        object: "chat.completion".to_owned(),
        created,
        model: message.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".to_owned(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
            },
            finish_reason: finish_reason(message.stop_reason.as_deref()),
            logprobs: None,
        }],
        usage: Some(message.usage.token_usage()),
    }
}

/// Messages event stream → `chat.completion.chunk` stream.
pub struct AnthropicToOpenAiStream {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    usage: anthropic::Usage,
    seen_usage: bool,
    /// `message_delta` brought the final output count.
    final_usage: bool,
    /// Anthropic content block index → OpenAI tool call index.
    tool_index: HashMap<u32, u32>,
    finish: Option<String>,
    done: bool,
    failed: bool,
}

impl AnthropicToOpenAiStream {
    pub fn new(include_usage: bool, created: i64) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created,
            include_usage,
            usage: anthropic::Usage::default(),
            seen_usage: false,
            final_usage: false,
            tool_index: HashMap::new(),
            finish: None,
            done: false,
            failed: false,
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
            }],
            usage: None,
        }
    }

    fn emit(out: &mut BytesMut, chunk: &ChatChunk) {
        if let Ok(json) = serde_json::to_string(chunk) {
            out.extend_from_slice(&encode_event(None, &json));
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.done = true;
        if self.include_usage {
            let chunk = ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".to_owned(),
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(self.usage.token_usage()),
            };
            Self::emit(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

impl StreamMapper for AnthropicToOpenAiStream {
    fn map(&mut self, event: &SseEvent, out: &mut BytesMut) -> Mapped {
        let Some(data) = event.data.as_deref() else {
            return Mapped::Drop;
        };
        let Ok(parsed) = serde_json::from_str::<StreamEvent>(data) else {
            return Mapped::Drop;
        };
        match parsed {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.usage = message.usage;
                self.seen_usage = true;
                let delta = Delta {
                    role: Some("assistant".to_owned()),
                    content: Some(String::new()),
                    tool_calls: None,
                };
                Self::emit(out, &self.chunk(delta, None));
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block: ContentBlock::ToolUse { id, name, .. },
            } => {
                let tool = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                self.tool_index.insert(index, tool);
                let delta = Delta {
                    role: None,
                    content: None,
                    tool_calls: Some(vec![ToolCallDelta {
                        index: tool,
                        id: Some(id),
                        kind: Some("function".to_owned()),
                        function: Some(FunctionDelta {
                            name: Some(name),
                            arguments: Some(String::new()),
                        }),
                    }]),
                };
                Self::emit(out, &self.chunk(delta, None));
            }
            StreamEvent::ContentBlockStart {
                content_block: ContentBlock::Text { text },
                ..
            } if !text.is_empty() => {
                let delta = Delta {
                    content: Some(text),
                    ..Delta::default()
                };
                Self::emit(out, &self.chunk(delta, None));
            }
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => {
                    let delta = Delta {
                        content: Some(text),
                        ..Delta::default()
                    };
                    Self::emit(out, &self.chunk(delta, None));
                }
                BlockDelta::InputJsonDelta { partial_json } => {
                    let tool = self.tool_index.get(&index).copied().unwrap_or(0);
                    let delta = Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: tool,
                            id: None,
                            kind: None,
                            function: Some(FunctionDelta {
                                name: None,
                                arguments: Some(partial_json),
                            }),
                        }]),
                        ..Delta::default()
                    };
                    Self::emit(out, &self.chunk(delta, None));
                }
                _ => return Mapped::Drop,
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    merge_delta_usage(&mut self.usage, &usage);
                    self.final_usage = true;
                }
                self.finish = finish_reason(delta.stop_reason.as_deref());
                let finish = self.finish.clone().or_else(|| Some("stop".to_owned()));
                Self::emit(out, &self.chunk(Delta::default(), finish));
            }
            StreamEvent::MessageStop => self.end(out),
            StreamEvent::Error { error } => {
                self.failed = true;
                self.done = true;
                out.extend_from_slice(&openai_error_event(&error.kind, &error.message));
            }
            StreamEvent::ContentBlockStart { .. }
            | StreamEvent::ContentBlockStop { .. }
            | StreamEvent::Ping => return Mapped::Drop,
        }
        Mapped::Replaced
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if !self.failed {
            self.end(out);
        }
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.seen_usage.then(|| self.usage.token_usage())
    }

    fn usage_final(&self) -> bool {
        self.final_usage
    }

    fn upstream_failed(&self) -> bool {
        self.failed
    }

    fn completed(&self) -> bool {
        self.done && !self.failed
    }

    fn error_event(&self, code: &str, message: &str) -> Bytes {
        openai_error_event(code, message)
    }
}

#[cfg(test)]
mod tests;
