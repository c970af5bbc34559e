//! The usage store against a real SQLite file: pages, filters, and statistics computed in SQL
//! checked against a plain in-memory computation of the same definitions.

use proptest::prelude::*;

use super::super::tests::open;
use crate::control::store::test_support::{
    comparable, lifetime_after_migration, record_strategy, spend_before_lifetime_sql, usage,
};
use crate::control::store::UsageStore;
use crate::domain::{Outcome, UsageRecord};
use crate::usage::stats::{assemble, Aggregate, Stats, StatsQuery, StatsRange, StatsSource};
use crate::usage::UsageFilter;

async fn stats(
    store: &super::SqliteStore,
    query: &StatsQuery,
    from: i64,
    to: i64,
    bucket_ms: i64,
) -> Stats {
    let range = StatsRange::new(query, from, to, bucket_ms);
    let groups = store.usage_stats(&range).await.unwrap();
    assemble(&groups, &range)
}

#[tokio::test]
async fn usage_is_paginated_newest_first_and_filtered() {
    let (_dir, store) = open().await;
    let records: Vec<_> = (0..25).map(usage).collect();
    store.insert_usage(&records).await.unwrap();
    assert_eq!(store.count_usage().await.unwrap(), 25);

    let first = store
        .list_usage(&UsageFilter {
            limit: Some(10),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(first.records.len(), 10);
    assert_eq!(first.records[0], records[24]);
    let second = store
        .list_usage(&UsageFilter {
            limit: Some(10),
            before: first.next_cursor,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(second.records[0], records[14]);
    let third = store
        .list_usage(&UsageFilter {
            limit: Some(10),
            before: second.next_cursor,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(third.records.len(), 5);
    assert_eq!(third.next_cursor, None);

    let only_a = store
        .list_usage(&UsageFilter {
            model: Some("a".into()),
            from_ms: Some(1_010),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert!(only_a
        .records
        .iter()
        .all(|r| r.canonical_model.as_deref() == Some("a") && r.ts_ms >= 1_010));
    assert_eq!(only_a.records.len(), 8);

    let query = StatsQuery {
        model: Some("b".into()),
        ..StatsQuery::default()
    };
    let b_only = stats(&store, &query, 1_000, 1_005, 1_000).await;
    assert_eq!(b_only.total.requests, 2, "records 1 and 3");
    let query = StatsQuery {
        client_key_id: Some("other".into()),
        ..StatsQuery::default()
    };
    assert_eq!(
        stats(&store, &query, 0, 10_000, 1_000).await.total.requests,
        0
    );

    let failed = UsageRecord {
        request_id: "req-failed".into(),
        status: 502,
        outcome: Outcome::Error,
        ..usage(99)
    };
    store.insert_usage(&[failed]).await.unwrap();
    let errors = store
        .list_usage(&UsageFilter {
            status_min: Some(400),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.records.len(), 1);
    assert_eq!(errors.records[0].request_id, "req-failed");
    let by_outcome = store
        .list_usage(&UsageFilter {
            outcome: Some("error".into()),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_outcome.records.len(), 1);
}

/// The statistics of 100 requests over 100 s in buckets of 10 s: every tenth failed, latencies
/// 1..=100 ms, half on backend `a`.
#[tokio::test]
async fn aggregates_percentiles_and_buckets_in_sql() {
    let (_dir, store) = open().await;
    let records: Vec<UsageRecord> = (0..100_i64)
        .map(|i| UsageRecord {
            request_id: format!("req-{i}"),
            ts_ms: i * 1000,
            backend_id: Some(if i < 50 { "a" } else { "b" }.into()),
            canonical_model: Some("m".into()),
            status: if i % 10 == 0 { 502 } else { 200 },
            outcome: if i % 10 == 0 {
                Outcome::Error
            } else {
                Outcome::Success
            },
            latency_ms: u64::try_from(i + 1).unwrap(),
            ttfb_ms: Some(u64::try_from(i + 1).unwrap() / 2),
            ..usage(i)
        })
        .collect();
    store.insert_usage(&records).await.unwrap();
    let stats = stats(&store, &StatsQuery::default(), 0, 100_000, 10_000).await;
    assert_eq!(stats.total.requests, 100);
    assert_eq!(stats.total.errors, 10);
    assert!((stats.total.error_rate - 0.1).abs() < 1e-9);
    assert_eq!(stats.total.p50_latency_ms, Some(50));
    assert_eq!(stats.total.p95_latency_ms, Some(95));
    assert_eq!(stats.total.p50_ttfb_ms, Some(25));
    assert_eq!(stats.total.prompt_tokens, 1000);
    assert_eq!(stats.series.len(), 10);
    assert!(stats.series.iter().all(|b| b.stats.requests == 10));
    assert_eq!(stats.by_backend["a"].requests, 50);
    assert_eq!(stats.by_backend["a"].p50_latency_ms, Some(25));
    assert_eq!(stats.series_by_backend["b"][9].stats.requests, 10);
    assert_eq!(stats.series_by_backend["b"][0].stats.requests, 0);
    assert_eq!(stats.series_by_model["m"][0].stats.p95_latency_ms, Some(10));
}

#[tokio::test]
async fn cancelled_requests_are_not_errors() {
    let (_dir, store) = open().await;
    let cancelled = UsageRecord {
        status: 499,
        outcome: Outcome::Cancelled,
        ..usage(0)
    };
    store.insert_usage(&[cancelled, usage(1)]).await.unwrap();
    let stats = stats(&store, &StatsQuery::default(), 0, 10_000, 1000).await;
    assert_eq!(stats.total.errors, 0);
    assert_eq!(stats.total.cancelled, 1);
    assert_eq!(stats.total.error_rate, 0.0);
}

// === the SQL against a reference computation ===

/// The definitions, computed the plain way: sort, take the nearest rank.
fn reference(records: &[UsageRecord], from: i64, bucket_ms: i64, buckets: usize) -> Stats {
    fn aggregate(group: &[&UsageRecord]) -> Aggregate {
        let rank = |values: &mut Vec<u64>, pct: usize| {
            values.sort_unstable();
            let rank = (pct * values.len()).div_ceil(100).max(1);
            values.get(rank - 1).copied()
        };
        let cancelled = group
            .iter()
            .filter(|r| r.outcome == Outcome::Cancelled)
            .count() as u64;
        let errors = group
            .iter()
            .filter(|r| match r.outcome {
                Outcome::Cancelled => false,
                Outcome::Success => r.status >= 400,
                _ => true,
            })
            .count() as u64;
        let requests = group.len() as u64;
        let mut latencies: Vec<u64> = group.iter().map(|r| r.latency_ms).collect();
        let mut ttfbs: Vec<u64> = group.iter().filter_map(|r| r.ttfb_ms).collect();
        let prompt: u64 = group
            .iter()
            .map(|r| u64::from(r.prompt_tokens.unwrap_or(0)))
            .sum();
        let cached: u64 = group
            .iter()
            .map(|r| u64::from(r.cached_tokens.unwrap_or(0)))
            .sum();
        Aggregate {
            requests,
            errors,
            cancelled,
            error_rate: if requests == cancelled {
                0.0
            } else {
                errors as f64 / (requests - cancelled) as f64
            },
            prompt_tokens: prompt,
            completion_tokens: group
                .iter()
                .map(|r| u64::from(r.completion_tokens.unwrap_or(0)))
                .sum(),
            cached_tokens: cached,
            cached_share: if prompt == 0 {
                0.0
            } else {
                cached as f64 / prompt as f64
            },
            p50_latency_ms: rank(&mut latencies, 50),
            p95_latency_ms: rank(&mut latencies, 95),
            p50_ttfb_ms: rank(&mut ttfbs, 50),
            cost_usd: group.iter().filter_map(|r| r.cost).sum(),
            avg_latency_ms: (!group.is_empty())
                .then(|| group.iter().map(|r| r.latency_ms).sum::<u64>() / group.len() as u64),
            avg_ttfb_ms: {
                let ttfbs: Vec<u64> = group.iter().filter_map(|r| r.ttfb_ms).collect();
                (!ttfbs.is_empty()).then(|| ttfbs.iter().sum::<u64>() / ttfbs.len() as u64)
            },
        }
    }
    let key = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let bucket_of = |r: &UsageRecord| {
        usize::try_from((r.ts_ms - from) / bucket_ms)
            .unwrap()
            .min(buckets - 1)
    };
    let series = |group: &[&UsageRecord]| -> Vec<crate::usage::stats::Bucket> {
        (0..buckets)
            .map(|i| crate::usage::stats::Bucket {
                ts_ms: from + i64::try_from(i).unwrap() * bucket_ms,
                stats: aggregate(
                    &group
                        .iter()
                        .copied()
                        .filter(|r| bucket_of(r) == i)
                        .collect::<Vec<_>>(),
                ),
            })
            .collect()
    };
    let all: Vec<&UsageRecord> = records.iter().collect();
    let by = |field: fn(&UsageRecord) -> &Option<String>| {
        let mut keys: Vec<String> = records.iter().map(|r| key(field(r))).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let group: Vec<&UsageRecord> =
                    records.iter().filter(|r| key(field(r)) == k).collect();
                (k, group)
            })
            .collect::<Vec<_>>()
    };
    let backends = by(|r| &r.backend_id);
    let models = by(|r| &r.canonical_model);
    let keys = by(|r| &r.client_key_id);
    Stats {
        from_ms: from,
        to_ms: 0,
        bucket_ms,
        total: aggregate(&all),
        by_backend: backends
            .iter()
            .map(|(k, g)| (k.clone(), aggregate(g)))
            .collect(),
        by_model: models
            .iter()
            .map(|(k, g)| (k.clone(), aggregate(g)))
            .collect(),
        series: series(&all),
        series_by_backend: backends
            .iter()
            .map(|(k, g)| (k.clone(), series(g)))
            .collect(),
        series_by_model: models.iter().map(|(k, g)| (k.clone(), series(g))).collect(),
        by_key: keys
            .iter()
            .map(|(k, g)| (k.clone(), aggregate(g)))
            .collect(),
        series_by_key: keys.iter().map(|(k, g)| (k.clone(), series(g))).collect(),
        source: StatsSource::Raw,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Counts, sums, nearest-rank percentiles and bucket placement from SQL equal the plain
    /// computation, for every group.
    #[test]
    fn sql_statistics_match_the_definitions(
        mut records in prop::collection::vec(record_strategy(), 0..120),
        bucket_seconds in 1_i64..30,
    ) {
        // One record per request (the store keeps the first of a request id).
        for (i, record) in records.iter_mut().enumerate() {
            record.request_id = format!("req-{i}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // One record per request id, as the gateway writes them.
        let records: Vec<UsageRecord> = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| UsageRecord { request_id: format!("req-{i}"), ..r })
            .collect();
        let (got, expected) = runtime.block_on(async {
            let (_dir, store) = open().await;
            store.insert_usage(&records).await.unwrap();
            let (from, to) = (0, 60_000);
            let got = stats(&store, &StatsQuery::default(), from, to, bucket_seconds * 1000).await;
            let buckets = got.series.len();
            (got, reference(&records, from, bucket_seconds * 1000, buckets))
        });
        prop_assert_eq!(&got.total, &expected.total);
        prop_assert_eq!(&got.by_backend, &expected.by_backend);
        prop_assert_eq!(&got.by_model, &expected.by_model);
        prop_assert_eq!(&got.series, &expected.series);
        // Only keys with records get a series.
        prop_assert_eq!(&got.series_by_backend, &expected.series_by_backend);
        prop_assert_eq!(&got.series_by_model, &expected.series_by_model);
        prop_assert_eq!(&got.by_key, &expected.by_key);
    }

    /// The same records over six hours give the same statistics (at hour granularity) from the
    /// hourly rollup as from the raw records — percentiles aside — even when batches overlap.
    #[test]
    fn rollup_statistics_match_the_raw_records(
        records in prop::collection::vec(record_strategy(), 0..120),
        bucket_hours in 1_i64..4,
        split in 0_usize..120,
    ) {
        let records: Vec<UsageRecord> = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| UsageRecord { request_id: format!("req-{i}"), ts_ms: r.ts_ms * 360, ..r })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (raw, rolled) = runtime.block_on(async {
            let (_dir, store) = open().await;
            // Two batches that overlap (a retried batch): each request counts once.
            let cut = split.min(records.len());
            store.insert_usage(&records[..cut]).await.unwrap();
            store.insert_usage(&records).await.unwrap();
            rollup_and_raw(&store, 6 * HOUR, bucket_hours * HOUR).await
        });
        prop_assert_eq!(raw, rolled);
    }
}

const HOUR: i64 = 3_600_000;

/// The statistics of `[0, to)` in buckets of `bucket_ms` (whole hours), from the raw records
/// and from the rollup, made comparable.
async fn rollup_and_raw(store: &super::SqliteStore, to: i64, bucket_ms: i64) -> (Stats, Stats) {
    let query = StatsQuery::default();
    let raw = StatsRange::new(&query, 0, to, bucket_ms);
    let rollup = raw.rollup();
    assert_eq!(
        (rollup.from_ms, rollup.to_ms, rollup.bucket_ms),
        (0, to, bucket_ms)
    );
    let raw = assemble(&store.usage_stats(&raw).await.unwrap(), &raw);
    let rolled = assemble(&store.usage_stats(&rollup).await.unwrap(), &rollup);
    assert_eq!(rolled.source, StatsSource::Rollup);
    assert_eq!(rolled.total.p50_latency_ms, None);
    (comparable(raw), comparable(rolled))
}

#[tokio::test]
async fn the_rollup_outlives_the_raw_retention() {
    let (_dir, store) = open().await;
    let day = 24 * HOUR;
    // One record a day for 30 days; a retried batch on top.
    let records: Vec<UsageRecord> = (0..30)
        .map(|i| UsageRecord {
            ts_ms: i * day + 1,
            cost: Some(crate::pricing::Nanodollars::new(1_000)),
            ..usage(i)
        })
        .collect();
    store.insert_usage(&records).await.unwrap();
    store.insert_usage(&records[20..]).await.unwrap();
    let (raw, rolled) = rollup_and_raw(&store, 30 * day, day).await;
    assert_eq!(raw, rolled);
    assert_eq!(rolled.total.requests, 30);
    // The raw retention drops the first 25 days; the month still answers from the rollup.
    assert_eq!(store.prune_usage(25 * day).await.unwrap(), 25);
    let query = StatsQuery::default();
    let month = StatsRange::new(&query, 0, 30 * day, day).rollup();
    let stats = assemble(&store.usage_stats(&month).await.unwrap(), &month);
    assert_eq!(stats.total.requests, 30);
    assert_eq!(
        stats.total.cost_usd,
        crate::pricing::Nanodollars::new(30_000)
    );
    assert_eq!(stats.by_key["abc"].requests, 30);
    assert_eq!(stats.series[0].stats.requests, 1);
    // Budgets restored at start-up read the rollup too: the month is not forgotten.
    let spend = store
        .spend_of(crate::domain::LimiterKind::ClientKey, "abc", 29 * day, 0)
        .await
        .unwrap();
    assert_eq!(spend.today, crate::pricing::Nanodollars::new(1_000));
    assert_eq!(spend.this_month, crate::pricing::Nanodollars::new(30_000));
    assert_eq!(spend.total, crate::pricing::Nanodollars::new(30_000));
    // The rollup's own retention, in slices.
    assert_eq!(
        store.prune_rollups(10 * day).await.unwrap(),
        10,
        "one row a day"
    );
    let stats = assemble(&store.usage_stats(&month).await.unwrap(), &month);
    assert_eq!(stats.total.requests, 20);
    let spend = store
        .spend_of(crate::domain::LimiterKind::Backend, "bkd_x", 29 * day, 0)
        .await
        .unwrap();
    assert_eq!(spend.this_month, crate::pricing::Nanodollars::new(20_000));
    assert_eq!(
        spend.total,
        crate::pricing::Nanodollars::new(30_000),
        "the lifetime spend outlives both retentions"
    );
}

/// The rows of `usage_lifetime_spend`: (kind, id, nano-dollars), by kind and id.
async fn lifetime_spend(store: &super::SqliteStore) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT kind, id, cost_nanousd FROM usage_lifetime_spend ORDER BY kind, id")
        .fetch_all(&store.pool)
        .await
        .unwrap()
}

/// Every stored batch adds its spend to the lifetime spend of its keys and backends, in the
/// insert's transaction: a batch written again (its records already stored) adds nothing.
#[tokio::test]
async fn lifetime_spend_grows_with_each_stored_batch_only() {
    let (_dir, store) = open().await;
    let priced = |i: i64, key: &str| UsageRecord {
        cost: Some(crate::pricing::Nanodollars::new(250)),
        client_key_id: Some(key.to_owned()),
        ..usage(i)
    };
    let first: Vec<_> = (0..4).map(|i| priced(i, "k1")).collect();
    store.insert_usage(&first).await.unwrap();
    store.insert_usage(&first[2..]).await.unwrap();
    let mixed = [priced(4, "k2"), priced(0, "k1")];
    store.insert_usage(&mixed).await.unwrap();
    assert_eq!(
        lifetime_spend(&store).await,
        [
            ("backend".to_owned(), "bkd_x".to_owned(), 1_250),
            ("client_key".to_owned(), "k1".to_owned(), 1_000),
            ("client_key".to_owned(), "k2".to_owned(), 250),
        ]
    );
    let spend = store
        .spend_of(crate::domain::LimiterKind::ClientKey, "k1", 0, 0)
        .await
        .unwrap();
    assert_eq!(spend.total, crate::pricing::Nanodollars::new(1_000));
}

/// Migration 0012 starts each lifetime spend from what the restore read before it: the larger
/// of the raw records' sum and the rollup's.
#[tokio::test]
async fn the_migration_starts_lifetime_spend_from_records_and_rollup() {
    let (dir, pool) = database_before(12).await;
    let path = dir.path().join("old.db");
    for statement in spend_before_lifetime_sql() {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = super::SqliteStore::open(&path).await.unwrap();
    assert_eq!(lifetime_spend(&store).await, lifetime_after_migration());
}

#[tokio::test]
async fn retention_deletes_only_older_records() {
    let (_dir, store) = open().await;
    let records: Vec<_> = (0..12_000).map(usage).collect();
    store.insert_usage(&records).await.unwrap();
    // Records at 1000..13000 ms; keep those from 11000 on (more than one delete slice goes).
    assert_eq!(store.prune_usage(11_000).await.unwrap(), 10_000);
    assert_eq!(store.count_usage().await.unwrap(), 2_000);
    assert_eq!(store.prune_usage(11_000).await.unwrap(), 0);
}

#[tokio::test]
async fn a_record_stored_twice_is_kept_once() {
    let (_dir, store) = open().await;
    let records: Vec<_> = (0..5).map(usage).collect();
    store.insert_usage(&records).await.unwrap();
    // A journal replay after a crash hands over records the store already committed, mixed
    // with new ones: the batch succeeds and the old ones are not duplicated.
    let replay: Vec<_> = (3..8).map(usage).collect();
    store.insert_usage(&replay).await.unwrap();
    assert_eq!(store.count_usage().await.unwrap(), 8);
}

/// Records stored before migration 0008 are summed into the rollup by the migration itself.
/// A database file (`old.db` in the returned dir) with the migrations before `version` only,
/// as an older poolgate left it.
async fn database_before(version: i64) -> (tempfile::TempDir, sqlx::SqlitePool) {
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("old.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            super::super::MIGRATOR
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    (dir, pool)
}

#[tokio::test]
async fn the_migration_backfills_the_rollup_from_stored_records() {
    // The schema as it was before the rollup.
    let (dir, pool) = database_before(8).await;
    let path = dir.path().join("old.db");
    for i in 0_i64..40 {
        sqlx::query(
            "INSERT INTO usage_records (request_id, ts, client_key_id, endpoint, \
             canonical_model, backend_id, upstream_model, attempts, status, outcome, \
             prompt_tokens, completion_tokens, cached_tokens, latency_ms, ttfb_ms, streamed, \
             tokens_estimated, cost_nanousd) \
             VALUES (?, ?, ?, 'chat.completions', ?, ?, 'up', 1, ?, ?, ?, 5, 2, ?, ?, 0, ?, ?)",
        )
        .bind(format!("req-{i}"))
        .bind(i * 600_000)
        .bind((i % 3 != 0).then_some("abc"))
        .bind(if i % 2 == 0 { "a" } else { "b" })
        .bind((i % 5 != 0).then_some("bkd_x"))
        .bind(if i % 7 == 0 { 502 } else { 200 })
        .bind(match i % 7 {
            0 => "error",
            3 => "cancelled",
            _ => "success",
        })
        .bind(i * 3)
        .bind(i + 10)
        .bind((i % 4 != 0).then_some(i))
        .bind(i % 6 == 0)
        .bind((i % 2 == 0).then_some(i * 1_000))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let store = super::SqliteStore::open(&path).await.unwrap();
    let (raw, rolled) = rollup_and_raw(&store, 6 * HOUR, HOUR).await;
    assert_eq!(
        rolled.total.requests, 36,
        "the records within the six hours"
    );
    assert_eq!(raw, rolled);
}

#[test]
fn batches_are_cut_into_a_few_fixed_sizes() {
    let sizes = |n: usize| {
        let items: Vec<usize> = (0..n).collect();
        let chunks: Vec<&[usize]> = super::fixed_chunks(&items, 128).collect();
        // Every item once, in order.
        assert_eq!(chunks.concat(), items);
        chunks.iter().map(|chunk| chunk.len()).collect::<Vec<_>>()
    };
    assert_eq!(sizes(0), Vec::<usize>::new());
    assert_eq!(sizes(1), [1]);
    assert_eq!(sizes(7), [4, 2, 1]);
    assert_eq!(sizes(512), [128; 4]);
    assert_eq!(sizes(301), [128, 128, 32, 8, 4, 1]);
}

/// A batch that spans several statement sizes, then a replay overlapping it: every record
/// stored once, the rollup counting each once.
#[tokio::test]
async fn a_large_batch_is_stored_once_across_statement_sizes() {
    let (_dir, store) = open().await;
    let records: Vec<_> = (0..301).map(usage).collect();
    store.insert_usage(&records).await.unwrap();
    let replay: Vec<_> = (250..333).map(usage).collect();
    store.insert_usage(&replay).await.unwrap();
    assert_eq!(store.count_usage().await.unwrap(), 333);
    let stored = store
        .list_usage(&UsageFilter {
            limit: Some(1000),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    let mut expected: Vec<_> = (0..333).map(usage).collect();
    expected.reverse();
    assert_eq!(stored.records, expected);
    let (rollup, raw) = rollup_and_raw(&store, 3_600_000, 3_600_000).await;
    assert_eq!(raw.total.requests, 333);
    assert_eq!(rollup, raw);
}

/// The indexes the inserts maintain (0010 dropped `usage_model_ts`, which no query could use;
/// 0012 dropped `usage_key_ts` and `usage_backend_ts`, read only to restore total budgets),
/// and the statistics still read the time range through `usage_ts`, model filter or not.
#[tokio::test]
async fn usage_records_keep_only_the_indexes_queries_use() {
    let (_dir, store) = open().await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage_records' \
         AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert_eq!(indexes, ["usage_request_id", "usage_ts"]);
    let sql = format!("EXPLAIN QUERY PLAN {}", super::STATS_SQL);
    let plan: Vec<String> = sqlx::query(&sql)
        .bind(0_i64)
        .bind(HOUR)
        .bind(HOUR)
        .bind(1_i64)
        .bind(None::<&str>)
        .bind(Some("a"))
        .bind(None::<&str>)
        .fetch_all(&store.pool)
        .await
        .unwrap()
        .iter()
        .map(|row| sqlx::Row::get::<String, _>(row, 3))
        .collect();
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX usage_ts")),
        "{plan:?}"
    );
}

/// Every usage batch is written through the writer's own connection: its `total_changes()` (rows
/// changed by that connection since it opened) counts all the records and rollup rows of three
/// batches, and a connection of the shared pool changed none of them.
#[tokio::test]
async fn usage_batches_go_through_the_writers_own_connection() {
    let (_dir, store) = open().await;
    for batch in 0..3 {
        let records: Vec<_> = (batch * 10..batch * 10 + 10).map(usage).collect();
        store.insert_usage(&records).await.unwrap();
    }
    let rollup_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_rollup_hour")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(rollup_rows > 0);
    let writer_changes = store.usage_writes.total_changes();
    // Each batch inserts its 10 records and upserts its rollup rows (a row updated by a later
    // batch counts once per batch that touched it, so at least the distinct rows).
    assert!(
        writer_changes >= 30 + rollup_rows,
        "writer changed {writer_changes} rows, expected at least {}",
        30 + rollup_rows
    );
    let shared_changes: i64 = sqlx::query_scalar("SELECT total_changes()")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(
        shared_changes < 30,
        "a shared-pool connection changed {shared_changes} rows"
    );
}
