//! The nouns every layer shares: id newtypes, the backend / pool / client-key records, and the
//! validation rules for what users hand us (admin API, config file, command line alike), and the
//! error that says what is wrong with a client's request.

use std::collections::BTreeMap;
use std::fmt;

pub mod azure;
mod backend;
pub mod models;
mod request;
mod request_id;
pub mod sticky;
#[cfg(test)]
pub mod tests_support;
mod validate;

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use backend::{
    ApiFields, BackendChange, BackendInput, BackendPatch, BackendSpec, FieldPath, MappingInput,
    DEFAULT_POOL, DEFAULT_TIMEOUT_SECONDS,
};
pub use models::{AliasRecord, ModelNameError, ModelPattern, UpstreamTemplate};
pub use request::{
    check_model_name_length, parse_json, parse_json_value, InvalidRequest, MAX_MODEL_NAME_BYTES,
};
pub use request_id::{RequestId, X_REQUEST_ID};
pub use validate::{
    literal_or_env, normalize_base_url, validate_api_key, validate_concurrency, validate_key_name,
    validate_mappings, validate_metadata, validate_model_name, validate_name, validate_priority,
    validate_rpm, validate_timeout, validate_tpm, validate_weight, Invalid,
};

/// A `PATCH` field that may be left out (unchanged) but not sent as `null`, which would read as
/// "left out" and silently change nothing. Use with `#[serde(default, deserialize_with = …)]`.
pub fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)?
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom("may not be null: leave the field out to keep its value")
        })
}

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
    /// Azure OpenAI: the OpenAI format at deployment URLs with `api-version` (or the v1 form),
    /// `api-key` auth.
    Azure,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Openai => "openai",
            ApiKind::Anthropic => "anthropic",
            ApiKind::Azure => "azure",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "openai" => Some(ApiKind::Openai),
            "anthropic" => Some(ApiKind::Anthropic),
            "azure" => Some(ApiKind::Azure),
            _ => None,
        }
    }

    /// Whether the backend speaks the OpenAI wire format (Chat Completions, Completions,
    /// Embeddings), whatever its URLs and auth header.
    pub fn speaks_openai(self) -> bool {
        matches!(self, ApiKind::Openai | ApiKind::Azure)
    }
}

/// The HTTP version poolgate speaks to a backend's upstream (`http_version`).
///
/// Deserialized from a string only, so that a number is refused as a wrong type naming the
/// field (serde_json reports a number where a unit enum was expected as a syntax error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum HttpVersion {
    /// HTTP/1.1 on `http://`; on `https://` what ALPN settles (h2 or http/1.1).
    #[default]
    Auto,
    /// HTTP/1.1 only (no ALPN on `https://`, so the server speaks HTTP/1.1).
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) on `http://`, ALPN `h2` on `https://`. Every stream
    /// to one upstream host shares one connection.
    Http2,
}

impl HttpVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Auto => "auto",
            HttpVersion::Http1 => "http1",
            HttpVersion::Http2 => "http2",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(HttpVersion::Auto),
            "http1" => Some(HttpVersion::Http1),
            "http2" => Some(HttpVersion::Http2),
            _ => None,
        }
    }
}

impl TryFrom<String> for HttpVersion {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        HttpVersion::parse(&text).ok_or_else(|| {
            format!("unknown variant `{text}`, expected one of `auto`, `http1`, `http2`")
        })
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
    /// Whether the upstream has the Responses API; `None` = the API kind's default
    /// ([`BackendRecord::speaks_responses`]).
    pub responses: Option<bool>,
    /// Azure's `api-version` (`None` = [`azure::DEFAULT_API_VERSION`] for deployment URLs, none
    /// for the v1 form).
    pub api_version: Option<String>,
    /// Tokens per minute (prompt + output, estimated at admission, settled with the real
    /// usage); 0 = unlimited.
    pub tpm_limit: u32,
    /// The HTTP version of upstream calls.
    pub http_version: HttpVersion,
}

impl BackendRecord {
    /// Whether Responses API requests pass through to this backend (else they are translated):
    /// `responses` if set, otherwise on for `openai`, on for `azure` when its URL form and
    /// version have it, never for `anthropic`.
    pub fn speaks_responses(&self) -> bool {
        match self.api {
            ApiKind::Anthropic => false,
            ApiKind::Openai => self.responses.unwrap_or(true),
            ApiKind::Azure => self.responses.unwrap_or_else(|| {
                azure::responses_by_default(&self.api_base_url, self.api_version.as_deref())
            }),
        }
    }
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
    /// Requests this key may have in flight at once; 0 = unlimited.
    pub max_parallel_requests: u32,
    /// Empty = every model.
    pub allowed_models: Vec<CanonicalModel>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// Tokens per minute for this key (prompt + output); 0 = unlimited.
    pub tpm_limit: u32,
}

/// Whose RPM bucket a [`LimiterLevel`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimiterKind {
    Backend,
    ClientKey,
}

impl LimiterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimiterKind::Backend => "backend",
            LimiterKind::ClientKey => "client_key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "backend" => Some(LimiterKind::Backend),
            "client_key" => Some(LimiterKind::ClientKey),
            _ => None,
        }
    }
}

/// An RPM bucket's fill at one moment, as stored so that limits survive a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimiterLevel {
    pub kind: LimiterKind,
    /// The backend's or client key's id.
    pub id: String,
    pub rpm: u32,
    /// The fill in units of 1/60,000,000,000 of a request (see [`crate::limits`]).
    pub level_units: u64,
    /// Unix milliseconds when the fill was `level_units`.
    pub at_ms: i64,
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
    /// `chat.completions`, `completions`, `embeddings`, `messages`, `messages.count_tokens`,
    /// `responses`, `responses.retrieve`, `responses.delete`, `responses.cancel`,
    /// `responses.input_items`.
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
    /// Prompt tokens the upstream read from its prompt cache (part of `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: Option<u32>,
    pub latency_ms: u64,
    /// Time to the first byte sent to the client.
    pub ttfb_ms: Option<u64>,
    pub streamed: bool,
    /// The token figures are poolgate's estimate, not the upstream's: the stream ended (client
    /// left, upstream broke) before the upstream's usage frame, so the prompt and the delivered
    /// output were counted with the tokenizer.
    #[serde(default)]
    pub tokens_estimated: bool,
    /// What the request cost, exactly (nano-dollars inside, a USD number in JSON): its tokens
    /// at the price of the upstream model (`crate::pricing`). `null` when that model has no
    /// price, or the request reached no upstream.
    #[serde(default, rename = "cost_usd")]
    #[schema(value_type = Option<f64>)]
    pub cost: Option<crate::pricing::Nanodollars>,
    /// Prompt tokens the upstream wrote to its prompt cache (Anthropic's
    /// `cache_creation_input_tokens`; part of `prompt_tokens`).
    #[serde(default)]
    pub cache_write_tokens: Option<u32>,
}

/// Which backend made a Responses API response, for whom, and until when poolgate remembers it
/// (response affinity: follow-ups and reads must go to the key that made the response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseOwnerRecord {
    pub response_id: String,
    pub backend_id: BackendId,
    /// The caller that made it (a client key id, or `admin`): nobody else may read it.
    pub caller: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix() {
        let id = BackendId::generate();
        assert!(id.as_str().starts_with("bkd_"));
        assert_eq!(id.as_str().len(), 20);
    }
}
