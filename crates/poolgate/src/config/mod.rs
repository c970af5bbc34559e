//! Configuration: the optional TOML file (`RawConfig`, serde, unknown fields refused) is merged
//! with command-line / environment overrides and defaults, then validated into a [`Config`] whose
//! invariants hold. Errors name the offending path (`backends[1].rpm_limit`).

mod cluster;
mod database;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use serde::Deserialize;

use std::collections::BTreeMap;

use crate::cooldown::CooldownPolicy;
use crate::domain::models::validate_alias_table;
use crate::domain::sticky::StickySettings;
use crate::domain::{validate_name, BackendSpec, CanonicalModel, Invalid, Pool, PoolName};
use crate::error::InitError;
use crate::telemetry::TelemetrySettings;

pub use cluster::{default_instance_id, DatabaseSettings, RedisSettings};
pub use database::DatabaseUrl;
pub use raw::{
    RawBackend, RawConfig, RawCooldown, RawDatabase, RawHealth, RawLimits, RawMetrics, RawNetwork,
    RawPool, RawProxy, RawRedis, RawResponses, RawRouting, RawServer, RawSticky, RawTelemetry,
    RawUsage,
};
use validate::{
    validate_backend, validate_cooldown, validate_health, validate_limits, validate_network,
    validate_proxy, validate_server, validate_tokens,
};

use crate::egress::EgressPolicy;
use crate::serving::ServerSettings;
use crate::token_count::EstimateSettings;

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
    /// Add `x-poolgate-backend` and `x-poolgate-attempts` to proxy answers.
    pub expose_routing_headers: bool,
    /// Requests on the proxy routes at the same time; past it, 503 + `Retry-After` at once.
    pub max_in_flight: usize,
    /// The largest upstream JSON answer (or error body) read; a larger one becomes a 502.
    pub max_response_bytes: usize,
    /// After a streaming client left before the upstream's usage frame: how long the upstream is
    /// still read for it (0 = not at all; the delivered output is then estimated at once).
    pub usage_grace: Duration,
    /// The most upstream bytes read during that grace.
    pub usage_grace_max_bytes: usize,
    /// Certificate authorities trusted for `https://` backends on top of the webpki roots
    /// (`proxy.upstream_ca_file`, read and checked at start): a model server behind an
    /// internal CA.
    pub upstream_ca: Arc<[CertificateDer<'static>]>,
    /// How long an idle HTTP/1 upstream connection stays reusable
    /// (`proxy.upstream_idle_timeout_ms`; 0 = a new HTTP/1 connection per request): under the
    /// keep-alive timeout of the upstreams, so that a request is not written on a connection
    /// the upstream is closing.
    pub upstream_idle_timeout: Duration,
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
            expose_routing_headers: false,
            max_in_flight: validate::default_max_in_flight(
                ServerSettings::default().max_connections,
            ),
            max_response_bytes: 64 * 1024 * 1024,
            usage_grace: Duration::from_millis(2000),
            usage_grace_max_bytes: 1024 * 1024,
            upstream_ca: Arc::from([]),
            upstream_idle_timeout: Duration::from_secs(4),
        }
    }
}

/// Usage writer behaviour.
#[derive(Clone, Debug)]
pub struct UsageSettings {
    pub channel_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// Records held in memory while the database cannot be written; the rest wait in the
    /// journal (written when the database is back; see `control::usage_writer`).
    pub buffer_records: usize,
    /// Usage older than this is dropped (hourly); `None` keeps everything.
    pub retention: Option<Duration>,
    /// Append every record to the crash-safe journal before its answer completes.
    pub journal: bool,
    pub journal_segment_bytes: u64,
    /// The hourly rollup (what long-range statistics read) older than this is dropped (hourly,
    /// in slices); the raw retention never touches it.
    pub rollup_retention: Duration,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            channel_capacity: 16_384,
            batch_size: 512,
            flush_interval: Duration::from_millis(500),
            buffer_records: 100_000,
            retention: None,
            journal: true,
            journal_segment_bytes: 4 * 1024 * 1024,
            rollup_retention: Duration::from_secs(400 * 86_400),
        }
    }
}

/// How RPM bucket levels survive a restart.
#[derive(Clone, Debug)]
pub struct LimitsSettings {
    /// Bucket levels are written at most this often (the loss after a crash is at most this).
    pub checkpoint_interval: Duration,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

/// The health endpoints (`[health]`).
#[derive(Clone, Debug)]
pub struct HealthSettings {
    /// After a stop signal, how long poolgate keeps serving with `/health/ready` answering 503
    /// before it stops accepting connections (load balancers take it out first).
    pub shutdown_delay: Duration,
    /// How long each readiness probe (the store, …) may take before it counts as failed.
    pub ready_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            shutdown_delay: Duration::ZERO,
            ready_timeout: Duration::from_secs(1),
        }
    }
}

/// How much response and session affinity the gateway keeps in memory.
#[derive(Clone, Debug)]
pub struct AffinitySettings {
    /// How long a response id's owner is remembered (`[responses] owner_ttl_hours`, default 720
    /// = 30 days, OpenAI's retention of stored responses).
    pub owner_ttl: Duration,
    /// Response owners kept in memory (`[responses] owner_max_entries`, default 200000).
    pub owner_max_entries: usize,
    /// Sticky sessions kept in memory (`[routing.sticky] max_entries`, default 100000).
    pub session_max_entries: usize,
}

impl Default for AffinitySettings {
    fn default() -> Self {
        Self {
            owner_ttl: Duration::from_secs(720 * 3600),
            owner_max_entries: 200_000,
            session_max_entries: 100_000,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The database (default `sqlite://<data_dir>/poolgate.db`).
    pub database_url: DatabaseUrl,
    /// This instance's id (`POOLGATE_INSTANCE_ID`, default `hostname-pid`).
    pub instance_id: String,
    pub master_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub proxy: ProxySettings,
    pub cooldown: CooldownPolicy,
    pub usage: UsageSettings,
    pub database: DatabaseSettings,
    /// Shared runtime state; `None` = this instance keeps its own.
    pub redis: Option<RedisSettings>,
    /// `[server]`: the client side (timeouts, connection cap).
    pub server: ServerSettings,
    /// `[network]`: where backends may point.
    pub network: EgressPolicy,
    pub limits: LimitsSettings,
    pub pools: Vec<Pool>,
    pub backends: Vec<BackendSpec>,
    /// `[metrics]` and `[telemetry]`.
    pub telemetry: TelemetrySettings,
    pub health: HealthSettings,
    /// The config file's aliases (written to the store at every start, `source = config`).
    pub aliases: BTreeMap<String, CanonicalModel>,
    /// The config file's `[routing.sticky]`, if any (written to the store at every start).
    pub sticky: Option<StickySettings>,
    pub affinity: AffinitySettings,
    /// `[tokens]`: how requests are estimated for TPM limits.
    pub tokens: EstimateSettings,
    /// The config file's `[prices]`: over the embedded defaults, under the admin API's.
    pub prices: BTreeMap<String, crate::pricing::ModelPrice>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database_url: DatabaseUrl::Sqlite(PathBuf::from(DEFAULT_DATA_DIR).join("poolgate.db")),
            instance_id: default_instance_id(),
            master_key_file: None,
            log_format: LogFormat::Human,
            proxy: ProxySettings::default(),
            cooldown: CooldownPolicy::default(),
            usage: UsageSettings::default(),
            database: DatabaseSettings::default(),
            redis: None,
            server: ServerSettings::default(),
            network: EgressPolicy::default(),
            limits: LimitsSettings::default(),
            pools: Vec::new(),
            backends: Vec::new(),
            telemetry: TelemetrySettings::default(),
            health: HealthSettings::default(),
            aliases: BTreeMap::new(),
            sticky: None,
            affinity: AffinitySettings::default(),
            tokens: EstimateSettings::default(),
            prices: BTreeMap::new(),
        }
    }
}

/// Values from the command line or environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub redis_url: Option<String>,
    pub instance_id: Option<String>,
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

        let server = validate_server(raw.server)?;
        let proxy = validate_proxy(raw.proxy, server.max_connections)?;
        let network = validate_network(raw.network)?;
        let limits = validate_limits(raw.limits)?;
        let tokens = validate_tokens(raw.tokens)?;
        let telemetry = TelemetrySettings::from_raw(raw.metrics, raw.telemetry, env)?;
        let health = validate_health(raw.health)?;
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
            buffer_records: raw
                .usage
                .buffer_records
                .unwrap_or(defaults.usage.buffer_records)
                .clamp(1, 10_000_000),
            retention: match raw.usage.retention_days {
                None => None,
                Some(days @ 1..=36_500) => Some(Duration::from_secs(u64::from(days) * 86_400)),
                Some(_) => {
                    return Err(Invalid::new(
                        "usage.retention_days",
                        "must be between 1 and 36500 (leave it out to keep usage forever)",
                    ))
                }
            },
            journal: raw.usage.journal.unwrap_or(defaults.usage.journal),
            journal_segment_bytes: raw
                .usage
                .journal_segment_bytes
                .unwrap_or(defaults.usage.journal_segment_bytes)
                .clamp(64 * 1024, 1024 * 1024 * 1024),
            rollup_retention: match raw.usage.rollup_retention_days {
                None => defaults.usage.rollup_retention,
                Some(days @ 1..=36_500) => Duration::from_secs(u64::from(days) * 86_400),
                Some(_) => {
                    return Err(Invalid::new(
                        "usage.rollup_retention_days",
                        "must be between 1 and 36500",
                    ))
                }
            },
        };
        // Stats over ranges older than the raw records read the rollup: it must reach as far
        // back. Left out, it follows a longer raw retention.
        let usage = match usage.retention {
            Some(raw_retention) if usage.rollup_retention < raw_retention => {
                if raw.usage.rollup_retention_days.is_some() {
                    return Err(Invalid::new(
                        "usage.rollup_retention_days",
                        format!(
                            "must be at least `usage.retention_days` ({} days): statistics \
                             over older ranges read the rollup",
                            raw_retention.as_secs() / 86_400
                        ),
                    ));
                }
                UsageSettings {
                    rollup_retention: raw_retention,
                    ..usage
                }
            }
            _ => usage,
        };
        let database = cluster::validate_database(raw.database)?;
        let redis = cluster::validate_redis(raw.redis, overrides.redis_url)?;
        let instance_id = match overrides.instance_id.or(raw.instance_id) {
            Some(id) => cluster::validate_instance_id("instance_id", &id)?,
            None => defaults.instance_id,
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
            network.check_base_url(&format!("backends[{i}].api_base_url"), &spec.api_base_url)?;
            if backends.iter().any(|b| b.name == spec.name) {
                return Err(Invalid::new(
                    format!("backends[{i}].name"),
                    format!("backend `{}` is declared twice", spec.name),
                ));
            }
            backends.push(spec);
        }

        let aliases: BTreeMap<String, CanonicalModel> = raw
            .aliases
            .into_iter()
            .map(|(alias, target)| (alias, CanonicalModel::new(target)))
            .collect();
        validate_alias_table(&aliases, &|alias| format!("aliases.{alias}"))?;
        let sticky = raw
            .routing
            .sticky
            .as_ref()
            .map(|sticky| {
                sticky
                    .settings()
                    .validate(&|field| format!("routing.sticky.{field}"))
            })
            .transpose()?;
        let affinity = validate_affinity(&raw.routing, &raw.responses)?;

        let data_dir = overrides
            .data_dir
            .or(raw.data_dir)
            .unwrap_or(defaults.data_dir);
        let database_url = match overrides.database_url.or(raw.database_url) {
            Some(url) => DatabaseUrl::parse("database_url", &url)?,
            None => DatabaseUrl::Sqlite(data_dir.join("poolgate.db")),
        };
        // Model ids are checked like every other model name (the layering itself cannot fail).
        crate::pricing::PriceTable::default()
            .merged(raw.prices.clone(), crate::pricing::PriceSource::Config)
            .map_err(|error| match error {
                crate::pricing::PriceTableError::Invalid(invalid) => invalid,
                other => Invalid::new("prices", other.to_string()),
            })?;
        let prices = raw.prices;
        Ok(Config {
            listen,
            data_dir,
            database_url,
            instance_id,
            master_key_file: overrides.master_key_file.or(raw.master_key_file),
            log_format: overrides.log_format.or(raw.log_format).unwrap_or_default(),
            proxy,
            cooldown,
            usage,
            database,
            redis,
            server,
            network,
            limits,
            pools,
            backends,
            telemetry,
            health,
            aliases,
            sticky,
            affinity,
            tokens,
            prices,
        })
    }
}

fn validate_affinity(
    routing: &RawRouting,
    responses: &RawResponses,
) -> Result<AffinitySettings, Invalid> {
    let defaults = AffinitySettings::default();
    let entries = |field: &str, value: Option<usize>, default: usize| match value {
        None => Ok(default),
        Some(n) if (1..=10_000_000).contains(&n) => Ok(n),
        Some(_) => Err(Invalid::new(field, "must be between 1 and 10000000")),
    };
    let owner_ttl = match responses.owner_ttl_hours {
        None => defaults.owner_ttl,
        Some(hours) if (1..=8760).contains(&hours) => Duration::from_secs(hours * 3600),
        Some(_) => {
            return Err(Invalid::new(
                "responses.owner_ttl_hours",
                "must be between 1 and 8760 hours",
            ))
        }
    };
    Ok(AffinitySettings {
        owner_ttl,
        owner_max_entries: entries(
            "responses.owner_max_entries",
            responses.owner_max_entries,
            defaults.owner_max_entries,
        )?,
        session_max_entries: entries(
            "routing.sticky.max_entries",
            routing.sticky.as_ref().and_then(|s| s.max_entries),
            defaults.session_max_entries,
        )?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CanonicalModel, HttpVersion};
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
    fn backends_take_an_http_version() {
        let backend = |version: &str| {
            format!(
                "[[backends]]\nname = \"a\"\napi_base_url = \"http://x/v1\"\napi_key = \"k\"\n{version}"
            )
        };
        let config = load(&backend("")).unwrap();
        assert_eq!(config.backends[0].http_version, HttpVersion::Auto);
        let config = load(&backend("http_version = \"http2\"\n")).unwrap();
        assert_eq!(config.backends[0].http_version, HttpVersion::Http2);
        let config = load(&backend("http_version = \"http1\"\n")).unwrap();
        assert_eq!(config.backends[0].http_version, HttpVersion::Http1);
        let error = load(&backend("http_version = \"h2c\"\n")).unwrap_err();
        assert!(
            error.contains("backends[0].http_version") && error.contains("h2c"),
            "{error}"
        );
    }

    #[test]
    fn rollup_retention_defaults_to_400_days_and_is_bounded() {
        let config = load("").unwrap();
        assert_eq!(
            config.usage.rollup_retention,
            Duration::from_secs(400 * 86_400)
        );
        assert_eq!(config.usage.retention, None);
        let config = load("[usage]\nretention_days = 7\nrollup_retention_days = 30").unwrap();
        assert_eq!(
            config.usage.rollup_retention,
            Duration::from_secs(30 * 86_400)
        );
        let error = load("[usage]\nrollup_retention_days = 0").unwrap_err();
        assert!(error.contains("usage.rollup_retention_days"), "{error}");
        // The rollup must reach as far back as the raw records: set lower, refused; left out,
        // it follows a longer raw retention.
        let error = load("[usage]\nretention_days = 30\nrollup_retention_days = 29").unwrap_err();
        assert!(
            error.contains("usage.rollup_retention_days")
                && error.contains("must be at least `usage.retention_days` (30 days)"),
            "{error}"
        );
        let config = load("[usage]\nretention_days = 30\nrollup_retention_days = 30").unwrap();
        assert_eq!(
            config.usage.rollup_retention,
            Duration::from_secs(30 * 86_400)
        );
        let config = load("[usage]\nretention_days = 500").unwrap();
        assert_eq!(
            config.usage.rollup_retention,
            Duration::from_secs(500 * 86_400)
        );
    }

    #[test]
    fn the_upstream_idle_timeout_defaults_under_five_seconds_and_is_bounded() {
        let default = load("").unwrap().proxy.upstream_idle_timeout;
        assert_eq!(default, Duration::from_secs(4));
        let config = load("[proxy]\nupstream_idle_timeout_ms = 60000").unwrap();
        assert_eq!(config.proxy.upstream_idle_timeout, Duration::from_secs(60));
        let config = load("[proxy]\nupstream_idle_timeout_ms = 0").unwrap();
        assert_eq!(config.proxy.upstream_idle_timeout, Duration::ZERO);
        let error = load("[proxy]\nupstream_idle_timeout_ms = 3600001").unwrap_err();
        assert!(
            error.contains("proxy.upstream_idle_timeout_ms")
                && error.contains("must be at most 3600000"),
            "{error}"
        );
    }

    #[test]
    fn the_upstream_ca_file_is_read_and_checked_at_start() {
        assert!(load("").unwrap().proxy.upstream_ca.is_empty());
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let with = |path: &Path| {
            load(&format!(
                "[proxy]\nupstream_ca_file = {:?}\n",
                path.display().to_string()
            ))
        };
        let config = with(&fixtures.join("ca.pem")).unwrap();
        assert_eq!(config.proxy.upstream_ca.len(), 1);
        // A certificate's CA flag is not checked here: a server's own certificate loads (and
        // shows later as `UnknownIssuer` in the backend's `last_error`).
        assert_eq!(
            with(&fixtures.join("server.pem"))
                .unwrap()
                .proxy
                .upstream_ca
                .len(),
            1
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = with(&missing).unwrap_err();
        assert!(
            error.contains("proxy.upstream_ca_file") && error.contains("cannot read"),
            "{error}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let error = with(&empty).unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = with(&broken).unwrap_err();
        assert!(
            error.contains("certificate 1 of")
                && error.contains("is not a usable X.509 certificate"),
            "{error}"
        );
        // A private key is not a certificate.
        let error = with(&fixtures.join("server.key")).unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }

    #[test]
    fn usage_grace_defaults_switches_off_and_is_bounded() {
        let config = load("").unwrap();
        assert_eq!(config.proxy.usage_grace, Duration::from_millis(2000));
        assert_eq!(config.proxy.usage_grace_max_bytes, 1024 * 1024);
        let config = load("[proxy]\nusage_grace_ms = 0\nusage_grace_max_bytes = 4096\n").unwrap();
        assert!(config.proxy.usage_grace.is_zero());
        assert_eq!(config.proxy.usage_grace_max_bytes, 4096);
        let error = load("[proxy]\nusage_grace_ms = 60001\n").unwrap_err();
        assert!(error.contains("proxy.usage_grace_ms"), "{error}");
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
    fn observability_sections_parse_and_name_their_fields() {
        let config = load(
            r#"
            [proxy]
            expose_routing_headers = true
            [metrics]
            token = "env:OPENAI_KEY"
            client_key_labels = true
            [telemetry]
            otlp_endpoint = "http://127.0.0.1:4318"
            access_log = false
            [health]
            shutdown_delay_seconds = 5
            ready_timeout_ms = 250
            "#,
        )
        .unwrap();
        assert!(config.proxy.expose_routing_headers);
        assert!(config.telemetry.observer.client_key_labels);
        assert!(!config.telemetry.observer.access_log);
        assert_eq!(
            config
                .telemetry
                .metrics
                .token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            Some("sk-from-env-123456".to_owned())
        );
        assert_eq!(
            config.telemetry.trace.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(config.health.shutdown_delay, Duration::from_secs(5));
        assert_eq!(config.health.ready_timeout, Duration::from_millis(250));

        let defaults = load("").unwrap();
        assert!(!defaults.proxy.expose_routing_headers);
        assert!(defaults.telemetry.metrics.enabled && defaults.telemetry.observer.access_log);
        assert_eq!(defaults.health.shutdown_delay, Duration::ZERO);

        for (text, field) in [
            ("[metrics]\ntoken = \"short\"\n", "metrics.token"),
            ("[metrics]\ntoken = \"env:NOT_SET\"\n", "metrics.token"),
            (
                "[telemetry]\notlp_endpoint = \"collector\"\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "[health]\nshutdown_delay_seconds = 7200\n",
                "health.shutdown_delay_seconds",
            ),
            (
                "[health]\nready_timeout_ms = 0\n",
                "health.ready_timeout_ms",
            ),
            ("[metrics]\nenable = true\n", "enable"),
        ] {
            let error = load(text).unwrap_err();
            assert!(error.contains(field), "{text}: {error}");
        }
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

    /// The config file of the README is valid as written (with its keys in the environment).
    #[test]
    fn the_readme_config_example_is_valid() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
        let text = &readme[start..start + readme[start..].find("```").unwrap()];
        let raw = parse_toml(text).unwrap();
        let config = Config::from_raw(raw, Overrides::default(), &|name| {
            name.ends_with("_API_KEY")
                .then(|| format!("sk-{name}-0001"))
        })
        .unwrap();
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.backends[1].api, crate::domain::ApiKind::Azure);
        assert_eq!(
            config.aliases[&"gpt-4o-latest".to_owned()].as_str(),
            "gpt-4o"
        );
        assert!(!config.sticky.unwrap().enabled);
        assert_eq!(config.affinity.owner_ttl, Duration::from_secs(720 * 3600));
        assert_eq!(config.prices["my-llama-70b"].input.nanodollars(), 600);
    }

    #[test]
    fn prices_are_exact_and_errors_name_the_field() {
        let config = Config::from_raw(
            parse_toml("[prices.\"m\"]\ninput_per_mtok = \"0.075\"\noutput_per_mtok = 15\n")
                .unwrap(),
            Overrides::default(),
            &|_| None,
        )
        .unwrap();
        assert_eq!(config.prices["m"].input.nanodollars(), 75);
        assert_eq!(config.prices["m"].output.nanodollars(), 15_000);
        let error =
            load("[prices.\"m\"]\ninput_per_mtok = 0.0001\noutput_per_mtok = 1\n").unwrap_err();
        assert!(
            error.contains("prices") && error.contains("decimal places"),
            "{error}"
        );
        let error = load("[prices.\"m\"]\ninput_per_mtok = 1\n").unwrap_err();
        assert!(error.contains("output_per_mtok"), "{error}");
        let error = load("[prices.\"\"]\ninput_per_mtok = 1\noutput_per_mtok = 1\n").unwrap_err();
        assert!(error.contains("prices."), "{error}");
    }

    #[test]
    fn routing_and_responses_sections_are_checked() {
        let error = load("[routing.sticky]\nleading_turns = 0\n").unwrap_err();
        assert!(error.contains("routing.sticky.leading_turns"), "{error}");
        let error = load("[routing.sticky]\nmax_entries = 0\n").unwrap_err();
        assert!(error.contains("routing.sticky.max_entries"), "{error}");
        let error = load("[responses]\nowner_ttl_hours = 0\n").unwrap_err();
        assert!(error.contains("responses.owner_ttl_hours"), "{error}");
        let error = load("[routing.sticky]\nnope = 1\n").unwrap_err();
        assert!(error.contains("nope"), "{error}");
        let error = load("[aliases]\n\"x\" = \"x\"\n").unwrap_err();
        assert!(error.contains("aliases.x"), "{error}");
        assert!(
            load("").unwrap().sticky.is_none(),
            "no section: the stored setting stands"
        );
    }

    #[test]
    fn the_database_defaults_to_the_data_dir_and_can_be_named() {
        let config = load("data_dir = \"/srv/pg\"\n").unwrap();
        assert_eq!(
            config.database_url,
            DatabaseUrl::Sqlite(PathBuf::from("/srv/pg/poolgate.db"))
        );
        let raw = parse_toml("database_url = \"sqlite:///var/pg.db\"\n").unwrap();
        let config = Config::from_raw(raw, Overrides::default(), &|_| None).unwrap();
        assert_eq!(config.database_url.to_string(), "sqlite:///var/pg.db");
        let raw = parse_toml("database_url = \"sqlite:///var/pg.db\"\n").unwrap();
        let overrides = Overrides {
            database_url: Some("sqlite:///other.db".into()),
            ..Overrides::default()
        };
        let config = Config::from_raw(raw, overrides, &|_| None).unwrap();
        assert_eq!(config.database_url.to_string(), "sqlite:///other.db");
        let error = load("database_url = \"oracle://db\"\n").unwrap_err();
        assert!(error.contains("database_url"), "{error}");
    }
}
