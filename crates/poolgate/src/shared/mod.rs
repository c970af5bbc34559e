//! Runtime state shared by every gateway instance (issue #10): token buckets, cooldowns, the
//! half-open probe slot, in-flight counts and the instance registry, behind one trait,
//! [`SharedRuntime`], with two implementations:
//!
//! - [`LocalShared`]: in-process state (one instance, or an instance's share while Redis is
//!   unreachable);
//! - [`RedisShared`]: Redis, one atomic server-side call (a versioned Lua script, Redis `TIME` as
//!   the clock) per admission, cooldown changes published to every instance, and a degraded mode
//!   that falls back to a [`LocalShared`] sized to this instance's share of each limit.
//!
//! # How the data plane uses it, per attempt
//! 1. [`SharedRuntime::precheck`] — local, no I/O: answers from this instance's mirror of the
//!    backend's cooldown. `Refused` (cooling, broken) skips the candidate; `Ready` sends without a
//!    shared call (no limits, backend healthy); `NeedsAdmit` calls step 2.
//! 2. [`SharedRuntime::admit`] — takes, all or nothing, `cost` tokens from every [`BucketClaim`]
//!    (the backend's RPM bucket; on the request's first admitted attempt also the client key's)
//!    and checks the cooldown deadline and the single cluster-wide half-open probe slot. One
//!    round trip in shared mode at most (for large limits, most admissions are paid from a small
//!    token allowance the previous call leased to this instance: no round trip; see
//!    `redis/allowance.rs`); local and instant in degraded mode.
//! 3. After the upstream answered: [`SharedRuntime::report`] the [`Outcome`] (a success on a
//!    healthy backend costs nothing); [`SharedRuntime::release_probe`] when a probe ended without
//!    an outcome; [`SharedRuntime::refund`] tokens taken but not used.
//!
//! Client-key budgets (issue #11) take one call of their own, once per request and only for a key
//! with a budget: [`SharedRuntime::reserve_budget`] before selection (every limited window, all
//! or nothing) and [`SharedRuntime::settle_budget`] when the request is recorded (see
//! `crate::proxy::spend` for why it is not part of the bucket admission). A backend's monthly
//! spend cap is reserved the same way per attempt on a capped backend (owner
//! [`SpendRecord::backend_owner`], its month window), settled with [`SharedRuntime::settle_budget`];
//! spend made without a reservation goes to [`SharedRuntime::record_spend`], and every instance
//! reads the figures back with [`SharedRuntime::read_spend`] (one call per heartbeat interval
//! for all capped backends).
//!
//! Every call is bounded by the configured timeout and never fails: when shared state is
//! unreachable the instance answers from its local share (or refuses a fail-closed claim with
//! [`Refusal::Unavailable`]), and [`SharedRuntime::mode`] says so.
//!
//! # Bucket semantics
//! Those of [`crate::limits::TokenBucket`]: capacity = the per-minute limit, refilled at limit/60
//! tokens per second, starting full, in exact integer units (one token = 60,000,000 units, a
//! bucket of `n`/min gains `n` units per microsecond — Redis `TIME` has microseconds). Over any
//! window `T`, all instances together are granted at most `limit + floor(limit * T / 60 s)`
//! tokens while Redis answers. Limits above [`MAX_PER_MINUTE`] are clamped (exact arithmetic in
//! Lua's doubles).

mod breaker;
mod local;
mod redis;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cooldown::{CooldownPolicy, CooldownReason, Outcome};
use crate::domain::BackendId;

pub use breaker::{Breaker, BreakerChange};
pub use local::LocalShared;
pub use redis::{InvalidRedisUrl, RedisOptions, RedisShared};

/// The largest per-minute limit (and cost) a shared bucket keeps exactly: `limit * 60,000,000`
/// must stay below 2^53 for Lua's doubles.
pub const MAX_PER_MINUTE: u64 = 150_000_000;

/// Where admissions are decided right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every instance shares one set of buckets, cooldowns and probe slots.
    Shared,
    /// Shared state is unreachable: this instance uses local buckets sized to its share.
    Degraded,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Degraded => "degraded",
        }
    }
}

/// The name of a shared token bucket, stable across instances (e.g. `backend-rpm:b-1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey(Arc<str>);

impl BucketKey {
    /// A backend's requests-per-minute bucket.
    pub fn backend_rpm(backend: &BackendId) -> BucketKey {
        BucketKey::new("backend-rpm", backend.as_str())
    }

    /// A client key's requests-per-minute bucket.
    pub fn client_rpm(client_key_id: &str) -> BucketKey {
        BucketKey::new("key-rpm", client_key_id)
    }

    /// A backend's tokens-per-minute bucket (claims cost the request's estimated tokens).
    pub fn backend_tpm(backend: &BackendId) -> BucketKey {
        BucketKey::new("backend-tpm", backend.as_str())
    }

    /// A client key's tokens-per-minute bucket.
    pub fn client_tpm(client_key_id: &str) -> BucketKey {
        BucketKey::new("key-tpm", client_key_id)
    }

    /// Any other bucket (`kind` names what it counts, e.g. `key-tpm`, `key-budget`).
    pub fn new(kind: &str, id: &str) -> BucketKey {
        BucketKey(format!("{kind}:{id}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BucketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a claim does when shared state is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Admit from this instance's share of the limit (limit ÷ live instances last seen).
    #[default]
    Open,
    /// Refuse ([`Refusal::Unavailable`]; the proxy answers 503) rather than risk going over.
    Closed,
}

/// `cost` tokens wanted from a bucket of `per_minute` capacity. Claims naming the same bucket in
/// one admission are merged (costs added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketClaim {
    pub key: BucketKey,
    /// The limit: capacity and refill per minute (1..=[`MAX_PER_MINUTE`]; clamped).
    pub per_minute: u64,
    /// Tokens to take (1 for a request; an estimate for token or money reservations).
    pub cost: u64,
    pub on_unavailable: FailMode,
}

impl BucketClaim {
    /// One token from a bucket of `per_minute`, failing open.
    pub fn one(key: BucketKey, per_minute: u64) -> BucketClaim {
        BucketClaim {
            key,
            per_minute,
            cost: 1,
            on_unavailable: FailMode::Open,
        }
    }

    /// The limit and cost as the buckets use them: in `1..=MAX_PER_MINUTE`, cost ≤ limit is not
    /// required (a cost above the limit is refused with the time a full bucket would need).
    fn clamped(&self) -> (u64, u64) {
        (
            self.per_minute.clamp(1, MAX_PER_MINUTE),
            self.cost.min(MAX_PER_MINUTE),
        )
    }
}

/// One admission: the buckets to take from, all or nothing, for one attempt on `backend`.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    pub backend: BackendId,
    pub claims: Vec<BucketClaim>,
    /// How long a half-open probe slot taken by this admission stays held if its holder vanishes
    /// (normally the backend's timeout plus a margin); released earlier by the outcome.
    pub probe_ttl: Duration,
}

/// The answer to an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Admitted(Admitted),
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// This attempt is the single half-open probe: report its outcome with this token (or
    /// [`SharedRuntime::release_probe`] it).
    pub probe: Option<ProbeToken>,
    /// The mode that decided.
    pub mode: Mode,
}

/// Why an admission was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A bucket had fewer than `cost` tokens; one is there again after `retry_after`.
    Limited {
        key: BucketKey,
        retry_after: Duration,
    },
    /// The backend cools down until then.
    Cooling { until: Instant },
    /// Another attempt (on any instance) holds the half-open probe; ask again after the hint.
    ProbeInFlight { retry_after: Duration },
    /// The upstream key failed authentication; only a success or an admin reset ends it.
    Broken,
    /// Shared state is unreachable and this claim fails closed.
    Unavailable { key: BucketKey },
}

impl Refusal {
    /// When it makes sense to ask again; `None` for broken (never by waiting).
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        match self {
            Refusal::Limited { retry_after, .. } | Refusal::ProbeInFlight { retry_after } => {
                Some(*retry_after)
            }
            Refusal::Cooling { until } => Some(until.saturating_duration_since(now)),
            Refusal::Broken => None,
            Refusal::Unavailable { .. } => Some(Duration::from_secs(1)),
        }
    }
}

/// The local answer of [`SharedRuntime::precheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precheck {
    /// Send: the backend is healthy and there is nothing to take (no shared call needed).
    Ready,
    /// Call [`SharedRuntime::admit`].
    NeedsAdmit,
    /// Skip this backend.
    Refused(Refusal),
}

/// Identifies the holder of a half-open probe slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeToken(pub(crate) Arc<str>);

/// This instance's count of attempts in flight on one backend. In shared mode each instance
/// publishes its counts with its heartbeat, as a lease that expires with the heartbeat: the
/// cluster's figure is the sum over live instances, and a killed instance's counts go with it.
/// Counting costs one atomic add per attempt — no shared call.
#[derive(Debug, Clone, Default)]
pub struct InFlightCounter(Arc<AtomicU32>);

impl InFlightCounter {
    /// Counts one attempt until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(&self.0))
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether this handle is the only one left: no other holder, no attempt in flight.
    pub(crate) fn is_unused(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

/// One attempt in flight (see [`InFlightCounter::enter`]).
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicU32>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's cooldown as this instance last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CooldownView {
    /// The end of the current (or just expired, half-open) cooldown.
    pub until: Option<Instant>,
    /// The backoff level (consecutive 429 episodes).
    pub level: u32,
    pub broken: bool,
    pub reason: Option<CooldownReason>,
}

/// A budget reservation made in shared state (cluster mode): `amount` nanodollars in every
/// limited window of a client key's budget (or of a backend's monthly spend cap), all or
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetClaim {
    /// The client key's id, or [`SpendRecord::backend_owner`].
    pub owner: String,
    pub amount: u64,
    pub windows: Vec<BudgetWindowClaim>,
}

/// One window of a [`BudgetClaim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetWindowClaim {
    /// Names the window for every instance: `d:<yyyymmdd>`, `m:<yyyymm>` or `t`.
    pub id: String,
    pub limit: u64,
    /// What is spent in the window according to this instance (the database's figure restored
    /// at start-up, plus its spend settled since, raised to the shared figures it saw): the
    /// shared figure is raised to it (a fresh Redis starts from it; spend settled while Redis
    /// was unreachable reaches it again).
    pub seed: u64,
    /// When the shared figure may be forgotten (Unix ms, a day after the window ends); `None`
    /// for the total.
    pub expire_at_ms: Option<i64>,
}

/// The answer to a [`BudgetClaim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetAdmit {
    /// Reserved; `figures` are the shared `(spent, reserved)` of each window after it.
    Reserved {
        hold: BudgetHold,
        figures: Vec<(u64, u64)>,
    },
    /// Window `index` of the claim cannot cover it; its shared `spent` and `reserved`.
    Refused {
        index: usize,
        spent: u64,
        reserved: u64,
    },
}

/// A budget reservation in shared state; settle it once with
/// [`SharedRuntime::settle_budget`]. It names its windows, so a settle after midnight touches
/// the day it was made in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetHold {
    pub owner: String,
    pub amount: u64,
    pub windows: Vec<String>,
}

/// Spend settled without a reservation on a backend that has a monthly spend cap (cluster
/// mode), for [`SharedRuntime::record_spend`]: added to the backend's shared window figures, which are
/// first raised to what this instance knows (`seed`), so a fresh Redis does not forget the month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRecord {
    /// Whose spend: [`SpendRecord::backend_owner`].
    pub owner: String,
    /// Nanodollars.
    pub cost: u64,
    pub windows: Vec<SpendWindowSeed>,
}

impl SpendRecord {
    /// The owner name of a backend's spend windows (`backend:<id>`; client keys' budgets use
    /// the key's id, which never starts so).
    pub fn backend_owner(backend: &BackendId) -> String {
        format!("backend:{}", backend.as_str())
    }
}

/// One window of a [`SpendRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendWindowSeed {
    /// As in [`BudgetWindowClaim::id`] (`m:<yyyymm>` for a backend's cap).
    pub id: String,
    /// What this instance's ledger says is spent in the window, before this cost.
    pub seed: u64,
    /// As in [`BudgetWindowClaim::expire_at_ms`].
    pub expire_at_ms: Option<i64>,
}

/// [`SharedRuntime::reserve_budget`] from a task of its own, for a request that may be abandoned
/// while the call is in flight (its client left): the script may already have reserved, and a
/// reservation nobody received would stay in the window until it is forgotten (a month for a
/// backend's cap) — the task releases it instead (settled with 0). `None` as for
/// `reserve_budget`.
pub async fn reserve_budget_detached(
    shared: &Arc<dyn SharedRuntime>,
    claim: BudgetClaim,
) -> Option<BudgetAdmit> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let admitted = shared.reserve_budget(&claim).await;
        if let Err(Some(BudgetAdmit::Reserved { hold, .. })) = reply.send(admitted) {
            shared.settle_budget(hold, 0).await;
        }
    });
    answer.await.ok().flatten()
}

/// Shared runtime state: see the module doc for the call order on the request path.
///
/// No method returns an error: unreachable shared state is a [`Mode::Degraded`] answer, logged
/// once when the mode changes.
#[async_trait]
pub trait SharedRuntime: Send + Sync + 'static {
    /// Shared, or degraded (local shares) while shared state is unreachable.
    fn mode(&self) -> Mode;

    /// This instance's id (`POOLGATE_INSTANCE_ID`, default hostname-pid).
    fn instance_id(&self) -> &str;

    /// Live instances last seen (at least 1: this one).
    fn live_instances(&self) -> u32;

    /// Whether changes made by other instances reach this one as they happen (the cooldown
    /// change feed); always true for state no other instance shares.
    fn change_feed_connected(&self) -> bool {
        true
    }

    /// Local, no I/O: can `backend` be tried, and does it need a shared admission?
    /// `has_claims`: the attempt has buckets to take from.
    fn precheck(&self, backend: &BackendId, has_claims: bool, now: Instant) -> Precheck;

    /// Admit one attempt (see [`AdmitRequest`]).
    async fn admit(&self, request: AdmitRequest) -> Admit;

    /// Feed an upstream outcome into the backend's cooldown; returns the state after it.
    /// `probe`: the token of the probe this attempt held, which is released.
    async fn report(
        &self,
        backend: &BackendId,
        outcome: Outcome,
        probe: Option<ProbeToken>,
        policy: &CooldownPolicy,
    ) -> CooldownView;

    /// The probe ended without an outcome (client gone): let another attempt probe.
    async fn release_probe(&self, backend: &BackendId, probe: ProbeToken);

    /// Give back tokens that were taken but not used (never above capacity).
    async fn refund(&self, claims: &[BucketClaim]);

    /// Take `cost` more tokens from each bucket, without admitting anything: a TPM reservation
    /// settled above its estimate. Redis lets the bucket go into debt (down to minus its
    /// capacity; the next admission waits until it is repaid); a local bucket stops at empty.
    async fn charge(&self, claims: &[BucketClaim]);

    /// Admin reset: healthy, level 0, on every instance.
    async fn reset(&self, backend: &BackendId);

    /// This instance's in-flight counter of `backend` (the same counter on every call).
    fn in_flight_counter(&self, backend: &BackendId) -> InFlightCounter;

    /// Attempts in flight on `backend` across the cluster, as last published by each live
    /// instance (at most a heartbeat old); `None` when unknown (degraded).
    async fn in_flight(&self, backend: &BackendId) -> Option<u32>;

    /// This instance's view of the backend's cooldown (local, no I/O).
    fn cooldown(&self, backend: &BackendId) -> CooldownView;

    /// Tells every other instance that `backend`'s upstream announced no room left (its
    /// rate-limit headers) until `until_ms` (Unix milliseconds). Fire and forget; nothing to do
    /// for state no other instance shares.
    fn announce_upstream_block(&self, _backend: &BackendId, _until_ms: i64) {}

    /// The end of the latest such block another instance announced for `backend`, while it
    /// runs (local, no I/O).
    fn upstream_block(&self, _backend: &BackendId, _now: Instant) -> Option<Instant> {
        None
    }

    /// Reserves a client key's budget (or a backend's spend cap) in shared state, atomically
    /// across instances; `None`
    /// when there is no shared state to ask (single instance, or unreachable: degraded), and
    /// the caller answers from its local ledger.
    async fn reserve_budget(&self, _claim: &BudgetClaim) -> Option<BudgetAdmit> {
        None
    }

    /// Releases a shared budget reservation and records the real cost (nanodollars). Returns
    /// each window's shared spend after it (`None` for a window forgotten since), or `None`
    /// when the settle did not reach shared state (single instance, or given up while
    /// unreachable): the caller then keeps the cost in its own figure.
    async fn settle_budget(&self, _hold: BudgetHold, _cost: u64) -> Option<Vec<Option<u64>>> {
        None
    }

    /// Adds spend settled on a capped backend to its shared windows (one call, no retry: the
    /// caller's ledger keeps the cost, and its next record seeds the shared figure with it).
    /// Returns each window's shared spend after it; `None` without shared state (single
    /// instance, or unreachable).
    async fn record_spend(&self, _record: &SpendRecord) -> Option<Vec<u64>> {
        None
    }

    /// The shared spend of each `(owner, window id)` (`None` for one nobody recorded yet), in
    /// one call; `None` without shared state.
    async fn read_spend(&self, _windows: &[(String, String)]) -> Option<Vec<Option<u64>>> {
        None
    }
}
