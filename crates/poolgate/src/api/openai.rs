//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! the Responses API (`POST /v1/responses`, and `GET`/`DELETE /v1/responses/{id}`,
//! `POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items` on stored responses)
//! — JSON or SSE, via [`crate::proxy`] — and the routes of `/v1/models` ([`super::models`]).
//! Errors use OpenAI's shape.

use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures_util::future::BoxFuture;

use super::error::ApiError;
use super::proxy::serve;
use crate::providers::responses::{ResponseId, ResponsesCall};
use crate::providers::Endpoint;
use crate::proxy::Inbound;
use crate::state::DataPlane;

pub fn router() -> Router<super::AppState> {
    Router::new()
        .route(super::CHAT_COMPLETIONS_PATH, post(chat_completions))
        .route(super::COMPLETIONS_PATH, post(completions))
        .route(super::EMBEDDINGS_PATH, post(embeddings))
        .route("/v1/responses", post(responses))
        .route(
            "/v1/responses/{id}",
            get(stored(ResponsesCall::Retrieve, Endpoint::ResponsesRetrieve))
                .delete(stored(ResponsesCall::Delete, Endpoint::ResponsesDelete)),
        )
        .route(
            "/v1/responses/{id}/cancel",
            post(stored(ResponsesCall::Cancel, Endpoint::ResponsesCancel)),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(stored(
                ResponsesCall::InputItems,
                Endpoint::ResponsesInputItems,
            )),
        )
        .route("/v1/models", get(super::models::list))
        // A model name may hold `/` (`openai/gpt-4o`): the rest of the path is the name.
        .route("/v1/models/{*model}", get(super::models::one))
}

async fn responses(State(data): State<DataPlane>, request: Request) -> Response {
    let parse = |body, _: &HeaderMap| Inbound::responses(body);
    serve(&data, Endpoint::Responses, request, parse, ApiError::openai).await
}

/// The handler of one kind of call on a stored response.
fn stored(
    call: fn(ResponseId) -> ResponsesCall,
    endpoint: Endpoint,
) -> impl Fn(State<DataPlane>, Path<String>, Request) -> BoxFuture<'static, Response> + Clone {
    move |State(data), Path(id), request| Box::pin(response_call(data, id, call, endpoint, request))
}

/// A call on a stored response: it goes to the backend that made the response.
async fn response_call(
    data: DataPlane,
    id: String,
    call: fn(ResponseId) -> ResponsesCall,
    endpoint: Endpoint,
    request: Request,
) -> Response {
    let query = request.uri().query().map(str::to_owned);
    let parse = move |_body, _: &HeaderMap| {
        let call = ResponseId::parse(&id).map(call).map_err(|_| {
            crate::domain::InvalidRequest::param(
                format!("`{id}` is not a valid response id"),
                "response_id",
                "invalid_value",
            )
        })?;
        Ok(Inbound::responses_call(call, query))
    };
    serve(&data, endpoint, request, parse, ApiError::openai).await
}

pub(super) async fn chat_completions(State(data): State<DataPlane>, request: Request) -> Response {
    proxy(data, Endpoint::ChatCompletions, request).await
}

pub(super) async fn completions(State(data): State<DataPlane>, request: Request) -> Response {
    proxy(data, Endpoint::Completions, request).await
}

pub(super) async fn embeddings(State(data): State<DataPlane>, request: Request) -> Response {
    proxy(data, Endpoint::Embeddings, request).await
}

async fn proxy(data: DataPlane, endpoint: Endpoint, request: Request) -> Response {
    let parse = |body, _: &HeaderMap| Inbound::openai(endpoint, body);
    serve(&data, endpoint, request, parse, ApiError::openai).await
}
