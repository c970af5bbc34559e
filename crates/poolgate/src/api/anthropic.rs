//! The Anthropic-compatible surface: `POST /v1/messages` (JSON or SSE; to Anthropic backends it
//! passes through, to OpenAI-compatible ones it is translated) and `POST /v1/messages/count_tokens`
//! (passed through to an Anthropic backend serving the model; 501 when none does). Clients
//! authenticate with `x-api-key` or a bearer token; errors use Anthropic's shape.

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::error::ApiError;
use super::proxy::serve;
use super::request_id::RequestId;
use crate::providers::Endpoint;
use crate::proxy::Inbound;
use crate::state::DataPlane;

pub fn router() -> Router<super::AppState> {
    Router::new()
        .route(super::MESSAGES_PATH, post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

pub(super) async fn messages(State(data): State<DataPlane>, request: Request) -> Response {
    anthropic_call(data, Endpoint::Messages, request, Inbound::anthropic).await
}

async fn count_tokens(State(data): State<DataPlane>, request: Request) -> Response {
    anthropic_call(data, Endpoint::CountTokens, request, Inbound::count_tokens).await
}

async fn anthropic_call(
    data: DataPlane,
    endpoint: Endpoint,
    request: Request,
    parse: fn(
        bytes::Bytes,
        &axum::http::HeaderMap,
    ) -> Result<Inbound, crate::domain::InvalidRequest>,
) -> Response {
    let request_id = request.extensions().get::<RequestId>().cloned();
    let mut response = serve(&data, endpoint, request, parse, ApiError::anthropic).await;
    // Anthropic's SDKs read the id from `request-id`.
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        response.headers_mut().insert("request-id", value);
    }
    response
}
