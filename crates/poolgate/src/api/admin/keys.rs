//! `/admin/api/keys`: client keys. The plaintext is shown once, at creation; only a SHA-256 of
//! the secret is stored.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::error::{ApiError, ErrorBody};
use crate::api::json::Json;
use crate::control::{BudgetPatch, ClientKeyInput, ClientKeyPatch, ControlPlane};
use crate::domain::{format_ms, not_null, ClientKeyRecord};
use crate::pricing::{Nanodollars, SpendView, WindowView};
use crate::state::{DataPlane, Live};

/// Body of `POST /admin/api/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for people (1–128 characters).
    pub name: String,
    /// Requests per minute for this key; 0 or absent = unlimited.
    pub rpm_limit: Option<i64>,
    /// Requests this key may have in flight at once (0–100000); 0 or absent = unlimited. Past
    /// it, requests are answered 429 with `Retry-After` at once.
    pub max_parallel_requests: Option<i64>,
    /// Canonical models this key may use; absent or empty = all.
    pub allowed_models: Option<Vec<String>>,
    /// Tokens per minute for this key (prompt + output, estimated at admission and settled
    /// with the real usage), 0–150000000; 0 or absent = unlimited. Over it: 429
    /// `rate_limit_exceeded` with `Retry-After`; a request larger than the whole limit: 429
    /// `tpm_request_too_large` with `x-should-retry: false`.
    pub tpm_limit: Option<i64>,
    /// Spend limit per UTC day, USD (number or decimal string, at most 9 decimals); absent or
    /// `null` = none. A key whose budget is spent gets 429 `budget_exceeded`.
    #[schema(value_type = Option<f64>)]
    pub budget_daily_usd: Option<Nanodollars>,
    /// Spend limit per UTC calendar month, USD; absent or `null` = none.
    #[schema(value_type = Option<f64>)]
    pub budget_monthly_usd: Option<Nanodollars>,
    /// Spend limit over the key's whole life, USD; absent or `null` = none.
    #[schema(value_type = Option<f64>)]
    pub budget_total_usd: Option<Nanodollars>,
}

/// Body of `PATCH /admin/api/keys/{id}`: each field given is changed (`null` removes a budget;
/// the other fields may not be `null`), the others stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// 0 = unlimited.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub rpm_limit: Option<i64>,
    /// 0 = unlimited.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub max_parallel_requests: Option<i64>,
    /// Empty = all models.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub allowed_models: Option<Vec<String>>,
    /// Tokens per minute; 0 = unlimited.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub tpm_limit: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>)]
    pub budget_daily_usd: Option<Option<Nanodollars>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>)]
    pub budget_monthly_usd: Option<Option<Nanodollars>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>)]
    pub budget_total_usd: Option<Option<Nanodollars>>,
}

/// A present field: `null` is `Some(None)` (absent stays `None` through `#[serde(default)]`).
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A client key without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// Safe to show: `pgk-<id>-…`.
    pub display_prefix: String,
    pub rpm_limit: u32,
    /// 0 = unlimited.
    pub max_parallel_requests: u32,
    pub allowed_models: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// Tokens per minute; 0 = unlimited.
    pub tpm_limit: u32,
    /// Its budgets in USD (`null` = none).
    pub budget_daily_usd: Option<f64>,
    pub budget_monthly_usd: Option<f64>,
    pub budget_total_usd: Option<f64>,
    /// What is spent and reserved of each budget window now, and when it resets; `null` for a
    /// key without a budget.
    pub spend: Option<SpendView>,
}

/// The answer to creating a key: the only time the plaintext is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// The key to give to the client. Shown once; poolgate keeps only a hash.
    pub key: String,
}

fn view(record: &ClientKeyRecord, live: &Live) -> KeyView {
    let spend = live
        .client_keys
        .get(&record.id)
        .and_then(|key| key.spend.as_ref())
        .map(|ledger| ledger.view(chrono::Utc::now()));
    let usd = |limit: Option<&WindowView>| {
        limit
            .and_then(|window| window.limit)
            .map(Nanodollars::as_usd_f64)
    };
    KeyView {
        budget_daily_usd: usd(spend.as_ref().map(|s| &s.daily)),
        budget_monthly_usd: usd(spend.as_ref().map(|s| &s.monthly)),
        budget_total_usd: usd(spend.as_ref().map(|s| &s.total)),
        spend,
        id: record.id.clone(),
        name: record.name.clone(),
        display_prefix: record.display_prefix.clone(),
        rpm_limit: record.rpm_limit,
        max_parallel_requests: record.max_parallel_requests,
        allowed_models: record
            .allowed_models
            .iter()
            .map(ToString::to_string)
            .collect(),
        created_at: format_ms(record.created_at_ms),
        revoked_at: record.revoked_at_ms.map(format_ms),
        tpm_limit: record.tpm_limit,
    }
}

/// List client keys (revoked ones included, marked).
#[utoipa::path(get, path = "/keys", operation_id = "list_keys", tag = "keys",
    responses((status = 200, body = [KeyView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
) -> Result<impl IntoResponse, ApiError> {
    let keys = control.client_keys().await?;
    let live = data.live();
    Ok(axum::Json(
        keys.iter().map(|key| view(key, &live)).collect::<Vec<_>>(),
    ))
}

/// Create a client key.
#[utoipa::path(post, path = "/keys", operation_id = "create_key", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
    Json(input): Json<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let budgets = BudgetPatch {
        daily: Some(input.budget_daily_usd),
        monthly: Some(input.budget_monthly_usd),
        total: Some(input.budget_total_usd),
    };
    let (record, plaintext) = control
        .create_client_key(ClientKeyInput {
            name: input.name,
            rpm_limit: input.rpm_limit,
            max_parallel_requests: input.max_parallel_requests,
            allowed_models: input.allowed_models.unwrap_or_default(),
            tpm_limit: input.tpm_limit,
        })
        .await?;
    if budgets.daily.flatten().is_some()
        || budgets.monthly.flatten().is_some()
        || budgets.total.flatten().is_some()
    {
        control.update_key_budgets(&record.id, budgets).await?;
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            view: view(&record, &data.live()),
            key: plaintext.expose_secret().to_owned(),
        }),
    ))
}

/// Change a client key's name, limits or budgets (absent fields stay; `null` removes a budget;
/// new limits apply to the next request).
#[utoipa::path(patch, path = "/keys/{id}", operation_id = "update_key", tag = "keys", request_body = UpdateKey,
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
    Path(id): Path<String>,
    Json(input): Json<UpdateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let limits = ClientKeyPatch {
        name: input.name,
        rpm_limit: input.rpm_limit,
        max_parallel_requests: input.max_parallel_requests,
        allowed_models: input.allowed_models,
        tpm_limit: input.tpm_limit,
    };
    let budgets = BudgetPatch {
        daily: input.budget_daily_usd,
        monthly: input.budget_monthly_usd,
        total: input.budget_total_usd,
    };
    // Limits first: their validation can refuse; budgets were checked when the body was read.
    if limits.name.is_some()
        || limits.rpm_limit.is_some()
        || limits.max_parallel_requests.is_some()
        || limits.allowed_models.is_some()
        || limits.tpm_limit.is_some()
    {
        control.update_client_key(&id, limits).await?;
    }
    if budgets.daily.is_some() || budgets.monthly.is_some() || budgets.total.is_some() {
        control.update_key_budgets(&id, budgets).await?;
    }
    let keys = control.client_keys().await?;
    let record = keys
        .iter()
        .find(|key| key.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no active key `{id}`"), "key_not_found"))?;
    Ok(axum::Json(view(record, &data.live())))
}

/// Revoke a client key (it stops working at once).
#[utoipa::path(delete, path = "/keys/{id}", operation_id = "revoke_key", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    control.revoke_client_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
