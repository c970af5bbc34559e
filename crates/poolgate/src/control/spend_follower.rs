//! Cluster mode: every capped backend's monthly spend as the whole cluster settled it, read from
//! the shared state once per `redis.heartbeat_ms` into this instance's ledgers — so an instance
//! that sends nothing to a backend still skips it once the others spent its cap, and the admin
//! API shows the cluster's figure. One call per interval for all capped backends together; none
//! without a capped backend. (Each reservation's reply also raises the reserving instance's
//! ledger at once: `proxy::spend::reserve_backend`.) The figure is the one reservations take
//! from (`budget.lua` `take` on the same `budget:backend:<id>:m:<yyyymm>` hash): only `spent` is
//! read; what other instances hold reserved stays in Redis.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use super::snapshot::Snapshots;
use crate::pricing::Nanodollars;
use crate::shared::{SharedRuntime, SpendRecord};

/// Starts the follower; abort the handle to stop it.
pub fn spawn_spend_follower(
    snapshots: Arc<Snapshots>,
    shared: Arc<dyn SharedRuntime>,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            follow_once(&snapshots, &*shared).await;
        }
    })
}

/// Reads the shared figures of every capped backend of the current snapshot into its ledger.
pub async fn follow_once(snapshots: &Snapshots, shared: &dyn SharedRuntime) {
    let live = snapshots.live();
    let as_of = Utc::now();
    let mut ledgers = Vec::new();
    let mut names = Vec::new();
    for backend in &live.backends {
        let Some(ledger) = &backend.spend else {
            continue;
        };
        let owner = SpendRecord::backend_owner(backend.id());
        for window in ledger.shared_windows(as_of) {
            names.push((owner.clone(), window.id.clone()));
            ledgers.push((Arc::clone(ledger), window.window));
        }
    }
    if names.is_empty() {
        return;
    }
    let Some(figures) = shared.read_spend(&names).await else {
        return;
    };
    let now = Utc::now();
    for ((ledger, window), spent) in ledgers.iter().zip(figures) {
        if let Some(spent) = spent {
            ledger.observe_shared_as_of(*window, Nanodollars::new(spent), as_of, now);
        }
    }
}
