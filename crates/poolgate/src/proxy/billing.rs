//! Billing a stream cut before the upstream's final usage (issue #14, item 11): an OpenAI-format
//! upstream reports usage only in its last chunk, an Anthropic one the output only in
//! `message_delta`. When the client leaves first, the relay keeps reading the upstream for
//! `proxy.usage_grace_ms` (off the client's path, at most `proxy.usage_grace_max_bytes`) to get
//! that frame ([`super::relay`]); when none comes — or the upstream broke — the record is billed
//! for the prompt and the output the client was sent, counted with the tokenizer of the upstream
//! model ([`crate::token_count`]), and marked `tokens_estimated`.
//!
//! The tokenizer is loaded (o200k_base: ~46 MB, a few hundred ms) only the first time such a
//! stream ends, on a blocking thread; a stream that ends with its usage never touches it.

use bytes::Bytes;

use super::plan::{Inbound, Plan};
use crate::providers::{PromptTokensDetails, TokenUsage};
use crate::token_count::{
    estimate_request, DeliveredText, EstimateSettings, StreamFormat, TokenCounter, WireFormat,
};

/// What a cut stream's estimate needs: how the upstream carries its text, the upstream model's
/// counter, and the client's request (for the prompt).
pub struct Billing {
    pub format: StreamFormat,
    pub counter: TokenCounter,
    request: WireFormat,
    body: Bytes,
}

impl Billing {
    pub fn new(plan: Plan, inbound: &Inbound, upstream_model: &str) -> Self {
        let format = match plan {
            Plan::ResponsesPass | Plan::ResponsesCallPass => StreamFormat::Responses,
            _ => match plan.upstream_wire() {
                crate::translate::Wire::OpenAi => StreamFormat::OpenAi,
                crate::translate::Wire::Anthropic => StreamFormat::Anthropic,
            },
        };
        Self {
            format,
            counter: TokenCounter::for_model(upstream_model),
            request: inbound.endpoint.into(),
            body: inbound.raw_bytes(),
        }
    }

    /// The usage to bill: `partial` as far as the upstream reported it (Anthropic's
    /// `message_start` gives the input), the rest estimated — the prompt from the request body,
    /// the output from what was `delivered` (never less than the upstream's partial output
    /// count). Blocking: may load the tokenizer (call it through [`super::estimator`]).
    pub fn estimate(&self, delivered: &DeliveredText, partial: Option<TokenUsage>) -> TokenUsage {
        let output = delivered.count_blocking(self.counter).tokens;
        let partial = partial.unwrap_or_default();
        let prompt_tokens = if partial.prompt_tokens > 0 {
            partial.prompt_tokens
        } else {
            let estimate = estimate_request(
                self.request,
                &self.body,
                self.counter,
                &EstimateSettings::default(),
            );
            clamp(estimate.prompt.tokens)
        };
        let completion_tokens = clamp(output).max(partial.completion_tokens);
        TokenUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: partial
                .prompt_tokens_details
                .filter(|details: &PromptTokensDetails| details.cached_tokens > 0),
            cache_write_tokens: partial.cache_write_tokens.filter(|tokens| *tokens > 0),
        }
    }
}

fn clamp(tokens: u64) -> u32 {
    u32::try_from(tokens).unwrap_or(u32::MAX)
}
