//! Usage records, the data plane's side: each finished request's record goes into a
//! [`UsageSink`] — an unbounded queue, so a request never waits and no record is dropped — and the
//! control plane's batched writer (`control::usage_writer`) stores them. Also what reading them
//! back looks like: [`UsageFilter`], [`UsagePage`] and the [`stats`].

mod query;
pub mod stats;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::domain::UsageRecord;

pub use query::{UsageFilter, UsagePage};

/// A new sink and the queue it feeds.
pub fn channel() -> (UsageSink, UsageQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        UsageSink {
            tx,
            pending: Arc::new(AtomicUsize::new(0)),
        },
        UsageQueue { rx },
    )
}

/// The receiving side, consumed by the usage writer.
pub struct UsageQueue {
    pub rx: mpsc::UnboundedReceiver<UsageRecord>,
}

/// The sending side; cheap to clone. It also counts the records promised (requests under way)
/// but not yet handed over, so shutdown can wait for them.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::UnboundedSender<UsageRecord>,
    pending: Arc<AtomicUsize>,
}

impl UsageSink {
    /// A request started: one record is owed.
    pub fn open(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Records owed by requests still under way.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) until every request under way has handed over its record.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Queues the record of a request opened with [`UsageSink::open`], without waiting.
    pub fn record(&self, record: UsageRecord) {
        // Saturating: never wraps below zero.
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if let Err(error) = self.tx.send(record) {
            tracing::error!(request_id = %error.0.request_id, "usage writer is gone; record lost");
        }
    }
}
