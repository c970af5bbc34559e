//! Prices, spend limits and spend sums in PostgreSQL (issue #11); the `ConfigStore` and `UsageStore`
//! impls delegate here.

use sqlx::PgPool;

use crate::control::store::rows::{
    limit_columns, price_columns, price_from_row, restored_from_row, spend_limit_from_row,
};
use crate::control::store::StoreError;
use crate::domain::LimiterKind;
use crate::pricing::{ModelPrice, RestoredSpend, SpendLimitRecord};

pub(super) async fn list_prices(pool: &PgPool) -> Result<Vec<(String, ModelPrice)>, StoreError> {
    let rows = sqlx::query(
        "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok, \
         cache_write_per_mtok FROM prices ORDER BY model",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(price_from_row).collect()
}

pub(super) async fn put_price(
    pool: &PgPool,
    model: &str,
    price: &ModelPrice,
    at_ms: i64,
) -> Result<(), StoreError> {
    let [input, output, cached, write] = price_columns(price);
    sqlx::query(
        "INSERT INTO prices (model, input_per_mtok, output_per_mtok, cached_input_per_mtok, \
         cache_write_per_mtok, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (model) DO UPDATE SET input_per_mtok = excluded.input_per_mtok, \
         output_per_mtok = excluded.output_per_mtok, \
         cached_input_per_mtok = excluded.cached_input_per_mtok, \
         cache_write_per_mtok = excluded.cache_write_per_mtok, updated_at = excluded.updated_at",
    )
    .bind(model)
    .bind(input)
    .bind(output)
    .bind(cached)
    .bind(write)
    .bind(at_ms)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn delete_price(pool: &PgPool, model: &str) -> Result<bool, StoreError> {
    let result = sqlx::query("DELETE FROM prices WHERE model = $1")
        .bind(model)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() > 0)
}

pub(super) async fn list_spend_limits(pool: &PgPool) -> Result<Vec<SpendLimitRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT kind, id, daily_nanousd, monthly_nanousd, total_nanousd FROM spend_limits \
         ORDER BY kind, id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(spend_limit_from_row).collect()
}

pub(super) async fn put_spend_limits(
    pool: &PgPool,
    record: &SpendLimitRecord,
    at_ms: i64,
) -> Result<(), StoreError> {
    if !record.limits.any() {
        sqlx::query("DELETE FROM spend_limits WHERE kind = $1 AND id = $2")
            .bind(record.kind.as_str())
            .bind(&record.id)
            .execute(pool)
            .await?;
        return Ok(());
    }
    let [daily, monthly, total] = limit_columns(&record.limits);
    sqlx::query(
        "INSERT INTO spend_limits (kind, id, daily_nanousd, monthly_nanousd, total_nanousd, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (kind, id) DO UPDATE SET daily_nanousd = excluded.daily_nanousd, \
         monthly_nanousd = excluded.monthly_nanousd, total_nanousd = excluded.total_nanousd, \
         updated_at = excluded.updated_at",
    )
    .bind(record.kind.as_str())
    .bind(&record.id)
    .bind(daily)
    .bind(monthly)
    .bind(total)
    .bind(at_ms)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn spend_of(
    pool: &PgPool,
    kind: LimiterKind,
    id: &str,
    day_start_ms: i64,
    month_start_ms: i64,
) -> Result<RestoredSpend, StoreError> {
    // Two statements rather than a column chosen by text: the SQL stays static.
    // Today and this month from the hourly rollup (the windows start on whole hours; raw records
    // may be past their retention); the total from the lifetime spend the usage writer keeps
    // (`usage_lifetime_spend`, never pruned), or the rollup's sum should it be larger — records
    // an older poolgate writes during a rolling upgrade add to the rollup only.
    let sql = match kind {
        LimiterKind::ClientKey => {
            "SELECT SUM(CASE WHEN bucket_ms >= $1 THEN cost_nanousd END)::bigint AS today, \
             SUM(CASE WHEN bucket_ms >= $2 THEN cost_nanousd END)::bigint AS month, \
             GREATEST(COALESCE(SUM(cost_nanousd), 0), COALESCE((SELECT cost_nanousd \
             FROM usage_lifetime_spend WHERE kind = 'client_key' AND id = $3), 0))::bigint \
             AS total FROM usage_rollup_hour WHERE client_key_id = $3"
        }
        LimiterKind::Backend => {
            "SELECT SUM(CASE WHEN bucket_ms >= $1 THEN cost_nanousd END)::bigint AS today, \
             SUM(CASE WHEN bucket_ms >= $2 THEN cost_nanousd END)::bigint AS month, \
             GREATEST(COALESCE(SUM(cost_nanousd), 0), COALESCE((SELECT cost_nanousd \
             FROM usage_lifetime_spend WHERE kind = 'backend' AND id = $3), 0))::bigint \
             AS total FROM usage_rollup_hour WHERE backend_id = $3"
        }
    };
    let row = sqlx::query(sql)
        .bind(day_start_ms)
        .bind(month_start_ms)
        .bind(id)
        .fetch_one(pool)
        .await?;
    restored_from_row(&row)
}
