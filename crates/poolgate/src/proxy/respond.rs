//! Phase **relay**: turning a backend's answer into the client's. A 2xx JSON answer is read whole
//! (at most `proxy.max_response_bytes`) and translated; a 2xx stream holds back its content-free
//! leading events until the first one with content ([`super::holdback`], still inside the
//! time-to-first-byte budget, so a stream that dies after its role chunk can fail over) and is
//! then relayed event by event; an upstream 4xx that is the request's own fault is relayed
//! with the backend's key scrubbed out of its body and headers.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::attempt::{resolve, Done};
use super::billing::Billing;
use super::classify::{ErrorAnswer, Failure};
use super::error::ProxyError;
use super::holdback::{hold_leading_events, LeadFormat};
use super::plan::{Inbound, Plan};
use super::record::UsageDraft;
use super::relay::{RelayStream, StreamFinisher};
use super::{ProxyBody, ProxyResponse};
use crate::cooldown::Outcome as UpstreamOutcome;
use crate::domain::Outcome;
use crate::providers::{answered_model, Endpoint};
use crate::routing::affinity::ResponseOwner;
use crate::routing::Ticket;
use crate::scrub::KeyScrubber;
use crate::state::DataPlane;
use crate::translate::convert_error_body;
use crate::translate::responses::passthrough::ResponseIdHook;
use crate::upstream::{UpstreamError, UpstreamResponse};

/// Who made a response: this attempt's backend, for this request's caller.
fn owner_of(ticket: &Ticket, draft: &UsageDraft) -> ResponseOwner {
    ResponseOwner {
        backend: ticket.backend.id().clone(),
        caller: draft
            .record
            .client_key_id
            .clone()
            .unwrap_or_else(|| "admin".to_owned()),
    }
}

/// Remembers the owner of a response a stream announces, as soon as it does (a client may read
/// or cancel it while the stream still runs).
fn owner_hook(data: &DataPlane, ticket: &Ticket, draft: &UsageDraft) -> ResponseIdHook {
    let affinity = std::sync::Arc::clone(&data.affinity);
    let owner = owner_of(ticket, draft);
    Box::new(move |id: &str| affinity.remember_response(id, owner.clone()))
}

/// Response affinity after a JSON answer: a new response's owner is remembered, a deleted
/// response's forgotten.
fn remember_response(
    data: &DataPlane,
    inbound: &Inbound,
    ticket: &Ticket,
    draft: &UsageDraft,
    made: Option<&str>,
) {
    if let Some(id) = made {
        data.affinity.remember_response(id, owner_of(ticket, draft));
    }
    if inbound.endpoint == Endpoint::ResponsesDelete {
        if let Some(id) = inbound.owned_response() {
            data.affinity.forget_response(id);
        }
    }
}

/// The most of an upstream error body poolgate reads (error bodies are short; a longer one is
/// not an error message).
const MAX_ERROR_BODY_BYTES: usize = 1024 * 1024;

/// Why an upstream body could not be read whole.
pub enum BodyError {
    /// Larger than the limit (declared or seen).
    TooLarge,
    Failed(UpstreamError),
}

/// Reads an upstream body whole, refusing it as soon as it is known to exceed `limit` bytes (a
/// declared `Content-Length` over the limit is refused before reading).
pub async fn read_capped(mut response: UpstreamResponse, limit: usize) -> Result<Bytes, BodyError> {
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    let declared = response.content_length();
    if declared.is_some_and(|length| length > limit_u64) {
        return Err(BodyError::TooLarge);
    }
    let first = match response.chunk().await.map_err(BodyError::Failed)? {
        None => return Ok(Bytes::new()),
        Some(chunk) => chunk,
    };
    let Some(second) = response.chunk().await.map_err(BodyError::Failed)? else {
        // One chunk (the usual case): no copy.
        return if first.len() > limit {
            Err(BodyError::TooLarge)
        } else {
            Ok(first)
        };
    };
    let capacity = declared
        .and_then(|length| usize::try_from(length).ok())
        .unwrap_or(first.len() + second.len())
        .min(limit);
    let mut body = BytesMut::with_capacity(capacity);
    let mut next = Some(second);
    body.extend_from_slice(&first);
    while let Some(chunk) = next {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
        next = response.chunk().await.map_err(BodyError::Failed)?;
    }
    Ok(body.freeze())
}

/// Why an upstream error body could not be read.
pub enum ErrorBodyError {
    Timeout,
    TooLarge,
    Failed(UpstreamError),
}

/// Reads an upstream error body: at most `limit` bytes (of `MAX_ERROR_BODY_BYTES` at most), within
/// `timeout`.
pub async fn read_error_body(
    response: UpstreamResponse,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ErrorBodyError> {
    match tokio::time::timeout(
        timeout,
        read_capped(response, limit.min(MAX_ERROR_BODY_BYTES)),
    )
    .await
    {
        Err(_) => Err(ErrorBodyError::Timeout),
        Ok(Err(BodyError::TooLarge)) => Err(ErrorBodyError::TooLarge),
        Ok(Err(BodyError::Failed(error))) => Err(ErrorBodyError::Failed(error)),
        Ok(Ok(body)) => Ok(body),
    }
}

/// Relays an upstream 4xx that is the request's own fault, with the backend's key scrubbed out
/// of its body and the header relayed (an upstream that echoes the credentials it got must not
/// hand them to the client).
pub async fn relay_client_error(
    answer: ErrorAnswer,
    plan: Plan,
    draft: &mut UsageDraft,
    data: &DataPlane,
    scrubber: &KeyScrubber,
) -> Result<Done, ProxyError> {
    let (status, content_type, body) = match answer {
        ErrorAnswer::Read {
            status,
            content_type,
            body,
        } => (status, content_type, body),
        ErrorAnswer::Pending(response) => {
            let status = response.status();
            let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
            let limit = MAX_ERROR_BODY_BYTES.min(data.config.proxy.max_response_bytes);
            let body = read_error_body(response, limit, data.config.proxy.stream_idle_timeout)
                .await
                .map_err(|error| match error {
                    ErrorBodyError::Timeout => ProxyError::UpstreamTimeout {
                        detail: "the upstream's error body timed out".into(),
                    },
                    ErrorBodyError::TooLarge => ProxyError::UpstreamTooLarge { limit },
                    ErrorBodyError::Failed(_) => ProxyError::UpstreamFailed {
                        detail: "the upstream's error body was cut off".into(),
                    },
                })?;
            (status, content_type, body)
        }
    };
    let mut headers = HeaderMap::new();
    let translate = plan.upstream_wire() != plan.client_wire();
    if translate {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    } else if let Some(content_type) = content_type {
        headers.insert(http::header::CONTENT_TYPE, content_type);
    }
    scrubber.scrub_headers(&mut headers);
    let body = scrubber.scrub_bytes(body);
    let body = if translate {
        convert_error_body(&body, status.as_u16(), plan.client_wire())
    } else {
        body
    };
    draft.mark_first_byte();
    Ok(Done::Relayed {
        status: status.as_u16(),
        response: ProxyResponse {
            status,
            headers,
            body: ProxyBody::Full(body),
        },
    })
}

/// A 2xx arrived. For JSON, read it whole; for streams, wait for the first chunk (within
/// `remaining` of the time-to-first-byte budget). Err hands the ticket back with the failure.
pub async fn succeed(
    data: &DataPlane,
    inbound: &Inbound,
    plan: Plan,
    mut ticket: Ticket,
    response: UpstreamResponse,
    draft: &mut UsageDraft,
    remaining: Duration,
) -> Result<ProxyResponse, (Ticket, Failure)> {
    let status = response.status();
    let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
    let is_event_stream = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if inbound.stream && is_event_stream {
        let mut upstream = response.bytes_stream().boxed();
        let idle = data.config.proxy.stream_idle_timeout;
        // A stream from a backend's own Responses API has its own content-free events; a stored
        // response's events are replayed as they are (no other backend could take over).
        let format = match plan {
            Plan::ResponsesPass => LeadFormat::Responses,
            _ => plan.upstream_wire().into(),
        };
        let held = match hold_leading_events(&mut upstream, format, remaining, idle).await {
            Ok(held) => held,
            Err(failure) => {
                let failure = failure.scrubbed(&ticket.backend.scrubber);
                return Err((ticket, failure));
            }
        };
        resolve(data, &mut ticket, UpstreamOutcome::Success);
        // The backend's TPM reservation is settled with this answer's usage.
        draft.hold_tokens(ticket.take_tpm());
        draft.mark_first_byte();
        if draft.traced() {
            // The first held event names it (a chunk, `message_start`, `response.created`).
            let model = held.chunks.iter().find_map(|chunk| answered_model(chunk));
            draft.set_response_model(model);
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        let hook = (plan == Plan::ResponsesPass).then(|| owner_hook(data, &ticket, draft));
        let stream = RelayStream::new(
            upstream,
            held.chunks,
            plan.stream_mapper(inbound, hook),
            data.config.proxy.stream_idle_timeout,
            StreamFinisher {
                draft: draft.hand_over(),
                billing: Billing::new(plan, inbound, ticket.upstream_model.as_str()),
                ticket,
                data: data.clone(),
            },
        );
        return Ok(ProxyResponse {
            status,
            headers,
            body: ProxyBody::Stream(Box::pin(stream)),
        });
    }

    let limit = data.config.proxy.max_response_bytes;
    let body = match tokio::time::timeout(
        remaining.max(data.config.proxy.stream_idle_timeout),
        read_capped(response, limit),
    )
    .await
    {
        Err(_) => return Err((ticket, Failure::Timeout)),
        Ok(Err(BodyError::TooLarge)) => return Err((ticket, Failure::TooLarge { limit })),
        Ok(Err(BodyError::Failed(error))) => {
            return Err((ticket, Failure::transport("body was cut off", &error)))
        }
        Ok(Ok(body)) => body,
    };
    // Read from the upstream's own answer, before translation (only while tracing).
    let response_model = draft.traced().then(|| answered_model(&body)).flatten();
    let answer = match plan.translate_json(inbound, body) {
        Ok(answer) => answer,
        Err(error) => {
            return Err((
                ticket,
                Failure::Server {
                    status: None,
                    detail: error.to_string(),
                },
            ))
        }
    };
    resolve(data, &mut ticket, UpstreamOutcome::Success);
    // The backend's TPM reservation is settled with this answer's usage.
    draft.hold_tokens(ticket.take_tpm());
    draft.mark_first_byte();
    if draft.traced() {
        draft.set_response_model(response_model);
    }
    remember_response(data, inbound, &ticket, draft, answer.response_id.as_deref());
    let mut finished = draft.hand_over();
    if let Some(usage) = answer.usage {
        finished.set_usage(usage);
    }
    // In the journal before the answer goes out.
    data.usage
        .record(finished.finish(status.as_u16(), Outcome::Success, None))
        .await;
    let body = answer.body;
    let mut headers = HeaderMap::new();
    let content_type = if plan.passes_through() {
        content_type
    } else {
        None
    };
    headers.insert(
        http::header::CONTENT_TYPE,
        content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
    );
    Ok(ProxyResponse {
        status,
        headers,
        body: ProxyBody::Full(body),
    })
}
