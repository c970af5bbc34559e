//! `/admin/api/usage` (the records, filtered and paginated) and `/admin/api/stats` (counts,
//! tokens, error rate and latency percentiles per backend and model, in time buckets).

use axum::extract::{Query, State};
use axum::response::IntoResponse;

use crate::api::error::{ApiError, ErrorBody};
use crate::control::ControlPlane;
use crate::domain::{now_ms, Outcome};
use crate::usage::stats::{resolve_range, Stats, StatsQuery, StatsRange};
use crate::usage::{UsageFilter, UsagePage};

fn bad_query(error: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::invalid(format!("invalid query string: {}", error.body_text()))
        .with_code("invalid_query")
}

/// Usage records, newest first.
#[utoipa::path(get, path = "/usage", operation_id = "list_usage", tag = "usage", params(UsageFilter),
    responses((status = 200, body = UsagePage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(control): State<ControlPlane>,
    query: Result<Query<UsageFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(filter) = query.map_err(bad_query)?;
    if let Some(outcome) = filter.outcome.as_deref() {
        // A misspelt outcome would match no record: say so instead of answering an empty page.
        if Outcome::parse(outcome).is_none() {
            return Err(ApiError::invalid(format!(
                "unknown outcome `{outcome}`: one of `success`, `error`, `stream_error`, \
                 `cancelled`"
            ))
            .with_param("outcome")
            .with_code("invalid_query"));
        }
    }
    Ok(axum::Json(control.usage_page(&filter).await?))
}

/// Statistics over a time range.
#[utoipa::path(get, path = "/stats", operation_id = "usage_stats", tag = "usage", params(StatsQuery),
    responses((status = 200, body = Stats), (status = 400, body = ErrorBody)))]
pub async fn stats(
    State(control): State<ControlPlane>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let (from, to, bucket_ms) = resolve_range(&query, now_ms()).map_err(|(param, message)| {
        ApiError::invalid(message)
            .with_param(param)
            .with_code("invalid_query")
    })?;
    let range = StatsRange::new(&query, from, to, bucket_ms);
    Ok(axum::Json(control.stats(&range).await?))
}
