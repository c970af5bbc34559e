//! `/admin/api/backends`: create, list, read, change, delete upstream backends, and reset a
//! backend's cooldown — each a call to the [`ControlPlane`]; the views add the live counters of
//! the data plane's snapshot. The upstream key is write-only: responses show a mask.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ErrorBody};
use crate::api::json::Json;
use crate::control::ControlPlane;
use crate::domain::{
    format_ms, parse_json_value, ApiKind, BackendId, BackendInput, BackendPatch, BackendRecord,
    BackendStatus, HttpVersion, ModelMapping, Source,
};
use crate::limits::upstream::UpstreamLimitsView;
use crate::pricing::{Nanodollars, WindowView};
use crate::routing::LiveBackend;
use crate::runtime::ms_from_instant;
use crate::state::DataPlane;

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
    /// Whether `/v1/responses` passes through to this backend (else it is translated): the
    /// `responses` setting, or the API kind's default.
    pub responses: bool,
    /// Azure's `api-version` (set, or `null` for the default).
    pub api_version: Option<String>,
    /// Tokens per minute (prompt + output); 0 = unlimited.
    pub tpm_limit: u32,
    /// The HTTP version of upstream calls: `auto`, `http1` or `http2`.
    pub http_version: HttpVersion,
    /// Read-only: the rate-limit figures the upstream last sent (`x-ratelimit-*`,
    /// `anthropic-ratelimit-*`), and until when poolgate holds requests back because it said
    /// nothing is left (`blocked_until`); `null` before any answer carried them.
    pub upstream_limits: Option<UpstreamLimitsView>,
    /// The most this backend may cost per UTC calendar month, USD; `null` = no cap. At its cap
    /// a backend is skipped until the month ends.
    pub monthly_spend_cap_usd: Option<f64>,
    /// What is spent of the cap this month; `null` without a cap. In cluster mode: the
    /// cluster's spend as this instance last read it from Redis (at most a heartbeat old), plus
    /// its own since.
    pub spend: Option<BackendSpend>,
}

/// A backend's spend against its monthly cap.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendSpend {
    pub monthly: WindowView,
}

/// A backend body with its monthly spend cap: `POST` takes `monthly_spend_cap_usd` as a value or
/// `null`; `PATCH` changes it only when present (`null` removes the cap). One flat object on the
/// wire: the cap sits next to the backend's own fields (the schema says so with `flatten`).
#[derive(Debug, ToSchema)]
pub struct WithSpendCap<T> {
    #[serde(flatten)]
    pub backend: T,
    /// USD per UTC calendar month (number or decimal string); `null` = no cap.
    #[schema(value_type = Option<f64>)]
    pub monthly_spend_cap_usd: Option<Option<Nanodollars>>,
}

/// The field the cap travels in, next to a backend's own fields.
const SPEND_CAP_FIELD: &str = "monthly_spend_cap_usd";

impl<T: DeserializeOwned> WithSpendCap<T> {
    /// Takes the cap out of the body and reads the rest as `T`, so `T`'s
    /// `deny_unknown_fields` still refuses a misspelt field (serde's `flatten` would not), and
    /// errors still name their path.
    fn split(mut body: serde_json::Map<String, serde_json::Value>) -> Result<Self, ApiError> {
        let cap = match body.remove(SPEND_CAP_FIELD) {
            None => None,
            Some(serde_json::Value::Null) => Some(None),
            Some(value) => Some(Some(Nanodollars::deserialize(value).map_err(|error| {
                ApiError::invalid(format!("invalid value at `{SPEND_CAP_FIELD}`: {error}"))
                    .with_param(SPEND_CAP_FIELD)
                    .with_code("invalid_body")
            })?)),
        };
        let backend =
            parse_json_value(serde_json::Value::Object(body)).map_err(|mut invalid| {
                // The fields a misspelt top-level one could have been include the cap.
                let top_level = invalid.param.as_deref().is_some_and(|p| !p.contains('.'));
                let unknown_field = invalid
                    .message
                    .split_once("`: ")
                    .is_some_and(|(_, said)| said.starts_with("unknown field `"));
                if top_level && unknown_field && invalid.message.contains(", expected one of ") {
                    invalid.message.push_str(&format!(", `{SPEND_CAP_FIELD}`"));
                }
                invalid
            })?;
        Ok(Self {
            backend,
            monthly_spend_cap_usd: cap,
        })
    }
}

/// Builds the view from the stored record and, when present, the live counters.
pub fn view(record: &BackendRecord, live: Option<&LiveBackend>) -> BackendView {
    let now = Instant::now();
    let upstream_limits = live.and_then(|backend| backend.runtime.upstream_limits(now));
    let spend = live
        .and_then(|backend| backend.spend.as_ref())
        .map(|ledger| ledger.view(chrono::Utc::now()));
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
        responses: record.speaks_responses(),
        api_version: record.api_version.clone(),
        tpm_limit: record.tpm_limit,
        http_version: record.http_version,
        upstream_limits,
        monthly_spend_cap_usd: spend
            .and_then(|spend| spend.monthly.limit)
            .map(Nanodollars::as_usd_f64),
        spend: spend.map(|spend| BackendSpend {
            monthly: spend.monthly,
        }),
    }
}

/// The view of a record with the live counters of the current snapshot.
fn live_view(data: &DataPlane, record: &BackendRecord) -> BackendView {
    let live = data.live();
    view(record, live.by_id.get(&record.id).map(|b| &**b))
}

/// List every backend.
#[utoipa::path(get, path = "/backends", operation_id = "list_backends", tag = "backends",
    responses((status = 200, body = [BackendView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
) -> Result<impl IntoResponse, ApiError> {
    let records = control.backends().await?;
    let live = data.live();
    let views: Vec<BackendView> = records
        .iter()
        .map(|record| view(record, live.by_id.get(&record.id).map(|b| &**b)))
        .collect();
    Ok(axum::Json(views))
}

/// Create a backend.
#[utoipa::path(post, path = "/backends", operation_id = "create_backend", tag = "backends", request_body = WithSpendCap<BackendInput>,
    responses((status = 201, body = BackendView), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn create(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let input = WithSpendCap::<BackendInput>::split(body)?;
    let record = control.create_backend(input.backend).await?;
    if let Some(Some(cap)) = input.monthly_spend_cap_usd {
        control.set_backend_spend_cap(&record.id, Some(cap)).await?;
    }
    Ok((StatusCode::CREATED, axum::Json(live_view(&data, &record))))
}

/// Read one backend.
#[utoipa::path(get, path = "/backends/{id}", operation_id = "get_backend", tag = "backends",
    params(("id" = String, Path, description = "backend id")),
    responses((status = 200, body = BackendView), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let record = control.backend(&BackendId::new(id)).await?;
    Ok(axum::Json(live_view(&data, &record)))
}

/// Change a backend (only the fields given).
#[utoipa::path(patch, path = "/backends/{id}", operation_id = "update_backend", tag = "backends", request_body = WithSpendCap<BackendPatch>,
    params(("id" = String, Path, description = "backend id")),
    responses((status = 200, body = BackendView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
    Path(id): Path<String>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let input = WithSpendCap::<BackendPatch>::split(body)?;
    let id = BackendId::new(id);
    let record = control.update_backend(&id, input.backend).await?;
    if let Some(cap) = input.monthly_spend_cap_usd {
        control.set_backend_spend_cap(&id, cap).await?;
    }
    Ok(axum::Json(live_view(&data, &record)))
}

/// Delete a backend.
#[utoipa::path(delete, path = "/backends/{id}", operation_id = "delete_backend", tag = "backends",
    params(("id" = String, Path, description = "backend id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    control.delete_backend(&BackendId::new(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// End a backend's cooldown or error state now.
#[utoipa::path(post, path = "/backends/{id}/reset-cooldown", operation_id = "reset_backend_cooldown", tag = "backends",
    params(("id" = String, Path, description = "backend id")),
    responses((status = 200, body = BackendView), (status = 404, body = ErrorBody)))]
pub async fn reset_cooldown(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let record = control.reset_cooldown(&BackendId::new(id)).await?;
    Ok(axum::Json(live_view(&data, &record)))
}
