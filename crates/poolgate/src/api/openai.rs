//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`
//! (JSON or SSE, via [`crate::proxy`]) and `/v1/models`. Errors use OpenAI's shape.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use super::auth::authenticate_client;
use super::error::ApiError;
use super::proxy::serve;
use crate::providers::Endpoint;
use crate::proxy::Inbound;
use crate::state::DataPlane;

pub fn router() -> Router<super::AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
}

async fn chat_completions(State(data): State<DataPlane>, request: Request) -> Response {
    proxy(data, Endpoint::ChatCompletions, request).await
}

async fn completions(State(data): State<DataPlane>, request: Request) -> Response {
    proxy(data, Endpoint::Completions, request).await
}

async fn embeddings(State(data): State<DataPlane>, request: Request) -> Response {
    proxy(data, Endpoint::Embeddings, request).await
}

async fn proxy(data: DataPlane, endpoint: Endpoint, request: Request) -> Response {
    let parse = |body, _: &HeaderMap| Inbound::openai(endpoint, body);
    serve(&data, endpoint, request, parse, ApiError::openai).await
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelEntry>,
}

#[derive(Serialize)]
struct ModelEntry {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

/// `GET /v1/models`: the canonical models of enabled backends the caller may use.
async fn models(State(data): State<DataPlane>, headers: HeaderMap) -> Response {
    let live = data.live();
    let key = match authenticate_client(&data, &live, &headers) {
        Ok(key) => key,
        Err(error) => return error.openai(),
    };
    let allowed = key
        .as_ref()
        .map(|key| key.record.allowed_models.as_slice())
        .unwrap_or_default();
    let data = live
        .models
        .iter()
        .filter(|model| allowed.is_empty() || allowed.contains(model))
        .map(|model| ModelEntry {
            id: model.to_string(),
            object: "model",
            created: 0,
            owned_by: "poolgate",
        })
        .collect();
    axum::Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}
