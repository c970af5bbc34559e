//! The forwarding pipeline, written down once:
//!
//! 1. **route** — the live snapshot's route for the canonical model (404 if none); the client
//!    key's allowed models (403) and its own RPM bucket (429).
//! 2. **select** — [`Selection`] yields ready candidates: pools in priority order, weighted
//!    round-robin inside a pool, each backend at most once, readiness checked by
//!    [`crate::routing::accept`] (which takes the RPM token and, after a cooldown, the single
//!    half-open probe slot).
//! 3. **call** — the provider builds the upstream request; it is sent with the backend's
//!    `timeout_seconds` as the time-to-first-byte limit (headers, and for streams the first chunk).
//! 4. **classify** — 2xx succeeds; 429 cools the backend down (Retry-After honoured); 5xx,
//!    connection errors and timeouts give a short error cooldown; 401/403 mark the key broken;
//!    any other 4xx is the request's own fault and is relayed as is.
//! 5. **retry** — here and only here: a retryable failure moves to the next candidate, up to
//!    `max_attempts`, and only while no byte has reached the client. With nothing ready, the
//!    request waits up to `max_wait` for the earliest backend, else gets 429 with `Retry-After`.
//! 6. **relay** — JSON answers are returned whole; streams pass through event by event
//!    ([`relay`]), with an idle timeout between chunks and no total-time cap.
//! 7. **record** — exactly one usage record per client request, whatever happened.

pub mod plan;
pub mod relay;
pub mod sse;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::cooldown::{parse_retry_after, Outcome as UpstreamOutcome};
use crate::domain::{ApiKind, Outcome, UsageRecord};
use crate::error::ApiError;
use crate::providers::{Endpoint, TokenUsage};
use crate::routing::{Selection, Ticket};
use crate::state::{AppState, LiveClientKey};
use crate::translate::convert_error_body;
use crate::usage::UsageSink;

pub use plan::{Inbound, Plan};
pub use relay::BodyStream;

/// Who is asking, and request facts known before routing.
pub struct RequestContext {
    pub request_id: String,
    /// None for the admin token used as a client key.
    pub client_key: Option<std::sync::Arc<LiveClientKey>>,
    pub received: Instant,
    pub received_ms: i64,
    /// Per-request override of `proxy.max_wait` (`x-poolgate-max-wait-ms`).
    pub max_wait: Option<Duration>,
}

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

/// A usage record being filled in while the request runs.
#[derive(Clone)]
pub struct UsageDraft {
    pub record: UsageRecord,
    pub received: Instant,
}

impl UsageDraft {
    /// A new draft; the sink now owes one record for this request.
    fn new(
        sink: &UsageSink,
        ctx: &RequestContext,
        endpoint: Endpoint,
        model: Option<&str>,
        streamed: bool,
    ) -> Self {
        sink.open();
        Self {
            record: UsageRecord {
                request_id: ctx.request_id.clone(),
                ts_ms: ctx.received_ms,
                client_key_id: Some(
                    ctx.client_key
                        .as_ref()
                        .map_or_else(|| "admin".to_owned(), |key| key.record.id.clone()),
                ),
                endpoint: endpoint.name().to_owned(),
                canonical_model: model.map(str::to_owned),
                backend_id: None,
                upstream_model: None,
                pool: None,
                attempts: 0,
                status: 0,
                outcome: Outcome::Error,
                error_kind: None,
                prompt_tokens: None,
                completion_tokens: None,
                total_tokens: None,
                latency_ms: 0,
                ttfb_ms: None,
                streamed,
            },
            received: ctx.received,
        }
    }

    fn attempt(&mut self, ticket: &Ticket) {
        self.record.attempts += 1;
        self.record.backend_id = Some(ticket.backend.id().to_string());
        self.record.upstream_model = Some(ticket.upstream_model.to_string());
        self.record.pool = Some(ticket.pool.name.to_string());
    }

    pub fn set_usage(&mut self, usage: TokenUsage) {
        self.record.prompt_tokens = Some(usage.prompt_tokens);
        self.record.completion_tokens = Some(usage.completion_tokens);
        self.record.total_tokens = Some(if usage.total_tokens == 0 {
            usage.prompt_tokens.saturating_add(usage.completion_tokens)
        } else {
            usage.total_tokens
        });
    }

    pub fn mark_first_byte(&mut self) {
        if self.record.ttfb_ms.is_none() {
            self.record.ttfb_ms = Some(millis(self.received.elapsed()));
        }
    }

    /// Completes the record.
    pub fn finish(
        mut self,
        status: u16,
        outcome: Outcome,
        error_kind: Option<&str>,
    ) -> UsageRecord {
        self.record.status = status;
        self.record.outcome = outcome;
        self.record.error_kind = error_kind.map(str::to_owned);
        self.record.latency_ms = millis(self.received.elapsed());
        self.record
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Why one upstream attempt failed in a way worth trying elsewhere.
#[derive(Debug)]
enum Failure {
    RateLimited { retry_after: Option<Duration> },
    Server { status: Option<u16>, detail: String },
    Timeout,
    AuthRejected { status: u16 },
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::RateLimited { .. } => "upstream rate limited (429)".to_owned(),
            Failure::Server {
                status: Some(status),
                ..
            } => format!("upstream error {status}"),
            Failure::Server { detail, .. } => format!("upstream unreachable: {detail}"),
            Failure::Timeout => "upstream timed out".to_owned(),
            Failure::AuthRejected { status } => format!("upstream refused the key ({status})"),
        }
    }
}

/// Handles one request end to end and always records its usage. `parse` turns the body into an
/// [`Inbound`] (OpenAI or Anthropic format).
pub async fn forward(
    state: &AppState,
    ctx: RequestContext,
    endpoint: Endpoint,
    parsed: Result<Inbound, ApiError>,
) -> Result<ProxyResponse, ApiError> {
    let inbound = match parsed {
        Ok(inbound) => inbound,
        Err(error) => {
            let draft = UsageDraft::new(&state.usage, &ctx, endpoint, None, false);
            state.usage.record(draft.finish(
                error.status_code().as_u16(),
                Outcome::Error,
                Some(error.kind()),
            ));
            return Err(error);
        }
    };
    let draft = UsageDraft::new(
        &state.usage,
        &ctx,
        endpoint,
        Some(&inbound.model),
        inbound.stream,
    );
    let mut guard = CancelGuard {
        sink: &state.usage,
        draft,
        armed: true,
    };
    let result = run(state, &ctx, &inbound, &mut guard.draft).await;
    match result {
        // Its record is written (or, for a stream, will be) by whoever finishes it.
        Ok(Done::Response(response)) => {
            guard.armed = false;
            Ok(response)
        }
        Ok(Done::Relayed { status, response }) => {
            guard.record(status, Outcome::Error, Some("upstream_client_error"));
            Ok(response)
        }
        Err(error) => {
            guard.record(
                error.status_code().as_u16(),
                Outcome::Error,
                Some(error.kind()),
            );
            Err(error)
        }
    }
}

/// Records the request as cancelled (499) when its future is dropped before it finished: the
/// client went away while poolgate waited for an upstream.
struct CancelGuard<'s> {
    sink: &'s UsageSink,
    draft: UsageDraft,
    armed: bool,
}

impl CancelGuard<'_> {
    /// Writes the request's record now (and not again on drop).
    fn record(&mut self, status: u16, outcome: Outcome, error_kind: Option<&str>) {
        self.armed = false;
        let record = self.draft.clone().finish(status, outcome, error_kind);
        self.sink.record(record);
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let record = self
                .draft
                .clone()
                .finish(499, Outcome::Cancelled, Some("client_closed"));
            self.sink.record(record);
        }
    }
}

enum Done {
    /// Success; its usage record is (or will be, for streams) written by whoever finishes it.
    Response(ProxyResponse),
    /// The upstream's own 4xx answer, relayed as is.
    Relayed {
        status: u16,
        response: ProxyResponse,
    },
}

async fn run(
    state: &AppState,
    ctx: &RequestContext,
    inbound: &Inbound,
    draft: &mut UsageDraft,
) -> Result<Done, ApiError> {
    let live = state.live();
    let route = live
        .routes
        .get(inbound.model.as_str())
        .ok_or_else(|| ApiError::NotFound {
            message: format!(
                "the model `{}` does not exist or no enabled backend serves it",
                inbound.model
            ),
            code: "model_not_found",
        })?;

    if let Some(key) = &ctx.client_key {
        let allowed = &key.record.allowed_models;
        if !allowed.is_empty() && !allowed.iter().any(|m| m.as_str() == inbound.model) {
            return Err(ApiError::Forbidden(format!(
                "this key may not use the model `{}`",
                inbound.model
            )));
        }
        if let Err(wait) = key.limiter.try_acquire(Instant::now()) {
            return Err(ApiError::RateLimited {
                message: format!(
                    "this key is limited to {} requests per minute",
                    key.limiter.rpm()
                ),
                retry_after: Some(wait),
            });
        }
    }

    let settings = &state.config.proxy;
    let policy = &state.config.cooldown;
    let deadline = ctx.received + ctx.max_wait.unwrap_or(settings.max_wait);
    let endpoint = inbound.endpoint;
    let mut selection = Selection::new(route, move |api| endpoint.served_by(api));
    let mut last_failure: Option<Failure> = None;

    loop {
        let now = Instant::now();
        let Some(mut ticket) = (draft.record.attempts < settings.max_attempts)
            .then(|| selection.next(now))
            .flatten()
        else {
            // Nothing ready: wait for the earliest backend if allowed, else give up.
            if draft.record.attempts < settings.max_attempts {
                if let Some(earliest) = selection.earliest_ready() {
                    if earliest <= deadline {
                        tokio::time::sleep_until(earliest.max(now + Duration::from_millis(1)))
                            .await;
                        selection.rewind();
                        continue;
                    }
                }
            }
            let error = give_up(&selection, last_failure.as_ref(), now);
            if last_failure.is_none() {
                // Nothing was sent upstream: the key's own token goes back.
                if let Some(key) = &ctx.client_key {
                    key.limiter.refund(now);
                }
            }
            return Err(error);
        };
        draft.attempt(&ticket);
        let backend = std::sync::Arc::clone(&ticket.backend);

        let (request, plan) = plan::build(
            inbound,
            backend.record.api,
            &backend.record.api_base_url,
            &backend.api_key,
            ticket.upstream_model.as_str(),
            settings.inject_stream_usage,
            settings.anthropic_default_max_tokens,
        )?;
        let first_byte_timeout = Duration::from_secs(u64::from(backend.record.timeout_seconds));
        let attempt_started = Instant::now();
        let send = state
            .http
            .post(&request.url)
            .headers(request.headers)
            .body(request.body)
            .send();

        let failure = match tokio::time::timeout(first_byte_timeout, send).await {
            Err(_) => Failure::Timeout,
            Ok(Err(error)) => Failure::Server {
                status: None,
                detail: connection_error_text(&error),
            },
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_success() {
                    let remaining = first_byte_timeout.saturating_sub(attempt_started.elapsed());
                    match succeed(state, inbound, plan, ticket, response, draft, remaining).await {
                        Ok(response) => return Ok(Done::Response(response)),
                        Err((returned_ticket, failure)) => {
                            ticket = returned_ticket;
                            failure
                        }
                    }
                } else {
                    match classify(status, response.headers()) {
                        Some(failure) => failure,
                        None => {
                            // The request's own fault: relay it. The backend answered, so for its
                            // cooldown this counts as a success (a half-open probe is over).
                            if ticket.resolve(UpstreamOutcome::Success, policy, Instant::now()) {
                                state.persist_health(&ticket.backend, Instant::now());
                            }
                            return relay_client_error(response, plan, draft, state).await;
                        }
                    }
                }
            }
        };

        // A retryable failure: cool the backend down, remember why, try the next one.
        let now = Instant::now();
        let outcome = match &failure {
            Failure::RateLimited { retry_after } => UpstreamOutcome::RateLimited {
                retry_after: *retry_after,
            },
            Failure::Server { .. } | Failure::Timeout => UpstreamOutcome::ServerError,
            Failure::AuthRejected { .. } => UpstreamOutcome::AuthFailed,
        };
        let description = failure.describe();
        tracing::warn!(
            request_id = %ctx.request_id,
            backend = %backend.record.name,
            failure = %description,
            "upstream attempt failed; trying the next candidate"
        );
        *backend.runtime.last_error.lock() = Some(description);
        if ticket.resolve(outcome, policy, now) {
            state.persist_health(&backend, now);
        }
        drop(ticket);
        last_failure = Some(failure);
    }
}

/// The error for "no (more) candidates": 429 (with `Retry-After`) when backends are rate
/// limited or cooling, 504 when the last attempt timed out, 502 when upstreams failed, 503 when
/// every backend is disabled or has a refused key.
fn give_up<F: Fn(ApiKind) -> bool>(
    selection: &Selection<'_, F>,
    last: Option<&Failure>,
    now: Instant,
) -> ApiError {
    let rate_limited = |retry_after| ApiError::RateLimited {
        message: "every backend for this model is rate limited or cooling down".into(),
        retry_after,
    };
    let earliest = selection
        .earliest_ready_overall(now)
        .map(|at| at.saturating_duration_since(now));
    match last {
        None if earliest.is_some() => rate_limited(earliest),
        None => ApiError::ServiceUnavailable(
            "no backend for this model is available: all are disabled or their keys were refused"
                .into(),
        ),
        Some(Failure::RateLimited { retry_after }) => {
            rate_limited(earliest.or(*retry_after).or(Some(Duration::from_secs(1))))
        }
        Some(Failure::Timeout) => {
            ApiError::GatewayTimeout("the upstream did not answer in time".into())
        }
        Some(failure) => ApiError::BadGateway(format!(
            "no upstream could answer; last failure: {}",
            failure.describe()
        )),
    }
}

/// Classifies a non-2xx upstream status; None = the client's own fault (relay it).
fn classify(status: StatusCode, headers: &HeaderMap) -> Option<Failure> {
    match status.as_u16() {
        // 529: Anthropic's `overloaded_error`, cooled down like a rate limit.
        429 | 529 => Some(Failure::RateLimited {
            retry_after: parse_retry_after(headers, std::time::SystemTime::now()),
        }),
        401 | 403 => Some(Failure::AuthRejected {
            status: status.as_u16(),
        }),
        408 | 500..=599 => Some(Failure::Server {
            status: Some(status.as_u16()),
            detail: String::new(),
        }),
        _ => None,
    }
}

fn connection_error_text(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "connection failed".to_owned()
    } else if error.is_timeout() {
        "timed out".to_owned()
    } else {
        // reqwest's Display includes the URL but never headers, so the key cannot leak here.
        error.without_url_ref().to_string()
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(url.as_str(), "<upstream>");
        }
        text
    }
}

/// Relays an upstream 4xx that is the request's own fault, as is.
async fn relay_client_error(
    response: reqwest::Response,
    plan: Plan,
    draft: &mut UsageDraft,
    state: &AppState,
) -> Result<Done, ApiError> {
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
    let body = tokio::time::timeout(state.config.proxy.stream_idle_timeout, response.bytes())
        .await
        .map_err(|_| ApiError::GatewayTimeout("upstream error body timed out".into()))?
        .map_err(|_| ApiError::BadGateway("upstream error body was cut off".into()))?;
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

/// A 2xx arrived. For JSON, read it whole; for streams, wait for the first chunk (still within
/// the time-to-first-byte budget) so a stream that dies at once can still fail over.
async fn succeed(
    state: &AppState,
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
    let now = Instant::now();

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
                return Err((
                    ticket,
                    Failure::Server {
                        status: None,
                        detail: format!(
                            "stream failed before its first byte: {}",
                            error.without_url_ref()
                        ),
                    },
                ))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if ticket.resolve(UpstreamOutcome::Success, &state.config.cooldown, now) {
            state.persist_health(&ticket.backend, now);
        }
        draft.mark_first_byte();
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
        let stream = relay::RelayStream::new(
            upstream.boxed(),
            first,
            plan.stream_mapper(),
            state.config.proxy.stream_idle_timeout,
            relay::StreamFinisher {
                draft: draft.clone(),
                ticket,
                state: state.clone(),
            },
        );
        return Ok(ProxyResponse {
            status,
            headers,
            body: ProxyBody::Stream(Box::pin(stream)),
        });
    }

    let body = match tokio::time::timeout(
        remaining.max(state.config.proxy.stream_idle_timeout),
        response.bytes(),
    )
    .await
    {
        Err(_) => return Err((ticket, Failure::Timeout)),
        Ok(Err(error)) => {
            return Err((
                ticket,
                Failure::Server {
                    status: None,
                    detail: format!("body was cut off: {}", error.without_url_ref()),
                },
            ))
        }
        Ok(Ok(body)) => body,
    };
    let (body, usage) = match plan.translate_json(body) {
        Ok(translated) => translated,
        Err(detail) => {
            return Err((
                ticket,
                Failure::Server {
                    status: None,
                    detail,
                },
            ))
        }
    };
    if ticket.resolve(UpstreamOutcome::Success, &state.config.cooldown, now) {
        state.persist_health(&ticket.backend, now);
    }
    draft.mark_first_byte();
    let mut finished = draft.clone();
    if let Some(usage) = usage {
        finished.set_usage(usage);
    }
    state
        .usage
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
