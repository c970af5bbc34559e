//! The cooldown half of [`super::RedisShared`]: outcomes, resets and probe releases go through
//! the report script; its replies and the published changes update the local mirror; after an
//! outage, what the instance learnt alone is pushed back (merged with max).

use std::sync::atomic::Ordering;

use rand::Rng;
use redis::ScriptInvocation;
use tokio::time::Instant;

use super::scripts::{self, RemoteCooldown};
use super::{millis, Inner};
use crate::cooldown::{CooldownPolicy, Outcome};
use crate::domain::BackendId;
use crate::shared::{CooldownView, Mode, ProbeToken};

impl Inner {
    pub(super) async fn report(
        &self,
        backend: &BackendId,
        outcome: Outcome,
        probe: Option<ProbeToken>,
        policy: &CooldownPolicy,
    ) -> CooldownView {
        if outcome == Outcome::Inconclusive {
            // Says nothing about the backend: the cooldown stays as it is; a probe slot is
            // freed (the next request probes again).
            if let Some(probe) = probe {
                self.local.release_probe_local(backend);
                if let Some(cooldown) = self
                    .report_event(backend, "release", &probe.0, (-1, false))
                    .await
                {
                    self.apply(backend, cooldown, false);
                }
            }
            return self.local.view(backend);
        }
        let view = self.local.view(backend);
        let healthy = view.until.is_none() && view.level == 0 && !view.broken;
        if outcome == Outcome::Success
            && probe.is_none()
            && healthy
            && self.mode() == Mode::Shared
            && self.feed_connected.load(Ordering::Relaxed)
        {
            // Nothing to change anywhere: no round trip.
            return view;
        }
        let (event, retry_after) = match outcome {
            Outcome::Success => ("ok", None),
            Outcome::RateLimited { retry_after } => ("429", retry_after),
            Outcome::ServerError => ("5xx", None),
            Outcome::AuthFailed => ("auth", None),
            Outcome::Inconclusive => unreachable!("handled above"),
        };
        let jitter = if policy.jitter.is_nan() {
            0.0
        } else {
            policy.jitter.clamp(0.0, 1.0)
        };
        let sample = if jitter > 0.0 {
            rand::thread_rng().gen_range(0.0..=jitter)
        } else {
            0.0
        };
        let token = probe.as_ref().map_or("", |probe| &probe.0);
        let mut invocation = self.report_invocation(backend, event, token);
        invocation
            .arg(retry_after.map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
            .arg(millis(policy.base))
            .arg(millis(policy.max))
            .arg(format!("{sample:.6}"))
            .arg(millis(policy.error_cooldown))
            .arg(self.keys.channel())
            .arg(backend.as_str())
            .arg(-1)
            .arg(0);
        match self.call_report(&invocation).await {
            Some(cooldown) => self.apply(backend, cooldown, false),
            None => {
                // Kept locally (and pushed by the next resync, even if the breaker stays closed).
                self.resync_needed.store(true, Ordering::Relaxed);
                self.local
                    .report_at(backend, outcome, policy, Instant::now())
            }
        }
    }

    /// The report script with its keys and first two arguments; the caller adds the rest.
    fn report_invocation<'a>(
        &self,
        backend: &BackendId,
        event: &'a str,
        probe: &'a str,
    ) -> ScriptInvocation<'a> {
        let mut invocation = scripts::REPORT.key(self.keys.cooldown(backend));
        invocation
            .key(self.keys.probe(backend))
            .arg(event)
            .arg(probe);
        invocation
    }

    /// A report event other than an outcome (`reset`, `release`, `sync`): no policy involved.
    pub(super) async fn report_event(
        &self,
        backend: &BackendId,
        event: &str,
        probe: &str,
        sync: (i64, bool),
    ) -> Option<RemoteCooldown> {
        let mut invocation = self.report_invocation(backend, event, probe);
        invocation
            .arg(-1)
            .arg(0)
            .arg(0)
            .arg(0)
            .arg(0)
            .arg(self.keys.channel())
            .arg(backend.as_str())
            .arg(sync.0)
            .arg(i64::from(sync.1));
        self.call_report(&invocation).await
    }

    async fn call_report(&self, invocation: &ScriptInvocation<'_>) -> Option<RemoteCooldown> {
        let reply = self.call::<Vec<i64>>("report", invocation).await?;
        let parsed = scripts::parse_report(&reply);
        if parsed.is_none() {
            tracing::error!(?reply, "unexpected reply from the report script");
        }
        parsed
    }

    pub(super) fn apply(
        &self,
        backend: &BackendId,
        cooldown: RemoteCooldown,
        force: bool,
    ) -> CooldownView {
        let shared = cooldown.to_local(Instant::now());
        self.mirror(backend, &shared, force);
        shared.view
    }

    /// Brings one backend's mirror in line with Redis, first pushing what this instance learned
    /// while degraded (a running local cooldown is merged with max; broken stays broken).
    async fn sync_backend(&self, backend: &BackendId) {
        let now = Instant::now();
        let local = self
            .local
            .local_changes()
            .into_iter()
            .find(|change| &change.backend == backend);
        let sync = local.map_or((-1, false), |change| {
            let left = change
                .until
                .filter(|until| *until > now)
                .map_or(-1, |until| {
                    i64::try_from(until.duration_since(now).as_millis()).unwrap_or(i64::MAX)
                });
            (left, change.broken)
        });
        if let Some(cooldown) = self.report_event(backend, "sync", "", sync).await {
            self.apply(backend, cooldown, true);
        }
    }

    /// Syncs every backend this instance knows.
    pub(super) async fn sync_all(&self) {
        for backend in self.local.known_backends() {
            self.sync_backend(&backend).await;
        }
    }
}
