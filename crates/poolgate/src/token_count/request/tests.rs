use super::super::tests::{bpe_count, loaded};
use super::super::Encoding;
use super::*;

const O200K: TokenCounter = TokenCounter::Bpe(Encoding::O200kBase);
const CL100K: TokenCounter = TokenCounter::Bpe(Encoding::Cl100kBase);

fn estimate(format: WireFormat, body: &str, counter: TokenCounter) -> RequestEstimate {
    if let Some(encoding) = counter.encoding() {
        loaded(encoding);
    }
    estimate_request(
        format,
        body.as_bytes(),
        counter,
        &EstimateSettings::default(),
    )
}

/// The example of OpenAI's "How to count tokens with tiktoken" cookbook, whose prompt the API
/// reported as 129 tokens for gpt-3.5-turbo / gpt-4 (cl100k_base) and 124 for gpt-4o /
/// gpt-4o-mini (o200k_base).
const COOKBOOK: &str = r#"{"model": "gpt-4o", "messages": [
  {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
  {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
  {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
  {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
  {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
  {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
]}"#;

#[test]
fn chat_matches_the_prompt_tokens_openai_reports() {
    let o200k = estimate(WireFormat::ChatCompletions, COOKBOOK, O200K);
    assert_eq!(
        o200k.prompt,
        TokenCount {
            tokens: 124,
            exact: true
        }
    );
    let cl100k = estimate(WireFormat::ChatCompletions, COOKBOOK, CL100K);
    assert_eq!(cl100k.prompt.tokens, 129);
    // No max_tokens: the default reserve.
    assert_eq!(o200k.declared_output, None);
    assert_eq!(o200k.output_reserve, 1_024);
    assert_eq!(o200k.total(), 124 + 1_024);
}

#[test]
fn escaped_strings_count_as_their_text() {
    let escaped = r#"{"messages": [{"role": "user", "content": "line one\nsaid \"hi\" \u00e9"}]}"#;
    let plain = "line one\nsaid \"hi\" é";
    let expected = REPLY_PRIMING
        + TOKENS_PER_MESSAGE
        + bpe_count(Encoding::O200kBase, "user")
        + bpe_count(Encoding::O200kBase, plain);
    assert_eq!(
        estimate(WireFormat::ChatCompletions, escaped, O200K)
            .prompt
            .tokens,
        expected
    );
}

#[test]
fn chat_parts_tools_and_images() {
    let body = r#"{
      "messages": [
        {"role": "user", "content": [
          {"type": "text", "text": "What is in this picture?"},
          {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
          {"type": "image_url", "image_url": "https://x/z.png"}
        ]},
        {"role": "assistant", "content": null,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"}
      ],
      "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
      "max_tokens": 50, "max_completion_tokens": 70, "n": 2
    }"#;
    let count = |text: &str| bpe_count(Encoding::O200kBase, text);
    let tools = r#"[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]"#;
    let expected = REPLY_PRIMING
        + 3 * TOKENS_PER_MESSAGE
        + count("user")
        + count("What is in this picture?")
        + OPENAI_IMAGE_LOW
        + OPENAI_IMAGE_DEFAULT
        + count("assistant")
        + count("lookup")
        + count(r#"{"q":"cat"}"#)
        + TOKENS_PER_MESSAGE
        + count("tool")
        + count("a cat")
        + count(tools);
    let estimate = estimate(WireFormat::ChatCompletions, body, O200K);
    assert_eq!(
        estimate.prompt,
        TokenCount {
            tokens: expected,
            exact: false
        }
    );
    // max_completion_tokens wins over max_tokens, times n.
    assert_eq!(estimate.declared_output, Some(140));
    assert_eq!(estimate.output_reserve, 140);
}

#[test]
fn output_reserve_rules() {
    let settings = EstimateSettings {
        default_output_tokens: 100,
        max_output_reserve: 5_000,
        exact_budget_bytes: 1024,
    };
    let reserve = |format, body: &str| {
        let estimate = estimate_request(
            format,
            body.as_bytes(),
            TokenCounter::ByteEstimate,
            &settings,
        );
        (estimate.declared_output, estimate.output_reserve)
    };
    assert_eq!(
        reserve(WireFormat::ChatCompletions, r#"{"messages": []}"#),
        (None, 100)
    );
    assert_eq!(
        reserve(WireFormat::ChatCompletions, r#"{"max_tokens": 9000}"#),
        (Some(9_000), 5_000),
        "capped"
    );
    assert_eq!(
        reserve(
            WireFormat::Messages,
            r#"{"max_tokens": 64000, "messages": []}"#
        ),
        (Some(64_000), 5_000)
    );
    assert_eq!(
        reserve(
            WireFormat::Responses,
            r#"{"input": "hi", "max_output_tokens": 256}"#
        ),
        (Some(256), 256)
    );
    assert_eq!(
        reserve(WireFormat::Completions, r#"{"prompt": "Say this"}"#),
        (Some(16), 16),
        "the completions API's own default"
    );
    assert_eq!(
        reserve(
            WireFormat::Completions,
            r#"{"prompt": "x", "max_tokens": 30, "n": 3}"#
        ),
        (Some(90), 90)
    );
    assert_eq!(
        reserve(WireFormat::Embeddings, r#"{"input": "x"}"#),
        (Some(0), 0)
    );
}

#[test]
fn anthropic_messages_by_bytes() {
    let body = r#"{
      "model": "claude-sonnet-4-5", "max_tokens": 1024,
      "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
      "messages": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": [
          {"type": "thinking", "thinking": "Greet back.", "signature": "c2ln"},
          {"type": "tool_use", "id": "t1", "name": "wave", "input": {"hand": "left"}}
        ]},
        {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "waved"}]},
          {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
        ]}
      ],
      "tools": [{"name": "wave", "input_schema": {"type": "object"}}]
    }"#;
    // Bytes of the text that is counted, all estimated together at the end:
    let texts = [
        "Be brief.",
        "user",
        "Hello",
        "assistant",
        "Greet back.",
        "wave",
        r#"{"hand": "left"}"#,
        "user",
        "waved",
        r#"[{"name": "wave", "input_schema": {"type": "object"}}]"#,
    ];
    let bytes: u64 = texts.iter().map(|text| text.len() as u64).sum();
    let expected = byte_estimate(bytes)
        + REPLY_PRIMING
        + 4 * TOKENS_PER_MESSAGE
        + ANTHROPIC_IMAGE
        + ANTHROPIC_TOOL_PROMPT;
    let estimate = estimate(WireFormat::Messages, body, TokenCounter::ByteEstimate);
    assert_eq!(
        estimate.prompt,
        TokenCount {
            tokens: expected,
            exact: false
        }
    );
    assert_eq!(estimate.declared_output, Some(1_024));
}

#[test]
fn responses_input_string_and_items() {
    let count = |text: &str| bpe_count(Encoding::O200kBase, text);
    let simple = estimate(
        WireFormat::Responses,
        r#"{"model": "gpt-5", "instructions": "Be terse.", "input": "Tell me a joke."}"#,
        O200K,
    );
    assert_eq!(
        simple.prompt,
        TokenCount {
            tokens: REPLY_PRIMING
                + 2 * TOKENS_PER_MESSAGE
                + count("system")
                + count("Be terse.")
                + count("user")
                + count("Tell me a joke."),
            exact: true
        }
    );
    let items = estimate(
        WireFormat::Responses,
        r#"{"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                         {"type": "input_image", "image_url": "https://x", "detail": "low"}]},
            {"type": "function_call", "call_id": "c", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "sunny"}
          ], "max_output_tokens": 64}"#,
        O200K,
    );
    // Three items, each with the per-message overhead; the image as at `detail: low`.
    let expected = REPLY_PRIMING
        + 3 * TOKENS_PER_MESSAGE
        + count("user")
        + count("Weather?")
        + OPENAI_IMAGE_LOW
        + count("weather")
        + count("{}")
        + count("sunny");
    assert_eq!(
        items.prompt,
        TokenCount {
            tokens: expected,
            exact: false
        }
    );
    assert_eq!(items.output_reserve, 64);
}

#[test]
fn completions_and_embeddings_prompts() {
    let count = |text: &str| bpe_count(Encoding::Cl100kBase, text);
    let strings = estimate(
        WireFormat::Embeddings,
        r#"{"model": "text-embedding-3-small", "input": ["first text", "second"]}"#,
        CL100K,
    );
    assert_eq!(strings.prompt.tokens, count("first text") + count("second"));
    assert!(strings.prompt.exact);
    let ids = estimate(
        WireFormat::Embeddings,
        r#"{"input": [[1, 2, 3], [4, 5]]}"#,
        CL100K,
    );
    assert_eq!(ids.prompt.tokens, 5, "one token per id");
    let flat_ids = estimate(WireFormat::Completions, r#"{"prompt": [7, 8, 9]}"#, CL100K);
    assert_eq!(flat_ids.prompt.tokens, 3);
}

#[test]
fn a_body_that_is_not_the_expected_json_is_estimated_from_its_size() {
    for body in [
        "not json",
        r#"{"messages": "oops"}"#,
        r#"{"messages": [{"role": "user", "content": 42}]}"#,
        r#"{"max_tokens": -1}"#,
    ] {
        let estimate = estimate(WireFormat::ChatCompletions, body, O200K);
        assert_eq!(
            estimate.prompt,
            TokenCount {
                tokens: byte_estimate(body.len() as u64),
                exact: false
            },
            "{body}"
        );
        assert_eq!(estimate.declared_output, None);
        assert_eq!(estimate.output_reserve, 1_024);
    }
}
