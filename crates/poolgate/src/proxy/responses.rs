//! The Responses API in the pipeline: what a `POST /v1/responses` body (or a call on a stored
//! response) is for routing, the upstream request for the chosen backend — pass-through to a
//! backend with the Responses API, translation to Chat Completions or Messages otherwise — and
//! how its answer comes back ([`super::Plan`]'s Responses arms call in here).

use std::sync::OnceLock;

use bytes::Bytes;

use super::error::ProxyError;
use super::plan::{openai_call, OpenAiCall, Plan};
use crate::config::ProxySettings;
use crate::domain::{ApiKind, InvalidRequest};
use crate::providers::body::SplicedBody;
use crate::providers::responses::{
    summary_of_body, ResponseId, ResponsesCall, ResponsesEnvelope, ResponsesRequest,
    ResponsesWireError, Stateful,
};
use crate::providers::{anthropic, ProviderError, TokenUsage, UpstreamRequest};
use crate::routing::LiveBackend;
use crate::translate::responses::passthrough::{ResponseIdHook, ResponsesPassthrough};
use crate::translate::responses::request::{to_chat, to_messages};
use crate::translate::responses::response::{from_chat_body, from_messages_body};
use crate::translate::responses::stream::{ChatToResponsesStream, MessagesToResponsesStream};
use crate::translate::responses::{echo, new_response_id, ResponsesError};
use crate::translate::{StreamMapper, TranslateError};

/// A `POST /v1/responses` request.
pub struct ResponsesInbound {
    pub envelope: ResponsesEnvelope,
    /// The typed request, parsed once when a backend needs translation.
    typed: OnceLock<Result<ResponsesRequest, InvalidRequest>>,
    /// The id and creation time of the Response object poolgate builds when it translates.
    translated_id: String,
    created_at: i64,
}

/// A call on a stored response (`GET` / `DELETE` / `cancel` / `input_items`).
pub struct ResponsesCallInbound {
    pub call: ResponsesCall,
    /// The client's query string (`include[]`, `stream`, `after`, …), passed on.
    pub query: Option<String>,
}

impl From<ResponsesWireError> for InvalidRequest {
    fn from(error: ResponsesWireError) -> Self {
        match error {
            ResponsesWireError::InvalidBody {
                message,
                param,
                code,
            } => InvalidRequest {
                message,
                param,
                code: Some(code),
            },
            ResponsesWireError::InvalidResponseId(id) => InvalidRequest::param(
                format!("`{id}` is not a valid response id"),
                "previous_response_id",
                "invalid_value",
            ),
            other => InvalidRequest::new(other.to_string()),
        }
    }
}

impl From<ResponsesError> for InvalidRequest {
    fn from(error: ResponsesError) -> Self {
        InvalidRequest {
            message: error.to_string(),
            param: Some(error.param().to_owned()),
            code: Some(error.code()),
        }
    }
}

impl ResponsesInbound {
    /// Parses a `POST /v1/responses` body far enough to route it.
    pub fn parse(raw: &[u8]) -> Result<ResponsesInbound, InvalidRequest> {
        let envelope = ResponsesEnvelope::parse(raw)?;
        if let Some(previous) = &envelope.previous_response_id {
            ResponseId::parse(previous)?;
        }
        Ok(ResponsesInbound {
            envelope,
            typed: OnceLock::new(),
            translated_id: new_response_id(),
            created_at: chrono::Utc::now().timestamp(),
        })
    }

    /// Whether only a backend with the Responses API can serve it: it uses a stateful feature.
    pub fn needs_native(&self) -> bool {
        !self.envelope.stateful_features().is_empty()
    }

    /// The first stateful feature used, for the 400 when no backend could serve it.
    pub fn stateful_error(&self) -> Option<ResponsesError> {
        self.envelope
            .stateful_features()
            .first()
            .map(|&feature| ResponsesError::Stateful { feature })
    }

    fn typed(&self, raw: &[u8]) -> Result<&ResponsesRequest, InvalidRequest> {
        self.typed
            .get_or_init(|| crate::domain::parse_json(raw))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ResponsesCallInbound {
    /// Whether a `GET` asked for the response's events (`?stream=true`).
    pub fn streams(&self) -> bool {
        matches!(self.call, ResponsesCall::Retrieve(_))
            && self.query.as_deref().is_some_and(|query| {
                query
                    .split('&')
                    .any(|pair| pair.eq_ignore_ascii_case("stream=true"))
            })
    }
}

fn provider(error: ResponsesWireError) -> ProxyError {
    match error {
        ResponsesWireError::InvalidBody { .. } | ResponsesWireError::InvalidResponseId(_) => {
            ProxyError::InvalidRequest(error.into())
        }
        other => ProxyError::internal(other),
    }
}

/// The upstream request of a `POST /v1/responses` for one backend, and the plan for its answer.
pub fn build(
    inbound: &ResponsesInbound,
    raw: &Bytes,
    backend: &LiveBackend,
    upstream_model: &str,
    settings: &ProxySettings,
) -> Result<(UpstreamRequest, Plan), ProxyError> {
    let record = &backend.record;
    if record.speaks_responses() {
        let body = inbound
            .envelope
            .upstream_body(raw, upstream_model)
            .map_err(provider)?;
        let request = openai_call(
            backend,
            upstream_model,
            OpenAiCall::Responses(&ResponsesCall::Create),
            body,
        )?;
        return Ok((request, Plan::ResponsesPass));
    }
    let typed = inbound.typed(raw)?;
    if record.api == ApiKind::Anthropic {
        let messages = to_messages(typed, upstream_model, settings.anthropic_default_max_tokens)
            .map_err(InvalidRequest::from)?;
        let body = serde_json::to_vec(&messages).map_err(TranslateError::Encode)?;
        let request = anthropic::build_request(
            &backend.upstream,
            SplicedBody::whole(Bytes::from(body)),
            &[],
        )?;
        return Ok((request, Plan::ResponsesToMessages));
    }
    let chat = to_chat(typed, upstream_model).map_err(InvalidRequest::from)?;
    let body = serde_json::to_vec(&chat).map_err(TranslateError::Encode)?;
    let request = openai_call(
        backend,
        upstream_model,
        OpenAiCall::Endpoint(crate::providers::Endpoint::ChatCompletions),
        SplicedBody::whole(Bytes::from(body)),
    )?;
    Ok((request, Plan::ResponsesToChat))
}

/// The upstream request of a call on a stored response (always a pass-through).
pub fn build_call(
    inbound: &ResponsesCallInbound,
    backend: &LiveBackend,
    upstream_model: &str,
) -> Result<(UpstreamRequest, Plan), ProxyError> {
    let mut request = openai_call(
        backend,
        upstream_model,
        OpenAiCall::Responses(&inbound.call),
        SplicedBody::whole(Bytes::new()),
    )?;
    if let Some(query) = inbound.query.as_deref().filter(|q| !q.is_empty()) {
        let url = request.url.as_str();
        let separator = if url.contains('?') { '&' } else { '?' };
        request.url = format!("{url}{separator}{query}").into();
    }
    if request.method != http::Method::POST {
        request.headers.remove(http::header::CONTENT_TYPE);
    }
    Ok((request, Plan::ResponsesCallPass))
}

/// A translated answer's Response object from the backend's JSON.
pub fn translate_json(
    plan: Plan,
    inbound: &ResponsesInbound,
    raw: &[u8],
    body: &[u8],
) -> Result<(Bytes, Option<TokenUsage>), TranslateError> {
    let echo = inbound
        .typed(raw)
        .map(echo)
        .map_err(TranslateError::Unsupported)?;
    let id = inbound.translated_id.clone();
    let response = match plan {
        Plan::ResponsesToMessages => from_messages_body(body, echo, id, inbound.created_at),
        _ => from_chat_body(body, echo, id, inbound.created_at),
    }
    .map_err(|source| TranslateError::UnexpectedAnswer {
        what: if plan == Plan::ResponsesToMessages {
            "Messages response"
        } else {
            "chat completion"
        },
        source,
    })?;
    let usage = response.usage.map(|usage| usage.token_usage());
    Ok((Bytes::from(serde_json::to_vec(&response)?), usage))
}

/// The id and usage of a passed-through Response object.
pub fn pass_json(body: &[u8]) -> (Option<String>, Option<TokenUsage>) {
    match summary_of_body(body) {
        Some(summary) => (summary.id, summary.usage.map(|u| u.token_usage())),
        None => (None, None),
    }
}

/// The stream mapper of a Responses plan; `on_response_id` learns the id a pass-through stream
/// announces in `response.created`.
pub fn stream_mapper(
    plan: Plan,
    inbound: Option<&ResponsesInbound>,
    raw: &[u8],
    on_response_id: Option<ResponseIdHook>,
) -> Box<dyn StreamMapper> {
    let translated = |inbound: &ResponsesInbound| {
        let echo = inbound.typed(raw).map(echo).unwrap_or_default();
        (inbound.translated_id.clone(), echo, inbound.created_at)
    };
    match (plan, inbound) {
        (Plan::ResponsesToChat, Some(inbound)) => {
            let (id, echo, created) = translated(inbound);
            Box::new(ChatToResponsesStream::new(id, echo, created))
        }
        (Plan::ResponsesToMessages, Some(inbound)) => {
            let (id, echo, created) = translated(inbound);
            Box::new(MessagesToResponsesStream::new(id, echo, created))
        }
        (Plan::ResponsesCallPass, _) => Box::new(ResponsesPassthrough::new().without_usage()),
        _ => {
            let mapper = ResponsesPassthrough::new();
            Box::new(match on_response_id {
                Some(hook) => mapper.with_response_id_hook(hook),
                None => mapper,
            })
        }
    }
}

/// The 400 for a stateful request no Responses-capable backend of its model could take.
pub fn stateless_only(inbound: &ResponsesInbound) -> ProxyError {
    let error = inbound
        .stateful_error()
        .unwrap_or(ResponsesError::Stateful {
            feature: Stateful::PreviousResponse,
        });
    ProxyError::InvalidRequest(error.into())
}

impl From<ResponsesWireError> for ProviderError {
    fn from(error: ResponsesWireError) -> Self {
        match error {
            ResponsesWireError::InvalidKey => ProviderError::InvalidKey,
            ResponsesWireError::InvalidBody { .. } | ResponsesWireError::InvalidResponseId(_) => {
                ProviderError::InvalidRequest(error.into())
            }
            ResponsesWireError::Encode(detail) => ProviderError::Internal(detail),
        }
    }
}
