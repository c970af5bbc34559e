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

use std::sync::Arc;

use chrono::Utc;

use super::context::RequestContext;
use super::error::ProxyError;
use super::plan::Inbound;
use crate::pricing::{BudgetReservation, Nanodollars, SpendLedger};
use crate::routing::Route;

/// A key's reservation, settled exactly once.
pub struct SpendGuard {
    held: Option<(Arc<SpendLedger>, BudgetReservation)>,
}

impl std::fmt::Debug for SpendGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let amount = self
            .held
            .as_ref()
            .map(|(_, reservation)| reservation.amount());
        f.debug_struct("SpendGuard")
            .field("reserved", &amount)
            .finish()
    }
}

impl SpendGuard {
    /// Releases the reservation and records `cost` in the windows it was made in.
    pub fn settle(mut self, cost: Nanodollars) {
        if let Some((ledger, reservation)) = self.held.take() {
            ledger.settle(reservation, cost, Utc::now());
        }
    }
}

impl Drop for SpendGuard {
    /// Never written: the request is charged its estimate (a budget never forgets a request).
    fn drop(&mut self) {
        if let Some((ledger, reservation)) = self.held.take() {
            let estimate = reservation.amount();
            ledger.settle(reservation, estimate, Utc::now());
        }
    }
}

/// Reserves the request's estimated cost in its client key's budget, if the key has one:
/// `Ok(None)` without a budget, the 429 `budget_exceeded` refusal when a window cannot cover it.
/// The estimate is the highest over the route's candidates (the backend is not chosen yet); a
/// candidate whose model has no price adds 0, which still cannot pass a spent budget.
pub fn admit(
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
    let estimate = estimate_cost(ctx, inbound, route);
    match ledger.reserve(estimate, Utc::now()) {
        Ok(reservation) => Ok(Some(SpendGuard {
            held: Some((Arc::clone(ledger), reservation)),
        })),
        Err(exceeded) => Err(ProxyError::BudgetExceeded {
            message: exceeded.message("this key"),
        }),
    }
}

/// The most the request may cost on any of the route's candidates.
fn estimate_cost(ctx: &RequestContext, inbound: &Inbound, route: &Route) -> Nanodollars {
    let mut members = route.tiers.iter().flat_map(|tier| tier.members.iter());
    let Some(first) = members.next() else {
        return Nanodollars::ZERO;
    };
    let tokens = ctx.token_estimate(inbound, first.upstream_model.as_str());
    std::iter::once(first)
        .chain(members)
        .filter_map(|member| ctx.live.prices.lookup(member.upstream_model.as_str()))
        .map(|found| {
            found
                .entry
                .price
                .estimate(tokens.prompt.tokens, tokens.output_reserve)
        })
        .max()
        .unwrap_or(Nanodollars::ZERO)
}
