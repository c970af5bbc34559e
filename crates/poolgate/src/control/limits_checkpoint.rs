//! RPM bucket levels across restarts. Buckets live in memory on the request path; this task
//! writes their levels to the store off it: every `limits.checkpoint_interval_ms` the buckets a
//! request took a token from since the last checkpoint (so after a crash the stored levels are at
//! most one interval old), and at a graceful shutdown — after the data plane drained — those
//! changed since, exactly. A bucket untouched since its last write needs no new one: its level
//! then is the stored one refilled for the time since, which is what a start computes. At start
//! the control plane loads them before the first snapshot, and each runtime continues from its
//! level. (A command-line run changes no bucket, so it writes nothing.)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::snapshot::Snapshots;
use super::store::ConfigStore;

/// The checkpoint task; [`LimitsCheckpoint::shutdown`] writes the levels that changed and stops.
pub struct LimitsCheckpoint {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts the checkpoint task.
pub fn spawn_checkpoint(
    store: Arc<dyn ConfigStore>,
    snapshots: Arc<Snapshots>,
    interval: Duration,
) -> LimitsCheckpoint {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a failed write, the next one writes every level (the failed ones included).
        let mut all = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let levels = snapshots.registry().limiter_levels(Instant::now(), all);
                    if levels.is_empty() {
                        continue;
                    }
                    all = match store.save_limiter_levels(&levels).await {
                        Ok(()) => false,
                        Err(error) => {
                            tracing::warn!(%error, "could not checkpoint RPM bucket levels; retrying");
                            true
                        }
                    };
                }
                _ = &mut stopped => break,
            }
        }
        // Exact levels for the next start.
        let levels = snapshots.registry().limiter_levels(Instant::now(), all);
        if let Err(error) = store.save_limiter_levels(&levels).await {
            tracing::warn!(%error, "could not store RPM bucket levels at shutdown; the last checkpoint stands");
        }
    });
    LimitsCheckpoint { stop, task }
}

impl LimitsCheckpoint {
    /// Writes the levels that changed and stops. Call after the data plane drained.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "bucket checkpoint task failed");
        }
    }
}
