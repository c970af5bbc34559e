//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`
//! (JSON or SSE, via [`crate::proxy`]) and `/v1/models`. Every answer carries `x-request-id`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tokio::time::Instant;

use super::auth::authenticate_client;
use super::json::read_body;
use super::new_request_id;
use crate::domain::now_ms;
use crate::error::ApiError;
use crate::providers::Endpoint;
use crate::proxy::{forward, Inbound, ProxyBody, ProxyResponse, RequestContext};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
}

async fn chat_completions(State(state): State<AppState>, request: Request) -> Response {
    proxy(state, Endpoint::ChatCompletions, request).await
}

async fn completions(State(state): State<AppState>, request: Request) -> Response {
    proxy(state, Endpoint::Completions, request).await
}

async fn embeddings(State(state): State<AppState>, request: Request) -> Response {
    proxy(state, Endpoint::Embeddings, request).await
}

pub fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Header `x-poolgate-max-wait-ms`: how long this request may wait for a ready backend.
pub fn max_wait_header(headers: &HeaderMap) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(value) = headers.get("x-poolgate-max-wait-ms") else {
        return Ok(None);
    };
    let millis: u64 = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ms| ms <= 600_000)
        .ok_or_else(|| ApiError::InvalidRequest {
            message: "`x-poolgate-max-wait-ms` must be a whole number of milliseconds up to 600000"
                .into(),
            param: Some("x-poolgate-max-wait-ms".into()),
            code: Some("invalid_header"),
        })?;
    Ok(Some(std::time::Duration::from_millis(millis)))
}

async fn proxy(state: AppState, endpoint: Endpoint, request: Request) -> Response {
    let request_id = new_request_id();
    let response = match prepare(&state, &request_id, request).await {
        Err(error) => error.into_response(),
        Ok((ctx, body)) => {
            let parsed = body.and_then(|body| Inbound::openai(endpoint, body));
            match forward(&state, ctx, endpoint, parsed).await {
                Ok(response) => into_response(response),
                Err(error) => error.into_response(),
            }
        }
    };
    with_request_id(response, &request_id)
}

/// Authenticates (a failure here is answered without a usage record: the caller is unknown),
/// then reads the per-request options and the body. Errors after authentication are handed to
/// the proxy so that they are recorded like every other request.
pub async fn prepare(
    state: &AppState,
    request_id: &str,
    request: Request,
) -> Result<(RequestContext, Result<bytes::Bytes, ApiError>), ApiError> {
    let received = Instant::now();
    let received_ms = now_ms();
    let live = state.live();
    let client_key = authenticate_client(state, &live, request.headers())?;
    let max_wait = max_wait_header(request.headers());
    let ctx = RequestContext {
        request_id: request_id.to_owned(),
        client_key,
        received,
        received_ms,
        max_wait: max_wait.as_ref().ok().copied().flatten(),
        live,
    };
    let body = match max_wait {
        Err(error) => Err(error),
        Ok(_) => read_body(request, state.config.proxy.max_body_bytes).await,
    };
    Ok((ctx, body))
}

/// Converts the proxy's answer into an axum response.
pub fn into_response(response: ProxyResponse) -> Response {
    let body = match response.body {
        ProxyBody::Full(bytes) => Body::from(bytes),
        ProxyBody::Stream(stream) => Body::from_stream(stream),
    };
    let mut out = Response::new(body);
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    out
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

async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let request_id = new_request_id();
    with_request_id(list_models(&state, &headers), &request_id)
}

fn list_models(state: &AppState, headers: &HeaderMap) -> Response {
    let live = state.live();
    let key = match authenticate_client(state, &live, headers) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
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
