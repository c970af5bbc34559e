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
use crate::control::{ClientKeyInput, ClientKeyPatch, ControlPlane};
use crate::domain::{format_ms, ClientKeyRecord};

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
}

/// Body of `PATCH /admin/api/keys/{id}`: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub name: Option<String>,
    /// 0 = unlimited.
    pub rpm_limit: Option<i64>,
    /// 0 = unlimited.
    pub max_parallel_requests: Option<i64>,
    /// Empty = all models.
    pub allowed_models: Option<Vec<String>>,
    /// Tokens per minute; 0 = unlimited.
    pub tpm_limit: Option<i64>,
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
}

/// The answer to creating a key: the only time the plaintext is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// The key to give to the client. Shown once; poolgate keeps only a hash.
    pub key: String,
}

fn view(record: &ClientKeyRecord) -> KeyView {
    KeyView {
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
#[utoipa::path(get, path = "/keys", tag = "keys",
    responses((status = 200, body = [KeyView]), (status = 401, body = ErrorBody)))]
pub async fn list(State(control): State<ControlPlane>) -> Result<impl IntoResponse, ApiError> {
    let keys = control.client_keys().await?;
    Ok(axum::Json(keys.iter().map(view).collect::<Vec<_>>()))
}

/// Create a client key.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(control): State<ControlPlane>,
    Json(input): Json<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let (record, plaintext) = control
        .create_client_key(ClientKeyInput {
            name: input.name,
            rpm_limit: input.rpm_limit,
            max_parallel_requests: input.max_parallel_requests,
            allowed_models: input.allowed_models.unwrap_or_default(),
            tpm_limit: input.tpm_limit,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            view: view(&record),
            key: plaintext.expose_secret().to_owned(),
        }),
    ))
}

/// Change a client key's name or limits (absent fields stay; new limits apply to the next
/// request).
#[utoipa::path(patch, path = "/keys/{id}", tag = "keys", request_body = UpdateKey,
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Json(input): Json<UpdateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let record = control
        .update_client_key(
            &id,
            ClientKeyPatch {
                name: input.name,
                rpm_limit: input.rpm_limit,
                max_parallel_requests: input.max_parallel_requests,
                allowed_models: input.allowed_models,
                tpm_limit: input.tpm_limit,
            },
        )
        .await?;
    Ok(axum::Json(view(&record)))
}

/// Revoke a client key (it stops working at once).
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    control.revoke_client_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
