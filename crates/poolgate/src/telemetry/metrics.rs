//! The Prometheus registry: every metric family poolgate exports, registered once at start-up,
//! and [`Metrics::render`] for `GET /metrics` (text exposition format 0.0.4, which the
//! Debian `promtool check metrics` accepts).
//!
//! Families with labels are touched on the hot path only through handles resolved ahead of
//! time ([`super::handles`]); what is only known at scrape time (backend state, process
//! figures) comes from collectors ([`super::runtime`], [`super::process`]).

use std::sync::{Arc, OnceLock};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::labels::{OVERHEAD_BUCKETS, REQUEST_DURATION_BUCKETS, TTFB_BUCKETS};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Label value for requests whose model no route serves (unknown model, unparseable body).
pub const UNROUTED_MODEL: &str = "(unrouted)";

/// Every metric family, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<IntCounterVec, 5>,
    pub(crate) requests_in_flight: IntGauge,
    pub(crate) request_duration: Family<HistogramVec, 3>,
    pub(crate) request_ttfb: Family<HistogramVec, 3>,
    pub(crate) overhead: Histogram,
    pub(crate) attempts: Family<IntCounterVec, 3>,
    pub(crate) attempt_duration: Family<HistogramVec, 2>,
    pub(crate) retries: Family<IntCounterVec, 2>,
    pub(crate) failovers: Family<IntCounterVec, 3>,
    pub(crate) tokens: Family<IntCounterVec, 3>,
    pub(crate) cost: Family<CounterVec, 2>,
    /// Only registered when client-key labels are enabled.
    pub(crate) client_requests: Option<Family<IntCounterVec, 3>>,
    pub(crate) client_tokens: Option<Family<IntCounterVec, 2>>,
    usage: UsageMetrics,
    store_errors: StoreErrors,
    redis: RedisMetrics,
    /// Set once the Redis families are registered (see [`Metrics::redis`]).
    redis_registered: Arc<OnceLock<()>>,
}

/// The usage writer's figures; the writer holds a clone.
#[derive(Clone)]
pub struct UsageMetrics {
    /// Records queued and not yet written (the writer sets it after each batch).
    pub queue_depth: IntGauge,
    pub records_written: IntCounter,
    /// Failed batch writes (each is retried).
    pub write_errors: IntCounter,
    /// Records given up at shutdown after repeated write failures.
    pub records_lost: IntCounter,
}

/// Redis figures for the shared runtime state (issue #10); exported only once a Redis client
/// asked for them ([`Metrics::redis`]).
#[derive(Clone)]
pub struct RedisMetrics {
    errors: Family<IntCounterVec, 1>,
    /// 1 while poolgate runs on its local fallback because Redis is unreachable.
    pub degraded: IntGauge,
}

impl RedisMetrics {
    /// Counts one failed Redis call; `operation` is a fixed name such as `admit` or `sync`.
    pub fn error(&self, operation: &'static str) {
        self.errors.series([operation]).inc();
    }
}

/// Counts failed store operations by a fixed operation name (`usage_insert`, `health_save`,
/// `reload`, `admin_write`, …).
#[derive(Clone)]
pub struct StoreErrors(Family<IntCounterVec, 1>);

impl StoreErrors {
    pub fn error(&self, operation: &'static str) {
        self.0.series([operation]).inc();
    }
}

impl Metrics {
    /// Creates and registers every family. `client_key_labels` adds the per-client-key
    /// families (opt-in: one series per key).
    pub fn new(client_key_labels: bool) -> prometheus::Result<Metrics> {
        const ROUTE: [&str; 3] = ["model", "pool", "backend"];
        let metrics = Metrics {
            registry: Registry::new(),
            requests: counters(
                "poolgate_requests_total",
                "Client requests answered, by model, pool and backend of the last attempt, status class and outcome.",
                ["model", "pool", "backend", "status_class", "outcome"],
            )?,
            requests_in_flight: IntGauge::new(
                "poolgate_requests_in_flight",
                "Client requests under way (streams until their end).",
            )?,
            request_duration: histograms(
                "poolgate_request_duration_seconds",
                "Time from receiving a client request to the last byte of its answer.",
                REQUEST_DURATION_BUCKETS,
                ROUTE,
            )?,
            request_ttfb: histograms(
                "poolgate_request_ttfb_seconds",
                "Time from receiving a client request to the first byte of its answer.",
                TTFB_BUCKETS,
                ROUTE,
            )?,
            overhead: Histogram::with_opts(
                HistogramOpts::new(
                    "poolgate_overhead_seconds",
                    "Time poolgate adds to a request that reached an upstream: its total time minus the time of its upstream attempts (includes waiting for a ready backend).",
                )
                .buckets(OVERHEAD_BUCKETS.to_vec()),
            )?,
            attempts: counters(
                "poolgate_upstream_attempts_total",
                "Upstream requests sent, by backend and how they ended.",
                ["backend", "pool", "result"],
            )?,
            attempt_duration: histograms(
                "poolgate_upstream_attempt_duration_seconds",
                "Duration of upstream attempts, from sending to the end of the answer (streams: their end).",
                REQUEST_DURATION_BUCKETS,
                ["backend", "pool"],
            )?,
            retries: counters(
                "poolgate_retries_total",
                "Upstream attempts made after a failed one for the same client request, by the failed attempt's result.",
                ["model", "reason"],
            )?,
            failovers: counters(
                "poolgate_failovers_total",
                "Retries that moved from one pool to another.",
                ["model", "from_pool", "to_pool"],
            )?,
            tokens: counters(
                "poolgate_tokens_total",
                "Tokens reported by upstreams, by model, backend and kind (cached: the part of prompt served from the upstream's prompt cache).",
                ["model", "backend", "kind"],
            )?,
            cost: Family(CounterVec::new(
                Opts::new(
                    "poolgate_cost_usd_total",
                    "Estimated upstream cost in US dollars, from the price table.",
                ),
                &["model", "backend"],
            )?),
            client_requests: client_key_labels
                .then(|| {
                    counters(
                        "poolgate_client_requests_total",
                        "Client requests by client key id, status class and outcome.",
                        ["client_key", "status_class", "outcome"],
                    )
                })
                .transpose()?,
            client_tokens: client_key_labels
                .then(|| {
                    counters(
                        "poolgate_client_tokens_total",
                        "Tokens used by client key id and kind.",
                        ["client_key", "kind"],
                    )
                })
                .transpose()?,
            usage: UsageMetrics {
                queue_depth: IntGauge::new(
                    "poolgate_usage_queue_depth",
                    "Usage records queued for the writer.",
                )?,
                records_written: IntCounter::new(
                    "poolgate_usage_records_written_total",
                    "Usage records written to the store.",
                )?,
                write_errors: IntCounter::new(
                    "poolgate_usage_write_errors_total",
                    "Failed usage batch writes (each is retried).",
                )?,
                records_lost: IntCounter::new(
                    "poolgate_usage_records_lost_total",
                    "Usage records given up at shutdown after repeated write failures.",
                )?,
            },
            store_errors: StoreErrors(counters(
                "poolgate_store_errors_total",
                "Failed store operations, by operation.",
                ["operation"],
            )?),
            redis: RedisMetrics {
                errors: counters(
                    "poolgate_redis_errors_total",
                    "Failed Redis calls, by operation.",
                    ["operation"],
                )?,
                degraded: IntGauge::new(
                    "poolgate_redis_degraded",
                    "1 while Redis is unreachable and poolgate runs on local limits and cooldowns.",
                )?,
            },
            redis_registered: Arc::new(OnceLock::new()),
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "poolgate_build_info",
                "Always 1; the labels say which poolgate is running.",
            ),
            &["version"],
        )?;
        build_info
            .get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?
            .set(1);
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            metrics.requests.collector(),
            Box::new(metrics.requests_in_flight.clone()),
            metrics.request_duration.collector(),
            metrics.request_ttfb.collector(),
            Box::new(metrics.overhead.clone()),
            metrics.attempts.collector(),
            metrics.attempt_duration.collector(),
            metrics.retries.collector(),
            metrics.failovers.collector(),
            metrics.tokens.collector(),
            metrics.cost.collector(),
            Box::new(metrics.usage.queue_depth.clone()),
            Box::new(metrics.usage.records_written.clone()),
            Box::new(metrics.usage.write_errors.clone()),
            Box::new(metrics.usage.records_lost.clone()),
            metrics.store_errors.0.collector(),
            Box::new(build_info),
            Box::new(super::process::ProcessCollector::new()?),
        ];
        collectors.extend(metrics.client_requests.as_ref().map(Family::collector));
        collectors.extend(metrics.client_tokens.as_ref().map(Family::collector));
        for collector in collectors {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Registers a scrape-time collector (e.g. [`super::runtime::BackendCollector`]).
    pub fn register(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The text exposition of every family (serve it with [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "could not encode the metrics");
        }
        out
    }

    /// Handles for the usage writer.
    pub fn usage(&self) -> UsageMetrics {
        self.usage.clone()
    }

    /// The store error counter (control plane, health and usage writers).
    pub fn store_errors(&self) -> StoreErrors {
        self.store_errors.clone()
    }

    /// Handles for the shared runtime state's Redis client. The Redis families are registered
    /// on the first call: only a gateway with Redis configured exports them.
    pub fn redis(&self) -> RedisMetrics {
        self.redis_registered.get_or_init(|| {
            let collectors: [Box<dyn Collector>; 2] = [
                self.redis.errors.collector(),
                Box::new(self.redis.degraded.clone()),
            ];
            for collector in collectors {
                if let Err(error) = self.registry.register(collector) {
                    tracing::error!(%error, "could not register the Redis metrics");
                }
            }
        });
        self.redis.clone()
    }
}

/// A labelled family whose label count is part of its type: `series` takes exactly as many
/// values as the family has label names, so the crate's "wrong label count" panic cannot happen.
#[derive(Clone)]
pub(crate) struct Family<V, const N: usize>(V);

impl<T, const N: usize> Family<MetricVec<T>, N>
where
    T: MetricVecBuilder + 'static,
{
    /// The series for these label values (created on first use).
    pub(crate) fn series(&self, values: [&str; N]) -> T::M {
        self.0.with_label_values(&values)
    }

    fn collector(&self) -> Box<dyn Collector> {
        Box::new(self.0.clone())
    }
}

fn counters<const N: usize>(
    name: &str,
    help: &str,
    labels: [&str; N],
) -> prometheus::Result<Family<IntCounterVec, N>> {
    Ok(Family(IntCounterVec::new(Opts::new(name, help), &labels)?))
}

fn histograms<const N: usize>(
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: [&str; N],
) -> prometheus::Result<Family<HistogramVec, N>> {
    Ok(Family(HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &labels,
    )?))
}
