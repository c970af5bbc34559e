//! The price table: [`ModelPrice`] by upstream model id, the default table embedded in the
//! binary, the layering of config-file and admin-API prices on top of it, and the lookup rules
//! that find a price for dated snapshot ids.
//!
//! # Lookup rules, in order (the first hit wins)
//! 1. The id exactly as the upstream was asked (`gpt-4o-2024-05-13` has its own entry).
//! 2. The id in ASCII lower case (`GPT-4o`).
//! 3. Without a provider prefix: `openai/gpt-4o`, `anthropic/claude-sonnet-4-5` (the
//!    LiteLLM / OpenRouter spelling), then rules 1–2 again.
//! 4. Without a version suffix, then rules 1–3 again: a date `-YYYY-MM-DD` (OpenAI:
//!    `gpt-4o-2024-08-06` → `gpt-4o`), `-YYYYMMDD` (Anthropic: `claude-sonnet-4-5-20250929` →
//!    `claude-sonnet-4-5`), `@YYYYMMDD` (Vertex), or `-latest` (`claude-3-7-sonnet-latest`).
//!
//! Nothing else is guessed: a fine-tuned model (`ft:gpt-4o-mini:…`), an unknown family, or a
//! prefix match like `gpt-4o-audio-preview` → `gpt-4o` finds no price (its audio tokens cost
//! something else). Such a request's cost is unknown (`cost_usd: null`) until an operator adds a
//! price.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::usage::ModelPrice;
use crate::domain::{validate_model_name, Invalid};

/// The default table, as written in the repository.
const DEFAULT_PRICES_TOML: &str = include_str!("default_prices.toml");

/// Where a price in the table came from; later layers win.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriceSource {
    /// The table shipped in the binary.
    Default,
    /// The config file's `[prices]`.
    Config,
    /// `PUT /admin/api/prices/{model}`.
    Api,
}

/// One model's price and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PriceEntry {
    #[serde(flatten)]
    pub price: ModelPrice,
    pub source: PriceSource,
}

/// A price found for a model id: the table key that matched (`gpt-4o` for
/// `gpt-4o-2024-08-06`) and whether it was the id itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceMatch<'a> {
    pub key: &'a str,
    pub entry: &'a PriceEntry,
    /// The id was in the table as asked (rule 1).
    pub exact: bool,
}

/// Prices by upstream model id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceTable {
    entries: BTreeMap<String, PriceEntry>,
    /// The date the default prices were taken (`YYYY-MM-DD`).
    taken: Option<String>,
    source: Option<String>,
}

/// The default table's file format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    taken: String,
    source: String,
    models: BTreeMap<String, ModelPrice>,
}

/// Why a price table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PriceTableError {
    #[error("the embedded default price table is invalid: {0}")]
    Defaults(String),
    #[error("{0}")]
    Invalid(Invalid),
}

static DEFAULTS: LazyLock<Result<PriceTable, String>> = LazyLock::new(|| {
    let file: PriceFile = toml::from_str(DEFAULT_PRICES_TOML).map_err(|e| e.to_string())?;
    let mut table = PriceTable {
        taken: Some(file.taken),
        source: Some(file.source),
        ..PriceTable::default()
    };
    table = table
        .merged(file.models, PriceSource::Default)
        .map_err(|e| e.to_string())?;
    Ok(table)
});

impl PriceTable {
    /// The table shipped in the binary (parsed once). An error means the embedded file is broken;
    /// a unit test keeps that from shipping, and start-up reports it as an init error.
    pub fn defaults() -> Result<&'static PriceTable, PriceTableError> {
        DEFAULTS
            .as_ref()
            .map_err(|error| PriceTableError::Defaults(error.clone()))
    }

    /// This table with `prices` layered on top: each model id in `prices` replaces the whole
    /// entry of the same id (or adds one), tagged with `source`. Ids are checked like every other
    /// model name. Used for config-file prices over the defaults, then admin-API prices over
    /// both; deleting an API price is rebuilding the layers without it.
    pub fn merged(
        &self,
        prices: impl IntoIterator<Item = (String, ModelPrice)>,
        source: PriceSource,
    ) -> Result<PriceTable, PriceTableError> {
        let mut merged = self.clone();
        for (model, price) in prices {
            validate_model_name(&format!("prices.{model}"), &model)
                .map_err(PriceTableError::Invalid)?;
            merged.entries.insert(model, PriceEntry { price, source });
        }
        Ok(merged)
    }

    /// The price for an upstream model id, by the rules in the module documentation.
    pub fn lookup(&self, model: &str) -> Option<PriceMatch<'_>> {
        if let Some((key, entry)) = self.entries.get_key_value(model) {
            return Some(PriceMatch {
                key,
                entry,
                exact: true,
            });
        }
        let found = self.lookup_loose(model).or_else(|| {
            let undated = strip_version_suffix(model)?;
            self.entries
                .get_key_value(undated)
                .or_else(|| self.lookup_loose(undated))
        })?;
        Some(PriceMatch {
            key: found.0,
            entry: found.1,
            exact: false,
        })
    }

    /// Rules 2 and 3 (and 1 for the id without its provider prefix).
    fn lookup_loose(&self, model: &str) -> Option<(&String, &PriceEntry)> {
        let lower = model.to_ascii_lowercase();
        if let Some(found) = self.entries.get_key_value(lower.as_str()) {
            return Some(found);
        }
        let unprefixed = strip_provider_prefix(&lower)?;
        self.entries.get_key_value(unprefixed).or_else(|| {
            let undated = strip_version_suffix(unprefixed)?;
            self.entries.get_key_value(undated)
        })
    }

    /// Every entry, ordered by model id (for `GET /admin/api/prices`).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &PriceEntry)> {
        self.entries
            .iter()
            .map(|(model, entry)| (model.as_str(), entry))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The date the default prices were taken (`YYYY-MM-DD`).
    pub fn taken(&self) -> Option<&str> {
        self.taken.as_deref()
    }

    /// Where the default prices were taken from.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
}

/// `openai/gpt-4o` → `gpt-4o`, `anthropic/claude-…` → `claude-…`.
fn strip_provider_prefix(model: &str) -> Option<&str> {
    ["openai/", "anthropic/"]
        .iter()
        .find_map(|prefix| model.strip_prefix(prefix))
}

/// Removes one trailing version: `-YYYY-MM-DD`, `-YYYYMMDD`, `@YYYYMMDD` or `-latest`.
fn strip_version_suffix(model: &str) -> Option<&str> {
    if let Some(base) = model.strip_suffix("-latest") {
        return (!base.is_empty()).then_some(base);
    }
    let bytes = model.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let len = bytes.len();
    // `-2024-08-06`: 11 bytes.
    if len > 11
        && bytes[len - 11] == b'-'
        && digits(len - 10..len - 6)
        && bytes[len - 6] == b'-'
        && digits(len - 5..len - 3)
        && bytes[len - 3] == b'-'
        && digits(len - 2..len)
    {
        return model.get(..len - 11);
    }
    // `-20250929` / `@20250929`: 9 bytes, a plausible date (20YYMMDD).
    if len > 9
        && matches!(bytes[len - 9], b'-' | b'@')
        && digits(len - 8..len)
        && bytes[len - 8..len - 6] == *b"20"
    {
        return model.get(..len - 9);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::money::PricePerToken;

    fn per_mtok(text: &str) -> PricePerToken {
        PricePerToken::parse_per_mtok(text).unwrap()
    }

    fn matched<'a>(table: &'a PriceTable, model: &str) -> Option<(&'a str, bool)> {
        table.lookup(model).map(|found| (found.key, found.exact))
    }

    #[test]
    fn defaults_parse_with_their_date_and_source() {
        let table = PriceTable::defaults().unwrap();
        assert_eq!(table.taken(), Some("2026-11-29"));
        assert!(table.source().unwrap().contains("litellm"));
        assert!(table.len() > 50, "{}", table.len());
        assert!(table
            .entries()
            .all(|(_, e)| e.source == PriceSource::Default));
        let gpt_4o = table.lookup("gpt-4o").unwrap().entry.price;
        assert_eq!(gpt_4o.input, per_mtok("2.5"));
        assert_eq!(gpt_4o.output, per_mtok("10"));
        assert_eq!(gpt_4o.cached_input, Some(per_mtok("1.25")));
        assert_eq!(gpt_4o.cache_write, None);
        let sonnet = table.lookup("claude-sonnet-4-5").unwrap().entry.price;
        assert_eq!(sonnet.cache_write, Some(per_mtok("3.75")));
        assert_eq!(sonnet.cached_input, Some(per_mtok("0.3")));
        // Sanity on every row: output never cheaper than 0, cache reads never dearer than input.
        for (model, entry) in table.entries() {
            let price = entry.price;
            assert!(
                price.cached_input.is_none_or(|c| c <= price.input),
                "{model}"
            );
            assert!(
                price.cache_write.is_none_or(|w| w >= price.input),
                "{model}"
            );
        }
    }

    #[test]
    fn dated_ids_fall_back_to_their_family() {
        let table = PriceTable::defaults().unwrap();
        for (model, key, exact) in [
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o-2024-08-06", "gpt-4o", false),
            // Its own (dearer) price, not gpt-4o's.
            ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13", true),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", false),
            ("claude-opus-4-20250514", "claude-opus-4", false),
            ("claude-3-7-sonnet-latest", "claude-3-7-sonnet", false),
            ("claude-haiku-4-5@20251001", "claude-haiku-4-5", false),
            ("GPT-4o-Mini", "gpt-4o-mini", false),
            ("openai/gpt-4.1", "gpt-4.1", false),
            (
                "anthropic/claude-sonnet-4-5-20250929",
                "claude-sonnet-4-5",
                false,
            ),
            ("gpt-5-mini-2025-08-07", "gpt-5-mini", false),
        ] {
            assert_eq!(matched(table, model), Some((key, exact)), "{model}");
        }
    }

    #[test]
    fn nothing_else_is_guessed() {
        let table = PriceTable::defaults().unwrap();
        for model in [
            "gpt-4o-audio-preview",
            "ft:gpt-4o-mini-2024-07-18:acme::abc123",
            "llama-3.1-70b",
            "gpt-4o-2024-13",
            "-latest",
            "2024-08-06",
            "claude-x-19990101",
            "",
        ] {
            assert_eq!(matched(table, model), None, "{model}");
        }
    }

    #[test]
    fn layers_replace_whole_entries_and_extend() {
        let defaults = PriceTable::defaults().unwrap();
        let config = defaults
            .merged(
                [
                    (
                        "gpt-4o".to_owned(),
                        ModelPrice {
                            input: per_mtok("2"),
                            output: per_mtok("8"),
                            ..ModelPrice::default()
                        },
                    ),
                    (
                        "llama-3.1-70b".to_owned(),
                        ModelPrice {
                            input: per_mtok("0.6"),
                            output: per_mtok("0.6"),
                            ..ModelPrice::default()
                        },
                    ),
                ],
                PriceSource::Config,
            )
            .unwrap();
        let api = config
            .merged(
                [(
                    "llama-3.1-70b".to_owned(),
                    ModelPrice {
                        input: per_mtok("0.5"),
                        output: per_mtok("0.7"),
                        ..ModelPrice::default()
                    },
                )],
                PriceSource::Api,
            )
            .unwrap();
        let gpt_4o = api.lookup("gpt-4o-2024-11-20").unwrap();
        assert_eq!(gpt_4o.entry.source, PriceSource::Config);
        assert_eq!(
            gpt_4o.entry.price.cached_input, None,
            "the whole entry is replaced"
        );
        assert_eq!(gpt_4o.entry.price.input, per_mtok("2"));
        let llama = api.lookup("llama-3.1-70b").unwrap();
        assert_eq!(llama.entry.source, PriceSource::Api);
        assert_eq!(llama.entry.price.output, per_mtok("0.7"));
        assert_eq!(api.len(), defaults.len() + 1);
        assert_eq!(api.taken(), defaults.taken(), "the defaults' date stays");
        // The layers below are untouched.
        assert_eq!(
            defaults.lookup("gpt-4o").unwrap().entry.price.input,
            per_mtok("2.5")
        );

        let error = defaults
            .merged(
                [("bad name".to_owned(), ModelPrice::default())],
                PriceSource::Api,
            )
            .unwrap_err();
        assert!(error.to_string().contains("prices.bad name"), "{error}");
    }

    #[test]
    fn entries_serialize_for_the_admin_api() {
        let table = PriceTable::defaults().unwrap();
        let entry = table.lookup("claude-haiku-4-5").unwrap().entry;
        assert_eq!(
            serde_json::to_value(entry).unwrap(),
            serde_json::json!({
                "input_per_mtok": 1.0, "output_per_mtok": 5.0,
                "cached_input_per_mtok": 0.1, "cache_write_per_mtok": 1.25,
                "source": "default"
            })
        );
    }
}
