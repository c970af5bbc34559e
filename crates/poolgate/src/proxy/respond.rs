//! Phase **relay**: turning a backend's answer into the client's. A 2xx JSON answer is read whole
//! and translated; a 2xx stream waits for its first chunk (still inside the time-to-first-byte
//! budget, so a stream that dies at once can fail over) and is then relayed event by event; an
//! upstream 4xx that is the request's own fault is relayed as is.

use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue};

use super::attempt::{resolve, Done};
use super::classify::Failure;
use super::error::ProxyError;
use super::plan::{Inbound, Plan};
use super::record::UsageDraft;
use super::relay::{RelayStream, StreamFinisher};
use super::{ProxyBody, ProxyResponse};
use crate::cooldown::Outcome as UpstreamOutcome;
use crate::domain::Outcome;
use crate::providers::answered_model;
use crate::routing::Ticket;
use crate::state::DataPlane;
use crate::translate::convert_error_body;

/// Relays an upstream 4xx that is the request's own fault, as is.
pub async fn relay_client_error(
    response: reqwest::Response,
    plan: Plan,
    draft: &mut UsageDraft,
    data: &DataPlane,
) -> Result<Done, ProxyError> {
    let status = response.status();
    let mut headers = HeaderMap::new();
    let translate = plan.upstream_wire() != plan.client_wire();
    if translate {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    } else if let Some(content_type) = response.headers().get(http::header::CONTENT_TYPE) {
        headers.insert(http::header::CONTENT_TYPE, content_type.clone());
    }
    let body = tokio::time::timeout(data.config.proxy.stream_idle_timeout, response.bytes())
        .await
        .map_err(|_| ProxyError::UpstreamTimeout {
            detail: "the upstream's error body timed out".into(),
        })?
        .map_err(|_| ProxyError::UpstreamFailed {
            detail: "the upstream's error body was cut off".into(),
        })?;
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
        let stream = RelayStream::new(
            upstream.boxed(),
            first,
            plan.stream_mapper(),
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
    let (body, usage) = match plan.translate_json(body) {
        Ok(translated) => translated,
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
        draft.set_response_model(answered_model(&body));
    }
    let mut finished = draft.hand_over();
    if let Some(usage) = usage {
        finished.set_usage(usage);
    }
    data.usage
        .record(finished.finish(status.as_u16(), Outcome::Success, None));
    let mut headers = HeaderMap::new();
    let content_type = if plan.upstream_wire() == plan.client_wire() {
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
