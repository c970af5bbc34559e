//! Rows into records, the same for both databases: both stores keep the same columns (times in
//! Unix ms, integers as 64-bit, JSON as text), so one mapping serves both. [`Columns`] is the
//! narrow typed reading of a row that each database's row type provides.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::StoreError;
use crate::domain::{
    AliasRecord, ApiKind, BackendId, BackendRecord, BackendStatus, CanonicalModel, ClientKeyRecord,
    HttpVersion, LimiterKind, LimiterLevel, ModelMappings, Outcome, PersistedHealth, Pool,
    PoolName, ResponseOwnerRecord, Source, UsageRecord,
};
use crate::usage::stats::{Group, GroupStats};
use crate::usage::UsagePage;

/// Typed reads of a row's columns by name.
pub(super) trait Columns {
    fn text(&self, name: &str) -> Result<String, StoreError>;
    fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, name: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, name: &str) -> Result<bool, StoreError>;
    fn opt_flag(&self, name: &str) -> Result<Option<bool>, StoreError>;
    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError>;
}

macro_rules! columns_for {
    ($($row:ty),*) => {$(
        impl Columns for $row {
            fn text(&self, name: &str) -> Result<String, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn int(&self, name: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn flag(&self, name: &str) -> Result<bool, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn opt_flag(&self, name: &str) -> Result<Option<bool>, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
                Ok(self.try_get(name)?)
            }
        }
    )*};
}

columns_for!(SqliteRow, PgRow);

pub(super) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

/// A stored integer as the record's narrower type.
pub(super) fn narrow<T: TryFrom<i64>>(what: &str, value: i64) -> Result<T, StoreError>
where
    T::Error: std::fmt::Display,
{
    T::try_from(value).map_err(|e| corrupt(what, e))
}

fn opt_narrow<T: TryFrom<i64>>(what: &str, value: Option<i64>) -> Result<Option<T>, StoreError>
where
    T::Error: std::fmt::Display,
{
    value.map(|value| narrow(what, value)).transpose()
}

/// The stored `status` column of a backend (derived; the records keep enabled + health).
pub(super) fn status_of(enabled: bool, health: &PersistedHealth, now: i64) -> BackendStatus {
    if !enabled {
        BackendStatus::Disabled
    } else if health.broken {
        BackendStatus::Error
    } else if health.cooldown_until_ms.is_some_and(|until| until > now) {
        BackendStatus::Cooling
    } else {
        BackendStatus::Healthy
    }
}

pub(super) fn pool_from_row(row: &impl Columns) -> Result<Pool, StoreError> {
    Ok(Pool {
        name: PoolName::new(row.text("name")?),
        priority: row.int("priority")?,
        description: row.text("description")?,
    })
}

pub(super) fn backend_from_row(row: &impl Columns) -> Result<BackendRecord, StoreError> {
    let api_text = row.text("api")?;
    let source_text = row.text("source")?;
    let http_version_text = row.text("http_version")?;
    let model_mappings: ModelMappings = serde_json::from_str(&row.text("model_mappings")?)
        .map_err(|e| corrupt("model_mappings", e))?;
    Ok(BackendRecord {
        id: BackendId::new(row.text("id")?),
        name: row.text("name")?,
        label: row.text("label")?,
        api_base_url: row.text("api_base_url")?,
        api_key_sealed: row.text("api_key_sealed")?,
        api_key_mask: row.text("api_key_mask")?,
        api: ApiKind::parse(&api_text).ok_or_else(|| corrupt("api", &api_text))?,
        timeout_seconds: narrow("timeout_seconds", row.int("timeout_seconds")?)?,
        rpm_limit: narrow("rpm_limit", row.int("rpm_limit")?)?,
        weight: narrow("weight", row.int("weight")?)?,
        pool: PoolName::new(row.text("pool")?),
        enabled: row.flag("enabled")?,
        model_mappings,
        source: Source::parse(&source_text).ok_or_else(|| corrupt("source", &source_text))?,
        metadata: serde_json::from_str(&row.text("metadata")?)
            .map_err(|e| corrupt("metadata", e))?,
        health: PersistedHealth {
            cooldown_until_ms: row.opt_int("cooldown_until")?,
            consecutive_429_count: narrow(
                "consecutive_429_count",
                row.int("consecutive_429_count")?,
            )?,
            broken: row.text("status")? == "error",
            last_error: row.opt_text("last_error")?,
        },
        created_at_ms: row.int("created_at")?,
        updated_at_ms: row.int("updated_at")?,
        responses: row.opt_flag("responses")?,
        api_version: row.opt_text("api_version")?,
        tpm_limit: narrow("tpm_limit", row.int("tpm_limit")?)?,
        http_version: HttpVersion::parse(&http_version_text)
            .ok_or_else(|| corrupt("http_version", &http_version_text))?,
    })
}

pub(super) fn alias_from_row(row: &impl Columns) -> Result<AliasRecord, StoreError> {
    let source = row.text("source")?;
    Ok(AliasRecord {
        alias: row.text("alias")?,
        target: CanonicalModel::new(row.text("target")?),
        source: Source::parse(&source).ok_or_else(|| corrupt("source", &source))?,
        created_at_ms: row.int("created_at")?,
        updated_at_ms: row.int("updated_at")?,
    })
}

pub(super) fn response_owner_from_row(
    row: &impl Columns,
) -> Result<ResponseOwnerRecord, StoreError> {
    Ok(ResponseOwnerRecord {
        response_id: row.text("response_id")?,
        backend_id: BackendId::new(row.text("backend_id")?),
        caller: row.text("caller")?,
        created_at_ms: row.int("created_at")?,
        expires_at_ms: row.int("expires_at")?,
    })
}

pub(super) fn client_key_from_row(row: &impl Columns) -> Result<ClientKeyRecord, StoreError> {
    let allowed_models: Vec<CanonicalModel> = serde_json::from_str(&row.text("allowed_models")?)
        .map_err(|e| corrupt("allowed_models", e))?;
    Ok(ClientKeyRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        display_prefix: row.text("display_prefix")?,
        secret_hash: row.bytes("secret_hash")?,
        rpm_limit: narrow("rpm_limit", row.int("rpm_limit")?)?,
        max_parallel_requests: narrow("max_parallel_requests", row.int("max_parallel_requests")?)?,
        allowed_models,
        created_at_ms: row.int("created_at")?,
        revoked_at_ms: row.opt_int("revoked_at")?,
        tpm_limit: narrow("tpm_limit", row.int("tpm_limit")?)?,
    })
}

pub(super) fn limiter_level_from_row(row: &impl Columns) -> Result<LimiterLevel, StoreError> {
    let kind = row.text("kind")?;
    Ok(LimiterLevel {
        kind: LimiterKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        id: row.text("id")?,
        rpm: narrow("rpm", row.int("rpm")?)?,
        level_units: narrow("level_units", row.int("level_units")?)?,
        at_ms: row.int("at_ms")?,
    })
}

pub(super) fn usage_from_row(row: &impl Columns) -> Result<UsageRecord, StoreError> {
    let outcome = row.text("outcome")?;
    Ok(UsageRecord {
        request_id: row.text("request_id")?,
        ts_ms: row.int("ts")?,
        client_key_id: row.opt_text("client_key_id")?,
        endpoint: row.text("endpoint")?,
        canonical_model: row.opt_text("canonical_model")?,
        backend_id: row.opt_text("backend_id")?,
        upstream_model: row.opt_text("upstream_model")?,
        pool: row.opt_text("pool")?,
        attempts: narrow("attempts", row.int("attempts")?)?,
        status: narrow("status", row.int("status")?)?,
        outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt("outcome", &outcome))?,
        error_kind: row.opt_text("error_kind")?,
        prompt_tokens: opt_narrow("prompt_tokens", row.opt_int("prompt_tokens")?)?,
        completion_tokens: opt_narrow("completion_tokens", row.opt_int("completion_tokens")?)?,
        total_tokens: opt_narrow("total_tokens", row.opt_int("total_tokens")?)?,
        cached_tokens: opt_narrow("cached_tokens", row.opt_int("cached_tokens")?)?,
        latency_ms: narrow("latency_ms", row.int("latency_ms")?)?,
        ttfb_ms: opt_narrow("ttfb_ms", row.opt_int("ttfb_ms")?)?,
        streamed: row.flag("streamed")?,
        tokens_estimated: row.flag("tokens_estimated")?,
        cost: opt_narrow::<u64>("cost_nanousd", row.opt_int("cost_nanousd")?)?
            .map(crate::pricing::Nanodollars::new),
        cache_write_tokens: opt_narrow("cache_write_tokens", row.opt_int("cache_write_tokens")?)?,
    })
}

/// One page of a `list_usage` query that asked for `limit + 1` rows, newest first: the extra
/// row only says there is a next page (its cursor is the last kept row's `seq`).
pub(super) fn usage_page(rows: &[impl Columns], limit: i64) -> Result<UsagePage, StoreError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > limit;
    let page = &rows[..rows.len().min(limit)];
    let records = page
        .iter()
        .map(usage_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match page.last() {
        Some(row) if has_more => Some(row.int("seq")?),
        _ => None,
    };
    Ok(UsagePage {
        records,
        next_cursor,
    })
}

/// One group of the statistics query (`dim`, `b`, `k` and the aggregates; see the SQLite
/// store's `STATS_SQL`).
pub(super) fn group_from_row(row: &impl Columns) -> Result<GroupStats, StoreError> {
    let bucket = || narrow::<usize>("bucket", row.int("b")?);
    let key = || row.text("k");
    let group = match row.int("dim")? {
        0 => Group::Total,
        1 => Group::Backend(key()?),
        2 => Group::Model(key()?),
        3 => Group::Bucket(bucket()?),
        4 => Group::BucketBackend(bucket()?, key()?),
        5 => Group::BucketModel(bucket()?, key()?),
        6 => Group::Key(key()?),
        7 => Group::BucketKey(bucket()?, key()?),
        other => return Err(corrupt("stats dimension", other)),
    };
    let count = |name: &str| -> Result<u64, StoreError> {
        Ok(row
            .opt_int(name)?
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0))
    };
    let value = |name: &str| -> Result<Option<u64>, StoreError> {
        Ok(row.opt_int(name)?.and_then(|v| u64::try_from(v).ok()))
    };
    Ok(GroupStats {
        group,
        requests: count("requests")?,
        errors: count("errors")?,
        cancelled: count("cancelled")?,
        prompt_tokens: count("prompt_tokens")?,
        completion_tokens: count("completion_tokens")?,
        cached_tokens: count("cached_tokens")?,
        cost_nanousd: count("cost_nanousd")?,
        p50_latency_ms: value("p50_latency")?,
        p95_latency_ms: value("p95_latency")?,
        p50_ttfb_ms: value("p50_ttfb")?,
        latency_ms_sum: count("latency_sum")?,
        ttfb_ms_sum: count("ttfb_sum")?,
        ttfb_count: count("ttfb_count")?,
    })
}

// === prices and spend limits (issue #11) ===

/// An admin-API price row: thousandths of a dollar per million tokens (= nano-dollars per token).
pub(super) fn price_from_row(
    row: &impl Columns,
) -> Result<(String, crate::pricing::ModelPrice), StoreError> {
    use crate::pricing::PricePerToken;
    let price = |name: &str| -> Result<PricePerToken, StoreError> {
        Ok(PricePerToken::from_nanodollars(narrow(
            name,
            row.int(name)?,
        )?))
    };
    let opt_price = |name: &str| -> Result<Option<PricePerToken>, StoreError> {
        Ok(opt_narrow(name, row.opt_int(name)?)?.map(PricePerToken::from_nanodollars))
    };
    Ok((
        row.text("model")?,
        crate::pricing::ModelPrice {
            input: price("input_per_mtok")?,
            output: price("output_per_mtok")?,
            cached_input: opt_price("cached_input_per_mtok")?,
            cache_write: opt_price("cache_write_per_mtok")?,
        },
    ))
}

/// A price as the four column values (SQL `INTEGER`).
pub(super) fn price_columns(price: &crate::pricing::ModelPrice) -> [Option<i64>; 4] {
    let wide = |p: crate::pricing::PricePerToken| i64::try_from(p.nanodollars()).ok();
    [
        wide(price.input),
        wide(price.output),
        price.cached_input.and_then(wide),
        price.cache_write.and_then(wide),
    ]
}

pub(super) fn spend_limit_from_row(
    row: &impl Columns,
) -> Result<crate::pricing::SpendLimitRecord, StoreError> {
    use crate::pricing::Nanodollars;
    let kind = row.text("kind")?;
    let amount = |name: &str| -> Result<Option<Nanodollars>, StoreError> {
        Ok(opt_narrow(name, row.opt_int(name)?)?.map(Nanodollars::new))
    };
    Ok(crate::pricing::SpendLimitRecord {
        kind: LimiterKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        id: row.text("id")?,
        limits: crate::pricing::BudgetLimits {
            daily: amount("daily_nanousd")?,
            monthly: amount("monthly_nanousd")?,
            total: amount("total_nanousd")?,
        },
    })
}

/// Limits as the three column values (`None` = no limit).
pub(super) fn limit_columns(limits: &crate::pricing::BudgetLimits) -> [Option<i64>; 3] {
    let wide = |n: crate::pricing::Nanodollars| i64::try_from(n.get()).ok();
    [
        limits.daily.and_then(wide),
        limits.monthly.and_then(wide),
        limits.total.and_then(wide),
    ]
}

/// The sums of a spend query (`today`, `month`, `total`; NULL for no rows).
pub(super) fn restored_from_row(
    row: &impl Columns,
) -> Result<crate::pricing::RestoredSpend, StoreError> {
    use crate::pricing::Nanodollars;
    let sum = |name: &str| -> Result<Nanodollars, StoreError> {
        Ok(Nanodollars::new(
            row.opt_int(name)?
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0),
        ))
    };
    Ok(crate::pricing::RestoredSpend {
        today: sum("today")?,
        this_month: sum("month")?,
        total: sum("total")?,
    })
}
