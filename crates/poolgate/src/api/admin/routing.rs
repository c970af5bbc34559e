//! `/admin/api/aliases` and `/admin/api/settings/sticky`: model aliases (one name for another
//! canonical model) and the sticky-routing settings — each a call to the [`ControlPlane`]; alias
//! views add whether the live snapshot serves their target.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::error::{ApiError, ErrorBody};
use crate::api::json::Json;
use crate::control::ControlPlane;
use crate::domain::sticky::{StickyInput, StickyView};
use crate::domain::{format_ms, AliasRecord, Source};
use crate::state::DataPlane;

/// An alias as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasView {
    pub alias: String,
    /// The canonical model requests for the alias are routed as.
    pub target: String,
    /// Whether an enabled backend serves the target now (exactly or by a wildcard).
    pub served: bool,
    pub source: Source,
    pub created_at: String,
    pub updated_at: String,
}

/// Body of `PUT /admin/api/aliases/{alias}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    /// The canonical model (not itself an alias, no wildcard).
    pub target: String,
}

fn alias_view(data: &DataPlane, record: AliasRecord) -> AliasView {
    let served = data.live().routes.route(record.target.as_str()).is_some();
    AliasView {
        served,
        target: record.target.to_string(),
        alias: record.alias,
        source: record.source,
        created_at: format_ms(record.created_at_ms),
        updated_at: format_ms(record.updated_at_ms),
    }
}

/// List model aliases.
#[utoipa::path(get, path = "/aliases", operation_id = "list_aliases", tag = "routing",
    responses((status = 200, body = [AliasView]), (status = 401, body = ErrorBody)))]
pub async fn list_aliases(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
) -> Result<impl IntoResponse, ApiError> {
    let aliases = control.aliases().await?;
    let views: Vec<AliasView> = aliases
        .into_iter()
        .map(|record| alias_view(&data, record))
        .collect();
    Ok(axum::Json(views))
}

/// Create or change an alias: requests for `alias` are routed as `target`.
#[utoipa::path(put, path = "/aliases/{alias}", operation_id = "set_alias", tag = "routing", request_body = SetAlias,
    params(("alias" = String, Path, description = "the alias name")),
    responses((status = 200, body = AliasView), (status = 400, body = ErrorBody)))]
pub async fn set_alias(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
    Path(alias): Path<String>,
    Json(input): Json<SetAlias>,
) -> Result<impl IntoResponse, ApiError> {
    let record = control.set_alias(&alias, &input.target).await?;
    Ok(axum::Json(alias_view(&data, record)))
}

/// Delete an alias.
#[utoipa::path(delete, path = "/aliases/{alias}", operation_id = "delete_alias", tag = "routing",
    params(("alias" = String, Path, description = "the alias name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_alias(
    State(control): State<ControlPlane>,
    Path(alias): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    control.delete_alias(&alias).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The sticky-routing settings.
#[utoipa::path(get, path = "/settings/sticky", operation_id = "get_sticky", tag = "routing",
    responses((status = 200, body = StickyView), (status = 401, body = ErrorBody)))]
pub async fn get_sticky(
    State(control): State<ControlPlane>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(control.sticky().await?.view()))
}

/// Replace the sticky-routing settings (absent fields take their defaults).
#[utoipa::path(put, path = "/settings/sticky", operation_id = "set_sticky", tag = "routing", request_body = StickyInput,
    responses((status = 200, body = StickyView), (status = 400, body = ErrorBody)))]
pub async fn set_sticky(
    State(control): State<ControlPlane>,
    Json(input): Json<StickyInput>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(control.set_sticky(input).await?.view()))
}
