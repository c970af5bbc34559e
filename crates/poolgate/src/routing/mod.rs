//! The in-memory routing table and candidate selection. A [`Route`] lists, for one canonical
//! model, the pools that serve it in priority order; inside a pool, backends take turns in a
//! smooth weighted round-robin. The balancer yields candidates, [`accept`] filters them
//! (enabled, not cooling, not broken, RPM token available, TPM estimate reservable, the
//! upstream not out of its announced limits): readiness filters, balancing chooses.

pub mod affinity;
pub mod models;
pub mod table;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use secrecy::SecretString;
use tokio::time::Instant;

use crate::cooldown::{CooldownPolicy, Health, Outcome, ReadyAt};
use crate::domain::{BackendId, BackendRecord, BackendStatus, Pool, UpstreamModel};
use crate::runtime::{Admitted, BackendRuntime, Resolution, TokenNeed, TpmHold, Waiting};
use crate::scrub::KeyScrubber;
use crate::shared::{BucketClaim, Refusal};
use crate::telemetry::{BackendHandle, BackendLabels, Observer, RouteHandle};

pub use table::{RouteTable, Routed};

/// One backend as the proxy sees it: its definition, decrypted key and runtime counters.
pub struct LiveBackend {
    pub record: BackendRecord,
    pub api_key: SecretString,
    /// Its upstream URLs and auth header, built with the snapshot.
    pub upstream: crate::providers::target::UpstreamTarget,
    pub runtime: Arc<BackendRuntime>,
    /// Why the stored key could not be decrypted; such a backend is never routed.
    pub unreadable: Option<String>,
    /// Its metric series and trace attributes, resolved when the snapshot was built.
    pub telemetry: BackendHandle,
    /// Removes the key from what the upstream sends back (error bodies, relayed headers).
    pub scrubber: KeyScrubber,
    /// Why the egress policy refuses the backend's address, when its URL names an IP literal
    /// the policy refuses (names are checked when they are resolved).
    pub egress_refused: Option<String>,
    /// Its `monthly_spend_cap_usd` and what is spent of it; `None` without a cap.
    pub spend: Option<Arc<crate::pricing::SpendLedger>>,
}

impl LiveBackend {
    pub fn id(&self) -> &BackendId {
        &self.record.id
    }

    /// The telemetry handle of a backend record (labels: its name and pool).
    pub fn telemetry_for(observer: &Observer, record: &BackendRecord) -> BackendHandle {
        observer.backend(BackendLabels {
            name: &record.name,
            pool: record.pool.as_str(),
            api: record.api,
            api_base_url: &record.api_base_url,
        })
    }

    /// The status shown to operators, from the live counters.
    pub fn status(&self, now: Instant) -> BackendStatus {
        if !self.record.enabled {
            return BackendStatus::Disabled;
        }
        if self.unreadable.is_some() {
            return BackendStatus::Error;
        }
        match self.runtime.health(now) {
            Health::Healthy => BackendStatus::Healthy,
            Health::Cooling => BackendStatus::Cooling,
            Health::Error => BackendStatus::Error,
        }
    }
}

/// One backend serving a model, with the upstream id it knows the model by.
pub struct Member {
    pub backend: Arc<LiveBackend>,
    pub upstream_model: UpstreamModel,
    /// The series of this model on this backend.
    pub telemetry: RouteHandle,
}

/// The backends of one pool serving one model.
pub struct Tier {
    pub pool: Pool,
    pub members: Vec<Member>,
    /// Member indexes in smooth weighted round-robin order (each appears `weight` times).
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

impl Tier {
    pub fn new(pool: Pool, members: Vec<Member>) -> Self {
        let weights: Vec<u32> = members
            .iter()
            .map(|m| m.backend.record.weight.max(1))
            .collect();
        Self {
            pool,
            schedule: smooth_weighted_schedule(&weights),
            members,
            cursor: AtomicUsize::new(0),
        }
    }
}

/// nginx's smooth weighted round-robin, unrolled into one cycle: weights 5,1,1 give
/// `a a b a c a a` rather than `a a a a a b c`.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0_i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, &weight) in weights.iter().enumerate() {
            current[i] += i64::from(weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

/// Every pool serving one canonical model, in priority order.
pub struct Route {
    pub tiers: Vec<Tier>,
    /// The model's series for requests that reach no backend.
    pub telemetry: RouteHandle,
}

impl Route {
    /// A route of one backend (requests that must reach the backend holding their state);
    /// `model` is its `model` label ([`models::MatchKind::label`], or the unrouted one for a
    /// call on a stored response, which names no model).
    pub fn single(
        pool: Pool,
        backend: Arc<LiveBackend>,
        upstream_model: UpstreamModel,
        observer: &Observer,
        model: &str,
    ) -> Route {
        Route {
            tiers: vec![Tier::new(
                pool,
                vec![Member {
                    telemetry: observer.route(model, &backend.telemetry),
                    backend,
                    upstream_model,
                }],
            )],
            telemetry: observer.model(model),
        }
    }

    /// Every member of every tier.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.tiers.iter().flat_map(|tier| &tier.members)
    }
}

/// The right to send one request to a backend: which backend, the model id it knows, the pool,
/// and the runtime's admission (an in-flight slot; after a cooldown, the probe slot).
pub struct Ticket {
    pub backend: Arc<LiveBackend>,
    pub upstream_model: UpstreamModel,
    pub pool: Pool,
    /// The series of the model on this backend.
    pub telemetry: RouteHandle,
    admitted: Admitted,
}

impl Ticket {
    /// Records the upstream outcome (see [`Resolution`]).
    pub fn resolve(
        &mut self,
        outcome: Outcome,
        policy: &CooldownPolicy,
        now: Instant,
    ) -> Resolution {
        self.admitted.resolve(outcome, policy, now)
    }

    /// Cluster mode: whether the shared call of [`Ticket::confirm`] is needed before sending.
    pub fn needs_confirm(&self, key_claim: bool) -> bool {
        self.admitted.needs_confirm(key_claim)
    }

    /// The backend's TPM reservation, to settle with the answer's usage (see
    /// [`Admitted::take_tpm`]).
    pub fn take_tpm(&mut self) -> Option<TpmHold> {
        self.admitted.take_tpm()
    }

    /// Cluster mode: the attempt's one shared admission (see [`Admitted::confirm`]).
    pub async fn confirm(&mut self, key: &[BucketClaim]) -> Result<(), Refusal> {
        let timeout =
            std::time::Duration::from_secs(u64::from(self.backend.record.timeout_seconds));
        self.admitted.confirm(key, timeout).await
    }
}

/// The readiness check: enabled, key readable, and admitted by its runtime (not cooling, a token
/// in its bucket). Takes the token (and the probe slot) on success; otherwise says when it may be
/// ready. `free`: the call costs no upstream tokens, so a spent monthly cap does not stop it.
pub fn accept(
    backend: &LiveBackend,
    now: Instant,
    need: Option<TokenNeed>,
    free: bool,
) -> Result<Admitted, ReadyAt> {
    if !backend.record.enabled || backend.unreadable.is_some() {
        return Err(ReadyAt::Never);
    }
    // A backend at its monthly spend cap is skipped until the month ends, unless the call
    // spends nothing (a stored response, `count_tokens`).
    if let Some(spend) = backend.spend.as_ref().filter(|_| !free) {
        if spend.exhausted(chrono::Utc::now()).is_some() {
            return Err(ReadyAt::Never);
        }
    }
    backend.runtime.admit_tokens(now, need)
}

/// Walks a route's candidates for one client request: tiers in order, each backend at most once,
/// only backends that can serve the request. A preferred backend (a sticky session's) is tried
/// first inside its own pool: affinity never overrides pool priority or readiness.
pub struct Selection<'a, F> {
    route: &'a Route,
    serves: F,
    preferred: Option<BackendId>,
    tier: usize,
    /// Start offset into the current tier's schedule (taken once per tier per request).
    start: Option<usize>,
    /// Addresses of the backends already handed out (identity only).
    tried: Vec<usize>,
    /// Addresses of the backends the shared state refused in this pass (tried again after a
    /// rewind).
    refused: Vec<usize>,
    earliest: Option<Instant>,
    /// The request's estimated tokens, when a TPM limit applies to it.
    need: Option<TokenNeed>,
    /// Backends whose monthly spend cap could not take the request's reservation (address, why).
    cap_refused: Vec<(usize, crate::pricing::BudgetExceeded)>,
    /// The call costs no upstream tokens: monthly spend caps do not apply to it.
    free: bool,
}

impl<'a, F: Fn(&BackendRecord) -> bool> Selection<'a, F> {
    pub fn new(route: &'a Route, serves: F) -> Self {
        Self {
            route,
            serves,
            preferred: None,
            tier: 0,
            start: None,
            tried: Vec::new(),
            refused: Vec::new(),
            earliest: None,
            need: None,
            cap_refused: Vec::new(),
            free: false,
        }
    }

    /// The call costs no upstream tokens (a stored response, `count_tokens`): a backend at its
    /// monthly spend cap still serves it.
    pub fn free_of_spend_caps(&mut self) {
        self.free = true;
    }

    /// The request's estimated tokens: reserved on each candidate's TPM limit and checked
    /// against its upstream's announced remaining tokens.
    pub fn need_tokens(&mut self, need: TokenNeed) {
        self.need = Some(need);
    }

    /// Tries `backend` first in its pool (a sticky session's backend).
    pub fn prefer(&mut self, backend: BackendId) {
        self.preferred = Some(backend);
    }

    /// The next ready candidate, or None when every remaining one is not ready.
    pub fn next(&mut self, now: Instant) -> Option<Ticket> {
        while let Some(tier) = self.route.tiers.get(self.tier) {
            if self.start.is_none() {
                if let Some(member) = self
                    .preferred
                    .as_ref()
                    .and_then(|preferred| tier.members.iter().find(|m| m.backend.id() == preferred))
                {
                    if let Some(ticket) = self.try_member(tier, member, now) {
                        return Some(ticket);
                    }
                }
            }
            let len = tier.schedule.len();
            let start = *self
                .start
                .get_or_insert_with(|| tier.cursor.fetch_add(1, Ordering::Relaxed));
            for step in 0..len {
                let member = &tier.members[tier.schedule[(start + step) % len]];
                if let Some(ticket) = self.try_member(tier, member, now) {
                    return Some(ticket);
                }
            }
            self.tier += 1;
            self.start = None;
        }
        None
    }

    /// The member's ticket if it serves the request, was not tried yet and is ready.
    fn try_member(&mut self, tier: &Tier, member: &Member, now: Instant) -> Option<Ticket> {
        let key = Arc::as_ptr(&member.backend).addr();
        if self.tried.contains(&key)
            || self.refused.contains(&key)
            || !(self.serves)(&member.backend.record)
        {
            return None;
        }
        match accept(&member.backend, now, self.need, self.free) {
            Ok(admitted) => {
                self.tried.push(key);
                Some(Ticket {
                    backend: Arc::clone(&member.backend),
                    upstream_model: member.upstream_model.clone(),
                    pool: tier.pool.clone(),
                    telemetry: member.telemetry.clone(),
                    admitted,
                })
            }
            Err(ReadyAt::At(at)) => {
                self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
                None
            }
            Err(ReadyAt::Now | ReadyAt::Never) => None,
        }
    }

    /// Whether any member of the route can serve the request at all (ready or not).
    pub fn any_serves(&self) -> bool {
        self.route
            .members()
            .any(|m| (self.serves)(&m.backend.record))
    }

    /// Starts over (after waiting), keeping the list of backends already tried.
    pub fn rewind(&mut self) {
        self.tier = 0;
        self.start = None;
        self.earliest = None;
        self.refused.clear();
    }

    /// The shared state refused the ticket's backend (cluster mode): it was not tried, it is
    /// skipped until the next [`Selection::rewind`], and it may be ready at `ready`.
    pub fn refused(&mut self, ticket: Ticket, ready: ReadyAt) {
        let key = Arc::as_ptr(&ticket.backend).addr();
        self.tried.retain(|tried| *tried != key);
        self.refused.push(key);
        if let ReadyAt::At(at) = ready {
            self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
        }
    }

    /// The ticket's backend cannot take the request's reservation under its monthly spend cap:
    /// it counts as tried (never handed out again for this request) and as capped for
    /// [`Selection::spend_capped`].
    pub fn cap_refused(&mut self, ticket: Ticket, exceeded: crate::pricing::BudgetExceeded) {
        self.cap_refused
            .push((Arc::as_ptr(&ticket.backend).addr(), exceeded));
        ticket.admitted.unsent(Instant::now());
    }

    /// The earliest moment a skipped candidate may become ready.
    pub fn earliest_ready(&self) -> Option<Instant> {
        self.earliest
    }

    pub fn tried(&self) -> usize {
        self.tried.len()
    }

    /// When every enabled candidate that serves the request is at its monthly spend cap (spent,
    /// or refused the request's reservation): the refusal of the one whose cap resets first
    /// (`None` if any candidate is not capped, or none serves).
    pub fn spend_capped(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<crate::pricing::BudgetExceeded> {
        if self.free {
            return None;
        }
        let mut first: Option<crate::pricing::BudgetExceeded> = None;
        for member in self.route.members() {
            let backend = &member.backend;
            if !backend.record.enabled || !(self.serves)(&backend.record) {
                continue;
            }
            let address = Arc::as_ptr(backend).addr();
            let exceeded = match self.cap_refused.iter().find(|(at, _)| *at == address) {
                Some((_, exceeded)) => exceeded.clone(),
                None => backend.spend.as_ref()?.exhausted(now)?,
            };
            if first
                .as_ref()
                .is_none_or(|first| exceeded.resets_at < first.resets_at)
            {
                first = Some(exceeded);
            }
        }
        first
    }

    /// When the request's estimate is larger than the whole `tpm_limit` of every enabled
    /// candidate that serves it (it can never be sent): `(requested, the largest limit)`.
    pub fn tpm_too_large(&self) -> Option<(u64, u64)> {
        let need = self.need?;
        let mut largest: Option<u64> = None;
        for member in self.route.members() {
            let backend = &member.backend;
            if !backend.record.enabled || !(self.serves)(&backend.record) {
                continue;
            }
            let tpm = backend.runtime.tpm_limit();
            if tpm == 0 || need.total <= tpm {
                return None;
            }
            largest = Some(largest.map_or(tpm, |largest| largest.max(tpm)));
        }
        largest.map(|largest| (need.total, largest))
    }

    /// When the first backend of the whole route (tried ones included) will be ready again:
    /// the later of its cooldown end and its next RPM token. None if none ever will (all
    /// disabled or broken) or one is ready now.
    pub fn earliest_ready_overall(&self, now: Instant) -> Option<Instant> {
        self.earliest_ready_overall_why(now).map(|(at, _)| at)
    }

    /// [`Selection::earliest_ready_overall`], and what the route waits for: a rate limit if any
    /// backend waits for one, else recovery if any cools down after errors, else nothing (a
    /// backend looks ready now — e.g. the shared state refused it a moment ago for a bucket
    /// that has refilled since).
    pub fn earliest_ready_overall_why(&self, now: Instant) -> Option<(Instant, Waiting)> {
        let mut earliest: Option<Instant> = None;
        let mut rate_limited = false;
        let mut recovering = false;
        for member in self.route.members() {
            let backend = &member.backend;
            if !backend.record.enabled || !(self.serves)(&backend.record) {
                continue;
            }
            let Some((ready, waiting)) = backend.runtime.ready_at_why(now) else {
                continue;
            };
            rate_limited |= waiting == Waiting::RateLimit;
            recovering |= waiting == Waiting::Recovery;
            earliest = Some(earliest.map_or(ready, |e| e.min(ready)));
        }
        let waiting = if rate_limited {
            Waiting::RateLimit
        } else if recovering {
            Waiting::Recovery
        } else {
            Waiting::Nothing
        };
        earliest.map(|at| (at, waiting))
    }
}

#[cfg(test)]
mod tests;
