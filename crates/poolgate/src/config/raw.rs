//! The config file as written: serde types, unknown fields refused. [`super::Config::from_raw`]
//! validates them into a [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::LogFormat;
use crate::domain::sticky::StickyInput;
use crate::domain::{ApiKind, HttpVersion, MappingInput};
pub use crate::telemetry::settings::{RawMetrics, RawTelemetry};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    /// This instance's id in logs, the admin API and the Redis registry.
    pub instance_id: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub cooldown: RawCooldown,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub database: RawDatabase,
    /// Shared runtime state across instances; absent = this instance's own.
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    /// `[metrics]`: who may scrape `GET /metrics`, per-client-key series.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// `[telemetry]`: OTLP traces, the access log.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// `[health]`: the readiness probe and the drain before a stop.
    #[serde(default)]
    pub health: RawHealth,
    /// `"gpt-4o-latest" = "gpt-4o"`: one model name for another canonical model.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub responses: RawResponses,
    /// `[tokens]`: how a request's tokens are estimated for TPM limits.
    #[serde(default)]
    pub tokens: RawTokens,
    /// `[prices."model-id"]`: prices per upstream model id over the embedded defaults, in USD
    /// per million tokens (`input_per_mtok`, `output_per_mtok`, optional
    /// `cached_input_per_mtok`, `cache_write_per_mtok`).
    #[serde(default)]
    pub prices: BTreeMap<String, crate::pricing::ModelPrice>,
}

/// `[tokens]`: the estimate reserved against TPM limits (see `token_count`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// Output tokens reserved when a request declares no `max_tokens` & co.
    pub default_output_tokens: Option<u64>,
    /// The most output tokens reserved for one request, whatever it declares.
    pub max_output_reserve: Option<u64>,
    /// Prompt bytes tokenized exactly per request; the rest is extrapolated.
    pub exact_budget_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub sticky: Option<RawSticky>,
}

/// `[routing.sticky]`: the stored sticky-routing settings (written at every start when present)
/// plus the size of the session map.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub enabled: Option<bool>,
    pub key: Option<Vec<String>>,
    pub leading_turns: Option<u32>,
    pub ttl_seconds: Option<u64>,
    pub models: Option<Vec<String>>,
    /// Sessions kept in memory (default 100000).
    pub max_entries: Option<usize>,
}

impl RawSticky {
    /// The stored settings part.
    pub fn settings(&self) -> StickyInput {
        StickyInput {
            enabled: self.enabled,
            key: self.key.clone(),
            leading_turns: self.leading_turns,
            ttl_seconds: self.ttl_seconds,
            models: self.models.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    pub owner_ttl_hours: Option<u64>,
    pub owner_max_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub max_attempts: Option<u32>,
    pub max_wait_ms: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub connect_timeout_seconds: Option<u64>,
    pub stream_idle_timeout_seconds: Option<u64>,
    pub inject_stream_usage: Option<bool>,
    pub shutdown_grace_seconds: Option<u64>,
    pub anthropic_default_max_tokens: Option<u32>,
    /// `x-poolgate-backend` and `x-poolgate-attempts` on proxy answers.
    pub expose_routing_headers: Option<bool>,
    pub max_in_flight: Option<usize>,
    pub max_response_bytes: Option<usize>,
    pub usage_grace_ms: Option<u64>,
    pub usage_grace_max_bytes: Option<usize>,
    /// PEM certificates of extra CAs trusted for `https://` backends.
    pub upstream_ca_file: Option<PathBuf>,
    /// How long an idle HTTP/1 upstream connection stays reusable.
    pub upstream_idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCooldown {
    pub base_seconds: Option<f64>,
    pub max_seconds: Option<f64>,
    pub jitter: Option<f64>,
    pub error_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    pub channel_capacity: Option<usize>,
    pub batch_size: Option<usize>,
    pub flush_interval_ms: Option<u64>,
    /// Records held in memory while the database cannot be written; the rest wait in the journal.
    pub buffer_records: Option<usize>,
    /// Usage older than this many days is dropped (PostgreSQL: whole day partitions). Absent =
    /// kept forever.
    pub retention_days: Option<u32>,
    pub journal: Option<bool>,
    pub journal_segment_bytes: Option<u64>,
    /// The hourly rollup older than this many days is dropped (default 400).
    pub rollup_retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub max_connections: Option<u32>,
    /// How often an instance compares the stored configuration version with its own (a backstop
    /// for a missed PostgreSQL notification).
    pub config_poll_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user:password@]host:port/db` (`--redis-url` / `POOLGATE_REDIS_URL` win).
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub call_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub breaker_failures: Option<u32>,
    pub breaker_open_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    /// Refuse (503) rather than admit from this instance's share while Redis is unreachable.
    pub fail_closed: Option<bool>,
    /// The largest token allowance leased to this instance per bucket (0 = off).
    pub allowance_max: Option<u32>,
}

/// `[server]`: the client side of the gateway (timeouts, connection cap).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub header_read_timeout_seconds: Option<u64>,
    pub keep_alive_timeout_seconds: Option<u64>,
    pub body_read_timeout_seconds: Option<u64>,
    pub body_min_rate_bytes_per_second: Option<u64>,
    pub write_timeout_seconds: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_buf_size_bytes: Option<usize>,
    pub http2: Option<bool>,
    pub http2_max_concurrent_streams: Option<u32>,
    /// `"poolgate"` (default) or `"hyper"`: what serves HTTP/1.1 client connections.
    pub http1_server: Option<String>,
    /// `"thread_per_core"` (default) or `"work_stealing"`.
    pub runtime: Option<String>,
    /// Per-core runtimes with `"thread_per_core"` (0 or absent = one per core).
    pub per_core_threads: Option<usize>,
}

/// `[network]`: the egress policy (where backends may point).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub allow_private: Option<bool>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `[limits]`: how RPM bucket levels survive a restart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub checkpoint_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub shutdown_delay_seconds: Option<u64>,
    pub ready_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    pub priority: i64,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    #[serde(default)]
    pub label: String,
    pub api_base_url: String,
    /// A literal key, or `env:VAR` to read it from the environment.
    pub api_key: String,
    #[serde(default = "default_api")]
    pub api: ApiKind,
    pub timeout_seconds: Option<i64>,
    #[serde(default)]
    pub rpm_limit: i64,
    pub weight: Option<i64>,
    pub pool: Option<String>,
    pub enabled: Option<bool>,
    #[serde(default)]
    /// `"gpt-4o" = "gpt-4o-2024-08-06"` or `"gpt-4o" = { upstream_model = "…" }`.
    pub model_mappings: BTreeMap<String, MappingInput>,
    pub metadata: Option<serde_json::Value>,
    /// Whether the upstream has the Responses API (default by `api`).
    pub responses: Option<bool>,
    /// Azure only: `api-version`.
    pub api_version: Option<String>,
    /// Tokens per minute; 0 = unlimited.
    #[serde(default)]
    pub tpm_limit: i64,
    /// `auto` (default), `http1` or `http2`.
    pub http_version: Option<HttpVersion>,
}

fn default_api() -> ApiKind {
    ApiKind::Openai
}
