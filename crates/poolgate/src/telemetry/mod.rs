//! Telemetry — one observer fed by the request phases. [`Observer`] owns the Prometheus
//! registry ([`metrics`]) and, when traces are on, the OpenTelemetry tracer ([`trace`]); each
//! client request gets a [`RequestObservation`] that the proxy phases feed:
//!
//! | phase      | call                                                    |
//! |------------|---------------------------------------------------------|
//! | context    | [`Observer::start_request`]                             |
//! | attempt    | [`RequestObservation::start_attempt`], then [`RequestObservation::inject_trace_context`] on the upstream headers |
//! | classify   | [`RequestObservation::end_attempt`] (a stream's attempt ends with the request) |
//! | relay      | [`RequestObservation::first_byte`]                      |
//! | record     | [`RequestObservation::finish`] with the usage record's fields |
//!
//! Label sets are resolved when the snapshot is built ([`handles`]); backend state is read at
//! scrape time through [`BackendStatsSource`]; process figures come from `/proc/self`.
//! Beside it: the client-facing rate-limit headers ([`headers`]), the access-log line
//! ([`access_log`]) and the config sections ([`settings`]).

pub mod access_log;
pub mod connections;
pub mod handles;
pub mod headers;
pub mod labels;
pub mod metrics;
pub mod observer;
pub mod process;
pub mod runtime;
mod scrape;
pub mod settings;
pub mod trace;

pub use connections::{ConnectionStats, ConnectionStatsSource};
pub use handles::{BackendHandle, BackendLabels, RouteHandle};
pub use labels::{AttemptResult, Operation};
pub use metrics::{Metrics, CONTENT_TYPE, UNROUTED_MODEL};
pub use observer::{
    AttemptEnd, Observer, ObserverOptions, RequestEnd, RequestObservation, RequestStart,
    TokenCounts,
};
pub use runtime::{BackendStats, BackendStatsSource};
pub use settings::TelemetrySettings;
pub use trace::{TraceConfig, TraceSettings, Tracing};

/// What can go wrong setting telemetry up (at start-up only).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("`{variable}` = `{value}` is not supported (supported: {supported})")]
    Unsupported {
        variable: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error("`{source_name}` = `{value}` is not an http(s) URL")]
    InvalidEndpoint {
        source_name: &'static str,
        value: String,
    },
    #[error("trace exporter: {0}")]
    Exporter(String),
}

/// Starts telemetry: the trace pipeline when an endpoint is configured (call inside the tokio
/// runtime), and the observer over it. Keep the [`Tracing`] to flush it at shutdown.
pub fn start(settings: &TelemetrySettings) -> Result<(Observer, Option<Tracing>), TelemetryError> {
    let tracing = TraceSettings::from_env(&settings.trace)?
        .map(|trace| Tracing::start(&trace))
        .transpose()?;
    let observer = Observer::new(settings.observer, tracing.as_ref())?;
    Ok((observer, tracing))
}

#[cfg(test)]
mod tests;
