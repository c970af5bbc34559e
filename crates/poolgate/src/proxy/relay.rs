//! Streaming relay: upstream SSE bytes go to the client event by event, byte-identical, as they
//! arrive — never buffered whole. On the way it reads token usage, drops the usage-only chunk
//! poolgate itself asked for, enforces the idle timeout between chunks, turns an upstream death
//! into an SSE error event and a clean end, and — if the client leaves — drops the upstream
//! request at once and records the request as cancelled.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::sse::{encode_event, SseEvent, SseFramer};
use super::UsageDraft;
use crate::cooldown::Outcome as UpstreamOutcome;
use crate::domain::Outcome;
use crate::providers::{openai, TokenUsage};
use crate::routing::Ticket;
use crate::state::AppState;

/// The body type handed to the HTTP layer.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

pub struct RelayOptions {
    /// Drop the `"choices": []` usage chunk (poolgate added `include_usage`, the client did not).
    pub strip_usage_chunk: bool,
    pub idle_timeout: Duration,
}

/// What is needed to close the books on a stream, whichever way it ends.
pub struct StreamFinisher {
    pub draft: UsageDraft,
    pub ticket: Ticket,
    pub state: AppState,
}

impl StreamFinisher {
    fn finish(mut self, usage: Option<TokenUsage>, end: End) {
        if let Some(usage) = usage {
            self.draft.set_usage(usage);
        }
        let (status, outcome, kind) = match end {
            End::Complete => (200, Outcome::Success, None),
            End::UpstreamFailed(kind) => (200, Outcome::StreamError, Some(kind)),
            End::ClientLeft => (499, Outcome::Cancelled, Some("client_closed")),
        };
        if let End::UpstreamFailed(_) = end {
            let now = Instant::now();
            *self.ticket.backend.runtime.last_error.lock() =
                Some("stream ended unexpectedly".to_owned());
            if self.ticket.resolve(
                UpstreamOutcome::ServerError,
                &self.state.config.cooldown,
                now,
            ) {
                self.state.persist_health(&self.ticket.backend, now);
            }
        }
        self.state
            .usage
            .record(self.draft.finish(status, outcome, kind));
    }
}

#[derive(Clone, Copy)]
enum End {
    Complete,
    UpstreamFailed(&'static str),
    ClientLeft,
}

pub struct RelayStream {
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    first: Option<Bytes>,
    framer: SseFramer,
    events: Vec<SseEvent>,
    idle: Pin<Box<Sleep>>,
    options: RelayOptions,
    usage: Option<TokenUsage>,
    /// Set once the stream ended; `None` afterwards.
    finisher: Option<StreamFinisher>,
}

impl RelayStream {
    pub fn new(
        upstream: BoxStream<'static, reqwest::Result<Bytes>>,
        first: Bytes,
        options: RelayOptions,
        finisher: StreamFinisher,
    ) -> Self {
        Self {
            upstream,
            first: Some(first),
            framer: SseFramer::new(),
            events: Vec::new(),
            idle: Box::pin(tokio::time::sleep(options.idle_timeout)),
            options,
            usage: None,
            finisher: Some(finisher),
        }
    }

    /// Frames one chunk; returns the bytes to forward (possibly empty).
    fn process(&mut self, chunk: Bytes) -> Result<Bytes, &'static str> {
        self.events.clear();
        if self.framer.push(chunk, &mut self.events).is_err() {
            return Err("stream_event_too_large");
        }
        let mut kept: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        for event in self.events.drain(..) {
            let mut drop_event = false;
            if let Some(data) = event.data.as_deref() {
                if let Some((usage, usage_only)) = openai::chunk_usage(data) {
                    self.usage = Some(usage);
                    drop_event = usage_only && self.options.strip_usage_chunk;
                }
            }
            if drop_event {
                continue;
            }
            match (&mut joined, kept.take()) {
                (Some(buffer), _) => buffer.extend_from_slice(&event.raw),
                (None, None) => kept = Some(event.raw),
                (None, Some(previous)) => {
                    let mut buffer = BytesMut::with_capacity(previous.len() + event.raw.len());
                    buffer.extend_from_slice(&previous);
                    buffer.extend_from_slice(&event.raw);
                    joined = Some(buffer);
                }
            }
        }
        Ok(joined.map(BytesMut::freeze).or(kept).unwrap_or_default())
    }

    fn end(&mut self, end: End) {
        if let Some(finisher) = self.finisher.take() {
            finisher.finish(self.usage, end);
        }
    }

    fn fail(&mut self, kind: &'static str, message: &str) -> Option<Bytes> {
        self.end(End::UpstreamFailed(kind));
        let body = serde_json::json!({
            "error": {
                "message": message,
                "type": "upstream_error",
                "param": null,
                "code": kind,
            }
        });
        Some(encode_event(None, &body.to_string()))
    }
}

impl Stream for RelayStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finisher.is_none() {
            return Poll::Ready(None);
        }
        loop {
            let chunk = if let Some(first) = this.first.take() {
                Some(Ok(first))
            } else {
                match this.upstream.as_mut().poll_next(cx) {
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
                }
            };
            match chunk {
                Some(Ok(bytes)) => {
                    let deadline = Instant::now() + this.options.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    match this.process(bytes) {
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
                None => {
                    // Clean end: forward any unterminated tail as is.
                    let framer = std::mem::take(&mut this.framer);
                    let tail = framer.finish().map(|event| event.raw);
                    this.end(End::Complete);
                    return Poll::Ready(tail.filter(|t| !t.is_empty()).map(Ok));
                }
            }
        }
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        // Still running when dropped: the client went away. Dropping `upstream` (after this)
        // closes the upstream connection.
        self.end(End::ClientLeft);
    }
}

// `Sleep::poll` needs the Future trait in scope.
use std::future::Future;
