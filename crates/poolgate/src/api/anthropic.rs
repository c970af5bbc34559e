//! The Anthropic-compatible surface: `POST /v1/messages` (JSON or SSE; to Anthropic backends it
//! passes through, to OpenAI-compatible ones it is translated) and `POST /v1/messages/count_tokens`
//! (501). Clients authenticate with `x-api-key` or a bearer token; errors use Anthropic's shape.

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::time::Instant;

use super::auth::authenticate_client;
use super::json::read_body;
use super::openai::{into_response, max_wait_header, new_request_id, with_request_id};
use crate::domain::now_ms;
use crate::error::ApiError;
use crate::providers::anthropic::{error_type_for_status, ErrorResponse};
use crate::providers::Endpoint;
use crate::proxy::{forward, Inbound, RequestContext};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

/// Renders an error in Anthropic's shape: `{"type":"error","error":{"type","message"}}`.
pub fn anthropic_error(error: ApiError) -> Response {
    let status = error.status_code().as_u16();
    let body = ErrorResponse::new(error_type_for_status(status), error.public_message());
    error.into_response_with(&body)
}

async fn messages(State(state): State<AppState>, request: Request) -> Response {
    let request_id = new_request_id();
    let received = Instant::now();
    let received_ms = now_ms();
    let result = async {
        let client_key = authenticate_client(&state, request.headers())?;
        let max_wait = max_wait_header(request.headers())?;
        let headers = request.headers().clone();
        let body = read_body(request, state.config.proxy.max_body_bytes).await?;
        let ctx = RequestContext {
            request_id: request_id.clone(),
            client_key,
            received,
            received_ms,
            max_wait,
        };
        forward(
            &state,
            ctx,
            Endpoint::Messages,
            Inbound::anthropic(body, &headers),
        )
        .await
    }
    .await;
    let mut response = match result {
        Ok(response) => into_response(response),
        Err(error) => anthropic_error(error),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    with_request_id(response, &request_id)
}

async fn count_tokens(State(state): State<AppState>, request: Request) -> Response {
    if let Err(error) = authenticate_client(&state, request.headers()) {
        return anthropic_error(error);
    }
    anthropic_error(ApiError::NotImplemented(
        "poolgate does not count tokens: `/v1/messages/count_tokens` is not supported".into(),
    ))
    .into_response()
}
