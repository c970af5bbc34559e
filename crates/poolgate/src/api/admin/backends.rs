//! `/admin/api/backends`: create, list, read, change, delete upstream backends, and reset a
//! backend's cooldown. Writes commit to the store first, then the live snapshot is rebuilt.
//! The upstream key is write-only: responses show a mask.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ErrorBody};
use crate::api::json::Json;
use crate::crypto::mask_secret;
use crate::domain::{
    format_ms, normalize_base_url, now_ms, validate_api_key, validate_mappings, validate_metadata,
    validate_model_name, validate_name, validate_rpm, validate_timeout, validate_weight, ApiKind,
    BackendId, BackendRecord, BackendStatus, CanonicalModel, Invalid, ModelMapping, ModelMappings,
    PersistedHealth, PoolName, Source, UpstreamModel,
};
use crate::routing::LiveBackend;
use crate::runtime::ms_from_instant;
use crate::state::AppState;

/// A backend as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendView {
    pub id: String,
    pub name: String,
    pub label: String,
    pub api_base_url: String,
    /// A mask of the upstream key, e.g. `sk-…abcd`; the key itself is never returned.
    pub api_key: String,
    pub api: ApiKind,
    pub timeout_seconds: u32,
    /// Requests per minute; 0 = unlimited.
    pub rpm_limit: u32,
    pub weight: u32,
    pub pool: String,
    pub enabled: bool,
    pub status: BackendStatus,
    pub model_mappings: BTreeMap<String, ModelMapping>,
    pub source: Source,
    /// RFC 3339, while cooling.
    pub cooldown_until: Option<String>,
    pub cooldown_remaining_ms: Option<u64>,
    pub consecutive_429_count: u32,
    pub last_error: Option<String>,
    pub in_flight: u32,
    pub metadata: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

/// Builds the view from the stored record and, when present, the live counters.
pub fn view(record: &BackendRecord, live: Option<&LiveBackend>) -> BackendView {
    let now = Instant::now();
    let (status, until_ms, remaining, count, last_error, in_flight) = match live {
        Some(backend) => {
            let snapshot = backend.runtime.snapshot(now);
            let until = snapshot.cooldown_until.filter(|until| *until > now);
            (
                backend.status(now),
                until.map(|u| ms_from_instant(u, now)),
                until.map(|u| {
                    u64::try_from(u.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
                }),
                snapshot.consecutive_429,
                backend.unreadable.clone().or(snapshot.last_error),
                snapshot.in_flight,
            )
        }
        None => (
            if record.enabled {
                BackendStatus::Healthy
            } else {
                BackendStatus::Disabled
            },
            record.health.cooldown_until_ms,
            None,
            record.health.consecutive_429_count,
            record.health.last_error.clone(),
            0,
        ),
    };
    BackendView {
        id: record.id.to_string(),
        name: record.name.clone(),
        label: record.label.clone(),
        api_base_url: record.api_base_url.clone(),
        api_key: record.api_key_mask.clone(),
        api: record.api,
        timeout_seconds: record.timeout_seconds,
        rpm_limit: record.rpm_limit,
        weight: record.weight,
        pool: record.pool.to_string(),
        enabled: record.enabled,
        status,
        model_mappings: record
            .model_mappings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        source: record.source,
        cooldown_until: until_ms.map(format_ms),
        cooldown_remaining_ms: remaining,
        consecutive_429_count: count,
        last_error,
        in_flight,
        metadata: record.metadata.clone(),
        created_at: format_ms(record.created_at_ms),
        updated_at: format_ms(record.updated_at_ms),
    }
}

/// A model mapping as sent by clients: `"gpt-4o"` or `{"upstream_model": "gpt-4o"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MappingInput {
    Short(String),
    Full(ModelMapping),
}

/// Body of `POST /admin/api/backends`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBackend {
    /// Unique; letters, digits, `-`, `_`, `.`.
    pub name: String,
    pub label: Option<String>,
    /// OpenAI-compatible: including `/v1` (e.g. `https://api.openai.com/v1`).
    pub api_base_url: String,
    /// Write-only.
    pub api_key: String,
    /// `openai` (default) or `anthropic`.
    pub api: Option<ApiKind>,
    /// Time to first byte, 1..=3600 (default 60).
    pub timeout_seconds: Option<i64>,
    /// 0 = unlimited (default).
    pub rpm_limit: Option<i64>,
    /// 1..=100 (default 1).
    pub weight: Option<i64>,
    /// Default `primary`.
    pub pool: Option<String>,
    pub enabled: Option<bool>,
    #[schema(value_type = Object)]
    pub model_mappings: Option<BTreeMap<String, MappingInput>>,
    #[schema(value_type = Object)]
    pub metadata: Option<serde_json::Value>,
}

/// Body of `PATCH /admin/api/backends/{id}`: every field optional; absent = unchanged.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBackend {
    pub name: Option<String>,
    pub label: Option<String>,
    pub api_base_url: Option<String>,
    /// Write-only; absent keeps the current key.
    pub api_key: Option<String>,
    pub api: Option<ApiKind>,
    pub timeout_seconds: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub weight: Option<i64>,
    pub pool: Option<String>,
    pub enabled: Option<bool>,
    /// Replaces the whole mapping table.
    #[schema(value_type = Object)]
    pub model_mappings: Option<BTreeMap<String, MappingInput>>,
    #[schema(value_type = Object)]
    pub metadata: Option<serde_json::Value>,
}

fn mappings_from(input: BTreeMap<String, MappingInput>) -> Result<ModelMappings, Invalid> {
    let mut mappings = ModelMappings::new();
    for (canonical, mapping) in input {
        validate_model_name(&format!("model_mappings.{canonical}"), &canonical)?;
        let mapping = match mapping {
            MappingInput::Short(upstream) => ModelMapping {
                upstream_model: UpstreamModel::new(upstream),
            },
            MappingInput::Full(mapping) => mapping,
        };
        mappings.insert(CanonicalModel::new(canonical), mapping);
    }
    validate_mappings("model_mappings", &mappings)?;
    Ok(mappings)
}

async fn check_pool(state: &AppState, pool: &str) -> Result<PoolName, ApiError> {
    validate_name("pool", pool)?;
    let name = PoolName::new(pool);
    if state.stores.config.find_pool(&name).await?.is_none() {
        return Err(ApiError::invalid(format!(
            "`pool`: pool `{pool}` does not exist (create it with POST /admin/api/pools)"
        ))
        .with_param("pool")
        .with_code("unknown_pool"));
    }
    Ok(name)
}

fn seal(state: &AppState, id: &BackendId, key: &str) -> Result<(String, String), ApiError> {
    let sealed = state
        .sealer
        .seal(id.as_str(), key)
        .map_err(ApiError::internal)?;
    Ok((sealed, mask_secret(key)))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        format!("backend `{id}` does not exist"),
        "backend_not_found",
    )
}

/// List every backend.
#[utoipa::path(get, path = "/backends", tag = "backends",
    responses((status = 200, body = [BackendView]), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let records = state.stores.config.list_backends().await?;
    let live = state.live();
    let views: Vec<BackendView> = records
        .iter()
        .map(|record| view(record, live.by_id.get(&record.id).map(|b| &**b)))
        .collect();
    Ok(axum::Json(views))
}

/// Create a backend.
#[utoipa::path(post, path = "/backends", tag = "backends", request_body = CreateBackend,
    responses((status = 201, body = BackendView), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Json(input): Json<CreateBackend>,
) -> Result<impl IntoResponse, ApiError> {
    let _write = state.admin_write().await;
    validate_name("name", &input.name)?;
    let api_base_url = normalize_base_url("api_base_url", &input.api_base_url)?;
    validate_api_key("api_key", &input.api_key)?;
    let timeout_seconds = validate_timeout(
        "timeout_seconds",
        input
            .timeout_seconds
            .unwrap_or(i64::from(crate::config::DEFAULT_TIMEOUT_SECONDS)),
    )?;
    let rpm_limit = validate_rpm("rpm_limit", input.rpm_limit.unwrap_or(0))?;
    let weight = validate_weight("weight", input.weight.unwrap_or(1))?;
    let model_mappings = mappings_from(input.model_mappings.unwrap_or_default())?;
    let metadata = input
        .metadata
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    validate_metadata("metadata", &metadata)?;
    let pool = check_pool(&state, input.pool.as_deref().unwrap_or("primary")).await?;

    let id = BackendId::generate();
    let (api_key_sealed, api_key_mask) = seal(&state, &id, &input.api_key)?;
    let now = now_ms();
    let record = BackendRecord {
        id,
        label: input.label.unwrap_or_else(|| input.name.clone()),
        name: input.name,
        api_base_url,
        api_key_sealed,
        api_key_mask,
        api: input.api.unwrap_or(ApiKind::Openai),
        timeout_seconds,
        rpm_limit,
        weight,
        pool,
        enabled: input.enabled.unwrap_or(true),
        model_mappings,
        source: Source::Api,
        metadata,
        health: PersistedHealth::default(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    state.stores.config.insert_backend(&record).await?;
    state.reload().await?;
    tracing::info!(backend = %record.id, name = %record.name, "backend created");
    let live = state.live();
    let body = view(&record, live.by_id.get(&record.id).map(|b| &**b));
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// Read one backend.
#[utoipa::path(get, path = "/backends/{id}", tag = "backends",
    params(("id" = String, Path, description = "backend id")),
    responses((status = 200, body = BackendView), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = BackendId::new(id);
    let record = state
        .stores
        .config
        .get_backend(&id)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?;
    let live = state.live();
    Ok(axum::Json(view(&record, live.by_id.get(&id).map(|b| &**b))))
}

/// Change a backend (only the fields given).
#[utoipa::path(patch, path = "/backends/{id}", tag = "backends", request_body = UpdateBackend,
    params(("id" = String, Path, description = "backend id")),
    responses((status = 200, body = BackendView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<UpdateBackend>,
) -> Result<impl IntoResponse, ApiError> {
    let _write = state.admin_write().await;
    let id = BackendId::new(id);
    let mut record = state
        .stores
        .config
        .get_backend(&id)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?;
    if let Some(name) = input.name {
        validate_name("name", &name)?;
        record.name = name;
    }
    if let Some(label) = input.label {
        record.label = label;
    }
    if let Some(url) = input.api_base_url {
        record.api_base_url = normalize_base_url("api_base_url", &url)?;
    }
    if let Some(api) = input.api {
        record.api = api;
    }
    if let Some(timeout) = input.timeout_seconds {
        record.timeout_seconds = validate_timeout("timeout_seconds", timeout)?;
    }
    if let Some(rpm) = input.rpm_limit {
        record.rpm_limit = validate_rpm("rpm_limit", rpm)?;
    }
    if let Some(weight) = input.weight {
        record.weight = validate_weight("weight", weight)?;
    }
    if let Some(enabled) = input.enabled {
        record.enabled = enabled;
    }
    if let Some(mappings) = input.model_mappings {
        record.model_mappings = mappings_from(mappings)?;
    }
    if let Some(metadata) = input.metadata {
        validate_metadata("metadata", &metadata)?;
        record.metadata = metadata;
    }
    if let Some(pool) = input.pool {
        record.pool = check_pool(&state, &pool).await?;
    }
    if let Some(key) = input.api_key {
        validate_api_key("api_key", &key)?;
        let key = SecretString::from(key);
        let (sealed, mask) = seal(&state, &id, secrecy::ExposeSecret::expose_secret(&key))?;
        record.api_key_sealed = sealed;
        record.api_key_mask = mask;
    }
    record.updated_at_ms = now_ms();
    state.stores.config.update_backend(&record).await?;
    state.reload().await?;
    let live = state.live();
    Ok(axum::Json(view(&record, live.by_id.get(&id).map(|b| &**b))))
}

/// Delete a backend.
#[utoipa::path(delete, path = "/backends/{id}", tag = "backends",
    params(("id" = String, Path, description = "backend id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let _write = state.admin_write().await;
    let id = BackendId::new(id);
    if !state.stores.config.delete_backend(&id).await? {
        return Err(not_found(id.as_str()));
    }
    state.reload().await?;
    tracing::info!(backend = %id, "backend deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// End a backend's cooldown or error state now.
#[utoipa::path(post, path = "/backends/{id}/reset-cooldown", tag = "backends",
    params(("id" = String, Path, description = "backend id")),
    responses((status = 200, body = BackendView), (status = 404, body = ErrorBody)))]
pub async fn reset_cooldown(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let _write = state.admin_write().await;
    let id = BackendId::new(id);
    let mut record = state
        .stores
        .config
        .get_backend(&id)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?;
    // In memory first, then persisted by the single health writer: a state it still holds
    // queued from before cannot undo the reset, since it writes the current state.
    let runtime = state.registry().backend(&record, Instant::now());
    runtime.reset();
    state.health.mark_dirty(&id, &runtime);
    if !state.health.flush().await {
        return Err(ApiError::internal("the health writer is gone"));
    }
    record.health = PersistedHealth::default();
    tracing::info!(backend = %id, "cooldown reset by admin");
    let live = state.live();
    Ok(axum::Json(view(&record, live.by_id.get(&id).map(|b| &**b))))
}
