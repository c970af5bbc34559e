//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! the Responses API (`POST /v1/responses`, and `GET`/`DELETE /v1/responses/{id}`,
//! `POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items` on stored responses)
//! — JSON or SSE, via [`crate::proxy`] — and `/v1/models` (the list, and `/v1/models/{model}`
//! for one). Errors use OpenAI's shape.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::auth::authenticate_client;
use super::error::ApiError;
use super::proxy::serve;
use crate::domain::{CanonicalModel, MAX_MODEL_NAME_BYTES};
use crate::providers::responses::{ResponseId, ResponsesCall};
use crate::providers::Endpoint;
use crate::proxy::Inbound;
use crate::routing::models::ListedModel;
use crate::state::{DataPlane, LiveClientKey};

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
        .route("/v1/models", get(models))
        // A model name may hold `/` (`openai/gpt-4o`): the rest of the path is the name.
        .route("/v1/models/{*model}", get(model))
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
    /// For an alias: the model it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    alias_of: Option<String>,
}

impl ModelEntry {
    fn new(id: String, alias_of: Option<String>) -> Self {
        Self {
            id,
            object: "model",
            created: 0,
            owned_by: "poolgate",
            alias_of,
        }
    }

    fn of(model: &ListedModel) -> Self {
        Self::new(
            model.id.clone(),
            model.alias_of.as_ref().map(ToString::to_string),
        )
    }
}

/// `GET /v1/models`: the models the caller may use — exactly mapped models of enabled backends,
/// aliases whose model is served, and those models (wildcards serve names not known in
/// advance, so they list nothing of their own).
async fn models(State(data): State<DataPlane>, headers: HeaderMap) -> Response {
    let live = data.live();
    let key = match authenticate_client(&data, &live, &headers) {
        Ok(key) => key,
        Err(error) => return error.openai(),
    };
    let allowed = allowed_models(key.as_deref());
    let data = live
        .models
        .iter()
        .filter(|model| may_list(allowed, model))
        .map(ModelEntry::of)
        .collect();
    axum::Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

/// `GET /v1/models/{model}` (the SDKs' `models.retrieve`): one model as `/v1/models` shows it —
/// a listed model or alias, or a name a wildcard mapping serves — if the caller may use it;
/// else 404 `model_not_found`, as OpenAI answers for a model that is not there or not the
/// caller's.
async fn model(
    State(data): State<DataPlane>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let model = match path {
        Ok(Path(model)) => model,
        // Not UTF-8 once percent-decoded: no model has such a name.
        Err(rejection) => {
            return ApiError::invalid(format!("invalid model name: {}", rejection.body_text()))
                .with_param("model")
                .with_code("invalid_value")
                .openai()
        }
    };
    let live = data.live();
    let key = match authenticate_client(&data, &live, &headers) {
        Ok(key) => key,
        Err(error) => return error.openai(),
    };
    let allowed = allowed_models(key.as_deref());
    let found = match live.models.iter().find(|listed| listed.id == model) {
        // No model has such a name (requests naming one are refused).
        _ if model.len() > MAX_MODEL_NAME_BYTES => None,
        Some(listed) => may_list(allowed, listed).then(|| ModelEntry::of(listed)),
        // Served by a wildcard mapping (or by nothing): the name, if it routes and is allowed
        // by its own name or its canonical one (as a request for it would be).
        None => {
            let canonical = live.routes.canonical(&model);
            let may_use = allowed.is_empty()
                || allowed
                    .iter()
                    .any(|m| m.as_str() == model || m.as_str() == canonical.as_str());
            (may_use && live.routes.serves(&model)).then(|| ModelEntry::new(model.clone(), None))
        }
    };
    match found {
        Some(entry) => axum::Json(entry).into_response(),
        None => ApiError::not_found(
            format!("the model `{model}` does not exist or you do not have access to it"),
            "model_not_found",
        )
        .with_param("model")
        .openai(),
    }
}

/// The models a caller's key allows (empty: every model; the admin token has no key).
fn allowed_models(key: Option<&LiveClientKey>) -> &[CanonicalModel] {
    key.map(|key| key.record.allowed_models.as_slice())
        .unwrap_or_default()
}

/// Whether a caller whose key allows `allowed` (empty: every model) sees `model` in
/// `/v1/models`: by its own name or, for an alias, by the model it names.
fn may_list(allowed: &[CanonicalModel], model: &ListedModel) -> bool {
    let may_use = |name: &str| allowed.iter().any(|m| m.as_str() == name);
    allowed.is_empty()
        || may_use(&model.id)
        || model.alias_of.as_ref().is_some_and(|t| may_use(t.as_str()))
}
