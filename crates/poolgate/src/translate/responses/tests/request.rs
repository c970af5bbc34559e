//! Responses request → Chat Completions and → Anthropic Messages, field by field.

use serde_json::json;

use super::parse_request as parse;
use crate::providers::responses::Stateful;
use crate::translate::responses::request::{to_chat, to_messages};
use crate::translate::responses::ResponsesError;

fn chat_json(value: serde_json::Value) -> serde_json::Value {
    serde_json::to_value(to_chat(&parse(value), "up-model").unwrap()).unwrap()
}

#[test]
fn instructions_and_string_input_become_system_and_user() {
    let chat = chat_json(json!({"model": "m", "instructions": "Be brief.", "input": "Hello"}));
    assert_eq!(
        chat,
        json!({
            "model": "up-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}
            ]
        })
    );
}

#[test]
fn every_scalar_field_maps() {
    let chat = chat_json(json!({
        "model": "m", "input": "x", "max_output_tokens": 300, "temperature": 1.5, "top_p": 0.5,
        "parallel_tool_calls": false, "user": "u-1", "stream": true,
        "reasoning": {"effort": "high", "summary": "auto"},
        "store": false, "metadata": {"a": "b"}, "prompt_cache_key": "k", "truncation": "auto",
        "include": ["reasoning.encrypted_content"], "service_tier": "flex"
    }));
    assert_eq!(chat["max_tokens"], 300);
    assert_eq!(chat["temperature"], 1.5);
    assert_eq!(chat["top_p"], 0.5);
    assert_eq!(chat["parallel_tool_calls"], false);
    assert_eq!(chat["user"], "u-1");
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    assert_eq!(chat["reasoning_effort"], "high");
    for dropped in [
        "max_output_tokens",
        "store",
        "metadata",
        "prompt_cache_key",
        "truncation",
        "include",
        "service_tier",
        "reasoning",
    ] {
        assert!(
            chat.get(dropped).is_none(),
            "`{dropped}` reached the chat request"
        );
    }
}

#[test]
fn items_become_chat_turns() {
    let chat = chat_json(json!({"model": "m", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "Use Celsius."}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Weather here?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "low"}
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
        {"role": "assistant", "content": "It is 18C at noon."},
        {"role": "system", "content": "Stay short."},
        {"role": "user", "content": "Thanks"}
    ]}));
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "system", "content": "Use Celsius."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"}}
            ]},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}
            ]},
            {"role": "tool", "content": "18C", "tool_call_id": "call_1"},
            {"role": "tool", "content": "noon", "tool_call_id": "call_2"},
            {"role": "assistant", "content": "It is 18C at noon."},
            {"role": "system", "content": "Stay short."},
            {"role": "user", "content": "Thanks"}
        ])
    );
}

#[test]
fn a_call_without_assistant_text_gets_its_own_assistant_turn() {
    let chat = chat_json(json!({"model": "m", "input": [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "c", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "sunny"}
    ]}));
    assert_eq!(chat["messages"][1]["role"], "assistant");
    assert!(chat["messages"][1].get("content").is_none());
    assert_eq!(chat["messages"][1]["tool_calls"][0]["id"], "c");
    assert_eq!(chat["messages"][2]["tool_call_id"], "c");
}

#[test]
fn function_tools_and_every_tool_choice_map() {
    let tools = json!([
        {"type": "function", "name": "weather", "description": "Weather", "parameters": {"type": "object"}, "strict": true},
        {"type": "function", "name": "time", "parameters": null, "strict": null}
    ]);
    let base = |choice: serde_json::Value| {
        chat_json(json!({"model": "m", "input": "x", "tools": tools, "tool_choice": choice}))
    };
    let chat = base(json!("auto"));
    assert_eq!(
        chat["tools"],
        json!([
            {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "time"}}
        ])
    );
    assert_eq!(chat["tool_choice"], "auto");
    assert_eq!(base(json!("none"))["tool_choice"], "none");
    assert_eq!(base(json!("required"))["tool_choice"], "required");
    assert_eq!(
        base(json!({"type": "function", "name": "time"}))["tool_choice"],
        json!({"type": "function", "function": {"name": "time"}})
    );
    let allowed = base(json!({"type": "allowed_tools", "mode": "required",
                              "tools": [{"type": "function", "name": "time"}]}));
    assert_eq!(allowed["tool_choice"], "required");
    assert_eq!(allowed["tools"].as_array().unwrap().len(), 1);
    assert_eq!(allowed["tools"][0]["function"]["name"], "time");
}

#[test]
fn text_formats_become_response_format() {
    let format = |format: serde_json::Value| {
        chat_json(
            json!({"model": "m", "input": "x", "text": {"format": format, "verbosity": "low"}}),
        )["response_format"]
            .clone()
    };
    assert_eq!(format(json!({"type": "text"})), json!({"type": "text"}));
    assert_eq!(
        format(json!({"type": "json_object"})),
        json!({"type": "json_object"})
    );
    assert_eq!(
        format(
            json!({"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true, "description": "d"})
        ),
        json!({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "description": "d", "strict": true}})
    );
}

#[test]
fn stateful_features_are_refused_naming_the_field() {
    let cases = [
        (
            json!({"previous_response_id": "resp_1"}),
            Stateful::PreviousResponse,
        ),
        (json!({"store": true}), Stateful::Store),
        (json!({"background": true}), Stateful::Background),
        (json!({"conversation": "conv_1"}), Stateful::Conversation),
        (json!({"prompt": {"id": "pmpt_1"}}), Stateful::Prompt),
        (
            json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
            Stateful::ItemReference,
        ),
    ];
    for (fields, feature) in cases {
        let mut body = json!({"model": "m", "input": "x"});
        for (key, value) in fields.as_object().unwrap() {
            body[key] = value.clone();
        }
        let error = to_chat(&parse(body.clone()), "u").unwrap_err();
        assert_eq!(error, ResponsesError::Stateful { feature }, "{body}");
        assert_eq!(error.param(), feature.param());
        assert_eq!(error.code(), "stateful_feature_unsupported");
        assert!(error
            .to_string()
            .contains("needs a backend with the Responses API"));
        assert_eq!(to_messages(&parse(body), "u", 1024).unwrap_err(), error);
    }
    // `store: false` and an absent `store` are fine.
    assert!(to_chat(
        &parse(json!({"model": "m", "input": "x", "store": false})),
        "u"
    )
    .is_ok());
}

#[test]
fn untranslatable_content_is_refused_with_its_path() {
    let cases = [
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_file", "file_id": "f"}]}]}),
            "input[0].content[1]",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x/a.png"}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"input": [{"type": "web_search_call", "id": "ws", "status": "completed"}]}),
            "input[0]",
        ),
        (
            json!({"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}),
            "tools[1]",
        ),
        (
            json!({"tool_choice": {"type": "file_search"}}),
            "tool_choice",
        ),
        (
            json!({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "mcp", "server_label": "x"}]}}),
            "tool_choice.tools[0]",
        ),
        (
            json!({"text": {"format": {"type": "grammar"}}}),
            "text.format",
        ),
    ];
    for (fields, param) in cases {
        let mut body = json!({"model": "m", "input": "x"});
        for (key, value) in fields.as_object().unwrap() {
            body[key] = value.clone();
        }
        let error = to_chat(&parse(body.clone()), "u").unwrap_err();
        assert!(
            matches!(error, ResponsesError::Unsupported { .. }),
            "{body}: {error:?}"
        );
        assert_eq!(error.param(), param, "{body}");
        assert_eq!(error.code(), "unsupported_for_backend");
    }
}

#[test]
fn invalid_values_are_refused() {
    let missing_call_id =
        json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]});
    let error = to_chat(&parse(missing_call_id), "u").unwrap_err();
    assert_eq!(error.param(), "input[0].call_id");
    assert_eq!(error.code(), "invalid_value");
    let bad_mode = json!({"model": "m", "input": "x", "tool_choice": "sometimes"});
    assert_eq!(
        to_chat(&parse(bad_mode), "u").unwrap_err().param(),
        "tool_choice"
    );
}

#[test]
fn to_messages_goes_through_the_chat_mapping() {
    let messages = to_messages(
        &parse(json!({"model": "claude", "instructions": "Be brief.", "user": "u-1",
            "max_output_tokens": 100, "temperature": 1.7, "tool_choice": "required",
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "hm"}]},
                {"type": "function_call", "call_id": "toolu_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "toolu_1", "output": "sunny"},
                {"role": "user", "content": "And tomorrow?"}
            ]})),
        "claude-sonnet-4-5",
        4096,
    )
    .unwrap();
    let value = serde_json::to_value(&messages).unwrap();
    assert_eq!(
        value,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": "Be brief.",
            "temperature": 1.0,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "And tomorrow?"}
                ]}
            ],
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "metadata": {"user_id": "u-1"}
        })
    );
    let default = to_messages(&parse(json!({"model": "c", "input": "hi"})), "c", 4096).unwrap();
    assert_eq!(default.max_tokens, 4096);
}

#[test]
fn to_messages_reports_bad_arguments_on_input() {
    let error = to_messages(
        &parse(json!({"model": "c", "input": [
            {"type": "function_call", "call_id": "t", "name": "f", "arguments": "{not json"}
        ]})),
        "c",
        4096,
    )
    .unwrap_err();
    assert_eq!(error.param(), "input");
    assert!(error.to_string().contains("not JSON"), "{error}");
}
