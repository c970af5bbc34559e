//! Response bodies: a whole JSON body, or a paced SSE stream that counts how it ended.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::reply::StreamSpec;

/// How streamed responses ended, shared by every [`SseBody`] of one server.
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    pub(crate) cancelled: AtomicUsize,
    pub(crate) completed: AtomicUsize,
}

/// The body of every response the mock sends.
pub(crate) enum MockBody {
    /// A complete body, sent with a `content-length`; `None` once sent.
    Full(Option<Bytes>),
    Sse(SseBody),
}

// === impl MockBody ===

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(sse) => sse.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

/// The events of one stream, already encoded, and which of them carry content.
pub(crate) struct SsePlan {
    pub(crate) events: Vec<Bytes>,
    /// Indices of the content delta events; always followed by at least one closing event.
    pub(crate) content: Range<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Running,
    Completed,
    Died,
}

/// Sends an [`SsePlan`] one event per write: it pauses before every event but the first (a
/// `gap_ms` sleep before content events, otherwise a yield, which makes hyper flush), so each
/// event leaves in its own write. Dropped before the end, it counts as a cancelled stream.
pub(crate) struct SseBody {
    events: Vec<Bytes>,
    next: usize,
    content: Range<usize>,
    /// Event index at which the body errors instead of sending (`die_after`).
    die_at: Option<usize>,
    /// Event index at which the body falls silent for good (`stall_after`).
    stall_at: Option<usize>,
    gap: Duration,
    /// Pause before the first event after the content.
    tail_gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The pause before event `next` is over.
    paused: bool,
    outcome: Outcome,
    counters: Arc<StreamCounters>,
}

// === impl SseBody ===

impl SseBody {
    pub(crate) fn new(plan: SsePlan, spec: &StreamSpec, counters: Arc<StreamCounters>) -> SseBody {
        let die_at = spec
            .die_after
            .map(|n| plan.content.start + n.min(plan.content.len()));
        let stall_at = spec
            .stall_after
            .map(|n| plan.content.start + n.min(plan.content.len()));
        SseBody {
            events: plan.events,
            next: 0,
            content: plan.content,
            die_at,
            stall_at,
            gap: Duration::from_millis(spec.gap_ms),
            tail_gap: Duration::from_millis(spec.tail_gap_ms),
            sleep: None,
            paused: false,
            outcome: Outcome::Running,
            counters,
        }
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.outcome != Outcome::Running {
            return Poll::Ready(None);
        }
        if self.stall_at == Some(self.next) {
            // Never woken again: the connection stays open and silent until dropped.
            return Poll::Pending;
        }
        let dying = self.die_at == Some(self.next);
        if self.next >= self.events.len() && !dying {
            self.outcome = Outcome::Completed;
            self.counters.completed.fetch_add(1, Ordering::AcqRel);
            return Poll::Ready(None);
        }
        // Pause before every event but the first, and before dying, so what was sent (at least
        // the headers) is flushed first; content events wait `gap_ms`.
        let pause = if dying {
            Duration::ZERO
        } else if self.content.contains(&self.next) {
            self.gap
        } else if self.next == self.content.end {
            self.tail_gap
        } else {
            Duration::ZERO
        };
        let gap = !pause.is_zero();
        if (self.next > 0 || dying || gap) && !self.paused {
            if gap && self.sleep.is_none() {
                self.sleep = Some(Box::pin(tokio::time::sleep(pause)));
            }
            match self.sleep.as_mut() {
                Some(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.sleep = None;
                }
                None => {
                    // Yield once: hyper flushes what it buffered when the body is pending.
                    self.paused = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        self.paused = false;
        if dying {
            self.outcome = Outcome::Died;
            return Poll::Ready(Some(Err(io::Error::other(
                "mock-upstream: stream aborted by `die_after`",
            ))));
        }
        let event = self.events.get(self.next).cloned().unwrap_or_default();
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if self.outcome == Outcome::Running {
            self.counters.cancelled.fetch_add(1, Ordering::AcqRel);
        }
    }
}
