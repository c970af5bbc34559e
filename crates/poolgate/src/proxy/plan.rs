//! What one attempt sends and how its answer comes back: the client's request parsed just far
//! enough to route it ([`Inbound`]), and for a chosen backend the upstream request plus the
//! [`Plan`] that turns the backend's answer (JSON or stream) into what the client speaks.
//! (The Responses API's parts are in [`super::responses`].)

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::error::ProxyError;
use super::responses::{self, ResponsesCallInbound, ResponsesInbound};
use crate::config::ProxySettings;
use crate::domain::{parse_json, ApiKind, BackendRecord, InvalidRequest};
use crate::providers::azure::{self, AzureForm, AzureOperation};
use crate::providers::body::SplicedBody;
use crate::providers::count_tokens::{CountTokensError, CountTokensRequest};
use crate::providers::openai::ParsedRequest;
use crate::providers::responses::{ResponseId, ResponsesCall};
use crate::providers::{
    anthropic, model_and_stream, openai, openai_chat, Endpoint, ProviderError, TokenUsage,
    UpstreamRequest,
};
use crate::routing::affinity::AffinityKey;
use crate::routing::LiveBackend;
use crate::translate::responses::passthrough::ResponseIdHook;
use crate::translate::{
    chat_to_messages, messages_to_chat, AnthropicPassthrough, OpenAiPassthrough, StreamMapper,
    TranslateError, Wire,
};

/// The client's request, parsed far enough to route it. The body is kept as read — the one
/// copy: same-format backends get slices of it, translation parses it per attempt.
pub struct Inbound {
    pub endpoint: Endpoint,
    /// The model asked for (empty for calls on a stored response, which name none).
    pub model: String,
    pub stream: bool,
    /// Sticky routing's key, when sticky routing applies to the request.
    pub affinity: Option<AffinityKey>,
    raw: Bytes,
    form: Form,
}

enum Form {
    OpenAi(ParsedRequest),
    Anthropic {
        envelope: anthropic::Envelope,
        /// The client's `anthropic-version` / `anthropic-beta`, forwarded to Anthropic backends.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Responses(Box<ResponsesInbound>),
    ResponsesCall(ResponsesCallInbound),
    CountTokens {
        request: CountTokensRequest,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// The client's `anthropic-version` / `anthropic-beta`, to forward to Anthropic backends.
fn anthropic_headers(client_headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    ["anthropic-version", "anthropic-beta"]
        .iter()
        .filter_map(|name| {
            let value = client_headers.get(*name)?.clone();
            Some((HeaderName::from_static(name), value))
        })
        .collect()
}

impl Inbound {
    /// The format the client speaks.
    pub fn wire(&self) -> Wire {
        match self.form {
            Form::OpenAi(_) | Form::Responses(_) | Form::ResponsesCall(_) => Wire::OpenAi,
            Form::Anthropic { .. } | Form::CountTokens { .. } => Wire::Anthropic,
        }
    }

    /// The raw body (for affinity keys).
    pub fn body(&self) -> &[u8] {
        &self.raw
    }

    /// The raw body, shared (for the prompt estimate of a stream cut before its usage).
    pub fn raw_bytes(&self) -> Bytes {
        self.raw.clone()
    }

    /// Whether `backend` can serve this request: its endpoint, and for a stateful Responses
    /// request the backend's own Responses API.
    pub fn served_by(&self, backend: &BackendRecord) -> bool {
        self.endpoint.served_by(backend)
            && match &self.form {
                Form::Responses(responses) => {
                    !responses.needs_native() || backend.speaks_responses()
                }
                _ => true,
            }
    }

    /// The response id whose owner must serve this request: `previous_response_id`, or the id
    /// of a call on a stored response.
    pub fn owned_response(&self) -> Option<&str> {
        match &self.form {
            Form::Responses(responses) => responses.envelope.previous_response_id.as_deref(),
            Form::ResponsesCall(call) => call.call.response_id().map(ResponseId::as_str),
            _ => None,
        }
    }

    /// Whether this is a call on a stored response (it names no model).
    pub fn is_response_call(&self) -> bool {
        matches!(self.form, Form::ResponsesCall(_))
    }

    /// Whether the call costs no upstream tokens (a call on a stored response, Anthropic's
    /// `count_tokens`): budgets and spend caps reserve nothing for it and do not refuse it.
    pub fn is_free(&self) -> bool {
        self.is_response_call() || self.endpoint == crate::providers::Endpoint::CountTokens
    }

    /// For a call on a stored response: the call.
    pub fn response_call(&self) -> Option<&ResponsesCall> {
        match &self.form {
            Form::ResponsesCall(call) => Some(&call.call),
            _ => None,
        }
    }

    /// The error when no backend of the model can serve the request at all.
    pub fn none_serves(&self) -> Option<ProxyError> {
        match &self.form {
            Form::Responses(responses) if responses.needs_native() => {
                Some(responses::stateless_only(responses))
            }
            Form::CountTokens { .. } => Some(ProxyError::NotImplemented {
                message: format!(
                    "no Anthropic backend serves the model `{}`: poolgate counts tokens only \
                     by asking an Anthropic upstream",
                    self.model
                ),
            }),
            _ if matches!(self.endpoint, Endpoint::Embeddings | Endpoint::Completions) => {
                Some(ProxyError::InvalidRequest(InvalidRequest::param(
                    format!(
                        "no backend of the model `{}` serves {}: poolgate forwards it only to \
                         OpenAI-compatible backends, and this model's backends speak Anthropic's \
                         Messages API",
                        self.model,
                        self.endpoint.client_path()
                    ),
                    "model",
                    "model_not_supported",
                )))
            }
            _ => None,
        }
    }

    /// Parses a `POST /v1/responses` body.
    pub fn responses(raw: Bytes) -> Result<Inbound, InvalidRequest> {
        let parsed = ResponsesInbound::parse(&raw)?;
        Ok(Inbound {
            endpoint: Endpoint::Responses,
            model: parsed.envelope.model.clone(),
            stream: parsed.envelope.stream(),
            affinity: None,
            raw,
            form: Form::Responses(Box::new(parsed)),
        })
    }

    /// A call on a stored response (no body).
    pub fn responses_call(call: ResponsesCall, query: Option<String>) -> Inbound {
        let endpoint = match call {
            ResponsesCall::Create => Endpoint::Responses,
            ResponsesCall::Retrieve(_) => Endpoint::ResponsesRetrieve,
            ResponsesCall::Delete(_) => Endpoint::ResponsesDelete,
            ResponsesCall::Cancel(_) => Endpoint::ResponsesCancel,
            ResponsesCall::InputItems(_) => Endpoint::ResponsesInputItems,
        };
        let call = ResponsesCallInbound { call, query };
        Inbound {
            endpoint,
            model: String::new(),
            stream: call.streams(),
            affinity: None,
            raw: Bytes::new(),
            form: Form::ResponsesCall(call),
        }
    }

    /// Parses a `/v1/messages/count_tokens` body.
    pub fn count_tokens(raw: Bytes, client_headers: &HeaderMap) -> Result<Inbound, InvalidRequest> {
        let request = CountTokensRequest::parse(&raw).map_err(|error| match error {
            CountTokensError::InvalidBody { message, param } => InvalidRequest {
                message,
                param: param.map(str::to_owned),
                code: Some("invalid_value"),
            },
            CountTokensError::Build => InvalidRequest::new("the request cannot be forwarded"),
        })?;
        Ok(Inbound {
            endpoint: Endpoint::CountTokens,
            model: request.model.clone(),
            stream: false,
            affinity: None,
            raw,
            form: Form::CountTokens {
                request,
                headers: anthropic_headers(client_headers),
            },
        })
    }

    /// Parses an OpenAI-format body.
    pub fn openai(endpoint: Endpoint, raw: Bytes) -> Result<Inbound, InvalidRequest> {
        let parsed = ParsedRequest::parse(endpoint, &raw)?;
        Ok(Inbound {
            endpoint,
            model: parsed.model.clone(),
            stream: parsed.stream,
            affinity: None,
            raw,
            form: Form::OpenAi(parsed),
        })
    }

    /// Parses an Anthropic Messages body.
    pub fn anthropic(raw: Bytes, client_headers: &HeaderMap) -> Result<Inbound, InvalidRequest> {
        let envelope = anthropic::Envelope::parse(&raw)?;
        let (model, stream) = model_and_stream(envelope.model.clone(), envelope.stream.clone())?;
        envelope.check_messages_request(&raw)?;
        let headers = anthropic_headers(client_headers);
        Ok(Inbound {
            endpoint: Endpoint::Messages,
            model,
            stream,
            affinity: None,
            raw,
            form: Form::Anthropic { envelope, headers },
        })
    }
}

/// How the backend's answer becomes the client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// OpenAI → OpenAI; strip the usage chunk poolgate asked for.
    OpenAiPass { strip_usage: bool },
    /// Anthropic → Anthropic.
    AnthropicPass,
    /// OpenAI client, Anthropic backend.
    ChatToMessages { include_usage: bool },
    /// Anthropic client, OpenAI backend.
    MessagesToChat,
    /// Responses client, backend with the Responses API.
    ResponsesPass,
    /// Responses client, Chat Completions backend.
    ResponsesToChat,
    /// Responses client, Anthropic backend.
    ResponsesToMessages,
    /// A call on a stored response (passed through).
    ResponsesCallPass,
    /// `count_tokens`, Anthropic backend.
    CountTokensPass,
}

/// What an OpenAI-format backend is asked for.
pub enum OpenAiCall<'a> {
    Endpoint(Endpoint),
    Responses(&'a ResponsesCall),
}

/// The upstream request of an OpenAI-format call on an `openai` backend (`{base}/…`, bearer key)
/// or an `azure` one (its URL form and `api-version`, `api-key` header; the deployment is the
/// upstream model).
pub fn openai_call(
    backend: &LiveBackend,
    upstream_model: &str,
    call: OpenAiCall<'_>,
    body: SplicedBody,
) -> Result<UpstreamRequest, ProxyError> {
    let record = &backend.record;
    let (base, key) = (&record.api_base_url, &backend.api_key);
    if record.api != ApiKind::Azure {
        let target = &backend.upstream;
        return Ok(match call {
            OpenAiCall::Endpoint(endpoint) => openai::build_request(target, endpoint, body)?,
            OpenAiCall::Responses(call) => {
                crate::providers::responses::build_request(target, call, body)
                    .map_err(ProviderError::from)?
            }
        });
    }
    let azure_error = |error: azure::AzureError| match error {
        azure::AzureError::InvalidKey => ProxyError::from(ProviderError::InvalidKey),
        other => ProxyError::internal(format!("backend `{}`: {other}", record.name)),
    };
    let form = AzureForm::of(base, record.api_version.as_deref()).map_err(azure_error)?;
    let operation = match call {
        OpenAiCall::Endpoint(endpoint) => AzureOperation::from(endpoint),
        OpenAiCall::Responses(call) => AzureOperation::Responses(call.clone()),
    };
    azure::build_request(base, key, &form, upstream_model, &operation, body).map_err(azure_error)
}

/// The upstream request for one backend, and the plan for its answer.
pub fn build(
    inbound: &Inbound,
    backend: &LiveBackend,
    upstream_model: &str,
    settings: &ProxySettings,
) -> Result<(UpstreamRequest, Plan), ProxyError> {
    let target = &backend.upstream;
    let anthropic_default_max_tokens = settings.anthropic_default_max_tokens;
    match (&inbound.form, backend.record.api) {
        (Form::Responses(responses), _) => {
            responses::build(responses, &inbound.raw, backend, upstream_model, settings)
        }
        (Form::ResponsesCall(call), _) => responses::build_call(call, backend, upstream_model),
        (Form::CountTokens { request, headers }, _) => {
            let request = request
                .build(&inbound.raw, target, upstream_model, headers)
                .map_err(|_| ProxyError::from(ProviderError::InvalidKey))?;
            Ok((request, Plan::CountTokensPass))
        }
        (Form::OpenAi(parsed), ApiKind::Openai | ApiKind::Azure) => {
            let inject = parsed.should_inject_usage(settings.inject_stream_usage);
            let body = parsed.upstream_body(&inbound.raw, upstream_model, inject)?;
            let request = openai_call(
                backend,
                upstream_model,
                OpenAiCall::Endpoint(inbound.endpoint),
                body,
            )?;
            Ok((
                request,
                Plan::OpenAiPass {
                    strip_usage: inject,
                },
            ))
        }
        (Form::OpenAi(parsed), ApiKind::Anthropic) => {
            let chat: openai_chat::ChatRequest = parse_json(&inbound.raw)?;
            let messages =
                chat_to_messages::request(chat, upstream_model, anthropic_default_max_tokens)?;
            let body = serde_json::to_vec(&messages).map_err(TranslateError::Encode)?;
            let request = anthropic::build_request(target, SplicedBody::whole(body.into()), &[])?;
            Ok((
                request,
                Plan::ChatToMessages {
                    include_usage: parsed.client_wants_usage,
                },
            ))
        }
        (Form::Anthropic { envelope, headers }, ApiKind::Anthropic) => {
            let body = envelope.passthrough_body(&inbound.raw, upstream_model, inbound.stream)?;
            let request = anthropic::build_request(target, body, headers)?;
            Ok((request, Plan::AnthropicPass))
        }
        (Form::Anthropic { .. }, ApiKind::Openai | ApiKind::Azure) => {
            let messages: anthropic::MessagesRequest = parse_json(&inbound.raw)?;
            let chat = messages_to_chat::request(messages, upstream_model);
            let body = serde_json::to_vec(&chat).map_err(TranslateError::Encode)?;
            let request = openai_call(
                backend,
                upstream_model,
                OpenAiCall::Endpoint(Endpoint::ChatCompletions),
                SplicedBody::whole(body.into()),
            )?;
            Ok((request, Plan::MessagesToChat))
        }
    }
}

/// A backend's answer in the client's format.
pub struct Answer {
    pub body: Bytes,
    pub usage: Option<TokenUsage>,
    /// The id of a Response object a backend with the Responses API made (for affinity).
    pub response_id: Option<String>,
}

impl Answer {
    fn new(body: Bytes, usage: Option<TokenUsage>) -> Self {
        Answer {
            body,
            usage,
            response_id: None,
        }
    }
}

impl Plan {
    /// The format the backend answers in (errors included).
    pub fn upstream_wire(self) -> Wire {
        match self {
            Plan::OpenAiPass { .. }
            | Plan::MessagesToChat
            | Plan::ResponsesPass
            | Plan::ResponsesToChat
            | Plan::ResponsesCallPass => Wire::OpenAi,
            Plan::AnthropicPass
            | Plan::ChatToMessages { .. }
            | Plan::ResponsesToMessages
            | Plan::CountTokensPass => Wire::Anthropic,
        }
    }

    /// The format the client speaks (errors included).
    pub fn client_wire(self) -> Wire {
        match self {
            Plan::OpenAiPass { .. }
            | Plan::ChatToMessages { .. }
            | Plan::ResponsesPass
            | Plan::ResponsesToChat
            | Plan::ResponsesToMessages
            | Plan::ResponsesCallPass => Wire::OpenAi,
            Plan::AnthropicPass | Plan::MessagesToChat | Plan::CountTokensPass => Wire::Anthropic,
        }
    }

    /// Whether the client gets the backend's own bytes (its content type kept).
    pub fn passes_through(self) -> bool {
        matches!(
            self,
            Plan::OpenAiPass { .. }
                | Plan::AnthropicPass
                | Plan::ResponsesPass
                | Plan::ResponsesCallPass
                | Plan::CountTokensPass
        )
    }

    /// Turns a JSON answer into the client's format; Err if the backend's JSON is not what its
    /// API promises (a backend fault, worth another candidate).
    pub fn translate_json(self, inbound: &Inbound, body: Bytes) -> Result<Answer, TranslateError> {
        match self {
            Plan::OpenAiPass { .. } => {
                let usage = openai::usage_of_body(&body);
                Ok(Answer::new(body, usage))
            }
            Plan::AnthropicPass => {
                let usage = anthropic::usage_of_body(&body);
                Ok(Answer::new(body, usage))
            }
            Plan::ResponsesPass => {
                let (response_id, usage) = responses::pass_json(&body);
                Ok(Answer {
                    body,
                    usage,
                    response_id,
                })
            }
            Plan::ResponsesCallPass | Plan::CountTokensPass => Ok(Answer::new(body, None)),
            Plan::ResponsesToChat | Plan::ResponsesToMessages => {
                let Form::Responses(request) = &inbound.form else {
                    return Err(TranslateError::Unsupported(InvalidRequest::new(
                        "not a Responses request",
                    )));
                };
                let (body, usage) = responses::translate_json(self, request, &inbound.raw, &body)?;
                Ok(Answer::new(body, usage))
            }
            Plan::ChatToMessages { .. } => {
                let message: anthropic::MessagesResponse =
                    serde_json::from_slice(&body).map_err(|source| {
                        TranslateError::UnexpectedAnswer {
                            what: "Messages response",
                            source,
                        }
                    })?;
                let usage = message.usage.token_usage();
                let created = chrono::Utc::now().timestamp();
                let completion = chat_to_messages::response(message, created);
                let bytes = serde_json::to_vec(&completion)?;
                Ok(Answer::new(Bytes::from(bytes), Some(usage)))
            }
            Plan::MessagesToChat => {
                let completion: openai_chat::ChatCompletion = serde_json::from_slice(&body)
                    .map_err(|source| TranslateError::UnexpectedAnswer {
                        what: "chat completion",
                        source,
                    })?;
                let message = messages_to_chat::response(completion);
                let usage = message.usage.token_usage();
                let bytes = serde_json::to_vec(&message)?;
                Ok(Answer::new(Bytes::from(bytes), Some(usage)))
            }
        }
    }

    /// The event mapper for a streamed answer; `on_response_id` learns the id of a Response a
    /// backend with the Responses API announces.
    pub fn stream_mapper(
        self,
        inbound: &Inbound,
        on_response_id: Option<ResponseIdHook>,
    ) -> Box<dyn StreamMapper> {
        match self {
            Plan::ResponsesPass
            | Plan::ResponsesToChat
            | Plan::ResponsesToMessages
            | Plan::ResponsesCallPass
            | Plan::CountTokensPass => {
                let request = match &inbound.form {
                    Form::Responses(request) => Some(&**request),
                    _ => None,
                };
                responses::stream_mapper(self, request, &inbound.raw, on_response_id)
            }
            Plan::OpenAiPass { strip_usage } => Box::new(OpenAiPassthrough::new(strip_usage)),
            Plan::AnthropicPass => Box::new(AnthropicPassthrough::default()),
            Plan::ChatToMessages { include_usage } => {
                Box::new(chat_to_messages::AnthropicToOpenAiStream::new(
                    include_usage,
                    chrono::Utc::now().timestamp(),
                ))
            }
            Plan::MessagesToChat => Box::new(messages_to_chat::OpenAiToAnthropicStream::new()),
        }
    }
}
