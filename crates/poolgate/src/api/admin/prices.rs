//! `/admin/api/prices`: the price table poolgate bills usage with — the defaults embedded in the
//! binary (with the date they were taken), the config file's `[prices]` over them and the admin
//! API's over both — and changing the API layer. Prices are USD per million tokens, exact to
//! $0.001; a finer or malformed value is refused with a 400 naming the field, never rounded.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ErrorBody};
use crate::api::json::Json;
use crate::control::ControlPlane;
use crate::pricing::{ModelPrice, PriceSource, PriceTable};

/// One model's price.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceView {
    /// The upstream model id (what the provider bills).
    pub model: String,
    /// USD per million uncached input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens (reasoning included).
    pub output_per_mtok: f64,
    /// USD per million input tokens read from the prompt cache; `null` = the input price.
    pub cached_input_per_mtok: Option<f64>,
    /// USD per million input tokens written to the prompt cache; `null` = the input price.
    pub cache_write_per_mtok: Option<f64>,
    /// `default` (embedded), `config` (the config file) or `api` (set here).
    #[schema(value_type = String)]
    pub source: PriceSource,
}

/// Answer of `GET /admin/api/prices`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PricesView {
    /// The date the default prices were taken (`YYYY-MM-DD`).
    pub taken: Option<String>,
    /// Where the default prices were taken from.
    pub source: Option<String>,
    /// Every price, ordered by model id.
    pub models: Vec<PriceView>,
}

/// Body of `PUT /admin/api/prices/{model}`: USD per million tokens, as numbers or decimal strings
/// (`2.5`, `"0.075"`), at most three decimals.
#[derive(Debug, ToSchema)]
#[expect(dead_code, reason = "documents the body `ModelPrice` deserializes")]
pub struct SetPrice {
    input_per_mtok: f64,
    output_per_mtok: f64,
    cached_input_per_mtok: Option<f64>,
    cache_write_per_mtok: Option<f64>,
}

fn view(table: &PriceTable) -> PricesView {
    PricesView {
        taken: table.taken().map(str::to_owned),
        source: table.source().map(str::to_owned),
        models: table
            .entries()
            .map(|(model, entry)| PriceView {
                model: model.to_owned(),
                input_per_mtok: entry.price.input.as_per_mtok_f64(),
                output_per_mtok: entry.price.output.as_per_mtok_f64(),
                cached_input_per_mtok: entry.price.cached_input.map(|p| p.as_per_mtok_f64()),
                cache_write_per_mtok: entry.price.cache_write.map(|p| p.as_per_mtok_f64()),
                source: entry.source,
            })
            .collect(),
    }
}

/// The price table in use.
#[utoipa::path(get, path = "/prices", operation_id = "list_prices", tag = "prices",
    responses((status = 200, body = PricesView), (status = 401, body = ErrorBody)))]
pub async fn list(State(control): State<ControlPlane>) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(view(&control.prices())))
}

/// Set the price of an upstream model id (over the config file's and the default's). Ids with
/// a `/` are written URL-encoded (`openai%2Fgpt-4o`).
#[utoipa::path(put, path = "/prices/{model}", operation_id = "set_price", tag = "prices", request_body = SetPrice,
    params(("model" = String, Path, description = "the upstream model id")),
    responses((status = 200, body = PriceView), (status = 400, body = ErrorBody)))]
pub async fn set(
    State(control): State<ControlPlane>,
    Path(model): Path<String>,
    Json(price): Json<ModelPrice>,
) -> Result<impl IntoResponse, ApiError> {
    control.set_price(&model, price).await?;
    let table = view(&control.prices());
    table
        .models
        .into_iter()
        .find(|row| row.model == model)
        .map(axum::Json)
        .ok_or_else(|| ApiError::internal(format!("the price of `{model}` is not in the table")))
}

/// Delete the API's price of a model id: the config file's or the default price (if any)
/// applies again.
#[utoipa::path(delete, path = "/prices/{model}", operation_id = "delete_price", tag = "prices",
    params(("model" = String, Path, description = "the upstream model id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(control): State<ControlPlane>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    control.delete_price(&model).await?;
    Ok(StatusCode::NO_CONTENT)
}
