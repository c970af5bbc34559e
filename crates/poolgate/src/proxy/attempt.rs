//! The attempt loop — the only place a request is retried: route, check the caller's own limits,
//! take the next ready candidate (reserving its monthly spend cap, if it has one), call it,
//! classify the answer, and on a retryable failure cool the backend down, release its
//! reservation and move on (only ever before the first byte reached the client). With nothing
//! ready it waits up to `max_wait` for the earliest backend, else gives up.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::classify::{azure_failure, classify, connection_failure, Failure};
use super::context::RequestContext;
use super::error::ProxyError;
use super::plan::{self, Inbound};
use super::record::UsageDraft;
use super::respond::{relay_client_error, succeed};
use super::route::route;
use super::spend;
use super::ProxyResponse;
use crate::cooldown::{Outcome as UpstreamOutcome, ReadyAt};
use crate::domain::{ApiKind, BackendRecord};
use crate::limits::tpm::TpmRefusal;
use crate::routing::{Routed, Selection, Ticket};
use crate::runtime::{refusal_ready_at, Resolution, TokenNeed, Waiting};
use crate::shared::{BucketClaim, BucketKey, Refusal};
use crate::state::DataPlane;
use crate::telemetry::AttemptResult;

/// How the attempt loop ended well.
pub enum Done {
    /// Success; its usage record is (or will be, for streams) written by whoever finishes it.
    Response(ProxyResponse),
    /// The upstream's own 4xx answer, relayed as is.
    Relayed {
        status: u16,
        response: ProxyResponse,
    },
}

/// Runs the attempts of one request (`routed`: its model's route, if already looked up).
pub async fn run(
    data: &DataPlane,
    ctx: &RequestContext,
    inbound: &Inbound,
    draft: &mut UsageDraft,
    routed: Option<Routed>,
) -> Result<Done, ProxyError> {
    // Phase **route** ([`super::route`]).
    let routing = route(data, ctx, inbound, routed).await?;
    if let Some(canonical) = &routing.canonical {
        draft.record.canonical_model = Some(canonical.to_string());
    }
    // The key's budget (if it has one): the estimated cost is reserved before selection.
    match spend::admit(ctx, inbound, &routing.route).await {
        Ok(guard) => draft.hold_spend(guard),
        Err(error) => {
            refund_key(ctx);
            return Err(error);
        }
    }
    let settings = &data.config.proxy;
    let deadline = ctx.received + ctx.max_wait.unwrap_or(settings.max_wait);
    let mut selection = Selection::new(&routing.route, |record: &BackendRecord| {
        inbound.served_by(record)
    });
    if let Some(preferred) = routing.preferred.clone() {
        selection.prefer(preferred);
    }
    if inbound.is_free() {
        selection.free_of_spend_caps();
    }
    if !selection.any_serves() {
        if let Some(error) = inbound.none_serves() {
            refund_key(ctx);
            return Err(error);
        }
    }
    // Tokens: estimated only when a TPM limit applies to the key or to a candidate.
    let need = token_need(ctx, inbound, &routing.route);
    if let Some(need) = need {
        selection.need_tokens(need);
        draft.set_prompt_estimate(need.prompt);
        admit_key_tokens(ctx, need, draft)?;
    }
    let mut last_failure: Option<Failure> = None;
    // Cluster mode: the client key's shared token (and TPM estimate), paid by the first admitted
    // attempt.
    let mut key_claims: Vec<BucketClaim> = ctx.client_key.as_ref().map_or_else(Vec::new, |key| {
        key.runtime.claims(need.map_or(0, |need| need.total))
    });

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
            let error = routing.explain(give_up(&selection, last_failure.as_ref(), now));
            if last_failure.is_none() {
                // Nothing was sent upstream: the key's own token goes back.
                refund_key(ctx);
            }
            return Err(error);
        };
        // The backend's monthly spend cap (if it has one): the estimated cost at its price is
        // reserved before anything is sent; a cap that cannot take it skips the backend.
        let reserved = spend::reserve_backend(
            ctx,
            inbound,
            &routing.route,
            &ticket.backend,
            &ticket.upstream_model,
        );
        match reserved.await {
            Ok(guard) => draft.hold_backend_spend(guard),
            Err(spend::CapRefusal::Capped(exceeded)) => {
                selection.cap_refused(ticket, exceeded);
                continue;
            }
            Err(spend::CapRefusal::Unavailable) => return Err(ProxyError::LimiterUnavailable),
        }
        if ticket.needs_confirm(!key_claims.is_empty()) {
            match admit_shared(ctx, &mut ticket, &key_claims).await {
                Ok(()) => {
                    if let Some(key) = &ctx.client_key {
                        let prompt = need.map_or(0, |need| need.prompt);
                        draft.hold_tokens(key.runtime.shared_hold(&key_claims, prompt));
                    }
                    key_claims.clear();
                }
                Err(SharedRefusal::End(error)) => {
                    draft.release_backend_spend();
                    return Err(error);
                }
                Err(SharedRefusal::Skip(ready)) => {
                    draft.release_backend_spend();
                    selection.refused(ticket, ready);
                    continue;
                }
            }
        }
        let backend = Arc::clone(&ticket.backend);

        // Phase **call**: the provider builds the request; the backend's timeout bounds the
        // time to the first byte.
        let built = plan::build(inbound, &backend, ticket.upstream_model.as_str(), settings);
        // A request this backend's format cannot carry is refused before any upstream call: its
        // record names no backend, no upstream model and no cost.
        if !matches!(built, Err(ProxyError::InvalidRequest(_))) {
            draft.attempt(&ticket);
        }
        let (mut request, plan) = built?;
        // Observed from here: retries and failovers are counted, the trace context goes along.
        // One clock read starts the attempt, its observation and its first-byte deadline.
        let attempt_started = Instant::now();
        draft.start_attempt(&ticket, &mut request.headers, attempt_started);
        let first_byte_timeout = Duration::from_secs(u64::from(backend.record.timeout_seconds));
        let mut upstream_status = None;

        // Phase **classify** (an address the egress policy refuses is never sent to).
        let failure = if let Some(refused) = &backend.egress_refused {
            Failure::EgressRefused {
                detail: refused.clone(),
            }
        } else {
            backend
                .runtime
                .note_sent(need.map_or(0, |need| need.prompt));
            let send = data.http_for(backend.record.http_version).send(
                request.method,
                request.url.into_destination(),
                request.headers,
                request.body,
            );
            match tokio::time::timeout_at(attempt_started + first_byte_timeout, send).await {
                Err(_) => Failure::Timeout,
                Ok(Err(error)) => connection_failure(&error),
                Ok(Ok(response)) => {
                    // Limits learned from the upstream, on every answer.
                    backend.runtime.observe_limits(response.headers());
                    let status = response.status();
                    upstream_status = Some(status.as_u16());
                    if status.is_success() {
                        let remaining =
                            first_byte_timeout.saturating_sub(attempt_started.elapsed());
                        match succeed(data, inbound, plan, ticket, response, draft, remaining).await
                        {
                            Ok(response) => {
                                if let Some(key) = inbound.affinity {
                                    // The session stays (or moves) where it was served.
                                    data.affinity.remember_session(
                                        key,
                                        backend.id(),
                                        ctx.live.sticky.ttl,
                                    );
                                }
                                return Ok(Done::Response(response));
                            }
                            Err((returned_ticket, failure)) => {
                                ticket = returned_ticket;
                                failure
                            }
                        }
                    } else {
                        let classified = if backend.record.api == ApiKind::Azure {
                            azure_failure(
                                response,
                                data.config.proxy.stream_idle_timeout,
                                data.config.proxy.max_response_bytes,
                            )
                            .await
                        } else {
                            let failure = classify(status, response.headers());
                            failure.ok_or(response.into())
                        };
                        match classified {
                            Ok(failure) => failure.scrubbed(&backend.scrubber),
                            Err(answer) => {
                                // The request's own fault: relay it. It says nothing about the
                                // backend's health: a half-open probe ends without closing the
                                // cooldown (the next request probes again).
                                resolve(data, &mut ticket, UpstreamOutcome::Inconclusive);
                                draft.end_attempt(AttemptResult::ClientError, upstream_status);
                                let scrubber = &backend.scrubber;
                                return relay_client_error(answer, plan, draft, data, scrubber)
                                    .await;
                            }
                        }
                    }
                }
            }
        };

        // An answer too large for poolgate is final: any backend would send the same.
        if let Failure::TooLarge { limit } = failure {
            resolve(data, &mut ticket, failure.outcome());
            draft.end_attempt(failure.attempt_result(), upstream_status);
            return Err(ProxyError::UpstreamTooLarge { limit });
        }

        // Phase **retry**: cool the backend down, remember why, try the next one.
        let description = failure.describe();
        tracing::warn!(
            request_id = %ctx.request_id,
            backend = %backend.record.name,
            failure = %description,
            "upstream attempt failed; the next candidate, if any, is tried"
        );
        backend.runtime.set_last_error(description);
        let report = resolve(data, &mut ticket, failure.outcome());
        draft.end_attempt(failure.attempt_result(), upstream_status);
        draft.release_backend_spend();
        drop(ticket);
        // Cluster mode: the shared cooldown knows before the next attempt (the report is its own
        // task: it finishes even if this request is abandoned).
        if let Some(report) = report {
            let _ = report.await;
        }
        last_failure = Some(failure);
    }
}

/// Why the shared state did not admit an attempt.
enum SharedRefusal {
    /// The request ends here: its client key's own shared bucket is empty (429), or the limiter
    /// is unreachable and fails closed (503).
    End(ProxyError),
    /// This backend is not ready (cooling, probing elsewhere, its bucket empty): skip it; it
    /// may be ready then.
    Skip(ReadyAt),
}

/// Phase **select**, the shared half (cluster mode): the attempt's one atomic call.
async fn admit_shared(
    ctx: &RequestContext,
    ticket: &mut Ticket,
    key_claims: &[BucketClaim],
) -> Result<(), SharedRefusal> {
    let refusal = match ticket.confirm(key_claims).await {
        Ok(()) => return Ok(()),
        Err(refusal) => refusal,
    };
    match refusal {
        Refusal::Limited { key, retry_after }
            if key_claims.iter().any(|claim| claim.key == key) =>
        {
            let runtime = ctx.client_key.as_ref().map(|key| &key.runtime);
            let is_tpm = ctx
                .client_key
                .as_ref()
                .is_some_and(|client| key == BucketKey::client_tpm(&client.record.id));
            Err(SharedRefusal::End(if is_tpm {
                ProxyError::KeyTpmLimited {
                    tpm: runtime.map_or(0, |runtime| runtime.tpm_limit()),
                    retry_after,
                }
            } else {
                ProxyError::KeyRateLimited {
                    rpm: runtime.map_or(0, |runtime| runtime.rpm()),
                    retry_after,
                }
            }))
        }
        Refusal::Unavailable { .. } => Err(SharedRefusal::End(ProxyError::LimiterUnavailable)),
        other => Err(SharedRefusal::Skip(refusal_ready_at(
            &other,
            Instant::now(),
        ))),
    }
}

/// The request's tokens when a TPM limit applies to its key or to any candidate of its route
/// (estimated then, once, with the first candidate's tokenizer); `None` otherwise — a request
/// without TPM limits is never tokenized.
fn token_need(
    ctx: &RequestContext,
    inbound: &Inbound,
    route: &crate::routing::Route,
) -> Option<TokenNeed> {
    // Calls on a stored response and token counting use no upstream tokens.
    if inbound.is_response_call() || inbound.endpoint == crate::providers::Endpoint::CountTokens {
        return None;
    }
    let key_limited = ctx
        .client_key
        .as_ref()
        .is_some_and(|key| key.runtime.tpm_limit() > 0);
    if !key_limited
        && !route
            .members()
            .any(|member| member.backend.runtime.tpm_limit() > 0)
    {
        return None;
    }
    let model = route
        .members()
        .next()
        .map_or(inbound.model.as_str(), |member| {
            member.upstream_model.as_str()
        });
    let estimate = ctx.token_estimate(inbound, model);
    Some(TokenNeed {
        prompt: estimate.prompt.tokens,
        total: estimate.total(),
    })
}

/// The client key's own TPM limit: reserves the estimate (held by the draft until the record
/// settles it), or refuses — 429 to retry after the refill, or, larger than the whole limit,
/// 429 never to retry. A refusal gives back the key's RPM token.
fn admit_key_tokens(
    ctx: &RequestContext,
    need: TokenNeed,
    draft: &mut UsageDraft,
) -> Result<(), ProxyError> {
    let Some(key) = &ctx.client_key else {
        return Ok(());
    };
    match key
        .runtime
        .reserve_tokens(need.total, need.prompt, Instant::now())
    {
        Ok(hold) => {
            draft.hold_tokens(hold);
            Ok(())
        }
        Err(refusal) => {
            refund_key(ctx);
            Err(match refusal {
                TpmRefusal::Wait(retry_after) => ProxyError::KeyTpmLimited {
                    tpm: key.runtime.tpm_limit(),
                    retry_after,
                },
                TpmRefusal::TooLarge { requested, tpm } => {
                    ProxyError::KeyTpmTooLarge { requested, tpm }
                }
            })
        }
    }
}

/// Nothing was sent upstream: the key's own token goes back.
fn refund_key(ctx: &RequestContext) {
    if let Some(key) = &ctx.client_key {
        key.runtime.refund(Instant::now());
    }
}

/// Feeds an upstream outcome to the backend's runtime; a change of its persisted health is
/// handed to the health writer (never written here). In cluster mode the outcome goes to the
/// shared state in its own task, returned so the caller may wait for it.
pub fn resolve(
    data: &DataPlane,
    ticket: &mut Ticket,
    outcome: UpstreamOutcome,
) -> Option<tokio::task::JoinHandle<()>> {
    match ticket.resolve(outcome, &data.config.cooldown, Instant::now()) {
        Resolution::Local(changed) => {
            if changed {
                data.health
                    .mark_dirty(ticket.backend.id(), &ticket.backend.runtime);
            }
            None
        }
        Resolution::Shared(report) => {
            let health = data.health.clone();
            let backend = Arc::clone(&ticket.backend);
            Some(tokio::spawn(async move {
                if report.await {
                    health.mark_dirty(backend.id(), &backend.runtime);
                }
            }))
        }
    }
}

/// The error for "no (more) candidates": 429 (with `Retry-After`) when backends are rate
/// limited, 503 (with `Retry-After`) when they are all cooling down after errors, 504 when the
/// last attempt timed out, 502 when upstreams failed (or redirected, or the egress policy
/// refused them), 503 when every backend is disabled or has a refused key, 429
/// `tpm_request_too_large` (not to retry) when the request is larger than every candidate's
/// whole TPM limit, and 429 `budget_exceeded` (not to retry) when every candidate is at its
/// monthly spend cap.
fn give_up<F: Fn(&BackendRecord) -> bool>(
    selection: &Selection<'_, F>,
    last: Option<&Failure>,
    now: Instant,
) -> ProxyError {
    if last.is_none() {
        if let Some((requested, largest)) = selection.tpm_too_large() {
            return ProxyError::BackendTpmTooLarge { requested, largest };
        }
        if let Some(exceeded) = selection.spend_capped(chrono::Utc::now()) {
            let resets = exceeded.resets_at.map_or_else(String::new, |at| {
                format!(
                    "; the first resets at {}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            });
            let used = exceeded.spent.saturating_add(exceeded.reserved);
            let head = if used >= exceeded.limit {
                format!(
                    "every backend for this model has used up its monthly spend cap \
                     ({used} spent of {})",
                    exceeded.limit
                )
            } else {
                format!(
                    "every backend for this model is at its monthly spend cap: none can cover \
                     this request (estimated at {}; {used} spent or reserved of {})",
                    exceeded.requested, exceeded.limit
                )
            };
            return ProxyError::BudgetExceeded {
                message: format!("{head}{resets}"),
            };
        }
    }
    let overall = selection.earliest_ready_overall_why(now);
    let earliest = overall.map(|(at, _)| at.saturating_duration_since(now));
    match last {
        None => match overall {
            Some((_, Waiting::Recovery)) => ProxyError::Recovering {
                retry_after: earliest,
            },
            Some((_, Waiting::RateLimit)) => ProxyError::NoneReady {
                retry_after: earliest,
            },
            // Every candidate was refused for a limit that has refilled since (cluster mode:
            // the shared bucket said no a moment ago): a rate limit, retry at once.
            Some((_, Waiting::Nothing)) => ProxyError::NoneReady {
                retry_after: selection
                    .earliest_ready()
                    .map(|at| at.saturating_duration_since(now))
                    .or(earliest),
            },
            None => ProxyError::Unavailable,
        },
        Some(Failure::Redirect { status }) => ProxyError::UpstreamRedirect { status: *status },
        Some(Failure::EgressRefused { detail }) => ProxyError::EgressRefused {
            detail: detail.clone(),
        },
        Some(Failure::TooLarge { limit }) => ProxyError::UpstreamTooLarge { limit: *limit },
        Some(Failure::RateLimited { retry_after }) => ProxyError::NoneReady {
            retry_after: earliest.or(*retry_after).or(Some(Duration::from_secs(1))),
        },
        Some(failure @ Failure::Timeout) => ProxyError::UpstreamTimeout {
            detail: failure.describe(),
        },
        Some(failure) => ProxyError::UpstreamFailed {
            detail: format!("last failure: {}", failure.describe()),
        },
    }
}
