//! `/admin/api/pools`: list and create pools, and per-pool health counts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ErrorBody};
use crate::api::json::Json;
use crate::control::{ControlPlane, PoolInput};
use crate::domain::{BackendStatus, Pool};
use crate::state::DataPlane;

/// Body of `POST /admin/api/pools`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    /// Lower is tried first (`primary` = 0, `fallback` = 1).
    pub priority: i64,
    #[serde(default)]
    pub description: String,
}

/// Health counts of one pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolStats {
    pub name: String,
    pub priority: i64,
    pub total: u32,
    pub enabled: u32,
    pub healthy: u32,
    pub cooling: u32,
    pub error: u32,
    pub disabled: u32,
}

/// List pools in priority order.
#[utoipa::path(get, path = "/pools", operation_id = "list_pools", tag = "pools",
    responses((status = 200, body = [Pool]), (status = 401, body = ErrorBody)))]
pub async fn list(State(control): State<ControlPlane>) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(control.pools().await?))
}

/// Create a pool.
#[utoipa::path(post, path = "/pools", operation_id = "create_pool", tag = "pools", request_body = CreatePool,
    responses((status = 201, body = Pool), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(control): State<ControlPlane>,
    Json(input): Json<CreatePool>,
) -> Result<impl IntoResponse, ApiError> {
    let pool = control
        .create_pool(PoolInput {
            name: input.name,
            priority: input.priority,
            description: input.description,
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(pool)))
}

/// Per pool: how many backends are enabled, healthy, cooling, in error.
#[utoipa::path(get, path = "/pools/stats", operation_id = "pool_stats", tag = "pools",
    responses((status = 200, body = [PoolStats]), (status = 401, body = ErrorBody)))]
pub async fn stats(State(data): State<DataPlane>) -> Result<impl IntoResponse, ApiError> {
    let live = data.live();
    let now = Instant::now();
    let stats: Vec<PoolStats> = live
        .pools
        .iter()
        .map(|pool| {
            let mut stats = PoolStats {
                name: pool.name.to_string(),
                priority: pool.priority,
                total: 0,
                enabled: 0,
                healthy: 0,
                cooling: 0,
                error: 0,
                disabled: 0,
            };
            for backend in live.backends.iter().filter(|b| b.record.pool == pool.name) {
                stats.total += 1;
                if backend.record.enabled {
                    stats.enabled += 1;
                }
                match backend.status(now) {
                    BackendStatus::Healthy => stats.healthy += 1,
                    BackendStatus::Cooling => stats.cooling += 1,
                    BackendStatus::Error => stats.error += 1,
                    BackendStatus::Disabled => stats.disabled += 1,
                }
            }
            stats
        })
        .collect();
    Ok(axum::Json(stats))
}
