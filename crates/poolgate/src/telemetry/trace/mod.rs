//! OpenTelemetry traces over OTLP HTTP/protobuf, off unless an endpoint is configured.
//!
//! Settings follow the OpenTelemetry environment variables, which win over the config file:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (the
//! collector's base URL, `/v1/traces` appended), else `[telemetry] otlp_endpoint`;
//! `OTEL_SERVICE_NAME` else `[telemetry] service_name` else `poolgate`;
//! `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` must be `http/protobuf` (the only transport built
//! in); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn tracing off. The SDK itself
//! reads `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`),
//! `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` / `_TIMEOUT` and the `OTEL_BSP_*` batch settings.
//!
//! Spans are made with the OpenTelemetry API directly ([`spans`]), not through
//! `tracing-opentelemetry`: with tracing off there is no tracer at all and a request carries
//! `None`, and the spans get exactly the kind, parent and attributes the conventions ask for.

mod export;
pub(crate) mod spans;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use super::TelemetryError;

/// Where traces go and under which service name; `None` from [`TraceSettings::resolve`]
/// means tracing is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSettings {
    /// The full OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `service.name`; `None` leaves it to `OTEL_SERVICE_NAME` (read by the SDK).
    pub service_name: Option<String>,
    /// Export timeout (`OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` in milliseconds, default 10 s).
    pub timeout: Duration,
}

/// The config-file half of the trace settings (`[telemetry]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// The collector's base URL, e.g. `http://127.0.0.1:4318`.
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

const DEFAULT_SERVICE_NAME: &str = "poolgate";
const TRACES_PATH: &str = "/v1/traces";

impl TraceSettings {
    /// Resolves the settings from `env` (the process environment in production, a map in tests)
    /// over the config file's values.
    pub fn resolve(
        config: &TraceConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceSettings>, TelemetryError> {
        let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporter) = var("OTEL_TRACES_EXPORTER") {
            match exporter.trim() {
                "none" => return Ok(None),
                "otlp" => {}
                other => {
                    return Err(TelemetryError::Unsupported {
                        variable: "OTEL_TRACES_EXPORTER",
                        value: other.to_owned(),
                        supported: "otlp, none",
                    })
                }
            }
        }
        let endpoint = if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim())?)
        } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(traces_url("OTEL_EXPORTER_OTLP_ENDPOINT", &base)?)
        } else if let Some(base) = &config.otlp_endpoint {
            Some(traces_url("telemetry.otlp_endpoint", base)?)
        } else {
            None
        };
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(variable) {
                if protocol.trim() != "http/protobuf" {
                    return Err(TelemetryError::Unsupported {
                        variable,
                        value: protocol,
                        supported: "http/protobuf",
                    });
                }
                break;
            }
        }
        let timeout = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        let service_name = if var("OTEL_SERVICE_NAME").is_some() {
            None
        } else {
            Some(
                config
                    .service_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
            )
        };
        Ok(Some(TraceSettings {
            endpoint,
            service_name,
            timeout,
        }))
    }

    /// [`TraceSettings::resolve`] over the process environment.
    pub fn from_env(config: &TraceConfig) -> Result<Option<TraceSettings>, TelemetryError> {
        Self::resolve(config, |name| std::env::var(name).ok())
    }
}

fn check_url(source: &'static str, url: &str) -> Result<String, TelemetryError> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
            Ok(url.to_owned())
        }
        _ => Err(TelemetryError::InvalidEndpoint {
            source_name: source,
            value: url.to_owned(),
        }),
    }
}

/// A collector base URL plus `/v1/traces` (the OTLP/HTTP rule for the non-signal variable).
fn traces_url(source: &'static str, base: &str) -> Result<String, TelemetryError> {
    let base = check_url(source, base.trim())?;
    Ok(format!("{}{TRACES_PATH}", base.trim_end_matches('/')))
}

/// A running trace pipeline: the tracer requests use, and the provider whose
/// [`Tracing::shutdown`] flushes what is still queued.
pub struct Tracing {
    provider: SdkTracerProvider,
    pub(crate) tracer: SdkTracer,
}

impl Tracing {
    /// Starts the batch exporter. Must run inside the gateway's tokio runtime (exports are
    /// spawned onto it).
    pub fn start(settings: &TraceSettings) -> Result<Tracing, TelemetryError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        let client = export::RuntimeHttpClient::new(runtime, settings.timeout)
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        let mut resource = Resource::builder();
        if let Some(name) = &settings.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("poolgate");
        Ok(Tracing { provider, tracer })
    }

    /// Exports every span still queued and stops the exporter. The SDK blocks while it
    /// flushes, so this runs on a blocking thread while the runtime keeps driving the export.
    pub async fn shutdown(self) {
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "trace exporter did not shut down cleanly"),
            Err(error) => tracing::warn!(%error, "trace exporter shutdown task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(
        config: &TraceConfig,
        vars: &[(&str, &str)],
    ) -> Result<Option<TraceSettings>, TelemetryError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceSettings::resolve(config, |name| vars.get(name).cloned())
    }

    #[test]
    fn off_by_default() {
        assert_eq!(resolve(&TraceConfig::default(), &[]).unwrap(), None);
    }

    #[test]
    fn base_endpoint_gets_the_traces_path_and_signal_endpoint_is_used_as_is() {
        let on = resolve(
            &TraceConfig::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(on.service_name.as_deref(), Some("poolgate"));
        assert_eq!(on.timeout, Duration::from_secs(10));

        let signal = resolve(
            &TraceConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://c.example/otlp/traces",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(signal.endpoint, "https://c.example/otlp/traces");
        assert_eq!(signal.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn environment_wins_over_the_config_file() {
        let config = TraceConfig {
            otlp_endpoint: Some("http://from-file:4318".into()),
            service_name: Some("gateway-eu".into()),
        };
        let from_file = resolve(&config, &[]).unwrap().unwrap();
        assert_eq!(from_file.endpoint, "http://from-file:4318/v1/traces");
        assert_eq!(from_file.service_name.as_deref(), Some("gateway-eu"));

        let from_env = resolve(
            &config,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4318"),
                ("OTEL_SERVICE_NAME", "svc"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(from_env.endpoint, "http://from-env:4318/v1/traces");
        // The SDK reads OTEL_SERVICE_NAME itself.
        assert_eq!(from_env.service_name, None);

        assert_eq!(
            resolve(&config, &[("OTEL_SDK_DISABLED", "true")]).unwrap(),
            None
        );
        assert_eq!(
            resolve(&config, &[("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn unsupported_protocols_and_bad_urls_are_refused_by_name() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let error = resolve(&TraceConfig::default(), &env).unwrap_err();
        assert!(
            error.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{error}"
        );
        assert!(error.to_string().contains("http/protobuf"), "{error}");

        // The signal-specific protocol wins over the general one.
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert!(resolve(&TraceConfig::default(), &env).unwrap().is_some());

        let config = TraceConfig {
            otlp_endpoint: Some("collector:4318".into()),
            service_name: None,
        };
        let error = resolve(&config, &[]).unwrap_err();
        assert!(
            error.to_string().contains("telemetry.otlp_endpoint"),
            "{error}"
        );

        let error = resolve(
            &TraceConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("OTEL_TRACES_EXPORTER"),
            "{error}"
        );
    }
}
