//! Validation of the raw config sections into their settings; errors name the path
//! (`proxy.max_attempts`, `backends[1].rpm_limit`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use secrecy::SecretString;

use super::raw::{
    RawBackend, RawCooldown, RawHealth, RawLimits, RawNetwork, RawProxy, RawServer, RawTokens,
};
use super::{HealthSettings, LimitsSettings, ProxySettings};
use crate::cooldown::CooldownPolicy;
use crate::domain::{literal_or_env, BackendInput, BackendSpec, Invalid};
use crate::egress::EgressPolicy;
use crate::serving::{per_core, BodyPace, Http1Server, ServerRuntime, ServerSettings};
use crate::token_count::EstimateSettings;

/// A whole number of seconds, at least 1; absent = `default`.
fn positive_seconds(
    field: &str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, Invalid> {
    match value {
        None => Ok(default),
        Some(0) => Err(Invalid::new(field, "must be at least 1 second")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// `[proxy]`; `max_connections` (of `[server]`) gives the default of `max_in_flight`
/// ([`default_max_in_flight`]).
/// The default `proxy.max_in_flight`: `max_connections` less a reserve of 64 connections (at most
/// half of them) for the admin API and health checks while the proxy is full. `max_connections`
/// already leaves a file descriptor per connection for its upstream socket, so halving again
/// would refuse half of what the open-file limit can carry (a 20,000 limit served 4,968 streams).
pub fn default_max_in_flight(max_connections: usize) -> usize {
    max_connections
        .saturating_sub((max_connections / 2).min(64))
        .max(1)
}

pub fn validate_proxy(raw: RawProxy, max_connections: usize) -> Result<ProxySettings, Invalid> {
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
    let seconds = positive_seconds;
    let anthropic_default_max_tokens = raw
        .anthropic_default_max_tokens
        .unwrap_or(defaults.anthropic_default_max_tokens);
    if anthropic_default_max_tokens == 0 {
        return Err(Invalid::new(
            "proxy.anthropic_default_max_tokens",
            "must be at least 1",
        ));
    }
    let max_in_flight = raw
        .max_in_flight
        .unwrap_or_else(|| default_max_in_flight(max_connections));
    if max_in_flight == 0 {
        return Err(Invalid::new("proxy.max_in_flight", "must be at least 1"));
    }
    let max_response_bytes = raw
        .max_response_bytes
        .unwrap_or(defaults.max_response_bytes);
    if max_response_bytes < 1024 {
        return Err(Invalid::new(
            "proxy.max_response_bytes",
            "must be at least 1024",
        ));
    }
    let usage_grace_ms = raw
        .usage_grace_ms
        .unwrap_or(u64::try_from(defaults.usage_grace.as_millis()).unwrap_or(u64::MAX));
    if usage_grace_ms > 60_000 {
        return Err(Invalid::new(
            "proxy.usage_grace_ms",
            "must be at most 60000",
        ));
    }
    let usage_grace_max_bytes = raw
        .usage_grace_max_bytes
        .unwrap_or(defaults.usage_grace_max_bytes);
    if usage_grace_max_bytes > 1024 * 1024 * 1024 {
        return Err(Invalid::new(
            "proxy.usage_grace_max_bytes",
            "must be at most 1073741824",
        ));
    }
    let upstream_idle_timeout_ms = raw
        .upstream_idle_timeout_ms
        .unwrap_or(u64::try_from(defaults.upstream_idle_timeout.as_millis()).unwrap_or(u64::MAX));
    let max_idle_timeout = crate::upstream::MAX_IDLE_TIMEOUT;
    if Duration::from_millis(upstream_idle_timeout_ms) > max_idle_timeout {
        return Err(Invalid::new(
            "proxy.upstream_idle_timeout_ms",
            format!("must be at most {}", max_idle_timeout.as_millis()),
        ));
    }
    Ok(ProxySettings {
        upstream_idle_timeout: Duration::from_millis(upstream_idle_timeout_ms),
        max_in_flight,
        max_response_bytes,
        usage_grace: Duration::from_millis(usage_grace_ms),
        usage_grace_max_bytes,
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
        expose_routing_headers: raw
            .expose_routing_headers
            .unwrap_or(defaults.expose_routing_headers),
        upstream_ca: match &raw.upstream_ca_file {
            Some(path) => upstream_ca(path)?,
            None => defaults.upstream_ca,
        },
    })
}

/// The certificates of `proxy.upstream_ca_file`: a PEM file of one or more certificates, each
/// one rustls can take as a trust anchor (an X.509 certificate it parses; its CA flag is not
/// looked at — a server's own certificate given by mistake shows later, as `UnknownIssuer` in
/// the backend's `last_error`). Other PEM sections (a key) are skipped. A relative path is
/// taken from the working directory.
fn upstream_ca(path: &Path) -> Result<Arc<[CertificateDer<'static>]>, Invalid> {
    const FIELD: &str = "proxy.upstream_ca_file";
    let pem = std::fs::read(path)
        .map_err(|error| Invalid::new(FIELD, format!("cannot read {}: {error}", path.display())))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            Invalid::new(
                FIELD,
                format!("{} is not a PEM certificate file: {error}", path.display()),
            )
        })?;
    if certificates.is_empty() {
        return Err(Invalid::new(
            FIELD,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (index, certificate) in certificates.iter().enumerate() {
        roots.add(certificate.clone()).map_err(|error| {
            Invalid::new(
                FIELD,
                format!(
                    "certificate {} of {} is not a usable X.509 certificate: {error}",
                    index + 1,
                    path.display()
                ),
            )
        })?;
    }
    Ok(certificates.into())
}

pub fn validate_health(raw: RawHealth) -> Result<HealthSettings, Invalid> {
    let defaults = HealthSettings::default();
    let shutdown_delay = raw.shutdown_delay_seconds.unwrap_or(0);
    if shutdown_delay > 3600 {
        return Err(Invalid::new(
            "health.shutdown_delay_seconds",
            "must be at most 3600",
        ));
    }
    let ready_timeout = raw
        .ready_timeout_ms
        .map_or(defaults.ready_timeout, Duration::from_millis);
    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&ready_timeout) {
        return Err(Invalid::new(
            "health.ready_timeout_ms",
            "must be between 10 and 60000",
        ));
    }
    Ok(HealthSettings {
        shutdown_delay: Duration::from_secs(shutdown_delay),
        ready_timeout,
    })
}

pub fn validate_cooldown(raw: RawCooldown) -> Result<CooldownPolicy, Invalid> {
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

/// A config file backend: its key resolved (`env:VAR` reads the environment), then the rules
/// every backend input follows, with errors naming `backends[i].<field>`.
pub fn validate_backend(
    i: usize,
    raw: RawBackend,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BackendSpec, Invalid> {
    let at = |field: &str| format!("backends[{i}].{field}");
    let api_key = literal_or_env(&at("api_key"), raw.api_key, env)?;
    BackendInput {
        name: raw.name,
        label: (!raw.label.is_empty()).then_some(raw.label),
        api_base_url: raw.api_base_url,
        api_key: SecretString::from(api_key),
        api: Some(raw.api),
        timeout_seconds: raw.timeout_seconds,
        rpm_limit: Some(raw.rpm_limit),
        weight: raw.weight,
        pool: raw.pool,
        enabled: raw.enabled,
        model_mappings: raw.model_mappings,
        metadata: raw.metadata,
        responses: raw.responses,
        api_version: raw.api_version,
        tpm_limit: Some(raw.tpm_limit),
        http_version: raw.http_version,
    }
    .validate(&at)
}

/// `[server]`: timeouts and the connection cap of the client side. A timeout of 0 turns the body
/// and write limits off; the header and keep-alive timeouts must be positive.
pub fn validate_server(raw: RawServer) -> Result<ServerSettings, Invalid> {
    let defaults = ServerSettings::default();
    let positive = positive_seconds;
    let body_timeout = raw
        .body_read_timeout_seconds
        .map(Duration::from_secs)
        .or(defaults.body_pace.map(|pace| pace.timeout))
        .unwrap_or_default();
    let min_rate = raw
        .body_min_rate_bytes_per_second
        .or(defaults.body_pace.map(|pace| pace.min_rate))
        .unwrap_or_default();
    let write_timeout = match raw.write_timeout_seconds {
        None => defaults.write_timeout,
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
    };
    let settings = ServerSettings {
        header_read_timeout: positive(
            "server.header_read_timeout_seconds",
            raw.header_read_timeout_seconds,
            defaults.header_read_timeout,
        )?,
        keep_alive_timeout: positive(
            "server.keep_alive_timeout_seconds",
            raw.keep_alive_timeout_seconds,
            defaults.keep_alive_timeout,
        )?,
        body_pace: (!body_timeout.is_zero()).then_some(BodyPace {
            timeout: body_timeout,
            min_rate,
        }),
        write_timeout,
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
        max_buf_size: raw.max_buf_size_bytes.unwrap_or(defaults.max_buf_size),
        http2: raw.http2.unwrap_or(defaults.http2),
        http2_max_concurrent_streams: raw
            .http2_max_concurrent_streams
            .unwrap_or(defaults.http2_max_concurrent_streams),
        http1_server: match raw.http1_server.as_deref() {
            None => defaults.http1_server,
            Some("poolgate") => Http1Server::Poolgate,
            Some("hyper") => Http1Server::Hyper,
            Some(other) => {
                return Err(Invalid::new(
                    "server.http1_server",
                    format!(
                        "unknown HTTP/1.1 server `{other}`; expected \"poolgate\" or \"hyper\""
                    ),
                ))
            }
        },
        runtime: server_runtime(raw.runtime.as_deref(), raw.per_core_threads)?,
    };
    settings.validate()?;
    Ok(settings)
}

/// `server.runtime` (default `"thread_per_core"`) and `server.per_core_threads` (only
/// meaningful with `"thread_per_core"`).
fn server_runtime(name: Option<&str>, threads: Option<usize>) -> Result<ServerRuntime, Invalid> {
    match name.unwrap_or("thread_per_core") {
        "work_stealing" => {
            if threads.is_some_and(|threads| threads > 0) {
                return Err(Invalid::new(
                    "server.per_core_threads",
                    "needs runtime = \"thread_per_core\"",
                ));
            }
            Ok(ServerRuntime::WorkStealing)
        }
        "thread_per_core" => Ok(ServerRuntime::ThreadPerCore {
            threads: match threads {
                None | Some(0) => per_core::default_threads(),
                Some(threads) => threads,
            },
        }),
        other => Err(Invalid::new(
            "server.runtime",
            format!("unknown runtime `{other}`; expected \"work_stealing\" or \"thread_per_core\""),
        )),
    }
}

/// `[network]`: the egress policy; errors name the entry (`network.allow[1]`).
pub fn validate_network(raw: RawNetwork) -> Result<EgressPolicy, Invalid> {
    EgressPolicy::new(raw.allow_private.unwrap_or(true), &raw.allow, &raw.deny)
}

/// `[limits]`: the bucket-level checkpoint interval, 100 ms to 60 s.
/// `[tokens]`: the request estimate's tunables.
pub fn validate_tokens(raw: RawTokens) -> Result<EstimateSettings, Invalid> {
    let defaults = EstimateSettings::default();
    let default_output_tokens = raw
        .default_output_tokens
        .unwrap_or(defaults.default_output_tokens);
    let max_output_reserve = raw
        .max_output_reserve
        .unwrap_or(defaults.max_output_reserve);
    if !(1..=10_000_000).contains(&max_output_reserve) {
        return Err(Invalid::new(
            "tokens.max_output_reserve",
            "must be between 1 and 10000000",
        ));
    }
    if default_output_tokens > max_output_reserve {
        return Err(Invalid::new(
            "tokens.default_output_tokens",
            "must not be above `tokens.max_output_reserve`",
        ));
    }
    let exact = raw
        .exact_budget_bytes
        .unwrap_or(defaults.exact_budget_bytes as u64);
    if exact > 16 * 1024 * 1024 {
        return Err(Invalid::new(
            "tokens.exact_budget_bytes",
            "must be at most 16777216",
        ));
    }
    Ok(EstimateSettings {
        default_output_tokens,
        max_output_reserve,
        exact_budget_bytes: usize::try_from(exact).unwrap_or(usize::MAX),
    })
}

pub fn validate_limits(raw: RawLimits) -> Result<LimitsSettings, Invalid> {
    let defaults = LimitsSettings::default();
    let interval = raw
        .checkpoint_interval_ms
        .map_or(defaults.checkpoint_interval, Duration::from_millis);
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(60) {
        return Err(Invalid::new(
            "limits.checkpoint_interval_ms",
            "must be between 100 and 60000",
        ));
    }
    Ok(LimitsSettings {
        checkpoint_interval: interval,
    })
}

#[cfg(test)]
mod tests {
    use super::{default_max_in_flight, validate_server};
    use crate::config::raw::RawServer;
    use crate::serving::{per_core, ServerRuntime};

    fn runtime(name: Option<&str>, threads: Option<usize>) -> Result<ServerRuntime, String> {
        validate_server(RawServer {
            runtime: name.map(str::to_owned),
            per_core_threads: threads,
            ..RawServer::default()
        })
        .map(|settings| settings.runtime)
        .map_err(|invalid| invalid.to_string())
    }

    #[test]
    fn http1_is_served_by_poolgate_unless_hyper_is_asked_for() {
        let http1_server = |name: Option<&str>| {
            validate_server(RawServer {
                http1_server: name.map(str::to_owned),
                ..RawServer::default()
            })
            .map(|settings| settings.http1_server)
            .map_err(|invalid| invalid.to_string())
        };
        assert_eq!(http1_server(None), Ok(super::Http1Server::Poolgate));
        assert_eq!(
            http1_server(Some("poolgate")),
            Ok(super::Http1Server::Poolgate)
        );
        assert_eq!(http1_server(Some("hyper")), Ok(super::Http1Server::Hyper));
        let unknown = http1_server(Some("nginx")).unwrap_err();
        assert!(
            unknown.contains("server.http1_server") && unknown.contains("nginx"),
            "{unknown}"
        );
    }

    #[test]
    fn the_server_runtime_is_thread_per_core_unless_work_stealing_is_asked_for() {
        assert_eq!(
            runtime(None, None),
            Ok(ServerRuntime::ThreadPerCore {
                threads: per_core::default_threads()
            })
        );
        assert_eq!(
            runtime(None, Some(3)),
            Ok(ServerRuntime::ThreadPerCore { threads: 3 })
        );
        assert_eq!(
            runtime(Some("work_stealing"), None),
            Ok(ServerRuntime::WorkStealing)
        );
        assert_eq!(
            runtime(Some("thread_per_core"), Some(3)),
            Ok(ServerRuntime::ThreadPerCore { threads: 3 })
        );
        assert_eq!(
            runtime(Some("thread_per_core"), Some(0)),
            Ok(ServerRuntime::ThreadPerCore {
                threads: per_core::default_threads()
            })
        );
        let unknown = runtime(Some("per_core"), None).unwrap_err();
        assert!(unknown.contains("server.runtime"), "{unknown}");
        let stray = runtime(Some("work_stealing"), Some(2)).unwrap_err();
        assert!(stray.contains("server.per_core_threads"), "{stray}");
        let huge = runtime(Some("thread_per_core"), Some(100_000)).unwrap_err();
        assert!(huge.contains("server.per_core_threads"), "{huge}");
    }

    #[test]
    fn max_in_flight_keeps_64_connections_back_or_half_of_few() {
        // 20,000 open files -> 9,936 connections (see serving::limits) -> 9,872 in flight.
        assert_eq!(default_max_in_flight(9_936), 9_872);
        assert_eq!(default_max_in_flight(448), 384);
        assert_eq!(default_max_in_flight(100), 50);
        assert_eq!(default_max_in_flight(1), 1);
    }
}
