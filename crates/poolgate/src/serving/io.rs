//! The client socket with a write timeout: when the peer accepts no byte for `timeout` while
//! poolgate has something to send, the next write fails with `TimedOut`, hyper ends the
//! connection, and dropping it drops the response body (for a stream, the relay, whose `Drop`
//! aborts the upstream request and records the request as cancelled).
//!
//! Why a small wrapper of our own rather than `tokio-io-timeout`: that crate arms a read and a
//! write timer per stream and needs the stream pinned; poolgate needs only the write side, and an
//! idle keep-alive connection must not be timed out on reads (hyper's header timer and the
//! connection's idle timer own that). The rule is nginx's `send_timeout`: the clock runs only
//! while a write is pending and restarts at every write that makes progress, so a slow but
//! reading client is never cut, a client that stopped reading is cut after `timeout` (once the
//! kernel's socket buffers are full).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An IO object whose writes fail with [`io::ErrorKind::TimedOut`] after `timeout` without
/// progress. Reads pass through untouched.
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Option<Duration>,
    /// Created on the first write that has to wait, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is running for the write under way.
    armed: bool,
}

impl<T> WriteTimeout<T> {
    /// Wraps `inner`; `None` disables the timeout.
    pub fn new(inner: T, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
            armed: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// A write made progress (or failed on its own): the clock stops.
    fn progressed<R>(&mut self, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.armed = false;
        }
        result
    }

    /// A write has to wait: start the clock if it is not running, and fail once it ran out.
    fn waiting<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        if !self.armed {
            let deadline = Instant::now() + timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(timer) = &mut self.timer else {
            return Poll::Pending;
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = false;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client accepted no byte for {} s",
                        timeout.as_secs_f64()
                    ),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.waiting(cx),
            ready => this.progressed(ready),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.waiting(cx),
            ready => this.progressed(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.waiting(cx),
            ready => this.progressed(ready),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.waiting(cx),
            ready => this.progressed(ready),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_cannot_progress_fails_after_the_timeout() {
        // A duplex pipe with a 16-byte buffer that nobody reads: the second write waits forever.
        let (near, _far) = tokio::io::duplex(16);
        let mut io = WriteTimeout::new(near, Some(Duration::from_secs(5)));
        io.write_all(&[0; 16]).await.unwrap();
        let started = Instant::now();
        let error = io.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_clock() {
        let (near, mut far) = tokio::io::duplex(4);
        let mut io = WriteTimeout::new(near, Some(Duration::from_secs(5)));
        // The reader takes 4 bytes every 4 s: each wait is shorter than the timeout, the
        // whole write takes far longer than it.
        let reader = tokio::spawn(async move {
            let mut buf = [0; 4];
            let mut total = 0;
            while total < 40 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
            total
        });
        let started = Instant::now();
        io.write_all(&[7; 40]).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(32));
        assert_eq!(reader.await.unwrap(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_a_blocked_write_just_waits() {
        let (near, _far) = tokio::io::duplex(1);
        let mut io = WriteTimeout::new(near, None);
        io.write_all(&[0]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(3600), io.write_all(&[0])).await;
        assert!(waited.is_err(), "the write must still be pending");
    }
}
