//! The usage half of the PostgreSQL store: one `INSERT … SELECT FROM UNNEST(arrays)` per batch
//! with `ON CONFLICT (ts, request_id) DO NOTHING` (a batch written again never counts twice), a
//! table partitioned by UTC day (partitions made ahead of time, old ones dropped whole for
//! retention), keyset pages, and the statistics computed by PostgreSQL with the same SQL shape
//! as SQLite's: counts and sums with `GROUP BY`, nearest-rank percentiles with window functions.

use async_trait::async_trait;

use super::PgStore;
use crate::control::store::rollup;
use crate::control::store::rows::{group_from_row, usage_page};
use crate::control::store::{StoreError, UsageStore};
use crate::domain::{LimiterKind, UsageRecord};
use crate::pricing::RestoredSpend;
use crate::usage::stats::{GroupStats, StatsRange, StatsSource};
use crate::usage::{UsageFilter, UsagePage};

/// Day partitions kept ready: today and the next two days.
const DAYS_AHEAD: i32 = 3;

const INSERT_SQL: &str = "\
INSERT INTO usage_records (request_id, ts, client_key_id, endpoint, canonical_model, backend_id,
    upstream_model, pool, attempts, status, outcome, error_kind, prompt_tokens, completion_tokens,
    total_tokens, latency_ms, ttfb_ms, streamed, cached_tokens, tokens_estimated, cost_nanousd,
    cache_write_tokens)
SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::int8[], $10::int8[], $11::text[], $12::text[], $13::int8[],
    $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::bool[], $19::int8[],
    $20::bool[], $21::int8[], $22::int8[])
ON CONFLICT (ts, request_id) DO NOTHING
RETURNING request_id, ts";

/// Adds one batch's rollup rows (see `store::rollup`), in the insert's transaction.
const ROLLUP_UPSERT_SQL: &str = "\
INSERT INTO usage_rollup_hour AS r (bucket_ms, client_key_id, backend_id, canonical_model,
    upstream_model, requests, errors, cancelled, prompt_tokens, completion_tokens, cached_tokens,
    cache_write_tokens, cost_nanousd, estimated_requests, latency_ms_sum, ttfb_ms_sum, ttfb_count)
SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
    $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[],
    $14::int8[], $15::int8[], $16::int8[], $17::int8[])
ON CONFLICT (bucket_ms, client_key_id, backend_id, canonical_model, upstream_model) DO UPDATE SET
    requests = r.requests + excluded.requests, errors = r.errors + excluded.errors,
    cancelled = r.cancelled + excluded.cancelled,
    prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = r.completion_tokens + excluded.completion_tokens,
    cached_tokens = r.cached_tokens + excluded.cached_tokens,
    cache_write_tokens = r.cache_write_tokens + excluded.cache_write_tokens,
    cost_nanousd = r.cost_nanousd + excluded.cost_nanousd,
    estimated_requests = r.estimated_requests + excluded.estimated_requests,
    latency_ms_sum = r.latency_ms_sum + excluded.latency_ms_sum,
    ttfb_ms_sum = r.ttfb_ms_sum + excluded.ttfb_ms_sum,
    ttfb_count = r.ttfb_count + excluded.ttfb_count";

/// Adds one batch's spend to the lifetime spend of its client keys and backends (see
/// `store::rollup::lifetime_spend`), in the insert's transaction.
const LIFETIME_SPEND_SQL: &str = "\
INSERT INTO usage_lifetime_spend AS t (kind, id, cost_nanousd)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[])
ON CONFLICT (kind, id) DO UPDATE SET cost_nanousd = t.cost_nanousd + excluded.cost_nanousd";

/// See the SQLite store's `ROLLUP_STATS_SQL`.
const ROLLUP_STATS_SQL: &str = "\
WITH base AS (
    SELECT LEAST((bucket_ms - $1) / $3, $4 - 1) AS b, backend_id AS backend,
           canonical_model AS model, client_key_id AS client_key, requests, errors, cancelled,
           prompt_tokens AS prompt, completion_tokens AS completion, cached_tokens AS cached,
           cost_nanousd AS cost, latency_ms_sum AS latency, ttfb_ms_sum AS ttfb, ttfb_count AS ttfb_n
    FROM usage_rollup_hour
    WHERE bucket_ms >= $1 AND bucket_ms < $2 AND ($5::text IS NULL OR backend_id = $5)
      AND ($6::text IS NULL OR canonical_model = $6) AND ($7::text IS NULL OR client_key_id = $7)
),
grouped AS (
    SELECT 0::bigint AS dim, (-1)::bigint AS b, ''::text AS k, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 1, -1, backend, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 2, -1, model, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 3, b, '', requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 4, b, backend, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 5, b, model, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 6, -1, client_key, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 7, b, client_key, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
)
SELECT dim, b, k, SUM(requests)::bigint AS requests, SUM(errors)::bigint AS errors,
       SUM(cancelled)::bigint AS cancelled, SUM(prompt)::bigint AS prompt_tokens,
       SUM(completion)::bigint AS completion_tokens, SUM(cached)::bigint AS cached_tokens,
       SUM(cost)::bigint AS cost_nanousd,
       NULL::bigint AS p50_latency, NULL::bigint AS p95_latency, NULL::bigint AS p50_ttfb,
       SUM(latency)::bigint AS latency_sum, SUM(ttfb)::bigint AS ttfb_sum,
       SUM(ttfb_n)::bigint AS ttfb_count
FROM grouped
GROUP BY dim, b, k";

/// See the SQLite store's `STATS_SQL` for what each part computes; only the dialect differs.
const STATS_SQL: &str = "\
WITH base AS (
    SELECT LEAST((ts - $1) / $3, $4 - 1) AS b,
           COALESCE(backend_id, '-') AS backend,
           COALESCE(canonical_model, '-') AS model,
           CASE WHEN outcome = 'cancelled' THEN 1 ELSE 0 END AS cancelled,
           CASE WHEN outcome = 'cancelled' THEN 0
                WHEN outcome = 'success' AND status < 400 THEN 0 ELSE 1 END AS failed,
           GREATEST(COALESCE(prompt_tokens, 0), 0) AS prompt,
           GREATEST(COALESCE(completion_tokens, 0), 0) AS completion,
           GREATEST(COALESCE(cached_tokens, 0), 0) AS cached,
           GREATEST(COALESCE(cost_nanousd, 0), 0) AS cost,
           COALESCE(client_key_id, '-') AS client_key,
           GREATEST(latency_ms, 0) AS latency,
           CASE WHEN ttfb_ms >= 0 THEN ttfb_ms END AS ttfb
    FROM usage_records
    WHERE ts >= $1 AND ts < $2 AND ($5::text IS NULL OR backend_id = $5)
      AND ($6::text IS NULL OR canonical_model = $6) AND ($7::text IS NULL OR client_key_id = $7)
),
grouped AS (
    SELECT 0::bigint AS dim, (-1)::bigint AS b, ''::text AS k, cancelled, failed, prompt,
           completion, cached, cost, latency, ttfb FROM base
    UNION ALL SELECT 1, -1, backend, cancelled, failed, prompt, completion, cached, cost, latency, ttfb
        FROM base
    UNION ALL SELECT 2, -1, model, cancelled, failed, prompt, completion, cached, cost, latency, ttfb
        FROM base
    UNION ALL SELECT 3, b, '', cancelled, failed, prompt, completion, cached, cost, latency, ttfb FROM base
    UNION ALL SELECT 4, b, backend, cancelled, failed, prompt, completion, cached, cost, latency, ttfb
        FROM base
    UNION ALL SELECT 5, b, model, cancelled, failed, prompt, completion, cached, cost, latency, ttfb
        FROM base
    UNION ALL SELECT 6, -1, client_key, cancelled, failed, prompt, completion, cached, cost, latency,
        ttfb FROM base
    UNION ALL SELECT 7, b, client_key, cancelled, failed, prompt, completion, cached, cost, latency,
        ttfb FROM base
),
ranked AS (
    SELECT *,
           ROW_NUMBER() OVER (PARTITION BY dim, b, k ORDER BY latency) AS latency_rank,
           COUNT(*) OVER (PARTITION BY dim, b, k) AS n,
           ROW_NUMBER() OVER (PARTITION BY dim, b, k, ttfb IS NULL ORDER BY ttfb) AS ttfb_rank,
           COUNT(ttfb) OVER (PARTITION BY dim, b, k) AS ttfb_n
    FROM grouped
)
SELECT dim, b, k, COUNT(*) AS requests, SUM(failed)::bigint AS errors,
       SUM(cancelled)::bigint AS cancelled, SUM(prompt)::bigint AS prompt_tokens,
       SUM(completion)::bigint AS completion_tokens, SUM(cached)::bigint AS cached_tokens,
       SUM(cost)::bigint AS cost_nanousd,
       MAX(CASE WHEN latency_rank = (50 * n + 99) / 100 THEN latency END) AS p50_latency,
       MAX(CASE WHEN latency_rank = (95 * n + 99) / 100 THEN latency END) AS p95_latency,
       MAX(CASE WHEN ttfb IS NOT NULL AND ttfb_rank = (50 * ttfb_n + 99) / 100
                THEN ttfb END) AS p50_ttfb,
       SUM(latency)::bigint AS latency_sum, SUM(ttfb)::bigint AS ttfb_sum, COUNT(ttfb) AS ttfb_count
FROM ranked
GROUP BY dim, b, k";

fn wide(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[async_trait]
impl UsageStore for PgStore {
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        macro_rules! column {
            ($map:expr) => {
                records.iter().map($map).collect::<Vec<_>>()
            };
        }
        let mut tx = self.pool.begin().await?;
        let inserted: Vec<(String, i64)> = sqlx::query_as(INSERT_SQL)
            .bind(column!(|r| r.request_id.clone()))
            .bind(column!(|r| r.ts_ms))
            .bind(column!(|r| r.client_key_id.clone()))
            .bind(column!(|r| r.endpoint.clone()))
            .bind(column!(|r| r.canonical_model.clone()))
            .bind(column!(|r| r.backend_id.clone()))
            .bind(column!(|r| r.upstream_model.clone()))
            .bind(column!(|r| r.pool.clone()))
            .bind(column!(|r| i64::from(r.attempts)))
            .bind(column!(|r| i64::from(r.status)))
            .bind(column!(|r| r.outcome.as_str().to_owned()))
            .bind(column!(|r| r.error_kind.clone()))
            .bind(column!(|r| r.prompt_tokens.map(i64::from)))
            .bind(column!(|r| r.completion_tokens.map(i64::from)))
            .bind(column!(|r| r.total_tokens.map(i64::from)))
            .bind(column!(|r| wide(r.latency_ms)))
            .bind(column!(|r| r.ttfb_ms.map(wide)))
            .bind(column!(|r| r.streamed))
            .bind(column!(|r| r.cached_tokens.map(i64::from)))
            .bind(column!(|r| r.tokens_estimated))
            .bind(column!(|r| r.cost.map(|cost| wide(cost.get()))))
            .bind(column!(|r| r.cache_write_tokens.map(i64::from)))
            .fetch_all(&mut *tx)
            .await?;
        // Only the rows inserted count in the rollup (a batch written again adds nothing).
        let rows = rollup::aggregate(rollup::stored(records, inserted.into_iter().collect()));
        if !rows.is_empty() {
            macro_rules! sums {
                ($map:expr) => {
                    rows.iter().map($map).collect::<Vec<_>>()
                };
            }
            sqlx::query(ROLLUP_UPSERT_SQL)
                .bind(sums!(|(k, _)| k.bucket_ms))
                .bind(sums!(|(k, _)| k.client_key_id.clone()))
                .bind(sums!(|(k, _)| k.backend_id.clone()))
                .bind(sums!(|(k, _)| k.canonical_model.clone()))
                .bind(sums!(|(k, _)| k.upstream_model.clone()))
                .bind(sums!(|(_, s)| s.requests))
                .bind(sums!(|(_, s)| s.errors))
                .bind(sums!(|(_, s)| s.cancelled))
                .bind(sums!(|(_, s)| s.prompt_tokens))
                .bind(sums!(|(_, s)| s.completion_tokens))
                .bind(sums!(|(_, s)| s.cached_tokens))
                .bind(sums!(|(_, s)| s.cache_write_tokens))
                .bind(sums!(|(_, s)| s.cost_nanousd))
                .bind(sums!(|(_, s)| s.estimated_requests))
                .bind(sums!(|(_, s)| s.latency_ms_sum))
                .bind(sums!(|(_, s)| s.ttfb_ms_sum))
                .bind(sums!(|(_, s)| s.ttfb_count))
                .execute(&mut *tx)
                .await?;
        }
        let spend = rollup::lifetime_spend(&rows);
        if !spend.is_empty() {
            sqlx::query(LIFETIME_SPEND_SQL)
                .bind(
                    spend
                        .iter()
                        .map(|(kind, ..)| kind.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(spend.iter().map(|(_, id, _)| *id).collect::<Vec<_>>())
                .bind(spend.iter().map(|(.., cost)| *cost).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError> {
        let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 1000));
        let rows = sqlx::query(
            "SELECT seq, request_id, ts, client_key_id, endpoint, canonical_model, backend_id, \
             upstream_model, pool, attempts, status, outcome, error_kind, prompt_tokens, \
             completion_tokens, total_tokens, cached_tokens, latency_ms, ttfb_ms, streamed, \
             tokens_estimated, cost_nanousd, cache_write_tokens FROM usage_records \
             WHERE ($1::bigint IS NULL OR ts >= $1) AND ($2::bigint IS NULL OR ts < $2) \
             AND ($3::text IS NULL OR backend_id = $3) \
             AND ($4::text IS NULL OR canonical_model = $4) \
             AND ($5::text IS NULL OR client_key_id = $5) AND ($6::bigint IS NULL OR seq < $6) \
             AND ($8::text IS NULL OR outcome = $8) AND ($9::bigint IS NULL OR status >= $9) \
             ORDER BY seq DESC LIMIT $7",
        )
        .bind(filter.from_ms)
        .bind(filter.to_ms)
        .bind(&filter.backend_id)
        .bind(&filter.model)
        .bind(&filter.client_key_id)
        .bind(filter.before)
        .bind(limit + 1)
        .bind(&filter.outcome)
        .bind(filter.status_min.map(i64::from))
        .fetch_all(&self.pool)
        .await?;
        usage_page(&rows, limit)
    }

    async fn usage_stats(&self, range: &StatsRange<'_>) -> Result<Vec<GroupStats>, StoreError> {
        let sql = match range.source {
            StatsSource::Raw => STATS_SQL,
            StatsSource::Rollup => ROLLUP_STATS_SQL,
        };
        let rows = sqlx::query(sql)
            .bind(range.from_ms)
            .bind(range.to_ms)
            .bind(range.bucket_ms)
            .bind(range.bucket_count)
            .bind(range.backend_id)
            .bind(range.model)
            .bind(range.client_key_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(group_from_row).collect()
    }

    async fn count_usage(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn prepare_usage(&self, now_ms: i64) -> Result<(), StoreError> {
        let created: i32 = sqlx::query_scalar("SELECT poolgate_ensure_usage_partitions($1, $2)")
            .bind(now_ms)
            .bind(DAYS_AHEAD)
            .fetch_one(&self.pool)
            .await?;
        if created > 0 {
            tracing::info!(created, "usage day partitions created");
        }
        Ok(())
    }

    async fn spend_of(
        &self,
        kind: LimiterKind,
        id: &str,
        day_start_ms: i64,
        month_start_ms: i64,
    ) -> Result<RestoredSpend, StoreError> {
        super::money::spend_of(&self.pool, kind, id, day_start_ms, month_start_ms).await
    }

    async fn prune_usage(&self, before_ms: i64) -> Result<u64, StoreError> {
        let dropped: i32 = sqlx::query_scalar("SELECT poolgate_drop_usage_partitions($1)")
            .bind(before_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(dropped).unwrap_or(0))
    }

    async fn prune_rollups(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        // In slices of 5 000 rows, so no statement holds its locks for long.
        loop {
            let result = sqlx::query(
                "DELETE FROM usage_rollup_hour WHERE ctid IN \
                 (SELECT ctid FROM usage_rollup_hour WHERE bucket_ms < $1 LIMIT 5000)",
            )
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
            deleted += result.rows_affected();
            if result.rows_affected() < 5000 {
                return Ok(deleted);
            }
        }
    }
}
