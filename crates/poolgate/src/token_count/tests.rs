use super::*;

/// The tokenizer of `encoding`, loaded on this (test) thread.
pub(super) fn loaded(encoding: Encoding) -> &'static CoreBPE {
    encoding.load_blocking().unwrap()
}

pub(super) fn bpe_count(encoding: Encoding, text: &str) -> u64 {
    loaded(encoding).encode_ordinary(text).len() as u64
}

#[test]
fn models_map_to_their_encoding() {
    let o200k = TokenCounter::Bpe(Encoding::O200kBase);
    let cl100k = TokenCounter::Bpe(Encoding::Cl100kBase);
    for (model, counter) in [
        ("gpt-4o", o200k),
        ("gpt-4o-2024-08-06", o200k),
        ("gpt-4o-mini", o200k),
        ("gpt-4.1-nano", o200k),
        ("gpt-5", o200k),
        ("gpt-5.4-mini", o200k),
        ("o1", o200k),
        ("o3-mini", o200k),
        ("o4-mini-2025-04-16", o200k),
        ("chatgpt-4o-latest", o200k),
        ("ft:gpt-4o-mini-2024-07-18:acme::x1", o200k),
        ("gpt-4", cl100k),
        ("gpt-4-turbo", cl100k),
        ("gpt-3.5-turbo-0125", cl100k),
        ("text-embedding-3-small", cl100k),
        ("claude-sonnet-4-5-20250929", TokenCounter::ByteEstimate),
        ("llama-3.1-70b", TokenCounter::ByteEstimate),
        ("", TokenCounter::ByteEstimate),
    ] {
        assert_eq!(TokenCounter::for_model(model), counter, "{model}");
    }
}

#[test]
fn encodings_count_known_strings() {
    // Counts published with the encodings (tiktoken's own tests).
    assert_eq!(bpe_count(Encoding::Cl100kBase, "hello world"), 2);
    assert_eq!(bpe_count(Encoding::O200kBase, "hello world"), 2);
    assert_eq!(
        bpe_count(Encoding::Cl100kBase, "tiktoken is great!"),
        6,
        "cl100k_base"
    );
    // Special-token text is ordinary text here: a client cannot smuggle control tokens into a
    // count (or a panic) through its prompt.
    assert!(bpe_count(Encoding::O200kBase, "<|endoftext|>") > 1);
}

#[test]
fn loading_is_lazy_and_shared() {
    let first = loaded(Encoding::O200kBase);
    assert!(std::ptr::eq(first, loaded(Encoding::O200kBase)));
    assert!(std::ptr::eq(
        first,
        Encoding::O200kBase.get_or_start_loading().unwrap()
    ));
}

#[test]
fn byte_estimate_is_a_third_of_the_bytes_rounded_up() {
    assert_eq!(byte_estimate(0), 0);
    assert_eq!(byte_estimate(1), 1);
    assert_eq!(byte_estimate(3), 1);
    assert_eq!(byte_estimate(4), 2);
    assert_eq!(byte_estimate(3_000), 1_000);
    let mut tally = Tally::new(TokenCounter::ByteEstimate, 1 << 20);
    tally.text("héllo"); // 6 bytes
    tally.text("wörld!!"); // 8 bytes
    tally.fixed(3);
    assert_eq!(
        tally.finish(),
        TokenCount {
            tokens: 5 + 3,
            exact: false
        },
        "ceil(14 / 3) + 3"
    );
}

#[test]
fn text_past_the_budget_is_extrapolated_from_the_measured_ratio() {
    loaded(Encoding::O200kBase);
    let counter = TokenCounter::Bpe(Encoding::O200kBase);
    let sentence = "The quick brown fox jumps over the lazy dog. ";
    let sample = sentence.repeat(200); // 9 000 bytes
    let sample_tokens = bpe_count(Encoding::O200kBase, &sample);

    let mut within = Tally::new(counter, 64 * 1024);
    within.text(&sample);
    within.fixed(3);
    assert_eq!(
        within.finish(),
        TokenCount {
            tokens: sample_tokens + 3,
            exact: true
        }
    );

    // A budget of one sample: the second sample is extrapolated at the first one's ratio,
    // which for identical text is the exact count.
    let mut over = Tally::new(counter, sample.len());
    over.text(&sample);
    over.text(&sample);
    assert_eq!(
        over.finish(),
        TokenCount {
            tokens: 2 * sample_tokens,
            exact: false
        }
    );

    // Too small a sample to trust: the rest falls back to the byte estimate.
    let mut tiny = Tally::new(counter, 10);
    tiny.text("hello");
    tiny.text(&sample);
    assert_eq!(
        tiny.finish().tokens,
        bpe_count(Encoding::O200kBase, "hello") + byte_estimate(sample.len() as u64)
    );
}

#[test]
fn approximations_make_the_count_inexact() {
    loaded(Encoding::O200kBase);
    let mut tally = Tally::new(TokenCounter::Bpe(Encoding::O200kBase), 1024);
    tally.text("hi");
    tally.approximate(765);
    assert_eq!(
        tally.finish(),
        TokenCount {
            tokens: 1 + 765,
            exact: false
        }
    );
}
