//! The OpenAI Responses API wire format: typed request ([`request`]), Response object
//! ([`response`]) and stream events ([`events`]), plus what pass-through to a Responses-capable
//! backend needs — the routing facts of a request ([`ResponsesEnvelope`]: model, stream, the
//! stateful features it uses), its body with the upstream model id spliced in, the upstream URL
//! and method of each call ([`ResponsesCall`]), and the usage and response id of an answer.

pub mod events;
pub mod request;
pub mod response;
pub mod tagged;

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::Value;

use super::body::{SplicedBody, TopLevel};
use super::target::UpstreamTarget;
use super::{openai, Endpoint, UpstreamRequest};
pub use events::{SequencedEvent, StreamEvent};
pub use request::ResponsesRequest;
pub use response::{Response, ResponseUsage};

/// What can be wrong with a Responses request body or call, before anything is sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponsesWireError {
    /// 400: the body is not a valid Responses request; `param` is the JSON path when known.
    #[error("{message}")]
    InvalidBody {
        message: String,
        param: Option<String>,
        /// The OpenAI error code (`missing_required_parameter`, `duplicate_parameter`, …).
        code: &'static str,
    },
    /// 400/404: a response id that cannot be one (it would be put into the upstream URL).
    #[error("`{0}` is not a valid response id")]
    InvalidResponseId(String),
    /// 500: the backend's key cannot be sent as a header.
    #[error("upstream key is not a valid header value")]
    InvalidKey,
    /// 500.
    #[error("cannot encode the upstream body: {0}")]
    Encode(String),
}

// === the request envelope (pass-through) ===

/// A client's `POST /v1/responses` body, parsed just far enough to route it; every other field
/// passes through untouched.
#[derive(Debug, Deserialize)]
pub struct ResponsesEnvelope {
    /// Absent reads as empty, refused below as missing (as the other endpoints say it).
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// A stored prompt template (stateful).
    #[serde(default)]
    pub prompt: Option<Value>,
    /// Where `model` lies in the client's body (the rest passes through as sent).
    #[serde(skip)]
    top: TopLevel,
}

/// A stateful feature a request uses: it can only be served by a Responses-capable backend
/// (and, for ids, only by the one that made them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stateful {
    /// `previous_response_id`.
    PreviousResponse,
    /// `store: true` (sent explicitly: the client means to read the response back).
    Store,
    /// `background: true`.
    Background,
    /// `conversation`.
    Conversation,
    /// `prompt` (a stored prompt template).
    Prompt,
    /// An `item_reference` input item.
    ItemReference,
}

impl Stateful {
    /// The request field that uses the feature.
    pub fn param(self) -> &'static str {
        match self {
            Stateful::PreviousResponse => "previous_response_id",
            Stateful::Store => "store",
            Stateful::Background => "background",
            Stateful::Conversation => "conversation",
            Stateful::Prompt => "prompt",
            Stateful::ItemReference => "input",
        }
    }
}

impl ResponsesWireError {
    /// A refusal of the shared request checks, with its field and code.
    fn from_invalid(error: crate::domain::InvalidRequest) -> Self {
        ResponsesWireError::InvalidBody {
            message: error.message,
            param: error.param,
            code: error.code.unwrap_or("invalid_value"),
        }
    }
}

impl ResponsesEnvelope {
    /// Parses a client body; errors name the offending field.
    pub fn parse(body: &[u8]) -> Result<ResponsesEnvelope, ResponsesWireError> {
        let deserializer = &mut serde_json::Deserializer::from_slice(body);
        let envelope: ResponsesEnvelope =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.inner();
                if inner.is_syntax() || inner.is_eof() {
                    // Not JSON: no parameter to name (the path would be a guess, `?`), as on
                    // the other endpoints.
                    return ResponsesWireError::InvalidBody {
                        message: format!("request body is not valid JSON: {inner}"),
                        param: None,
                        code: "invalid_value",
                    };
                }
                // A duplicated `model` is said as on the other endpoints, not as serde says it.
                if let Err(invalid) = TopLevel::parse(body, &["model"]) {
                    return ResponsesWireError::from_invalid(invalid);
                }
                ResponsesWireError::InvalidBody {
                    message: format!("invalid Responses request: {inner}"),
                    param: (path != ".").then_some(path),
                    code: "invalid_value",
                }
            })?;
        let mut envelope = envelope;
        envelope.top =
            TopLevel::parse(body, &["model"]).map_err(ResponsesWireError::from_invalid)?;
        if envelope.model.is_empty() {
            return Err(ResponsesWireError::InvalidBody {
                message: "you must provide a `model` parameter".to_owned(),
                param: Some("model".to_owned()),
                code: "missing_required_parameter",
            });
        }
        crate::domain::check_model_name_length(&envelope.model)
            .map_err(ResponsesWireError::from_invalid)?;
        Ok(envelope)
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The stateful features this request uses (`item_reference` items are found only when the
    /// input is translated).
    pub fn stateful_features(&self) -> Vec<Stateful> {
        let mut features = Vec::new();
        if self.previous_response_id.is_some() {
            features.push(Stateful::PreviousResponse);
        }
        if self.store == Some(true) {
            features.push(Stateful::Store);
        }
        if self.background == Some(true) {
            features.push(Stateful::Background);
        }
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            features.push(Stateful::Conversation);
        }
        if self.prompt.as_ref().is_some_and(|p| !p.is_null()) {
            features.push(Stateful::Prompt);
        }
        features
    }

    /// The body for a Responses-capable backend: the client's `raw` body (which this envelope
    /// was parsed from) with the upstream model id — slices of `raw` around it, not a copy.
    pub fn upstream_body(
        &self,
        raw: &Bytes,
        upstream_model: &str,
    ) -> Result<SplicedBody, ResponsesWireError> {
        let model = serde_json::to_vec(upstream_model)
            .map_err(|error| ResponsesWireError::Encode(error.to_string()))?;
        let edits = self
            .top
            .span("model")
            .map(|span| (span, Bytes::from(model)))
            .into_iter()
            .collect();
        Ok(SplicedBody::splice(raw, edits))
    }
}

// === calls ===

/// A response id, checked to be safe inside an upstream URL path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResponseId(String);

impl ResponseId {
    /// 1–256 characters of ASCII letters, digits, `_` and `-` (OpenAI's `resp_…`, Azure's too).
    pub fn parse(text: &str) -> Result<ResponseId, ResponsesWireError> {
        let valid = !text.is_empty()
            && text.len() <= 256
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(ResponseId(text.to_owned()))
        } else {
            Err(ResponsesWireError::InvalidResponseId(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ResponseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Responses API calls poolgate forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponsesCall {
    /// `POST /responses`.
    Create,
    /// `GET /responses/{id}`.
    Retrieve(ResponseId),
    /// `DELETE /responses/{id}`.
    Delete(ResponseId),
    /// `POST /responses/{id}/cancel`.
    Cancel(ResponseId),
    /// `GET /responses/{id}/input_items`.
    InputItems(ResponseId),
}

impl ResponsesCall {
    pub fn method(&self) -> Method {
        match self {
            ResponsesCall::Create | ResponsesCall::Cancel(_) => Method::POST,
            ResponsesCall::Retrieve(_) | ResponsesCall::InputItems(_) => Method::GET,
            ResponsesCall::Delete(_) => Method::DELETE,
        }
    }

    /// The path below an OpenAI-compatible base URL (`…/v1`).
    pub fn path(&self) -> String {
        match self {
            ResponsesCall::Create => "/responses".to_owned(),
            ResponsesCall::Retrieve(id) | ResponsesCall::Delete(id) => format!("/responses/{id}"),
            ResponsesCall::Cancel(id) => format!("/responses/{id}/cancel"),
            ResponsesCall::InputItems(id) => format!("/responses/{id}/input_items"),
        }
    }

    /// The response id the call is about: the key for response affinity.
    pub fn response_id(&self) -> Option<&ResponseId> {
        match self {
            ResponsesCall::Create => None,
            ResponsesCall::Retrieve(id)
            | ResponsesCall::Delete(id)
            | ResponsesCall::Cancel(id)
            | ResponsesCall::InputItems(id) => Some(id),
        }
    }
}

/// Builds the upstream request for an OpenAI-compatible backend with the Responses API (bearer
/// auth as for every OpenAI call). `body` is empty for `GET` / `DELETE`.
pub fn build_request(
    target: &UpstreamTarget,
    call: &ResponsesCall,
    body: SplicedBody,
) -> Result<UpstreamRequest, ResponsesWireError> {
    // Same headers as every OpenAI call; only the method and URL differ.
    let mut request = openai::build_request(target, Endpoint::ChatCompletions, body)
        .map_err(|_| ResponsesWireError::InvalidKey)?;
    request.url = target.url(&call.path());
    request.method = call.method();
    Ok(request)
}

// === reading answers ===

/// What poolgate reads from a Response object: its id (for affinity), usage, and what a
/// failure event written in its place needs (model, creation time).
#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct ResponseSummary {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub usage: Option<ResponseUsage>,
    #[serde(default)]
    pub model: Option<String>,
    /// Seconds; a float in the SDK's type, an integer on the wire.
    #[serde(default)]
    pub created_at: Option<f64>,
}

/// The id and usage of a JSON Response object.
pub fn summary_of_body(body: &[u8]) -> Option<ResponseSummary> {
    serde_json::from_slice(body).ok()
}

#[derive(Deserialize)]
struct LifecycleEvent {
    response: ResponseSummary,
}

/// The id and usage carried by a lifecycle event's `data` (`response.created`,
/// `response.completed`, …).
pub fn summary_of_event(data: &str) -> Option<ResponseSummary> {
    serde_json::from_str::<LifecycleEvent>(data)
        .ok()
        .map(|event| event.response)
}

/// The `type` of a stream event's `data`, read from the start of the JSON without parsing all
/// of it (OpenAI also sends it as the SSE `event:` name; this is for upstreams that do not).
pub fn event_type(data: &str) -> Option<&str> {
    let after = data.split_once("\"type\"")?.1.trim_start();
    let value = after.strip_prefix(':')?.trim_start().strip_prefix('"')?;
    value.split_once('"').map(|(kind, _)| kind)
}

/// The `sequence_number` of a stream event's `data`, without parsing all of it.
pub fn sequence_number(data: &str) -> Option<u64> {
    let after = data.rsplit_once("\"sequence_number\"")?.1.trim_start();
    let digits = after.strip_prefix(':')?.trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests;
