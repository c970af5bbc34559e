//! Group commit: the record lines appended on one thread while its scheduler runs through the
//! tasks that are ready go to the segment with one `write`, not one each (#13: the `write` per
//! request was ≈ 5 % of poolgate's CPU).
//!
//! The first line of a batch opens it and spawns its writer task on the current runtime; the
//! lines appended on the same thread before that task runs join the batch. On the thread-per-core
//! runtime (one current-thread scheduler per core) a spawned task runs after the tasks that were
//! ready already, which are exactly the answers finishing in this pass; on the work-stealing
//! runtime the writer first yields (a task spawned there runs next, before anyone could join).
//! Outside a task (a counting thread, a test) the line is written at once, and so is the line of
//! [`super::Journal::append_now`] (a stream's end: waiting for the group write would send the
//! stream's last bytes in a second write, one more wake-up of the client per stream).
//!
//! A line appended while no other request is under way ([`super::Journal::append_alone`]) has
//! no answer still to come to share a write with. If an answer recorded earlier in this pass
//! left its batch open, the line joins it (that batch is written in this pass anyway); else it
//! is written at once, and its answer does not wait for a writer task (#13: when one request at
//! a time is under way, every answer is alone in its pass and paid the task, a second poll and
//! the pause).
//!
//! The guarantee stays that of one `write` per record: whoever completes an answer first waits
//! for [`Durable`], which resolves once the batch's `write` returned — the line is in the kernel
//! before the client can see the answer end, so a killed process loses no answered record. A
//! batch whose writer task is dropped unrun (its runtime was shutting down) is written as the
//! task drops.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::Segment;

thread_local! {
    /// This thread's batch still taking lines (dead once written).
    static OPEN: RefCell<Weak<Batch>> = const { RefCell::new(Weak::new()) };
}

/// Lines of one segment appended on one thread, written together.
pub(super) struct Batch {
    segment: Arc<Segment>,
    state: Mutex<State>,
}

struct State {
    /// Complete lines not written yet (taken by the write).
    lines: Vec<u8>,
    phase: Phase,
    /// Tasks waiting for the write.
    waiters: Vec<Waker>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking lines.
    Open,
    /// Its `write` is under way; later lines go to a new batch.
    Writing,
    /// Its `write` returned (`true`: every byte of it is in the file).
    Written(bool),
}

impl Batch {
    /// Appends the line `encode` pushes to this thread's open batch of `segment`, or to a new
    /// batch whose write is scheduled. `encode` must push whole lines only.
    pub(super) fn append(
        segment: &Arc<Segment>,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Arc<Batch> {
        OPEN.with_borrow_mut(|open| {
            if let Some(batch) = Self::join_open(open, segment, encode) {
                return batch;
            }
            let batch = Batch::new(segment, 4096, encode);
            *open = Arc::downgrade(&batch);
            schedule_write(Arc::clone(&batch));
            batch
        })
    }

    /// [`Batch::append`] for a line no later line is expected to join in this scheduler pass
    /// (no other request is under way): it joins this thread's open batch if an answer recorded
    /// earlier in the pass left one (that batch is written in this pass anyway), else it is
    /// written before this returns — no writer task, and its answer goes on without waiting
    /// for the end of the pass.
    pub(super) fn append_alone(
        segment: &Arc<Segment>,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Arc<Batch> {
        OPEN.with_borrow(|open| Self::join_open(open, segment, encode))
            .unwrap_or_else(|| Self::write_now(segment, encode))
    }

    /// Pushes the line into this thread's open batch of `segment`, if there is one still
    /// taking lines.
    fn join_open(
        open: &Weak<Batch>,
        segment: &Arc<Segment>,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Option<Arc<Batch>> {
        let batch = open.upgrade()?;
        if !Arc::ptr_eq(&batch.segment, segment) {
            return None;
        }
        let mut state = batch.state.lock();
        if state.phase != Phase::Open {
            return None;
        }
        encode(&mut state.lines);
        drop(state);
        Some(batch)
    }

    /// A batch of the one line `encode` pushes, written before this returns (outside this
    /// thread's batches).
    pub(super) fn write_now(
        segment: &Arc<Segment>,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Arc<Batch> {
        let batch = Batch::new(segment, 512, encode);
        batch.write();
        batch
    }

    /// An open batch of `segment` holding the line `encode` pushes.
    fn new(
        segment: &Arc<Segment>,
        capacity: usize,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Arc<Batch> {
        let mut lines = Vec::with_capacity(capacity);
        encode(&mut lines);
        Arc::new(Batch {
            segment: Arc::clone(segment),
            state: Mutex::new(State {
                lines,
                phase: Phase::Open,
                waiters: Vec::new(),
            }),
        })
    }

    /// `true` once the batch's lines are in the file.
    pub(super) fn is_written(&self) -> bool {
        self.state.lock().phase == Phase::Written(true)
    }

    /// `true` once the batch's `write` failed: its lines are not in the file, and never will be.
    pub(super) fn write_failed(&self) -> bool {
        self.state.lock().phase == Phase::Written(false)
    }

    /// Writes the lines with one `write` (unless someone did already) and wakes the waiters.
    fn write(&self) {
        let lines = {
            let mut state = self.state.lock();
            if state.phase != Phase::Open {
                return;
            }
            state.phase = Phase::Writing;
            std::mem::take(&mut state.lines)
        };
        let result = self.segment.write_lines(&lines);
        if let Err(error) = &result {
            let records = lines.iter().filter(|&&byte| byte == b'\n').count();
            tracing::error!(%error, records, "cannot append usage records to the journal; they still go to the database, but a crash before that loses them");
        }
        let waiters = {
            let mut state = self.state.lock();
            state.phase = Phase::Written(result.is_ok());
            std::mem::take(&mut state.waiters)
        };
        for waiter in waiters {
            waiter.wake();
        }
    }
}

/// Writes `batch` from a task that runs after the tasks ready now — or at once when not called
/// from a task (a thread that only entered a runtime, such as the counting threads, has no
/// scheduler pass to share; and its thread's batch must not outlive a runtime it spawned on).
fn schedule_write(batch: Arc<Batch>) {
    let handle = match Handle::try_current() {
        Ok(handle) if tokio::task::try_id().is_some() => handle,
        _ => return batch.write(),
    };
    let yield_first = handle.runtime_flavor() != RuntimeFlavor::CurrentThread;
    let writer = WriteOnDrop(batch);
    // Detached. A task dropped before it ran (its runtime shutting down) still writes the
    // batch, as it drops: no later line joins a batch nobody will write.
    drop(handle.spawn(async move {
        if yield_first {
            tokio::task::yield_now().await;
        }
        drop(writer);
    }));
}

/// Writes its batch when dropped: when the write task ran, or when it was dropped unrun.
struct WriteOnDrop(Arc<Batch>);

impl Drop for WriteOnDrop {
    fn drop(&mut self) {
        self.0.write();
    }
}

/// Resolves once a record's journal line is in the kernel (or could not be written: that is
/// logged, and the record still goes to the store). Ready at once without a journal.
#[must_use = "await it before the answer's last byte is sent"]
pub struct Durable {
    batch: Option<Arc<Batch>>,
}

impl Durable {
    /// Nothing to wait for (no journal).
    pub fn now() -> Self {
        Self { batch: None }
    }

    pub(super) fn of(batch: Arc<Batch>) -> Self {
        Self { batch: Some(batch) }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.batch.is_some() {
            "Durable(batch)"
        } else {
            "Durable(now)"
        })
    }
}

impl Future for Durable {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(batch) = &self.batch else {
            return Poll::Ready(());
        };
        {
            let mut state = batch.state.lock();
            if !matches!(state.phase, Phase::Written(_)) {
                if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    state.waiters.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
        self.batch = None;
        Poll::Ready(())
    }
}
