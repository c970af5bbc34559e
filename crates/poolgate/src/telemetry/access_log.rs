//! The access log: one line per client request at info, under the target `poolgate::access`
//! (JSON with `--log-format json`). Ids, names, numbers and outcomes only — never prompt text,
//! never a key.

use std::time::Duration;

use super::observer::TokenCounts;
use crate::domain::Outcome;

/// The target the access lines are logged under (filter with `RUST_LOG=poolgate::access=info`).
pub const ACCESS_LOG_TARGET: &str = "poolgate::access";

/// One request's access-log line.
#[derive(Clone, Copy, Debug)]
pub struct AccessLogEntry<'a> {
    pub request_id: &'a str,
    /// The client key's public id (`admin` for the admin token), never the key.
    pub client_key_id: Option<&'a str>,
    pub model: &'a str,
    pub backend: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub attempts: u32,
    pub status: u16,
    pub outcome: Outcome,
    pub error_kind: Option<&'a str>,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// Time spent in upstream attempts.
    pub upstream: Duration,
    pub tokens: TokenCounts,
    pub trace_id: Option<&'a str>,
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl AccessLogEntry<'_> {
    /// Writes the line at info level: straight into the log output when the process's logging
    /// is set up for it (`crate::logging`'s direct access lines), else as a `tracing` event.
    pub fn emit(&self) {
        if !crate::logging::write_access_line(self) {
            self.emit_event();
        }
    }

    /// Writes the line as a `tracing` event.
    pub(crate) fn emit_event(&self) {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            request_id = self.request_id,
            client_key_id = self.client_key_id,
            model = self.model,
            backend = self.backend,
            pool = self.pool,
            attempts = self.attempts,
            status = self.status,
            outcome = self.outcome.as_str(),
            error_kind = self.error_kind,
            latency_ms = millis(self.latency),
            ttfb_ms = self.ttfb.map(millis),
            upstream_ms = millis(self.upstream),
            prompt_tokens = self.tokens.prompt,
            completion_tokens = self.tokens.completion,
            cached_tokens = self.tokens.cached,
            trace_id = self.trace_id,
            "request"
        );
    }
}
