//! Usage statistics for the admin API and dashboard: request and error counts, tokens, cost and
//! latency percentiles, overall, per backend, per model, per client key, and in time buckets. The store aggregates (in
//! SQL: counts and nearest-rank percentiles per group); [`assemble`] shapes its groups into the
//! answer.
//!
//! Two sources answer: the raw records (exact nearest-rank percentiles) and the hourly rollup
//! (`usage_rollup_hour`, written in the same transaction as the records). [`StatsSource::pick`]
//! chooses: a range longer than [`RAW_SPAN_MS`] or starting before the raw retention horizon
//! reads the rollup, whose range is widened to whole UTC hours and whose buckets are whole hours.
//! Every count, token sum, cost and average is the same from both; the percentiles
//! (`p50_latency_ms`, `p95_latency_ms`, `p50_ttfb_ms`) exist only from raw records and are null
//! from the rollup, where `avg_latency_ms` / `avg_ttfb_ms` stand in.

use std::collections::BTreeMap;

use crate::pricing::Nanodollars;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    /// Prompt tokens the upstreams read from their prompt caches (part of `prompt_tokens`).
    pub cached_tokens: u64,
    /// `cached_tokens / prompt_tokens` (0 without prompt tokens): how well prompt caches hit —
    /// what sticky routing improves.
    pub cached_share: f64,
    pub p50_latency_ms: Option<u64>,
    pub p95_latency_ms: Option<u64>,
    pub p50_ttfb_ms: Option<u64>,
    /// What the requests cost, in USD: the exact sum of their records' costs (records without
    /// a price count 0).
    #[schema(value_type = f64)]
    pub cost_usd: Nanodollars,
    /// Mean latency (rounded down): exact from both sources.
    pub avg_latency_ms: Option<u64>,
    /// Mean time to first byte over the requests that had one (rounded down).
    pub avg_ttfb_ms: Option<u64>,
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
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
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
    /// Keyed by client key id (`admin` for the admin token): spend by key.
    pub by_key: BTreeMap<String, Aggregate>,
    /// The same buckets split by client key id.
    pub series_by_key: BTreeMap<String, Vec<Bucket>>,
    /// `raw` (the records) or `rollup` (the hourly aggregates: no percentiles, whole hours).
    #[schema(value_type = String)]
    pub source: StatsSource,
}

/// Where a statistics answer comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsSource {
    /// The raw usage records.
    #[default]
    Raw,
    /// The hourly rollup.
    Rollup,
}

/// Ranges longer than this (2 days) answer from the rollup.
pub const RAW_SPAN_MS: i64 = 2 * 86_400_000;
/// The rollup's bucket width: one UTC hour.
pub const ROLLUP_BUCKET_MS: i64 = 3_600_000;

impl StatsSource {
    /// The rollup for a range longer than [`RAW_SPAN_MS`] or one starting before `now_ms -
    /// raw_retention_ms` (where raw records may be gone); the raw records otherwise.
    pub fn pick(from_ms: i64, to_ms: i64, now_ms: i64, raw_retention_ms: Option<i64>) -> Self {
        let too_long = to_ms.saturating_sub(from_ms) > RAW_SPAN_MS;
        let too_old =
            raw_retention_ms.is_some_and(|retention| from_ms < now_ms.saturating_sub(retention));
        if too_long || too_old {
            Self::Rollup
        } else {
            Self::Raw
        }
    }
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

/// The range the store aggregates: `[from_ms, to_ms)` cut into `bucket_count` buckets of
/// `bucket_ms` (a record at or past the last bucket's end counts in the last one), with the
/// query's filters.
#[derive(Clone, Copy, Debug)]
pub struct StatsRange<'a> {
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
    pub bucket_count: i64,
    pub backend_id: Option<&'a str>,
    pub model: Option<&'a str>,
    pub client_key_id: Option<&'a str>,
    /// Which table the store reads.
    pub source: StatsSource,
}

impl<'a> StatsRange<'a> {
    /// The range of a query resolved by [`resolve_range`].
    pub fn new(query: &'a StatsQuery, from_ms: i64, to_ms: i64, bucket_ms: i64) -> Self {
        let bucket_ms = bucket_ms.max(1);
        let span = to_ms.saturating_sub(from_ms).max(0);
        Self {
            from_ms,
            to_ms,
            bucket_ms,
            bucket_count: (span.saturating_add(bucket_ms - 1) / bucket_ms).clamp(1, 100_000),
            backend_id: query.backend_id.as_deref(),
            model: query.model.as_deref(),
            client_key_id: query.client_key_id.as_deref(),
            source: StatsSource::Raw,
        }
    }

    /// The same range read from the hourly rollup: `from_ms` down and `to_ms` up to whole
    /// hours, buckets a whole number of hours.
    pub fn rollup(self) -> Self {
        let hour = ROLLUP_BUCKET_MS;
        let from_ms = self.from_ms.div_euclid(hour) * hour;
        let to_ms = self
            .to_ms
            .saturating_add(hour - 1)
            .div_euclid(hour)
            .saturating_mul(hour)
            .max(from_ms);
        let bucket_ms = self
            .bucket_ms
            .saturating_add(hour - 1)
            .div_euclid(hour)
            .max(1)
            .saturating_mul(hour);
        let span = to_ms - from_ms;
        Self {
            from_ms,
            to_ms,
            bucket_ms,
            bucket_count: (span.saturating_add(bucket_ms - 1) / bucket_ms).clamp(1, 100_000),
            source: StatsSource::Rollup,
            ..self
        }
    }
}

/// Which requests one aggregate covers (`-` is the key of "no backend" / "no model").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Total,
    Backend(String),
    Model(String),
    Bucket(usize),
    BucketBackend(usize, String),
    BucketModel(usize, String),
    Key(String),
    BucketKey(usize, String),
}

/// One group's counts and nearest-rank percentiles, as the store computes them.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStats {
    pub group: Group,
    pub requests: u64,
    /// Requests that did not succeed (cancellations excluded).
    pub errors: u64,
    pub cancelled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// The exact sum of the records' `cost_nanousd`.
    pub cost_nanousd: u64,
    pub p50_latency_ms: Option<u64>,
    pub p95_latency_ms: Option<u64>,
    pub p50_ttfb_ms: Option<u64>,
    /// Sum of the latencies, of the times to first byte, and how many had one.
    pub latency_ms_sum: u64,
    pub ttfb_ms_sum: u64,
    pub ttfb_count: u64,
}

impl GroupStats {
    fn aggregate(&self) -> Aggregate {
        let counted = self.requests.saturating_sub(self.cancelled);
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
            cached_tokens: self.cached_tokens,
            cached_share: if self.prompt_tokens == 0 {
                0.0
            } else {
                self.cached_tokens as f64 / self.prompt_tokens as f64
            },
            p50_latency_ms: self.p50_latency_ms,
            p95_latency_ms: self.p95_latency_ms,
            p50_ttfb_ms: self.p50_ttfb_ms,
            cost_usd: Nanodollars::new(self.cost_nanousd),
            avg_latency_ms: (self.requests > 0).then(|| self.latency_ms_sum / self.requests),
            avg_ttfb_ms: (self.ttfb_count > 0).then(|| self.ttfb_ms_sum / self.ttfb_count),
        }
    }
}

/// Builds the answer from the store's groups: every series has one bucket per step of the
/// range, empty buckets included.
pub fn assemble(groups: &[GroupStats], range: &StatsRange<'_>) -> Stats {
    let bucket_count = usize::try_from(range.bucket_count).unwrap_or(1).max(1);
    let empty_series = || -> Vec<Bucket> {
        (0..bucket_count)
            .map(|i| Bucket {
                ts_ms: range.from_ms + i64::try_from(i).unwrap_or(0) * range.bucket_ms,
                stats: Aggregate::default(),
            })
            .collect()
    };
    let mut stats = Stats {
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        bucket_ms: range.bucket_ms,
        total: Aggregate::default(),
        by_backend: BTreeMap::new(),
        by_model: BTreeMap::new(),
        series: empty_series(),
        series_by_backend: BTreeMap::new(),
        series_by_model: BTreeMap::new(),
        by_key: BTreeMap::new(),
        series_by_key: BTreeMap::new(),
        source: range.source,
    };
    for group in groups {
        let aggregate = group.aggregate();
        let (series, i) = match &group.group {
            Group::Total => {
                stats.total = aggregate;
                continue;
            }
            Group::Backend(key) => {
                stats.by_backend.insert(key.clone(), aggregate);
                continue;
            }
            Group::Model(key) => {
                stats.by_model.insert(key.clone(), aggregate);
                continue;
            }
            Group::Key(key) => {
                stats.by_key.insert(key.clone(), aggregate);
                continue;
            }
            Group::Bucket(i) => (&mut stats.series, *i),
            Group::BucketBackend(i, key) => (
                stats
                    .series_by_backend
                    .entry(key.clone())
                    .or_insert_with(empty_series),
                *i,
            ),
            Group::BucketModel(i, key) => (
                stats
                    .series_by_model
                    .entry(key.clone())
                    .or_insert_with(empty_series),
                *i,
            ),
            Group::BucketKey(i, key) => (
                stats
                    .series_by_key
                    .entry(key.clone())
                    .or_insert_with(empty_series),
                *i,
            ),
        };
        if let Some(bucket) = series.get_mut(i) {
            bucket.stats = aggregate;
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(group: Group, requests: u64, errors: u64, cancelled: u64) -> GroupStats {
        GroupStats {
            group,
            requests,
            errors,
            cancelled,
            prompt_tokens: 10 * requests,
            completion_tokens: 5 * requests,
            cached_tokens: 2 * requests,
            cost_nanousd: 7 * requests,
            p50_latency_ms: Some(50),
            p95_latency_ms: Some(95),
            p50_ttfb_ms: None,
            latency_ms_sum: 0,
            ttfb_ms_sum: 0,
            ttfb_count: 0,
        }
    }

    #[test]
    fn assembles_every_bucket_and_the_error_rate() {
        let query = StatsQuery::default();
        let range = StatsRange::new(&query, 0, 100_000, 10_000);
        assert_eq!(range.bucket_count, 10);
        let stats = assemble(
            &[
                group(Group::Total, 12, 2, 2),
                group(Group::Backend("a".into()), 12, 2, 2),
                group(Group::Bucket(3), 12, 2, 2),
                group(Group::BucketBackend(9, "a".into()), 1, 0, 0),
            ],
            &range,
        );
        assert_eq!(stats.total.requests, 12);
        assert!(
            (stats.total.error_rate - 0.2).abs() < 1e-9,
            "cancellations do not count"
        );
        assert_eq!(stats.series.len(), 10);
        assert_eq!(stats.series[3].stats.requests, 12);
        assert_eq!(stats.series[3].ts_ms, 30_000);
        assert_eq!(stats.series[4].stats, Aggregate::default());
        assert_eq!(stats.series_by_backend["a"].len(), 10);
        assert_eq!(stats.series_by_backend["a"][9].stats.requests, 1);
        assert_eq!(stats.series_by_backend["a"][0].stats.requests, 0);
        assert!(stats.by_model.is_empty());
        assert_eq!(stats.total.cost_usd, Nanodollars::new(84));
    }

    #[test]
    fn an_empty_range_has_zero_buckets_not_missing_ones() {
        let query = StatsQuery::default();
        let range = StatsRange::new(&query, 5, 5, 1000);
        assert_eq!(range.bucket_count, 1);
        let stats = assemble(&[], &range);
        assert_eq!(stats.total.requests, 0);
        assert_eq!(stats.total.p50_latency_ms, None);
        assert_eq!(stats.series.len(), 1);
    }

    #[test]
    fn long_or_old_ranges_read_the_rollup_in_whole_hours() {
        let day = 86_400_000;
        assert_eq!(StatsSource::pick(0, day, day, None), StatsSource::Raw);
        assert_eq!(
            StatsSource::pick(0, 3 * day, 3 * day, None),
            StatsSource::Rollup
        );
        assert_eq!(
            StatsSource::pick(0, day, 10 * day, Some(7 * day)),
            StatsSource::Rollup,
            "older than the raw retention"
        );
        let query = StatsQuery::default();
        let range = StatsRange::new(&query, 5_400_000, 3 * day + 1, 1_000).rollup();
        assert_eq!(range.from_ms, 3_600_000);
        assert_eq!(range.to_ms, 3 * day + 3_600_000);
        assert_eq!(range.bucket_ms, 3_600_000);
        assert_eq!(range.bucket_count, 72);
        assert_eq!(range.source, StatsSource::Rollup);
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
