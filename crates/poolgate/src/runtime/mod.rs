//! Runtime state that outlives snapshot swaps, keyed by stable ids: per backend its cooldown,
//! RPM and TPM buckets, the limits its upstream last announced, in-flight count and last error
//! ([`BackendRuntime`]), per client key its RPM and TPM buckets ([`ClientKeyRuntime`]); TPM
//! reservations are held by a request as [`TpmHold`]s. Each is reached only through a narrow API — admit a request, resolve
//! its outcome, reset, take a snapshot — so the data plane, the views and the single health
//! writer ([`HealthSink`]) agree on one state. The registry that creates them lives here too.
//! In cluster mode ([`Cluster`]) the same API runs over the state every instance shares.

mod cluster;
mod health;
mod tokens;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::cooldown::{
    Admission, CooldownPolicy, CooldownReason, CooldownState, Health, Outcome as UpstreamOutcome,
    ReadyAt,
};
use crate::domain::{
    now_ms, BackendId, BackendRecord, ClientKeyRecord, LimiterKind, LimiterLevel, PersistedHealth,
};
use crate::limits::tpm::{TpmLimiter, TpmRefusal};
use crate::limits::upstream::{Moment, UpstreamLimitState, UpstreamLimits, UpstreamLimitsView};
use crate::limits::{BucketLevel, ConcurrencyLimit, ConcurrencyPermit, RpmLimiter};
use crate::shared::{BucketClaim, BucketKey, Refusal};

use cluster::{SharedAdmission, SharedBackend};

pub use cluster::{ready_at as refusal_ready_at, Cluster};
pub use health::{health_channel, HealthMessage, HealthQueue, HealthSink};
pub use tokens::{TokenNeed, TpmHold};

/// Converts a persisted wall-clock deadline into a monotonic instant.
pub fn instant_from_ms(until_ms: i64, now: Instant) -> Instant {
    let remaining = until_ms.saturating_sub(now_ms());
    now + Duration::from_millis(u64::try_from(remaining).unwrap_or(0))
}

/// Converts a monotonic deadline into wall-clock Unix milliseconds.
pub fn ms_from_instant(until: Instant, now: Instant) -> i64 {
    let remaining = until.saturating_duration_since(now);
    now_ms().saturating_add(i64::try_from(remaining.as_millis()).unwrap_or(i64::MAX))
}

/// What a backend that is not ready waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// It is ready now.
    Nothing,
    /// A rate limit: a 429 (or 529) cooldown, or its own RPM bucket.
    RateLimit,
    /// A cooldown after errors (5xx, timeouts, connection failures).
    Recovery,
}

/// What a cooldown of this reason waits for.
pub(crate) fn waiting_for(reason: CooldownReason) -> Waiting {
    match reason {
        CooldownReason::RateLimited => Waiting::RateLimit,
        CooldownReason::ServerError | CooldownReason::AuthFailed => Waiting::Recovery,
    }
}

// === impl BackendRuntime ===

/// The runtime state of one backend.
#[derive(Debug)]
pub struct BackendRuntime {
    limiter: RpmLimiter,
    cooldown: Mutex<CooldownState>,
    in_flight: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// Cluster mode: the shared state decides admission and holds the cooldown (`limiter` and
    /// `cooldown` above are then unused but for the limit shown).
    shared: Option<SharedBackend>,
    /// Tokens per minute (in cluster mode only its limit is used: the bucket is shared).
    tpm: Arc<TpmLimiter>,
    /// What the upstream's rate-limit headers last said.
    upstream: UpstreamLimitState,
}

/// What a backend's runtime looks like at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeSnapshot {
    pub health: Health,
    /// The end of the current cooldown (past but set while half-open).
    pub cooldown_until: Option<Instant>,
    pub consecutive_429: u32,
    /// The upstream refused the key.
    pub broken: bool,
    pub last_error: Option<String>,
    pub in_flight: u32,
    /// The RPM limit in force (0 = unlimited).
    pub rpm: u32,
}

impl RuntimeSnapshot {
    /// The part of the state that survives a restart.
    pub fn persisted(&self, now: Instant) -> PersistedHealth {
        PersistedHealth {
            cooldown_until_ms: self.cooldown_until.map(|until| ms_from_instant(until, now)),
            consecutive_429_count: self.consecutive_429,
            broken: self.broken,
            last_error: self.last_error.clone(),
        }
    }
}

impl BackendRuntime {
    /// A runtime with the persisted health of a backend (a cooldown's end converted from wall
    /// clock to `now`'s clock).
    pub fn restore(rpm: u32, health: &PersistedHealth, now: Instant) -> Self {
        let until = health.cooldown_until_ms.map(|ms| instant_from_ms(ms, now));
        Self {
            limiter: RpmLimiter::new(rpm),
            cooldown: Mutex::new(CooldownState::restore(
                health.consecutive_429_count,
                until,
                health.broken,
            )),
            in_flight: AtomicU32::new(0),
            last_error: Mutex::new(health.last_error.clone()),
            shared: None,
            tpm: Arc::new(TpmLimiter::new(0, now)),
            upstream: UpstreamLimitState::default(),
        }
    }

    /// A runtime of `id` over the cluster's shared state (whose cooldown is the truth: the
    /// persisted health is not restored).
    pub fn shared(id: BackendId, rpm: u32, cluster: Arc<Cluster>) -> Self {
        Self {
            shared: Some(SharedBackend::new(cluster, id)),
            ..Self::restore(rpm, &PersistedHealth::default(), Instant::now())
        }
    }

    /// Cluster mode: the shared state this runtime uses (a capped backend's spend goes there).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.as_ref().map(|shared| &shared.cluster)
    }

    /// May a request go to this backend now? Takes the cooldown's admission (after a cooldown,
    /// the single half-open probe slot) and an RPM token; on success the returned [`Admitted`]
    /// holds an in-flight slot until it is dropped. Otherwise says when it may be ready.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Admitted, ReadyAt> {
        self.admit_tokens(now, None)
    }

    /// [`BackendRuntime::admit`] for a request needing `need` tokens (`None`: not estimated —
    /// no TPM limit applies to it). Also not ready while the upstream said it has no room left
    /// (for the prompt, or 1 token when not estimated) until its reset; with a TPM limit, the
    /// estimate is reserved (a [`TpmHold`] in the admission).
    pub fn admit_tokens(
        self: &Arc<Self>,
        now: Instant,
        need: Option<TokenNeed>,
    ) -> Result<Admitted, ReadyAt> {
        let prompt = need.map_or(1, |need| need.prompt);
        if let Some(at) = self.upstream_ready_at(prompt, now) {
            return Err(ReadyAt::At(at));
        }
        let tpm = self.tpm.tpm();
        let tokens = need.map_or(0, |need| need.total);
        if let Some(shared) = &self.shared {
            if tpm > 0 && tokens > tpm {
                return Err(ReadyAt::Never);
            }
            let needs_admit = shared.precheck(self.limiter.rpm() > 0 || tpm > 0, now)?;
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return Ok(Admitted {
                runtime: Arc::clone(self),
                probe: false,
                resolved: false,
                shared: Some(SharedAdmission::new(shared, needs_admit)),
                tokens: (tpm > 0).then_some(tokens),
                tpm: None,
            });
        }
        let probe = {
            let mut cooldown = self.cooldown.lock();
            match cooldown.admit(now) {
                Admission::Ready => false,
                Admission::Probe => true,
                Admission::ProbeInFlight => return Err(cooldown.ready_at(now)),
                Admission::Cooling { until } => return Err(ReadyAt::At(until)),
                Admission::Broken => return Err(ReadyAt::Never),
            }
        };
        if let Err(wait) = self.limiter.try_acquire(now) {
            if probe {
                self.cooldown.lock().release_probe();
            }
            return Err(ReadyAt::At(now + wait));
        }
        let hold = if tpm > 0 {
            match self.tpm.reserve(tokens, now) {
                Ok(reservation) => Some(TpmHold::local(Arc::clone(&self.tpm), reservation, 0)),
                Err(refusal) => {
                    if probe {
                        self.cooldown.lock().release_probe();
                    }
                    self.limiter.refund(now);
                    return Err(match refusal {
                        TpmRefusal::Wait(wait) => ReadyAt::At(now + wait),
                        TpmRefusal::TooLarge { .. } => ReadyAt::Never,
                    });
                }
            }
        } else {
            None
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            runtime: Arc::clone(self),
            probe,
            resolved: false,
            shared: None,
            tokens: None,
            tpm: hold,
        })
    }

    /// Takes in the rate-limit headers of an answer (success or error); `None` when it had none.
    /// In cluster mode, an answer that says nothing is left is announced to every instance, so
    /// none of them sends there before the reset.
    pub fn observe_limits(&self, headers: &http::HeaderMap) -> Option<UpstreamLimits> {
        if !UpstreamLimits::may_be_in(headers) {
            return None;
        }
        let limits = UpstreamLimits::from_headers(headers, Moment::now())?;
        self.upstream.observe(limits);
        if let Some(shared) = &self.shared {
            if let Some(until) = self
                .upstream
                .view(Instant::now())
                .and_then(|view| view.blocked_until)
            {
                shared
                    .cluster
                    .shared
                    .announce_upstream_block(&shared.id, until.timestamp_millis());
            }
        }
        Some(limits)
    }

    /// When the upstream (as this instance learned, or as another announced) has room again for
    /// a prompt of `prompt` tokens; `None` when it has now.
    fn upstream_ready_at(&self, prompt: u64, now: Instant) -> Option<Instant> {
        let local = self.upstream.ready_at(prompt, now);
        let remote = self
            .shared
            .as_ref()
            .and_then(|shared| shared.cluster.shared.upstream_block(&shared.id, now));
        local.max(remote)
    }

    /// A request of `prompt` (estimated) tokens is being sent: counted against the upstream's
    /// announced remaining figures until its next answer.
    pub fn note_sent(&self, prompt: u64) {
        self.upstream.note_sent(prompt);
    }

    /// The upstream's announced limits, for the admin API; `None` before any answer had them.
    pub fn upstream_limits(&self, now: Instant) -> Option<UpstreamLimitsView> {
        self.upstream.view(now)
    }

    /// Applies a changed TPM limit (0 = unlimited), keeping the bucket's fill.
    pub fn reconfigure_tpm(&self, tpm: u32, now: Instant) {
        if self.tpm.tpm() != u64::from(tpm) {
            self.tpm.reconfigure(u64::from(tpm), now);
        }
    }

    /// The TPM limit (0 = unlimited).
    pub fn tpm_limit(&self) -> u64 {
        self.tpm.tpm()
    }

    /// When the backend will next admit a request: the later of its cooldown's end and its next
    /// RPM token (`now` if both are there). None while broken.
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        self.ready_at_why(now).map(|(at, _)| at)
    }

    /// [`BackendRuntime::ready_at`], and what it waits for (whichever ends later).
    pub fn ready_at_why(&self, now: Instant) -> Option<(Instant, Waiting)> {
        if let Some(shared) = &self.shared {
            let token = self.token_ready_at(now);
            return shared.ready_at_why(now).map(|(at, why)| {
                if token > at {
                    (token, Waiting::RateLimit)
                } else {
                    (at, why)
                }
            });
        }
        let (cooled, reason) = {
            let cooldown = self.cooldown.lock();
            match cooldown.ready_at(now) {
                ReadyAt::Never => return None,
                ReadyAt::Now => (now, Waiting::Nothing),
                ReadyAt::At(at) => (at, waiting_for(cooldown.cooling_reason())),
            }
        };
        let token = now + self.limiter.wait_time(now);
        let token = token.max(self.token_ready_at(now));
        if token > cooled {
            Some((token, Waiting::RateLimit))
        } else {
            Some((cooled, reason))
        }
    }

    /// When the token limits let one more (small) request through: the TPM bucket out of debt
    /// and the upstream's announced reset, whichever is later.
    fn token_ready_at(&self, now: Instant) -> Instant {
        let tpm = self.tpm.wait_time(1, now).map_or(now, |wait| now + wait);
        self.upstream_ready_at(1, now)
            .map_or(tpm, |upstream| upstream.max(tpm))
    }

    /// The status shown to operators.
    pub fn health(&self, now: Instant) -> Health {
        if let Some(shared) = &self.shared {
            return shared.health();
        }
        self.cooldown.lock().health(now)
    }

    /// Why the last attempt failed (never a URL or a key).
    pub fn set_last_error(&self, text: String) {
        *self.last_error.lock() = Some(text);
    }

    /// Admin reset of this instance's state: healthy, no cooldown, no last error, nothing
    /// learned from the upstream's rate-limit headers (sent to at once). In cluster
    /// mode only the last error: the shared cooldown was reset by whoever reset it
    /// ([`BackendRuntime::reset_everywhere`]).
    pub fn reset(&self) {
        self.cooldown.lock().reset();
        *self.last_error.lock() = None;
        self.upstream.clear();
    }

    /// Admin reset, for every instance sharing the state (in cluster mode, through it). Only
    /// the control plane calls this, and then persists the result through the health writer.
    pub async fn reset_everywhere(&self) {
        if let Some(shared) = &self.shared {
            shared.reset().await;
        }
        self.reset();
    }

    /// Applies a changed RPM limit, keeping the bucket's fill.
    pub fn reconfigure_rpm(&self, rpm: u32, now: Instant) {
        if self.limiter.rpm() != rpm {
            self.limiter.reconfigure(rpm, now);
        }
    }

    /// The RPM limit and the tokens its bucket holds at `now`; `None` when unlimited.
    pub fn rpm_state(&self, now: Instant) -> Option<(u32, f64)> {
        self.limiter.state(now)
    }

    /// The RPM bucket's fill, if it changed since the last checkpoint (or always, with `all`).
    pub fn rpm_checkpoint(&self, now: Instant, all: bool) -> Option<BucketLevel> {
        self.limiter.checkpoint(now, all)
    }

    pub fn snapshot(&self, now: Instant) -> RuntimeSnapshot {
        let (until, consecutive_429, broken, health) = match &self.shared {
            Some(shared) => {
                let view = shared.view();
                (view.until, view.level, view.broken, shared.health())
            }
            None => {
                let cooldown = self.cooldown.lock();
                let snapshot = cooldown.snapshot();
                let health = cooldown.health(now);
                (
                    snapshot.until,
                    snapshot.consecutive_429,
                    snapshot.broken,
                    health,
                )
            }
        };
        RuntimeSnapshot {
            health,
            cooldown_until: until,
            consecutive_429,
            broken,
            last_error: self.last_error.lock().clone(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            rpm: self.limiter.rpm(),
        }
    }
}

/// The right to send one request to a backend: holds an in-flight slot (and, after a cooldown,
/// the half-open probe slot). Dropped without an outcome, it lets another request probe. In
/// cluster mode it may still need [`Admitted::confirm`] before the request is sent.
pub struct Admitted {
    runtime: Arc<BackendRuntime>,
    probe: bool,
    resolved: bool,
    shared: Option<SharedAdmission>,
    /// Cluster mode with a TPM limit: the tokens [`Admitted::confirm`] claims.
    tokens: Option<u64>,
    /// The backend's TPM reservation (settled with 0 if the attempt is dropped with it).
    tpm: Option<TpmHold>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("probe", &self.is_probe())
            .field("resolved", &self.resolved)
            .finish()
    }
}

/// How an upstream's outcome was taken in.
pub enum Resolution {
    /// By this instance's runtime; true when the persisted part of the health changed (the
    /// caller then marks the backend dirty for the health writer).
    Local(bool),
    /// By the shared state: run this report as its own task; it resolves to whether the
    /// persisted part changed.
    Shared(BoxFuture<'static, bool>),
}

impl Admitted {
    /// Whether the attempt needs the shared call of [`Admitted::confirm`] before it is sent:
    /// cluster mode, and the backend has a bucket or a probe to take, or the request's client
    /// key still has its token to pay (`key_claim`).
    pub fn needs_confirm(&self, key_claim: bool) -> bool {
        // (a TPM claim makes `needs_admit` true: the precheck saw a limit)
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.needs_admit || key_claim)
    }

    /// The one shared call of an attempt (cluster mode): the backend's RPM bucket, the client
    /// key's (`key`, taken with the first admitted attempt of a request), the cluster's single
    /// probe slot — all or nothing. `timeout`: the backend's time to
    /// first byte (a probe slot whose holder vanished is free again after it).
    pub async fn confirm(
        &mut self,
        key: &[BucketClaim],
        timeout: std::time::Duration,
    ) -> Result<(), Refusal> {
        let runtime = Arc::clone(&self.runtime);
        let tpm = self
            .tokens
            .map(|tokens| (runtime.tpm.tpm(), tokens))
            .filter(|(limit, _)| *limit > 0);
        match (&mut self.shared, &runtime.shared) {
            (Some(admission), Some(backend)) => {
                let claim = admission
                    .confirm(backend, runtime.limiter.rpm(), tpm, key, timeout)
                    .await?;
                if let Some(claim) = claim {
                    let shared = Arc::clone(&backend.cluster.shared);
                    self.tpm = Some(TpmHold::shared(shared, claim, 0));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The backend's TPM reservation, to be settled with the answer's usage (taken out of the
    /// admission when the attempt succeeded; an admission dropped with it settles it with 0).
    pub fn take_tpm(&mut self) -> Option<TpmHold> {
        self.tpm.take()
    }

    /// Feeds the upstream's outcome to the cooldown (this instance's, or the shared one).
    pub fn resolve(
        &mut self,
        outcome: UpstreamOutcome,
        policy: &CooldownPolicy,
        now: Instant,
    ) -> Resolution {
        self.resolved = true;
        if let (Some(admission), Some(backend)) = (&mut self.shared, &self.runtime.shared) {
            return match admission.report(backend, outcome, policy) {
                Some(report) => Resolution::Shared(report),
                None => Resolution::Local(false),
            };
        }
        let mut rng = rand::thread_rng();
        Resolution::Local(
            self.runtime
                .cooldown
                .lock()
                .record(outcome, now, policy, &mut rng),
        )
    }

    /// The attempt is not sent after all (its backend's spend cap refused the request): the
    /// RPM token this instance's bucket gave is given back (cluster mode took none yet). The
    /// in-flight slot, the probe slot and a TPM reservation go back on drop as always.
    pub fn unsent(self, now: Instant) {
        if self.shared.is_none() {
            self.runtime.limiter.refund(now);
        }
    }

    /// Whether this request is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
            || self
                .shared
                .as_ref()
                .is_some_and(|shared| shared.probe.is_some())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.runtime.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let (Some(admission), Some(backend)) = (&mut self.shared, &self.runtime.shared) {
            admission.abandon(backend);
        }
        if self.probe && !self.resolved {
            self.runtime.cooldown.lock().release_probe();
        }
    }
}

// === impl ClientKeyRuntime ===

/// The runtime state of one client key: its own RPM bucket (in cluster mode, a bucket every
/// instance shares, paid by the first admitted attempt of a request) and its requests in flight
/// (`max_parallel_requests`, counted per instance).
pub struct ClientKeyRuntime {
    limiter: RpmLimiter,
    /// Tokens per minute (cluster mode: only its limit is used, the bucket is shared).
    tpm: Arc<TpmLimiter>,
    parallel: Arc<ConcurrencyLimit>,
    /// Cluster mode: the shared state and this key's id.
    shared: Option<(Arc<Cluster>, String)>,
}

impl std::fmt::Debug for ClientKeyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeyRuntime")
            .field("rpm", &self.rpm())
            .field("parallel", &self.parallel)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl ClientKeyRuntime {
    /// `max_parallel` 0 = unlimited.
    pub fn new(rpm: u32, max_parallel: u32) -> Self {
        Self {
            limiter: RpmLimiter::new(rpm),
            tpm: Arc::new(TpmLimiter::new(0, Instant::now())),
            parallel: Arc::new(ConcurrencyLimit::new(max_parallel)),
            shared: None,
        }
    }

    /// A key whose bucket every instance shares.
    pub fn shared(id: &str, rpm: u32, max_parallel: u32, cluster: Arc<Cluster>) -> Self {
        Self {
            shared: Some((cluster, id.to_owned())),
            ..Self::new(rpm, max_parallel)
        }
    }

    /// A slot under the key's `max_parallel_requests`, or None when they are all taken.
    pub fn begin(&self) -> Option<ConcurrencyPermit> {
        self.parallel.try_acquire()
    }

    /// The key's `max_parallel_requests` (0 = unlimited).
    pub fn max_parallel(&self) -> u32 {
        self.parallel.max()
    }

    /// Takes a token, or says how long until one is there. In cluster mode the token is not
    /// taken here but by the request's first admitted attempt ([`ClientKeyRuntime::claim`]).
    /// `now` is asked only when the key has a limit: an unlimited key's request reads no clock.
    pub fn admit(&self, now: impl FnOnce() -> Instant) -> Result<(), Duration> {
        if self.shared.is_some() {
            return Ok(());
        }
        self.limiter.try_acquire_at(now)
    }

    /// Cluster mode: the shared state and this key's id (its budget is reserved there).
    pub fn cluster(&self) -> Option<(&Arc<Cluster>, &str)> {
        self.shared
            .as_ref()
            .map(|(cluster, id)| (cluster, id.as_str()))
    }

    /// Cluster mode, with a limit: the claim on the shared bucket a request pays with its first
    /// admitted attempt (all or nothing with the backend's).
    pub fn claim(&self) -> Option<BucketClaim> {
        let (cluster, id) = self.shared.as_ref()?;
        cluster.claim(BucketKey::client_rpm(id), self.rpm())
    }

    /// The key's TPM limit (0 = unlimited).
    pub fn tpm_limit(&self) -> u64 {
        self.tpm.tpm()
    }

    /// Reserves a request's `tokens` on the key's own TPM limit; `Ok(None)` when the key has
    /// none. In cluster mode only the size is checked here ([`TpmRefusal::TooLarge`]); the
    /// tokens are taken with the request's first admitted attempt ([`ClientKeyRuntime::claims`]).
    /// `on_drop`: what the hold settles with if dropped unsettled.
    pub fn reserve_tokens(
        &self,
        tokens: u64,
        on_drop: u64,
        now: Instant,
    ) -> Result<Option<TpmHold>, TpmRefusal> {
        let tpm = self.tpm.tpm();
        if tpm == 0 {
            return Ok(None);
        }
        if self.shared.is_some() {
            if tokens > tpm {
                return Err(TpmRefusal::TooLarge {
                    requested: tokens,
                    tpm,
                });
            }
            return Ok(None);
        }
        let reservation = self.tpm.reserve(tokens, now)?;
        Ok(Some(TpmHold::local(
            Arc::clone(&self.tpm),
            reservation,
            on_drop,
        )))
    }

    /// Cluster mode: the claims a request pays with its first admitted attempt — one token of
    /// the key's RPM bucket and `tokens` of its TPM bucket (each when limited).
    pub fn claims(&self, tokens: u64) -> Vec<BucketClaim> {
        let Some((cluster, id)) = self.shared.as_ref() else {
            return Vec::new();
        };
        let mut claims: Vec<BucketClaim> = self.claim().into_iter().collect();
        let tpm = self.tpm.tpm();
        if tpm > 0 {
            if let Some(mut claim) = cluster.claim(BucketKey::client_tpm(id), 1) {
                claim.per_minute = tpm;
                claim.cost = tokens;
                claims.push(claim);
            }
        }
        claims
    }

    /// Cluster mode: the hold of the key's TPM claim among `claims`, once they were taken.
    pub fn shared_hold(&self, claims: &[BucketClaim], on_drop: u64) -> Option<TpmHold> {
        let (cluster, id) = self.shared.as_ref()?;
        let key = BucketKey::client_tpm(id);
        let claim = claims.iter().find(|claim| claim.key == key)?;
        Some(TpmHold::shared(
            Arc::clone(&cluster.shared),
            claim.clone(),
            on_drop,
        ))
    }

    /// Applies a changed TPM limit (0 = unlimited), keeping the bucket's fill.
    pub fn reconfigure_tpm(&self, tpm: u32, now: Instant) {
        if self.tpm.tpm() != u64::from(tpm) {
            self.tpm.reconfigure(u64::from(tpm), now);
        }
    }

    /// Gives back the token of a request that reached no upstream (in cluster mode no token was
    /// taken then: nothing to give back).
    pub fn refund(&self, now: Instant) {
        if self.shared.is_none() {
            self.limiter.refund(now);
        }
    }

    pub fn rpm(&self) -> u32 {
        self.limiter.rpm()
    }

    /// The key's RPM limit and the tokens its bucket holds at `now` (asked only when limited);
    /// `None` when unlimited.
    pub fn rpm_state(&self, now: impl FnOnce() -> Instant) -> Option<(u32, f64)> {
        self.limiter.state_at(now)
    }

    pub fn reconfigure_rpm(&self, rpm: u32, now: Instant) {
        if self.limiter.rpm() != rpm {
            self.limiter.reconfigure(rpm, now);
        }
    }

    /// The RPM bucket's fill, if it changed since the last checkpoint (or always, with `all`).
    pub fn rpm_checkpoint(&self, now: Instant, all: bool) -> Option<BucketLevel> {
        self.limiter.checkpoint(now, all)
    }
}

// === impl RuntimeRegistry ===

/// Every runtime by stable id. Snapshot rebuilds look runtimes up here, so an edit of a backend
/// keeps its cooldown and bucket; a new backend starts from its persisted health, and a runtime
/// created after a restart continues from its stored RPM bucket level
/// ([`RuntimeRegistry::restore_levels`]). In cluster mode a new backend starts from the shared
/// state, and the buckets live in Redis: no level is stored or restored here.
#[derive(Default)]
pub struct RuntimeRegistry {
    backends: Mutex<HashMap<BackendId, Arc<BackendRuntime>>>,
    client_keys: Mutex<HashMap<String, Arc<ClientKeyRuntime>>>,
    /// Stored bucket levels waiting for their runtime to be created (single mode only).
    stored_levels: Mutex<HashMap<(LimiterKind, String), LimiterLevel>>,
    cluster: Option<Arc<Cluster>>,
}

impl std::fmt::Debug for RuntimeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeRegistry")
            .field("backends", &self.backends.lock().len())
            .field("cluster", &self.cluster.is_some())
            .finish()
    }
}

/// A stored level applied to a new limiter: refilled for the wall-clock time since it was taken.
fn restore_level(limiter: &RpmLimiter, stored: Option<LimiterLevel>, now: Instant) {
    if let Some(stored) = stored {
        let elapsed = Duration::from_millis(u64::try_from(now_ms() - stored.at_ms).unwrap_or(0));
        let level = BucketLevel {
            rpm: stored.rpm,
            level: u128::from(stored.level_units),
        };
        limiter.restore(level, elapsed, now);
    }
}

impl RuntimeRegistry {
    /// A registry whose runtimes use the cluster's shared state (`None`: this instance's own).
    pub fn new(cluster: Option<Arc<Cluster>>) -> Self {
        Self {
            cluster,
            ..Self::default()
        }
    }

    /// The cluster's shared state, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The runtime of a backend, created from its persisted health if new; its RPM limit
    /// follows the record.
    pub fn backend(&self, record: &BackendRecord, now: Instant) -> Arc<BackendRuntime> {
        let runtime = Arc::clone(
            self.backends
                .lock()
                .entry(record.id.clone())
                .or_insert_with(|| {
                    Arc::new(match &self.cluster {
                        Some(cluster) => BackendRuntime::shared(
                            record.id.clone(),
                            record.rpm_limit,
                            Arc::clone(cluster),
                        ),
                        None => {
                            let runtime =
                                BackendRuntime::restore(record.rpm_limit, &record.health, now);
                            let stored = self.take_level(LimiterKind::Backend, record.id.as_str());
                            restore_level(&runtime.limiter, stored, now);
                            runtime
                        }
                    })
                }),
        );
        runtime.reconfigure_rpm(record.rpm_limit, now);
        runtime.reconfigure_tpm(record.tpm_limit, now);
        runtime
    }

    /// The runtime of a backend, if it has one.
    pub fn find_backend(&self, id: &BackendId) -> Option<Arc<BackendRuntime>> {
        self.backends.lock().get(id).cloned()
    }

    /// The runtime of a client key; its RPM limit follows the record.
    pub fn client_key(&self, record: &ClientKeyRecord, now: Instant) -> Arc<ClientKeyRuntime> {
        let runtime = Arc::clone(
            self.client_keys
                .lock()
                .entry(record.id.clone())
                .or_insert_with(|| {
                    Arc::new(match &self.cluster {
                        Some(cluster) => ClientKeyRuntime::shared(
                            &record.id,
                            record.rpm_limit,
                            record.max_parallel_requests,
                            Arc::clone(cluster),
                        ),
                        None => {
                            let runtime = ClientKeyRuntime::new(
                                record.rpm_limit,
                                record.max_parallel_requests,
                            );
                            let stored = self.take_level(LimiterKind::ClientKey, &record.id);
                            restore_level(&runtime.limiter, stored, now);
                            runtime
                        }
                    })
                }),
        );
        runtime.reconfigure_rpm(record.rpm_limit, now);
        runtime.reconfigure_tpm(record.tpm_limit, now);
        runtime.parallel.set_max(record.max_parallel_requests);
        runtime
    }

    /// Bucket levels stored before a restart; each applies when its runtime is created.
    pub fn restore_levels(&self, levels: Vec<LimiterLevel>) {
        let mut stored = self.stored_levels.lock();
        for level in levels {
            stored.insert((level.kind, level.id.clone()), level);
        }
    }

    fn take_level(&self, kind: LimiterKind, id: &str) -> Option<LimiterLevel> {
        self.stored_levels.lock().remove(&(kind, id.to_owned()))
    }

    /// The bucket levels to store: those that changed since the last call, or all of them.
    /// None in cluster mode: the buckets live in Redis, which outlives an instance's restart.
    pub fn limiter_levels(&self, now: Instant, all: bool) -> Vec<LimiterLevel> {
        if self.cluster.is_some() {
            return Vec::new();
        }
        let at_ms = now_ms();
        let level = |kind: LimiterKind, id: &str, bucket: BucketLevel| LimiterLevel {
            kind,
            id: id.to_owned(),
            rpm: bucket.rpm,
            level_units: u64::try_from(bucket.level).unwrap_or(u64::MAX),
            at_ms,
        };
        let mut levels = Vec::new();
        for (id, runtime) in self.backends.lock().iter() {
            if let Some(bucket) = runtime.rpm_checkpoint(now, all) {
                levels.push(level(LimiterKind::Backend, id.as_str(), bucket));
            }
        }
        for (id, runtime) in self.client_keys.lock().iter() {
            if let Some(bucket) = runtime.rpm_checkpoint(now, all) {
                levels.push(level(LimiterKind::ClientKey, id, bucket));
            }
        }
        levels
    }

    /// Forgets the runtimes of backends and keys that are gone.
    pub fn retain(&self, backends: &[BackendId], client_keys: &[&str]) {
        self.backends.lock().retain(|id, _| backends.contains(id));
        self.client_keys
            .lock()
            .retain(|id, _| client_keys.contains(&id.as_str()));
    }
}

#[cfg(test)]
mod tests;
