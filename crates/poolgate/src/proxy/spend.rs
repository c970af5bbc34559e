//! The **budget** step of admission, and what a request's spend settles into: before selection a
//! client key with a budget reserves the request's estimated cost in its [`SpendLedger`] (all
//! windows at once, under one short lock); the [`SpendGuard`] holding the reservation travels
//! with the usage draft and settles it exactly once with the real cost when the record is
//! written — or, if the draft is dropped unwritten (a panic), with the estimate. Keys without a
//! budget skip all of it: no token estimate, no lock.
//!
//! How far concurrent requests can overrun a budget: by at most what the requests already in
//! flight cost beyond their estimates ([`crate::pricing::budget`] proves the bound); the
//! estimate prices every prompt token at the uncached input price plus the output the request
//! may produce (`max_tokens` & co., else 1 024 tokens, at most 32 768), so a request that stays
//! within its declared output never overruns.
//!
//! # Cluster mode
//! The reservation is one atomic call to the shared state ([`SharedRuntime::reserve_budget`]:
//! Redis's `budget.lua`, every limited window all or nothing, the same rule as the ledger), so the
//! bound above holds for all instances together. It runs in a task of its own
//! ([`reserve_budget_detached`]), which releases a reservation that a request abandoned during
//! the call (its client left) never received. It is a call of its own, not part of the bucket
//! admission (`admit.lua`): the budget is reserved once per request, before the backend is
//! chosen, at the route's highest price, and its refusal is the key's `budget_exceeded`, while the
//! bucket admission runs per attempt on the chosen backend (the key's RPM/TPM ride on the first
//! admitted one) and its refusals skip a backend. Only keys with a budget make the call. The
//! settle runs as its own task; its reply (the shared figures after it) raises the local ledger
//! — never an addition, which could count a cost twice when a figure read meanwhile already
//! held it — and a settle given up records the cost in the ledger, so the ledger stays a floor
//! of the shared figures and each reservation raises them to it (a Redis restarted empty starts
//! from the database's figures). While Redis is unreachable the local ledger answers
//! (each instance can then spend what was left when Redis went away), or, with
//! `redis.fail_closed`, the request gets 503.
//!
//! # A backend's monthly spend cap
//! Reserved per attempt, like a key's budget: once the attempt loop has chosen a capped backend,
//! and before anything is sent, [`reserve_backend`] reserves the request's estimate at *that
//! backend's* price (the same token estimate, priced for its upstream model) in the backend's
//! ledger. A cap that cannot cover it skips the backend like one whose cap is spent (the next
//! candidate, the next pool; all of them: 429 `budget_exceeded`). The [`SpendGuard`] rides in
//! the usage draft: a failed attempt releases it (settled with 0) before the next one, the
//! attempt that serves settles it with the real cost when the record is finished (a cut
//! stream's estimated usage included), and a draft dropped unwritten charges the estimate.
//! `routing::accept` still skips a backend whose ledger has nothing left (no lock beyond that
//! check, no estimate); backends without a cap skip all of it. Spend that went through no
//! reservation (calls that use no upstream tokens) is added by [`record_backend`]. The bound is
//! the key budget's: the cap is overrun by at most what the attempts in flight on the backend
//! cost beyond their estimates.
//!
//! In cluster mode the reservation is the same atomic `budget.lua` call as a key's, on the
//! backend's month window (owner [`SpendRecord::backend_owner`]: `budget:backend:<id>:m:<yyyymm>`,
//! the figure [`record_backend`] adds to and `control::spend_follower` reads once per
//! `redis.heartbeat_ms`), so the bound holds for all instances together; the settle is its own
//! task. While Redis is unreachable each instance reserves in its own ledger (the last shared
//! figure plus its own spend since: up to the whole remainder per instance), and its next
//! reservation once Redis answers seeds the shared figure with it; with `redis.fail_closed` the
//! request ends with 503 `limiter_unavailable`, as for a key's budget. An attempt on a capped
//! backend therefore makes one more Redis call on the request path (the reservation, before the
//! bucket admission, so a refused one takes no shared token), and one off it (the settle, or the
//! release of a failed attempt). On one instance a refused attempt gives its backend's RPM token
//! back.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::context::RequestContext;
use super::error::ProxyError;
use super::plan::Inbound;
use crate::domain::UpstreamModel;
use crate::pricing::{BudgetExceeded, BudgetReservation, BudgetWindow, Nanodollars, SpendLedger};
use crate::routing::{LiveBackend, Route};
use crate::runtime::Cluster;
use crate::shared::{
    reserve_budget_detached, BudgetAdmit, BudgetClaim, BudgetHold, BudgetWindowClaim,
    SharedRuntime, SpendRecord, SpendWindowSeed,
};
use crate::token_count::RequestEstimate;

/// Where a reservation was made.
enum Held {
    /// This instance's ledger (single instance, or cluster mode while Redis is unreachable).
    Local(Arc<SpendLedger>, BudgetReservation),
    /// Shared state (cluster mode); the settle's reply raises the local ledger to the shared
    /// figures (a lost settle records the cost in it instead), so that it stays a floor of the
    /// shared figures for the degraded mode.
    Shared {
        ledger: Arc<SpendLedger>,
        shared: Arc<dyn SharedRuntime>,
        hold: BudgetHold,
        /// The hold's windows, and when they were named (the settle's figures are for them).
        windows: Vec<BudgetWindow>,
        as_of: DateTime<Utc>,
    },
}

/// A reservation (a client key's budget, or a backend's cap for one attempt), settled exactly
/// once.
pub struct SpendGuard {
    held: Option<Held>,
}

impl std::fmt::Debug for SpendGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let amount = self.held.as_ref().map(|held| match held {
            Held::Local(_, reservation) => reservation.amount(),
            Held::Shared { hold, .. } => Nanodollars::new(hold.amount),
        });
        f.debug_struct("SpendGuard")
            .field("reserved", &amount)
            .finish()
    }
}

impl SpendGuard {
    /// Releases the reservation and records `cost` in the windows it was made in.
    pub fn settle(mut self, cost: Nanodollars) {
        if let Some(held) = self.held.take() {
            settle(held, Some(cost));
        }
    }
}

impl Drop for SpendGuard {
    /// Never written: the request is charged its estimate (a budget never forgets a request).
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            settle(held, None);
        }
    }
}

/// Settles with `cost`, or the estimate when `None`. A shared settle runs as its own task (the
/// usage record is not held up by Redis; the task retries through a short outage).
fn settle(held: Held, cost: Option<Nanodollars>) {
    let now = Utc::now();
    match held {
        Held::Local(ledger, reservation) => {
            let cost = cost.unwrap_or(reservation.amount());
            ledger.settle(reservation, cost, now);
        }
        Held::Shared {
            ledger,
            shared,
            hold,
            windows,
            as_of,
        } => {
            let cost = cost.unwrap_or(Nanodollars::new(hold.amount));
            // The local ledger is raised to the shared figures the settle returns (they hold
            // the cost), never added to: a figure read meanwhile (another reservation's reply,
            // the spend follower) may already hold it. Only a settle given up records the cost
            // here, so that the next reservation brings the shared figure up to it.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        match shared.settle_budget(hold, cost.get()).await {
                            Some(figures) => {
                                for (window, spent) in windows.iter().zip(figures) {
                                    if let Some(spent) = spent {
                                        ledger.observe_shared_as_of(
                                            *window,
                                            Nanodollars::new(spent),
                                            as_of,
                                            Utc::now(),
                                        );
                                    }
                                }
                            }
                            None => ledger.record(cost, Utc::now()),
                        }
                    });
                }
                Err(_) => {
                    ledger.record(cost, now);
                    tracing::warn!(
                        owner = %hold.owner,
                        "budget settle outside a runtime: the shared reservation stays"
                    );
                }
            }
        }
    }
}

/// Records `cost` (settled by a request served by `backend` without a reservation: a call that
/// uses no upstream tokens) against the backend's monthly spend cap, if it has one. In cluster
/// mode the shared figure gets it first (its own task; the
/// ledger records the cost after the call, so it stays a floor that each record raises the
/// shared figure to, and is then raised to the shared figure the reply carries).
pub fn record_backend(backend: &LiveBackend, cost: Nanodollars) {
    let Some(ledger) = &backend.spend else {
        return;
    };
    let cluster = backend.runtime.cluster();
    let runtime = tokio::runtime::Handle::try_current();
    let (Some(cluster), Ok(runtime)) = (cluster, runtime) else {
        ledger.record(cost, Utc::now());
        return;
    };
    let ledger = Arc::clone(ledger);
    let shared = Arc::clone(&cluster.shared);
    let owner = SpendRecord::backend_owner(backend.id());
    runtime.spawn(async move {
        let as_of = Utc::now();
        let windows = ledger.shared_windows(as_of);
        let record = SpendRecord {
            owner,
            cost: cost.get(),
            windows: windows
                .iter()
                .map(|window| SpendWindowSeed {
                    id: window.id.clone(),
                    seed: window.spent.get(),
                    expire_at_ms: window.expire_at_ms,
                })
                .collect(),
        };
        let figures = shared.record_spend(&record).await;
        let now = Utc::now();
        ledger.record(cost, now);
        for (window, spent) in windows.iter().zip(figures.unwrap_or_default()) {
            ledger.observe_shared_as_of(window.window, Nanodollars::new(spent), as_of, now);
        }
    });
}

/// Reserves the request's estimated cost in its client key's budget, if the key has one:
/// `Ok(None)` without a budget, the 429 `budget_exceeded` refusal when a window cannot cover it.
/// Calls that cost no upstream tokens (a stored response, `count_tokens`) reserve nothing and
/// are not refused. The estimate is the highest over the route's candidates (the backend is not chosen yet); a
/// candidate whose model has no price adds 0, which still cannot pass a spent budget.
///
/// In cluster mode the reservation is one atomic call to the shared state (every limited window,
/// all or nothing, the same rule as [`SpendLedger::reserve`]), so the budget is the cluster's;
/// while shared state is unreachable the key's local ledger answers (or, with
/// `redis.fail_closed`, the request is refused with 503).
pub async fn admit(
    ctx: &RequestContext,
    inbound: &Inbound,
    route: &Route,
) -> Result<Option<SpendGuard>, ProxyError> {
    let Some(key) = &ctx.client_key else {
        return Ok(None);
    };
    let Some(ledger) = &key.spend else {
        return Ok(None);
    };
    if inbound.is_free() {
        return Ok(None);
    }
    let estimate = estimate_cost(ctx, inbound, route);
    let shared = key
        .runtime
        .cluster()
        .map(|(cluster, id)| (cluster, id.to_owned()));
    match reserve(ledger, shared, estimate).await {
        Ok(held) => Ok(Some(SpendGuard { held: Some(held) })),
        Err(Refusal::Exceeded(exceeded)) => Err(ProxyError::BudgetExceeded {
            message: exceeded.message("this key"),
        }),
        Err(Refusal::Unavailable) => Err(ProxyError::LimiterUnavailable),
    }
}

/// Why a backend's monthly spend cap did not take an attempt's reservation.
pub enum CapRefusal {
    /// The cap cannot cover the estimate: skip the backend (like one whose cap is spent).
    Capped(BudgetExceeded),
    /// Cluster mode, shared state unreachable and `redis.fail_closed`: the request ends (503).
    Unavailable,
}

/// Phase **select**, the spend half: reserves the request's estimated cost at `backend`'s price
/// (the price of `upstream_model`) under the backend's monthly spend cap, if it has one —
/// `Ok(None)` without a cap (no estimate, no lock, no call). The [`SpendGuard`] rides in the
/// usage draft ([`super::record::UsageDraft::hold_backend_spend`]): released (settled with 0)
/// when the attempt fails, settled with the real cost when the record is finished.
///
/// In cluster mode the reservation is one atomic call to the shared state on the backend's month
/// window (`budget:backend:<id>:m:<yyyymm>`, the figure the settles add to and
/// `control::spend_follower` reads), so the cap is the cluster's; while shared state is
/// unreachable the backend's local ledger answers (or, with `redis.fail_closed`, the request
/// ends with 503), as for a client key's budget. Calls that use no upstream tokens (a stored
/// response, token counting) reserve nothing.
pub async fn reserve_backend(
    ctx: &RequestContext,
    inbound: &Inbound,
    route: &Route,
    backend: &LiveBackend,
    upstream_model: &UpstreamModel,
) -> Result<Option<SpendGuard>, CapRefusal> {
    let Some(ledger) = &backend.spend else {
        return Ok(None);
    };
    if inbound.is_free() {
        return Ok(None);
    }
    let first = route
        .members()
        .next()
        .map_or(upstream_model, |member| &member.upstream_model);
    let tokens = ctx.token_estimate(inbound, first.as_str());
    let estimate =
        price_estimate(ctx, upstream_model.as_str(), tokens).unwrap_or(Nanodollars::ZERO);
    let shared = backend
        .runtime
        .cluster()
        .map(|cluster| (cluster, SpendRecord::backend_owner(backend.id())));
    match reserve(ledger, shared, estimate).await {
        Ok(held) => Ok(Some(SpendGuard { held: Some(held) })),
        Err(Refusal::Exceeded(exceeded)) => Err(CapRefusal::Capped(exceeded)),
        Err(Refusal::Unavailable) => Err(CapRefusal::Unavailable),
    }
}

/// Why [`reserve`] refused.
enum Refusal {
    Exceeded(BudgetExceeded),
    /// Shared state unreachable, and limits fail closed.
    Unavailable,
}

/// Reserves `estimate` in every limited window of `ledger` — in cluster mode (`shared`: the
/// cluster and the owner naming the shared windows) atomically in the shared state, the ledger
/// answering while it is unreachable unless limits fail closed.
async fn reserve(
    ledger: &Arc<SpendLedger>,
    shared: Option<(&Arc<Cluster>, String)>,
    estimate: Nanodollars,
) -> Result<Held, Refusal> {
    let now = Utc::now();
    if let Some((cluster, owner)) = shared {
        let windows = ledger.shared_windows(now);
        if !windows.is_empty() {
            let claim = BudgetClaim {
                owner,
                amount: estimate.get(),
                windows: windows
                    .iter()
                    .map(|window| BudgetWindowClaim {
                        id: window.id.clone(),
                        limit: window.limit.get(),
                        seed: window.spent.get(),
                        expire_at_ms: window.expire_at_ms,
                    })
                    .collect(),
            };
            match reserve_budget_detached(&cluster.shared, claim).await {
                Some(BudgetAdmit::Reserved { hold, figures }) => {
                    for (window, (spent, _)) in windows.iter().zip(figures) {
                        ledger.observe_shared_as_of(
                            window.window,
                            Nanodollars::new(spent),
                            now,
                            Utc::now(),
                        );
                    }
                    return Ok(Held::Shared {
                        ledger: Arc::clone(ledger),
                        shared: Arc::clone(&cluster.shared),
                        hold,
                        windows: windows.iter().map(|window| window.window).collect(),
                        as_of: now,
                    });
                }
                Some(BudgetAdmit::Refused {
                    index,
                    spent,
                    reserved,
                }) => {
                    if let Some(window) = windows.get(index) {
                        ledger.observe_shared_as_of(
                            window.window,
                            Nanodollars::new(spent),
                            now,
                            Utc::now(),
                        );
                        return Err(Refusal::Exceeded(BudgetExceeded {
                            window: window.window,
                            limit: window.limit,
                            spent: Nanodollars::new(spent),
                            reserved: Nanodollars::new(reserved),
                            requested: estimate,
                            resets_at: window.window.resets_at(now),
                        }));
                    }
                }
                None if cluster.fail_closed => return Err(Refusal::Unavailable),
                // Degraded: the local ledger below.
                None => {}
            }
        }
    }
    match ledger.reserve(estimate, now) {
        Ok(reservation) => Ok(Held::Local(Arc::clone(ledger), reservation)),
        Err(exceeded) => Err(Refusal::Exceeded(exceeded)),
    }
}

/// The most the request may cost on any of the route's candidates.
fn estimate_cost(ctx: &RequestContext, inbound: &Inbound, route: &Route) -> Nanodollars {
    let Some(first) = route.members().next() else {
        return Nanodollars::ZERO;
    };
    let tokens = ctx.token_estimate(inbound, first.upstream_model.as_str());
    route
        .members()
        .filter_map(|member| price_estimate(ctx, member.upstream_model.as_str(), tokens))
        .max()
        .unwrap_or(Nanodollars::ZERO)
}

/// What `tokens` may cost at the price of `upstream_model` (`None` without a price).
fn price_estimate(
    ctx: &RequestContext,
    upstream_model: &str,
    tokens: &RequestEstimate,
) -> Option<Nanodollars> {
    ctx.live.prices.lookup(upstream_model).map(|found| {
        found
            .entry
            .price
            .estimate(tokens.prompt.tokens, tokens.output_reserve)
    })
}
