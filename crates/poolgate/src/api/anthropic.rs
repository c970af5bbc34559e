//! The Anthropic-compatible surface: `POST /v1/messages` (JSON or SSE; to Anthropic backends it
//! passes through, to OpenAI-compatible ones it is translated) and `POST /v1/messages/count_tokens`
//! (501). Clients authenticate with `x-api-key` or a bearer token; errors use Anthropic's shape.

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::auth::authenticate_client;
use super::new_request_id;
use super::openai::{into_response, prepare, with_request_id};
use crate::error::ApiError;
use crate::providers::anthropic::{error_type_for_status, ErrorResponse};
use crate::providers::Endpoint;
use crate::proxy::{forward, Inbound};
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
    let headers = request.headers().clone();
    let mut response = match prepare(&state, &request_id, request).await {
        Err(error) => anthropic_error(error),
        Ok((ctx, body)) => {
            let parsed = body.and_then(|body| Inbound::anthropic(body, &headers));
            match forward(&state, ctx, Endpoint::Messages, parsed).await {
                Ok(response) => into_response(response),
                Err(error) => anthropic_error(error),
            }
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    with_request_id(response, &request_id)
}

async fn count_tokens(State(state): State<AppState>, request: Request) -> Response {
    if let Err(error) = authenticate_client(&state, &state.live(), request.headers()) {
        return anthropic_error(error);
    }
    anthropic_error(ApiError::NotImplemented(
        "poolgate does not count tokens: `/v1/messages/count_tokens` is not supported".into(),
    ))
    .into_response()
}
