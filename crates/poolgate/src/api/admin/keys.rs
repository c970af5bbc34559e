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
use crate::control::{ClientKeyInput, ControlPlane};
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
