//! `/admin/api/usage` (the records, filtered and paginated) and `/admin/api/stats` (counts,
//! tokens, error rate and latency percentiles per backend and model, in time buckets).

use axum::extract::{Query, State};
use axum::response::IntoResponse;

use crate::api::error::{ApiError, ErrorBody};
use crate::domain::now_ms;
use crate::state::AppState;
use crate::store::{SampleQuery, UsageFilter, UsagePage};
use crate::usage::stats::{compute, resolve_range, Stats, StatsQuery};

fn bad_query(error: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::invalid(format!("invalid query string: {}", error.body_text()))
        .with_code("invalid_query")
}

/// Usage records, newest first.
#[utoipa::path(get, path = "/usage", tag = "usage", params(UsageFilter),
    responses((status = 200, body = UsagePage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<UsageFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(filter) = query.map_err(bad_query)?;
    Ok(axum::Json(state.store.list_usage(&filter).await?))
}

/// Statistics over a time range.
#[utoipa::path(get, path = "/stats", tag = "usage", params(StatsQuery),
    responses((status = 200, body = Stats), (status = 400, body = ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let (from, to, bucket_ms) = resolve_range(&query, now_ms()).map_err(|(param, message)| {
        ApiError::invalid(message)
            .with_param(param)
            .with_code("invalid_query")
    })?;
    let samples = state
        .store
        .usage_samples(&SampleQuery {
            from_ms: from,
            to_ms: to,
            backend_id: query.backend_id.as_deref(),
            model: query.model.as_deref(),
            client_key_id: query.client_key_id.as_deref(),
        })
        .await?;
    Ok(axum::Json(compute(&samples, from, to, bucket_ms)))
}
