//! Start-up errors: [`InitError`] stops the gateway (or a command-line action) with a message
//! for the operator. Errors of a request are their layer's own (`ProxyError`, …) and become HTTP
//! in [`crate::api::error`].

/// Why the gateway could not start (or a command-line action failed).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("telemetry: {0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("{0}")]
    Invalid(String),
}

impl InitError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        InitError::Io {
            context: context.into(),
            source,
        }
    }
}
