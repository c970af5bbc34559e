//! The usage half of the SQLite store: batched multi-row inserts, keyset pages, and the
//! statistics computed by SQLite itself — counts and sums with `GROUP BY`, nearest-rank
//! percentiles with window functions — so a stats request never loads the range's rows.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sqlx::Row;

use super::{SqliteStore, BUSY_TIMEOUT};
use crate::control::store::rollup;
use crate::control::store::rows::{group_from_row, usage_page};
use crate::control::store::{StoreError, UsageStore};
use crate::domain::{LimiterKind, UsageRecord};
use crate::pricing::RestoredSpend;
use crate::usage::stats::{GroupStats, StatsRange, StatsSource};
use crate::usage::{UsageFilter, UsagePage};

/// Every group of the statistics in one statement. `base` is the range's records (bucket index
/// clamped to the last bucket, `-` for a missing backend or model, negative values read as 0 /
/// absent); `grouped` repeats each record once per grouping (`dim` 0 total, 1 backend, 2 model,
/// 3 bucket, 4 bucket and backend, 5 bucket and model, 6 client key, 7 bucket and client key); `ranked` numbers the records of each
/// group by latency and by time to first byte. The nearest-rank percentile p of n values is the
/// value ranked `ceil(p * n / 100)`.
const STATS_SQL: &str = "\
WITH base AS (
    SELECT MIN((ts - ?1) / ?3, ?4 - 1) AS b,
           COALESCE(backend_id, '-') AS backend,
           COALESCE(canonical_model, '-') AS model,
           CASE WHEN outcome = 'cancelled' THEN 1 ELSE 0 END AS cancelled,
           CASE WHEN outcome = 'cancelled' THEN 0
                WHEN outcome = 'success' AND status < 400 THEN 0 ELSE 1 END AS failed,
           MAX(COALESCE(prompt_tokens, 0), 0) AS prompt,
           MAX(COALESCE(completion_tokens, 0), 0) AS completion,
           MAX(COALESCE(cached_tokens, 0), 0) AS cached,
           MAX(COALESCE(cost_nanousd, 0), 0) AS cost,
           COALESCE(client_key_id, '-') AS client_key,
           MAX(latency_ms, 0) AS latency,
           CASE WHEN ttfb_ms >= 0 THEN ttfb_ms END AS ttfb
    FROM usage_records
    WHERE ts >= ?1 AND ts < ?2 AND (?5 IS NULL OR backend_id = ?5)
      AND (?6 IS NULL OR canonical_model = ?6) AND (?7 IS NULL OR client_key_id = ?7)
),
grouped AS (
    SELECT 0 AS dim, -1 AS b, '' AS k, cancelled, failed, prompt, completion, cached, cost, latency, ttfb
        FROM base
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
SELECT dim, b, k, COUNT(*) AS requests, SUM(failed) AS errors, SUM(cancelled) AS cancelled,
       SUM(prompt) AS prompt_tokens, SUM(completion) AS completion_tokens,
       SUM(cached) AS cached_tokens,
       SUM(cost) AS cost_nanousd,
       MAX(CASE WHEN latency_rank = (50 * n + 99) / 100 THEN latency END) AS p50_latency,
       MAX(CASE WHEN latency_rank = (95 * n + 99) / 100 THEN latency END) AS p95_latency,
       MAX(CASE WHEN ttfb IS NOT NULL AND ttfb_rank = (50 * ttfb_n + 99) / 100
                THEN ttfb END) AS p50_ttfb,
       SUM(latency) AS latency_sum, SUM(ttfb) AS ttfb_sum, COUNT(ttfb) AS ttfb_count
FROM ranked
GROUP BY dim, b, k";

/// The same groups from the hourly rollup (`range` is whole hours, see `StatsRange::rollup`):
/// sums of sums, no percentiles.
const ROLLUP_STATS_SQL: &str = "\
WITH base AS (
    SELECT MIN((bucket_ms - ?1) / ?3, ?4 - 1) AS b, backend_id AS backend,
           canonical_model AS model, client_key_id AS client_key, requests, errors, cancelled,
           prompt_tokens AS prompt, completion_tokens AS completion, cached_tokens AS cached,
           cost_nanousd AS cost, latency_ms_sum AS latency, ttfb_ms_sum AS ttfb, ttfb_count AS ttfb_n
    FROM usage_rollup_hour
    WHERE bucket_ms >= ?1 AND bucket_ms < ?2 AND (?5 IS NULL OR backend_id = ?5)
      AND (?6 IS NULL OR canonical_model = ?6) AND (?7 IS NULL OR client_key_id = ?7)
),
grouped AS (
    SELECT 0 AS dim, -1 AS b, '' AS k, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 1, -1, backend, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 2, -1, model, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 3, b, '', requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 4, b, backend, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 5, b, model, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 6, -1, client_key, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
    UNION ALL SELECT 7, b, client_key, requests, errors, cancelled, prompt, completion, cached, cost, latency, ttfb, ttfb_n FROM base
)
SELECT dim, b, k, SUM(requests) AS requests, SUM(errors) AS errors, SUM(cancelled) AS cancelled,
       SUM(prompt) AS prompt_tokens, SUM(completion) AS completion_tokens,
       SUM(cached) AS cached_tokens, SUM(cost) AS cost_nanousd,
       NULL AS p50_latency, NULL AS p95_latency, NULL AS p50_ttfb,
       SUM(latency) AS latency_sum, SUM(ttfb) AS ttfb_sum, SUM(ttfb_n) AS ttfb_count
FROM grouped
GROUP BY dim, b, k";

/// Adds one batch's rollup rows (see `store::rollup`).
const ROLLUP_UPSERT_HEAD: &str = "INSERT INTO usage_rollup_hour (bucket_ms, client_key_id, \
    backend_id, canonical_model, upstream_model, requests, errors, cancelled, prompt_tokens, \
    completion_tokens, cached_tokens, cache_write_tokens, cost_nanousd, estimated_requests, \
    latency_ms_sum, ttfb_ms_sum, ttfb_count) ";
const ROLLUP_UPSERT_TAIL: &str = " ON CONFLICT (bucket_ms, client_key_id, backend_id, \
    canonical_model, upstream_model) DO UPDATE SET requests = requests + excluded.requests, \
    errors = errors + excluded.errors, cancelled = cancelled + excluded.cancelled, \
    prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
    completion_tokens = completion_tokens + excluded.completion_tokens, \
    cached_tokens = cached_tokens + excluded.cached_tokens, \
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, \
    cost_nanousd = cost_nanousd + excluded.cost_nanousd, \
    estimated_requests = estimated_requests + excluded.estimated_requests, \
    latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum, \
    ttfb_ms_sum = ttfb_ms_sum + excluded.ttfb_ms_sum, ttfb_count = ttfb_count + excluded.ttfb_count";

/// Adds one batch's spend to the lifetime spend of its client keys and backends (see
/// `store::rollup::lifetime_spend`).
const LIFETIME_SPEND_HEAD: &str = "INSERT INTO usage_lifetime_spend (kind, id, cost_nanousd) ";
const LIFETIME_SPEND_TAIL: &str =
    " ON CONFLICT (kind, id) DO UPDATE SET cost_nanousd = cost_nanousd + excluded.cost_nanousd";

/// The most records one insert statement carries (22 parameters each), and the most rollup
/// rows one upsert carries (17 each). Powers of two: see [`fixed_chunks`].
const INSERT_ROWS: usize = 128;
const UPSERT_ROWS: usize = 64;

const INSERT_HEAD: &str = "INSERT INTO usage_records (request_id, ts, client_key_id, endpoint, \
    canonical_model, backend_id, upstream_model, pool, attempts, status, outcome, error_kind, \
    prompt_tokens, completion_tokens, total_tokens, latency_ms, ttfb_ms, streamed, \
    cached_tokens, tokens_estimated, cost_nanousd, cache_write_tokens) ";
const INSERT_TAIL: &str = " ON CONFLICT (request_id) DO NOTHING";
const INSERT_RETURNING_TAIL: &str = " ON CONFLICT (request_id) DO NOTHING RETURNING request_id, ts";

/// The text of the insert and upsert statements, one per chunk size (index: log2 of the size),
/// written once per process. Few texts means the writer's statement cache holds them all:
/// SQLite parses and plans each once, not once per batch size met.
static INSERT_SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
static INSERT_RETURNING_SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
static UPSERT_SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
static LIFETIME_SPEND_SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn insert_sql(rows: usize) -> String {
    multi_row_sql(INSERT_HEAD, INSERT_COLUMNS, rows, INSERT_TAIL)
}

fn insert_returning_sql(rows: usize) -> String {
    multi_row_sql(INSERT_HEAD, INSERT_COLUMNS, rows, INSERT_RETURNING_TAIL)
}

fn upsert_sql(rows: usize) -> String {
    multi_row_sql(ROLLUP_UPSERT_HEAD, 17, rows, ROLLUP_UPSERT_TAIL)
}

fn lifetime_spend_sql(rows: usize) -> String {
    multi_row_sql(LIFETIME_SPEND_HEAD, 3, rows, LIFETIME_SPEND_TAIL)
}

/// `head VALUES (?, …), (?, …) tail` with `rows` groups of `columns` placeholders.
fn multi_row_sql(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let group = format!("({})", vec!["?"; columns].join(", "));
    format!("{head}VALUES {}{tail}", vec![group; rows].join(", "))
}

/// The statement text for a chunk of `rows` (a power of two, see [`fixed_chunks`]).
fn statement(
    texts: &'static std::sync::OnceLock<Vec<String>>,
    rows: usize,
    build: fn(usize) -> String,
) -> &'static str {
    let texts = texts.get_or_init(|| {
        let max = INSERT_ROWS.max(UPSERT_ROWS);
        (0..=max.ilog2()).map(|power| build(1 << power)).collect()
    });
    &texts[rows.ilog2() as usize]
}

/// `items` in chunks of `max` (a power of two), the rest in decreasing powers of two — so every
/// chunk has one of `log2(max) + 1` sizes (a batch of 512 records: four statements of 128).
fn fixed_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = rest.len().min(max);
        let size = 1 << size.ilog2();
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// The columns of one record in [`INSERT_HEAD`].
const INSERT_COLUMNS: usize = 22;

/// Statements the writer's connection keeps prepared: one per chunk size of the insert, the
/// insert with `RETURNING`, the rollup upsert and the lifetime spend (8 + 8 + 7 + 7).
const PREPARED_STATEMENTS: usize = 32;

/// The usage writer's own SQLite connection (`rusqlite`, on the libsqlite3 sqlx links): a
/// batch of 512 records is ~11,000 bound values, which this binds straight from the records —
/// sqlx copied every string it was lent, grew its argument vectors, and queued each statement
/// to its connection's worker thread and waited for the answer there. The insert runs on the
/// calling thread: `block_in_place` on the multi-thread runtime the control plane runs on (the
/// other tasks move to another worker meanwhile), inline on a current-thread runtime (tests).
#[derive(Clone, Debug)]
pub(super) struct UsageWrites(Arc<Mutex<rusqlite::Connection>>);

impl UsageWrites {
    /// Opens the database the store's pool opened and migrated (WAL mode is the file's), with
    /// the pool's settings: the same busy timeout, `synchronous = NORMAL`.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = rusqlite::Connection::open(path)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
        Ok(Self(Arc::new(Mutex::new(connection))))
    }

    fn write<T>(
        &self,
        write: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let run = || write(&mut self.0.lock());
        match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }
    }

    /// `SELECT total_changes()` on this connection.
    #[cfg(test)]
    pub(super) fn total_changes(&self) -> i64 {
        self.0
            .lock()
            .query_row("SELECT total_changes()", [], |row| row.get(0))
            .unwrap_or(-1)
    }
}

/// Binds values to a prepared statement's parameters in order, from the first.
struct Parameters<'s, 'c> {
    statement: &'s mut rusqlite::CachedStatement<'c>,
    bound: usize,
}

impl<'s, 'c> Parameters<'s, 'c> {
    fn of(statement: &'s mut rusqlite::CachedStatement<'c>) -> Self {
        Self {
            statement,
            bound: 0,
        }
    }

    fn bind(&mut self, value: &dyn rusqlite::ToSql) -> rusqlite::Result<&mut Self> {
        self.bound += 1;
        self.statement.raw_bind_parameter(self.bound, value)?;
        Ok(self)
    }
}

/// Binds the 22 columns of each record of `chunk`, in [`INSERT_HEAD`]'s order.
fn bind_records(
    parameters: &mut Parameters<'_, '_>,
    chunk: &[UsageRecord],
) -> rusqlite::Result<()> {
    for record in chunk {
        parameters
            .bind(&record.request_id.as_str())?
            .bind(&record.ts_ms)?
            .bind(&record.client_key_id.as_deref())?
            .bind(&record.endpoint.as_str())?
            .bind(&record.canonical_model.as_deref())?
            .bind(&record.backend_id.as_deref())?
            .bind(&record.upstream_model.as_deref())?
            .bind(&record.pool.as_deref())?
            .bind(&i64::from(record.attempts))?
            .bind(&i64::from(record.status))?
            .bind(&record.outcome.as_str())?
            .bind(&record.error_kind.as_deref())?
            .bind(&record.prompt_tokens.map(i64::from))?
            .bind(&record.completion_tokens.map(i64::from))?
            .bind(&record.total_tokens.map(i64::from))?
            .bind(&i64::try_from(record.latency_ms).unwrap_or(i64::MAX))?
            .bind(&record.ttfb_ms.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))?
            .bind(&record.streamed)?
            .bind(&record.cached_tokens.map(i64::from))?
            .bind(&record.tokens_estimated)?
            .bind(&record.cost.map(|cost| wide(cost.get())))?
            .bind(&record.cache_write_tokens.map(i64::from))?;
    }
    Ok(())
}

fn wide(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One batch in one transaction: the records (a request id already stored — a batch written
/// again, a journal replay after a crash — is skipped), then the rollup and lifetime spend of
/// the records stored.
fn write_batch(
    connection: &mut rusqlite::Connection,
    records: &[UsageRecord],
) -> Result<(), StoreError> {
    use rusqlite::TransactionBehavior::Immediate;
    let mut tx = connection.transaction_with_behavior(Immediate)?;
    // Multi-row inserts of a few fixed sizes (see `fixed_chunks`). Normally every record is
    // new — the statements' row counts say so — and the rollup counts them all.
    let mut affected = 0;
    for chunk in fixed_chunks(records, INSERT_ROWS) {
        let mut insert = tx.prepare_cached(statement(&INSERT_SQL, chunk.len(), insert_sql))?;
        bind_records(&mut Parameters::of(&mut insert), chunk)?;
        affected += insert.raw_execute()?;
    }
    let stored: Vec<&UsageRecord> = if affected == records.len() {
        records.iter().collect()
    } else {
        // Some were stored already: start over with `RETURNING`, which names the rows
        // inserted — the rollup counts only those.
        tx.rollback()?;
        tx = connection.transaction_with_behavior(Immediate)?;
        let mut inserted = std::collections::HashSet::new();
        for chunk in fixed_chunks(records, INSERT_ROWS) {
            let sql = statement(&INSERT_RETURNING_SQL, chunk.len(), insert_returning_sql);
            let mut insert = tx.prepare_cached(sql)?;
            bind_records(&mut Parameters::of(&mut insert), chunk)?;
            let mut rows = insert.raw_query();
            while let Some(row) = rows.next()? {
                inserted.insert((row.get::<_, String>(0)?, row.get::<_, i64>(1)?));
            }
        }
        rollup::stored(records, inserted)
    };
    let rows = rollup::aggregate(stored);
    for chunk in fixed_chunks(&rows, UPSERT_ROWS) {
        let mut upsert = tx.prepare_cached(statement(&UPSERT_SQL, chunk.len(), upsert_sql))?;
        let mut parameters = Parameters::of(&mut upsert);
        for (key, sums) in chunk {
            parameters
                .bind(&key.bucket_ms)?
                .bind(&key.client_key_id.as_str())?
                .bind(&key.backend_id.as_str())?
                .bind(&key.canonical_model.as_str())?
                .bind(&key.upstream_model.as_str())?
                .bind(&sums.requests)?
                .bind(&sums.errors)?
                .bind(&sums.cancelled)?
                .bind(&sums.prompt_tokens)?
                .bind(&sums.completion_tokens)?
                .bind(&sums.cached_tokens)?
                .bind(&sums.cache_write_tokens)?
                .bind(&sums.cost_nanousd)?
                .bind(&sums.estimated_requests)?
                .bind(&sums.latency_ms_sum)?
                .bind(&sums.ttfb_ms_sum)?
                .bind(&sums.ttfb_count)?;
        }
        upsert.raw_execute()?;
    }
    let spend = rollup::lifetime_spend(&rows);
    for chunk in fixed_chunks(&spend, UPSERT_ROWS) {
        let sql = statement(&LIFETIME_SPEND_SQL, chunk.len(), lifetime_spend_sql);
        let mut add = tx.prepare_cached(sql)?;
        let mut parameters = Parameters::of(&mut add);
        for (kind, id, cost) in chunk {
            parameters.bind(&kind.as_str())?.bind(id)?.bind(cost)?;
        }
        add.raw_execute()?;
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.usage_writes
            .write(|connection| write_batch(connection, records))
    }

    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError> {
        let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 1000));
        // Optional filters are written as `(? IS NULL OR column = ?)` so the SQL stays static.
        let rows = sqlx::query(
            "SELECT seq, request_id, ts, client_key_id, endpoint, canonical_model, backend_id, \
             upstream_model, pool, attempts, status, outcome, error_kind, prompt_tokens, \
             completion_tokens, total_tokens, cached_tokens, latency_ms, ttfb_ms, streamed, \
             tokens_estimated, cost_nanousd, cache_write_tokens FROM usage_records \
             WHERE (?1 IS NULL OR ts >= ?1) AND (?2 IS NULL OR ts < ?2) \
             AND (?3 IS NULL OR backend_id = ?3) AND (?4 IS NULL OR canonical_model = ?4) \
             AND (?5 IS NULL OR client_key_id = ?5) AND (?6 IS NULL OR seq < ?6) \
             AND (?8 IS NULL OR outcome = ?8) AND (?9 IS NULL OR status >= ?9) \
             ORDER BY seq DESC LIMIT ?7",
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
        let row = sqlx::query("SELECT COUNT(*) FROM usage_records")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or_default())
    }

    async fn prepare_usage(&self, _now_ms: i64) -> Result<(), StoreError> {
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
        delete_in_slices(
            &self.pool,
            "DELETE FROM usage_records WHERE seq IN \
             (SELECT seq FROM usage_records WHERE ts < ? LIMIT 5000)",
            before_ms,
        )
        .await
    }

    async fn prune_rollups(&self, before_ms: i64) -> Result<u64, StoreError> {
        delete_in_slices(
            &self.pool,
            "DELETE FROM usage_rollup_hour WHERE rowid IN \
             (SELECT rowid FROM usage_rollup_hour WHERE bucket_ms < ? LIMIT 5000)",
            before_ms,
        )
        .await
    }
}

/// Runs `delete` (a `DELETE` of at most 5,000 rows older than its one parameter) until it
/// deletes fewer: in slices, so the write lock is never held for long. Returns the rows deleted.
async fn delete_in_slices(
    pool: &sqlx::SqlitePool,
    delete: &'static str,
    before_ms: i64,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let result = sqlx::query(delete).bind(before_ms).execute(pool).await?;
        deleted += result.rows_affected();
        if result.rows_affected() < 5000 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests;
