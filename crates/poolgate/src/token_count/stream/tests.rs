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

// === the fast chunk reader against the serde parse ===

/// The texts `openai_texts` yields, and whether the fast reader answered.
fn texts_both_ways(data: &str) -> (Vec<String>, Vec<String>, bool) {
    let mut fast = Vec::new();
    let answered = openai_chunk::openai_texts(data, |text| fast.push(text.to_owned())).is_ok();
    let mut public = Vec::new();
    openai_texts(data, |text| public.push(text.to_owned()));
    let mut parsed = Vec::new();
    if data.contains("\"choices\"") {
        openai_texts_parsed(data, |text| parsed.push(text.to_owned()));
    }
    if answered {
        assert_eq!(fast, public, "{data}");
    }
    (public, parsed, answered)
}

#[test]
fn the_fast_chunk_reader_yields_what_the_parse_yields() {
    // (chunk, the fast reader answers it itself)
    let cases = [
        (
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1732950000,"model":"gpt-4o","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            true,
        ),
        (
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null}}]}"#,
            true,
        ),
        (
            " {\n\"choices\" : [ { \"delta\" : { \"content\" : \"a\" } } ] }\r\n\t",
            true,
        ),
        // Escapes (resolved), unicode as UTF-8.
        (
            r#"{"choices":[{"delta":{"content":"line\nnext \"q\" back\\slash \/ \t\r\b\f é 😀"}}]}"#,
            true,
        ),
        // Key order inside a choice and a delta is not serde's yielding order.
        (
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":1}","name":"f"}}],"reasoning_content":"think","refusal":"no","content":"c"},"text":"t"}]}"#,
            true,
        ),
        // Several choices, several tool calls, a call without a function, nulls.
        (
            r#"{"choices":[{"index":1,"delta":{"content":"second"}},{"index":0,"delta":{"content":"first","tool_calls":[{"index":0,"function":{"name":"a","arguments":null}},{"index":1},{"index":2,"function":null},{"index":3,"function":{"name":null,"arguments":"x"}}]}}]}"#,
            true,
        ),
        (
            r#"{"choices":[{"text":"Once upon","index":0,"logprobs":{"tokens":["a"],"top_logprobs":[{"a":-0.5e-3}]},"finish_reason":null}]}"#,
            true,
        ),
        (
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            true,
        ),
        (
            r#"{"choices":[{"delta":null}],"x":[1,-0,2.5,1E9,-1e-7,true,false,null,{},[]]}"#,
            true,
        ),
        (r#"{"choices":[{"delta":{"tool_calls":null}}]}"#, true),
        // Not JSON: no text either way.
        (r#"{"choices":[{"delta":{"content":"cut"#, false),
        (r#"{"choices":[{"delta":{"content":"x"}}]} trailing"#, false),
        (r#"{"choices":[{"delta":{"content":"x"}},]}"#, false),
        (r#"{"choices":[{"delta":{"content":"x"}}],"n":01}"#, false),
        (r#"{"choices":[{"delta":{"content":"x"}}],"n":-}"#, false),
        (r#"{"choices":[{"delta":{"content":"x"}}],"n":1.}"#, false),
        (r#"{"choices":[{"delta":{"content":"x"}}],"n":tru}"#, false),
        (
            "{\"choices\":[{\"delta\":{\"content\":\"raw\ttab\"}}]}",
            false,
        ),
        // A control character far into a long run, and after an escape.
        (
            "{\"choices\":[{\"delta\":{\"content\":\"a long run of plain text before it: \u{1}\"}}]}",
            false,
        ),
        (
            "{\"choices\":[{\"delta\":{\"content\":\"esc\\\\aped\u{1f}\"}}]}",
            false,
        ),
        (
            r#"{"choices":[{"delta":{"content":"a long run of plain text, longer than one SIMD block of 32 bytes, then \"quoted\""}}]}"#,
            true,
        ),
        (
            r#"{"choices":[{"delta":{"content":"bad \x escape"}}]}"#,
            false,
        ),
        // Left to serde: `\u` escapes (in a text, in another field, in a key), duplicates,
        // unexpected types, a struct written as an array.
        (
            r#"{"choices":[{"delta":{"content":"caf\u00e9 \ud83d\ude00"}}]}"#,
            false,
        ),
        (
            r#"{"id":"\u0041","choices":[{"delta":{"content":"x"}}]}"#,
            false,
        ),
        (r#"{"choices":[{"delta":{"cont\u0065nt":"x"}}]}"#, false),
        (
            r#"{"choices":[{"delta":{"content":"bad \ud800 surrogate"}}]}"#,
            false,
        ),
        (
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            false,
        ),
        (
            r#"{"choices":[{"delta":{"content":"a"}}],"choices":[]}"#,
            false,
        ),
        (r#"{"choices":[{"delta":{"content":7}}]}"#, false),
        (r#"{"choices":null}"#, false),
        (r#"{"choices":[null]}"#, false),
        (r#"{"choices":[{"delta":["x"]}]}"#, false),
        (r#"[[{"delta":{"content":"array"}}]]"#, false),
        (
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"a","name":"b"}}]}}]}"#,
            false,
        ),
        (
            r#"{"choices":[{"delta":{"content":"1"}},{"delta":{"content":"2"}},{"delta":{"content":"3"}},{"delta":{"content":"4"}},{"delta":{"content":"5"}},{"delta":{"content":"6"}},{"delta":{"content":"7"}},{"delta":{"content":"8"}},{"delta":{"content":"9"}}]}"#,
            false,
        ),
        (
            r#"{"choices":[{"delta":{"content":"deep"}}],"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
            false,
        ),
    ];
    for (data, fast) in cases {
        let (public, parsed, answered) = texts_both_ways(data);
        assert_eq!(public, parsed, "{data}");
        assert_eq!(answered, fast, "{data}");
    }
    let (texts, ..) = texts_both_ways(cases[4].0);
    assert_eq!(texts, ["t", "c", "no", "think", "f", r#"{"a":1}"#]);
    let (texts, ..) = texts_both_ways(cases[5].0);
    assert_eq!(texts, ["second", "first", "a", "x"]);
    let (texts, ..) = texts_both_ways(cases[3].0);
    assert_eq!(
        texts,
        ["line\nnext \"q\" back\\slash / \t\r\u{8}\u{c} é 😀"]
    );
}

fn chunk_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    proptest::collection::vec(
        prop_oneof![
            Just('"'),
            Just('\\'),
            Just('/'),
            Just('\n'),
            Just('\u{1}'),
            Just('é'),
            Just('😀'),
            proptest::char::range(' ', '~'),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest::proptest! {
    /// Chunks built from random texts (written by serde_json, so escaped as it escapes), in
    /// random key orders, with random bytes cut or spliced in: the texts are the parse's.
    #[test]
    fn any_chunk_yields_what_the_parse_yields(
        texts in proptest::collection::vec(proptest::option::of(chunk_text()), 6),
        reorder in proptest::prelude::any::<bool>(),
        choices in 1_usize..3,
        cut in proptest::prelude::any::<proptest::sample::Index>(),
        splice in proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), proptest::prop_oneof![
            proptest::strategy::Just(","), proptest::strategy::Just("\""), proptest::strategy::Just("}"),
            proptest::strategy::Just("\\"), proptest::strategy::Just(" "), proptest::strategy::Just("\\u0041"),
        ])),
        truncate in proptest::prelude::any::<bool>(),
    ) {
        let json = |text: &Option<String>| serde_json::to_string(text).unwrap();
        let function = format!(r#"{{"name":{},"arguments":{}}}"#, json(&texts[4]), json(&texts[5]));
        let delta = if reorder {
            format!(r#"{{"tool_calls":[{{"index":0,"function":{function}}}],"reasoning_content":{},"refusal":{},"content":{}}}"#, json(&texts[3]), json(&texts[2]), json(&texts[1]))
        } else {
            format!(r#"{{"content":{},"refusal":{},"reasoning_content":{},"tool_calls":[{{"index":0,"function":{function}}}]}}"#, json(&texts[1]), json(&texts[2]), json(&texts[3]))
        };
        let choice = format!(r#"{{"index":0,"delta":{delta},"text":{},"finish_reason":null}}"#, json(&texts[0]));
        let all = vec![choice; choices].join(",");
        let mut data = format!(r#"{{"id":"chatcmpl-x","choices":[{all}],"usage":null}}"#);
        if let Some((at, piece)) = splice {
            let at = at.index(data.len() + 1);
            if data.is_char_boundary(at) {
                data.insert_str(at, piece);
            }
        }
        if truncate {
            let at = cut.index(data.len() + 1);
            if data.is_char_boundary(at) {
                data.truncate(at);
            }
        }
        let (public, parsed, _) = texts_both_ways(&data);
        proptest::prop_assert_eq!(public, parsed, "{}", data);
    }
}
