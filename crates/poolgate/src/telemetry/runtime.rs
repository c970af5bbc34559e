//! Per-backend figures read at scrape time — state, cooldown left, RPM tokens left, requests in
//! flight — through [`BackendStatsSource`], which the data plane implements over its live
//! snapshot and the per-backend runtime `snapshot()`. Nothing here is updated per request.

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::scrape::ScrapeFamily;
use crate::domain::BackendStatus;

/// One backend as a scrape sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackendStats<'a> {
    /// The backend's name (the `backend` label everywhere).
    pub backend: &'a str,
    pub pool: &'a str,
    pub state: BackendStatus,
    /// Zero unless cooling down.
    pub cooldown_remaining: Duration,
    /// Configured requests per minute; `None` when unlimited.
    pub rpm_limit: Option<u32>,
    /// Whole tokens in the RPM bucket now; `None` when unlimited.
    pub rpm_tokens_remaining: Option<f64>,
    pub in_flight: u32,
}

/// What the data plane implements so that a scrape can read every backend's live state.
pub trait BackendStatsSource: Send + Sync + 'static {
    /// Calls `visit` once per backend of the current snapshot (enabled or not).
    fn for_each_backend(&self, visit: &mut dyn FnMut(BackendStats<'_>));
}

const ALL_STATES: [BackendStatus; 4] = [
    BackendStatus::Healthy,
    BackendStatus::Cooling,
    BackendStatus::Error,
    BackendStatus::Disabled,
];

/// The `poolgate_backend_*` families, read from a [`BackendStatsSource`] at every scrape.
pub struct BackendCollector {
    source: Arc<dyn BackendStatsSource>,
    state: ScrapeFamily,
    cooldown: ScrapeFamily,
    rpm_limit: ScrapeFamily,
    rpm_tokens: ScrapeFamily,
    in_flight: ScrapeFamily,
}

impl BackendCollector {
    pub fn new(source: Arc<dyn BackendStatsSource>) -> prometheus::Result<Self> {
        const BACKEND: &[&str] = &["backend", "pool"];
        Ok(Self {
            source,
            state: ScrapeFamily::gauge(
                "poolgate_backend_state",
                "1 for the backend's current state (healthy, cooling, error, disabled), 0 for the others.",
                &["backend", "pool", "state"],
            )?,
            cooldown: ScrapeFamily::gauge(
                "poolgate_backend_cooldown_remaining_seconds",
                "Seconds until a cooling backend may be tried again (0 when not cooling).",
                BACKEND,
            )?,
            rpm_limit: ScrapeFamily::gauge(
                "poolgate_backend_rpm_limit",
                "Configured requests per minute of the backend (absent when unlimited).",
                BACKEND,
            )?,
            rpm_tokens: ScrapeFamily::gauge(
                "poolgate_backend_rpm_tokens_remaining",
                "Requests the backend's RPM bucket would admit now (absent when unlimited).",
                BACKEND,
            )?,
            in_flight: ScrapeFamily::gauge(
                "poolgate_backend_in_flight",
                "Upstream requests under way on the backend.",
                BACKEND,
            )?,
        })
    }
}

impl Collector for BackendCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![
            &self.state.desc,
            &self.cooldown.desc,
            &self.rpm_limit.desc,
            &self.rpm_tokens.desc,
            &self.in_flight.desc,
        ]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut state = self.state.start();
        let mut cooldown = self.cooldown.start();
        let mut rpm_limit = self.rpm_limit.start();
        let mut rpm_tokens = self.rpm_tokens.start();
        let mut in_flight = self.in_flight.start();
        self.source.for_each_backend(&mut |stats| {
            let labels = [stats.backend, stats.pool];
            for candidate in ALL_STATES {
                let value = if candidate == stats.state { 1.0 } else { 0.0 };
                self.state.sample(
                    &mut state,
                    &[stats.backend, stats.pool, candidate.as_str()],
                    value,
                );
            }
            self.cooldown.sample(
                &mut cooldown,
                &labels,
                stats.cooldown_remaining.as_secs_f64(),
            );
            if let Some(limit) = stats.rpm_limit {
                self.rpm_limit
                    .sample(&mut rpm_limit, &labels, f64::from(limit));
            }
            if let Some(tokens) = stats.rpm_tokens_remaining {
                self.rpm_tokens.sample(&mut rpm_tokens, &labels, tokens);
            }
            self.in_flight
                .sample(&mut in_flight, &labels, f64::from(stats.in_flight));
        });
        // An empty family would print a HELP/TYPE without samples: leave it out.
        [state, cooldown, rpm_limit, rpm_tokens, in_flight]
            .into_iter()
            .filter(|family| !family.get_metric().is_empty())
            .collect()
    }
}
