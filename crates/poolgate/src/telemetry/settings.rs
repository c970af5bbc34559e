//! The telemetry part of the config file, raw then validated — `[metrics]` (who may scrape
//! `GET /metrics`, per-client-key series) and `[telemetry]` (OTLP traces, access log) — ready
//! for `config::RawConfig` to embed:
//!
//! ```toml
//! [metrics]
//! enabled = true                          # GET /metrics and the counting behind it (default true)
//! token = "env:POOLGATE_METRICS_TOKEN"    # the issue's `metrics_token`; the admin token also works
//! client_key_labels = false               # per-client-key series (one per key)
//!
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4318" # traces on; OTEL_EXPORTER_OTLP_ENDPOINT wins
//! service_name = "poolgate"               # OTEL_SERVICE_NAME wins
//! access_log = true                       # one `poolgate::access` line per request
//! access_log_flush_ms = 100               # access lines gathered and written every 100 ms (0: each at once)
//! ```
//! `POOLGATE_METRICS_TOKEN` in the environment wins over `[metrics] token`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::observer::ObserverOptions;
use super::trace::TraceConfig;
use crate::crypto::token_matches;
use crate::domain::{literal_or_env, Invalid};

pub const METRICS_TOKEN_ENV: &str = "POOLGATE_METRICS_TOKEN";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    /// A literal token, or `env:VAR`.
    pub token: Option<String>,
    pub client_key_labels: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub access_log: Option<bool>,
    pub access_log_flush_ms: Option<u64>,
}

/// Default of `[telemetry] access_log_flush_ms`.
pub const DEFAULT_ACCESS_LOG_FLUSH: Duration = Duration::from_millis(100);

/// The longest `[telemetry] access_log_flush_ms` (a minute).
const MAX_ACCESS_LOG_FLUSH_MS: u64 = 60_000;

/// Who may read `GET /metrics`.
#[derive(Clone, Debug)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// A token for scrapers besides the admin token.
    pub token: Option<SecretString>,
}

impl MetricsSettings {
    /// Whether the presented bearer token may scrape: the admin token or the metrics token,
    /// each compared in constant time.
    pub fn allows(&self, presented: Option<&str>, admin_token: &SecretString) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        let admin = token_matches(presented, admin_token.expose_secret());
        let scraper = self
            .token
            .as_ref()
            .is_some_and(|token| token_matches(presented, token.expose_secret()));
        admin | scraper
    }
}

/// The validated telemetry settings.
#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    pub metrics: MetricsSettings,
    pub observer: ObserverOptions,
    /// How long access lines may wait in their thread's buffer before they are written
    /// (`[telemetry] access_log_flush_ms`; zero: each line written at once).
    pub access_log_flush: Duration,
    /// The config-file half of the trace settings (the environment is read at start-up by
    /// [`super::TraceSettings::from_env`]).
    pub trace: TraceConfig,
}

impl Default for TelemetrySettings {
    /// Metrics on (admin token only), traces off, access log on.
    fn default() -> Self {
        TelemetrySettings {
            metrics: MetricsSettings {
                enabled: true,
                token: None,
            },
            observer: ObserverOptions {
                access_log: true,
                ..ObserverOptions::default()
            },
            access_log_flush: DEFAULT_ACCESS_LOG_FLUSH,
            trace: TraceConfig::default(),
        }
    }
}

impl TelemetrySettings {
    /// Validates the two sections; `env` resolves `env:VAR` and `POOLGATE_METRICS_TOKEN`.
    pub fn from_raw(
        metrics: RawMetrics,
        telemetry: RawTelemetry,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TelemetrySettings, Invalid> {
        let token = match env(METRICS_TOKEN_ENV) {
            Some(token) => Some((METRICS_TOKEN_ENV, token)),
            None => metrics
                .token
                .map(|token| literal_or_env("metrics.token", token, env))
                .transpose()?
                .map(|token| ("metrics.token", token)),
        };
        let token = match token {
            Some((field, token)) => {
                let token = token.trim();
                if token.len() < 16 {
                    return Err(Invalid::new(field, "must be at least 16 characters"));
                }
                if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(Invalid::new(
                        field,
                        "must not contain whitespace or control characters",
                    ));
                }
                Some(SecretString::from(token.to_owned()))
            }
            None => None,
        };
        if let Some(endpoint) = &telemetry.otlp_endpoint {
            let valid = url::Url::parse(endpoint)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
            if !valid {
                return Err(Invalid::new(
                    "telemetry.otlp_endpoint",
                    "must be an http(s) URL such as `http://127.0.0.1:4318`",
                ));
            }
        }
        if let Some(name) = &telemetry.service_name {
            if name.trim().is_empty() || name.len() > 255 {
                return Err(Invalid::new(
                    "telemetry.service_name",
                    "must be 1 to 255 characters long",
                ));
            }
        }
        let access_log_flush = match telemetry.access_log_flush_ms {
            None => DEFAULT_ACCESS_LOG_FLUSH,
            Some(ms) if ms <= MAX_ACCESS_LOG_FLUSH_MS => Duration::from_millis(ms),
            Some(_) => {
                return Err(Invalid::new(
                    "telemetry.access_log_flush_ms",
                    "must be 0 (each line written at once) to 60000",
                ))
            }
        };
        Ok(TelemetrySettings {
            metrics: MetricsSettings {
                enabled: metrics.enabled.unwrap_or(true),
                token,
            },
            observer: ObserverOptions {
                // `enabled = false` also stops the counting: nothing is paid for unread series.
                metrics: metrics.enabled.unwrap_or(true),
                client_key_labels: metrics.client_key_labels.unwrap_or(false),
                access_log: telemetry.access_log.unwrap_or(true),
            },
            access_log_flush,
            trace: TraceConfig {
                otlp_endpoint: telemetry.otlp_endpoint,
                service_name: telemetry.service_name,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str, env: &[(&str, &str)]) -> Result<TelemetrySettings, Invalid> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Sections {
            #[serde(default)]
            metrics: RawMetrics,
            #[serde(default)]
            telemetry: RawTelemetry,
        }
        let sections: Sections = toml::from_str(toml_text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TelemetrySettings::from_raw(sections.metrics, sections.telemetry, &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    const ADMIN: &str = "pga-admin-token-0123456789";

    #[test]
    fn defaults_metrics_on_traces_off_no_key_labels() {
        let settings = parse("", &[]).unwrap();
        let default = TelemetrySettings::default();
        assert_eq!(settings.observer, default.observer);
        assert_eq!(settings.metrics.enabled, default.metrics.enabled);
        assert!(settings.observer.metrics);
        assert!(settings.metrics.enabled);
        assert!(settings.metrics.token.is_none());
        assert!(!settings.observer.client_key_labels);
        assert!(settings.observer.access_log);
        assert_eq!(settings.access_log_flush, DEFAULT_ACCESS_LOG_FLUSH);
        assert_eq!(default.access_log_flush, DEFAULT_ACCESS_LOG_FLUSH);
        assert_eq!(settings.trace, TraceConfig::default());
    }

    #[test]
    fn access_log_flush_is_zero_to_a_minute() {
        let at_once = parse("[telemetry]\naccess_log_flush_ms = 0\n", &[]).unwrap();
        assert_eq!(at_once.access_log_flush, Duration::ZERO);
        let minute = parse("[telemetry]\naccess_log_flush_ms = 60000\n", &[]).unwrap();
        assert_eq!(minute.access_log_flush, Duration::from_secs(60));
        let over = parse("[telemetry]\naccess_log_flush_ms = 60001\n", &[]).unwrap_err();
        assert_eq!(over.field, "telemetry.access_log_flush_ms");
    }

    #[test]
    fn scrape_needs_the_admin_or_the_metrics_token() {
        let admin = SecretString::from(ADMIN.to_owned());
        let settings = parse(
            "[metrics]\ntoken = \"env:SCRAPE\"\n",
            &[("SCRAPE", "scraper-token-0123456789")],
        )
        .unwrap();
        assert!(settings.metrics.allows(Some(ADMIN), &admin));
        assert!(settings
            .metrics
            .allows(Some("scraper-token-0123456789"), &admin));
        assert!(!settings
            .metrics
            .allows(Some("scraper-token-012345678"), &admin));
        assert!(!settings.metrics.allows(None, &admin));

        let admin_only = parse("", &[]).unwrap();
        assert!(admin_only.metrics.allows(Some(ADMIN), &admin));
        assert!(!admin_only.metrics.allows(Some(""), &admin));
    }

    #[test]
    fn environment_token_wins_and_bad_values_name_their_field() {
        let settings = parse(
            "[metrics]\ntoken = \"file-token-0123456789\"\n",
            &[(METRICS_TOKEN_ENV, "env-token-0123456789")],
        )
        .unwrap();
        let admin = SecretString::from(ADMIN.to_owned());
        assert!(settings
            .metrics
            .allows(Some("env-token-0123456789"), &admin));
        assert!(!settings
            .metrics
            .allows(Some("file-token-0123456789"), &admin));

        let short = parse("[metrics]\ntoken = \"short\"\n", &[]).unwrap_err();
        assert_eq!(short.field, "metrics.token");
        let missing = parse("[metrics]\ntoken = \"env:NOPE\"\n", &[]).unwrap_err();
        assert!(missing.message.contains("NOPE"));
        let endpoint = parse("[telemetry]\notlp_endpoint = \"localhost\"\n", &[]).unwrap_err();
        assert_eq!(endpoint.field, "telemetry.otlp_endpoint");
    }

    #[test]
    fn sections_refuse_unknown_fields() {
        let error = toml::from_str::<RawTelemetry>("otlp_endpont = \"http://x\"").unwrap_err();
        assert!(error.to_string().contains("otlp_endpont"), "{error}");
    }

    #[test]
    fn tokens_never_print() {
        let settings = parse("[metrics]\ntoken = \"very-secret-token-123\"\n", &[]).unwrap();
        assert!(!format!("{settings:?}").contains("very-secret-token-123"));
    }
}
