//! The Anthropic-compatible surface: `POST /v1/messages` (JSON or SSE; to Anthropic backends it
//! passes through, to OpenAI-compatible ones it is translated) and `POST /v1/messages/count_tokens`
//! (501). Clients authenticate with `x-api-key` or a bearer token; errors use Anthropic's shape.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::auth::authenticate_client;
use super::error::ApiError;
use super::proxy::serve;
use super::request_id::RequestId;
use crate::providers::Endpoint;
use crate::proxy::Inbound;
use crate::state::DataPlane;

pub fn router() -> Router<super::AppState> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

async fn messages(State(data): State<DataPlane>, request: Request) -> Response {
    let request_id = request.extensions().get::<RequestId>().cloned();
    let mut response = serve(
        &data,
        Endpoint::Messages,
        request,
        Inbound::anthropic,
        ApiError::anthropic,
    )
    .await;
    // Anthropic's SDKs read the id from `request-id`.
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

async fn count_tokens(State(data): State<DataPlane>, request: Request) -> Response {
    if let Err(error) = authenticate_client(&data, &data.live(), request.headers()) {
        return error.anthropic();
    }
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "poolgate does not count tokens: `/v1/messages/count_tokens` is not supported",
    )
    .anthropic()
}
