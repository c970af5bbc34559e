//! poolgate's own HTTP/1.1 server connection (#13): each request head is parsed with `httparse`,
//! the request goes to the app with a body read straight from the socket, and the answer's head
//! and body are written as the app yields them (`Content-Length`, chunked, or to the close).
//!
//! Why not hyper's: hyper's HTTP/1 connection keeps an 8 KiB write buffer for its whole life and
//! reserves an 8 KiB read buffer while an answer streams, in a connection state of several KB.
//! Here nothing is buffered while a connection waits: the read buffer is taken when a read is
//! made and given up when the socket has nothing, and each answer head is written from its own
//! short-lived `Vec`. An open stream costs its client connection this task's state and the
//! handler's, no buffer.
//!
//! What it does: keep-alive and pipelined requests (answered in order), `Expect: 100-continue`
//! (the `100` goes out when the app first reads the body), HTTP/1.0 clients (keep-alive on
//! request), the `Date` header, a graceful close, and a client that leaves while its answer is
//! awaited or streams: seen by peeking at the socket, as hyper reads on to see it, and the
//! answer is dropped (a stream's upstream call with it). As with hyper, a client that shuts its
//! write side after a request counts as gone, unless the next request's bytes are read already.
//! A body the app did not read is skipped when all of it is in the buffer (an early 401 keeps
//! the connection); otherwise the connection closes after the answer, reading on for a while
//! so that the close does not reset the answer away. What it refuses, with a JSON error
//! and a close: a malformed head (400), a head over `server.max_buf_size_bytes` or with more
//! than 100 header lines (431), `Transfer-Encoding` together with `Content-Length`, on
//! HTTP/1.0, or not ending in `chunked` (400), a bad `Content-Length` (400). It does not do
//! upgrades or `CONNECT` tunnels (the app answers them as any other request) and drops
//! trailers, both ways.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::accept::discard_input;
use super::io::WriteTimeout;
use crate::domain::{RequestId, X_REQUEST_ID};
use crate::upstream::h1::{content_length, has_token, parse_error, Chunked, Decoded, H1Error};

/// What a read asks for (hyper's first read is 8 KiB too). The buffer is taken when a read is
/// made and given up when the socket had nothing.
const READ_SIZE: usize = 8 * 1024;
/// The most a read of a large request body asks for.
const MAX_BODY_READ: usize = 64 * 1024;
/// The most header lines a request head may have (hyper's default).
const MAX_HEADERS: usize = 100;
/// After an answer to a request whose body was not read, what is still read (and dropped)
/// before the close, so that the close does not reset the answer away (nginx's
/// `lingering_close`).
const LINGER_BYTES: usize = 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection ended early; logged at debug level, never sent.
#[derive(Debug, thiserror::Error)]
pub(super) enum ServeError {
    #[error("client connection error")]
    Io(#[source] io::Error),
    #[error("the client closed the connection in the middle of a request head")]
    IncompleteHead,
    #[error("refused a request: {0}")]
    Refused(&'static str),
    #[error("the client left before its answer was complete")]
    ClientGone,
    #[error("the answer's body failed")]
    Body(#[source] BoxError),
    #[error("the answer's body does not match its Content-Length")]
    LengthMismatch,
}

/// A request's body, read from the connection's socket by whoever polls it.
#[derive(Debug)]
pub struct RequestBody {
    /// `None`: the request has no body.
    shared: Option<Arc<BodyShared>>,
}

/// A request body's reader, shared by the body and its connection (which takes back the bytes
/// read past the body's end, for the next request).
#[derive(Debug)]
struct BodyShared {
    /// Set once the body was read to its end (no lock to look).
    done: AtomicBool,
    reader: Mutex<BodyReader>,
}

#[derive(Debug)]
struct BodyReader {
    stream: Arc<TcpStream>,
    /// Bytes read and not yet handed out.
    buf: BytesMut,
    framing: BodyFraming,
    /// `Some(written)`: a `100 Continue` is owed, `written` bytes of it went.
    continue_owed: Option<usize>,
    /// The body failed; it fails again if polled.
    failed: bool,
}

#[derive(Debug, Clone, Copy)]
enum BodyFraming {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    Done,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// hyper's words for it.
    #[error("connection closed before message completed")]
    Closed,
    #[error("connection error")]
    Io(#[source] io::Error),
    #[error("the chunked request body is not valid: {0}")]
    InvalidChunk(&'static str),
}

impl BodyShared {
    fn lock(&self) -> MutexGuard<'_, BodyReader> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let Some(shared) = &self.shared else {
            return Poll::Ready(None);
        };
        let mut reader = shared.lock();
        let polled = reader.poll_data(cx);
        // Done once the last byte was handed out, not only once the end was asked for: the
        // connection then watches for a client that leaves.
        if matches!(reader.framing, BodyFraming::Done) {
            shared.done.store(true, Ordering::Release);
        }
        drop(reader);
        polled.map(|data| data.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| shared.done.load(Ordering::Acquire))
    }

    fn size_hint(&self) -> SizeHint {
        let Some(shared) = &self.shared else {
            return SizeHint::with_exact(0);
        };
        match shared.lock().framing {
            BodyFraming::Length(left) => SizeHint::with_exact(left),
            BodyFraming::Done => SizeHint::with_exact(0),
            BodyFraming::Chunked(_) => SizeHint::default(),
        }
    }
}

impl BodyReader {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RequestBodyError>>> {
        loop {
            if self.failed {
                return Poll::Ready(Some(Err(RequestBodyError::Closed)));
            }
            if let Some(written) = self.continue_owed {
                match poll_write_some(&self.stream, cx, &CONTINUE[written..]) {
                    Poll::Ready(Ok(sent)) => {
                        let written = written + sent;
                        self.continue_owed = (written < CONTINUE.len()).then_some(written);
                        continue;
                    }
                    Poll::Ready(Err(error)) => return self.fail(RequestBodyError::Io(error)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.buf.is_empty() {
                match &mut self.framing {
                    BodyFraming::Done => return Poll::Ready(None),
                    BodyFraming::Length(left) => {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(self.buf.len());
                        let data = self.buf.split_to(take).freeze();
                        *left -= take as u64;
                        if *left == 0 {
                            self.framing = BodyFraming::Done;
                        }
                        self.release_if_empty();
                        return Poll::Ready(Some(Ok(data)));
                    }
                    BodyFraming::Chunked(state) => match state.decode(&mut self.buf) {
                        Ok(Decoded::Data(data)) => {
                            self.release_if_empty();
                            return Poll::Ready(Some(Ok(data)));
                        }
                        Ok(Decoded::End) => {
                            self.framing = BodyFraming::Done;
                            self.release_if_empty();
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::More) => {}
                        Err(H1Error::InvalidChunk(why)) => {
                            return self.fail(RequestBodyError::InvalidChunk(why))
                        }
                        Err(_) => return self.fail(RequestBodyError::InvalidChunk("invalid")),
                    },
                }
            }
            let want = match self.framing {
                BodyFraming::Done => return Poll::Ready(None),
                BodyFraming::Length(left) => {
                    usize::try_from(left).map_or(MAX_BODY_READ, |left| left.min(MAX_BODY_READ))
                }
                BodyFraming::Chunked(_) => READ_SIZE,
            };
            if let Err(error) = std::task::ready!(self.stream.poll_read_ready(cx)) {
                return self.fail(RequestBodyError::Io(error));
            }
            self.buf.reserve(want.max(READ_SIZE));
            match read_draining(&self.stream, &mut self.buf) {
                Ok(0) => return self.fail(RequestBodyError::Closed),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.release_if_empty(),
                Err(error) => return self.fail(RequestBodyError::Io(error)),
            }
        }
    }

    /// Skips what is left of the body if all of it is in the buffer; whether the body is done.
    fn skip_buffered_body(&mut self) -> bool {
        loop {
            match &mut self.framing {
                BodyFraming::Done => return true,
                _ if self.failed => return false,
                BodyFraming::Length(left) => {
                    let Ok(left_now) = usize::try_from(*left) else {
                        return false;
                    };
                    if left_now > self.buf.len() {
                        return false;
                    }
                    self.buf.advance(left_now);
                    self.framing = BodyFraming::Done;
                }
                BodyFraming::Chunked(state) => match state.decode(&mut self.buf) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::End) => self.framing = BodyFraming::Done,
                    Ok(Decoded::More) | Err(_) => return false,
                },
            }
        }
    }

    /// An empty buffer holds no allocation (it would keep the data handed out, or a whole
    /// read buffer, alive).
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    fn fail(&mut self, error: RequestBodyError) -> Poll<Option<Result<Bytes, RequestBodyError>>> {
        self.failed = true;
        self.buf = BytesMut::new();
        Poll::Ready(Some(Err(error)))
    }
}

/// Writes what it can of `bytes` to `stream` without a lock on it (`&TcpStream`).
fn poll_write_some(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(stream.poll_write_ready(cx))?;
        match stream.try_write(bytes) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            written => return Poll::Ready(written),
        }
    }
}

/// The write side of a shared socket.
struct SocketWriter(Arc<TcpStream>);

impl AsyncWrite for SocketWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_some(&self.0, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

// === the connection ===

pin_project_lite::pin_project! {
    /// One client connection served by [`serve`]; [`Connection::graceful_shutdown`] asks it to
    /// close once the answer under way (if any) is written.
    pub(super) struct Connection<F> {
        #[pin]
        future: F,
        shutdown: Arc<AtomicBool>,
    }
}

impl<F: Future<Output = Result<(), ServeError>>> Future for Connection<F> {
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map_err(Into::into)
    }
}

impl<F> Connection<F> {
    /// The connection's owner polls it right after: the flag needs no waker.
    pub(super) fn graceful_shutdown(self: Pin<&mut Self>) {
        self.shutdown.store(true, Ordering::Release);
    }
}

/// Serves HTTP/1.1 on `stream` with `service` until the client closes, a request asks for the
/// close, an error, or a graceful shutdown.
pub(super) fn serve<Svc, RB>(
    stream: TcpStream,
    service: Svc,
    max_head: usize,
    write_timeout: Option<Duration>,
) -> Connection<impl Future<Output = Result<(), ServeError>>>
where
    Svc: hyper::service::Service<Request<RequestBody>, Response = Response<RB>, Error = Infallible>,
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    let shutdown = Arc::new(AtomicBool::new(false));
    Connection {
        future: run(
            Arc::new(stream),
            service,
            max_head,
            write_timeout,
            Arc::clone(&shutdown),
        ),
        shutdown,
    }
}

async fn run<Svc, RB>(
    stream: Arc<TcpStream>,
    service: Svc,
    max_head: usize,
    write_timeout: Option<Duration>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ServeError>
where
    Svc: hyper::service::Service<Request<RequestBody>, Response = Response<RB>, Error = Infallible>,
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    let mut writer = WriteTimeout::new(SocketWriter(Arc::clone(&stream)), write_timeout);
    // Bytes read past the last request (a pipelined request's start); empty, with no
    // allocation, while the connection waits.
    let mut carry = BytesMut::new();
    loop {
        let head = match read_head(&stream, &mut carry, &shutdown, max_head).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(HeadFailure::Io(error)) => return Err(ServeError::Io(error)),
            Err(HeadFailure::Incomplete) => return Err(ServeError::IncompleteHead),
            Err(HeadFailure::Refused(status, why)) => {
                refuse(&mut writer, &stream, status, why).await;
                return Err(ServeError::Refused(why));
            }
        };
        let RequestHead {
            method,
            uri,
            version,
            headers,
        } = head;
        let framing = match request_framing(version, &headers) {
            Ok(framing) => framing,
            Err(why) => {
                refuse(&mut writer, &stream, StatusCode::BAD_REQUEST, why).await;
                return Err(ServeError::Refused(why));
            }
        };
        let mut keep_alive = wants_keep_alive(version, &headers);
        let shared = match framing {
            BodyFraming::Done => None,
            framing => {
                let continue_owed = (version == Version::HTTP_11
                    && headers
                        .get_all(header::EXPECT)
                        .iter()
                        .any(|value| has_token(value, "100-continue")))
                .then_some(0);
                Some(Arc::new(BodyShared {
                    done: AtomicBool::new(false),
                    reader: Mutex::new(BodyReader {
                        stream: Arc::clone(&stream),
                        buf: std::mem::take(&mut carry),
                        framing,
                        continue_owed,
                        failed: false,
                    }),
                }))
            }
        };
        let http10 = version == Version::HTTP_10;
        let is_head = method == Method::HEAD;
        let mut request = Request::new(RequestBody {
            shared: shared.clone(),
        });
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;

        // The app's answer; meanwhile, a client that leaves (once its body was read) ends it.
        // Not when the next request's bytes are read already: the client may have half-closed
        // after sending all it had (hyper's rule too).
        let mut watching = carry.is_empty();
        let mut leftover_checked = false;
        let response = {
            let mut call = pin!(service.call(request));
            poll_fn(|cx| {
                if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                let body_read = shared
                    .as_ref()
                    .is_none_or(|shared| shared.done.load(Ordering::Acquire));
                if body_read && !leftover_checked {
                    leftover_checked = true;
                    if shared
                        .as_ref()
                        .is_some_and(|shared| !shared.lock().buf.is_empty())
                    {
                        watching = false;
                    }
                }
                if body_read && poll_client_gone(&stream, cx, &mut watching).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        let Some(response) = response else {
            return Err(ServeError::ClientGone);
        };

        // A `100 Continue` half written is finished; one not begun is owed no more. A body the
        // app did not read is skipped if it is all in the buffer already (an early 401 or 429
        // keeps the connection); else the connection closes after the answer.
        let mut body_unread = false;
        if let Some(shared) = &shared {
            let owed = {
                let mut reader = shared.lock();
                body_unread = !reader.skip_buffered_body();
                if body_unread {
                    reader.buf = BytesMut::new();
                } else if !reader.buf.is_empty() {
                    // A pipelined request's bytes: the client-gone watch does not apply.
                    watching = false;
                }
                reader.continue_owed.take().filter(|&written| written > 0)
            };
            if let Some(written) = owed {
                writer
                    .write_all(&CONTINUE[written..])
                    .await
                    .map_err(ServeError::Io)?;
            }
        }
        let (parts, body) = response.into_parts();
        let app_closes = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|value| has_token(value, "close"));
        keep_alive = keep_alive && !body_unread && !app_closes && !shutdown.load(Ordering::Acquire);
        let answer = answer_framing(is_head, parts.status, &parts.headers, &body, http10);
        if matches!(answer, AnswerFraming::UntilClose) {
            keep_alive = false;
        }
        let head = encode_head(parts.status, &parts.headers, answer, keep_alive, http10);
        drop(parts);
        // Unread body bytes in the socket are not a client leaving (and the peek would take
        // the socket's read waker from a body still polled elsewhere).
        watching &= !body_unread;
        write_answer(&mut writer, &stream, head, body, answer, &mut watching).await?;

        if !keep_alive {
            let _ = writer.shutdown().await;
            if body_unread {
                linger(&stream).await;
            }
            return Ok(());
        }
        if let Some(shared) = shared {
            carry = std::mem::take(&mut shared.lock().buf);
        }
    }
}

/// A request head, parsed.
struct RequestHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

enum HeadFailure {
    Io(io::Error),
    /// The client closed with part of a head sent.
    Incomplete,
    /// Answered with this status and reason, then closed.
    Refused(StatusCode, &'static str),
}

/// Waits for the next request head and parses it. `Ok(None)`: the client closed, or a graceful
/// shutdown came, before a byte of a request.
async fn read_head(
    stream: &TcpStream,
    buf: &mut BytesMut,
    shutdown: &AtomicBool,
    max_head: usize,
) -> Result<Option<RequestHead>, HeadFailure> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(buf, max_head)? {
                return Ok(Some(head));
            }
        }
        let ready = poll_fn(|cx| {
            if buf.is_empty() && shutdown.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            stream.poll_read_ready(cx).map(Some)
        })
        .await;
        match ready {
            None => return Ok(None),
            Some(Err(error)) => return Err(HeadFailure::Io(error)),
            Some(Ok(())) => {}
        }
        buf.reserve(READ_SIZE);
        match read_draining(stream, buf) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HeadFailure::Incomplete),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
            Err(error) => return Err(HeadFailure::Io(error)),
        }
    }
}

/// Reads what the socket holds into `buf`'s spare room (`try_read_buf`). Under epoll (and
/// kqueue), a read that did not fill the room drained the kernel's queue (short of a TCP urgent
/// mark, where the kernel stops a read early), so the socket is also marked not readable, as
/// tokio's own `AsyncRead` does on those selectors (tokio PR 4840): the next readiness check —
/// the client-gone peek while the upstream answers, above all — waits for the socket's next
/// event instead of asking the kernel again (one `recvfrom` per request less).
///
/// The mark is cleared by telling `try_io` the read would block: it clears the readiness it
/// sampled before calling the closure, and only if the driver delivered no event since
/// (`tokio/src/runtime/io/registration.rs`, `try_io`; re-check on a tokio upgrade), so no
/// wake-up is lost on either runtime. Where readiness is only re-armed by a real `EAGAIN`
/// (Windows, mio's poll(2) selector) the read is left as it is.
fn read_draining(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if !SHORT_READ_DRAINS {
        return stream.try_read_buf(buf);
    }
    let room = buf.capacity() - buf.len();
    let mut read = None;
    let outcome = stream.try_io(tokio::io::Interest::READABLE, || {
        let count = stream.try_read_buf(buf)?;
        read = Some(count);
        if 0 < count && count < room {
            // Tells `try_io` to clear the readiness it saw; the count is returned below.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(count)
        }
    });
    match read {
        Some(count) => Ok(count),
        None => outcome,
    }
}

/// Whether a short read shows the socket drained: the edge-triggered selectors tokio applies
/// the same rule on (`tokio/src/io/poll_evented.rs`, `poll_read`).
const SHORT_READ_DRAINS: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "illumos",
    target_os = "redox",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "ios",
    target_os = "macos",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "tvos",
    target_os = "visionos",
    target_os = "watchos",
));

/// Parses a request head from the front of `buf`, taking it out; `Ok(None)`: not whole yet.
fn parse_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<RequestHead>, HeadFailure> {
    let too_large = HeadFailure::Refused(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "the request head is too large",
    );
    let invalid = |why| HeadFailure::Refused(StatusCode::BAD_REQUEST, why);
    // Not zeroed first (100 slots, 3.2 KB, on every request): httparse fills them.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large),
        Err(error) => return Err(invalid(parse_error(error))),
    };
    if length > max_head {
        return Err(too_large);
    }
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| invalid("invalid method"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // A copy of its own: the request's header values and URI slice it, and a handler may keep
    // a clone of one through a whole stream; slices of the read buffer would keep all of it.
    let head = Bytes::copy_from_slice(&buf[..length]);
    // The copy's slice at the place `part` (a slice of `buf` the parser returned) has in `buf`.
    let base = buf.as_ptr() as usize;
    let in_head = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        head.slice(start..start + part.len())
    };
    let path = request.path.ok_or_else(|| invalid("no request target"))?;
    let uri = Uri::from_maybe_shared(in_head(path.as_bytes()))
        .map_err(|_| invalid("invalid request target"))?;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(in_head(header.value))
            .map_err(|_| invalid("invalid header value"))?;
        headers.append(name, value);
    }
    buf.advance(length);
    if buf.is_empty() {
        // The read buffer goes now (what is left of it would wait for the next request).
        *buf = BytesMut::new();
    }
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
    }))
}

/// How a request's body is framed (RFC 9112 §6.3); `Err`: refused with 400. A request with
/// both `Transfer-Encoding` and `Content-Length` is refused rather than guessed at (a
/// smuggling vector).
fn request_framing(version: Version, headers: &HeaderMap) -> Result<BodyFraming, &'static str> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        if version == Version::HTTP_10 {
            return Err("Transfer-Encoding is not HTTP/1.0");
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err("both Transfer-Encoding and Content-Length");
        }
        let chunked_last = codings
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_last {
            return Err("a Transfer-Encoding that does not end in chunked");
        }
        return Ok(BodyFraming::Chunked(Chunked::new()));
    }
    match content_length(headers) {
        Err(_) => Err("invalid Content-Length"),
        Ok(None | Some(0)) => Ok(BodyFraming::Done),
        Ok(Some(length)) => Ok(BodyFraming::Length(length)),
    }
}

/// Whether the client keeps the connection for another request.
fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(header::CONNECTION) {
        close |= has_token(value, "close");
        keep_alive |= has_token(value, "keep-alive");
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// Watches for a client that left: `Ready` when it closed its side or the socket failed. Bytes
/// waiting (a pipelined request, an unread body) end the watch for this request.
fn poll_client_gone(stream: &TcpStream, cx: &mut Context<'_>, watching: &mut bool) -> Poll<()> {
    if !*watching {
        return Poll::Pending;
    }
    let mut byte = [0u8; 1];
    let mut peeked = ReadBuf::new(&mut byte);
    match stream.poll_peek(cx, &mut peeked) {
        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
        Poll::Ready(Ok(_)) => {
            *watching = false;
            Poll::Pending
        }
        Poll::Pending => Poll::Pending,
    }
}

// === answers ===

/// How an answer's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerFraming {
    /// No body (`HEAD`, `1xx`, `204`, `304`); a `HEAD` answer still says its length if known.
    NoBody {
        length: Option<u64>,
    },
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client and no known length: the close ends it.
    UntilClose,
}

/// The app's `Content-Length` if it set a valid one, else the body's exact size.
fn answer_framing<RB: Body>(
    is_head: bool,
    status: StatusCode,
    headers: &HeaderMap,
    body: &RB,
    http10: bool,
) -> AnswerFraming {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return AnswerFraming::NoBody { length: None };
    }
    let app_length = content_length(headers).ok().flatten();
    if is_head {
        // An empty body says nothing about what a GET would get (axum empties HEAD answers):
        // no length then, as hyper does.
        let length = app_length.or(body.size_hint().exact().filter(|&length| length > 0));
        return AnswerFraming::NoBody { length };
    }
    match app_length.or(body.size_hint().exact()) {
        Some(length) => AnswerFraming::Length(length),
        None if http10 => AnswerFraming::UntilClose,
        None => AnswerFraming::Chunked,
    }
}

/// The answer's head: status line, the app's headers, `Date`, framing and `Connection`. The
/// framing headers are poolgate's own, never the app's.
fn encode_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: AnswerFraming,
    keep_alive: bool,
    http10: bool,
) -> Vec<u8> {
    use std::io::Write as _;
    let mut size = 160;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if *name == header::CONNECTION
            || *name == header::TRANSFER_ENCODING
            || *name == header::CONTENT_LENGTH
        {
            continue;
        }
        put_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if !headers.contains_key(header::DATE) {
        http_date(|date| put_header(&mut head, b"date", date));
    }
    match framing {
        AnswerFraming::Length(length)
        | AnswerFraming::NoBody {
            length: Some(length),
        } => {
            let _ = write!(head, "content-length: {length}\r\n");
        }
        AnswerFraming::Chunked => put_header(&mut head, b"transfer-encoding", b"chunked"),
        AnswerFraming::NoBody { length: None } | AnswerFraming::UntilClose => {}
    }
    if !keep_alive {
        put_header(&mut head, b"connection", b"close");
    } else if http10 {
        put_header(&mut head, b"connection", b"keep-alive");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn put_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Calls `with` with the `Date` header's value for now, formatted at most once a second per
/// thread.
fn http_date(with: impl FnOnce(&[u8])) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        with(cached.1.as_bytes());
    });
}

/// What the answer's body did next.
enum Next {
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
    /// The body has nothing yet and the head is not written: write it now.
    WriteHead,
    ClientGone,
}

/// Writes the answer: its head (with the body's first data when it is ready at once), then the
/// body as it comes.
async fn write_answer<W, RB>(
    writer: &mut W,
    stream: &TcpStream,
    head: Vec<u8>,
    body: RB,
    framing: AnswerFraming,
    watching: &mut bool,
) -> Result<(), ServeError>
where
    W: AsyncWrite + Unpin,
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    let mut left = match framing {
        AnswerFraming::Length(length) => length,
        _ => u64::MAX,
    };
    if matches!(framing, AnswerFraming::NoBody { .. }) || body.is_end_stream() {
        return write_end(writer, &head, framing, left).await;
    }
    let mut body = pin!(body);
    let mut head = Some(head);
    loop {
        let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            // The error boxed at once: the app's own error type need not be `Send`.
            Poll::Ready(frame) => {
                Poll::Ready(Next::Frame(frame.map(|frame| frame.map_err(Into::into))))
            }
            Poll::Pending if head.is_some() => Poll::Ready(Next::WriteHead),
            Poll::Pending => match poll_client_gone(stream, cx, watching) {
                Poll::Ready(()) => Poll::Ready(Next::ClientGone),
                Poll::Pending => Poll::Pending,
            },
        })
        .await;
        let head_bytes = head.take().unwrap_or_default();
        match next {
            Next::WriteHead => write_all(writer, &mut [IoSlice::new(&head_bytes)]).await?,
            Next::ClientGone => return Err(ServeError::ClientGone),
            Next::Frame(Some(Err(error))) => return Err(ServeError::Body(error)),
            Next::Frame(None) => return write_end(writer, &head_bytes, framing, left).await,
            Next::Frame(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers: dropped. The head, if it was waiting, goes now.
                    write_all(writer, &mut [IoSlice::new(&head_bytes)]).await?;
                    continue;
                };
                let mut too_long = false;
                if let AnswerFraming::Length(..) = framing {
                    let len = data.len() as u64;
                    if len > left {
                        data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                        too_long = true;
                    }
                    left -= data.len() as u64;
                }
                if data.is_empty() {
                    write_all(writer, &mut [IoSlice::new(&head_bytes)]).await?;
                } else if framing == AnswerFraming::Chunked {
                    let mut size = [0u8; 18];
                    let size = chunk_size_line(&mut size, data.len());
                    write_all(
                        writer,
                        &mut [
                            IoSlice::new(&head_bytes),
                            IoSlice::new(size),
                            IoSlice::new(&data),
                            IoSlice::new(b"\r\n"),
                        ],
                    )
                    .await?;
                } else {
                    write_all(
                        writer,
                        &mut [IoSlice::new(&head_bytes), IoSlice::new(&data)],
                    )
                    .await?;
                }
                if too_long {
                    return Err(ServeError::LengthMismatch);
                }
            }
        }
    }
}

/// The body ended: the head if it is still to go, the last chunk if chunked; `left` bytes of a
/// `Content-Length` not sent make the answer short (the connection ends).
async fn write_end<W: AsyncWrite + Unpin>(
    writer: &mut W,
    head: &[u8],
    framing: AnswerFraming,
    left: u64,
) -> Result<(), ServeError> {
    let end: &[u8] = match framing {
        AnswerFraming::Chunked => b"0\r\n\r\n",
        _ => b"",
    };
    write_all(writer, &mut [IoSlice::new(head), IoSlice::new(end)]).await?;
    match framing {
        AnswerFraming::Length(_) if left > 0 => Err(ServeError::LengthMismatch),
        _ => Ok(()),
    }
}

/// `len` in hex followed by CRLF, in `out`.
fn chunk_size_line(out: &mut [u8; 18], len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut count = 0;
    let mut rest = len;
    loop {
        digits[count] = HEX[rest & 0xf];
        count += 1;
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    for (slot, digit) in out.iter_mut().zip(digits[..count].iter().rev()) {
        *slot = *digit;
    }
    out[count] = b'\r';
    out[count + 1] = b'\n';
    &out[..count + 2]
}

/// Writes every byte of `slices` (empty ones skipped).
async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    slices: &mut [IoSlice<'_>],
) -> Result<(), ServeError> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = writer
            .write_vectored(slices)
            .await
            .map_err(ServeError::Io)?;
        if written == 0 {
            return Err(ServeError::Io(io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Answers a request refused before the app saw it, with the close.
async fn refuse<W: AsyncWrite + Unpin>(
    writer: &mut W,
    stream: &TcpStream,
    status: StatusCode,
    why: &'static str,
) {
    let body = serde_json::json!({
        "error": {
            "message": format!("bad HTTP/1.1 request: {why}"),
            "type": "invalid_request_error",
            "param": null,
            "code": null,
        }
    })
    .to_string();
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Every answer names its request, this one too (the app never saw it, so no other id
    // exists: no usage record, no access line).
    if let Ok(id) = HeaderValue::from_str(RequestId::generate().as_str()) {
        headers.insert(X_REQUEST_ID.clone(), id);
    }
    let head = encode_head(
        status,
        &headers,
        AnswerFraming::Length(body.len() as u64),
        false,
        false,
    );
    let _ = write_all(
        writer,
        &mut [IoSlice::new(&head), IoSlice::new(body.as_bytes())],
    )
    .await;
    let _ = writer.shutdown().await;
    linger(stream).await;
}

/// Reads and drops what the client still sends, for a while, after the write side was shut
/// (the lingering close `accept::reject` does too): closing a socket with unread bytes resets
/// it, and the reset can reach the client before it read the answer.
async fn linger(stream: &TcpStream) {
    let _ = tokio::time::timeout(LINGER_TIME, discard_input(stream, LINGER_BYTES)).await;
}

#[cfg(test)]
mod tests;
