//! Usage statistics for the admin API and dashboard: request and error counts, tokens and latency
//! percentiles, overall, per backend, per model, and in time buckets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::Outcome;
use crate::store::UsageSample;

/// Query of `GET /admin/api/stats`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Unix milliseconds, inclusive (default: one hour before `to_ms`).
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive (default: now).
    pub to_ms: Option<i64>,
    /// Bucket width in seconds (default: range / 60, at least 1).
    pub bucket_seconds: Option<i64>,
    pub backend_id: Option<String>,
    pub model: Option<String>,
    /// A client key id (`admin` for the admin token).
    pub client_key_id: Option<String>,
}

/// Aggregates of one group of requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Aggregate {
    pub requests: u64,
    /// Requests that did not succeed (client cancellations excluded).
    pub errors: u64,
    pub cancelled: u64,
    pub error_rate: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub p50_latency_ms: Option<u64>,
    pub p95_latency_ms: Option<u64>,
    pub p50_ttfb_ms: Option<u64>,
}

/// One time bucket.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Bucket {
    /// Start of the bucket, Unix milliseconds.
    pub ts_ms: i64,
    #[serde(flatten)]
    pub stats: Aggregate,
}

/// Answer of `GET /admin/api/stats`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Stats {
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
    pub total: Aggregate,
    /// Keyed by backend id (`-` for requests that reached no backend).
    pub by_backend: BTreeMap<String, Aggregate>,
    pub by_model: BTreeMap<String, Aggregate>,
    pub series: Vec<Bucket>,
    /// The same buckets split by backend id.
    pub series_by_backend: BTreeMap<String, Vec<Bucket>>,
    /// The same buckets split by model.
    pub series_by_model: BTreeMap<String, Vec<Bucket>>,
}

/// Accumulates samples, then summarises them.
#[derive(Default)]
struct Accumulator {
    requests: u64,
    errors: u64,
    cancelled: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    latencies: Vec<u64>,
    ttfbs: Vec<u64>,
}

impl Accumulator {
    fn add(&mut self, sample: &UsageSample) {
        self.requests += 1;
        match sample.outcome {
            Outcome::Cancelled => self.cancelled += 1,
            Outcome::Success if sample.status < 400 => {}
            _ => self.errors += 1,
        }
        self.prompt_tokens += sample.prompt_tokens;
        self.completion_tokens += sample.completion_tokens;
        self.latencies.push(sample.latency_ms);
        if let Some(ttfb) = sample.ttfb_ms {
            self.ttfbs.push(ttfb);
        }
    }

    fn finish(mut self) -> Aggregate {
        let counted = self.requests - self.cancelled;
        Aggregate {
            requests: self.requests,
            errors: self.errors,
            cancelled: self.cancelled,
            error_rate: if counted == 0 {
                0.0
            } else {
                self.errors as f64 / counted as f64
            },
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            p50_latency_ms: percentile(&mut self.latencies, 50),
            p95_latency_ms: percentile(&mut self.latencies, 95),
            p50_ttfb_ms: percentile(&mut self.ttfbs, 50),
        }
    }
}

/// Nearest-rank percentile.
fn percentile(values: &mut [u64], pct: usize) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (pct * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

/// Timestamps the statistics accept: 1970 to 9999.
const MAX_MS: i64 = 253_402_300_799_000;

/// Resolves the query's range and bucket width against `now_ms`; Err names the bad parameter.
pub fn resolve_range(
    query: &StatsQuery,
    now_ms: i64,
) -> Result<(i64, i64, i64), (&'static str, String)> {
    let in_range = |name: &'static str, value: Option<i64>| match value {
        Some(v) if !(0..=MAX_MS).contains(&v) => Err((
            name,
            format!("`{name}` must be Unix milliseconds between 0 and {MAX_MS}"),
        )),
        _ => Ok(value),
    };
    let to = in_range("to_ms", query.to_ms)?.unwrap_or(now_ms);
    let from = in_range("from_ms", query.from_ms)?.unwrap_or(to.saturating_sub(3_600_000));
    if from > to {
        return Err(("from_ms", "`from_ms` must not be after `to_ms`".to_owned()));
    }
    let span = (to - from).max(1);
    let bucket_ms = match query.bucket_seconds {
        Some(seconds) if !(1..=31_536_000).contains(&seconds) => {
            return Err((
                "bucket_seconds",
                "`bucket_seconds` must be between 1 and 31536000".to_owned(),
            ))
        }
        Some(seconds) => seconds * 1000,
        None => (span / 60).max(1000),
    }
    // At most 2000 buckets per series.
    .max(span / 2000);
    Ok((from, to, bucket_ms))
}

/// Computes the statistics of samples in `[from, to)`.
pub fn compute(samples: &[UsageSample], from: i64, to: i64, bucket_ms: i64) -> Stats {
    let bucket_ms = bucket_ms.max(1);
    let span = to.saturating_sub(from).max(0);
    let bucket_count = usize::try_from(span.saturating_add(bucket_ms - 1) / bucket_ms)
        .unwrap_or(0)
        .clamp(1, 100_000);
    let bucket_of = |ts: i64| -> usize {
        usize::try_from(ts.saturating_sub(from) / bucket_ms)
            .unwrap_or(0)
            .min(bucket_count - 1)
    };
    let new_series =
        || -> Vec<Accumulator> { (0..bucket_count).map(|_| Accumulator::default()).collect() };

    let mut total = Accumulator::default();
    let mut by_backend: BTreeMap<String, Accumulator> = BTreeMap::new();
    let mut by_model: BTreeMap<String, Accumulator> = BTreeMap::new();
    let mut series = new_series();
    let mut series_by_backend: BTreeMap<String, Vec<Accumulator>> = BTreeMap::new();
    let mut series_by_model: BTreeMap<String, Vec<Accumulator>> = BTreeMap::new();

    for sample in samples {
        let backend = sample.backend_id.clone().unwrap_or_else(|| "-".to_owned());
        let model = sample
            .canonical_model
            .clone()
            .unwrap_or_else(|| "-".to_owned());
        let bucket = bucket_of(sample.ts_ms);
        total.add(sample);
        series[bucket].add(sample);
        by_backend.entry(backend.clone()).or_default().add(sample);
        by_model.entry(model.clone()).or_default().add(sample);
        series_by_backend.entry(backend).or_insert_with(new_series)[bucket].add(sample);
        series_by_model.entry(model).or_insert_with(new_series)[bucket].add(sample);
    }

    let to_buckets = |accumulators: Vec<Accumulator>| -> Vec<Bucket> {
        accumulators
            .into_iter()
            .enumerate()
            .map(|(i, acc)| Bucket {
                ts_ms: from + i64::try_from(i).unwrap_or(0) * bucket_ms,
                stats: acc.finish(),
            })
            .collect()
    };

    Stats {
        from_ms: from,
        to_ms: to,
        bucket_ms,
        total: total.finish(),
        by_backend: by_backend
            .into_iter()
            .map(|(k, v)| (k, v.finish()))
            .collect(),
        by_model: by_model.into_iter().map(|(k, v)| (k, v.finish())).collect(),
        series: to_buckets(series),
        series_by_backend: series_by_backend
            .into_iter()
            .map(|(k, v)| (k, to_buckets(v)))
            .collect(),
        series_by_model: series_by_model
            .into_iter()
            .map(|(k, v)| (k, to_buckets(v)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        ts_ms: i64,
        backend: &str,
        outcome: Outcome,
        status: u16,
        latency: u64,
    ) -> UsageSample {
        UsageSample {
            ts_ms,
            backend_id: Some(backend.to_owned()),
            canonical_model: Some("m".to_owned()),
            status,
            outcome,
            prompt_tokens: 10,
            completion_tokens: 5,
            latency_ms: latency,
            ttfb_ms: Some(latency / 2),
        }
    }

    #[test]
    fn aggregates_percentiles_and_buckets() {
        let samples: Vec<_> = (0..100)
            .map(|i| {
                let outcome = if i % 10 == 0 {
                    Outcome::Error
                } else {
                    Outcome::Success
                };
                let status = if i % 10 == 0 { 502 } else { 200 };
                sample(
                    i * 1000,
                    if i < 50 { "a" } else { "b" },
                    outcome,
                    status,
                    (i + 1) as u64,
                )
            })
            .collect();
        let stats = compute(&samples, 0, 100_000, 10_000);
        assert_eq!(stats.total.requests, 100);
        assert_eq!(stats.total.errors, 10);
        assert!((stats.total.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(stats.total.p50_latency_ms, Some(50));
        assert_eq!(stats.total.p95_latency_ms, Some(95));
        assert_eq!(stats.total.prompt_tokens, 1000);
        assert_eq!(stats.series.len(), 10);
        assert!(stats.series.iter().all(|b| b.stats.requests == 10));
        assert_eq!(stats.by_backend["a"].requests, 50);
        assert_eq!(stats.series_by_backend["b"][9].stats.requests, 10);
        assert_eq!(stats.series_by_backend["b"][0].stats.requests, 0);
    }

    #[test]
    fn cancelled_requests_are_not_errors() {
        let samples = vec![
            sample(0, "a", Outcome::Cancelled, 499, 5),
            sample(1, "a", Outcome::Success, 200, 5),
        ];
        let stats = compute(&samples, 0, 10, 1000);
        assert_eq!(stats.total.errors, 0);
        assert_eq!(stats.total.cancelled, 1);
        assert_eq!(stats.total.error_rate, 0.0);
    }

    #[test]
    fn range_defaults_to_the_last_hour() {
        let (from, to, bucket) = resolve_range(&StatsQuery::default(), 10_000_000).unwrap();
        assert_eq!(to - from, 3_600_000);
        assert_eq!(bucket, 60_000);
    }

    #[test]
    fn extreme_queries_are_refused_not_overflowed() {
        for query in [
            StatsQuery {
                to_ms: Some(i64::MIN),
                ..StatsQuery::default()
            },
            StatsQuery {
                from_ms: Some(i64::MIN),
                ..StatsQuery::default()
            },
            StatsQuery {
                bucket_seconds: Some(i64::MAX),
                ..StatsQuery::default()
            },
            StatsQuery {
                bucket_seconds: Some(0),
                ..StatsQuery::default()
            },
            StatsQuery {
                from_ms: Some(10),
                to_ms: Some(5),
                ..StatsQuery::default()
            },
        ] {
            assert!(resolve_range(&query, 10_000_000).is_err(), "{query:?}");
        }
    }
}
