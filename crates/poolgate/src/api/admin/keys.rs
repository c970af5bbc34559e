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
use crate::crypto::generate_client_key;
use crate::domain::{
    format_ms, now_ms, validate_model_name, validate_rpm, CanonicalModel, ClientKeyRecord,
};
use crate::state::AppState;

/// Body of `POST /admin/api/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for people (1–128 characters).
    pub name: String,
    /// Requests per minute for this key; 0 or absent = unlimited.
    pub rpm_limit: Option<i64>,
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
pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let keys = state.stores.config.list_client_keys().await?;
    Ok(axum::Json(keys.iter().map(view).collect::<Vec<_>>()))
}

/// Create a client key.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Json(input): Json<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let _write = state.admin_write().await;
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::invalid("`name` must be 1 to 128 characters long")
            .with_param("name")
            .with_code("invalid_value"));
    }
    let rpm_limit = validate_rpm("rpm_limit", input.rpm_limit.unwrap_or(0))?;
    let mut allowed_models = Vec::new();
    for (i, model) in input
        .allowed_models
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        validate_model_name(&format!("allowed_models[{i}]"), &model)?;
        allowed_models.push(CanonicalModel::new(model));
    }
    let generated = generate_client_key();
    let record = ClientKeyRecord {
        id: generated.id.clone(),
        name,
        display_prefix: generated.display_prefix.clone(),
        secret_hash: generated.secret_hash.to_vec(),
        rpm_limit,
        allowed_models,
        created_at_ms: now_ms(),
        revoked_at_ms: None,
    };
    state.stores.config.insert_client_key(&record).await?;
    state.reload().await?;
    tracing::info!(key = %record.id, "client key created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            view: view(&record),
            key: generated.plaintext.expose_secret().to_owned(),
        }),
    ))
}

/// Revoke a client key (it stops working at once).
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let _write = state.admin_write().await;
    if !state.stores.config.revoke_client_key(&id, now_ms()).await? {
        return Err(ApiError::not_found(
            format!("no active key `{id}`"),
            "key_not_found",
        ));
    }
    state.reload().await?;
    tracing::info!(key = %id, "client key revoked");
    Ok(StatusCode::NO_CONTENT)
}
