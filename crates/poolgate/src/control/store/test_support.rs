//! Fixtures for the stores' tests (both databases).

use proptest::prelude::*;

use crate::domain::{Outcome, UsageRecord};
use crate::usage::stats::{Aggregate, Stats, StatsSource};

/// A successful request `req-<i>` at `1000 + i` ms, on model `a` (even `i`) or `b`.
pub fn usage(i: i64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        ts_ms: 1_000 + i,
        client_key_id: Some("abc".into()),
        endpoint: "chat.completions".into(),
        canonical_model: Some(if i % 2 == 0 { "a" } else { "b" }.into()),
        backend_id: Some("bkd_x".into()),
        upstream_model: Some("up".into()),
        pool: Some("primary".into()),
        attempts: 1,
        status: 200,
        outcome: Outcome::Success,
        error_kind: None,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        total_tokens: Some(15),
        cached_tokens: Some(u32::try_from(i % 3).unwrap_or(0)),
        latency_ms: 12,
        ttfb_ms: Some(3),
        streamed: false,
        tokens_estimated: i % 4 == 3,
        cost: None,
        cache_write_tokens: None,
    }
}

/// A random record (time within the first minute, maybe no backend or model, every outcome); its
/// request id is `req-0`: give each its own before storing them.
pub fn record_strategy() -> impl Strategy<Value = UsageRecord> {
    (
        0_i64..60_000,
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(prop::sample::select(vec!["m1", "m2"])),
        prop::sample::select(vec![
            (200_u16, Outcome::Success),
            (400, Outcome::Success),
            (502, Outcome::Error),
            (499, Outcome::Cancelled),
            (200, Outcome::StreamError),
        ]),
        0_u64..5_000,
        prop::option::of(0_u64..5_000),
        prop::option::of(0_u32..1_000),
        prop::option::of(prop::sample::select(vec!["key-a", "key-b"])),
    )
        .prop_map(
            |(ts, backend, model, (status, outcome), latency, ttfb, tokens, key)| UsageRecord {
                client_key_id: key.map(str::to_owned),
                cost: tokens.map(|t| crate::pricing::Nanodollars::new(u64::from(t) * 7_000)),
                ts_ms: ts,
                backend_id: backend.map(str::to_owned),
                canonical_model: model.map(str::to_owned),
                status,
                outcome,
                latency_ms: latency,
                ttfb_ms: ttfb,
                prompt_tokens: tokens,
                completion_tokens: tokens.map(|t| t / 2),
                cached_tokens: tokens.map(|t| t / 3),
                ..usage(0)
            },
        )
}

/// Stats without what only the raw records give (percentiles, the source).
pub fn comparable(mut stats: Stats) -> Stats {
    fn clear(aggregate: &mut Aggregate) {
        aggregate.p50_latency_ms = None;
        aggregate.p95_latency_ms = None;
        aggregate.p50_ttfb_ms = None;
    }
    stats.source = StatsSource::Raw;
    clear(&mut stats.total);
    for aggregate in stats
        .by_backend
        .values_mut()
        .chain(stats.by_model.values_mut())
        .chain(stats.by_key.values_mut())
    {
        clear(aggregate);
    }
    for series in std::iter::once(&mut stats.series)
        .chain(stats.series_by_backend.values_mut())
        .chain(stats.series_by_model.values_mut())
        .chain(stats.series_by_key.values_mut())
    {
        for bucket in series {
            clear(&mut bucket.stats);
        }
    }
    stats
}

/// What a poolgate before the lifetime spend had stored, for both stores' migration tests: four
/// usage records (k1 on b1 and b2, none on b1, k2 with no price) and one rollup row of 900 for
/// k1 on b3, standing for older records already pruned. Plain SQL that SQLite and PostgreSQL
/// both run (literals, `false` for the boolean).
pub fn spend_before_lifetime_sql() -> Vec<String> {
    let records = [
        (0, "'k1'", "'b1'", "100"),
        (1, "'k1'", "'b2'", "50"),
        (2, "NULL", "'b1'", "7"),
        (3, "'k2'", "NULL", "NULL"),
    ];
    let mut statements: Vec<String> = records
        .iter()
        .map(|(i, key, backend, cost)| {
            format!(
                "INSERT INTO usage_records (request_id, ts, client_key_id, endpoint, backend_id, \
                 attempts, status, outcome, latency_ms, streamed, cost_nanousd) VALUES \
                 ('req-{i}', {ts}, {key}, 'chat.completions', {backend}, 1, 200, 'success', 5, \
                 false, {cost})",
                ts = i * 1_000
            )
        })
        .collect();
    statements.push(
        "INSERT INTO usage_rollup_hour (bucket_ms, client_key_id, backend_id, canonical_model, \
         upstream_model, requests, cost_nanousd) VALUES (-3600000, 'k1', 'b3', '-', '-', 9, 900)"
            .to_owned(),
    );
    statements
}

/// The lifetime spend the migration starts from [`spend_before_lifetime_sql`]:
/// (kind, id, nano-dollars) by kind and id. k1: the rollup's 900 over the records' 150; k2 spent
/// nothing.
pub fn lifetime_after_migration() -> Vec<(String, String, i64)> {
    [
        ("backend", "b1", 107),
        ("backend", "b2", 50),
        ("backend", "b3", 900),
        ("client_key", "k1", 900),
    ]
    .into_iter()
    .map(|(kind, id, cost)| (kind.to_owned(), id.to_owned(), cost))
    .collect()
}
