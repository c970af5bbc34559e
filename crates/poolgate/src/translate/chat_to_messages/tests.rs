//! Tests of `chat_to_messages`.

use super::*;
use serde_json::json;

fn chat(value: serde_json::Value) -> ChatRequest {
    serde_json::from_value(value).unwrap()
}

#[test]
fn translates_system_turns_images_and_limits() {
    let request = request(
        chat(json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "No emojis."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "Thanks"}
            ],
            "temperature": 1.5, "top_p": 0.9, "stop": "END", "max_tokens": 50, "user": "u-1"
        })),
        "claude-up",
        4096,
    )
    .unwrap();
    assert_eq!(request.model, "claude-up");
    assert_eq!(request.system.unwrap().text(), "Be brief.\n\nNo emojis.");
    assert_eq!(request.max_tokens, 50);
    assert_eq!(request.temperature, Some(1.0));
    assert_eq!(request.stop_sequences, Some(vec!["END".to_owned()]));
    assert_eq!(request.metadata.unwrap().user_id.as_deref(), Some("u-1"));
    assert_eq!(request.messages.len(), 3);
    let blocks = request.messages[0].content.clone().into_blocks();
    assert!(
        matches!(&blocks[1], ContentBlock::Image { source: ImageSource::Base64 { media_type, .. } } if media_type == "image/png")
    );
    assert!(
        matches!(&blocks[2], ContentBlock::Image { source: ImageSource::Url { url } } if url == "https://example.com/cat.jpg")
    );
}

#[test]
fn default_max_tokens_applies() {
    let request = request(
        chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
        "up",
        777,
    )
    .unwrap();
    assert_eq!(request.max_tokens, 777);
    assert_eq!(request.stream, None);
}

#[test]
fn translates_tools_tool_calls_and_results() {
    let request = request(
        chat(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Get weather",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false
        })),
        "up",
        100,
    )
    .unwrap();
    assert_eq!(
        request.messages.len(),
        3,
        "the two tool results merge into one user turn"
    );
    let assistant = request.messages[1].content.clone().into_blocks();
    assert!(
        matches!(&assistant[0], ContentBlock::ToolUse { id, input, .. } if id == "call_1" && input["city"] == "Paris")
    );
    let results = request.messages[2].content.clone().into_blocks();
    assert_eq!(results.len(), 2);
    assert!(
        matches!(&results[1], ContentBlock::ToolResult { tool_use_id, .. } if tool_use_id == "call_2")
    );
    let tools = request.tools.unwrap();
    assert_eq!(
        tools[0].input_schema["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(
        request.tool_choice,
        Some(ToolChoice::Tool {
            name: "weather".into(),
            disable_parallel_tool_use: Some(true)
        })
    );
    let required = super::request(
        chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})),
        "up",
        1,
    )
    .unwrap();
    assert_eq!(
        required.tool_choice,
        Some(ToolChoice::Any {
            disable_parallel_tool_use: None
        })
    );
}

#[test]
fn tool_arguments_must_be_json() {
    let result = request(
        chat(
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}),
        ),
        "up",
        1,
    );
    match result {
        Err(TranslateError::Unsupported(error)) => {
            assert_eq!(error.code, Some("unsupported_for_backend"));
            assert_eq!(error.param.as_deref(), Some("messages"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn translates_the_response() {
    let message: MessagesResponse = serde_json::from_value(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
        "content": [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 8}
    }))
    .unwrap();
    let completion = response(message, 1700000000);
    let choice = &completion.choices[0];
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(choice.message.content.as_deref(), Some("Let me check."));
    let call = &choice.message.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.function.name, "weather");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&call.function.arguments).unwrap()["city"],
        "Paris"
    );
    assert_eq!(
        completion.usage,
        Some(TokenUsage {
            prompt_tokens: 20,
            completion_tokens: 8,
            total_tokens: 28,
            prompt_tokens_details: None,
            cache_write_tokens: None,
        })
    );
    assert_eq!(finish_reason(Some("max_tokens")).as_deref(), Some("length"));
    assert_eq!(finish_reason(Some("end_turn")).as_deref(), Some("stop"));
}

fn sse(name: &str, data: serde_json::Value) -> SseEvent {
    let data = data.to_string();
    SseEvent {
        raw: encode_event(Some(name), &data),
        event: Some(name.to_owned()),
        data: Some(data),
        id: None,
    }
}

fn chunks(out: &BytesMut) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn translates_a_text_and_tool_stream() {
    let mut mapper = AnthropicToOpenAiStream::new(true, 1);
    let mut out = BytesMut::new();
    for event in [
        sse(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse("ping", json!({"type": "ping"})),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ),
        sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        ),
        sse(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 17}}),
        ),
        sse("message_stop", json!({"type": "message_stop"})),
    ] {
        mapper.map(&event, &mut out);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks = chunks(&out);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
    assert_eq!(
        chunks[2]["choices"][0]["delta"]["tool_calls"][0]["id"],
        "toolu_9"
    );
    assert_eq!(
        chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "weather"
    );
    let args: String = chunks[3..5]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 17);
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], 11);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "msg_1"));
    assert_eq!(mapper.usage().unwrap().total_tokens, 28);
}

#[test]
fn an_error_event_becomes_an_openai_error() {
    let mut mapper = AnthropicToOpenAiStream::new(false, 1);
    let mut out = BytesMut::new();
    mapper.map(&sse("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})), &mut out);
    assert!(mapper.upstream_failed());
    let chunks = chunks(&out);
    assert_eq!(chunks[0]["error"]["message"], "Overloaded");
    let mut tail = BytesMut::new();
    mapper.finish(&mut tail);
    assert!(tail.is_empty(), "no [DONE] after an error");
}
