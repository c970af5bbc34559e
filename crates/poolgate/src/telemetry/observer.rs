//! The one observer fed by the request phases. [`Observer`] is made once at start-up; each
//! client request gets a [`RequestObservation`] that the phases feed — attempt started, trace
//! context injected, attempt ended, first byte, request finished — and that turns those events
//! into metrics, spans and the access-log line. With tracing off a request costs a few atomic
//! operations on pre-resolved series (see [`super::handles`]) and no allocation.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::access_log::AccessLogEntry;
use super::connections::{ConnectionCollector, ConnectionStatsSource};
use super::handles::{BackendHandle, BackendLabels, RouteHandle, RouteSeries};
use super::labels::{AttemptResult, Operation, StatusClass, TokenKind};
use super::metrics::Metrics;
use super::runtime::{BackendCollector, BackendStatsSource};
use super::trace::spans::{RequestTrace, TRACEPARENT, TRACESTATE};
use super::trace::Tracing;
use super::TelemetryError;
use crate::domain::Outcome;

/// What the observer records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObserverOptions {
    /// Count the request metrics (`[metrics] enabled`). Off, a request touches no series.
    pub metrics: bool,
    /// Per-client-key series (`poolgate_client_*`, labelled by the key's id). Off by default:
    /// one series per key.
    pub client_key_labels: bool,
    /// One `poolgate::access` line per request at info.
    pub access_log: bool,
}

impl Default for ObserverOptions {
    /// Metrics on; per-key series and the access log off.
    fn default() -> Self {
        ObserverOptions {
            metrics: true,
            client_key_labels: false,
            access_log: false,
        }
    }
}

/// The process-wide observer; cheap to clone.
#[derive(Clone)]
pub struct Observer {
    inner: Arc<ObserverInner>,
}

struct ObserverInner {
    metrics: Metrics,
    options: ObserverOptions,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    unrouted: RouteHandle,
}

impl Observer {
    /// Registers the metrics; `tracing` is the running trace pipeline, if traces are on.
    pub fn new(
        options: ObserverOptions,
        tracing: Option<&Tracing>,
    ) -> Result<Observer, TelemetryError> {
        let metrics = Metrics::new(options.client_key_labels)?;
        let unrouted = RouteHandle::unrouted(&metrics);
        Ok(Observer {
            inner: Arc::new(ObserverInner {
                metrics,
                options,
                tracer: tracing.map(|tracing| tracing.tracer.clone()),
                unrouted,
            }),
        })
    }

    /// The registry (render, usage/store/Redis handles, extra collectors).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The text exposition for `GET /metrics`.
    pub fn render(&self) -> String {
        self.inner.metrics.render()
    }

    pub fn tracing_enabled(&self) -> bool {
        self.inner.tracer.is_some()
    }

    /// Reads every backend's live state at scrape time from `source`. Call once.
    pub fn watch_backends(
        &self,
        source: Arc<dyn BackendStatsSource>,
    ) -> Result<(), TelemetryError> {
        let collector = BackendCollector::new(source)?;
        self.inner.metrics.register(Box::new(collector))?;
        Ok(())
    }

    /// Registers the serving layer's connection counters, read at every scrape.
    pub fn watch_connections(
        &self,
        source: Arc<dyn ConnectionStatsSource>,
    ) -> Result<(), TelemetryError> {
        let collector = ConnectionCollector::new(source)?;
        self.inner.metrics.register(Box::new(collector))?;
        Ok(())
    }

    /// A backend's handle; make it when the snapshot is built.
    pub fn backend(&self, labels: BackendLabels<'_>) -> BackendHandle {
        BackendHandle::new(&self.inner.metrics, labels)
    }

    /// The handle of a route member (`model` served by `backend`); make it when the snapshot's
    /// route table is built.
    pub fn route(&self, model: &str, backend: &BackendHandle) -> RouteHandle {
        RouteHandle::new(&self.inner.metrics, model, Some(backend))
    }

    /// The handle of a routed model for requests that reach no backend (403, 429, 503 before
    /// any attempt); make it per route when the snapshot is built.
    pub fn model(&self, model: &str) -> RouteHandle {
        RouteHandle::new(&self.inner.metrics, model, None)
    }

    /// The handle for requests whose model no route serves (label `(unrouted)`: a client's
    /// made-up model names never become series).
    pub fn unrouted(&self) -> &RouteHandle {
        &self.inner.unrouted
    }

    /// A client request was received (phase `context`).
    pub fn start_request(&self, start: RequestStart<'_>) -> RequestObservation {
        if self.inner.options.metrics {
            self.inner.metrics.requests_in_flight.inc();
        }
        let trace = self
            .inner
            .tracer
            .as_ref()
            .map(|tracer| Box::new(RequestTrace::start(tracer.clone(), &start)));
        // With tracing off, an incoming trace context is passed upstream untouched.
        let passthrough = match trace {
            Some(_) => None,
            None => start.headers.get(TRACEPARENT).map(|parent| {
                Box::new(Passthrough {
                    parent: parent.clone(),
                    state: start.headers.get(TRACESTATE).cloned(),
                })
            }),
        };
        RequestObservation {
            observer: self.clone(),
            received: start.received,
            model: start.model.clone(),
            route: None,
            attempts: 0,
            open_attempt: None,
            last_result: None,
            upstream: Duration::ZERO,
            first_byte: None,
            trace,
            passthrough,
            finished: false,
        }
    }
}

/// What is known when a request starts.
#[derive(Clone, Copy)]
pub struct RequestStart<'a> {
    /// When the request was received (the same instant as the usage record's).
    pub received: Instant,
    pub request_id: &'a str,
    /// The model's handle from the snapshot, or [`Observer::unrouted`].
    pub model: &'a RouteHandle,
    pub operation: Operation,
    /// `POST`, or `GET` / `DELETE` for the calls on a stored response.
    pub http_method: &'static str,
    /// The route template, e.g. `/v1/chat/completions`.
    pub http_route: &'static str,
    pub stream: bool,
    /// The client's request headers (read for `traceparent`/`tracestate` only).
    pub headers: &'a HeaderMap,
}

/// Token counts as the usage record has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub prompt: Option<u32>,
    pub completion: Option<u32>,
    /// Prompt tokens served from the upstream's prompt cache (part of `prompt`).
    pub cached: Option<u32>,
}

/// How an upstream attempt ended (phase `classify`).
#[derive(Clone, Copy, Debug)]
pub struct AttemptEnd<'a> {
    pub result: AttemptResult,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    /// The model the upstream says answered (`gen_ai.response.model`).
    pub response_model: Option<&'a str>,
    pub tokens: TokenCounts,
}

impl AttemptEnd<'_> {
    /// An attempt that ended without an answer worth more detail.
    pub fn result(result: AttemptResult, status: Option<u16>) -> Self {
        AttemptEnd {
            result,
            status,
            response_model: None,
            tokens: TokenCounts::default(),
        }
    }
}

/// How the client request ended: the usage record's fields (phase `record`).
#[derive(Clone, Copy, Debug)]
pub struct RequestEnd<'a> {
    pub request_id: &'a str,
    pub client_key_id: Option<&'a str>,
    /// The model the request named, as its usage record has it (an alias resolved): the access
    /// line shows it, where metrics have the route's bounded label (`claude-*`).
    pub canonical_model: Option<&'a str>,
    /// The HTTP status the client got (499 when it left first).
    pub status: u16,
    pub outcome: Outcome,
    pub error_kind: Option<&'a str>,
    pub tokens: TokenCounts,
    pub response_model: Option<&'a str>,
    /// Estimated cost when the price table knows the model.
    pub cost_usd: Option<f64>,
    /// When the request ended for the client, if before now: a stream whose client left is
    /// finished after a grace read of the upstream, which its latency must not include.
    pub ended: Option<Instant>,
}

struct OpenAttempt {
    started: Instant,
    route: RouteHandle,
}

struct Passthrough {
    parent: HeaderValue,
    state: Option<HeaderValue>,
}

/// One client request as the observer follows it. Dropping it unfinished records the request
/// as cancelled (499), like the usage record's cancel guard.
pub struct RequestObservation {
    observer: Observer,
    received: Instant,
    model: RouteHandle,
    /// The route of the latest attempt.
    route: Option<RouteHandle>,
    attempts: u32,
    open_attempt: Option<OpenAttempt>,
    last_result: Option<AttemptResult>,
    /// Time spent in upstream attempts.
    upstream: Duration,
    first_byte: Option<Instant>,
    trace: Option<Box<RequestTrace>>,
    passthrough: Option<Box<Passthrough>>,
    finished: bool,
}

impl RequestObservation {
    /// An upstream attempt starts on `route` (phase `attempt`, after the ticket was taken).
    /// Counts the retry (and the failover, when the pool changed) if this is not the first.
    pub fn start_attempt(&mut self, route: &RouteHandle, upstream_model: &str) {
        self.start_attempt_at(route, upstream_model, Instant::now());
    }

    /// [`RequestObservation::start_attempt`] with the attempt's start already read.
    pub fn start_attempt_at(
        &mut self,
        route: &RouteHandle,
        upstream_model: &str,
        started: Instant,
    ) {
        if self.open_attempt.is_some() {
            self.end_attempt(AttemptEnd::result(AttemptResult::Cancelled, None));
        }
        self.attempts += 1;
        let metrics = &self.observer.inner.metrics;
        let previous = self.last_result.filter(|_| self.counting());
        if let Some(previous) = previous {
            metrics
                .retries
                .series([self.model.model(), previous.as_str()])
                .inc();
            let from = self.route.as_ref().and_then(RouteHandle::backend);
            if let (Some(from), Some(to)) = (from, route.backend()) {
                if from.pool() != to.pool() {
                    metrics
                        .failovers
                        .series([self.model.model(), from.pool(), to.pool()])
                        .inc();
                }
            }
        }
        if let Some(trace) = &mut self.trace {
            trace.start_attempt(route, upstream_model, self.attempts);
        }
        self.route = Some(route.clone());
        self.open_attempt = Some(OpenAttempt {
            started,
            route: route.clone(),
        });
    }

    /// Writes `traceparent` (and `tracestate`) for the upstream request: the current attempt's
    /// span with tracing on, the client's own trace context untouched with tracing off.
    pub fn inject_trace_context(&self, headers: &mut HeaderMap) {
        if let Some(trace) = &self.trace {
            trace.inject(headers);
        } else if let Some(passthrough) = &self.passthrough {
            headers.insert(TRACEPARENT, passthrough.parent.clone());
            if let Some(state) = &passthrough.state {
                headers.insert(TRACESTATE, state.clone());
            }
        }
    }

    /// The current attempt ended (phase `classify`; for a stream, at its end).
    pub fn end_attempt(&mut self, end: AttemptEnd<'_>) {
        self.end_attempt_at(end, Instant::now());
    }

    fn end_attempt_at(&mut self, end: AttemptEnd<'_>, at: Instant) {
        let Some(attempt) = self.open_attempt.take() else {
            return;
        };
        let elapsed = at.saturating_duration_since(attempt.started);
        self.upstream += elapsed;
        self.last_result = Some(end.result);
        if let Some(backend) = attempt.route.backend().filter(|_| self.counting()) {
            backend.attempt(end.result, elapsed.as_secs_f64());
        }
        if let Some(trace) = &mut self.trace {
            trace.end_attempt(&end);
        }
    }

    /// The first byte of the answer goes to the client (phase `relay`). Only the first call
    /// counts.
    pub fn first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }

    /// Whether this request's spans are recorded (tracing on, and the request sampled in).
    pub fn traced(&self) -> bool {
        self.trace.as_ref().is_some_and(|trace| trace.recording())
    }

    /// Upstream attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the request metrics are counted (`[metrics] enabled`).
    fn counting(&self) -> bool {
        self.observer.inner.options.metrics
    }

    /// The request is over (phase `record`, where its usage record is written).
    pub fn finish(mut self, end: RequestEnd<'_>) {
        self.record(&end, true);
    }

    fn record(&mut self, end: &RequestEnd<'_>, log: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = end.ended.unwrap_or_else(Instant::now);
        if self.open_attempt.is_some() {
            // A stream ends with its request: its attempt ends the same way.
            let result = match end.outcome {
                Outcome::Success => AttemptResult::Success,
                Outcome::StreamError => AttemptResult::StreamError,
                Outcome::Cancelled => AttemptResult::Cancelled,
                Outcome::Error => AttemptResult::ServerError,
            };
            self.end_attempt_at(
                AttemptEnd {
                    result,
                    status: Some(end.status),
                    response_model: end.response_model,
                    tokens: end.tokens,
                },
                now,
            );
        }
        let latency = now.saturating_duration_since(self.received);
        let ttfb = self
            .first_byte
            .map(|at| at.saturating_duration_since(self.received));
        let route = self.route.as_ref().unwrap_or(&self.model).series();
        if self.counting() {
            self.count(route, end, latency, ttfb);
        }

        let trace_id = self.trace.as_ref().map(|trace| trace.trace_id());
        if log && self.observer.inner.options.access_log {
            let backend = route.backend.as_ref();
            AccessLogEntry {
                request_id: end.request_id,
                client_key_id: end.client_key_id,
                model: end.canonical_model.unwrap_or(&route.model),
                backend: backend.map(BackendHandle::name),
                pool: backend.map(BackendHandle::pool),
                attempts: self.attempts,
                status: end.status,
                outcome: end.outcome,
                error_kind: end.error_kind,
                latency,
                ttfb,
                upstream: self.upstream,
                tokens: end.tokens,
                trace_id: trace_id.as_deref(),
            }
            .emit();
        }
        if let Some(trace) = self.trace.take() {
            trace.finish(end, self.route.as_ref(), self.attempts);
        }
    }

    /// The request's metrics: requests, durations, overhead, tokens, cost, per-key series.
    fn count(
        &self,
        route: &RouteSeries,
        end: &RequestEnd<'_>,
        latency: Duration,
        ttfb: Option<Duration>,
    ) {
        let metrics = &self.observer.inner.metrics;
        let status_class = StatusClass::of(end.status);
        route.count_request(status_class, end.outcome);
        route.observe_duration(latency.as_secs_f64());
        if let Some(ttfb) = ttfb {
            route.observe_ttfb(ttfb.as_secs_f64());
        }
        if self.attempts > 0 {
            metrics
                .overhead
                .observe(latency.saturating_sub(self.upstream).as_secs_f64());
        }
        let tokens = [
            (TokenKind::Prompt, end.tokens.prompt),
            (TokenKind::Completion, end.tokens.completion),
            (TokenKind::Cached, end.tokens.cached),
        ];
        for (kind, count) in tokens {
            route.count_tokens(kind, u64::from(count.unwrap_or(0)));
        }
        if let Some(usd) = end.cost_usd {
            route.add_cost(usd);
        }
        if let Some(key) = end.client_key_id {
            if let Some(family) = &metrics.client_requests {
                family
                    .series([key, status_class.as_str(), end.outcome.as_str()])
                    .inc();
            }
            if let Some(family) = &metrics.client_tokens {
                for (kind, count) in tokens {
                    let count = u64::from(count.unwrap_or(0));
                    if count > 0 {
                        family.series([key, kind.as_str()]).inc_by(count);
                    }
                }
            }
        }
        metrics.requests_in_flight.dec();
    }
}

/// A safety net: the request path calls [`RequestObservation::finish`] wherever it writes the
/// usage record (the cancel guard included). Should an observation be dropped unfinished all the
/// same, its metrics and span still close as cancelled; the access line, which needs the
/// request id, is written only by `finish`.
impl Drop for RequestObservation {
    fn drop(&mut self) {
        if !self.finished {
            let end = RequestEnd {
                request_id: "",
                client_key_id: None,
                canonical_model: None,
                status: 499,
                outcome: Outcome::Cancelled,
                error_kind: Some("client_closed"),
                tokens: TokenCounts::default(),
                response_model: None,
                cost_usd: None,
                ended: None,
            };
            self.record(&end, false);
        }
    }
}
