//! Configuration: the optional TOML file (`RawConfig`, serde, unknown fields refused) is merged
//! with command-line / environment overrides and defaults, then validated into a [`Config`] whose
//! invariants hold. Errors name the offending path (`backends[1].rpm_limit`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::cooldown::CooldownPolicy;
use crate::domain::{
    normalize_base_url, validate_api_key, validate_mappings, validate_metadata,
    validate_model_name, validate_name, validate_rpm, validate_timeout, validate_weight, ApiKind,
    CanonicalModel, Invalid, ModelMapping, ModelMappings, Pool, PoolName, UpstreamModel,
};
use crate::error::InitError;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./poolgate-data";

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

// === raw (as written in the file) ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub cooldown: RawCooldown,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
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
    pub model_mappings: BTreeMap<String, RawMapping>,
    pub metadata: Option<serde_json::Value>,
}

fn default_api() -> ApiKind {
    ApiKind::Openai
}

/// `"gpt-4o" = "gpt-4o-2024-08-06"` or `"gpt-4o" = { upstream_model = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMapping {
    Short(String),
    Full(ModelMapping),
}

impl RawMapping {
    pub fn into_mapping(self) -> ModelMapping {
        match self {
            RawMapping::Short(upstream) => ModelMapping {
                upstream_model: UpstreamModel::new(upstream),
            },
            RawMapping::Full(mapping) => mapping,
        }
    }
}

// === validated ===

/// Proxy behaviour.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Upstream attempts per client request (every candidate at most once).
    pub max_attempts: u32,
    /// How long a request may wait for a backend to become ready (0 = fail at once with 429).
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
    /// Longest silence between two chunks of a streamed answer.
    pub stream_idle_timeout: Duration,
    /// Ask OpenAI-compatible upstreams for stream usage (and strip it when the client did not).
    pub inject_stream_usage: bool,
    pub shutdown_grace: Duration,
    /// `max_tokens` sent to Anthropic when the client gave none.
    pub anthropic_default_max_tokens: u32,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_wait: Duration::ZERO,
            max_body_bytes: 32 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(120),
            inject_stream_usage: true,
            shutdown_grace: Duration::from_secs(30),
            anthropic_default_max_tokens: 4096,
        }
    }
}

/// Usage writer behaviour.
#[derive(Clone, Debug)]
pub struct UsageSettings {
    pub channel_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            channel_capacity: 16_384,
            batch_size: 512,
            flush_interval: Duration::from_millis(500),
        }
    }
}

/// A backend declared in the config file (validated, key resolved).
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    pub label: String,
    pub api_base_url: String,
    pub api_key: SecretString,
    pub api: ApiKind,
    pub timeout_seconds: u32,
    pub rpm_limit: u32,
    pub weight: u32,
    pub pool: PoolName,
    pub enabled: bool,
    pub model_mappings: ModelMappings,
    pub metadata: serde_json::Value,
}

/// Default `timeout_seconds` (time to first byte) of a backend.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 60;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub proxy: ProxySettings,
    pub cooldown: CooldownPolicy,
    pub usage: UsageSettings,
    pub pools: Vec<Pool>,
    pub backends: Vec<BackendSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            master_key_file: None,
            log_format: LogFormat::Human,
            proxy: ProxySettings::default(),
            cooldown: CooldownPolicy::default(),
            usage: UsageSettings::default(),
            pools: Vec::new(),
            backends: Vec::new(),
        }
    }
}

/// Values from the command line or environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Reads the file (if any), applies overrides and validates.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, InitError> {
        let raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| InitError::io(format!("reading {}", path.display()), e))?;
                parse_toml(&text)
                    .map_err(|e| InitError::Config(format!("{}: {e}", path.display())))?
            }
            None => RawConfig::default(),
        };
        Config::from_raw(raw, overrides, &|name| std::env::var(name).ok())
            .map_err(|invalid| InitError::Config(invalid.to_string()))
    }

    /// Validates a raw config; `env` resolves `env:VAR` keys.
    pub fn from_raw(
        raw: RawConfig,
        overrides: Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Invalid> {
        let defaults = Config::default();
        let listen_text = overrides
            .listen
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            Invalid::new(
                "listen",
                format!("`{listen_text}` is not an address like 127.0.0.1:8080"),
            )
        })?;

        let proxy = validate_proxy(raw.proxy)?;
        let cooldown = validate_cooldown(raw.cooldown)?;
        let usage = UsageSettings {
            channel_capacity: raw
                .usage
                .channel_capacity
                .unwrap_or(defaults.usage.channel_capacity)
                .max(1),
            batch_size: raw
                .usage
                .batch_size
                .unwrap_or(defaults.usage.batch_size)
                .clamp(1, 10_000),
            flush_interval: raw
                .usage
                .flush_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.usage.flush_interval)
                .max(Duration::from_millis(10)),
        };

        let mut pools = Vec::new();
        for (i, pool) in raw.pools.into_iter().enumerate() {
            validate_name(&format!("pools[{i}].name"), &pool.name)?;
            if pools.iter().any(|p: &Pool| p.name.as_str() == pool.name) {
                return Err(Invalid::new(
                    format!("pools[{i}].name"),
                    format!("pool `{}` is declared twice", pool.name),
                ));
            }
            pools.push(Pool {
                name: PoolName::new(pool.name),
                priority: pool.priority,
                description: pool.description,
            });
        }

        let mut backends: Vec<BackendSpec> = Vec::new();
        for (i, backend) in raw.backends.into_iter().enumerate() {
            let spec = validate_backend(i, backend, env)?;
            if backends.iter().any(|b| b.name == spec.name) {
                return Err(Invalid::new(
                    format!("backends[{i}].name"),
                    format!("backend `{}` is declared twice", spec.name),
                ));
            }
            backends.push(spec);
        }

        Ok(Config {
            listen,
            data_dir: overrides
                .data_dir
                .or(raw.data_dir)
                .unwrap_or(defaults.data_dir),
            master_key_file: overrides.master_key_file.or(raw.master_key_file),
            log_format: overrides.log_format.or(raw.log_format).unwrap_or_default(),
            proxy,
            cooldown,
            usage,
            pools,
            backends,
        })
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("poolgate.db")
    }
}

/// Parses TOML, naming the path of the first bad value.
pub fn parse_toml(text: &str) -> Result<RawConfig, String> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.message().to_owned();
        match inner.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                format!("`{path}` (line {line}): {message}")
            }
            None => format!("`{path}`: {message}"),
        }
    })
}

fn validate_proxy(raw: RawProxy) -> Result<ProxySettings, Invalid> {
    let defaults = ProxySettings::default();
    let max_attempts = raw.max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=20).contains(&max_attempts) {
        return Err(Invalid::new(
            "proxy.max_attempts",
            "must be between 1 and 20",
        ));
    }
    let max_wait_ms = raw.max_wait_ms.unwrap_or(0);
    if max_wait_ms > 600_000 {
        return Err(Invalid::new("proxy.max_wait_ms", "must be at most 600000"));
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(defaults.max_body_bytes);
    if !(1024..=1024 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(Invalid::new(
            "proxy.max_body_bytes",
            "must be between 1024 and 1073741824",
        ));
    }
    let seconds = |field: &str, value: Option<u64>, default: Duration| match value {
        None => Ok(default),
        Some(0) => Err(Invalid::new(field, "must be at least 1 second")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    };
    let anthropic_default_max_tokens = raw
        .anthropic_default_max_tokens
        .unwrap_or(defaults.anthropic_default_max_tokens);
    if anthropic_default_max_tokens == 0 {
        return Err(Invalid::new(
            "proxy.anthropic_default_max_tokens",
            "must be at least 1",
        ));
    }
    Ok(ProxySettings {
        max_attempts,
        max_wait: Duration::from_millis(max_wait_ms),
        max_body_bytes,
        connect_timeout: seconds(
            "proxy.connect_timeout_seconds",
            raw.connect_timeout_seconds,
            defaults.connect_timeout,
        )?,
        stream_idle_timeout: seconds(
            "proxy.stream_idle_timeout_seconds",
            raw.stream_idle_timeout_seconds,
            defaults.stream_idle_timeout,
        )?,
        inject_stream_usage: raw
            .inject_stream_usage
            .unwrap_or(defaults.inject_stream_usage),
        shutdown_grace: seconds(
            "proxy.shutdown_grace_seconds",
            raw.shutdown_grace_seconds,
            defaults.shutdown_grace,
        )?,
        anthropic_default_max_tokens,
    })
}

fn validate_cooldown(raw: RawCooldown) -> Result<CooldownPolicy, Invalid> {
    let defaults = CooldownPolicy::default();
    let duration = |field: &str, value: Option<f64>, default: Duration| match value {
        None => Ok(default),
        Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
            Ok(Duration::from_secs_f64(secs))
        }
        Some(_) => Err(Invalid::new(
            field,
            "must be a number of seconds in (0, 86400]",
        )),
    };
    let base = duration("cooldown.base_seconds", raw.base_seconds, defaults.base)?;
    let max = duration("cooldown.max_seconds", raw.max_seconds, defaults.max)?;
    if max < base {
        return Err(Invalid::new(
            "cooldown.max_seconds",
            "must not be smaller than `cooldown.base_seconds`",
        ));
    }
    let jitter = raw.jitter.unwrap_or(defaults.jitter);
    if !(0.0..=1.0).contains(&jitter) {
        return Err(Invalid::new("cooldown.jitter", "must be between 0 and 1"));
    }
    Ok(CooldownPolicy {
        base,
        max,
        jitter,
        error_cooldown: duration(
            "cooldown.error_seconds",
            raw.error_seconds,
            defaults.error_cooldown,
        )?,
    })
}

fn validate_backend(
    i: usize,
    raw: RawBackend,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BackendSpec, Invalid> {
    let at = |field: &str| format!("backends[{i}].{field}");
    validate_name(&at("name"), &raw.name)?;
    let api_base_url = normalize_base_url(&at("api_base_url"), &raw.api_base_url)?;
    let api_key = match raw.api_key.strip_prefix("env:") {
        Some(var) => env(var).ok_or_else(|| {
            Invalid::new(
                at("api_key"),
                format!("environment variable `{var}` is not set"),
            )
        })?,
        None => raw.api_key,
    };
    validate_api_key(&at("api_key"), &api_key)?;
    let pool = raw.pool.unwrap_or_else(|| "primary".to_owned());
    validate_name(&at("pool"), &pool)?;
    let mut model_mappings = ModelMappings::new();
    for (canonical, mapping) in raw.model_mappings {
        validate_model_name(&at(&format!("model_mappings.{canonical}")), &canonical)?;
        model_mappings.insert(CanonicalModel::new(canonical), mapping.into_mapping());
    }
    validate_mappings(&at("model_mappings"), &model_mappings)?;
    let metadata = raw
        .metadata
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    validate_metadata(&at("metadata"), &metadata)?;
    Ok(BackendSpec {
        label: if raw.label.is_empty() {
            raw.name.clone()
        } else {
            raw.label
        },
        name: raw.name,
        api_base_url,
        api_key: SecretString::from(api_key),
        api: raw.api,
        timeout_seconds: validate_timeout(
            &at("timeout_seconds"),
            raw.timeout_seconds
                .unwrap_or(i64::from(DEFAULT_TIMEOUT_SECONDS)),
        )?,
        rpm_limit: validate_rpm(&at("rpm_limit"), raw.rpm_limit)?,
        weight: validate_weight(&at("weight"), raw.weight.unwrap_or(1))?,
        pool: PoolName::new(pool),
        enabled: raw.enabled.unwrap_or(true),
        model_mappings,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn load(text: &str) -> Result<Config, String> {
        let raw = parse_toml(text)?;
        Config::from_raw(raw, Overrides::default(), &|name| {
            (name == "OPENAI_KEY").then(|| "sk-from-env-123456".to_owned())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = load("").unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.proxy.max_attempts, 5);
    }

    #[test]
    fn backends_resolve_env_keys_and_short_mappings() {
        let config = load(
            r#"
            [[backends]]
            name = "openai-1"
            api_base_url = "https://api.openai.com/v1/"
            api_key = "env:OPENAI_KEY"
            rpm_limit = 500
            [backends.model_mappings]
            "gpt-4o" = "gpt-4o-2024-08-06"
            "mini" = { upstream_model = "gpt-4o-mini" }
            "#,
        )
        .unwrap();
        let backend = &config.backends[0];
        assert_eq!(backend.api_key.expose_secret(), "sk-from-env-123456");
        assert_eq!(backend.api_base_url, "https://api.openai.com/v1");
        assert_eq!(backend.pool.as_str(), "primary");
        assert_eq!(
            backend.model_mappings[&CanonicalModel::new("mini")]
                .upstream_model
                .as_str(),
            "gpt-4o-mini"
        );
    }

    #[test]
    fn errors_name_the_path() {
        let error = load("[proxy]\nmax_attempts = 0\n").unwrap_err();
        assert!(error.contains("proxy.max_attempts"), "{error}");
        let error = load("[proxy]\nunknown = 1\n").unwrap_err();
        assert!(
            error.contains("proxy") && error.contains("unknown"),
            "{error}"
        );
        let error = load(
            "[[backends]]\nname = \"a\"\napi_base_url = \"http://x/v1\"\napi_key = \"env:MISSING\"\n",
        )
        .unwrap_err();
        assert!(
            error.contains("backends[0].api_key") && error.contains("MISSING"),
            "{error}"
        );
        let error = load(
            "[[backends]]\nname = \"a\"\napi_base_url = \"http://x/v1\"\napi_key = \"k\"\nrpm_limit = -3\n",
        )
        .unwrap_err();
        assert!(error.contains("backends[0].rpm_limit"), "{error}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let raw = parse_toml("listen = \"127.0.0.1:1\"\n").unwrap();
        let config = Config::from_raw(
            raw,
            Overrides {
                listen: Some("127.0.0.1:2".into()),
                ..Overrides::default()
            },
            &|_| None,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 2);
    }
}
