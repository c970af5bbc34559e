//! Sticky routing's settings as users write them (admin API `PUT /admin/api/settings/sticky`,
//! config file `[routing.sticky]`, the dashboard) and the rules that make them
//! [`StickySettings`]: off by default; when on, requests with the same affinity key go to the
//! same backend while it is ready (prompt caches only hit on the key that saw the prompt).

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Invalid, ModelPattern};

/// The most leading turns a key may cover.
pub const MAX_LEADING_TURNS: usize = 8;

/// Where an affinity key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The body's `prompt_cache_key` (OpenAI Chat Completions and Responses).
    PromptCacheKey,
    /// The body's `user`, or Anthropic's `metadata.user_id`.
    User,
    /// A request header.
    Header(HeaderName),
    /// The system prompt and the first turns.
    LeadingMessages,
}

impl KeySource {
    /// `prompt_cache_key`, `user`, `header:NAME` or `leading_messages`.
    pub fn parse(text: &str) -> Result<KeySource, String> {
        match text {
            "prompt_cache_key" => Ok(KeySource::PromptCacheKey),
            "user" => Ok(KeySource::User),
            "leading_messages" => Ok(KeySource::LeadingMessages),
            other => match other.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(KeySource::Header)
                    .map_err(|_| format!("`{name}` is not a valid header name")),
                None => Err(format!(
                    "`{other}` is not a key source (`prompt_cache_key`, `user`, `header:NAME`, `leading_messages`)"
                )),
            },
        }
    }

    /// The text form [`KeySource::parse`] reads.
    pub fn name(&self) -> String {
        match self {
            KeySource::PromptCacheKey => "prompt_cache_key".to_owned(),
            KeySource::User => "user".to_owned(),
            KeySource::Header(name) => format!("header:{name}"),
            KeySource::LeadingMessages => "leading_messages".to_owned(),
        }
    }
}

/// Sticky routing as users write it; absent fields take their defaults.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StickyInput {
    /// Default `false`.
    pub enabled: Option<bool>,
    /// Key sources, tried in order; the first that yields a value makes the key. Default
    /// `["prompt_cache_key", "header:x-session-id", "leading_messages"]`.
    pub key: Option<Vec<String>>,
    /// Turns (after system prompts) hashed by `leading_messages`, 1 to 8 (default 1: the first
    /// user message, the same for every request of a conversation).
    pub leading_turns: Option<u32>,
    /// How long a session stays on its backend after its last request (default 3600, 1 to
    /// 604800).
    pub ttl_seconds: Option<u64>,
    /// Canonical models (or `prefix*` patterns) sticky routing applies to; empty = every model
    /// (default).
    pub models: Option<Vec<String>>,
}

/// Valid sticky-routing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickySettings {
    pub enabled: bool,
    pub sources: Vec<KeySource>,
    pub leading_turns: usize,
    pub ttl: Duration,
    pub models: Vec<String>,
}

/// Sticky routing as the admin API shows and the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StickyView {
    pub enabled: bool,
    pub key: Vec<String>,
    pub leading_turns: u32,
    pub ttl_seconds: u64,
    pub models: Vec<String>,
}

impl Default for StickySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            sources: vec![
                KeySource::PromptCacheKey,
                KeySource::Header(HeaderName::from_static("x-session-id")),
                KeySource::LeadingMessages,
            ],
            leading_turns: 1,
            ttl: Duration::from_secs(3600),
            models: Vec::new(),
        }
    }
}

impl StickyInput {
    /// Validates; `at` names a field in the caller's terms.
    pub fn validate(self, at: &dyn Fn(&str) -> String) -> Result<StickySettings, Invalid> {
        let defaults = StickySettings::default();
        let sources = match self.key {
            None => defaults.sources,
            Some(keys) if keys.is_empty() => {
                return Err(Invalid::new(at("key"), "must name at least one key source"))
            }
            Some(keys) => keys
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    KeySource::parse(key)
                        .map_err(|message| Invalid::new(at(&format!("key[{i}]")), message))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let leading_turns = match self.leading_turns {
            None => defaults.leading_turns,
            Some(turns) => usize::try_from(turns)
                .ok()
                .filter(|turns| (1..=MAX_LEADING_TURNS).contains(turns))
                .ok_or_else(|| Invalid::new(at("leading_turns"), "must be between 1 and 8"))?,
        };
        let ttl = match self.ttl_seconds {
            None => defaults.ttl,
            Some(seconds) if (1..=604_800).contains(&seconds) => Duration::from_secs(seconds),
            Some(_) => {
                return Err(Invalid::new(
                    at("ttl_seconds"),
                    "must be between 1 and 604800 seconds",
                ))
            }
        };
        let models = self.models.unwrap_or_default();
        for (i, model) in models.iter().enumerate() {
            let field = at(&format!("models[{i}]"));
            super::validate_model_name(&field, model)?;
            ModelPattern::parse(model).map_err(|error| Invalid::new(&field, error.to_string()))?;
        }
        Ok(StickySettings {
            enabled: self.enabled.unwrap_or(false),
            sources,
            leading_turns,
            ttl,
            models,
        })
    }
}

impl StickySettings {
    /// Whether requests for the canonical `model` are routed by affinity.
    pub fn applies_to(&self, model: &str) -> bool {
        self.enabled
            && (self.models.is_empty()
                || self
                    .models
                    .iter()
                    .any(|pattern| match ModelPattern::parse(pattern) {
                        Ok(ModelPattern::Exact(name)) => name == model,
                        Ok(ModelPattern::Prefix(prefix)) => model.starts_with(prefix),
                        Err(_) => false,
                    }))
    }

    pub fn view(&self) -> StickyView {
        StickyView {
            enabled: self.enabled,
            key: self.sources.iter().map(KeySource::name).collect(),
            leading_turns: u32::try_from(self.leading_turns).unwrap_or(1),
            ttl_seconds: self.ttl.as_secs(),
            models: self.models.clone(),
        }
    }
}

impl From<StickyView> for StickyInput {
    fn from(view: StickyView) -> Self {
        StickyInput {
            enabled: Some(view.enabled),
            key: Some(view.key),
            leading_turns: Some(view.leading_turns),
            ttl_seconds: Some(view.ttl_seconds),
            models: Some(view.models),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(field: &str) -> String {
        field.to_owned()
    }

    #[test]
    fn defaults_are_off_and_round_trip_through_the_view() {
        let settings = StickyInput::default().validate(&plain).unwrap();
        assert_eq!(settings, StickySettings::default());
        assert!(!settings.applies_to("gpt-4o"));
        let view = settings.view();
        assert_eq!(
            view.key,
            [
                "prompt_cache_key",
                "header:x-session-id",
                "leading_messages"
            ]
        );
        assert_eq!(StickyInput::from(view).validate(&plain).unwrap(), settings);
    }

    #[test]
    fn models_limit_where_it_applies() {
        let settings = StickyInput {
            enabled: Some(true),
            models: Some(vec!["gpt-4o".into(), "claude-*".into()]),
            ..StickyInput::default()
        }
        .validate(&plain)
        .unwrap();
        assert!(settings.applies_to("gpt-4o"));
        assert!(settings.applies_to("claude-sonnet-4-5"));
        assert!(!settings.applies_to("gpt-4o-mini"));
        let everywhere = StickyInput {
            enabled: Some(true),
            ..StickyInput::default()
        }
        .validate(&plain)
        .unwrap();
        assert!(everywhere.applies_to("anything"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let at = |field: &str| format!("routing.sticky.{field}");
        let cases = [
            (
                StickyInput {
                    key: Some(vec!["prompt_cache_key".into(), "cookie".into()]),
                    ..StickyInput::default()
                },
                "routing.sticky.key[1]",
            ),
            (
                StickyInput {
                    key: Some(vec!["header:bad header".into()]),
                    ..StickyInput::default()
                },
                "routing.sticky.key[0]",
            ),
            (
                StickyInput {
                    key: Some(Vec::new()),
                    ..StickyInput::default()
                },
                "routing.sticky.key",
            ),
            (
                StickyInput {
                    leading_turns: Some(9),
                    ..StickyInput::default()
                },
                "routing.sticky.leading_turns",
            ),
            (
                StickyInput {
                    ttl_seconds: Some(0),
                    ..StickyInput::default()
                },
                "routing.sticky.ttl_seconds",
            ),
            (
                StickyInput {
                    models: Some(vec!["a*b".into()]),
                    ..StickyInput::default()
                },
                "routing.sticky.models[0]",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(input.validate(&at).unwrap_err().field, field);
        }
    }
}
