//! Phase **relay**: turning a backend's answer into the client's. A 2xx JSON answer is read whole
//! and translated; a 2xx stream waits for its first chunk (still inside the time-to-first-byte
//! budget, so a stream that dies at once can fail over) and is then relayed event by event; an
//! upstream 4xx that is the request's own fault is relayed as is.

use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue};

use super::attempt::{resolve, Done};
use super::classify::{ErrorAnswer, Failure};
use super::error::ProxyError;
use super::plan::{Inbound, Plan};
use super::record::UsageDraft;
use super::relay::{RelayStream, StreamFinisher};
use super::{ProxyBody, ProxyResponse};
use crate::cooldown::Outcome as UpstreamOutcome;
use crate::domain::Outcome;
use crate::providers::{answered_model, Endpoint};
use crate::routing::affinity::ResponseOwner;
use crate::routing::Ticket;
use crate::state::DataPlane;
use crate::translate::convert_error_body;
use crate::translate::responses::passthrough::ResponseIdHook;

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

/// Relays an upstream 4xx that is the request's own fault, as is.
pub async fn relay_client_error(
    answer: ErrorAnswer,
    plan: Plan,
    draft: &mut UsageDraft,
    data: &DataPlane,
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
            let body =
                tokio::time::timeout(data.config.proxy.stream_idle_timeout, response.bytes())
                    .await
                    .map_err(|_| ProxyError::UpstreamTimeout {
                        detail: "the upstream's error body timed out".into(),
                    })?
                    .map_err(|_| ProxyError::UpstreamFailed {
                        detail: "the upstream's error body was cut off".into(),
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
    response: reqwest::Response,
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
        let mut upstream = response.bytes_stream();
        let first = match tokio::time::timeout(remaining, upstream.next()).await {
            Err(_) => return Err((ticket, Failure::Timeout)),
            Ok(None) => {
                return Err((
                    ticket,
                    Failure::Server {
                        status: None,
                        detail: "the stream ended before its first byte".into(),
                    },
                ))
            }
            Ok(Some(Err(error))) => {
                let failure = Failure::transport("stream failed before its first byte", &error);
                return Err((ticket, failure));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        resolve(data, &mut ticket, UpstreamOutcome::Success);
        draft.mark_first_byte();
        if draft.traced() {
            draft.set_response_model(answered_model(&first));
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
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        let hook = (plan == Plan::ResponsesPass).then(|| owner_hook(data, &ticket, draft));
        let stream = RelayStream::new(
            upstream.boxed(),
            first,
            plan.stream_mapper(inbound, hook),
            data.config.proxy.stream_idle_timeout,
            StreamFinisher {
                draft: draft.hand_over(),
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

    let body = match tokio::time::timeout(
        remaining.max(data.config.proxy.stream_idle_timeout),
        response.bytes(),
    )
    .await
    {
        Err(_) => return Err((ticket, Failure::Timeout)),
        Ok(Err(error)) => return Err((ticket, Failure::transport("body was cut off", &error))),
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
    draft.mark_first_byte();
    if draft.traced() {
        draft.set_response_model(response_model);
    }
    remember_response(data, inbound, &ticket, draft, answer.response_id.as_deref());
    let mut finished = draft.hand_over();
    if let Some(usage) = answer.usage {
        finished.set_usage(usage);
    }
    data.usage
        .record(finished.finish(status.as_u16(), Outcome::Success, None));
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
