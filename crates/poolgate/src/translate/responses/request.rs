//! Responses request → Chat Completions request ([`to_chat`]) and → Anthropic Messages request
//! ([`to_messages`]: the Chat request, then [`chat_to_messages::request`], so both backends see
//! the same mapping of turns, tools and images). Field by field in docs/responses.md.

use serde::Serialize;
use serde_json::Value;

use super::ResponsesError;
use crate::providers::anthropic::MessagesRequest;
use crate::providers::openai_chat::{
    ChatContent, ChatMessage, ChatRequest, ChatTool, ChatToolChoice, ContentPart as ChatPart,
    FunctionCall as ChatFunctionCall, FunctionDef, ImageUrl, NamedFunction, NamedToolChoice,
    StreamOptions, ToolCall,
};
use crate::providers::responses::request::{
    ContentPart, FunctionOutput, Input, InputItem, MessageContent, MessageItem, ResponsesRequest,
    Role, TextFormat, Tool, ToolChoice, ToolChoiceObject,
};
use crate::providers::responses::tagged::Tagged;
use crate::providers::responses::Stateful;
use crate::translate::chat_to_messages;
use crate::translate::TranslateError;

/// A Chat Completions request plus the fields the shared [`ChatRequest`] does not carry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatOut {
    #[serde(flatten)]
    pub chat: ChatRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
}

/// Chat Completions `response_format`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JsonSchema {
    pub name: String,
    pub schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Refuses the stateful features no translation can serve.
pub fn refuse_stateful(request: &ResponsesRequest) -> Result<(), ResponsesError> {
    let present = |key: &str| request.extra.get(key).is_some_and(|v| !v.is_null());
    let feature = if request.previous_response_id.is_some() {
        Some(Stateful::PreviousResponse)
    } else if request.store == Some(true) {
        Some(Stateful::Store)
    } else if request.background == Some(true) {
        Some(Stateful::Background)
    } else if present("conversation") {
        Some(Stateful::Conversation)
    } else if present("prompt") {
        Some(Stateful::Prompt)
    } else {
        None
    };
    match feature {
        Some(feature) => Err(ResponsesError::Stateful { feature }),
        None => Ok(()),
    }
}

/// Responses request → Chat Completions request for an OpenAI-compatible backend without the
/// Responses API.
pub fn to_chat(
    request: &ResponsesRequest,
    upstream_model: &str,
) -> Result<ChatOut, ResponsesError> {
    refuse_stateful(request)?;
    let mut messages = Vec::new();
    if let Some(instructions) = request.instructions.as_ref().filter(|i| !i.is_empty()) {
        messages.push(text_message("system", instructions.clone()));
    }
    match &request.input {
        None => {}
        Some(Input::Text(text)) => messages.push(text_message("user", text.clone())),
        Some(Input::Items(items)) => {
            for (i, item) in items.iter().enumerate() {
                push_item(&mut messages, item, &format!("input[{i}]"))?;
            }
        }
    }
    let mut tools = chat_tools(request.tools.as_deref().unwrap_or_default())?;
    let tool_choice = match &request.tool_choice {
        None => None,
        Some(choice) => Some(chat_tool_choice(choice, &mut tools)?),
    };
    let stream = request.stream == Some(true);
    let chat = ChatRequest {
        model: upstream_model.to_owned(),
        messages,
        max_tokens: request.max_output_tokens,
        max_completion_tokens: None,
        temperature: request.temperature,
        top_p: request.top_p,
        stop: None,
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        parallel_tool_calls: request.parallel_tool_calls,
        user: request.user.clone(),
    };
    let response_format = match request.text.as_ref().and_then(|t| t.format.as_ref()) {
        None => None,
        Some(Tagged::Known(TextFormat::Text)) => Some(ResponseFormat::Text),
        Some(Tagged::Known(TextFormat::JsonObject)) => Some(ResponseFormat::JsonObject),
        Some(Tagged::Known(TextFormat::JsonSchema {
            name,
            schema,
            description,
            strict,
        })) => Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchema {
                name: name.clone(),
                schema: schema.clone(),
                description: description.clone(),
                strict: *strict,
            },
        }),
        Some(Tagged::Other { kind, .. }) => {
            return Err(ResponsesError::unsupported(
                "text.format",
                format!("text format `{kind}` is not supported by this model's backend"),
            ))
        }
    };
    Ok(ChatOut {
        chat,
        response_format,
        reasoning_effort: request.reasoning.as_ref().and_then(|r| r.effort.clone()),
    })
}

/// Responses request → Anthropic Messages request: [`to_chat`], then the Chat → Messages
/// mapping every OpenAI client already gets.
pub fn to_messages(
    request: &ResponsesRequest,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<MessagesRequest, ResponsesError> {
    let chat = to_chat(request, upstream_model)?.chat;
    chat_to_messages::request(chat, upstream_model, default_max_tokens).map_err(|error| {
        match error {
            // Chat paths (`messages`) are `input` items here.
            TranslateError::Unsupported(invalid) => {
                ResponsesError::unsupported("input", invalid.message)
            }
            other => ResponsesError::invalid("input", other.to_string()),
        }
    })
}

// === input ===

fn text_message(role: &str, text: String) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content: Some(ChatContent::Text(text)),
        ..ChatMessage::default()
    }
}

fn push_item(
    messages: &mut Vec<ChatMessage>,
    item: &Tagged<InputItem>,
    at: &str,
) -> Result<(), ResponsesError> {
    let item = item.known().map_err(|kind| {
        ResponsesError::unsupported(
            at,
            format!("input item type `{kind}` is not supported by this model's backend"),
        )
    })?;
    match item {
        InputItem::Message(message) => messages.push(chat_message(message, at)?),
        InputItem::FunctionCall(call) => {
            let tool_call = ToolCall {
                id: call.call_id.clone(),
                kind: "function".to_owned(),
                function: ChatFunctionCall {
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                },
            };
            // Calls made in one turn belong to that turn's assistant message.
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => {
                    last.tool_calls.get_or_insert_with(Vec::new).push(tool_call);
                }
                _ => messages.push(ChatMessage {
                    role: "assistant".to_owned(),
                    tool_calls: Some(vec![tool_call]),
                    ..ChatMessage::default()
                }),
            }
        }
        InputItem::FunctionCallOutput(output) => {
            let call_id = output.call_id.clone().ok_or_else(|| {
                ResponsesError::invalid(
                    format!("{at}.call_id"),
                    "a `function_call_output` needs the `call_id` of its call",
                )
            })?;
            let text = match &output.output {
                FunctionOutput::Text(text) => text.clone(),
                FunctionOutput::Parts(parts) => text_of(parts, &format!("{at}.output"))?,
            };
            messages.push(ChatMessage {
                role: "tool".to_owned(),
                content: Some(ChatContent::Text(text)),
                tool_call_id: Some(call_id),
                ..ChatMessage::default()
            });
        }
        // Reasoning belongs to the backend that produced it; another model cannot use it.
        InputItem::Reasoning(_) => {}
        InputItem::ItemReference { .. } => {
            return Err(ResponsesError::Stateful {
                feature: Stateful::ItemReference,
            })
        }
    }
    Ok(())
}

fn chat_message(message: &MessageItem, at: &str) -> Result<ChatMessage, ResponsesError> {
    let role = match message.role {
        // Chat-only servers rarely know `developer`; it means the same as `system` to them.
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let at = format!("{at}.content");
    let content = match &message.content {
        MessageContent::Text(text) => ChatContent::Text(text.clone()),
        MessageContent::Parts(parts) if role != "user" => ChatContent::Text(text_of(parts, &at)?),
        MessageContent::Parts(parts) => ChatContent::Parts(
            parts
                .iter()
                .enumerate()
                .map(|(j, part)| user_part(part, &format!("{at}[{j}]")))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(ChatMessage {
        role: role.to_owned(),
        content: Some(content),
        ..ChatMessage::default()
    })
}

fn user_part(part: &Tagged<ContentPart>, at: &str) -> Result<ChatPart, ResponsesError> {
    match part.known().map_err(|kind| unsupported_part(kind, at))? {
        ContentPart::InputText { text } | ContentPart::OutputText { text, .. } => {
            Ok(ChatPart::Text { text: text.clone() })
        }
        ContentPart::Refusal { refusal } => Ok(ChatPart::Text {
            text: refusal.clone(),
        }),
        ContentPart::InputImage {
            image_url: Some(url),
            detail,
            ..
        } => Ok(ChatPart::ImageUrl {
            image_url: ImageUrl {
                url: url.clone(),
                detail: detail.clone(),
            },
        }),
        ContentPart::InputImage { .. } => Err(ResponsesError::unsupported(
            at,
            "images by `file_id` need the Responses API's file storage; send `image_url` (an http(s) or data: URL)",
        )),
        ContentPart::InputFile { .. } => Err(unsupported_part("input_file", at)),
    }
}

/// The text of parts that may only be text (system and assistant turns, function outputs).
fn text_of(parts: &[Tagged<ContentPart>], at: &str) -> Result<String, ResponsesError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        match part.known().map_err(|kind| unsupported_part(kind, &at))? {
            ContentPart::InputText { text } | ContentPart::OutputText { text, .. } => {
                texts.push(text.as_str());
            }
            ContentPart::Refusal { refusal } => texts.push(refusal.as_str()),
            ContentPart::InputImage { .. } => return Err(unsupported_part("input_image", &at)),
            ContentPart::InputFile { .. } => return Err(unsupported_part("input_file", &at)),
        }
    }
    Ok(texts.join("\n"))
}

fn unsupported_part(kind: &str, at: &str) -> ResponsesError {
    ResponsesError::unsupported(
        at,
        format!("content part `{kind}` is not supported here by this model's backend"),
    )
}

// === tools ===

fn chat_tools(tools: &[Tagged<Tool>]) -> Result<Vec<ChatTool>, ResponsesError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| match tool {
            Tagged::Known(Tool::Function(function)) => Ok(ChatTool {
                kind: "function".to_owned(),
                function: FunctionDef {
                    name: function.name.clone(),
                    description: function.description.clone(),
                    parameters: function.parameters.clone(),
                },
            }),
            Tagged::Other { kind, .. } => Err(ResponsesError::unsupported(
                format!("tools[{i}]"),
                format!("tool type `{kind}` runs inside the Responses API; this model's backend cannot run it"),
            )),
        })
        .collect()
}

fn chat_tool_choice(
    choice: &ToolChoice,
    tools: &mut Vec<ChatTool>,
) -> Result<ChatToolChoice, ResponsesError> {
    let mode = |mode: &str| match mode {
        "none" | "auto" | "required" => Ok(ChatToolChoice::Mode(mode.to_owned())),
        other => Err(ResponsesError::invalid(
            "tool_choice",
            format!("`{other}` is not a tool_choice mode (`none`, `auto`, `required`)"),
        )),
    };
    match choice {
        ToolChoice::Mode(name) => mode(name),
        ToolChoice::Object(Tagged::Known(ToolChoiceObject::Function { name })) => {
            Ok(ChatToolChoice::Named(NamedToolChoice {
                kind: "function".to_owned(),
                function: NamedFunction { name: name.clone() },
            }))
        }
        ToolChoice::Object(Tagged::Known(ToolChoiceObject::AllowedTools {
            mode: allowed_mode,
            tools: allowed,
        })) => {
            // Chat Completions has no allowed list: offer only the allowed tools instead.
            let mut names = Vec::with_capacity(allowed.len());
            for (i, tool) in allowed.iter().enumerate() {
                match (tool.get("type").and_then(Value::as_str), tool.get("name")) {
                    (Some("function"), Some(Value::String(name))) => names.push(name.as_str()),
                    _ => {
                        return Err(ResponsesError::unsupported(
                            format!("tool_choice.tools[{i}]"),
                            "only function tools can be allowed on this model's backend",
                        ))
                    }
                }
            }
            tools.retain(|tool| names.contains(&tool.function.name.as_str()));
            match allowed_mode.as_str() {
                "auto" | "required" => mode(allowed_mode),
                other => Err(ResponsesError::invalid(
                    "tool_choice.mode",
                    format!("`{other}` is not an allowed_tools mode (`auto`, `required`)"),
                )),
            }
        }
        ToolChoice::Object(Tagged::Other { kind, .. }) => Err(ResponsesError::unsupported(
            "tool_choice",
            format!("tool_choice `{kind}` names a tool this model's backend cannot run"),
        )),
    }
}
