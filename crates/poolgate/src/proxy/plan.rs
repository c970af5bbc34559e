//! What one attempt sends and how its answer comes back: the client's request parsed just far
//! enough to route it ([`Inbound`]), and for a chosen backend the upstream request plus the
//! [`Plan`] that turns the backend's answer (JSON or stream) into what the client speaks.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::error::ProxyError;
use crate::domain::{parse_json, ApiKind, InvalidRequest};
use crate::providers::body::SplicedBody;
use crate::providers::openai::ParsedRequest;
use crate::providers::{
    anthropic, model_and_stream, openai, openai_chat, Endpoint, TokenUsage, UpstreamRequest,
};
use crate::translate::{
    chat_to_messages, messages_to_chat, AnthropicPassthrough, OpenAiPassthrough, StreamMapper,
    TranslateError, Wire,
};

/// The client's request, parsed far enough to route it. The body is kept as read — the one
/// copy: same-format backends get slices of it, translation parses it per attempt.
pub struct Inbound {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
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
}

impl Inbound {
    /// The format the client speaks.
    pub fn wire(&self) -> Wire {
        match self.form {
            Form::OpenAi(_) => Wire::OpenAi,
            Form::Anthropic { .. } => Wire::Anthropic,
        }
    }

    /// Parses an OpenAI-format body.
    pub fn openai(endpoint: Endpoint, raw: Bytes) -> Result<Inbound, InvalidRequest> {
        let parsed = ParsedRequest::parse(endpoint, &raw)?;
        Ok(Inbound {
            endpoint,
            model: parsed.model.clone(),
            stream: parsed.stream,
            raw,
            form: Form::OpenAi(parsed),
        })
    }

    /// Parses an Anthropic Messages body.
    pub fn anthropic(raw: Bytes, client_headers: &HeaderMap) -> Result<Inbound, InvalidRequest> {
        let envelope = anthropic::Envelope::parse(&raw)?;
        let (model, stream) = model_and_stream(envelope.model.clone(), envelope.stream.clone())?;
        let headers = ["anthropic-version", "anthropic-beta"]
            .iter()
            .filter_map(|name| {
                let value = client_headers.get(*name)?.clone();
                Some((HeaderName::from_static(name), value))
            })
            .collect();
        Ok(Inbound {
            endpoint: Endpoint::Messages,
            model,
            stream,
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
}

/// The upstream request for one backend, and the plan for its answer.
pub fn build(
    inbound: &Inbound,
    api: ApiKind,
    base_url: &str,
    api_key: &secrecy::SecretString,
    upstream_model: &str,
    inject_stream_usage: bool,
    anthropic_default_max_tokens: u32,
) -> Result<(UpstreamRequest, Plan), ProxyError> {
    match (&inbound.form, api) {
        (Form::OpenAi(parsed), ApiKind::Openai) => {
            let inject = parsed.should_inject_usage(inject_stream_usage);
            let body = parsed.upstream_body(&inbound.raw, upstream_model, inject)?;
            let request = openai::build_request(base_url, api_key, inbound.endpoint, body)?;
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
            let request =
                anthropic::build_request(base_url, api_key, SplicedBody::whole(body.into()), &[])?;
            Ok((
                request,
                Plan::ChatToMessages {
                    include_usage: parsed.client_wants_usage,
                },
            ))
        }
        (Form::Anthropic { envelope, headers }, ApiKind::Anthropic) => {
            let body = envelope.passthrough_body(&inbound.raw, upstream_model, inbound.stream)?;
            let request = anthropic::build_request(base_url, api_key, body, headers)?;
            Ok((request, Plan::AnthropicPass))
        }
        (Form::Anthropic { .. }, ApiKind::Openai) => {
            let messages: anthropic::MessagesRequest = parse_json(&inbound.raw)?;
            let chat = messages_to_chat::request(messages, upstream_model);
            let body = serde_json::to_vec(&chat).map_err(TranslateError::Encode)?;
            let request = openai::build_request(
                base_url,
                api_key,
                Endpoint::ChatCompletions,
                SplicedBody::whole(body.into()),
            )?;
            Ok((request, Plan::MessagesToChat))
        }
    }
}

impl Plan {
    /// The format the backend answers in.
    pub fn upstream_wire(self) -> Wire {
        match self {
            Plan::OpenAiPass { .. } | Plan::MessagesToChat => Wire::OpenAi,
            Plan::AnthropicPass | Plan::ChatToMessages { .. } => Wire::Anthropic,
        }
    }

    /// The format the client speaks.
    pub fn client_wire(self) -> Wire {
        match self {
            Plan::OpenAiPass { .. } | Plan::ChatToMessages { .. } => Wire::OpenAi,
            Plan::AnthropicPass | Plan::MessagesToChat => Wire::Anthropic,
        }
    }

    /// Turns a JSON answer into the client's format; Err if the backend's JSON is not what its
    /// API promises (a backend fault, worth another candidate).
    pub fn translate_json(
        self,
        body: Bytes,
    ) -> Result<(Bytes, Option<TokenUsage>), TranslateError> {
        let created = chrono::Utc::now().timestamp();
        match self {
            Plan::OpenAiPass { .. } => {
                let usage = openai::usage_of_body(&body);
                Ok((body, usage))
            }
            Plan::AnthropicPass => {
                let usage = anthropic::usage_of_body(&body);
                Ok((body, usage))
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
                let completion = chat_to_messages::response(message, created);
                let bytes = serde_json::to_vec(&completion)?;
                Ok((Bytes::from(bytes), Some(usage)))
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
                Ok((Bytes::from(bytes), Some(usage)))
            }
        }
    }

    /// The event mapper for a streamed answer.
    pub fn stream_mapper(self) -> Box<dyn StreamMapper> {
        match self {
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
