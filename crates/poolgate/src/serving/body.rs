//! Request bodies with a time limit: a body must keep arriving at a minimum rate, the rule of
//! Apache's `mod_reqtimeout` (`body=…,MinRate=…`). The clock starts when a handler first reads
//! the body (so authentication before reading costs the client nothing); the body must be
//! complete by `start + timeout + received / min_rate`. A client that sends nothing is cut after
//! `timeout`; one that trickles a byte every few seconds is cut soon after; a slow but honest
//! upload keeps extending its own deadline. Past the deadline the body yields a [`BodyTimeout`]
//! error, which the API layer answers with 408 (see [`is_body_timeout`]).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How fast a request body must arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyPace {
    /// Allowance before the rate counts (also the longest silence at the start).
    pub timeout: Duration,
    /// Bytes per second that extend the deadline; 0 = only `timeout` counts, for the whole body.
    pub min_rate: u64,
}

/// The body arrived too slowly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTimeout {
    pub received: u64,
    pub elapsed: Duration,
}

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body arrived too slowly ({} bytes in {:.1} s)",
            self.received,
            self.elapsed.as_secs_f64()
        )
    }
}

impl StdError for BodyTimeout {}

/// Whether `error` (or one of its sources) is a [`BodyTimeout`] — for the place that reads
/// bodies (`api::json::read_body`) to answer 408 instead of 400.
pub fn is_body_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTimeout>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// A request body that fails with [`BodyTimeout`] when it arrives slower than its [`BodyPace`].
pub struct TimedBody<B> {
    inner: B,
    pace: Option<BodyPace>,
    started: Option<Instant>,
    received: u64,
    /// Created the first time the body has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<B> TimedBody<B> {
    /// Wraps a body; `None` turns the limit off.
    pub fn new(inner: B, pace: Option<BodyPace>) -> Self {
        Self {
            inner,
            pace,
            started: None,
            received: 0,
            timer: None,
            done: false,
        }
    }

    fn deadline(&self, pace: BodyPace, started: Instant) -> Instant {
        let earned = if pace.min_rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(self.received as f64 / pace.min_rate as f64)
        };
        started + pace.timeout + earned
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let Some(pace) = this.pace else {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        };
        let started = *this.started.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this
                        .received
                        .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline(pace, started);
                let timer = match &mut this.timer {
                    Some(timer) => {
                        if timer.deadline() != deadline {
                            timer.as_mut().reset(deadline);
                        }
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.done = true;
                        Poll::Ready(Some(Err(Box::new(BodyTimeout {
                            received: this.received,
                            elapsed: started.elapsed(),
                        }))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunks =
        StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>;

    /// A body that yields `chunk` every `every`, `count` times.
    fn trickle(chunk: &'static [u8], every: Duration, count: usize) -> Chunks {
        let stream = futures_util::stream::unfold(0, move |sent| async move {
            if sent == count {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Frame::data(Bytes::from_static(chunk))), sent + 1))
        });
        StreamBody::new(Box::pin(stream) as futures_util::stream::BoxStream<'static, _>)
    }

    const PACE: BodyPace = BodyPace {
        timeout: Duration::from_secs(10),
        min_rate: 100,
    };

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_is_cut_once_it_falls_behind_the_rate() {
        // One byte every 2 s earns 10 ms each: the deadline is ~10 s after the start.
        let body = TimedBody::new(trickle(b"x", Duration::from_secs(2), 1000), Some(PACE));
        let started = Instant::now();
        let error = body.collect().await.err().unwrap();
        assert!(is_body_timeout(&*error), "{error}");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(10) && elapsed <= Duration::from_secs(11),
            "{elapsed:?}"
        );
        let timeout = error.downcast_ref::<BodyTimeout>().unwrap();
        assert_eq!(timeout.received, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_that_keeps_the_rate_completes() {
        // 200 bytes per second against a floor of 100: 60 s in total, never cut.
        let chunk: &'static [u8] = &[b'y'; 200];
        let body = TimedBody::new(trickle(chunk, Duration::from_secs(1), 60), Some(PACE));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 12_000);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_cut_after_the_timeout_and_no_limit_means_none() {
        let silent = || trickle(b"z", Duration::from_secs(3600), 1);
        let started = Instant::now();
        let error = TimedBody::new(silent(), Some(PACE))
            .collect()
            .await
            .err()
            .unwrap();
        assert!(is_body_timeout(&*error));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let unlimited = TimedBody::new(silent(), None).collect().await.unwrap();
        assert_eq!(unlimited.to_bytes().as_ref(), b"z");
    }

    #[test]
    fn other_errors_are_not_timeouts() {
        let error = std::io::Error::other("reset");
        assert!(!is_body_timeout(&error));
    }
}
