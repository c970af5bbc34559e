//! Sticky routing's pure parts: the affinity key of a request and the bounded maps that remember
//! where keys (and response ids) went ([`map::TtlMap`]).
//!
//! The key comes from the first configured [`KeySource`] that yields one: the body's
//! `prompt_cache_key`, its `user` (Anthropic: `metadata.user_id`), a request header (e.g.
//! `x-session-id`), or a hash of the leading messages — the system prompt (`system`,
//! `instructions`, system/developer turns) and the first turns — which stays the same for every
//! request of one conversation. The same rules read Chat Completions, Messages and Responses
//! bodies. Keys are SHA-256 digests of the model and the value: no user id or prompt is kept.

pub mod map;
pub mod shared;

use std::fmt;

use http::HeaderMap;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use crate::domain::sticky::{KeySource, StickySettings, MAX_LEADING_TURNS};
use crate::domain::CanonicalModel;
pub use shared::{
    owner_channel, AffinityLimits, AffinityMaps, LocalAffinity, OwnerChange, OwnerQueue, OwnerSink,
    ResponseOwner,
};

/// A request's affinity key: 16 bytes of SHA-256 over the model, the source and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey([u8; 16]);

impl AffinityKey {
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        AffinityKey(bytes)
    }
}

/// The affinity key of a request for `model`, if a configured source yields one (sources tried
/// in order; `leading_turns` non-system turns hashed by `leading_messages`). The body is
/// parsed only when a body source is configured, and only its leading part is kept.
pub fn affinity_key(
    config: &StickySettings,
    model: &CanonicalModel,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<AffinityKey> {
    let mut fields: Option<BodyFields> = None;
    for source in &config.sources {
        let mut digest = Sha256::new();
        digest.update(b"poolgate-affinity-v1\0");
        digest.update(model.as_str().as_bytes());
        digest.update(b"\0");
        digest.update(source_tag(source));
        digest.update(b"\0");
        let found = match source {
            KeySource::Header(name) => match headers.get(name).map(|v| v.as_bytes()) {
                Some(value) if !value.is_empty() => {
                    digest.update(value);
                    true
                }
                _ => false,
            },
            body_source => {
                let fields = fields.get_or_insert_with(|| BodyFields::parse(body));
                fields.feed(body_source, config.leading_turns, &mut digest)
            }
        };
        if found {
            let hash = digest.finalize();
            let mut key = [0_u8; 16];
            key.copy_from_slice(&hash[..16]);
            return Some(AffinityKey(key));
        }
    }
    None
}

fn source_tag(source: &KeySource) -> &'static [u8] {
    match source {
        KeySource::PromptCacheKey => b"prompt_cache_key",
        KeySource::User => b"user",
        KeySource::Header(_) => b"header",
        KeySource::LeadingMessages => b"leading",
    }
}

/// What the key sources read from a body of any of the three formats.
#[derive(Default, Deserialize)]
struct BodyFields {
    #[serde(default)]
    prompt_cache_key: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
    /// Anthropic's system prompt.
    #[serde(default)]
    system: Option<Value>,
    /// Responses' system prompt.
    #[serde(default)]
    instructions: Option<Value>,
    /// Chat Completions and Messages turns.
    #[serde(default)]
    messages: Option<Leading>,
    /// Responses input.
    #[serde(default)]
    input: Option<Leading>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    user_id: Option<String>,
}

impl BodyFields {
    fn parse(body: &[u8]) -> BodyFields {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// Feeds the source's value to `digest`; false if the body has none.
    fn feed(&self, source: &KeySource, leading_turns: usize, digest: &mut Sha256) -> bool {
        fn text(value: &Option<String>) -> Option<&str> {
            value.as_deref().filter(|v| !v.is_empty())
        }
        match source {
            KeySource::PromptCacheKey => feed_text(digest, text(&self.prompt_cache_key)),
            KeySource::User => feed_text(
                digest,
                text(&self.user).or_else(|| self.metadata.as_ref().and_then(|m| text(&m.user_id))),
            ),
            KeySource::LeadingMessages => self.feed_leading(leading_turns, digest),
            KeySource::Header(_) => false,
        }
    }

    fn feed_leading(&self, leading_turns: usize, digest: &mut Sha256) -> bool {
        let turns = leading_turns.clamp(1, MAX_LEADING_TURNS);
        let mut fed = false;
        for system in [&self.system, &self.instructions].into_iter().flatten() {
            digest.update(b"system");
            hash_value(digest, system);
            fed = true;
        }
        let Some(leading) = self.messages.as_ref().or(self.input.as_ref()) else {
            return fed;
        };
        match leading {
            Leading::Text(text) => {
                digest.update(b"text");
                hash_value(digest, &Value::String(text.clone()));
                true
            }
            Leading::Items(items) => {
                let mut counted = 0;
                for item in items {
                    if counted == turns {
                        break;
                    }
                    let role = item.get("role").and_then(Value::as_str);
                    if !matches!(role, Some("system" | "developer")) {
                        counted += 1;
                    }
                    digest.update(b"item");
                    hash_value(digest, item);
                    fed = true;
                }
                fed
            }
        }
    }
}

fn feed_text(digest: &mut Sha256, value: Option<&str>) -> bool {
    match value {
        Some(value) => {
            digest.update(value.as_bytes());
            true
        }
        None => false,
    }
}

/// Hashes a JSON value canonically: object keys in sorted order, every value tagged and
/// length-prefixed, so equal JSON hashes equally however it was written.
fn hash_value(digest: &mut Sha256, value: &Value) {
    let len = |n: usize| (n as u64).to_le_bytes();
    match value {
        Value::Null => digest.update(b"n"),
        Value::Bool(b) => digest.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            let text = n.to_string();
            digest.update(b"#");
            digest.update(len(text.len()));
            digest.update(text.as_bytes());
        }
        Value::String(s) => {
            digest.update(b"s");
            digest.update(len(s.len()));
            digest.update(s.as_bytes());
        }
        Value::Array(items) => {
            digest.update(b"[");
            digest.update(len(items.len()));
            for item in items {
                hash_value(digest, item);
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            digest.update(b"{");
            digest.update(len(keys.len()));
            for key in keys {
                digest.update(len(key.len()));
                digest.update(key.as_bytes());
                if let Some(value) = map.get(key) {
                    hash_value(digest, value);
                }
            }
        }
    }
}

/// The first turns of `messages` / `input` (or Responses' string input); the rest of the
/// conversation is skipped without being kept.
enum Leading {
    Text(String),
    Items(Vec<Value>),
}

/// Turns kept while parsing: enough for [`MAX_LEADING_TURNS`] plus leading system turns.
const KEPT_ITEMS: usize = 2 * MAX_LEADING_TURNS;

impl<'de> Deserialize<'de> for Leading {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LeadingVisitor;

        impl<'de> Visitor<'de> for LeadingVisitor {
            type Value = Leading;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of turns")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Leading, E> {
                Ok(Leading::Text(text.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Leading, A::Error> {
                let mut items = Vec::new();
                while items.len() < KEPT_ITEMS {
                    match seq.next_element::<Value>()? {
                        Some(item) => items.push(item),
                        None => return Ok(Leading::Items(items)),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Leading::Items(items))
            }
        }

        deserializer.deserialize_any(LeadingVisitor)
    }
}

#[cfg(test)]
mod tests;
