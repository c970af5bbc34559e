use super::super::tests::{bpe_count, loaded};
use super::super::{byte_estimate, Encoding};
use super::*;

const O200K: TokenCounter = TokenCounter::Bpe(Encoding::O200kBase);

#[test]
fn openai_chat_chunks_add_up_their_deltas() {
    loaded(Encoding::O200kBase);
    let mut counter = StreamedOutputCounter::new(O200K);
    for data in [
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"}}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" there"}}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"!\n\"ok\""}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"lookup","arguments":""}}]}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":1}"}}]}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        "[DONE]",
        "not json at all",
    ] {
        counter.openai_chunk(data);
    }
    let expected: u64 = ["Hello", " there", "!\n\"ok\"", "lookup", r#"{"q":1}"#]
        .iter()
        .map(|text| bpe_count(Encoding::O200kBase, text))
        .sum();
    assert_eq!(
        counter.count(),
        TokenCount {
            tokens: expected,
            exact: true
        }
    );

    // Legacy completions chunks carry `text`.
    let mut legacy = StreamedOutputCounter::new(O200K);
    legacy.openai_chunk(r#"{"choices":[{"text":"Once upon","index":0}]}"#);
    assert_eq!(
        legacy.count().tokens,
        bpe_count(Encoding::O200kBase, "Once upon")
    );
}

#[test]
fn anthropic_events_by_bytes() {
    let mut counter = StreamedOutputCounter::new(TokenCounter::ByteEstimate);
    for data in [
        r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":10,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see."}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2lnbmF0dXJl"}}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi there"}}"#,
        r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"t","name":"wave","input":{}}}"#,
        r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"hand\":"}}"#,
        r#"{"type":"ping"}"#,
    ] {
        counter.anthropic_event(data);
    }
    let bytes = ["Let me see.", "Hi there", "wave", r#"{"hand":"#]
        .iter()
        .map(|text| text.len() as u64)
        .sum();
    assert_eq!(
        counter.count(),
        TokenCount {
            tokens: byte_estimate(bytes),
            exact: false
        }
    );
}

#[test]
fn responses_delta_events() {
    loaded(Encoding::O200kBase);
    let mut counter = StreamedOutputCounter::new(O200K);
    for data in [
        r#"{"type":"response.created","response":{"id":"r"}}"#,
        r#"{"type":"response.output_text.delta","item_id":"i","output_index":0,"content_index":0,"delta":"Why did"}"#,
        r#"{"type":"response.output_text.delta","item_id":"i","output_index":0,"content_index":0,"delta":" the chicken"}"#,
        r#"{"type":"response.function_call_arguments.delta","item_id":"f","output_index":1,"delta":"{\"a\":"}"#,
        r#"{"type":"response.output_text.done","item_id":"i","text":"Why did the chicken"}"#,
        r#"{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":9}}}"#,
    ] {
        counter.responses_event(data);
    }
    let expected: u64 = ["Why did", " the chicken", r#"{"a":"#]
        .iter()
        .map(|text| bpe_count(Encoding::O200kBase, text))
        .sum();
    assert_eq!(counter.count().tokens, expected);
}

#[test]
fn per_delta_counts_match_the_whole_text_for_token_aligned_deltas() {
    let text = "The gateway counts what the stream carried when the client left early.";
    let tokenizer = loaded(Encoding::O200kBase);
    let tokens = tokenizer.encode_ordinary(text);
    let mut counter = StreamedOutputCounter::new(O200K);
    for token in &tokens {
        let piece = tokenizer.decode(&[*token]).unwrap();
        counter.text(&piece);
    }
    assert_eq!(counter.count().tokens, tokens.len() as u64);
}
