//! Phase **route**: which backends may serve a request, before readiness picks one.
//!
//! 1. **Response affinity.** A request about a stored response — `previous_response_id`, or a
//!    `GET`/`DELETE`/`cancel`/`input_items` on `/v1/responses/{id}` — may only go to the backend
//!    that made it (another key answers 404): its route is that one backend. A call on a
//!    response poolgate does not know (or one another caller made) is a 404 from poolgate; an
//!    unknown `previous_response_id` is routed as usual (the upstream says what it knows).
//! 2. **The model's route**: aliases resolve, then exact over wildcard mappings
//!    ([`crate::routing::RouteTable`]); the client key's allowed models (the requested name or
//!    its canonical one) and its own RPM bucket.
//! 3. **Sticky routing**: a request with an affinity key prefers the backend its session went
//!    to last (tried first in its pool, only while ready).

use std::sync::Arc;

use http::HeaderMap;
use tokio::time::Instant;

use super::context::RequestContext;
use super::error::ProxyError;
use super::plan::Inbound;
use crate::domain::{BackendId, CanonicalModel, InvalidRequest, Pool, UpstreamModel};
use crate::routing::affinity::{affinity_key, AffinityKey, ResponseOwner};
use crate::routing::models::BackendModels;
use crate::routing::{LiveBackend, Route, Routed};
use crate::state::{DataPlane, Live};
use crate::telemetry::UNROUTED_MODEL;

/// The request's sticky-routing key, when sticky routing is on for its (canonical) model and a
/// configured source yields one.
pub fn sticky_key(live: &Live, inbound: &Inbound, headers: &HeaderMap) -> Option<AffinityKey> {
    if !live.sticky.enabled || inbound.is_response_call() {
        return None;
    }
    let canonical = live.routes.canonical(&inbound.model);
    if !live.sticky.applies_to(canonical.as_str()) {
        return None;
    }
    affinity_key(&live.sticky, &canonical, headers, inbound.body())
}

/// Where a request may go.
pub struct Routing {
    /// The canonical model (none for calls on a stored response).
    pub canonical: Option<CanonicalModel>,
    pub route: Arc<Route>,
    /// A sticky session's backend, tried first in its pool.
    pub preferred: Option<BackendId>,
    /// The response whose backend the route is pinned to.
    pub pinned: Option<String>,
}

impl Routing {
    /// A failure to find a ready backend, said in the request's terms: a pinned request's only
    /// backend being disabled or broken is not "every backend of the model".
    pub fn explain(&self, error: ProxyError) -> ProxyError {
        match (&self.pinned, error) {
            (Some(id), ProxyError::Unavailable) => ProxyError::OwnerUnavailable { id: id.clone() },
            (_, error) => error,
        }
    }
}

/// The routing of one request.
/// `routed` is `inbound`'s model looked up in `ctx`'s snapshot already (by [`super::observe`]),
/// if it was: the same answer, not looked up again.
pub async fn route(
    data: &DataPlane,
    ctx: &RequestContext,
    inbound: &Inbound,
    routed: Option<Routed>,
) -> Result<Routing, ProxyError> {
    let owner = match inbound.owned_response() {
        Some(id) => match data.affinity.response_owner(id).await {
            // Another caller's response: as unknown to this one as an id never made.
            Some(owner) if !may_use(ctx, &owner) => {
                return Err(not_found(inbound, id));
            }
            owner => owner.map(|owner| (id, owner)),
        },
        None => None,
    };
    if inbound.is_response_call() {
        let id = inbound.owned_response().unwrap_or_default();
        let Some((_, owner)) = owner else {
            return Err(not_found(inbound, id));
        };
        let Some(backend) = ctx.live.by_id.get(&owner.backend) else {
            return Err(not_found(inbound, id));
        };
        admit_key(ctx)?;
        // A call on a stored response names no model: its series are the unrouted ones.
        let route = Route::single(
            pool_of(ctx, backend),
            Arc::clone(backend),
            UpstreamModel::new(""),
            &data.observer,
            UNROUTED_MODEL,
        );
        return Ok(Routing {
            canonical: None,
            route: Arc::new(route),
            preferred: None,
            pinned: Some(id.to_owned()),
        });
    }

    if let Some((id, owner)) = owner {
        return pinned_follow_up(data, ctx, inbound, id, &owner);
    }
    let routed = routed
        .or_else(|| ctx.live.routes.route(&inbound.model))
        .ok_or_else(|| ProxyError::ModelNotFound {
            model: inbound.model.clone(),
        })?;
    check_allowed(ctx, inbound, Some(&routed.canonical))?;
    admit_key(ctx)?;
    let preferred = match &inbound.affinity {
        Some(key) => {
            data.affinity
                .session_backend(key, ctx.live.sticky.ttl)
                .await
        }
        None => None,
    };
    Ok(Routing {
        canonical: Some(routed.canonical),
        route: routed.route,
        preferred,
        pinned: None,
    })
}

/// The error for a response this request may not reach: 404 for a call on it, 400
/// (`previous_response_not_found`) for a follow-up.
fn not_found(inbound: &Inbound, id: &str) -> ProxyError {
    let id = id.to_owned();
    if inbound.is_response_call() {
        ProxyError::ResponseNotFound { id }
    } else {
        ProxyError::PreviousResponseNotFound { id }
    }
}

/// A follow-up (`previous_response_id`) goes to the backend that made the response, with that
/// backend's own mapping of the model — even one a more specific mapping elsewhere shadows, or
/// a backend now disabled (which then answers 503, never another key's 404).
fn pinned_follow_up(
    data: &DataPlane,
    ctx: &RequestContext,
    inbound: &Inbound,
    id: &str,
    owner: &ResponseOwner,
) -> Result<Routing, ProxyError> {
    let Some(backend) = ctx.live.by_id.get(&owner.backend) else {
        return Err(not_found(inbound, id));
    };
    let canonical = ctx.live.routes.canonical(&inbound.model);
    check_allowed(ctx, inbound, Some(&canonical))?;
    let upstream = BackendModels::new(backend.id().clone(), &backend.record.model_mappings)
        .ok()
        .and_then(|models| models.upstream_for(canonical.as_str()));
    let Some((upstream, matched)) = upstream else {
        return Err(ProxyError::InvalidRequest(InvalidRequest::param(
            format!(
                "the backend holding `previous_response_id` `{id}` does not serve the model `{}`; \
                 continue the conversation with a model it serves",
                inbound.model
            ),
            "model",
            "model_not_served_by_response_backend",
        )));
    };
    admit_key(ctx)?;
    let route = Route::single(
        pool_of(ctx, backend),
        Arc::clone(backend),
        upstream,
        &data.observer,
        &matched.label(canonical.as_str()),
    );
    Ok(Routing {
        canonical: Some(canonical),
        route: Arc::new(route),
        preferred: None,
        pinned: Some(id.to_owned()),
    })
}

/// A caller may use its own responses; the admin token may use every response.
fn may_use(ctx: &RequestContext, owner: &ResponseOwner) -> bool {
    ctx.client_key.is_none() || owner.caller == ctx.caller_id()
}

/// The client key's allowed models: the requested name or its canonical one.
fn check_allowed(
    ctx: &RequestContext,
    inbound: &Inbound,
    canonical: Option<&CanonicalModel>,
) -> Result<(), ProxyError> {
    let Some(key) = &ctx.client_key else {
        return Ok(());
    };
    let allowed = &key.record.allowed_models;
    let names = [
        Some(inbound.model.as_str()),
        canonical.map(CanonicalModel::as_str),
    ];
    if !allowed.is_empty()
        && !allowed
            .iter()
            .any(|m| names.iter().flatten().any(|name| *name == m.as_str()))
    {
        return Err(ProxyError::ModelNotAllowed {
            model: inbound.model.clone(),
        });
    }
    Ok(())
}

/// The client key's own RPM bucket.
fn admit_key(ctx: &RequestContext) -> Result<(), ProxyError> {
    if let Some(key) = &ctx.client_key {
        if let Err(wait) = key.runtime.admit(Instant::now) {
            return Err(ProxyError::KeyRateLimited {
                rpm: key.runtime.rpm(),
                retry_after: wait,
            });
        }
    }
    Ok(())
}

/// The backend's pool as the snapshot knows it.
fn pool_of(ctx: &RequestContext, backend: &LiveBackend) -> Pool {
    ctx.live
        .pools
        .iter()
        .find(|pool| pool.name == backend.record.pool)
        .cloned()
        .unwrap_or_else(|| Pool {
            name: backend.record.pool.clone(),
            priority: 0,
            description: String::new(),
        })
}
