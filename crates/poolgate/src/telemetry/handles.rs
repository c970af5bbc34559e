//! Label sets resolved ahead of the hot path. A [`BackendHandle`] is made for each backend and
//! a [`RouteHandle`] for each (model, backend) member when the live snapshot is built, so that a
//! request's metrics cost a few atomic operations on series already looked up — no hashing of
//! label values, no formatting, no allocation per request.

use std::sync::{Arc, OnceLock};

use prometheus::{Counter, Histogram, HistogramVec, IntCounter, IntCounterVec};

use super::labels::{AttemptResult, StatusClass, TokenKind, OUTCOMES};
use super::metrics::{Family, Metrics, UNROUTED_MODEL};
use crate::domain::{ApiKind, Outcome};

/// What a backend handle is made from (the backend's record in the snapshot).
#[derive(Clone, Copy, Debug)]
pub struct BackendLabels<'a> {
    /// The backend's name: the `backend` label.
    pub name: &'a str,
    pub pool: &'a str,
    pub api: ApiKind,
    /// The upstream base URL; only its host and port go into traces (`server.address`).
    pub api_base_url: &'a str,
}

/// One backend's pre-resolved series and its trace attributes. Cheap to clone.
#[derive(Clone)]
pub struct BackendHandle {
    inner: Arc<BackendSeries>,
}

pub(crate) struct BackendSeries {
    pub(crate) name: Arc<str>,
    pub(crate) pool: Arc<str>,
    pub(crate) api: ApiKind,
    pub(crate) server_address: Option<String>,
    pub(crate) server_port: Option<u16>,
    attempts: [IntCounter; AttemptResult::ALL.len()],
    pub(crate) attempt_duration: Histogram,
}

impl BackendHandle {
    pub(crate) fn new(metrics: &Metrics, labels: BackendLabels<'_>) -> Self {
        let url = url::Url::parse(labels.api_base_url).ok();
        let attempts = AttemptResult::ALL.map(|result| {
            metrics
                .attempts
                .series([labels.name, labels.pool, result.as_str()])
        });
        BackendHandle {
            inner: Arc::new(BackendSeries {
                name: Arc::from(labels.name),
                pool: Arc::from(labels.pool),
                api: labels.api,
                server_address: url
                    .as_ref()
                    .and_then(|url| url.host_str().map(str::to_owned)),
                server_port: url.as_ref().and_then(url::Url::port_or_known_default),
                attempts,
                attempt_duration: metrics.attempt_duration.series([labels.name, labels.pool]),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    pub(crate) fn series(&self) -> &BackendSeries {
        &self.inner
    }

    /// Counts one finished attempt and its duration.
    pub(crate) fn attempt(&self, result: AttemptResult, seconds: f64) {
        self.inner.attempts[result.index()].inc();
        self.inner.attempt_duration.observe(seconds);
    }
}

/// The series of one model as served by one backend (or by none: requests that never reached
/// an upstream). Cheap to clone.
#[derive(Clone)]
pub struct RouteHandle {
    inner: Arc<RouteSeries>,
}

pub(crate) struct RouteSeries {
    pub(crate) model: Arc<str>,
    pub(crate) backend: Option<BackendHandle>,
    /// `requests_total` by status class and outcome, each looked up on its first use.
    requests: [[OnceLock<IntCounter>; OUTCOMES.len()]; StatusClass::COUNT],
    requests_family: Family<IntCounterVec, 5>,
    /// Request duration and TTFB series, looked up on first use (a model's no-backend handle
    /// may never see a request: no empty histograms for it).
    duration: OnceLock<Histogram>,
    ttfb: OnceLock<Histogram>,
    duration_family: Family<HistogramVec, 3>,
    ttfb_family: Family<HistogramVec, 3>,
    /// Token and cost series exist only with a backend (nothing is counted without one).
    tokens: Option<[IntCounter; TokenKind::ALL.len()]>,
    cost: Option<Counter>,
}

impl RouteHandle {
    /// The handle of `model` on `backend`; `None` for requests that reached no backend.
    pub(crate) fn new(metrics: &Metrics, model: &str, backend: Option<&BackendHandle>) -> Self {
        let name = backend.map_or("", BackendHandle::name);
        RouteHandle {
            inner: Arc::new(RouteSeries {
                model: Arc::from(model),
                backend: backend.cloned(),
                requests: Default::default(),
                requests_family: metrics.requests.clone(),
                duration: OnceLock::new(),
                ttfb: OnceLock::new(),
                duration_family: metrics.request_duration.clone(),
                ttfb_family: metrics.request_ttfb.clone(),
                tokens: backend.map(|_| {
                    TokenKind::ALL.map(|kind| metrics.tokens.series([model, name, kind.as_str()]))
                }),
                cost: backend.map(|_| metrics.cost.series([model, name])),
            }),
        }
    }

    /// The handle for requests whose model no route serves.
    pub(crate) fn unrouted(metrics: &Metrics) -> Self {
        Self::new(metrics, UNROUTED_MODEL, None)
    }

    pub fn model(&self) -> &str {
        &self.inner.model
    }

    pub fn backend(&self) -> Option<&BackendHandle> {
        self.inner.backend.as_ref()
    }

    pub(crate) fn series(&self) -> &RouteSeries {
        &self.inner
    }
}

impl RouteSeries {
    /// (pool, backend) label values; empty without a backend.
    fn placement(&self) -> (&str, &str) {
        self.backend
            .as_ref()
            .map_or(("", ""), |b| (b.pool(), b.name()))
    }

    pub(crate) fn observe_duration(&self, seconds: f64) {
        let (pool, backend) = self.placement();
        self.duration
            .get_or_init(|| self.duration_family.series([&self.model, pool, backend]))
            .observe(seconds);
    }

    pub(crate) fn observe_ttfb(&self, seconds: f64) {
        let (pool, backend) = self.placement();
        self.ttfb
            .get_or_init(|| self.ttfb_family.series([&self.model, pool, backend]))
            .observe(seconds);
    }

    pub(crate) fn count_request(&self, status: StatusClass, outcome: Outcome) {
        let cell = &self.requests[status.index()][super::labels::outcome_index(outcome)];
        cell.get_or_init(|| {
            let (pool, backend) = self.placement();
            self.requests_family.series([
                &self.model,
                pool,
                backend,
                status.as_str(),
                outcome.as_str(),
            ])
        })
        .inc();
    }

    pub(crate) fn count_tokens(&self, kind: TokenKind, count: u64) {
        if let Some(tokens) = &self.tokens {
            if count > 0 {
                tokens[kind as usize].inc_by(count);
            }
        }
    }

    pub(crate) fn add_cost(&self, usd: f64) {
        if let Some(cost) = &self.cost {
            if usd.is_finite() && usd > 0.0 {
                cost.inc_by(usd);
            }
        }
    }
}
