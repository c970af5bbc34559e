//! Tests of the Responses wire types and pass-through helpers.

use secrecy::SecretString;
use serde_json::json;

use super::request::*;
use super::response::*;
use super::tagged::Tagged;
use super::*;

#[test]
fn parses_every_input_item_shape_the_sdk_sends() {
    let request: ResponsesRequest = serde_json::from_value(json!({
        "model": "gpt-5",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use Celsius."}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "And this?"},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
                {"type": "input_file", "file_id": "file-1"}
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Need the tool."}], "encrypted_content": "gAAA"},
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "item_reference", "id": "msg_0"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"}
        ],
        "tools": [
            {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}, "strict": true},
            {"type": "web_search"}
        ],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 256, "temperature": 0.3, "top_p": 0.9, "stream": true,
        "store": false, "metadata": {"team": "a"}, "prompt_cache_key": "conv-1", "user": "u-1",
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "service_tier": "flex"
    }))
    .unwrap();
    let Some(Input::Items(items)) = &request.input else {
        panic!("items expected");
    };
    assert_eq!(items.len(), 9);
    assert!(matches!(
        &items[0],
        Tagged::Known(InputItem::Message(MessageItem { role: Role::User, content: MessageContent::Text(text), .. })) if text == "What is the weather in Paris?"
    ));
    let Tagged::Known(InputItem::Message(mixed)) = &items[2] else {
        panic!("message expected");
    };
    let MessageContent::Parts(parts) = &mixed.content else {
        panic!("parts expected");
    };
    assert!(
        matches!(&parts[1], Tagged::Known(ContentPart::InputImage { image_url: Some(url), .. }) if url == "https://example.com/a.png")
    );
    assert!(
        matches!(&items[3], Tagged::Known(InputItem::Reasoning(r)) if r.encrypted_content.as_deref() == Some("gAAA") && r.summary[0].text == "Need the tool.")
    );
    assert!(
        matches!(&items[5], Tagged::Known(InputItem::FunctionCall(c)) if c.call_id == "call_1" && c.arguments == "{\"city\":\"Paris\"}")
    );
    assert!(
        matches!(&items[6], Tagged::Known(InputItem::FunctionCallOutput(o)) if o.output == FunctionOutput::Text("18C".into()))
    );
    assert!(matches!(&items[7], Tagged::Known(InputItem::ItemReference { id }) if id == "msg_0"));
    assert_eq!(items[8].known().unwrap_err(), "web_search_call");

    let tools = request.tools.as_ref().unwrap();
    assert!(
        matches!(&tools[0], Tagged::Known(Tool::Function(f)) if f.name == "get_weather" && f.strict == Some(true))
    );
    assert_eq!(tools[1].known().unwrap_err(), "web_search");
    assert!(matches!(
        &request.tool_choice,
        Some(ToolChoice::Object(Tagged::Known(ToolChoiceObject::Function { name }))) if name == "get_weather"
    ));
    assert_eq!(request.extra["service_tier"], "flex");
    assert!(matches!(
        request.text.as_ref().unwrap().format,
        Some(Tagged::Known(TextFormat::JsonSchema { .. }))
    ));
    assert_eq!(
        request.reasoning.as_ref().unwrap().effort.as_deref(),
        Some("low")
    );
}

#[test]
fn a_string_input_and_mode_tool_choice_parse() {
    let request: ResponsesRequest =
        serde_json::from_value(json!({"model": "m", "input": "Hello", "tool_choice": "required"}))
            .unwrap();
    assert_eq!(request.input, Some(Input::Text("Hello".into())));
    assert_eq!(
        request.tool_choice,
        Some(ToolChoice::Mode("required".into()))
    );
}

#[test]
fn response_object_serializes_the_fields_the_sdk_requires() {
    let response = Response {
        id: "resp_1".into(),
        object: "response".into(),
        created_at: 1_700_000_000,
        status: ResponseStatus::Completed,
        error: None,
        incomplete_details: None,
        model: "gpt-5".into(),
        output: vec![
            Tagged::Known(OutputItem::Message(OutputMessage {
                id: "msg_1".into(),
                role: "assistant".into(),
                status: ItemStatus::Completed,
                content: vec![OutputContent::text("Hi")],
            })),
            Tagged::Known(OutputItem::FunctionCall(FunctionCall {
                id: Some("fc_1".into()),
                call_id: "call_1".into(),
                name: "f".into(),
                arguments: "{}".into(),
                status: Some(ItemStatus::Completed),
            })),
        ],
        usage: Some(ResponseUsage {
            input_tokens: 10,
            input_tokens_details: InputTokensDetails {
                cached_tokens: 4,
                cache_write_tokens: 0,
            },
            output_tokens: 3,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 1,
            },
            total_tokens: 13,
        }),
        previous_response_id: None,
        echo: RequestEcho::default(),
    };
    let value = serde_json::to_value(&response).unwrap();
    assert_eq!(
        value,
        json!({
            "id": "resp_1", "object": "response", "created_at": 1_700_000_000, "status": "completed",
            "error": null, "incomplete_details": null, "model": "gpt-5",
            "output": [
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}", "status": "completed"}
            ],
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                      "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 13},
            "previous_response_id": null,
            "instructions": null, "max_output_tokens": null, "parallel_tool_calls": true,
            "temperature": null, "top_p": null, "tool_choice": "auto", "tools": [], "metadata": {},
            "store": false, "background": false
        })
    );
    let back: Response = serde_json::from_value(value).unwrap();
    assert_eq!(back, response);
    assert_eq!(response.usage.unwrap().token_usage().total_tokens, 13);
}

#[test]
fn stream_events_carry_type_and_sequence_number() {
    let event = SequencedEvent {
        sequence_number: 4,
        event: StreamEvent::OutputTextDelta {
            item_id: "msg_1".into(),
            output_index: 0,
            content_index: 0,
            delta: "Hi".into(),
            logprobs: Vec::new(),
        },
    };
    assert_eq!(event.event.name(), "response.output_text.delta");
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
               "content_index": 0, "delta": "Hi", "logprobs": [], "sequence_number": 4})
    );
    let error: SequencedEvent = serde_json::from_value(
        json!({"type": "error", "code": "server_error", "message": "boom", "param": null, "sequence_number": 9}),
    )
    .unwrap();
    assert_eq!(error.sequence_number, 9);
    assert_eq!(error.event.name(), "error");
    assert!(!error.event.is_terminal());
}

#[test]
fn envelope_splices_the_model_and_keeps_every_other_field() {
    let body = br#"{"model":"gpt","input":[{"role":"user","content":"hi"}],"stream":true,"store":false,
        "previous_response_id":"resp_a","prompt_cache_key":"k","user":"u","reasoning":{"effort":"high"},"future_field":[1,2]}"#;
    let envelope = ResponsesEnvelope::parse(body).unwrap();
    assert_eq!(envelope.model, "gpt");
    assert!(envelope.stream());
    assert_eq!(
        envelope.stateful_features(),
        vec![Stateful::PreviousResponse]
    );
    let raw = bytes::Bytes::from_static(body);
    let spliced = envelope.upstream_body(&raw, "gpt-5-2025").unwrap();
    let out: serde_json::Value = serde_json::from_slice(&spliced.to_vec()).unwrap();
    // Slices of the client's body around the new model id: the rest is sent byte for byte.
    let text = String::from_utf8(spliced.to_vec()).unwrap();
    assert_eq!(
        text,
        std::str::from_utf8(body)
            .unwrap()
            .replacen("\"gpt\"", "\"gpt-5-2025\"", 1)
    );
    let mut expected: serde_json::Value = serde_json::from_slice(body).unwrap();
    expected["model"] = json!("gpt-5-2025");
    assert_eq!(out, expected);
}

#[test]
fn envelope_finds_every_stateful_feature() {
    let envelope = ResponsesEnvelope::parse(
        br#"{"model":"m","store":true,"background":true,"conversation":"conv_1","prompt":{"id":"pmpt_1"}}"#,
    )
    .unwrap();
    assert_eq!(
        envelope.stateful_features(),
        vec![
            Stateful::Store,
            Stateful::Background,
            Stateful::Conversation,
            Stateful::Prompt
        ]
    );
    let plain =
        ResponsesEnvelope::parse(br#"{"model":"m","store":false,"conversation":null}"#).unwrap();
    assert!(plain.stateful_features().is_empty());
}

#[test]
fn envelope_errors_name_the_field() {
    for (body, param, code) in [
        (
            &br#"{"input":"hi"}"#[..],
            Some("model"),
            "missing_required_parameter",
        ),
        (
            br#"{"model":""}"#,
            Some("model"),
            "missing_required_parameter",
        ),
        (
            br#"{"model":"m","model":"n"}"#,
            Some("model"),
            "duplicate_parameter",
        ),
        (br#"{"model":7}"#, Some("model"), "invalid_value"),
        (
            br#"{"model":"m","stream":"yes"}"#,
            Some("stream"),
            "invalid_value",
        ),
        (
            br#"{"model":"m","previous_response_id":5}"#,
            Some("previous_response_id"),
            "invalid_value",
        ),
        (br#"not json"#, None, "invalid_value"),
        // Cut short inside an object: still no parameter (the path there is a guess, `?`).
        (br#"{"#, None, "invalid_value"),
        (br#"{"model":"m","#, None, "invalid_value"),
    ] {
        match ResponsesEnvelope::parse(body) {
            Err(ResponsesWireError::InvalidBody {
                param: got,
                message,
                code: got_code,
            }) => {
                assert_eq!(got.as_deref(), param, "{message}");
                assert_eq!(got_code, code, "{message}");
                if body.first() != Some(&b'{') || !body.ends_with(b"}") {
                    assert!(message.contains("not valid JSON"), "{message}");
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn response_ids_are_checked_before_they_reach_a_url() {
    assert!(ResponseId::parse("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b").is_ok());
    for bad in [
        "",
        "../admin",
        "resp_1/cancel",
        "resp 1",
        "resp_1?x=1",
        &"a".repeat(257),
    ] {
        assert!(ResponseId::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn calls_map_to_methods_and_paths() {
    let id = ResponseId::parse("resp_1").unwrap();
    let key = SecretString::from("sk-test");
    let cases = [
        (ResponsesCall::Create, "POST", "/responses"),
        (
            ResponsesCall::Retrieve(id.clone()),
            "GET",
            "/responses/resp_1",
        ),
        (
            ResponsesCall::Delete(id.clone()),
            "DELETE",
            "/responses/resp_1",
        ),
        (
            ResponsesCall::Cancel(id.clone()),
            "POST",
            "/responses/resp_1/cancel",
        ),
        (
            ResponsesCall::InputItems(id.clone()),
            "GET",
            "/responses/resp_1/input_items",
        ),
    ];
    for (call, method, path) in cases {
        let target = crate::providers::target::UpstreamTarget::new(
            crate::domain::ApiKind::Openai,
            "http://up/v1",
            &key,
        );
        let request = build_request(
            &target,
            &call,
            crate::providers::body::SplicedBody::whole(bytes::Bytes::new()),
        )
        .unwrap();
        assert_eq!(request.method.as_str(), method);
        assert_eq!(request.url, format!("http://up/v1{path}"));
        assert_eq!(request.headers["authorization"], "Bearer sk-test");
        assert!(request.headers["authorization"].is_sensitive());
        assert_eq!(call.response_id().is_some(), path != "/responses");
    }
}

#[test]
fn reads_id_and_usage_from_bodies_and_lifecycle_events() {
    let body = br#"{"id":"resp_9","object":"response","output":[],"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":8},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":17}}"#;
    let summary = summary_of_body(body).unwrap();
    assert_eq!(summary.id.as_deref(), Some("resp_9"));
    let usage = summary.usage.unwrap();
    assert_eq!(usage.input_tokens_details.cached_tokens, 8);
    assert_eq!(usage.token_usage().prompt_tokens, 12);

    let completed = r#"{"type":"response.completed","sequence_number":31,"response":{"id":"resp_9","status":"completed","usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}}"#;
    let summary = summary_of_event(completed).unwrap();
    assert_eq!(summary.usage.unwrap().total_tokens, 3);
    assert_eq!(event_type(completed), Some("response.completed"));
    assert_eq!(sequence_number(completed), Some(31));
    assert_eq!(
        sequence_number(r#"{"type":"x","sequence_number" : 7}"#),
        Some(7)
    );
    assert_eq!(
        sequence_number(r#"{"type":"x","delta":"\"sequence_number\":3"}"#),
        None
    );
    assert_eq!(event_type("{}"), None);
}
