//! What a request is billed for: the upstream's usage figures, normalised into four disjoint
//! kinds of tokens, and the exact cost of those tokens at a [`ModelPrice`].
//!
//! The providers count cached tokens differently, and mixing them up double-charges:
//! - **OpenAI Chat Completions**: `usage.prompt_tokens` *includes*
//!   `usage.prompt_tokens_details.cached_tokens`; uncached input = prompt − cached.
//! - **OpenAI Responses**: `usage.input_tokens` *includes* `input_tokens_details.cached_tokens`.
//! - **Anthropic Messages**: `usage.input_tokens` *excludes* `cache_read_input_tokens` and
//!   `cache_creation_input_tokens`; the three are added up.
//!
//! Reasoning tokens are part of OpenAI's `completion_tokens` / `output_tokens` and of Anthropic's
//! `output_tokens`, so they are billed as output without a separate field.

use serde::{Deserialize, Serialize};

use super::money::{Nanodollars, PricePerToken};
use crate::providers::anthropic;

/// Prices of one model. A missing cached-input or cache-write price bills those tokens at the
/// plain input price (what a provider without a discount charges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Uncached input tokens.
    #[serde(rename = "input_per_mtok")]
    pub input: PricePerToken,
    #[serde(rename = "output_per_mtok")]
    pub output: PricePerToken,
    /// Input tokens read from the prompt cache.
    #[serde(
        rename = "cached_input_per_mtok",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cached_input: Option<PricePerToken>,
    /// Input tokens written to the prompt cache (Anthropic's 5-minute cache write).
    #[serde(
        rename = "cache_write_per_mtok",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_write: Option<PricePerToken>,
}

impl ModelPrice {
    /// The exact cost of `usage`: the sum of each kind of token times its price.
    pub fn cost(&self, usage: &BilledUsage) -> Nanodollars {
        [
            self.input.cost_of(usage.input_tokens),
            self.cached_input
                .unwrap_or(self.input)
                .cost_of(usage.cached_input_tokens),
            self.cache_write
                .unwrap_or(self.input)
                .cost_of(usage.cache_write_tokens),
            self.output.cost_of(usage.output_tokens),
        ]
        .into_iter()
        .sum()
    }

    /// An upper-bound cost for admission, before the answer exists: every prompt token at the
    /// uncached input price plus `output_tokens` at the output price.
    pub fn estimate(&self, prompt_tokens: u64, output_tokens: u64) -> Nanodollars {
        self.input
            .cost_of(prompt_tokens)
            .saturating_add(self.output.cost_of(output_tokens))
    }
}

/// One request's tokens, each counted in exactly one of four disjoint kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledUsage {
    /// Input tokens neither read from nor written to a prompt cache.
    pub input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cached_input_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
}

impl BilledUsage {
    /// OpenAI Chat Completions figures: `cached` is part of `prompt` (clamped to it).
    pub fn openai(prompt: u64, cached: u64, completion: u64) -> Self {
        let cached = cached.min(prompt);
        Self {
            input_tokens: prompt - cached,
            cached_input_tokens: cached,
            cache_write_tokens: 0,
            output_tokens: completion,
        }
    }

    /// Anthropic figures: the three input counts are disjoint.
    pub fn anthropic(input: u64, cache_read: u64, cache_creation: u64, output: u64) -> Self {
        Self {
            input_tokens: input,
            cached_input_tokens: cache_read,
            cache_write_tokens: cache_creation,
            output_tokens: output,
        }
    }

    /// All input tokens, whatever the cache did with them.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cached_input_tokens)
            .saturating_add(self.cache_write_tokens)
    }

    /// Every token of the request (what a TPM limit counts).
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens().saturating_add(self.output_tokens)
    }
}

impl From<&anthropic::Usage> for BilledUsage {
    fn from(usage: &anthropic::Usage) -> Self {
        BilledUsage::anthropic(
            u64::from(usage.input_tokens),
            u64::from(usage.cache_read_input_tokens.unwrap_or(0)),
            u64::from(usage.cache_creation_input_tokens.unwrap_or(0)),
            u64::from(usage.output_tokens),
        )
    }
}

// === wire figures ===

/// `usage` of an OpenAI Chat Completions answer or final stream chunk, with the cache details
/// (`TokenUsage` in `providers` keeps only the three totals).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OpenAiUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<CachedDetails>,
}

/// `usage` of an OpenAI Responses answer (`response.completed` event or JSON body).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ResponsesUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub input_tokens_details: Option<CachedDetails>,
}

/// `{"cached_tokens": n}`; `null` and absent both mean 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct CachedDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl CachedDetails {
    fn count(details: Option<&CachedDetails>) -> u64 {
        details.and_then(|d| d.cached_tokens).unwrap_or(0)
    }
}

impl From<&OpenAiUsage> for BilledUsage {
    fn from(usage: &OpenAiUsage) -> Self {
        let cached = CachedDetails::count(usage.prompt_tokens_details.as_ref());
        BilledUsage::openai(usage.prompt_tokens, cached, usage.completion_tokens)
    }
}

impl From<&ResponsesUsage> for BilledUsage {
    fn from(usage: &ResponsesUsage) -> Self {
        let cached = CachedDetails::count(usage.input_tokens_details.as_ref());
        BilledUsage::openai(usage.input_tokens, cached, usage.output_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: &str, output: &str, cached: Option<&str>, write: Option<&str>) -> ModelPrice {
        let parse = |text: &str| PricePerToken::parse_per_mtok(text).unwrap();
        ModelPrice {
            input: parse(input),
            output: parse(output),
            cached_input: cached.map(parse),
            cache_write: write.map(parse),
        }
    }

    #[test]
    fn openai_cached_tokens_are_part_of_the_prompt() {
        // gpt-4o: $2.50 in, $1.25 cached, $10 out per Mtok.
        let gpt_4o = price("2.5", "10", Some("1.25"), None);
        let usage: OpenAiUsage = serde_json::from_str(
            r#"{"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}}"#,
        )
        .unwrap();
        let billed = BilledUsage::from(&usage);
        assert_eq!(billed, BilledUsage::openai(2006, 1920, 300));
        assert_eq!(billed.input_tokens, 86);
        assert_eq!(billed.prompt_tokens(), 2006);
        // By hand, in nano-dollars (a price of $X / Mtok is X·1000 nano-dollars per token):
        //   86 uncached × 2 500 = 215 000
        //   1 920 cached × 1 250 = 2 400 000
        //   300 output × 10 000 = 3 000 000
        //   total 5 615 000 nano-dollars = $0.005615
        let cost = gpt_4o.cost(&billed);
        assert_eq!(cost.get(), 5_615_000);
        assert_eq!(cost.to_usd_string(), "0.005615");
    }

    #[test]
    fn anthropic_cache_reads_and_writes_are_separate_from_input() {
        // claude-sonnet-4-5: $3 in, $15 out, $0.30 cache read, $3.75 cache write per Mtok.
        let sonnet = price("3", "15", Some("0.3"), Some("3.75"));
        let usage: anthropic::Usage = serde_json::from_str(
            r#"{"input_tokens": 50, "output_tokens": 400,
                "cache_read_input_tokens": 10000, "cache_creation_input_tokens": 2000}"#,
        )
        .unwrap();
        let billed = BilledUsage::from(&usage);
        assert_eq!(billed.prompt_tokens(), 12_050);
        assert_eq!(billed.total_tokens(), 12_450);
        //   50 × 3 000 = 150 000
        //   10 000 × 300 = 3 000 000
        //   2 000 × 3 750 = 7 500 000
        //   400 × 15 000 = 6 000 000
        //   total 16 650 000 nano-dollars = $0.01665
        assert_eq!(sonnet.cost(&billed).get(), 16_650_000);
    }

    #[test]
    fn responses_usage_and_missing_cache_prices() {
        let usage: ResponsesUsage = serde_json::from_str(
            r#"{"input_tokens": 1000, "output_tokens": 10,
                "input_tokens_details": {"cached_tokens": 400},
                "output_tokens_details": {"reasoning_tokens": 6}, "total_tokens": 1010}"#,
        )
        .unwrap();
        let billed = BilledUsage::from(&usage);
        assert_eq!(billed, BilledUsage::openai(1000, 400, 10));
        // No cached price: cached tokens cost the input price. 1000 × 1 000 + 10 × 2 000.
        let flat = price("1", "2", None, None);
        assert_eq!(flat.cost(&billed).get(), 1_020_000);
        // More cached than prompt (a buggy upstream) never underflows.
        assert_eq!(BilledUsage::openai(5, 9, 0).input_tokens, 0);
        // null details.
        let usage: OpenAiUsage =
            serde_json::from_str(r#"{"prompt_tokens": 3, "prompt_tokens_details": null}"#).unwrap();
        assert_eq!(BilledUsage::from(&usage), BilledUsage::openai(3, 0, 0));
    }

    #[test]
    fn estimate_prices_every_prompt_token_uncached() {
        let gpt_4o = price("2.5", "10", Some("1.25"), None);
        // 1 000 × 2 500 + 500 × 10 000 = 7 500 000.
        assert_eq!(gpt_4o.estimate(1_000, 500).get(), 7_500_000);
    }

    #[test]
    fn price_json_uses_the_api_names() {
        let parsed: ModelPrice = serde_json::from_str(
            r#"{"input_per_mtok": 3, "output_per_mtok": "15", "cached_input_per_mtok": 0.3,
                "cache_write_per_mtok": 3.75}"#,
        )
        .unwrap();
        assert_eq!(parsed, price("3", "15", Some("0.3"), Some("3.75")));
        assert_eq!(
            serde_json::to_string(&price("2.5", "10", None, None)).unwrap(),
            r#"{"input_per_mtok":2.5,"output_per_mtok":10.0}"#
        );
        assert!(serde_json::from_str::<ModelPrice>(r#"{"input_per_mtok": 1}"#).is_err());
        assert!(serde_json::from_str::<ModelPrice>(
            r#"{"input_per_mtok": 1, "output_per_mtok": 1, "extra": 1}"#
        )
        .is_err());
    }
}
