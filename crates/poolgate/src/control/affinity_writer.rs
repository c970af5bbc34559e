//! The response-owner writer: takes the owners the data plane remembered (or forgot) through its
//! [`OwnerSink`] and stores them in batches, off the request path; every few minutes it deletes
//! the expired rows and drops expired entries from memory. A failed write is retried with the
//! next batch (the owners stay in memory meanwhile); shutdown drains the queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::store::AffinityStore;
use crate::domain::{now_ms, ResponseOwnerRecord};
use crate::routing::affinity::{LocalAffinity, OwnerChange, OwnerQueue};

/// Owners written per batch at most.
const BATCH: usize = 512;
/// How often queued owners are written.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often expired owners are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// The background writer; [`AffinityWriter::shutdown`] writes what is queued and stops.
pub struct AffinityWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Starts the writer over `queue`, purging `maps` too.
pub fn spawn_writer(
    store: Arc<dyn AffinityStore>,
    queue: OwnerQueue,
    maps: Arc<LocalAffinity>,
) -> AffinityWriter {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(store, queue, maps, stop_rx));
    AffinityWriter { stop, task }
}

impl AffinityWriter {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, "response-owner writer task failed");
        }
    }
}

/// Changes not yet stored.
#[derive(Default)]
struct Pending {
    owners: Vec<ResponseOwnerRecord>,
    removed: Vec<String>,
}

impl Pending {
    fn add(&mut self, change: OwnerChange) {
        match change {
            OwnerChange::Remember(record) => {
                self.removed.retain(|id| *id != record.response_id);
                self.owners.push(record);
            }
            OwnerChange::Forget(id) => {
                self.owners.retain(|owner| owner.response_id != id);
                self.removed.push(id);
            }
        }
    }

    fn len(&self) -> usize {
        self.owners.len() + self.removed.len()
    }

    async fn flush(&mut self, store: &dyn AffinityStore) {
        if self.len() == 0 {
            return;
        }
        match store
            .save_response_owners(&self.owners, &self.removed)
            .await
        {
            Ok(()) => {
                self.owners.clear();
                self.removed.clear();
            }
            Err(error) => {
                tracing::warn!(%error, pending = self.len(), "storing response owners failed; retrying with the next batch");
            }
        }
    }
}

async fn run(
    store: Arc<dyn AffinityStore>,
    mut queue: OwnerQueue,
    maps: Arc<LocalAffinity>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = queue.rx.recv() => match received {
                Some(change) => {
                    pending.add(change);
                    while pending.len() < BATCH {
                        match queue.rx.try_recv() {
                            Ok(change) => pending.add(change),
                            Err(_) => break,
                        }
                    }
                    if pending.len() >= BATCH {
                        pending.flush(&*store).await;
                    }
                }
                None => break,
            },
            _ = flush.tick() => pending.flush(&*store).await,
            _ = purge.tick() => {
                maps.purge_expired();
                match store.purge_response_owners(now_ms()).await {
                    Ok(0) => {}
                    Ok(purged) => tracing::debug!(purged, "expired response owners deleted"),
                    Err(error) => tracing::warn!(%error, "purging expired response owners failed"),
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Shutdown: everything still queued.
    while let Ok(change) = queue.rx.try_recv() {
        pending.add(change);
    }
    pending.flush(&*store).await;
}
