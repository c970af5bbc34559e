//! Streaming relay: upstream SSE bytes go to the client event by event, byte-identical, as they
//! arrive — never buffered whole. On the way it reads token usage, drops the usage-only chunk
//! poolgate itself asked for, enforces the idle timeout between chunks, turns an upstream death
//! into an SSE error event and a clean end, and — if the client leaves — drops the upstream
//! request at once and records the request as cancelled. The record of a complete answer is
//! handed over before the bytes that complete it (`[DONE]`, `message_stop`) are yielded, its
//! journal line written at once ([`crate::usage::UsageSink::record_now`]), so it is in the usage
//! journal before the client can see the answer end.
//!
//! A stream cut before the upstream's final usage ([`super::billing`]): when the client left,
//! the upstream is read on for `proxy.usage_grace_ms` in a task of its own (the client is gone;
//! nothing it waits for) to get the usage frame; without one, or when the upstream broke, the
//! record is billed for the prompt and the delivered output, counted on one of a few counting
//! threads ([`super::estimator`]), and marked `tokens_estimated`. The text of the delivered
//! output is kept as it passes (no tokenizing on the way).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use super::attempt::resolve;
use super::billing::Billing;
use super::record::UsageDraft;
use crate::cooldown::Outcome as UpstreamOutcome;
use crate::domain::Outcome;
use crate::providers::TokenUsage;
use crate::routing::Ticket;
use crate::scrub::KeyScrubber;
use crate::sse::{SseEvent, SseFramer};
use crate::state::DataPlane;
use crate::token_count::DeliveredText;
use crate::translate::{Mapped, StreamMapper};
use crate::upstream::UpstreamBody;

/// The body type handed to the HTTP layer.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What is needed to close the books on a stream, whichever way it ends.
pub struct StreamFinisher {
    pub draft: UsageDraft,
    pub ticket: Ticket,
    pub data: DataPlane,
    /// For a stream cut before its final usage.
    pub billing: Billing,
}

impl StreamFinisher {
    fn finish(mut self, usage: Option<TokenUsage>, end: End) {
        if let Some(usage) = usage {
            self.draft.set_usage(usage);
        }
        self.close(end);
    }

    /// Bills the prompt and the `delivered` output (the upstream's `partial` usage where it has
    /// some) and writes the record — on a counting thread ([`super::estimator`]), since
    /// tokenizing can take milliseconds. The backend's outcome is settled now.
    fn finish_estimated(mut self, partial: Option<TokenUsage>, delivered: DeliveredText, end: End) {
        self.draft.stop_clock();
        if let End::UpstreamFailed(_) = end {
            self.upstream_failed();
        }
        super::estimator::run(move || {
            let usage = self.billing.estimate(&delivered, partial);
            self.draft.set_estimated_usage(usage);
            self.record(end);
        });
    }

    fn upstream_failed(&mut self) {
        self.ticket
            .backend
            .runtime
            .set_last_error("stream ended unexpectedly".to_owned());
        resolve(&self.data, &mut self.ticket, UpstreamOutcome::ServerError);
    }

    fn close(mut self, end: End) {
        if let End::UpstreamFailed(_) = end {
            self.upstream_failed();
        }
        self.record(end);
    }

    /// Writes the record, its journal line at once: the bytes that end the stream follow in
    /// the same poll (waiting for a group write would send them in a second write).
    fn record(self, end: End) {
        let (status, outcome, kind) = match end {
            End::Complete => (200, Outcome::Success, None),
            End::UpstreamFailed(kind) => (200, Outcome::StreamError, Some(kind)),
            End::ClientLeft => (499, Outcome::Cancelled, Some("client_closed")),
        };
        self.data
            .usage
            .record_now(self.draft.finish(status, outcome, kind));
    }
}

#[derive(Clone, Copy)]
enum End {
    Complete,
    UpstreamFailed(&'static str),
    ClientLeft,
}

pub struct RelayStream {
    upstream: UpstreamBody,
    /// Chunks read before the relay started (the held-back leading events and the first
    /// content), relayed first.
    first: VecDeque<Bytes>,
    /// The stream is over for the client (after its last bytes were yielded).
    over: bool,
    framer: SseFramer,
    events: Vec<SseEvent>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// Resolves when a shutdown's grace period ran out.
    cancelled: Pin<Box<dyn Future<Output = ()> + Send>>,
    mapper: Box<dyn StreamMapper>,
    out: BytesMut,
    /// Removes the backend's key from error events the upstream sends mid-stream.
    scrubber: KeyScrubber,
    /// Set once the stream ended; `None` afterwards.
    finisher: Option<StreamFinisher>,
    /// The generated text sent to the client, for a stream cut before its final usage.
    delivered: DeliveredText,
}

impl RelayStream {
    pub fn new(
        upstream: UpstreamBody,
        first: VecDeque<Bytes>,
        mapper: Box<dyn StreamMapper>,
        idle_timeout: Duration,
        finisher: StreamFinisher,
    ) -> Self {
        Self {
            upstream,
            first,
            over: false,
            framer: SseFramer::new(),
            events: Vec::new(),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            cancelled: Box::pin(finisher.data.streams_cancelled()),
            mapper,
            out: BytesMut::new(),
            scrubber: finisher.ticket.backend.scrubber.clone(),
            delivered: DeliveredText::new(finisher.billing.format),
            finisher: Some(finisher),
        }
    }

    /// Frames one chunk; returns the bytes to forward (possibly empty). A chunk whose events all
    /// pass through unchanged is forwarded without a copy when it holds one event.
    fn process(&mut self, chunk: Bytes) -> Result<Bytes, &'static str> {
        self.events.clear();
        if self.framer.push(chunk, &mut self.events).is_err() {
            return Err("stream_event_too_large");
        }
        let mut single: Option<Bytes> = None;
        let mut events = std::mem::take(&mut self.events);
        // An upstream error event may echo the credentials it got: scrub what goes out.
        let has_error = events.iter().any(|event| {
            event.event.as_deref() == Some("error")
                || event
                    .data
                    .as_deref()
                    .is_some_and(|d| d.contains("\"error\""))
        });
        for event in events.drain(..) {
            if let Some(data) = event.data.as_deref() {
                self.delivered.event(data);
            }
            let mark = self.out.len();
            match self.mapper.map(&event, &mut self.out) {
                Mapped::Drop => {}
                Mapped::Replaced => {
                    if let Some(previous) = single.take() {
                        // Keep order: the earlier pass-through event goes first.
                        let mapped = self.out.split_off(mark);
                        self.out.extend_from_slice(&previous);
                        self.out.extend_from_slice(&mapped);
                    }
                }
                Mapped::Pass => {
                    if self.out.is_empty() && single.is_none() {
                        single = Some(event.raw);
                    } else {
                        if let Some(previous) = single.take() {
                            self.out.extend_from_slice(&previous);
                        }
                        self.out.extend_from_slice(&event.raw);
                    }
                }
            }
        }
        self.events = events;
        let out = match single {
            Some(raw) if self.out.is_empty() => raw,
            Some(raw) => {
                self.out.extend_from_slice(&raw);
                self.out.split().freeze()
            }
            None => self.out.split().freeze(),
        };
        Ok(if has_error {
            self.scrubber.scrub_bytes(out)
        } else {
            out
        })
    }

    /// The held-back leading events and the first content, released together: each chunk
    /// framed and mapped as any other, their bytes joined into one frame, so the first content
    /// goes out in the same write as the events held for it (a proxy preempted between two
    /// writes would keep the client's first token waiting on a busy core). `None` when they
    /// gave nothing to send.
    fn release_held(&mut self) -> Option<Bytes> {
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
        let mut outputs: Vec<Bytes> = Vec::with_capacity(self.first.len());
        while let Some(chunk) = self.first.pop_front() {
            let processed = self.process(chunk);
            if self.mapper.completed() && self.finisher.is_some() {
                // The answer is complete with these bytes: its record first.
                self.end(End::Complete);
            }
            match processed {
                Ok(out) => outputs.push(out),
                Err(kind) => {
                    self.first.clear();
                    if let Some(error) = self.fail(kind, "an upstream stream event was too large") {
                        outputs.push(error);
                    }
                }
            }
        }
        one_frame(outputs)
    }

    fn end(&mut self, end: End) {
        let Some(finisher) = self.finisher.take() else {
            return;
        };
        let end = match end {
            End::Complete if self.mapper.upstream_failed() => {
                End::UpstreamFailed("upstream_stream_error")
            }
            other => other,
        };
        // The normal case: complete, or the upstream's final usage already read.
        if matches!(end, End::Complete) || self.mapper.usage_final() {
            finisher.finish(self.mapper.usage(), end);
            return;
        }
        let grace = &finisher.data.config.proxy;
        let (grace, max_bytes) = (grace.usage_grace, grace.usage_grace_max_bytes);
        let runtime = tokio::runtime::Handle::try_current();
        match (end, runtime) {
            (End::ClientLeft, Ok(runtime)) if !grace.is_zero() => {
                let mut finisher = finisher;
                finisher.draft.stop_clock();
                let reader = GraceRead {
                    upstream: std::mem::replace(
                        &mut self.upstream,
                        futures_util::stream::empty().boxed(),
                    ),
                    framer: std::mem::take(&mut self.framer),
                    mapper: std::mem::replace(&mut self.mapper, Box::new(Spent)),
                    delivered: std::mem::replace(
                        &mut self.delivered,
                        DeliveredText::new(finisher.billing.format),
                    ),
                    finisher: Some(finisher),
                };
                runtime.spawn(reader.run(grace, max_bytes));
            }
            _ => {
                let delivered = std::mem::replace(
                    &mut self.delivered,
                    DeliveredText::new(finisher.billing.format),
                );
                finisher.finish_estimated(self.mapper.usage(), delivered, end);
            }
        }
    }

    /// The upstream failed: an error event for the client, and the end. After a complete answer
    /// (the record written), the client has all it needs: the stream just ends.
    fn fail(&mut self, kind: &'static str, message: &str) -> Option<Bytes> {
        self.over = true;
        self.finisher.as_ref()?;
        self.end(End::UpstreamFailed(kind));
        Some(self.mapper.error_event(kind, message))
    }

    /// The clean end of the upstream stream: the unterminated tail (if any) and what the mapper
    /// still owes the client.
    fn complete(&mut self) -> Option<Bytes> {
        let framer = std::mem::take(&mut self.framer);
        if let Some(tail) = framer.finish() {
            match self.mapper.map(&tail, &mut self.out) {
                Mapped::Pass => self.out.extend_from_slice(&tail.raw),
                Mapped::Drop | Mapped::Replaced => {}
            }
        }
        self.mapper.finish(&mut self.out);
        self.end(End::Complete);
        self.over = true;
        let rest = self.out.split().freeze();
        (!rest.is_empty()).then_some(rest)
    }
}

/// `outputs` as one frame: `None` when all are empty, the only non-empty one as it is (no
/// copy), else their bytes joined.
fn one_frame(mut outputs: Vec<Bytes>) -> Option<Bytes> {
    outputs.retain(|out| !out.is_empty());
    match outputs.len() {
        0 => None,
        1 => outputs.pop(),
        _ => Some(Bytes::from(outputs.concat())),
    }
}

impl Stream for RelayStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.over {
            return Poll::Ready(None);
        }
        if this.cancelled.as_mut().poll(cx).is_ready() {
            let error = this.fail("gateway_shutting_down", "poolgate is shutting down");
            return Poll::Ready(error.map(Ok));
        }
        if !this.first.is_empty() {
            if let Some(out) = this.release_held() {
                return Poll::Ready(Some(Ok(out)));
            }
            if this.over {
                return Poll::Ready(None);
            }
        }
        loop {
            let chunk = match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        let error = this.fail(
                            "upstream_stream_stalled",
                            "the upstream stopped sending in the middle of the stream",
                        );
                        return Poll::Ready(error.map(Ok));
                    }
                    return Poll::Pending;
                }
            };
            match chunk {
                Some(Ok(bytes)) => {
                    let deadline = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let processed = this.process(bytes);
                    if this.mapper.completed() && this.finisher.is_some() {
                        // The answer is complete with these bytes: its record first.
                        this.end(End::Complete);
                    }
                    match processed {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(out))),
                        Err(kind) => {
                            let error = this.fail(kind, "an upstream stream event was too large");
                            return Poll::Ready(error.map(Ok));
                        }
                    }
                }
                Some(Err(_)) => {
                    let error = this.fail(
                        "upstream_stream_error",
                        "the upstream connection broke in the middle of the stream",
                    );
                    return Poll::Ready(error.map(Ok));
                }
                None => return Poll::Ready(this.complete().map(Ok)),
            }
        }
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        // Still running when dropped: the client went away (dropping `upstream` after this
        // closes the upstream connection) — unless the final event already reached it.
        let end = if self.mapper.completed() {
            End::Complete
        } else {
            End::ClientLeft
        };
        self.end(end);
    }
}

/// After the client left before the upstream's final usage: the upstream, read on for a short
/// grace in a task of its own to get that usage; dropped (closing the upstream connection) when
/// the usage came, the stream ended, the grace or the byte cap ran out, or shutdown cut streams.
struct GraceRead {
    upstream: UpstreamBody,
    framer: SseFramer,
    mapper: Box<dyn StreamMapper>,
    delivered: DeliveredText,
    /// `None` once the record is handed on.
    finisher: Option<StreamFinisher>,
}

impl GraceRead {
    async fn run(mut self, grace: Duration, max_bytes: usize) {
        let deadline = Instant::now() + grace;
        let Some(cancelled) = self.finisher.as_ref().map(|f| f.data.streams_cancelled()) else {
            return;
        };
        tokio::pin!(cancelled);
        let mut events = Vec::new();
        let mut scratch = BytesMut::new();
        let mut read = 0usize;
        while !self.mapper.usage_final() && !self.mapper.completed() && read <= max_bytes {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, self.upstream.next()) => next,
                () = &mut cancelled => break,
            };
            let Ok(Some(Ok(bytes))) = next else {
                break;
            };
            read = read.saturating_add(bytes.len());
            events.clear();
            if self.framer.push(bytes, &mut events).is_err() {
                break;
            }
            for event in &events {
                self.mapper.map(event, &mut scratch);
                scratch.clear();
            }
        }
        self.upstream = futures_util::stream::empty().boxed();
        let Some(finisher) = self.finisher.take() else {
            return;
        };
        if self.mapper.usage_final() {
            finisher.finish(self.mapper.usage(), End::ClientLeft);
        } else {
            let delivered = std::mem::replace(
                &mut self.delivered,
                DeliveredText::new(finisher.billing.format),
            );
            finisher.finish_estimated(self.mapper.usage(), delivered, End::ClientLeft);
        }
    }
}

impl Drop for GraceRead {
    fn drop(&mut self) {
        // The task was dropped before it finished (the runtime is going away): the record is
        // still written, with what is known.
        if let Some(finisher) = self.finisher.take() {
            finisher.finish(self.mapper.usage(), End::ClientLeft);
        }
    }
}

/// The mapper left behind in a relay whose upstream moved to a [`GraceRead`].
struct Spent;

impl StreamMapper for Spent {
    fn map(&mut self, _event: &SseEvent, _out: &mut BytesMut) -> Mapped {
        Mapped::Drop
    }

    fn usage(&self) -> Option<TokenUsage> {
        None
    }

    fn completed(&self) -> bool {
        true
    }

    fn error_event(&self, _code: &str, _message: &str) -> Bytes {
        Bytes::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_skips_empty_outputs_keeps_a_lone_one_uncopied_and_joins_the_rest() {
        assert_eq!(one_frame(Vec::new()), None);
        assert_eq!(one_frame(vec![Bytes::new(), Bytes::new()]), None);

        let lone = Bytes::from_static(b"data: {\"role\"}\n\n");
        let out = one_frame(vec![Bytes::new(), lone.clone(), Bytes::new()]);
        let out = out.expect("one non-empty output");
        assert_eq!(out.as_ptr(), lone.as_ptr(), "a lone output is not copied");

        let joined = one_frame(vec![
            Bytes::from_static(b"data: a\n\n"),
            Bytes::new(),
            Bytes::from_static(b"data: b\n\n"),
        ]);
        assert_eq!(joined.as_deref(), Some(&b"data: a\n\ndata: b\n\n"[..]));
    }
}
