//! The output a stream delivered to its client, kept as plain text while it streams and counted
//! only if the stream ends without the upstream's final usage (the client left, the upstream
//! broke). Nothing is tokenized on the way: a stream that ends with its usage frame — the normal
//! case — never loads a tokenizer.
//!
//! The text is what the upstream's events carry (see [`super::stream`] for which fields), up to
//! [`MAX_KEPT_BYTES`]; past that only the byte count is kept and extrapolated.

use super::stream::{anthropic_texts, openai_texts, responses_texts};
use super::{Tally, TokenCount, TokenCounter};

/// Text kept per stream; more is counted by bytes at the ratio measured on what was kept.
pub const MAX_KEPT_BYTES: usize = 4 * 1024 * 1024;

/// How an upstream stream carries its generated text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    /// Chat Completions or legacy completions chunks.
    OpenAi,
    /// Anthropic Messages events.
    Anthropic,
    /// Responses API events.
    Responses,
}

/// The generated text a stream passed on so far.
#[derive(Debug)]
pub struct DeliveredText {
    format: StreamFormat,
    text: String,
    /// Bytes of text past [`MAX_KEPT_BYTES`], not kept.
    overflow_bytes: u64,
}

impl DeliveredText {
    pub fn new(format: StreamFormat) -> Self {
        Self {
            format,
            text: String::new(),
            overflow_bytes: 0,
        }
    }

    /// An upstream event's `data`, as it goes to the client.
    pub fn event(&mut self, data: &str) {
        let keep = |text: &str, kept: &mut String, overflow: &mut u64| {
            if kept.len() + text.len() <= MAX_KEPT_BYTES {
                kept.push_str(text);
            } else {
                *overflow = overflow.saturating_add(text.len() as u64);
            }
        };
        let (kept, overflow) = (&mut self.text, &mut self.overflow_bytes);
        match self.format {
            StreamFormat::OpenAi => openai_texts(data, |text| keep(text, kept, overflow)),
            StreamFormat::Anthropic => anthropic_texts(data, |text| keep(text, kept, overflow)),
            StreamFormat::Responses => responses_texts(data, |text| keep(text, kept, overflow)),
        }
    }

    /// Bytes of text delivered.
    pub fn bytes(&self) -> u64 {
        (self.text.len() as u64).saturating_add(self.overflow_bytes)
    }

    /// Counts the text with `counter`, loading its encoding on this thread first if needed
    /// (hundreds of milliseconds the first time: call it off the runtime, as
    /// `proxy::estimator` does, never on a runtime worker).
    pub fn count_blocking(&self, counter: TokenCounter) -> TokenCount {
        if let Some(encoding) = counter.encoding() {
            encoding.load_blocking();
        }
        let mut tally = Tally::new(counter, MAX_KEPT_BYTES);
        tally.text(&self.text);
        if self.overflow_bytes > 0 {
            tally.estimated_bytes = tally.estimated_bytes.saturating_add(self.overflow_bytes);
            tally.exact = false;
        }
        tally.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_text_of_each_format_and_counts_it() {
        let mut openai = DeliveredText::new(StreamFormat::OpenAi);
        openai.event(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#);
        openai.event(r#"{"choices":[{"index":0,"delta":{"content":"Hello there"}}]}"#);
        openai.event(r#"{"choices":[],"usage":null}"#);
        assert_eq!(openai.text, "Hello there");

        let mut anthropic = DeliveredText::new(StreamFormat::Anthropic);
        anthropic.event(r#"{"type":"message_start","message":{"usage":{"input_tokens":5}}}"#);
        anthropic.event(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abc def"}}"#,
        );
        assert_eq!(anthropic.text, "abc def");
        // 7 bytes by the byte estimate (no tokenizer for this model): ceil(7 / 3).
        let count = anthropic.count_blocking(TokenCounter::ByteEstimate);
        assert_eq!(count.tokens, 3);

        let mut responses = DeliveredText::new(StreamFormat::Responses);
        responses.event(r#"{"type":"response.output_text.delta","delta":"xyz"}"#);
        responses.event(r#"{"type":"response.output_text.done","text":"xyz"}"#);
        assert_eq!(responses.text, "xyz");
        assert_eq!(responses.bytes(), 3);
    }

    #[test]
    fn text_past_the_cap_is_counted_by_bytes() {
        let mut delivered = DeliveredText::new(StreamFormat::Responses);
        let big = "a".repeat(MAX_KEPT_BYTES);
        delivered.event(&format!(
            r#"{{"type":"response.output_text.delta","delta":"{big}"}}"#
        ));
        delivered.event(r#"{"type":"response.output_text.delta","delta":"bbbbbb"}"#);
        assert_eq!(delivered.text.len(), MAX_KEPT_BYTES);
        assert_eq!(delivered.bytes(), MAX_KEPT_BYTES as u64 + 6);
        let count = delivered.count_blocking(TokenCounter::ByteEstimate);
        assert_eq!(count.tokens, (MAX_KEPT_BYTES as u64 + 6).div_ceil(3));
    }
}
