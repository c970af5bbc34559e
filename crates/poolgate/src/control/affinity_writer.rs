//! The response-owner writer: takes the owners the data plane remembered (or forgot) through its
//! [`OwnerSink`] and stores them in batches, off the request path; every few minutes it deletes
//! the expired rows and drops expired entries from memory. A failed write is retried with the
//! next batch (the owners stay in memory meanwhile); shutdown drains the queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::pg_changes::OwnerFeed;
use super::store::AffinityStore;
use crate::domain::{now_ms, ResponseOwnerRecord};
use crate::routing::affinity::{LocalAffinity, OwnerChange, OwnerQueue};

/// Owners written per batch at most.
const BATCH: usize = 512;
/// How often queued owners are written (one instance; with a database several instances share,
/// the writer is started with a shorter pause, see [`SHARED_FLUSH_EVERY`]).
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often queued owners are written when other instances learn them from the database: the
/// sooner stored, the sooner a follow-up sent to another instance finds its owner.
pub const SHARED_FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How often expired owners are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// The background writer; [`AffinityWriter::shutdown`] writes what is queued and stops.
pub struct AffinityWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Starts the writer over `queue`, writing every `flush_every`, purging `maps` too.
pub fn spawn_writer(
    store: Arc<dyn AffinityStore>,
    queue: OwnerQueue,
    maps: Arc<LocalAffinity>,
    flush_every: Duration,
) -> AffinityWriter {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(store, queue, maps, stop_rx, flush_every));
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
    flush_every: Duration,
) {
    let mut pending = Pending::default();
    let mut flush = tokio::time::interval(flush_every);
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

/// Owners reloaded after the owners feed reconnected (the newest; older ones were most likely
/// announced before the gap).
const RELOAD_AFTER_GAP: u32 = 10_000;

/// With a database several instances share: adds the owners other instances stored to `maps`
/// (and drops the ones they deleted) as they are announced, so a follow-up sent to this instance
/// finds the backend that made its response without reading the database. After a gap in the
/// feed, the newest stored owners are read again.
pub fn spawn_owner_follower(
    store: Arc<dyn AffinityStore>,
    maps: Arc<LocalAffinity>,
    mut feed: tokio::sync::broadcast::Receiver<Arc<OwnerFeed>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let reload = match feed.recv().await {
                Ok(message) => match &*message {
                    OwnerFeed::Notice(notice) => {
                        maps.preload(notice.owners().collect());
                        for id in notice.removed() {
                            maps.forget_known(id);
                        }
                        false
                    }
                    OwnerFeed::Reconnected => true,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "response-owner announcements lagged; reloading");
                    true
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if reload {
                match store.load_response_owners(now_ms(), RELOAD_AFTER_GAP).await {
                    Ok(owners) => maps.preload(owners),
                    Err(error) => {
                        tracing::warn!(%error, "reloading response owners after a gap failed");
                    }
                }
            }
        }
    })
}
