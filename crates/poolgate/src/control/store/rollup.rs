//! The hourly usage rollup (`usage_rollup_hour`), shared by both stores: the rows of one batch
//! aggregated in memory per (hour, client key, backend, canonical model, upstream model), then
//! upserted (`… + excluded.…`) in the transaction that inserted the records — only the records
//! the insert actually stored, so a batch written again never counts twice.
//!
//! Missing dimensions are stored as `-` (the key the statistics use for "none").

use std::collections::BTreeMap;

use crate::domain::{LimiterKind, Outcome, UsageRecord};
use crate::usage::stats::ROLLUP_BUCKET_MS;

/// The stored value of a missing client key, backend or model.
pub const NONE: &str = "-";

/// The key of one rollup row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RollupKey {
    pub bucket_ms: i64,
    pub client_key_id: String,
    pub backend_id: String,
    pub canonical_model: String,
    pub upstream_model: String,
}

/// The sums of one rollup row (the statistics' definitions: a cancellation is no error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollupSums {
    pub requests: i64,
    pub errors: i64,
    pub cancelled: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_nanousd: i64,
    pub estimated_requests: i64,
    pub latency_ms_sum: i64,
    pub ttfb_ms_sum: i64,
    pub ttfb_count: i64,
}

fn wide(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn name(value: Option<&String>) -> String {
    value.map_or_else(|| NONE.to_owned(), Clone::clone)
}

/// The rollup rows of `records` (those the insert stored), one per key.
pub fn aggregate<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>,
) -> Vec<(RollupKey, RollupSums)> {
    let mut rows: BTreeMap<RollupKey, RollupSums> = BTreeMap::new();
    for record in records {
        let key = RollupKey {
            bucket_ms: record.ts_ms.div_euclid(ROLLUP_BUCKET_MS) * ROLLUP_BUCKET_MS,
            client_key_id: name(record.client_key_id.as_ref()),
            backend_id: name(record.backend_id.as_ref()),
            canonical_model: name(record.canonical_model.as_ref()),
            upstream_model: name(record.upstream_model.as_ref()),
        };
        let sums = rows.entry(key).or_default();
        let cancelled = record.outcome == Outcome::Cancelled;
        let succeeded = record.outcome == Outcome::Success && record.status < 400;
        let failed = !(cancelled || succeeded);
        sums.requests += 1;
        sums.errors += i64::from(failed);
        sums.cancelled += i64::from(cancelled);
        sums.prompt_tokens += i64::from(record.prompt_tokens.unwrap_or(0));
        sums.completion_tokens += i64::from(record.completion_tokens.unwrap_or(0));
        sums.cached_tokens += i64::from(record.cached_tokens.unwrap_or(0));
        sums.cache_write_tokens += i64::from(record.cache_write_tokens.unwrap_or(0));
        sums.cost_nanousd = sums
            .cost_nanousd
            .saturating_add(record.cost.map_or(0, |cost| wide(cost.get())));
        sums.estimated_requests += i64::from(record.tokens_estimated);
        sums.latency_ms_sum = sums.latency_ms_sum.saturating_add(wide(record.latency_ms));
        if let Some(ttfb) = record.ttfb_ms {
            sums.ttfb_ms_sum = sums.ttfb_ms_sum.saturating_add(wide(ttfb));
            sums.ttfb_count += 1;
        }
    }
    rows.into_iter().collect()
}

/// The spend of one batch's rollup rows per client key and per backend (`-` and nothing spent
/// left out), added to their lifetime spend (`usage_lifetime_spend`, both stores) in the same
/// transaction.
pub fn lifetime_spend(rows: &[(RollupKey, RollupSums)]) -> Vec<(LimiterKind, &str, i64)> {
    let mut spend: BTreeMap<(LimiterKind, &str), i64> = BTreeMap::new();
    for (key, sums) in rows {
        if sums.cost_nanousd <= 0 {
            continue;
        }
        for (kind, id) in [
            (LimiterKind::ClientKey, key.client_key_id.as_str()),
            (LimiterKind::Backend, key.backend_id.as_str()),
        ] {
            if id != NONE {
                let total = spend.entry((kind, id)).or_default();
                *total = total.saturating_add(sums.cost_nanousd);
            }
        }
    }
    spend
        .into_iter()
        .map(|((kind, id), cost)| (kind, id, cost))
        .collect()
}

/// The records of `batch` the insert stored, given the `(request_id, ts)` pairs it returned: the
/// first record of each pair (a batch can hold one request twice; the insert keeps the first).
pub fn stored(
    batch: &[UsageRecord],
    mut returned: std::collections::HashSet<(String, i64)>,
) -> Vec<&UsageRecord> {
    batch
        .iter()
        .filter(|record| returned.remove(&(record.request_id.clone(), record.ts_ms)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::test_support::usage;

    #[test]
    fn one_row_per_hour_and_dimensions_with_the_stats_definitions() {
        let cancelled = UsageRecord {
            outcome: Outcome::Cancelled,
            status: 499,
            ..usage(2)
        };
        let failed = UsageRecord {
            outcome: Outcome::Error,
            status: 502,
            backend_id: None,
            ttfb_ms: None,
            ..usage(4)
        };
        let later = UsageRecord {
            ts_ms: ROLLUP_BUCKET_MS + 5,
            ..usage(6)
        };
        let rows = aggregate(&[usage(0), cancelled, failed, later]);
        assert_eq!(rows.len(), 3);
        let (key, sums) = &rows[0];
        assert_eq!(key.bucket_ms, 0);
        assert_eq!(key.backend_id, NONE);
        assert_eq!((sums.requests, sums.errors, sums.ttfb_count), (1, 1, 0));
        let (key, sums) = &rows[1];
        assert_eq!(key.backend_id, "bkd_x");
        assert_eq!((sums.requests, sums.errors, sums.cancelled), (2, 0, 1));
        assert_eq!(
            (sums.prompt_tokens, sums.latency_ms_sum, sums.ttfb_count),
            (20, 24, 2)
        );
        assert_eq!(rows[2].0.bucket_ms, ROLLUP_BUCKET_MS);
    }

    #[test]
    fn lifetime_spend_sums_each_key_and_backend_over_hours_and_models() {
        let priced = |i: i64, cost: u64, key: Option<&str>, backend: Option<&str>| UsageRecord {
            ts_ms: i * ROLLUP_BUCKET_MS,
            canonical_model: Some(format!("model-{i}")),
            cost: Some(crate::pricing::Nanodollars::new(cost)),
            client_key_id: key.map(str::to_owned),
            backend_id: backend.map(str::to_owned),
            ..usage(i)
        };
        let unpriced = UsageRecord {
            cost: None,
            client_key_id: Some("free".to_owned()),
            ..usage(9)
        };
        let rows = aggregate(&[
            priced(0, 10, Some("k1"), Some("b1")),
            priced(1, 20, Some("k1"), Some("b2")),
            priced(2, 5, None, Some("b1")),
            priced(3, 7, Some("k2"), None),
            unpriced,
        ]);
        assert_eq!(
            lifetime_spend(&rows),
            [
                (LimiterKind::Backend, "b1", 15),
                (LimiterKind::Backend, "b2", 20),
                (LimiterKind::ClientKey, "k1", 30),
                (LimiterKind::ClientKey, "k2", 7),
            ]
        );
    }

    #[test]
    fn only_returned_records_count_once() {
        let batch = [usage(0), usage(1), usage(0)];
        let returned = [("req-0".to_owned(), 1_000)].into_iter().collect();
        let kept = stored(&batch, returned);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].request_id, "req-0");
    }
}
