//! The nouns every layer shares: id newtypes, the backend / pool / client-key records, and the
//! validation rules for what users hand us (admin API, config file, command line alike).

use std::collections::BTreeMap;
use std::fmt;

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Defines a string newtype with `Display`, `as_str` and transparent serde.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A backend's stable id, `bkd_` followed by 16 random alphanumerics.
    BackendId
);
string_id!(
    /// The name of a pool (`primary`, `fallback`, …).
    PoolName
);
string_id!(
    /// The model name clients ask for (`gpt-4o`), mapped per backend to an upstream id.
    CanonicalModel
);
string_id!(
    /// The model id a given upstream knows (`gpt-4o-2024-08-06`).
    UpstreamModel
);

/// A fresh random id with a type prefix, e.g. `bkd_3kq9…`.
pub fn new_id(prefix: &str) -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(|byte| char::from(byte).to_ascii_lowercase())
        .collect();
    format!("{prefix}_{suffix}")
}

impl BackendId {
    pub fn generate() -> Self {
        Self(new_id("bkd"))
    }
}

/// The wire format a backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    /// OpenAI-compatible: `{api_base_url}/chat/completions`, bearer auth.
    Openai,
    /// Anthropic Messages: `{api_base_url}/v1/messages`, `x-api-key` auth.
    Anthropic,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Openai => "openai",
            ApiKind::Anthropic => "anthropic",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "openai" => Some(ApiKind::Openai),
            "anthropic" => Some(ApiKind::Anthropic),
            _ => None,
        }
    }
}

/// Where a backend was defined: the config file (re-synced at every start) or the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "config" => Some(Source::Config),
            "api" => Some(Source::Api),
            _ => None,
        }
    }
}

/// A backend's status as shown to operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendStatus {
    Healthy,
    Cooling,
    Error,
    Disabled,
}

impl BackendStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendStatus::Healthy => "healthy",
            BackendStatus::Cooling => "cooling",
            BackendStatus::Error => "error",
            BackendStatus::Disabled => "disabled",
        }
    }
}

/// How one canonical model maps onto a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelMapping {
    /// The model id sent upstream.
    pub upstream_model: UpstreamModel,
}

/// Canonical model name -> mapping, ordered for stable output.
pub type ModelMappings = BTreeMap<CanonicalModel, ModelMapping>;

/// A pool of backends; lower priority numbers are tried first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: PoolName,
    pub priority: i64,
    pub description: String,
}

/// A backend as stored: everything but the plaintext key.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRecord {
    pub id: BackendId,
    pub name: String,
    pub label: String,
    pub api_base_url: String,
    /// `pgenc:v1:…` — see [`crate::crypto::aead`].
    pub api_key_sealed: String,
    /// A display mask of the key (`sk-…abcd`).
    pub api_key_mask: String,
    pub api: ApiKind,
    pub timeout_seconds: u32,
    pub rpm_limit: u32,
    pub weight: u32,
    pub pool: PoolName,
    pub enabled: bool,
    pub model_mappings: ModelMappings,
    pub source: Source,
    pub metadata: serde_json::Value,
    pub health: PersistedHealth,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The part of a backend's runtime health that survives a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistedHealth {
    /// Unix milliseconds until which the backend cools down.
    pub cooldown_until_ms: Option<i64>,
    pub consecutive_429_count: u32,
    /// The upstream refused the key (401/403): out of rotation until an admin resets it.
    pub broken: bool,
    pub last_error: Option<String>,
}

/// A client key as stored: only a hash of the secret.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientKeyRecord {
    pub id: String,
    pub name: String,
    pub display_prefix: String,
    pub secret_hash: Vec<u8>,
    /// 0 = unlimited.
    pub rpm_limit: u32,
    /// Empty = every model.
    pub allowed_models: Vec<CanonicalModel>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// How a proxied request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered and the whole answer reached the client.
    Success,
    /// The request failed before any byte reached the client (or the upstream's 4xx was relayed).
    Error,
    /// The upstream died or stalled mid-stream; the client got an SSE error event.
    StreamError,
    /// The client went away; the upstream request was dropped.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::StreamError => "stream_error",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(Outcome::Success),
            "error" => Some(Outcome::Error),
            "stream_error" => Some(Outcome::StreamError),
            "cancelled" => Some(Outcome::Cancelled),
            _ => None,
        }
    }
}

/// One record per client request, written by the usage writer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRecord {
    pub request_id: String,
    /// Unix milliseconds when the request arrived.
    pub ts_ms: i64,
    pub client_key_id: Option<String>,
    /// `chat.completions`, `completions`, `embeddings`, `messages`.
    pub endpoint: String,
    pub canonical_model: Option<String>,
    pub backend_id: Option<String>,
    pub upstream_model: Option<String>,
    pub pool: Option<String>,
    /// Upstream requests sent for this client request.
    pub attempts: u32,
    /// HTTP status the client got (499 when it went away first).
    pub status: u16,
    pub outcome: Outcome,
    pub error_kind: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub total_tokens: Option<u32>,
    pub latency_ms: u64,
    /// Time to the first byte sent to the client.
    pub ttfb_ms: Option<u64>,
    pub streamed: bool,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Renders Unix milliseconds as RFC 3339 (UTC).
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

// === validation ===

/// A rule a user-supplied value broke; `field` is the JSON path of the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

/// Backend and pool names: 1–64 chars of letters, digits, `-`, `_`, `.`.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 64 {
        return Err(Invalid::new(field, "must be 1 to 64 characters long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Invalid::new(
            field,
            "may contain only letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}

/// An absolute `http(s)` URL with a host and no query or fragment; returned without a trailing `/`.
pub fn normalize_base_url(field: &str, text: &str) -> Result<String, Invalid> {
    let parsed = url::Url::parse(text.trim())
        .map_err(|error| Invalid::new(field, format!("is not a valid URL ({error})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Invalid::new(field, "must use http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new(field, "must have a host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Invalid::new(field, "must not have a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Invalid::new(
            field,
            "must not carry credentials; use `api_key`",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Model names: 1–256 printable characters without whitespace.
pub fn validate_model_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 256 {
        return Err(Invalid::new(field, "must be 1 to 256 characters long"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// `timeout_seconds`: 1 to 3600.
pub fn validate_timeout(field: &str, seconds: i64) -> Result<u32, Invalid> {
    if !(1..=3600).contains(&seconds) {
        return Err(Invalid::new(field, "must be between 1 and 3600 seconds"));
    }
    u32::try_from(seconds).map_err(|_| Invalid::new(field, "out of range"))
}

/// `rpm_limit`: 0 (unlimited) to 10 000 000.
pub fn validate_rpm(field: &str, rpm: i64) -> Result<u32, Invalid> {
    if rpm < 0 {
        return Err(Invalid::new(
            field,
            "must not be negative (0 means unlimited)",
        ));
    }
    if rpm > 10_000_000 {
        return Err(Invalid::new(field, "must be at most 10000000"));
    }
    u32::try_from(rpm).map_err(|_| Invalid::new(field, "out of range"))
}

/// `weight`: 1 to 100.
pub fn validate_weight(field: &str, weight: i64) -> Result<u32, Invalid> {
    if !(1..=100).contains(&weight) {
        return Err(Invalid::new(field, "must be between 1 and 100"));
    }
    u32::try_from(weight).map_err(|_| Invalid::new(field, "out of range"))
}

/// Upstream API key: 1–4096 chars, no whitespace or control characters.
pub fn validate_api_key(field: &str, key: &str) -> Result<(), Invalid> {
    if key.is_empty() || key.len() > 4096 {
        return Err(Invalid::new(field, "must be 1 to 4096 characters long"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Every mapping's names are valid.
pub fn validate_mappings(field: &str, mappings: &ModelMappings) -> Result<(), Invalid> {
    for (canonical, mapping) in mappings {
        validate_model_name(&format!("{field}.{canonical}"), canonical.as_str())?;
        validate_model_name(
            &format!("{field}.{canonical}.upstream_model"),
            mapping.upstream_model.as_str(),
        )?;
    }
    Ok(())
}

/// `metadata` must be a JSON object of at most 16 KiB.
pub fn validate_metadata(field: &str, metadata: &serde_json::Value) -> Result<(), Invalid> {
    if !metadata.is_object() {
        return Err(Invalid::new(field, "must be a JSON object"));
    }
    if metadata.to_string().len() > 16 * 1024 {
        return Err(Invalid::new(field, "must be at most 16 KiB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_normalized_and_checked() {
        assert_eq!(
            normalize_base_url("u", "https://api.openai.com/v1/").unwrap(),
            "https://api.openai.com/v1"
        );
        assert!(normalize_base_url("u", "ftp://x").is_err());
        assert!(normalize_base_url("u", "not a url").is_err());
        assert!(normalize_base_url("u", "http://h/v1?x=1").is_err());
        assert!(normalize_base_url("u", "http://user:pw@h/v1").is_err());
    }

    #[test]
    fn names_and_numbers_are_checked() {
        assert!(validate_name("n", "openai-1").is_ok());
        assert!(validate_name("n", "").is_err());
        assert!(validate_name("n", "a b").is_err());
        assert_eq!(validate_rpm("r", 0).unwrap(), 0);
        assert!(validate_rpm("r", -1).is_err());
        assert!(validate_timeout("t", 0).is_err());
        assert!(validate_weight("w", 101).is_err());
    }

    #[test]
    fn ids_have_their_prefix() {
        let id = BackendId::generate();
        assert!(id.as_str().starts_with("bkd_"));
        assert_eq!(id.as_str().len(), 20);
    }
}
