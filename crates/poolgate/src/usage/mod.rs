//! Usage records, the data plane's side: each finished request's record goes into a
//! [`UsageSink`] — first one `write` to the crash-safe [`crate::journal`] (so a killed process
//! loses no record whose answer completed), then an unbounded in-memory queue, so a request never
//! waits and no record is dropped — and the control plane's batched writer
//! (`control::usage_writer`) stores them and acknowledges them in the journal. Also what reading
//! them back looks like: [`UsageFilter`], [`UsagePage`] and the [`stats`].

mod query;
pub mod stats;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::domain::UsageRecord;
use crate::journal::{Durable, Journal, Journaled};

pub use query::{UsageFilter, UsagePage};

/// A new sink and the queue it feeds; with a journal, every record is appended to it first. The
/// writer is woken once `batch_size` records are queued (else it takes them at its flush tick).
pub fn channel(journal: Option<Journal>, batch_size: usize) -> (UsageSink, UsageQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    let doorbell = Arc::new(Doorbell {
        queued: AtomicUsize::new(0),
        ring_at: batch_size.max(1),
        bell: Notify::new(),
    });
    (
        UsageSink {
            tx,
            pending: Arc::new(AtomicUsize::new(0)),
            journal,
            doorbell: Arc::clone(&doorbell),
        },
        UsageQueue { rx, doorbell },
    )
}

/// Wakes the writer when a batch's worth of records is queued. Fewer records wait for the
/// writer's flush tick without waking it: with a wake-up per record, every request handed its
/// writer a task to run, often on the other, parked thread (#13).
pub struct Doorbell {
    /// Records sent and not yet taken by the writer.
    queued: AtomicUsize,
    ring_at: usize,
    bell: Notify,
}

impl Doorbell {
    /// One more record is about to be sent; `true` when it makes a batch (ring after sending).
    fn add(&self) -> bool {
        self.queued.fetch_add(1, Ordering::AcqRel) + 1 == self.ring_at
    }

    /// The record counted by [`Doorbell::add`] was not sent after all.
    fn unadd(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// The writer took `count` records from the queue.
    pub fn taken(&self, count: usize) {
        self.queued.fetch_sub(count, Ordering::AcqRel);
    }

    /// Resolves once a batch's worth was queued since the last time (or is now).
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    fn ring(&self) {
        // A stored permit when the writer is not waiting: never lost.
        self.bell.notify_one();
    }
}

/// A record on its way to the store, with its place in the journal (to acknowledge once it is
/// stored; `None` without a journal or when the append failed).
pub struct Queued {
    pub record: UsageRecord,
    pub journaled: Option<Journaled>,
}

/// The receiving side, consumed by the usage writer.
pub struct UsageQueue {
    pub rx: mpsc::UnboundedReceiver<Queued>,
    pub doorbell: Arc<Doorbell>,
}

/// The sending side; cheap to clone. It also counts the records promised (requests under way)
/// but not yet handed over, so shutdown can wait for them.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::UnboundedSender<Queued>,
    pending: Arc<AtomicUsize>,
    journal: Option<Journal>,
    doorbell: Arc<Doorbell>,
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

    /// Queues the record of a request opened with [`UsageSink::open`]: its journal line joins
    /// this thread's batch (one `write` per batch, see `journal`), then it goes to the in-memory
    /// queue. Await the returned [`Durable`] before the answer's last byte is sent: it resolves
    /// once the line is in the kernel, where it survives a killed process. (A request whose
    /// client left has no answer to hold back; its caller may drop it.)
    ///
    /// When this request is the only one under way (counted by [`UsageSink::open`], across the
    /// process), no answer still to come can share the batch: its line joins the batch of an
    /// answer recorded earlier in this pass, if one is open, and is otherwise written at once
    /// (`Journal::append_alone`), so a lone answer skips the writer task and the pause.
    pub fn record(&self, record: UsageRecord) -> Durable {
        let alone = self.pending() <= 1;
        let journaled = self.journal.as_ref().map(|journal| {
            if alone {
                journal.append_alone(&record)
            } else {
                journal.append(&record)
            }
        });
        self.queue(record, journaled)
    }

    /// [`UsageSink::record`] with the journal line written before this returns: for the end of
    /// a stream, whose last bytes should not wait a scheduler pass (they would go out in a
    /// second write, one more wake-up of the client per stream).
    pub fn record_now(&self, record: UsageRecord) {
        let journaled = self
            .journal
            .as_ref()
            .map(|journal| journal.append_now(&record));
        drop(self.queue(record, journaled));
    }

    fn queue(&self, record: UsageRecord, journaled: Option<Journaled>) -> Durable {
        let durable = journaled
            .as_ref()
            .map_or_else(Durable::now, Journaled::durable);
        // Saturating: never wraps below zero.
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        // Counted before it is sent, so the writer never takes more than was counted.
        let batch_full = self.doorbell.add();
        if let Err(error) = self.tx.send(Queued { record, journaled }) {
            self.doorbell.unadd();
            tracing::error!(request_id = %error.0.record.request_id, "usage writer is gone; record kept only in the journal");
        } else if batch_full {
            self.doorbell.ring();
        }
        durable
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;
    use crate::domain::tests_support::usage_record as record;
    use crate::journal::JournalSettings;

    /// The only request under way writes its journal line at once, so its answer goes on
    /// without waiting for the end of the scheduler pass; with other requests under way the
    /// line waits for the pass's batch, which others may join.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_record_is_durable_at_once_and_a_crowded_one_waits_for_the_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
        replay.finish().unwrap();
        let (sink, _queue) = channel(Some(journal), 16);
        // In a task, as a request's code runs (the test's own body is not one).
        tokio::spawn(async move {
            sink.open();
            assert!(sink.record(record(0)).now_or_never().is_some());

            sink.open();
            sink.open();
            let mut crowded = sink.record(record(1));
            assert!((&mut crowded).now_or_never().is_none());
            // Alone now, but the crowded answer's batch is open in this pass: joined, and
            // written with it.
            let mut joined = sink.record(record(2));
            assert!((&mut joined).now_or_never().is_none());
            joined.await;
            assert!(crowded.now_or_never().is_some());

            // Nothing under way and no batch open: at once again.
            sink.open();
            assert!(sink.record(record(3)).now_or_never().is_some());
            assert_eq!(sink.pending(), 0);
        })
        .await
        .unwrap();
    }
}
