//! [`LocalShared`]: the in-process [`SharedRuntime`] — this instance's buckets, cooldown state
//! machines, probe slots and in-flight counters. On its own it serves a single instance; inside
//! [`super::RedisShared`] it is both the mirror of the shared cooldowns (the fast path's source of
//! truth between calls) and the degraded mode, where each bucket holds this instance's share of
//! the limit: `max(1, limit / live instances)`.
//!
//! Buckets are [`TokenBucket`]s and cooldowns [`CooldownState`]s, so local and shared semantics are
//! the same code. Locks are `parking_lot` and never held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::{
    Admit, AdmitRequest, Admitted, BucketClaim, BucketKey, CooldownView, InFlightCounter, Mode,
    Precheck, ProbeToken, Refusal, SharedRuntime,
};
use crate::cooldown::{Admission, CooldownPolicy, CooldownReason, CooldownState, Outcome, ReadyAt};
use crate::domain::BackendId;
use crate::limits::TokenBucket;

/// The hint given while another attempt probes (as [`CooldownState::ready_at`] does).
const PROBE_HINT: Duration = Duration::from_secs(1);

/// One backend's cooldown as this instance knows it.
#[derive(Debug, Default)]
struct BackendEntry {
    state: CooldownState,
    reason: Option<CooldownReason>,
    /// The shared state's change counter this entry reflects (0: never seen).
    seq: u64,
    /// Has been set from the shared state at least once.
    synced: bool,
    /// Changed locally (degraded mode) since it last matched the shared state.
    dirty: bool,
}

/// Who has the last word on a backend's state in [`LocalShared::precheck_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authority {
    /// Local state is the truth (a single instance, or degraded mode).
    Local,
    /// Local state mirrors shared state; a healthy backend may skip the shared call only when the
    /// mirror is synced and the change feed is connected (no change can have been missed).
    Mirror { feed_connected: bool },
}

impl BackendEntry {
    fn view(&self) -> CooldownView {
        let snapshot = self.state.snapshot();
        CooldownView {
            until: snapshot.until,
            level: snapshot.consecutive_429,
            broken: snapshot.broken,
            reason: self.reason,
        }
    }
}

/// The shared cooldown of a backend as Redis reported it (deadline already in local time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedCooldown {
    pub view: CooldownView,
    pub seq: u64,
}

/// A local backend whose cooldown changed while degraded, to push when shared state is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalChange {
    pub backend: BackendId,
    pub until: Option<Instant>,
    pub broken: bool,
}

// === impl LocalShared ===

pub struct LocalShared {
    instance_id: Arc<str>,
    /// Live instances (1 on its own; kept up to date by the registry when inside RedisShared).
    instances: Arc<AtomicU32>,
    backends: RwLock<HashMap<BackendId, Arc<Mutex<BackendEntry>>>>,
    buckets: Mutex<HashMap<BucketKey, TokenBucket>>,
    /// This instance's attempts in flight per backend.
    in_flight: Mutex<HashMap<BackendId, InFlightCounter>>,
    next_id: AtomicU64,
}

impl LocalShared {
    /// A single instance: every bucket holds the whole limit.
    pub fn new(instance_id: impl Into<Arc<str>>) -> LocalShared {
        LocalShared::with_instances(instance_id.into(), Arc::new(AtomicU32::new(1)))
    }

    /// One of `instances` live instances: every bucket holds `max(1, limit / instances)`.
    pub(crate) fn with_instances(instance_id: Arc<str>, instances: Arc<AtomicU32>) -> LocalShared {
        LocalShared {
            instance_id,
            instances,
            backends: RwLock::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// A new id, unique across instances (`instance:n`).
    pub(crate) fn unique_id(&self) -> Arc<str> {
        self.probe_token(self.next_number())
    }

    /// A new number, unique on this instance (the `n` of [`LocalShared::unique_id`]).
    pub(crate) fn next_number(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The id `instance:n` of number `n`.
    pub(crate) fn probe_token(&self, n: u64) -> Arc<str> {
        format!("{}:{n}", self.instance_id).into()
    }

    /// The mirror says the backend is healthy (no cooldown, not even an expired one waiting for
    /// its probe; not broken), it was set from the shared state and holds no local change.
    pub(crate) fn is_healthy_and_synced(&self, backend: &BackendId) -> bool {
        let entry = self.entry(backend);
        let entry = entry.lock();
        let snapshot = entry.state.snapshot();
        entry.synced && !entry.dirty && snapshot.until.is_none() && !snapshot.broken
    }

    /// This instance's share of a limit.
    fn share(&self, per_minute: u64) -> u32 {
        let instances = u64::from(self.instances.load(Ordering::Relaxed).max(1));
        let share = (per_minute / instances).max(1);
        u32::try_from(share).unwrap_or(u32::MAX)
    }

    fn entry(&self, backend: &BackendId) -> Arc<Mutex<BackendEntry>> {
        if let Some(entry) = self.backends.read().get(backend) {
            return Arc::clone(entry);
        }
        Arc::clone(self.backends.write().entry(backend.clone()).or_default())
    }

    /// The backends this instance has seen.
    pub(crate) fn known_backends(&self) -> Vec<BackendId> {
        self.backends.read().keys().cloned().collect()
    }

    /// Replace a backend's cooldown with the shared one, unless it is not newer than what we have
    /// (`seq`) or holds a local change not pushed yet; `force` (the sync that pushed it, or a
    /// resync) always replaces.
    pub(crate) fn apply_shared(&self, backend: &BackendId, shared: &SharedCooldown, force: bool) {
        let entry = self.entry(backend);
        let mut entry = entry.lock();
        if !force && (entry.dirty || shared.seq <= entry.seq && entry.synced) {
            return;
        }
        let view = &shared.view;
        entry.state = CooldownState::restore(view.level, view.until, view.broken);
        entry.reason = view.reason;
        entry.seq = shared.seq;
        entry.synced = true;
        entry.dirty = false;
    }

    /// Backends whose cooldown changed locally since they last matched the shared state.
    pub(crate) fn local_changes(&self) -> Vec<LocalChange> {
        self.backends
            .read()
            .iter()
            .filter_map(|(backend, entry)| {
                let entry = entry.lock();
                entry.dirty.then(|| {
                    let snapshot = entry.state.snapshot();
                    LocalChange {
                        backend: backend.clone(),
                        until: snapshot.until,
                        broken: snapshot.broken,
                    }
                })
            })
            .collect()
    }

    /// Forget the local buckets (a mode change: the next degraded episode starts from `seed`).
    pub(crate) fn clear_buckets(&self) {
        self.buckets.lock().clear();
    }

    /// Creates the local bucket for `claim` holding `tokens` (at most this instance's share),
    /// unless it exists.
    pub(crate) fn seed_bucket(&self, claim: &BucketClaim, tokens: u64, now: Instant) {
        let share = self.share(claim.clamped().0);
        self.buckets
            .lock()
            .entry(claim.key.clone())
            .or_insert_with(|| {
                let mut bucket = TokenBucket::per_minute(share, now);
                // TokenBucket starts full; take what is not there (at most one share, once).
                bucket.take_up_to(u64::from(share) - tokens.min(u64::from(share)), now);
                bucket
            });
    }

    /// Precheck from the local state (see [`Authority`]).
    pub(crate) fn precheck_with(
        &self,
        backend: &BackendId,
        has_claims: bool,
        now: Instant,
        authority: Authority,
    ) -> Precheck {
        let entry = self.entry(backend);
        let entry = entry.lock();
        let snapshot = entry.state.snapshot();
        if snapshot.broken {
            return Precheck::Refused(Refusal::Broken);
        }
        match snapshot.until {
            Some(until) if now < until => Precheck::Refused(Refusal::Cooling { until }),
            // Half-open: the probe slot needs an admission.
            Some(_) => Precheck::NeedsAdmit,
            None => {
                let current = match authority {
                    Authority::Local => true,
                    Authority::Mirror { feed_connected } => feed_connected && entry.synced,
                };
                if has_claims || !current {
                    Precheck::NeedsAdmit
                } else {
                    Precheck::Ready
                }
            }
        }
    }

    /// Takes `cost` from every claim or nothing. Returns the refusal of the first bucket short.
    fn take_all(&self, claims: &[BucketClaim], now: Instant) -> Result<(), Refusal> {
        let mut buckets = self.buckets.lock();
        let mut taken: Vec<(&BucketKey, u64)> = Vec::with_capacity(claims.len());
        let mut refusal = None;
        'claims: for claim in claims {
            let (per_minute, cost) = claim.clamped();
            let share = self.share(per_minute);
            let bucket = buckets
                .entry(claim.key.clone())
                .or_insert_with(|| TokenBucket::per_minute(share, now));
            if bucket.rpm() != share {
                bucket.set_rpm(share, now);
            }
            if let Err(wait) = bucket.try_take_n(cost, now) {
                refusal = Some(Refusal::Limited {
                    key: claim.key.clone(),
                    retry_after: wait,
                });
                break 'claims;
            }
            taken.push((&claim.key, cost));
        }
        let Some(refusal) = refusal else {
            return Ok(());
        };
        for (key, count) in taken {
            if let Some(bucket) = buckets.get_mut(key) {
                bucket.give_n(count, now);
            }
        }
        Err(refusal)
    }

    /// [`SharedRuntime::admit`] at `now` (sync: nothing here waits).
    pub(crate) fn admit_at(&self, request: &AdmitRequest, now: Instant) -> Admit {
        let entry = self.entry(&request.backend);
        let mut entry = entry.lock();
        let probe = match entry.state.admit(now) {
            Admission::Ready => false,
            Admission::Probe => true,
            Admission::ProbeInFlight => {
                let retry_after = match entry.state.ready_at(now) {
                    ReadyAt::At(at) => at.saturating_duration_since(now),
                    ReadyAt::Now | ReadyAt::Never => PROBE_HINT,
                };
                return Admit::Refused(Refusal::ProbeInFlight { retry_after });
            }
            Admission::Cooling { until } => return Admit::Refused(Refusal::Cooling { until }),
            Admission::Broken => return Admit::Refused(Refusal::Broken),
        };
        if let Err(refusal) = self.take_all(&request.claims, now) {
            if probe {
                entry.state.release_probe();
            }
            return Admit::Refused(refusal);
        }
        drop(entry);
        Admit::Admitted(Admitted {
            probe: probe.then(|| ProbeToken(self.unique_id())),
            mode: Mode::Degraded,
        })
    }

    /// [`SharedRuntime::report`] at `now`; marks the entry as changed locally when it changed.
    pub(crate) fn report_at(
        &self,
        backend: &BackendId,
        outcome: Outcome,
        policy: &CooldownPolicy,
        now: Instant,
    ) -> CooldownView {
        let entry = self.entry(backend);
        let mut entry = entry.lock();
        let mut rng = rand::thread_rng();
        let before = entry.reason;
        if entry.state.record(outcome, now, policy, &mut rng) {
            entry.dirty = true;
        }
        entry.reason = entry.state.snapshot().last_reason.or(match outcome {
            Outcome::Success => None,
            _ => before,
        });
        entry.view()
    }

    pub(crate) fn release_probe_local(&self, backend: &BackendId) {
        self.entry(backend).lock().state.release_probe();
    }

    pub(crate) fn refund_at(&self, claims: &[BucketClaim], now: Instant) {
        let mut buckets = self.buckets.lock();
        for claim in claims {
            if let Some(bucket) = buckets.get_mut(&claim.key) {
                bucket.give_n(claim.clamped().1, now);
            }
        }
    }

    /// Takes `cost` more from each claim's bucket (usage beyond a reservation), stopping at
    /// empty: a local bucket has no debt.
    pub(crate) fn charge_at(&self, claims: &[BucketClaim], now: Instant) {
        let mut buckets = self.buckets.lock();
        for claim in claims {
            if let Some(bucket) = buckets.get_mut(&claim.key) {
                bucket.take_up_to(claim.clamped().1, now);
            }
        }
    }

    pub(crate) fn reset_local(&self, backend: &BackendId) {
        let entry = self.entry(backend);
        let mut entry = entry.lock();
        entry.state.reset();
        entry.reason = None;
    }

    /// This instance's in-flight counter of `backend`, created on first use.
    pub(crate) fn in_flight_counter(&self, backend: &BackendId) -> InFlightCounter {
        self.in_flight
            .lock()
            .entry(backend.clone())
            .or_default()
            .clone()
    }

    /// Every backend this instance has counted attempts on, with its count now. A counter
    /// nothing else holds any more (its backend left the snapshot, no attempt in flight) is
    /// reported this once, as 0, and then forgotten: the map does not grow with every backend
    /// ever routed to, and a deleted backend is not republished for ever.
    pub(crate) fn in_flight_counts(&self) -> Vec<(BackendId, u32)> {
        let mut counters = self.in_flight.lock();
        let counts = counters
            .iter()
            .map(|(backend, counter)| (backend.clone(), counter.get()))
            .collect();
        counters.retain(|_, counter| !counter.is_unused());
        counts
    }

    pub(crate) fn view(&self, backend: &BackendId) -> CooldownView {
        self.entry(backend).lock().view()
    }
}

#[async_trait]
impl SharedRuntime for LocalShared {
    fn mode(&self) -> Mode {
        Mode::Shared
    }

    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn live_instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed).max(1)
    }

    fn precheck(&self, backend: &BackendId, has_claims: bool, now: Instant) -> Precheck {
        self.precheck_with(backend, has_claims, now, Authority::Local)
    }

    async fn admit(&self, request: AdmitRequest) -> Admit {
        match self.admit_at(&request, Instant::now()) {
            // Alone, local state is the shared state.
            Admit::Admitted(admitted) => Admit::Admitted(Admitted {
                mode: Mode::Shared,
                ..admitted
            }),
            refused => refused,
        }
    }

    async fn report(
        &self,
        backend: &BackendId,
        outcome: Outcome,
        _probe: Option<ProbeToken>,
        policy: &CooldownPolicy,
    ) -> CooldownView {
        self.report_at(backend, outcome, policy, Instant::now())
    }

    async fn release_probe(&self, backend: &BackendId, _probe: ProbeToken) {
        self.release_probe_local(backend);
    }

    async fn refund(&self, claims: &[BucketClaim]) {
        self.refund_at(claims, Instant::now());
    }

    async fn charge(&self, claims: &[BucketClaim]) {
        self.charge_at(claims, Instant::now());
    }

    async fn reset(&self, backend: &BackendId) {
        self.reset_local(backend);
    }

    fn in_flight_counter(&self, backend: &BackendId) -> InFlightCounter {
        LocalShared::in_flight_counter(self, backend)
    }

    async fn in_flight(&self, backend: &BackendId) -> Option<u32> {
        // A read creates no counter.
        let counters = self.in_flight.lock();
        Some(counters.get(backend).map_or(0, InFlightCounter::get))
    }

    fn cooldown(&self, backend: &BackendId) -> CooldownView {
        self.view(backend)
    }
}

#[cfg(test)]
mod tests;
