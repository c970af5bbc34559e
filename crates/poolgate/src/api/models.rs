//! `GET /v1/models` and `GET /v1/models/{model}`: the models a caller may name, answered by the
//! gateway itself, in OpenAI's shape — or in Anthropic's when the request carries
//! `anthropic-version`, as the Anthropic SDKs' `models.list` and `models.retrieve` send it.
//! Errors follow the same shape.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::authenticate_client;
use super::error::ApiError;
use crate::domain::{CanonicalModel, MAX_MODEL_NAME_BYTES};
use crate::routing::models::ListedModel;
use crate::state::{DataPlane, LiveClientKey};

/// `created` of every model (OpenAI's Unix seconds, Anthropic's RFC 3339): poolgate does not
/// know when an upstream model was made.
const CREATED_AT: &str = "1970-01-01T00:00:00Z";

/// Which API's shape the caller reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    OpenAi,
    Anthropic,
}

impl Shape {
    /// Anthropic's when the request says which Anthropic API version it speaks.
    fn of(headers: &HeaderMap) -> Self {
        if headers.contains_key("anthropic-version") {
            Shape::Anthropic
        } else {
            Shape::OpenAi
        }
    }

    fn error(self, error: ApiError) -> Response {
        match self {
            Shape::OpenAi => error.openai(),
            Shape::Anthropic => error.anthropic(),
        }
    }
}

/// OpenAI's list: `{"object": "list", "data": [...]}`.
#[derive(Serialize)]
struct OpenAiList {
    object: &'static str,
    data: Vec<OpenAiModel>,
}

/// OpenAI's model object, with `alias_of` for an alias.
#[derive(Serialize)]
struct OpenAiModel {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
    /// For an alias: the model it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    alias_of: Option<String>,
}

/// Anthropic's page: `{"data": [...], "has_more", "first_id", "last_id"}` (one page: every
/// model).
#[derive(Serialize)]
struct AnthropicList {
    data: Vec<AnthropicModel>,
    has_more: bool,
    first_id: Option<String>,
    last_id: Option<String>,
}

/// Anthropic's model object, with `alias_of` for an alias.
#[derive(Serialize)]
struct AnthropicModel {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    display_name: String,
    created_at: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias_of: Option<String>,
}

/// A model as the caller may name it: its id and, for an alias, the model it stands for.
struct Entry {
    id: String,
    alias_of: Option<String>,
}

impl Entry {
    fn of(model: &ListedModel) -> Self {
        Self {
            id: model.id.clone(),
            alias_of: model.alias_of.as_ref().map(ToString::to_string),
        }
    }

    fn openai(self) -> OpenAiModel {
        OpenAiModel {
            id: self.id,
            object: "model",
            created: 0,
            owned_by: "poolgate",
            alias_of: self.alias_of,
        }
    }

    fn anthropic(self) -> AnthropicModel {
        AnthropicModel {
            kind: "model",
            display_name: self.id.clone(),
            id: self.id,
            created_at: CREATED_AT,
            alias_of: self.alias_of,
        }
    }

    fn answer(self, shape: Shape) -> Response {
        match shape {
            Shape::OpenAi => axum::Json(self.openai()).into_response(),
            Shape::Anthropic => axum::Json(self.anthropic()).into_response(),
        }
    }
}

/// `GET /v1/models`: the models the caller may use — exactly mapped models of enabled backends,
/// aliases whose model is served, and those models (wildcards serve names not known in
/// advance, so they list nothing of their own).
pub async fn list(State(data): State<DataPlane>, headers: HeaderMap) -> Response {
    let shape = Shape::of(&headers);
    let live = data.live();
    let key = match authenticate_client(&data, &live, &headers) {
        Ok(key) => key,
        Err(error) => return shape.error(error),
    };
    let allowed = allowed_models(key.as_deref());
    let entries = live
        .models
        .iter()
        .filter(|model| may_list(allowed, model))
        .map(Entry::of);
    match shape {
        Shape::OpenAi => axum::Json(OpenAiList {
            object: "list",
            data: entries.map(Entry::openai).collect(),
        })
        .into_response(),
        Shape::Anthropic => {
            let data: Vec<AnthropicModel> = entries.map(Entry::anthropic).collect();
            axum::Json(AnthropicList {
                has_more: false,
                first_id: data.first().map(|model| model.id.clone()),
                last_id: data.last().map(|model| model.id.clone()),
                data,
            })
            .into_response()
        }
    }
}

/// `GET /v1/models/{model}` (the SDKs' `models.retrieve`): one model as `/v1/models` shows it —
/// a listed model or alias, or a name a wildcard mapping serves — if the caller may use it;
/// else 404 `model_not_found`, as OpenAI answers for a model that is not there or not the
/// caller's.
pub async fn one(
    State(data): State<DataPlane>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let shape = Shape::of(&headers);
    let model = match path {
        Ok(Path(model)) => model,
        // Not UTF-8 once percent-decoded: no model has such a name.
        Err(rejection) => {
            let error = ApiError::invalid(format!("invalid model name: {}", rejection.body_text()))
                .with_param("model")
                .with_code("invalid_value");
            return shape.error(error);
        }
    };
    let live = data.live();
    let key = match authenticate_client(&data, &live, &headers) {
        Ok(key) => key,
        Err(error) => return shape.error(error),
    };
    let allowed = allowed_models(key.as_deref());
    if model.len() > MAX_MODEL_NAME_BYTES {
        // No model has such a name (requests naming one are refused): not looked up.
        return not_found(shape, &model);
    }
    let found = match live.models.iter().find(|listed| listed.id == model) {
        Some(listed) => may_list(allowed, listed).then(|| Entry::of(listed)),
        // Served by a wildcard mapping (or by nothing): the name, if it routes and is allowed
        // by its own name or its canonical one (as a request for it would be).
        None => {
            let canonical = live.routes.canonical(&model);
            let may_use = allowed.is_empty()
                || allowed
                    .iter()
                    .any(|m| m.as_str() == model || m.as_str() == canonical.as_str());
            (may_use && live.routes.serves(&model)).then(|| Entry {
                id: model.clone(),
                alias_of: None,
            })
        }
    };
    match found {
        Some(entry) => entry.answer(shape),
        None => not_found(shape, &model),
    }
}

/// 404 `model_not_found`, as OpenAI answers for a model that is not there or not the caller's.
fn not_found(shape: Shape, model: &str) -> Response {
    shape.error(
        ApiError::not_found(
            format!("the model `{model}` does not exist or you do not have access to it"),
            "model_not_found",
        )
        .with_param("model"),
    )
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
