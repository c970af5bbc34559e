//! Cluster mode of the runtimes: with shared runtime state ([`crate::shared`], Redis), a
//! backend's cooldown, probe slot and RPM bucket, and a client key's RPM bucket, are the whole
//! cluster's. The runtime keeps the same API; what changes underneath:
//!
//! - **admit** asks the shared state's local mirror (no I/O): a cooling or broken backend is
//!   refused at once, a healthy one without limits is sent without any shared call, and the
//!   rest are admitted *pending* — [`super::Admitted::confirm`] then makes the one atomic shared
//!   call (the backend's bucket, the client key's on the request's first admitted attempt, the
//!   cluster's single half-open probe slot, all or nothing);
//! - **resolve** hands the outcome to the shared cooldown (a success on a healthy backend costs
//!   nothing); the report runs as its own task, so a client that leaves cannot lose it;
//! - every attempt is counted in this instance's in-flight counter of the backend (one atomic
//!   add, no shared call); the heartbeat publishes the counts as a lease that expires with the
//!   instance, so the cluster-wide figure is the sum over live instances and a killed instance's
//!   attempts stop counting by themselves.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Waiting;
use crate::cooldown::{CooldownPolicy, CooldownReason, Health, Outcome, ReadyAt};
use crate::domain::BackendId;
use crate::shared::{
    Admit, AdmitRequest, BucketClaim, BucketKey, CooldownView, FailMode, InFlightCounter,
    InFlightGuard, Precheck, ProbeToken, Refusal, SharedRuntime,
};

/// How long past the backend's timeout a probe slot stays held if its holder vanishes.
const PROBE_MARGIN: Duration = Duration::from_secs(5);

/// The shared runtime state every runtime of this instance uses in cluster mode.
pub struct Cluster {
    pub shared: Arc<dyn SharedRuntime>,
    /// Limits refuse rather than use this instance's share while the shared state is unreachable.
    pub fail_closed: bool,
}

impl Cluster {
    fn fail_mode(&self) -> FailMode {
        if self.fail_closed {
            FailMode::Closed
        } else {
            FailMode::Open
        }
    }

    /// The claim of one request on a bucket of `per_minute` (0 = unlimited: none).
    pub(super) fn claim(&self, key: BucketKey, per_minute: u32) -> Option<BucketClaim> {
        (per_minute > 0).then(|| BucketClaim {
            on_unavailable: self.fail_mode(),
            ..BucketClaim::one(key, u64::from(per_minute))
        })
    }
}

// === impl SharedBackend ===

/// What a backend's runtime holds in cluster mode.
pub(super) struct SharedBackend {
    pub cluster: Arc<Cluster>,
    pub id: BackendId,
    /// When the shared bucket last said it has a token again (a hint for `Retry-After`).
    limited_until: Mutex<Option<Instant>>,
    /// This instance's attempts in flight on the backend.
    in_flight: InFlightCounter,
}

impl std::fmt::Debug for SharedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBackend")
            .field("id", &self.id)
            .finish()
    }
}

impl SharedBackend {
    pub fn new(cluster: Arc<Cluster>, id: BackendId) -> Self {
        let in_flight = cluster.shared.in_flight_counter(&id);
        Self {
            cluster,
            id,
            limited_until: Mutex::new(None),
            in_flight,
        }
    }

    fn shared(&self) -> &Arc<dyn SharedRuntime> {
        &self.cluster.shared
    }

    /// The local half of an admission: refused, or whether the shared call is needed.
    pub fn precheck(&self, limited: bool, now: Instant) -> Result<bool, ReadyAt> {
        match self.shared().precheck(&self.id, limited, now) {
            Precheck::Ready => Ok(false),
            Precheck::NeedsAdmit => Ok(true),
            Precheck::Refused(refusal) => Err(ready_at(&refusal, now)),
        }
    }

    /// Remembers a refusal's hint (the shared bucket's next token).
    pub fn refused(&self, refusal: &Refusal, now: Instant) {
        if let Refusal::Limited { key, retry_after } = refusal {
            if *key == BucketKey::backend_rpm(&self.id) || *key == BucketKey::backend_tpm(&self.id)
            {
                *self.limited_until.lock() = Some(now + *retry_after);
            }
        }
    }

    pub fn view(&self) -> CooldownView {
        self.shared().cooldown(&self.id)
    }

    pub fn health(&self) -> Health {
        let view = self.view();
        if view.broken {
            Health::Error
        } else if view.until.is_some() {
            Health::Cooling
        } else {
            Health::Healthy
        }
    }

    /// The later of the shared cooldown's end and the bucket's last hint, and what it waits for;
    /// `None` while broken.
    pub fn ready_at_why(&self, now: Instant) -> Option<(Instant, Waiting)> {
        let view = self.view();
        if view.broken {
            return None;
        }
        let (cooled, reason) = match view.until.filter(|until| *until > now) {
            None => (now, Waiting::Nothing),
            Some(until) => (
                until,
                super::waiting_for(view.reason.unwrap_or(if view.level > 0 {
                    CooldownReason::RateLimited
                } else {
                    CooldownReason::ServerError
                })),
            ),
        };
        match self.limited_until.lock().filter(|at| *at > cooled) {
            Some(token) => Some((token, Waiting::RateLimit)),
            None => Some((cooled, reason)),
        }
    }

    /// Admin reset, on every instance (the shared state tells the others).
    pub async fn reset(&self) {
        self.shared().reset(&self.id).await;
    }
}

/// What waiting on a refusal means for candidate selection.
pub fn ready_at(refusal: &Refusal, now: Instant) -> ReadyAt {
    match refusal.retry_after(now) {
        None => ReadyAt::Never,
        Some(wait) => ReadyAt::At(now + wait),
    }
}

// === impl SharedAdmission ===

/// The shared half of one admission (cluster mode).
pub(super) struct SharedAdmission {
    /// The backend needs the shared call (a bucket, a probe, or a mirror it cannot trust).
    pub needs_admit: bool,
    /// This attempt holds the cluster's half-open probe slot.
    pub probe: Option<ProbeToken>,
    /// Counts the attempt in flight until it ends.
    _in_flight: InFlightGuard,
}

impl SharedAdmission {
    pub fn new(backend: &SharedBackend, needs_admit: bool) -> Self {
        Self {
            needs_admit,
            probe: None,
            _in_flight: backend.in_flight.enter(),
        }
    }

    /// The one shared call of this attempt: the backend's buckets (RPM, and TPM when `tpm` =
    /// (limit, tokens)), `key` (the client key's buckets, first) and the probe slot — all or
    /// nothing. Returns the backend's TPM claim when it was taken.
    pub async fn confirm(
        &mut self,
        backend: &SharedBackend,
        rpm: u32,
        tpm: Option<(u64, u64)>,
        key: &[BucketClaim],
        timeout: Duration,
    ) -> Result<Option<BucketClaim>, Refusal> {
        let mut claims: Vec<BucketClaim> = key.to_vec();
        claims.extend(
            backend
                .cluster
                .claim(BucketKey::backend_rpm(&backend.id), rpm),
        );
        let tpm_claim = tpm.and_then(|(limit, tokens)| {
            let mut claim = backend
                .cluster
                .claim(BucketKey::backend_tpm(&backend.id), 1)?;
            claim.per_minute = limit;
            claim.cost = tokens;
            Some(claim)
        });
        claims.extend(tpm_claim.clone());
        let request = AdmitRequest {
            backend: backend.id.clone(),
            claims,
            probe_ttl: timeout + PROBE_MARGIN,
        };
        match backend.shared().admit(request).await {
            Admit::Admitted(admitted) => {
                self.needs_admit = false;
                self.probe = admitted.probe;
                Ok(tpm_claim)
            }
            Admit::Refused(refusal) => {
                backend.refused(&refusal, Instant::now());
                Err(refusal)
            }
        }
    }

    /// The report of an outcome, to run as its own task: true when the persisted part of the
    /// backend's health changed. `None` when there is nothing to report (a success on a healthy
    /// backend outside a probe).
    pub fn report(
        &mut self,
        backend: &SharedBackend,
        outcome: Outcome,
        policy: &CooldownPolicy,
    ) -> Option<BoxFuture<'static, bool>> {
        let probe = self.probe.take();
        let before = backend.view();
        let healthy = before.until.is_none() && before.level == 0 && !before.broken;
        if outcome == Outcome::Success && probe.is_none() && healthy {
            return None;
        }
        let shared = Arc::clone(backend.shared());
        let id = backend.id.clone();
        let policy = policy.clone();
        Some(Box::pin(async move {
            let after = shared.report(&id, outcome, probe, &policy).await;
            (after.until, after.level, after.broken) != (before.until, before.level, before.broken)
        }))
    }

    /// The attempt ended without an outcome: a probe slot still held goes back (in the
    /// background).
    pub fn abandon(&mut self, backend: &SharedBackend) {
        if let Some(probe) = self.probe.take() {
            let shared = Arc::clone(backend.shared());
            let id = backend.id.clone();
            tokio::spawn(async move { shared.release_probe(&id, probe).await });
        }
    }
}
