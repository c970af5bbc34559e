//! Tests of `messages_to_chat`.

use super::*;
use serde_json::json;

fn messages(value: serde_json::Value) -> MessagesRequest {
    serde_json::from_value(value).unwrap()
}

#[test]
fn translates_system_images_tools_and_limits() {
    let chat = request(
        messages(json!({
            "model": "claude-x", "max_tokens": 256, "stream": true,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "And tomorrow?"}
                ]}
            ],
            "tools": [{"name": "weather", "description": "Get weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["STOP"], "temperature": 0.3,
            "metadata": {"user_id": "u-7"}
        })),
        "gpt-up",
    );
    assert_eq!(chat.model, "gpt-up");
    assert_eq!(chat.max_tokens, Some(256));
    assert_eq!(chat.stream, Some(true));
    assert_eq!(
        chat.stream_options,
        Some(StreamOptions {
            include_usage: true
        })
    );
    assert_eq!(chat.messages[0].role, "system");
    match &chat.messages[1].content {
        Some(ChatContent::Parts(parts)) => assert!(
            matches!(&parts[1], ContentPart::ImageUrl { image_url } if image_url.url == "data:image/png;base64,AAAA")
        ),
        other => panic!("{other:?}"),
    }
    let assistant = &chat.messages[2];
    assert_eq!(
        assistant.tool_calls.as_ref().unwrap()[0].function.arguments,
        r#"{"city":"Paris"}"#
    );
    assert_eq!(chat.messages[3].role, "tool");
    assert_eq!(chat.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
    assert_eq!(
        chat.messages[3].content,
        Some(ChatContent::Text("sunny".into()))
    );
    assert_eq!(
        chat.messages[4].content,
        Some(ChatContent::Text("And tomorrow?".into()))
    );
    assert_eq!(
        chat.tool_choice,
        Some(ChatToolChoice::Mode("required".into()))
    );
    assert_eq!(chat.parallel_tool_calls, Some(false));
    assert_eq!(chat.stop, Some(Stop::Many(vec!["STOP".into()])));
    assert_eq!(chat.user.as_deref(), Some("u-7"));
    assert_eq!(chat.tools.unwrap()[0].function.name, "weather");
}

#[test]
fn translates_the_response() {
    let completion: ChatCompletion = serde_json::from_value(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-up",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Sure.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    }))
    .unwrap();
    let message = response(completion);
    assert_eq!(message.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        message.content[0],
        ContentBlock::Text {
            text: "Sure.".into()
        }
    );
    assert!(
        matches!(&message.content[1], ContentBlock::ToolUse { input, .. } if input["city"] == "Rome")
    );
    assert_eq!(
        (message.usage.input_tokens, message.usage.output_tokens),
        (9, 4)
    );
    assert_eq!(stop_reason(Some("length")).as_deref(), Some("max_tokens"));
    assert_eq!(stop_reason(Some("stop")).as_deref(), Some("end_turn"));
}

fn sse(data: &str) -> SseEvent {
    SseEvent {
        raw: encode_event(None, data),
        event: None,
        data: Some(data.to_owned()),
        id: None,
    }
}

fn events(out: &BytesMut) -> Vec<(String, serde_json::Value)> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines
                .next()
                .unwrap()
                .strip_prefix("event: ")
                .unwrap()
                .to_owned();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[test]
fn translates_a_text_and_tool_stream() {
    let mut mapper = OpenAiToAnthropicStream::new();
    let mut out = BytesMut::new();
    for data in [
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"weather","arguments":""}}]},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":\"Rome\"}"}}]},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
        "[DONE]",
    ] {
        mapper.map(&sse(data), &mut out);
    }
    let events = events(&out);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[2].1["delta"]["text"], "Hel");
    assert_eq!(events[5].1["index"], 1);
    assert_eq!(events[5].1["content_block"]["type"], "tool_use");
    assert_eq!(events[5].1["content_block"]["id"], "call_1");
    assert_eq!(events[6].1["delta"]["partial_json"], "{\"city\":\"Rome\"}");
    assert_eq!(events[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[8].1["usage"]["output_tokens"], 7);
    assert_eq!(mapper.usage().unwrap().total_tokens, 12);
}
