//! [`RedisShared`]: shared runtime state in Redis. Each admission is one atomic script call;
//! cooldown changes are published and mirrored into a [`LocalShared`] that answers the fast path
//! between calls; every call is bounded by a timeout behind a circuit breaker, and while the
//! breaker is open the same [`LocalShared`] answers with this instance's share of each limit.
//!
//! Background tasks (aborted on drop): the heartbeat (instance registry, live-instance count,
//! this instance's in-flight counts, and the breaker's half-open trial when no request comes) and
//! the change-feed subscriber.

mod allowance;
mod cooldown;
mod scripts;
mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{FromRedisValue, ScriptInvocation};
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::allowance::{Allowances, Ask};
use self::scripts::{AdmitReply, Keys};
use super::breaker::{Breaker, BreakerChange};
use super::local::{Authority, LocalShared, SharedCooldown};
use super::{
    Admit, AdmitRequest, Admitted, BucketClaim, BucketKey, BudgetAdmit, BudgetClaim, BudgetHold,
    CooldownView, FailMode, InFlightCounter, Mode, Precheck, ProbeToken, Refusal, SharedRuntime,
    SpendRecord,
};
use crate::config::default_instance_id;
use crate::cooldown::{CooldownPolicy, Outcome};
use crate::domain::BackendId;
use crate::telemetry::metrics::RedisMetrics;

/// The largest amount (nanodollars, $9M) the budget script keeps exactly in Lua's doubles.
const MAX_NANODOLLARS: u64 = 1 << 53;

/// How many times a budget settle is tried before it is given up (a second or more apart).
const SETTLE_TRIES: u32 = 10;

/// The hint given while another instance probes, at most (as [`crate::cooldown`] does).
const PROBE_HINT: Duration = Duration::from_secs(1);

/// Settings of the Redis-backed shared state (`[redis]` / `--redis-url`; see the design notes).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db` (a secret: it may hold a password).
    pub url: SecretString,
    /// This instance's id in the registry and in logs.
    pub instance_id: String,
    /// Prefix of every key and channel. The default `{poolgate}:` is a Redis Cluster hash tag.
    pub key_prefix: String,
    /// The longest any Redis call may take before the instance answers locally. Default 50 ms.
    pub call_timeout: Duration,
    /// The longest one connection attempt may take. Default 500 ms.
    pub connect_timeout: Duration,
    /// Consecutive failed calls that open the circuit breaker. Default 3.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one trial call. Default 1 s.
    pub breaker_open_for: Duration,
    /// How often this instance says it is alive; it counts as gone after 3 intervals. Default 1 s.
    pub heartbeat_interval: Duration,
    /// The largest token allowance per bucket (see `allowance`): a bucket of `n`/min leases at
    /// most `min(allowance_max, n / 6000)` tokens to this instance at a time. 0 = off: every
    /// limited admission is a Redis call. Default 32.
    pub allowance_max: u32,
}

impl RedisOptions {
    /// The defaults, for `url`.
    pub fn new(url: SecretString) -> RedisOptions {
        RedisOptions {
            url,
            instance_id: default_instance_id(),
            key_prefix: "{poolgate}:".to_owned(),
            call_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(500),
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            allowance_max: 32,
        }
    }
}

/// A Redis URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL: {0}")]
pub struct InvalidRedisUrl(String);

// === impl RedisShared ===

/// Shared runtime state in Redis; see the module doc. Cheap to share as `Arc<RedisShared>`.
pub struct RedisShared {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    options: RedisOptions,
    keys: Keys,
    client: redis::Client,
    conn: ConnectionManager,
    instance_id: Arc<str>,
    /// Live instances last seen (shared with `local` for share sizes).
    instances: Arc<AtomicU32>,
    /// The mirror of shared cooldowns, and the whole state in degraded mode.
    local: LocalShared,
    breaker: Breaker,
    /// The change-feed subscriber is connected (no published change can have been missed).
    feed_connected: AtomicBool,
    /// The mirror holds local changes (an outage, or a failed report): push and resync them
    /// (the heartbeat task does, once shared state answers).
    resync_needed: AtomicBool,
    /// Tokens left in each bucket at the last shared admission: seeds the local buckets when the
    /// instance degrades (its share of what was left, not a fresh full bucket).
    tokens_left: Mutex<HashMap<BucketKey, u64>>,
    /// Where failed calls and the degraded mode are counted (`poolgate_redis_*`), once set.
    metrics: std::sync::OnceLock<RedisMetrics>,
    /// Upstream blocks other instances announced (`ul1` messages on the change feed): until when
    /// each backend's upstream said it has no room.
    upstream_blocks: Mutex<HashMap<BackendId, Instant>>,
    /// Tokens the admit script leased to this instance, by bucket.
    allowances: Allowances,
}

impl RedisShared {
    /// Counts failed Redis calls (`poolgate_redis_errors_total{operation}`) and the degraded
    /// mode (`poolgate_redis_degraded`) in `metrics` from now on.
    pub fn report_to(&self, metrics: RedisMetrics) {
        metrics
            .degraded
            .set(i64::from(self.inner.mode() == Mode::Degraded));
        let _ = self.inner.metrics.set(metrics);
    }

    /// Connects lazily and starts the background tasks. Never fails because Redis is down (the
    /// instance then starts degraded and recovers by itself); only a malformed URL is an error.
    pub async fn start(options: RedisOptions) -> Result<RedisShared, InvalidRedisUrl> {
        let client = redis::Client::open(options.url.expose_secret())
            .map_err(|error| InvalidRedisUrl(error.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.call_timeout))
            // Reconnect quickly; the breaker, not the manager, decides when to stop trying.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|error| InvalidRedisUrl(error.to_string()))?;
        let instance_id: Arc<str> = options.instance_id.as_str().into();
        let instances = Arc::new(AtomicU32::new(1));
        let inner = Arc::new(Inner {
            keys: Keys::new(&options.key_prefix),
            breaker: Breaker::new(options.breaker_failures, options.breaker_open_for),
            local: LocalShared::with_instances(Arc::clone(&instance_id), Arc::clone(&instances)),
            client,
            conn,
            instance_id,
            instances,
            feed_connected: AtomicBool::new(false),
            resync_needed: AtomicBool::new(false),
            tokens_left: Mutex::new(HashMap::new()),
            metrics: std::sync::OnceLock::new(),
            upstream_blocks: Mutex::new(HashMap::new()),
            allowances: Allowances::new(options.allowance_max),
            options,
        });
        // One heartbeat before serving: the live-instance count (if Redis answers; if not, the
        // first calls open the breaker and the instance serves degraded until it does).
        inner.heartbeat().await;
        let tasks = vec![
            tokio::spawn(tasks::heartbeat_loop(Arc::clone(&inner))),
            tokio::spawn(tasks::change_feed_loop(Arc::clone(&inner))),
        ];
        Ok(RedisShared { inner, tasks })
    }

    /// Leaves the instance registry (graceful shutdown) and stops the background tasks.
    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let inner = Arc::clone(&self.inner);
        let mut leave = scripts::HEARTBEAT.key(inner.keys.instances());
        leave.arg("leave").arg(inner.instance_id.as_ref()).arg(0);
        let _: Option<i64> = inner.call("leave", &leave).await;
    }
}

impl Drop for RedisShared {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// === impl Inner ===

impl Inner {
    fn mode(&self) -> Mode {
        if self.breaker.is_closed() {
            Mode::Shared
        } else {
            Mode::Degraded
        }
    }

    /// Runs one script call through the breaker and the timeout; `None` when it was skipped
    /// (breaker open) or failed.
    /// `operation`: the script's name for the error count.
    async fn call<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Option<T> {
        if !self.breaker.permit(Instant::now()) {
            return None;
        }
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(
            self.options.call_timeout,
            invocation.invoke_async::<T>(&mut conn),
        )
        .await;
        match result {
            Ok(Ok(value)) => {
                match self.breaker.on_success() {
                    Some(BreakerChange::Closed) => self.on_recovered(),
                    // Calls that failed without opening the breaker were admitted from local
                    // buckets seeded then; a later outage must start from the figures the shared
                    // calls since brought back, not from those buckets (full ones, refilled
                    // meanwhile, would let each instance burst its whole share).
                    Some(BreakerChange::Forgiven) => self.local.clear_buckets(),
                    Some(BreakerChange::Opened) | None => {}
                }
                Some(value)
            }
            Ok(Err(error)) => {
                self.on_failure(operation, &error.to_string());
                None
            }
            Err(_) => {
                self.on_failure(operation, "timed out");
                None
            }
        }
    }

    fn on_failure(&self, operation: &'static str, error: &str) {
        if let Some(metrics) = self.metrics.get() {
            metrics.error(operation);
        }
        // (The local buckets are not cleared here: calls that failed before the breaker opened
        // already took from them.)
        if self.breaker.on_failure(Instant::now()) == Some(BreakerChange::Opened) {
            // Degraded mode admits from this instance's share; leased tokens are not used.
            self.allowances.clear();
            if let Some(metrics) = self.metrics.get() {
                metrics.degraded.set(1);
            }
            tracing::warn!(
                instance = %self.instance_id,
                %error,
                live_instances = self.instances.load(Ordering::Relaxed),
                "Redis unreachable: degraded mode, admitting from this instance's share of each limit"
            );
        }
    }

    /// The breaker closed again: back to shared buckets; the heartbeat task pushes what changed
    /// locally meanwhile ([`Inner::sync_all`]).
    fn on_recovered(&self) {
        self.local.clear_buckets();
        self.allowances.clear();
        self.resync_needed.store(true, Ordering::Relaxed);
        if let Some(metrics) = self.metrics.get() {
            metrics.degraded.set(0);
        }
        tracing::info!(instance = %self.instance_id, "Redis answers again: shared mode");
    }

    /// The admit script for `mode` `take` (an admission), `give` (a refund) or `owe` (an extra
    /// charge, into debt; for `give` and `owe` the cooldown keys are then not read, and
    /// `request.backend` may be any id). `probe`: the number of the probe token this admission
    /// holds if it becomes the probe; `ask`: the allowances asked for with it.
    fn admit_invocation<'a>(
        &self,
        mode: &'a str,
        (backend, probe_ttl): (&BackendId, Duration),
        merged: &[(&BucketKey, u64, u64)],
        probe: u64,
        ask: Option<&Ask<'_>>,
    ) -> ScriptInvocation<'a> {
        let mut invocation = scripts::ADMIT.key(self.keys.cooldown(backend));
        invocation
            .key(self.keys.probe(backend))
            .arg(mode)
            .arg(self.instance_id.as_ref())
            .arg(probe)
            .arg(millis(probe_ttl).max(1));
        for (index, &(key, per_minute, cost)) in merged.iter().enumerate() {
            invocation
                .key(self.keys.bucket(key))
                .arg(per_minute)
                .arg(cost)
                .arg(ask.map_or(0, |ask| ask.amount(index)));
        }
        invocation
    }

    /// Gives back (`give`) or takes more (`owe`) of `claims` without admitting anything (a TPM
    /// settle): in Redis, or in the local buckets while degraded or when the call fails.
    /// `operation`: the call's name for the error count.
    async fn adjust(
        &self,
        mode: &'static str,
        operation: &'static str,
        claims: &[BucketClaim],
        local: fn(&LocalShared, &[BucketClaim], Instant),
    ) {
        if claims.is_empty() {
            return;
        }
        if self.mode() == Mode::Degraded {
            local(&self.local, claims, Instant::now());
            return;
        }
        // The cooldown keys are not read in these modes: any backend id does.
        let invocation = self.admit_invocation(
            mode,
            (&BackendId::new("-"), Duration::ZERO),
            &merged(claims),
            0,
            None,
        );
        if self
            .call::<Vec<i64>>(operation, &invocation)
            .await
            .is_none()
        {
            local(&self.local, claims, Instant::now());
        }
    }

    /// Admits from this instance's allowances, without a call, when every claim can be paid
    /// from one and the mirror says the backend is healthy and current (shared mode, the change
    /// feed connected): a cooling, broken or half-open backend always goes to Redis.
    fn admit_from_allowances(&self, request: &AdmitRequest, now: Instant) -> bool {
        self.allowances.enabled()
            && self.breaker.is_closed()
            && self.feed_connected.load(Ordering::Relaxed)
            && self.local.is_healthy_and_synced(&request.backend)
            && self.allowances.take(&request.claims, now)
    }

    async fn admit(&self, request: AdmitRequest) -> Admit {
        if self.admit_from_allowances(&request, Instant::now()) {
            return Admit::Admitted(Admitted {
                probe: None,
                mode: Mode::Shared,
            });
        }
        let probe = self.local.next_number();
        let merged = merged(&request.claims);
        let ask = self.allowances.ask(&merged, Instant::now());
        let invocation = self.admit_invocation(
            "take",
            (&request.backend, request.probe_ttl),
            &merged,
            probe,
            Some(&ask),
        );
        let Some(reply) = self.call::<Vec<i64>>("admit", &invocation).await else {
            return self.degraded_admit(&request);
        };
        let now = Instant::now();
        let Some((reply, cooldown)) = scripts::parse_admit(&reply, merged.len()) else {
            tracing::error!(?reply, "unexpected reply from the admit script");
            return self.degraded_admit(&request);
        };
        let shared = cooldown.to_local(now);
        self.mirror(&request.backend, &shared, false);
        match reply {
            AdmitReply::Admitted {
                probe: is_probe,
                tokens_left,
                granted,
            } => {
                ask.granted(&granted, now);
                self.remember_tokens_left(&merged, &tokens_left);
                Admit::Admitted(Admitted {
                    probe: is_probe.then(|| ProbeToken(self.local.probe_token(probe))),
                    mode: Mode::Shared,
                })
            }
            AdmitReply::Limited { bucket, wait } => match merged.get(bucket) {
                Some((key, _, _)) => {
                    // Nothing left in it now: if Redis goes away next, this instance's share
                    // starts empty, not from an older (higher) figure.
                    self.tokens_left.lock().insert((*key).clone(), 0);
                    Admit::Refused(Refusal::Limited {
                        key: (*key).clone(),
                        retry_after: wait,
                    })
                }
                None => self.degraded_admit(&request),
            },
            AdmitReply::Cooling => match shared.view.until {
                Some(until) => Admit::Refused(Refusal::Cooling { until }),
                None => Admit::Refused(Refusal::ProbeInFlight {
                    retry_after: PROBE_HINT,
                }),
            },
            AdmitReply::ProbeInFlight { held_for } => Admit::Refused(Refusal::ProbeInFlight {
                retry_after: held_for.min(PROBE_HINT),
            }),
            AdmitReply::Broken => Admit::Refused(Refusal::Broken),
            AdmitReply::GivenBack => self.degraded_admit(&request),
        }
    }

    /// Takes a backend's shared cooldown into the mirror; a cooldown (or broken, or half-open)
    /// drops the allowances of the backend's buckets.
    pub(super) fn mirror(&self, backend: &BackendId, shared: &SharedCooldown, force: bool) {
        self.local.apply_shared(backend, shared, force);
        if shared.view.until.is_some() || shared.view.broken {
            self.allowances.forget(&BucketKey::backend_rpm(backend));
            self.allowances.forget(&BucketKey::backend_tpm(backend));
        }
    }

    /// `merged`: the admission's buckets, as sent (one figure of `tokens_left` each).
    fn remember_tokens_left(&self, merged: &[(&BucketKey, u64, u64)], tokens_left: &[i64]) {
        let mut remembered = self.tokens_left.lock();
        for (&(key, _, _), &left) in merged.iter().zip(tokens_left) {
            remembered.insert(key.clone(), u64::try_from(left).unwrap_or(0));
        }
    }

    /// The admission without Redis: fail-closed claims refuse, the others take from this
    /// instance's share.
    fn degraded_admit(&self, request: &AdmitRequest) -> Admit {
        if let Some(claim) = request
            .claims
            .iter()
            .find(|claim| claim.on_unavailable == FailMode::Closed)
        {
            return Admit::Refused(Refusal::Unavailable {
                key: claim.key.clone(),
            });
        }
        let now = Instant::now();
        let instances = u64::from(self.instances.load(Ordering::Relaxed).max(1));
        {
            let remembered = self.tokens_left.lock();
            for claim in &request.claims {
                let tokens = remembered
                    .get(&claim.key)
                    .map_or(u64::MAX, |left| left / instances);
                self.local.seed_bucket(claim, tokens, now);
            }
        }
        self.local.admit_at(request, now)
    }

    /// One heartbeat: refreshes this instance in the registry and the live-instance count.
    async fn heartbeat(&self) {
        let ttl = self.options.heartbeat_interval.saturating_mul(3);
        let mut beat = scripts::HEARTBEAT.key(self.keys.instances());
        beat.arg("beat")
            .arg(self.instance_id.as_ref())
            .arg(millis(ttl).max(1));
        if let Some(live) = self.call::<i64>("heartbeat", &beat).await {
            let live = u32::try_from(live).unwrap_or(u32::MAX).max(1);
            self.instances.store(live, Ordering::Relaxed);
            self.publish_in_flight().await;
        }
    }

    /// Publishes this instance's in-flight count of every backend it has counted (with the
    /// heartbeat: the counts live as long as the instance's registry entry, plus the hash's own
    /// expiry once no instance publishes any more).
    async fn publish_in_flight(&self) {
        let counts = self.local.in_flight_counts();
        if counts.is_empty() {
            return;
        }
        let ttl = self.options.heartbeat_interval.saturating_mul(3);
        let mut put = scripts::IN_FLIGHT.key(self.keys.instances());
        for (backend, _) in &counts {
            put.key(self.keys.in_flight(backend));
        }
        put.arg("put")
            .arg(self.instance_id.as_ref())
            .arg(millis(ttl).max(1));
        for (_, count) in &counts {
            put.arg(*count);
        }
        let _: Option<i64> = self.call("in_flight", &put).await;
    }
}

/// The claims with one entry per bucket (costs of the same bucket added, its smallest limit),
/// in first-seen order: the script reads every bucket before writing any, so a bucket named twice
/// would be charged once.
fn merged(claims: &[BucketClaim]) -> Vec<(&BucketKey, u64, u64)> {
    let mut merged: Vec<(&BucketKey, u64, u64)> = Vec::with_capacity(claims.len());
    for claim in claims {
        let (per_minute, cost) = claim.clamped();
        match merged.iter_mut().find(|(key, _, _)| *key == &claim.key) {
            Some(entry) => {
                entry.1 = entry.1.min(per_minute);
                entry.2 = entry.2.saturating_add(cost).min(super::MAX_PER_MINUTE);
            }
            None => merged.push((&claim.key, per_minute, cost)),
        }
    }
    merged
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl SharedRuntime for RedisShared {
    fn mode(&self) -> Mode {
        self.inner.mode()
    }

    fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    fn live_instances(&self) -> u32 {
        self.inner.instances.load(Ordering::Relaxed).max(1)
    }

    fn change_feed_connected(&self) -> bool {
        self.inner.feed_connected.load(Ordering::Relaxed)
    }

    fn precheck(&self, backend: &BackendId, has_claims: bool, now: Instant) -> Precheck {
        let authority = match self.inner.mode() {
            Mode::Degraded => Authority::Local,
            Mode::Shared => Authority::Mirror {
                feed_connected: self.inner.feed_connected.load(Ordering::Relaxed),
            },
        };
        self.inner
            .local
            .precheck_with(backend, has_claims, now, authority)
    }

    async fn admit(&self, request: AdmitRequest) -> Admit {
        self.inner.admit(request).await
    }

    async fn report(
        &self,
        backend: &BackendId,
        outcome: Outcome,
        probe: Option<ProbeToken>,
        policy: &CooldownPolicy,
    ) -> CooldownView {
        self.inner.report(backend, outcome, probe, policy).await
    }

    async fn release_probe(&self, backend: &BackendId, probe: ProbeToken) {
        self.inner.local.release_probe_local(backend);
        if let Some(cooldown) = self
            .inner
            .report_event(backend, "release", &probe.0, (-1, false))
            .await
        {
            self.inner.apply(backend, cooldown, false);
        }
    }

    async fn refund(&self, claims: &[BucketClaim]) {
        self.inner
            .adjust("give", "refund", claims, LocalShared::refund_at)
            .await;
    }

    async fn charge(&self, claims: &[BucketClaim]) {
        self.inner
            .adjust("owe", "charge", claims, LocalShared::charge_at)
            .await;
    }

    async fn reset(&self, backend: &BackendId) {
        self.inner.local.reset_local(backend);
        match self
            .inner
            .report_event(backend, "reset", "", (-1, false))
            .await
        {
            Some(cooldown) => {
                self.inner.apply(backend, cooldown, true);
            }
            None => tracing::warn!(
                backend = %backend,
                "Redis unreachable: cooldown reset on this instance only"
            ),
        }
    }

    fn in_flight_counter(&self, backend: &BackendId) -> InFlightCounter {
        self.inner.local.in_flight_counter(backend)
    }

    async fn in_flight(&self, backend: &BackendId) -> Option<u32> {
        let mut sum = scripts::IN_FLIGHT.key(self.inner.keys.instances());
        sum.key(self.inner.keys.in_flight(backend)).arg("sum");
        let counts: Vec<i64> = self.inner.call("in_flight", &sum).await?;
        let count = counts.first().copied().unwrap_or(0);
        Some(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn cooldown(&self, backend: &BackendId) -> CooldownView {
        self.inner.local.view(backend)
    }

    fn announce_upstream_block(&self, backend: &BackendId, until_ms: i64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let message = upstream_block_message(backend, until_ms);
        runtime.spawn(async move { inner.publish(message).await });
    }

    fn upstream_block(&self, backend: &BackendId, now: Instant) -> Option<Instant> {
        let mut blocks = self.inner.upstream_blocks.lock();
        match blocks.get(backend) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                blocks.remove(backend);
                None
            }
            None => None,
        }
    }

    async fn reserve_budget(&self, claim: &BudgetClaim) -> Option<BudgetAdmit> {
        let inner = &self.inner;
        let mut take = scripts::BUDGET.prepare_invoke();
        take.arg("take").arg(claim.amount.min(MAX_NANODOLLARS));
        for window in &claim.windows {
            take.key(inner.keys.budget(&claim.owner, &window.id))
                .arg(window.limit.min(MAX_NANODOLLARS))
                .arg(window.seed.min(MAX_NANODOLLARS))
                .arg(window.expire_at_ms.unwrap_or(0).max(0));
        }
        let reply: Vec<i64> = inner.call("budget", &take).await?;
        let amount = |value: i64| u64::try_from(value).unwrap_or(0);
        match reply.as_slice() {
            [0, figures @ ..] if figures.len() == 2 * claim.windows.len() => {
                Some(BudgetAdmit::Reserved {
                    hold: BudgetHold {
                        owner: claim.owner.clone(),
                        amount: claim.amount.min(MAX_NANODOLLARS),
                        windows: claim.windows.iter().map(|w| w.id.clone()).collect(),
                    },
                    figures: figures
                        .chunks(2)
                        .map(|pair| (amount(pair[0]), amount(pair[1])))
                        .collect(),
                })
            }
            // 1-based in Lua.
            &[index, spent, reserved] if index >= 1 => Some(BudgetAdmit::Refused {
                index: usize::try_from(index - 1).ok()?,
                spent: amount(spent),
                reserved: amount(reserved),
            }),
            _ => {
                tracing::error!(?reply, "unexpected reply from the budget script");
                None
            }
        }
    }

    async fn settle_budget(&self, hold: BudgetHold, cost: u64) -> Option<Vec<Option<u64>>> {
        if hold.windows.is_empty() {
            return Some(Vec::new());
        }
        let inner = &self.inner;
        let mut settle = scripts::BUDGET.prepare_invoke();
        settle
            .arg("settle")
            .arg(hold.amount)
            .arg(cost.min(MAX_NANODOLLARS));
        for window in &hold.windows {
            settle.key(inner.keys.budget(&hold.owner, window));
        }
        // A settle must not be lost (the reservation would stay until its window is forgotten,
        // for the total never): retry through a short outage, then give up loudly.
        for attempt in 0..SETTLE_TRIES {
            if let Some(reply) = inner.call::<Vec<i64>>("budget", &settle).await {
                return Some(match reply.as_slice() {
                    [0, spent @ ..] if spent.len() == hold.windows.len() => spent
                        .iter()
                        .map(|&value| u64::try_from(value).ok())
                        .collect(),
                    _ => {
                        // Landed, but says nothing usable: the figures come with the next read.
                        tracing::error!(?reply, "unexpected reply from the budget script");
                        Vec::new()
                    }
                });
            }
            if attempt + 1 < SETTLE_TRIES {
                tokio::time::sleep(
                    inner
                        .options
                        .breaker_open_for
                        .max(Duration::from_millis(100)),
                )
                .await;
            }
        }
        tracing::warn!(
            key = %hold.owner,
            reserved = hold.amount,
            cost,
            "budget settle lost (Redis unreachable): the shared reservation stays until its window is forgotten"
        );
        None
    }

    async fn record_spend(&self, record: &SpendRecord) -> Option<Vec<u64>> {
        self.record_spend_now(record).await
    }

    async fn read_spend(&self, windows: &[(String, String)]) -> Option<Vec<Option<u64>>> {
        self.read_spend_now(windows).await
    }
}

impl RedisShared {
    /// See [`SharedRuntime::record_spend`].
    async fn record_spend_now(&self, record: &SpendRecord) -> Option<Vec<u64>> {
        if record.windows.is_empty() {
            return Some(Vec::new());
        }
        let inner = &self.inner;
        let mut add = scripts::BUDGET.prepare_invoke();
        add.arg("record").arg(record.cost.min(MAX_NANODOLLARS));
        for window in &record.windows {
            add.key(inner.keys.budget(&record.owner, &window.id))
                .arg(window.seed.min(MAX_NANODOLLARS))
                .arg(window.expire_at_ms.unwrap_or(0).max(0));
        }
        let reply: Vec<i64> = inner.call("budget", &add).await?;
        match reply.as_slice() {
            [0, spent @ ..] if spent.len() == record.windows.len() => Some(
                spent
                    .iter()
                    .map(|&value| u64::try_from(value).unwrap_or(0))
                    .collect(),
            ),
            _ => {
                tracing::error!(?reply, "unexpected reply from the budget script");
                None
            }
        }
    }

    /// See [`SharedRuntime::read_spend`].
    async fn read_spend_now(&self, windows: &[(String, String)]) -> Option<Vec<Option<u64>>> {
        if windows.is_empty() {
            return Some(Vec::new());
        }
        let inner = &self.inner;
        let mut read = scripts::BUDGET.prepare_invoke();
        read.arg("read");
        for (owner, window) in windows {
            read.key(inner.keys.budget(owner, window));
        }
        let reply: Vec<i64> = inner.call("budget", &read).await?;
        match reply.as_slice() {
            [0, spent @ ..] if spent.len() == windows.len() => Some(
                spent
                    .iter()
                    .map(|&value| u64::try_from(value).ok())
                    .collect(),
            ),
            _ => {
                tracing::error!(?reply, "unexpected reply from the budget script");
                None
            }
        }
    }
}

/// The change-feed message announcing an upstream block: `ul1 <until_ms> <backend id>` (other
/// versions' parsers ignore it: cooldown messages start with `v1`).
fn upstream_block_message(backend: &BackendId, until_ms: i64) -> String {
    format!("ul1 {until_ms} {}", backend.as_str())
}

/// Reads an upstream-block message: the backend and the block's end on this instance's clock.
fn parse_upstream_block(payload: &str, now: Instant) -> Option<(BackendId, Instant)> {
    let rest = payload.strip_prefix("ul1 ")?;
    let (until_ms, backend) = rest.split_once(' ')?;
    let until_ms: i64 = until_ms.parse().ok()?;
    let left = until_ms.saturating_sub(crate::domain::now_ms());
    let left = Duration::from_millis(u64::try_from(left).ok()?);
    Some((BackendId::new(backend), now + left))
}

impl Inner {
    /// Publishes `message` on the change feed's channel (through the breaker, bounded by the
    /// call timeout); a failure is counted and otherwise ignored.
    async fn publish(&self, message: String) {
        if !self.breaker.permit(Instant::now()) {
            return;
        }
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("PUBLISH");
        command.arg(self.keys.channel()).arg(message);
        let publish = command.query_async::<i64>(&mut conn);
        match tokio::time::timeout(self.options.call_timeout, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => self.on_failure("publish", &error.to_string()),
            Err(_) => self.on_failure("publish", "timed out"),
        }
    }

    /// Takes in an upstream block another instance announced; false if `payload` is not one.
    pub(super) fn take_upstream_block(&self, payload: &str) -> bool {
        let Some((backend, until)) = parse_upstream_block(payload, Instant::now()) else {
            return payload.starts_with("ul1 ");
        };
        let mut blocks = self.upstream_blocks.lock();
        let entry = blocks.entry(backend).or_insert(until);
        *entry = (*entry).max(until);
        true
    }
}

#[cfg(test)]
mod upstream_block_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn upstream_block_messages_round_trip_and_past_blocks_are_dropped() {
        let backend = BackendId::new("bkd_1");
        let now = Instant::now();
        let until_ms = crate::domain::now_ms() + 1_500;
        let message = upstream_block_message(&backend, until_ms);
        let (parsed, until) = parse_upstream_block(&message, now).expect("parses");
        assert_eq!(parsed, backend);
        let left = until.duration_since(now);
        assert!(
            left > Duration::from_millis(1_000) && left <= Duration::from_millis(1_500),
            "{left:?}"
        );
        // A block already over on arrival, another version's message, garbage: nothing.
        let past = upstream_block_message(&backend, crate::domain::now_ms() - 10);
        assert!(parse_upstream_block(&past, now).is_none());
        assert!(parse_upstream_block("v1 1 2 3 4 5 6 b", now).is_none());
        assert!(parse_upstream_block("ul1 x b", now).is_none());
    }
}
