//! The forwarding pipeline, written down once. Each phase is a small function over one
//! [`RequestContext`]; the module that owns it is named in brackets.
//!
//! 1. **route** ([`route`]) — a request about a stored response goes only to the backend that
//!    made it (response affinity); otherwise this request's snapshot's route for the model
//!    (aliases, then exact over wildcard mappings; 404 if none); the client key's allowed models
//!    (403) and its own RPM bucket (429); a sticky session's backend is preferred.
//! 2. **select** ([`crate::routing`]) — [`crate::routing::Selection`] yields ready candidates:
//!    pools in priority order, weighted round-robin inside a pool, each backend at most once,
//!    readiness checked by [`crate::routing::accept`] (which takes the RPM token and, after a
//!    cooldown, the single half-open probe slot).
//! 3. **call** ([`attempt`], [`plan`]) — the provider builds the upstream request; it is sent with
//!    the backend's `timeout_seconds` as the time-to-first-byte limit (headers, and for streams
//!    the first chunk).
//! 4. **classify** ([`classify`]) — 2xx succeeds; 429 cools the backend down (Retry-After
//!    honoured); 5xx, connection errors and timeouts give a short error cooldown; 401/403 mark
//!    the key broken; any other 4xx is the request's own fault and is relayed as is.
//! 5. **retry** ([`attempt`]) — here and only here: a retryable failure moves to the next
//!    candidate, up to `max_attempts`, and only while no byte has reached the client. With
//!    nothing ready, the request waits up to `max_wait` for the earliest backend, else gets 429
//!    with `Retry-After`.
//! 6. **relay** ([`respond`], [`holdback`], [`relay`]) — JSON answers are returned whole (up to
//!    `proxy.max_response_bytes`); a stream's content-free leading events (role chunk,
//!    `message_start`) are held back until its first content, so a stream that dies before
//!    content still fails over; then it passes through event by event, with an idle timeout
//!    between chunks and no total-time cap.
//! 7. **record** ([`record`]) — exactly one usage record per client request, whatever happened.
//!
//! Every phase also feeds the request's [`crate::telemetry::RequestObservation`], carried by its
//! usage draft: the attempt starts (trace context injected upstream) and ends with its
//! classified result, the first byte, and the finish where the record is written. [`headers`]
//! adds the client key's rate limits (and, if enabled, the routing) to whatever is answered.

pub mod attempt;
pub mod billing;
pub mod classify;
pub mod context;
pub mod error;
pub mod estimator;
pub mod headers;
pub mod holdback;
pub mod plan;
pub mod record;
pub mod relay;
pub mod respond;
pub mod responses;
pub mod route;
pub mod spend;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::domain::Outcome;
use crate::journal::Durable;
use crate::providers::Endpoint;
use crate::routing::Routed;
use crate::state::DataPlane;
use crate::telemetry::RequestObservation;

pub use context::RequestContext;
pub use error::ProxyError;
pub use plan::{Inbound, Plan};
pub use relay::BodyStream;

use attempt::Done;
pub use record::{observe, observe_unauthenticated};
use record::{CancelGuard, UsageDraft};

/// What the API layer turns into an HTTP response.
pub struct ProxyResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ProxyBody,
}

pub enum ProxyBody {
    Full(Bytes),
    Stream(BodyStream),
}

/// What [`forward`] hands the API layer: the answer (or the error to render in the client's
/// format) and the headers poolgate adds to either ([`headers`]).
pub struct Forwarded {
    pub result: Result<ProxyResponse, ProxyError>,
    pub headers: HeaderMap,
}

/// Records a request refused before it could be forwarded (its body or headers were wrong):
/// one usage record per client request, whatever happened. Returns the headers of its answer,
/// and the record's way into the journal (await it before the answer goes out).
pub fn record_refused(
    data: &DataPlane,
    ctx: &RequestContext,
    endpoint: Endpoint,
    status: StatusCode,
    kind: &str,
    observation: RequestObservation,
) -> (HeaderMap, Durable) {
    let draft = UsageDraft::new(&data.usage, ctx, endpoint, None, false, observation);
    let answer = headers::answer_headers(data, ctx, &draft);
    let durable = data
        .usage
        .record(draft.finish(status.as_u16(), Outcome::Error, Some(kind)));
    (answer, durable)
}

/// Handles one request end to end and always records its usage (and finishes its observation).
/// `routed`: the route [`observe`] found for the request's model, if it looked one up.
pub async fn forward(
    data: &DataPlane,
    ctx: RequestContext,
    inbound: Inbound,
    observation: RequestObservation,
    routed: Option<Routed>,
) -> Forwarded {
    let model = (!inbound.model.is_empty()).then_some(inbound.model.as_str());
    let draft = UsageDraft::new(
        &data.usage,
        &ctx,
        inbound.endpoint,
        model,
        inbound.stream,
        observation,
    );
    let mut guard = CancelGuard::new(&data.usage, draft);
    let result = attempt::run(data, &ctx, &inbound, &mut guard.draft, routed).await;
    let headers = headers::answer_headers(data, &ctx, &guard.draft);
    let result = match result {
        // Its draft was handed over: its record is written (or, for a stream, will be) by
        // whoever finishes it.
        Ok(Done::Response(response)) => Ok(response),
        Ok(Done::Relayed { status, response }) => {
            guard
                .record(status, Outcome::Error, Some("upstream_client_error"))
                .await;
            Ok(response)
        }
        Err(error) => {
            guard
                .record(error.status().as_u16(), Outcome::Error, Some(error.kind()))
                .await;
            Err(error)
        }
    };
    Forwarded { result, headers }
}
