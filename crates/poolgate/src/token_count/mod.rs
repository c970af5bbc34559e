//! Token counting before the answer exists: how many tokens a request's prompt will cost (for
//! TPM reservations and budget estimates), how many it may answer with, and how many a stream
//! produced when its client left before the usage frame.
//!
//! - OpenAI models are counted with their real BPE encoding from `tiktoken-rs` (which ships the
//!   encodings in the binary): `o200k_base` for the gpt-4o / gpt-4.1 / gpt-5 / o-series families,
//!   `cl100k_base` for gpt-4 / gpt-3.5 / the embedding models ([`TokenCounter::for_model`]).
//! - Every other model gets a documented byte estimate: `ceil(utf8_bytes / 3)`. Measured with
//!   `o200k_base`, English prose is ~4.7 bytes per token, code ~2.5 and CJK text ~3–4.3; Claude's
//!   tokenizer is less dense than `o200k_base`, so a third of the bytes is on the high side for
//!   prose and about right for code. Reservations are settled with the real usage anyway; a high
//!   estimate only holds TPM capacity until then.
//!
//! # Cost, and why loading is lazy and off the request path
//! Measured on the 2-core development machine (release build, `examples/token_count_cost.rs`):
//! building `o200k_base` takes ~220–350 ms and ~46 MB of resident memory, `cl100k_base`
//! ~100–240 ms and ~24 MB. So an encoding is loaded only when first needed, on a background
//! thread; until it is there a request falls back to the byte estimate (its count is then marked
//! inexact) instead of stalling a runtime worker. Start-up can warm the encodings the configured
//! models use with [`Encoding::load_blocking`] (from `spawn_blocking`).
//!
//! Tokenizing runs at ~25–40 MB/s for prose and ~8 MB/s for code (`o200k_base`; `cl100k_base` is
//! slower), i.e. ~125 µs for a 4 KB chat. So a request tokenizes at most
//! [`EstimateSettings::exact_budget_bytes`] (16 KiB by default: ≲ 0.6 ms of prose, ≲ 2 ms of
//! code) exactly and extrapolates the rest from the ratio it measured. The borrowed parse around
//! it costs less than parsing the body into a `serde_json::Value` (2 µs against 4 µs for a 4 KB
//! Messages body counted by bytes).

pub mod delivered;
pub mod request;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

pub use delivered::{DeliveredText, StreamFormat};
pub use request::{estimate_request, RequestEstimate, WireFormat};
pub use stream::StreamedOutputCounter;

/// Bytes per token of the estimate for models without a known tokenizer.
pub const BYTES_PER_TOKEN_ESTIMATE: u64 = 3;

/// At least this much text must have been counted exactly before its ratio is used to
/// extrapolate the rest; below it the byte estimate is used.
const MIN_SAMPLE_BYTES: u64 = 4096;

// === impl Encoding ===

/// The OpenAI BPE encodings poolgate counts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-5, o1 / o3 / o4 families.
    O200kBase,
    /// gpt-4, gpt-3.5-turbo, text-embedding-3-*, text-embedding-ada-002.
    Cl100kBase,
}

/// One encoding's lazily built tokenizer.
struct Slot {
    tokenizer: OnceLock<Option<CoreBPE>>,
    loading: AtomicBool,
}

impl Slot {
    const fn new() -> Self {
        Self {
            tokenizer: OnceLock::new(),
            loading: AtomicBool::new(false),
        }
    }
}

static O200K_BASE: Slot = Slot::new();
static CL100K_BASE: Slot = Slot::new();

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    fn slot(self) -> &'static Slot {
        match self {
            Encoding::O200kBase => &O200K_BASE,
            Encoding::Cl100kBase => &CL100K_BASE,
        }
    }

    fn build(self) -> Option<CoreBPE> {
        let started = std::time::Instant::now();
        let built = match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
        };
        match built {
            Ok(tokenizer) => {
                tracing::debug!(encoding = self.name(), elapsed = ?started.elapsed(), "tokenizer loaded");
                Some(tokenizer)
            }
            Err(error) => {
                tracing::error!(encoding = self.name(), %error, "tokenizer failed to load; counting by bytes");
                None
            }
        }
    }

    /// The tokenizer if it is loaded. Never blocks: the first call starts loading it on a
    /// background thread and answers `None` until it is ready.
    pub fn get_or_start_loading(self) -> Option<&'static CoreBPE> {
        let slot = self.slot();
        if let Some(loaded) = slot.tokenizer.get() {
            return loaded.as_ref();
        }
        if !slot.loading.swap(true, Ordering::AcqRel) {
            let spawned = std::thread::Builder::new()
                .name(format!("tokenizer-{}", self.name()))
                .spawn(move || {
                    slot.tokenizer.get_or_init(|| self.build());
                });
            if let Err(error) = spawned {
                tracing::warn!(encoding = self.name(), %error, "could not start the tokenizer loader");
                slot.loading.store(false, Ordering::Release);
            }
        }
        None
    }

    /// The tokenizer, loading it on this thread if needed (start-up warm-up, tests, tools).
    /// Takes hundreds of milliseconds the first time: never call it on a runtime worker.
    pub fn load_blocking(self) -> Option<&'static CoreBPE> {
        let slot = self.slot();
        slot.loading.store(true, Ordering::Release);
        slot.tokenizer.get_or_init(|| self.build()).as_ref()
    }
}

// === impl TokenCounter ===

/// How a model's text is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenCounter {
    /// With the model's own encoding.
    Bpe(Encoding),
    /// `ceil(bytes / 3)`: models whose tokenizer poolgate does not have.
    ByteEstimate,
}

impl TokenCounter {
    /// The counter for a model id (the upstream model the backend will bill), by `tiktoken-rs`'s
    /// model table (exact names and prefixes, `ft:` fine-tunes of a known base included).
    pub fn for_model(model: &str) -> TokenCounter {
        use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
        match get_tokenizer(model) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => {
                TokenCounter::Bpe(Encoding::O200kBase)
            }
            Some(Tokenizer::Cl100kBase) => TokenCounter::Bpe(Encoding::Cl100kBase),
            _ => TokenCounter::ByteEstimate,
        }
    }

    pub fn encoding(self) -> Option<Encoding> {
        match self {
            TokenCounter::Bpe(encoding) => Some(encoding),
            TokenCounter::ByteEstimate => None,
        }
    }
}

/// A number of tokens, and whether it was counted with the model's own tokenizer (`exact`) or
/// estimated in part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCount {
    pub tokens: u64,
    pub exact: bool,
}

/// The tunables of estimation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EstimateSettings {
    /// Output tokens reserved when a request does not say (`max_tokens` & co. absent).
    pub default_output_tokens: u64,
    /// The most output tokens reserved for one request, whatever it declares.
    pub max_output_reserve: u64,
    /// Text tokenized exactly per request; the rest is extrapolated.
    pub exact_budget_bytes: usize,
}

impl Default for EstimateSettings {
    fn default() -> Self {
        Self {
            default_output_tokens: 1_024,
            max_output_reserve: 32_768,
            exact_budget_bytes: 16 * 1024,
        }
    }
}

/// `ceil(bytes / 3)`.
pub fn byte_estimate(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_TOKEN_ESTIMATE)
}

// === impl Tally ===

/// Adds up the tokens of many pieces of text under one request's exact-counting budget.
pub struct Tally {
    tokenizer: Option<&'static CoreBPE>,
    budget_left: usize,
    counted_tokens: u64,
    counted_bytes: u64,
    estimated_bytes: u64,
    /// Fixed overheads (per message, per tool set) and approximations (images).
    extra_tokens: u64,
    exact: bool,
}

impl Tally {
    /// A tally for `counter`. A BPE counter whose encoding is still loading counts by bytes
    /// (and says so: the result is not exact).
    pub fn new(counter: TokenCounter, exact_budget_bytes: usize) -> Self {
        let tokenizer = counter.encoding().and_then(Encoding::get_or_start_loading);
        Self {
            tokenizer,
            budget_left: exact_budget_bytes,
            counted_tokens: 0,
            counted_bytes: 0,
            estimated_bytes: 0,
            extra_tokens: 0,
            exact: tokenizer.is_some(),
        }
    }

    /// Counts a piece of text.
    pub fn text(&mut self, text: &str) {
        match self.tokenizer {
            Some(tokenizer) if text.len() <= self.budget_left => {
                self.budget_left -= text.len();
                self.counted_bytes += text.len() as u64;
                self.counted_tokens += tokenizer.encode_ordinary(text).len() as u64;
            }
            _ => {
                self.estimated_bytes += text.len() as u64;
                if self.tokenizer.is_some() {
                    self.exact = false;
                }
            }
        }
    }

    /// Adds tokens known exactly (the chat format's per-message overhead).
    pub fn fixed(&mut self, tokens: u64) {
        self.extra_tokens = self.extra_tokens.saturating_add(tokens);
    }

    /// Adds tokens only guessed (an image, a file): the total is no longer exact.
    pub fn approximate(&mut self, tokens: u64) {
        self.extra_tokens = self.extra_tokens.saturating_add(tokens);
        self.exact = false;
    }

    /// The total: what was counted, plus the rest extrapolated at the measured ratio (or the
    /// byte estimate when too little was measured).
    pub fn finish(self) -> TokenCount {
        let estimated = if self.counted_bytes >= MIN_SAMPLE_BYTES {
            let scaled = u128::from(self.estimated_bytes) * u128::from(self.counted_tokens);
            u64::try_from(scaled.div_ceil(u128::from(self.counted_bytes))).unwrap_or(u64::MAX)
        } else {
            byte_estimate(self.estimated_bytes)
        };
        TokenCount {
            tokens: self
                .counted_tokens
                .saturating_add(estimated)
                .saturating_add(self.extra_tokens),
            exact: self.exact,
        }
    }
}

#[cfg(test)]
mod tests;
