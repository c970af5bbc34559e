//! Answers of backends without the Responses API → a Response object: a `chat.completion`
//! ([`from_chat`]) or an Anthropic `message` ([`from_messages`]), built by the same
//! [`ResponseBuilder`] the streams use.

use bytes::BytesMut;

use super::builder::ResponseBuilder;
use super::{usage_from_anthropic, usage_from_chat, ChatUsageDetails, Finish};
use crate::providers::anthropic::{ContentBlock, MessagesResponse};
use crate::providers::openai_chat::ChatCompletion;
use crate::providers::responses::response::{RequestEcho, Response};

/// `chat.completion` → Response: `content` → a message with one `output_text` part, `refusal`
/// → a `refusal` part, `tool_calls` → `function_call` items, `finish_reason` → `status`.
pub fn from_chat(
    completion: ChatCompletion,
    details: ChatUsageDetails,
    echo: RequestEcho,
    response_id: String,
    created_at: i64,
) -> Response {
    let mut builder = ResponseBuilder::new(response_id, completion.model, created_at, echo, false);
    let out = &mut BytesMut::new();
    let choice = completion.choices.into_iter().next();
    let finish = Finish::from_chat(choice.as_ref().and_then(|c| c.finish_reason.as_deref()));
    if let Some(choice) = choice {
        let message = choice.message;
        if let Some(text) = message.content.filter(|t| !t.is_empty()) {
            builder.text(out, &text);
        }
        if let Some(refusal) = message.refusal.filter(|r| !r.is_empty()) {
            builder.refusal(out, &refusal);
        }
        for (key, call) in (0..).zip(message.tool_calls.unwrap_or_default()) {
            builder.start_function_call(out, key, &call.id, &call.function.name);
            builder.function_arguments(out, key, &call.function.arguments);
        }
    }
    let usage = completion
        .usage
        .map(|usage| usage_from_chat(&usage, details));
    builder.complete(out, finish, usage);
    builder.into_response()
}

/// The bytes of a `chat.completion` → Response; Err if they are not one.
pub fn from_chat_body(
    body: &[u8],
    echo: RequestEcho,
    response_id: String,
    created_at: i64,
) -> Result<Response, serde_json::Error> {
    let completion: ChatCompletion = serde_json::from_slice(body)?;
    Ok(from_chat(
        completion,
        ChatUsageDetails::of(body),
        echo,
        response_id,
        created_at,
    ))
}

/// Anthropic `message` → Response: consecutive `text` blocks → the parts of one message item,
/// `tool_use` → `function_call` items (`input` serialised as `arguments`), `thinking` →
/// `reasoning` items (as a summary), `stop_reason` → `status`, cache reads → `cached_tokens`.
pub fn from_messages(
    message: MessagesResponse,
    echo: RequestEcho,
    response_id: String,
    created_at: i64,
) -> Response {
    let mut builder = ResponseBuilder::new(response_id, message.model, created_at, echo, false);
    let out = &mut BytesMut::new();
    for (key, block) in (0..).zip(message.content) {
        match block {
            ContentBlock::Text { text } => {
                builder.text(out, &text);
                builder.close_text_part(out);
            }
            ContentBlock::ToolUse { id, name, input } => {
                builder.start_function_call(out, key, &id, &name);
                builder.function_arguments(out, key, &input.to_string());
                builder.close_keyed(out, key);
            }
            ContentBlock::Thinking { thinking, .. } => {
                builder.start_reasoning(out, key);
                builder.reasoning_text(out, key, &thinking);
                builder.close_keyed(out, key);
            }
            ContentBlock::RedactedThinking { .. }
            | ContentBlock::Image { .. }
            | ContentBlock::ToolResult { .. } => {}
        }
    }
    let finish = Finish::from_anthropic(message.stop_reason.as_deref());
    builder.complete(out, finish, Some(usage_from_anthropic(&message.usage)));
    builder.into_response()
}

/// The bytes of an Anthropic `message` → Response; Err if they are not one.
pub fn from_messages_body(
    body: &[u8],
    echo: RequestEcho,
    response_id: String,
    created_at: i64,
) -> Result<Response, serde_json::Error> {
    let message: MessagesResponse = serde_json::from_slice(body)?;
    Ok(from_messages(message, echo, response_id, created_at))
}
