//! poolgate's own HTTP/1.1 client exchange: one request written and its answer read on a
//! connection that the request's own task drives. hyper's client connection runs each
//! connection in a task of its own and hands the request, the answer's head and every body
//! chunk across channels to it and back; here the handler's task writes and reads the socket
//! itself: no task, no channel, no wake-up between them. Nothing is buffered while an answer
//! waits for its next bytes (a held stream costs its socket and this state, not hyper's two
//! 8 KiB buffers and a 32-slot channel block; docs/benchmarks.md, session 20).
//!
//! What it speaks (RFC 9112, client side): the request head with `Host` and `Content-Length`
//! (poolgate's request bodies are whole, [`SplicedBody`]); the answer's head parsed by
//! `httparse`, `1xx` interim answers skipped; the body framed by the method and status (no body
//! for `HEAD`, `204`, `304`), `Transfer-Encoding: chunked` (trailers read and dropped),
//! `Content-Length`, or the connection's close. The request is written while the answer's head
//! is awaited, so an upstream that answers early (a `413` before the whole upload) is heard
//! instead of waited on; such a connection is not reused. A connection is reusable when its
//! answer was HTTP/1.1 without `Connection: close`, read to its exact end, after the whole
//! request went out.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use crate::providers::body::SplicedBody;

/// How much a read asks for (the answer's head, body chunks): 8 KiB, as hyper's reads were
/// here (`read_buf_exact_size`). The buffer is taken only when a read is made and given up
/// when a read finds nothing to read.
pub const READ_SIZE: usize = 8 * 1024;
/// The largest answer head taken (hyper's own limit is its read buffer's, ≈ 400 KiB; LLM APIs
/// send 1–2 KB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header lines an answer's head may have (hyper's default is 100).
const MAX_HEADERS: usize = 128;
/// The most bytes of chunk extensions on one chunk's size line, and of trailers in all.
const MAX_CHUNK_META: usize = 16 * 1024;
/// Interim (`1xx`) answers taken before the final one.
const MAX_INTERIM: u8 = 16;
/// IO slices handed to one vectored write.
const WRITE_SLICES: usize = 16;

/// Why an exchange failed; its text names no URL and no header.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection ended before the answer did (hyper's words for it).
    #[error("connection closed before message completed")]
    Closed,
    #[error("connection error")]
    Io(#[source] io::Error),
    #[error("the upstream's answer head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream's answer head is not valid HTTP/1: {0}")]
    InvalidHead(&'static str),
    #[error("the upstream's Content-Length is not valid")]
    InvalidContentLength,
    #[error("the upstream's chunked body is not valid: {0}")]
    InvalidChunk(&'static str),
}

/// One HTTP/1.1 connection to an upstream, idle between exchanges.
pub struct Connection<S> {
    io: S,
    /// It carried an answer before (a request it fails before writing anything may go on
    /// another connection).
    reused: bool,
}

/// An exchange that failed; `unsent` when the connection was a reused one that took not one
/// byte of the request (the upstream had closed it), so the request may go on another.
#[derive(Debug)]
pub struct Failure {
    pub error: H1Error,
    pub unsent: bool,
}

/// An answer's head and its body still to read.
pub struct Answer<S> {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Body<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(io: S) -> Self {
        Connection { io, reused: false }
    }

    /// Whether an idle connection can carry a request: the upstream has neither closed it nor
    /// sent anything since its last answer. No system call unless the socket turned readable
    /// (tokio keeps its readiness); no waker is left behind that matters.
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0_u8; 1];
        let io = &mut self.io;
        // Out of tokio's task budget, which would answer `Pending` whatever the socket holds.
        let probe = tokio::task::unconstrained(poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut byte);
            Pin::new(&mut *io).poll_read(cx, &mut buf)
        }));
        std::pin::pin!(probe).poll(&mut cx).is_pending()
    }

    /// Writes the request (`path` in origin form; `host` unless `headers` names one) and reads
    /// its answer's head; the body is read from the [`Answer`].
    pub async fn send(
        mut self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        host: Option<&HeaderValue>,
        body: &SplicedBody,
    ) -> Result<Answer<S>, Failure> {
        let mut out: VecDeque<Bytes> = VecDeque::with_capacity(body.chunk_count() + 1);
        out.push_back(encode_head(method, path, headers, host, body.len()));
        out.extend(body.chunks().cloned());
        let mut wrote_any = false;
        let mut flushed = false;
        // A write that failed after some of the request went: the answer may still come (an
        // upstream that refused the upload, answered and closed).
        let mut write_error: Option<io::Error> = None;
        let mut buf = BytesMut::new();
        let mut head: Option<Head> = None;
        let mut interim = 0;
        let reused = self.reused;
        let io = &mut self.io;
        let parsed = poll_fn(|cx| {
            // The answer's head first: it may come before the whole request went.
            if head.is_none() {
                match poll_head(Pin::new(&mut *io), cx, &mut buf, &mut interim) {
                    Poll::Ready(Ok(parsed)) => head = Some(parsed),
                    Poll::Ready(Err(error)) => {
                        return Poll::Ready(Err(write_error.take().map_or(error, H1Error::Io)))
                    }
                    Poll::Pending => {}
                }
            }
            // The request: as much as the socket takes now.
            if !flushed && write_error.is_none() {
                let mut wrote = write_some(Pin::new(&mut *io), cx, &mut out, &mut wrote_any);
                if wrote.is_ok() && out.is_empty() {
                    match Pin::new(&mut *io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => flushed = true,
                        Poll::Ready(Err(error)) => wrote = Err(H1Error::Io(error)),
                        Poll::Pending => {}
                    }
                }
                match wrote {
                    Err(H1Error::Io(error)) if wrote_any => write_error = Some(error),
                    Err(error) => return Poll::Ready(Err(error)),
                    Ok(()) => {}
                }
            }
            // An error answer that came early ends the upload; any other waits for the rest of
            // the request to go (as hyper did: the upstream reads on).
            match head
                .take_if(|parsed| flushed || write_error.is_some() || parsed.status.as_u16() >= 400)
            {
                Some(parsed) => Poll::Ready(Ok(parsed)),
                // The read, the write or the flush above registered the waker.
                None => Poll::Pending,
            }
        })
        .await
        .map_err(|error| Failure {
            unsent: reused && !wrote_any && matches!(error, H1Error::Io(_) | H1Error::Closed),
            error,
        })?;
        let fail = |error| Failure {
            error,
            unsent: false,
        };
        let framing =
            Framing::of(method, parsed.status, parsed.version, &parsed.headers).map_err(fail)?;
        // Both framings named (RFC 9112 §6.3: Transfer-Encoding wins, and the connection is
        // closed after), or the close delimits the body: not reused.
        let both = parsed.headers.contains_key(http::header::TRANSFER_ENCODING)
            && parsed.headers.contains_key(http::header::CONTENT_LENGTH);
        let reusable =
            flushed && parsed.keep_alive && !both && !matches!(framing, Framing::UntilClose);
        self.reused = true;
        let mut body = Body {
            conn: Some(self),
            buf,
            framing,
            reusable,
        };
        body.settle();
        Ok(Answer {
            status: parsed.status,
            version: parsed.version,
            headers: parsed.headers,
            body,
        })
    }
}

/// Writes from `out` until the socket takes no more or all went; `wrote_any` once a byte did.
fn write_some<S: AsyncWrite>(
    mut io: Pin<&mut S>,
    cx: &mut Context<'_>,
    out: &mut VecDeque<Bytes>,
    wrote_any: &mut bool,
) -> Result<(), H1Error> {
    while !out.is_empty() {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(out.iter()) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        let written = match io.as_mut().poll_write_vectored(cx, &slices[..count]) {
            Poll::Ready(Ok(0)) => return Err(H1Error::Io(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(written)) => written,
            Poll::Ready(Err(error)) => return Err(H1Error::Io(error)),
            Poll::Pending => return Ok(()),
        };
        *wrote_any = true;
        let mut left = written;
        while left > 0 {
            let Some(front) = out.front_mut() else { break };
            if front.len() <= left {
                left -= front.len();
                out.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

/// The request head: the request line, `host` (unless `headers` has one), `headers` but their
/// own framing, and `content-length` (none for an empty `GET`, `HEAD`, `DELETE`, `OPTIONS`).
fn encode_head(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    host: Option<&HeaderValue>,
    body_len: u64,
) -> Bytes {
    let has_host = headers.contains_key(http::header::HOST);
    let mut size = method.as_str().len() + path.len() + 64;
    if let (false, Some(host)) = (has_host, host) {
        size += host.len() + 8;
    }
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(if path.is_empty() { "/" } else { path }.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if let (false, Some(host)) = (has_host, host) {
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let bodiless = matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    if body_len > 0 || !bodiless {
        // Written into the head, not formatted into a string of its own.
        let _ = write!(head, "content-length: {body_len}\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Bytes::from(head)
}

/// An answer's head as parsed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// HTTP/1.1 without `Connection: close`.
    keep_alive: bool,
}

/// Reads until the final answer's head is in `buf`, and takes it off; the buffer is given up
/// when a read finds nothing (a non-streamed answer's head waits the whole generation).
fn poll_head<S: AsyncRead>(
    mut io: Pin<&mut S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    interim: &mut u8,
) -> Poll<Result<Head, H1Error>> {
    loop {
        if let Some(head) = parse_head(buf, interim)? {
            return Poll::Ready(Ok(head));
        }
        if buf.len() >= MAX_HEAD {
            return Poll::Ready(Err(H1Error::HeadTooLarge));
        }
        buf.reserve(READ_SIZE);
        match poll_read_buf(io.as_mut(), cx, buf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Closed)),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(error)) => return Poll::Ready(Err(H1Error::Io(error))),
            Poll::Pending => {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
                return Poll::Pending;
            }
        }
    }
}

/// The final answer's head at the front of `buf`, taken off it; `None` until all of it is
/// there. Interim `1xx` heads are taken off and skipped (at most [`MAX_INTERIM`], counted in
/// `interim`); `101` (no upgrade was asked) is not valid.
fn parse_head(buf: &mut BytesMut, interim: &mut u8) -> Result<Option<Head>, H1Error> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Not zeroed first (128 slots, 4 KB, on every answer): httparse fills them.
        let mut lines =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut lines,
        );
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => {
                return Err(H1Error::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(H1Error::InvalidHead(parse_error(error))),
        };
        let code = response.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::InvalidHead("invalid status"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::InvalidHead("101 without an upgrade asked for"));
        }
        if status.is_informational() {
            *interim += 1;
            if *interim > MAX_INTERIM {
                return Err(H1Error::InvalidHead("too many interim (1xx) answers"));
            }
            buf.advance(length);
            continue;
        }
        let version = if response.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        let mut close = version != Version::HTTP_11;
        for line in response.headers.iter() {
            let name = HeaderName::from_bytes(line.name.as_bytes())
                .map_err(|_| H1Error::InvalidHead("invalid header name"))?;
            let value = HeaderValue::from_bytes(line.value)
                .map_err(|_| H1Error::InvalidHead("invalid header value"))?;
            if name == http::header::CONNECTION && has_token(&value, "close") {
                close = true;
            }
            headers.append(name, value);
        }
        buf.advance(length);
        return Ok(Some(Head {
            status,
            version,
            headers,
            keep_alive: !close,
        }));
    }
}

pub(crate) fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::Status => "invalid status",
        httparse::Error::Version => "invalid version",
        _ => "invalid head",
    }
}

/// Whether a comma-separated header value holds `token` (any case).
pub(crate) fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// How an answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// It ends with the connection.
    UntilClose,
    /// It ended.
    Done,
}

impl Framing {
    fn of(
        method: &Method,
        status: StatusCode,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<Framing, H1Error> {
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Done);
        }
        if let Some(last) = headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            // HTTP/1.0 has no Transfer-Encoding: its framing is faulty, the close ends it.
            let chunked = version == Version::HTTP_11
                && last
                    .to_str()
                    .ok()
                    .and_then(|codings| codings.rsplit(',').next())
                    .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
            return Ok(if chunked {
                Framing::Chunked(Chunked::new())
            } else {
                Framing::UntilClose
            });
        }
        Ok(match content_length(headers)? {
            Some(0) => Framing::Done,
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        })
    }
}

/// A message's `Content-Length` (`None`: it has none). Repeated headers and comma lists must
/// all say the same number; anything but digits is refused (RFC 9110 §8.6). Both sides of
/// HTTP/1.1 frame by it: answers here, requests in `serving::h1`.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| H1Error::InvalidContentLength)?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(H1Error::InvalidContentLength);
            }
            let parsed: u64 = part.parse().map_err(|_| H1Error::InvalidContentLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(H1Error::InvalidContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Where a chunked body's decoder is (RFC 9112 §7.1); requests' bodies in `serving::h1` are
/// decoded by it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// In a chunk's size (hex digits so far).
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size.
    SizeSpace {
        value: u64,
    },
    /// A chunk extension (bytes of it so far).
    Extension {
        value: u64,
        length: usize,
    },
    /// The size line's LF.
    SizeLf {
        value: u64,
    },
    /// In a chunk's data: this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF (trailer bytes so far).
    TrailerStart {
        length: usize,
    },
    TrailerLine {
        length: usize,
    },
    TrailerLf {
        length: usize,
    },
    EndLf,
}

/// What the decoder made of the bytes it had.
pub(crate) enum Decoded {
    Data(Bytes),
    End,
    More,
}

impl Chunked {
    /// At the start of a chunked body.
    pub(crate) fn new() -> Self {
        Chunked::Size {
            value: 0,
            digits: 0,
        }
    }

    /// Decodes from the front of `buf`: the next data it holds, the body's end, or `More`
    /// when `buf` ran out first (every byte of it taken).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        use Chunked::*;
        while !buf.is_empty() {
            if let Data(left) = *self {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                *self = if left == 0 { DataCr } else { Data(left) };
                return Ok(Decoded::Data(data));
            }
            let byte = buf[0];
            buf.advance(1);
            *self = match (*self, byte) {
                (Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 16 {
                        return Err(H1Error::InvalidChunk("chunk size too large"));
                    }
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    Size {
                        value: (value << 4) | digit,
                        digits: digits + 1,
                    }
                }
                (Size { digits: 0, .. }, _) => {
                    return Err(H1Error::InvalidChunk("chunk size missing"))
                }
                (Size { value, .. } | SizeSpace { value }, b' ' | b'\t') => SizeSpace { value },
                (Size { value, .. } | SizeSpace { value }, b';') => Extension { value, length: 0 },
                (Size { value, .. } | SizeSpace { value } | Extension { value, .. }, b'\r') => {
                    SizeLf { value }
                }
                (Extension { value, length }, b) if b != b'\n' => {
                    if length >= MAX_CHUNK_META {
                        return Err(H1Error::InvalidChunk("chunk extension too long"));
                    }
                    Extension {
                        value,
                        length: length + 1,
                    }
                }
                (SizeLf { value: 0 }, b'\n') => TrailerStart { length: 0 },
                (SizeLf { value }, b'\n') => Data(value),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size {
                    value: 0,
                    digits: 0,
                },
                (TrailerStart { .. }, b'\r') => EndLf,
                (TrailerStart { length } | TrailerLine { length }, b) if b != b'\n' => {
                    if length >= MAX_CHUNK_META {
                        return Err(H1Error::InvalidChunk("trailers too long"));
                    }
                    if b == b'\r' {
                        TrailerLf { length }
                    } else {
                        TrailerLine { length: length + 1 }
                    }
                }
                (TrailerLf { length }, b'\n') => TrailerStart { length },
                (EndLf, b'\n') => return Ok(Decoded::End),
                _ => return Err(H1Error::InvalidChunk("invalid chunk framing")),
            };
        }
        Ok(Decoded::More)
    }
}

/// An answer's body, read from its connection by whoever polls it.
pub struct Body<S> {
    /// The connection, until the body ended or broke.
    conn: Option<Connection<S>>,
    /// Bytes read and not yet handed out; empty and unallocated while the body waits.
    buf: BytesMut,
    framing: Framing,
    /// The connection may carry another request once the body ended.
    reusable: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Body<S> {
    /// The declared length still to read, when the answer gave one.
    pub fn exact_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(length) => Some(length),
            Framing::Done => Some(0),
            _ => None,
        }
    }

    pub fn is_end(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The connection, once the body was read to its exact end and it may be reused; `None`
    /// otherwise (the connection is closed when the body is dropped).
    pub fn take_connection(&mut self) -> Option<Connection<S>> {
        if self.framing == Framing::Done && self.reusable && self.buf.is_empty() {
            self.conn.take()
        } else {
            None
        }
    }

    /// Marks a body with nothing left to read as ended.
    fn settle(&mut self) {
        if self.framing == Framing::Length(0) {
            self.framing = Framing::Done;
        }
        if self.framing == Framing::Done && !self.buf.is_empty() {
            // Bytes past the answer's end: the connection is not in a known state.
            self.reusable = false;
        }
        if self.framing == Framing::Done && !self.reusable {
            // Closed now, not when the answer is dropped.
            self.conn = None;
        }
    }

    /// The next chunk of data; `None` at the body's end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) if !self.buf.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    *left -= take as u64;
                    let data = self.buf.split_to(take).freeze();
                    self.settle();
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::UntilClose if !self.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                }
                Framing::Chunked(state) if !self.buf.is_empty() => {
                    let mut state = *state;
                    let decoded = state.decode(&mut self.buf);
                    self.framing = Framing::Chunked(state);
                    match decoded {
                        Ok(Decoded::Data(data)) if data.is_empty() => continue,
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                        Ok(Decoded::End) => {
                            self.framing = Framing::Done;
                            self.settle();
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::More) => {}
                        Err(error) => return Poll::Ready(Some(Err(self.broke(error)))),
                    }
                }
                _ => {}
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Some(Err(H1Error::Closed)));
            };
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                self.buf.reserve(READ_SIZE);
            }
            match poll_read_buf(Pin::new(&mut conn.io), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => {
                    if self.framing == Framing::UntilClose {
                        self.framing = Framing::Done;
                        self.reusable = false;
                        self.settle();
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(self.broke(H1Error::Closed))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Some(Err(self.broke(H1Error::Io(error)))))
                }
                Poll::Pending => {
                    if self.buf.is_empty() {
                        // Nothing held while the answer waits (the data handed out keeps
                        // what it needs of the old buffer).
                        self.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Closes the connection of a body that broke off.
    fn broke(&mut self, error: H1Error) -> H1Error {
        self.conn = None;
        self.reusable = false;
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut state: Chunked, input: &[u8]) -> Result<(Vec<u8>, bool), H1Error> {
        let mut buf = BytesMut::from(input);
        let mut data = Vec::new();
        loop {
            match state.decode(&mut buf)? {
                Decoded::Data(chunk) => data.extend_from_slice(&chunk),
                Decoded::End => return Ok((data, true)),
                Decoded::More => return Ok((data, false)),
            }
        }
    }

    fn start() -> Chunked {
        Chunked::Size {
            value: 0,
            digits: 0,
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, end) =
            decode_all(start(), b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert!(end);
        let (data, end) =
            decode_all(start(), b"A \r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n").unwrap();
        assert_eq!(data, b"0123456789");
        assert!(end);
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte() {
        let input = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        let mut state = start();
        let mut data = Vec::new();
        let mut ended = false;
        for byte in input {
            let mut buf = BytesMut::from(&[*byte][..]);
            while !buf.is_empty() {
                match state.decode(&mut buf).unwrap() {
                    Decoded::Data(chunk) => data.extend_from_slice(&chunk),
                    Decoded::End => ended = true,
                    Decoded::More => {}
                }
            }
        }
        assert_eq!(data, b"abc0123456789abcdef");
        assert!(ended);
    }

    #[test]
    fn bad_chunk_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"3\nabc\r\n",
            b"3\r\nabcX\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\r\r",
        ] {
            assert!(decode_all(start(), bad).is_err(), "{bad:?}");
        }
    }

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_framing_follows_method_status_and_headers() {
        let ok = StatusCode::OK;
        let of = |method: &Method, status, lines: &[(&'static str, &'static str)]| {
            Framing::of(method, status, Version::HTTP_11, &headers(lines))
        };
        assert_eq!(
            of(&Method::HEAD, ok, &[("content-length", "5")]).unwrap(),
            Framing::Done
        );
        assert_eq!(
            of(&Method::GET, StatusCode::NO_CONTENT, &[]).unwrap(),
            Framing::Done
        );
        assert_eq!(
            of(&Method::POST, ok, &[("content-length", "5")]).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(
            of(&Method::POST, ok, &[("content-length", "5, 5")]).unwrap(),
            Framing::Length(5)
        );
        assert!(of(&Method::POST, ok, &[("content-length", "5, 6")]).is_err());
        assert!(of(&Method::POST, ok, &[("content-length", "-1")]).is_err());
        assert!(of(
            &Method::POST,
            ok,
            &[("content-length", "5"), ("content-length", "6")]
        )
        .is_err());
        assert!(matches!(
            of(
                &Method::POST,
                ok,
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "5")
                ]
            )
            .unwrap(),
            Framing::Chunked(_)
        ));
        assert_eq!(
            of(&Method::POST, ok, &[("transfer-encoding", "gzip")]).unwrap(),
            Framing::UntilClose
        );
        assert_eq!(of(&Method::POST, ok, &[]).unwrap(), Framing::UntilClose);
        // HTTP/1.0 knows no Transfer-Encoding: the close ends the body.
        assert_eq!(
            Framing::of(
                &Method::POST,
                ok,
                Version::HTTP_10,
                &headers(&[("transfer-encoding", "chunked")])
            )
            .unwrap(),
            Framing::UntilClose
        );
    }

    #[test]
    fn interim_heads_are_skipped_and_the_close_is_read() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let head = parse_head(&mut buf, &mut 0).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert!(!head.keep_alive);
        assert_eq!(head.headers["content-length"], "2");
        assert_eq!(&buf[..], b"ok");

        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut partial, &mut 0).unwrap().is_none());
        let mut old = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        assert!(!parse_head(&mut old, &mut 0).unwrap().unwrap().keep_alive);
        let mut upgrade = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        assert!(parse_head(&mut upgrade, &mut 0).is_err());
        // A head that came whole in the read that crossed the limit is still over it.
        let mut large = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx: "[..]);
        large.extend_from_slice(&[b'a'; MAX_HEAD]);
        large.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            parse_head(&mut large, &mut 0),
            Err(H1Error::HeadTooLarge)
        ));
        let mut endless = BytesMut::from(&b"HTTP/1.1 102 Processing\r\n\r\n".repeat(17)[..]);
        assert!(
            parse_head(&mut endless, &mut 0).is_err(),
            "at most 16 interim answers"
        );
    }

    #[test]
    fn the_request_head_carries_host_and_length_but_not_the_callers_framing() {
        let lines = headers(&[
            ("authorization", "Bearer k"),
            ("content-length", "999"),
            ("transfer-encoding", "chunked"),
        ]);
        let host = HeaderValue::from_static("example.com:8080");
        let head = encode_head(&Method::POST, "/v1/x?y=1", &lines, Some(&host), 12);
        assert_eq!(
            &head[..],
            &b"POST /v1/x?y=1 HTTP/1.1\r\nhost: example.com:8080\r\nauthorization: Bearer k\r\ncontent-length: 12\r\n\r\n"[..]
        );
        let head = encode_head(&Method::GET, "", &HeaderMap::new(), None, 0);
        assert_eq!(&head[..], b"GET / HTTP/1.1\r\n\r\n");
        let head = encode_head(&Method::POST, "/", &HeaderMap::new(), None, 0);
        assert_eq!(&head[..], b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }
    /// While an answer waits for its next bytes, its body holds no read buffer: an idle
    /// stream costs its socket and a few words of state.
    #[tokio::test]
    async fn a_waiting_body_holds_no_read_buffer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut upstream) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut request = vec![0; 1024];
            let read = upstream.read(&mut request).await.unwrap();
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .unwrap();
            (
                upstream,
                String::from_utf8_lossy(&request[..read]).into_owned(),
            )
        });
        let mut answer = Connection::new(client)
            .send(
                &Method::POST,
                "/v1/chat/completions",
                &HeaderMap::new(),
                Some(&HeaderValue::from_static("upstream.test")),
                &SplicedBody::whole(Bytes::from_static(b"{}")),
            )
            .await
            .unwrap();
        let (mut upstream, request) = serve.await.unwrap();
        assert_eq!(
            request,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert_eq!(answer.status, StatusCode::OK);
        let first = poll_fn(|cx| answer.body.poll_data(cx)).await;
        assert_eq!(first.unwrap().unwrap(), "first");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(answer.body.poll_data(&mut cx).is_pending());
        assert_eq!(answer.body.buf.capacity(), 0, "no buffer while waiting");

        upstream
            .write_all(b"6\r\nsecond\r\n0\r\n\r\n")
            .await
            .unwrap();
        let second = poll_fn(|cx| answer.body.poll_data(cx)).await;
        assert_eq!(second.unwrap().unwrap(), "second");
        assert!(poll_fn(|cx| answer.body.poll_data(cx)).await.is_none());
        assert!(answer.body.is_end());
        let mut conn = answer.body.take_connection().expect("reusable");
        assert!(conn.is_usable());
        drop(upstream);
        assert!(!conn.is_usable(), "the upstream closed it");
    }
    /// A reused connection whose first write fails took nothing of the request: it may go on
    /// another connection. One that took the request and then closed did not: never resent
    /// (a POST could be billed twice).
    #[tokio::test]
    async fn only_a_request_nothing_of_which_went_out_is_unsent() {
        use tokio::io::AsyncReadExt;
        let body = SplicedBody::whole(Bytes::from_static(b"{}"));
        let send = |conn: Connection<tokio::io::DuplexStream>| async {
            conn.send(&Method::POST, "/", &HeaderMap::new(), None, &body)
                .await
        };

        let (client, upstream) = tokio::io::duplex(1024);
        drop(upstream);
        let mut conn = Connection::new(client);
        conn.reused = true;
        let failure = send(conn).await.err().expect("the write fails");
        assert!(failure.unsent, "{:?}", failure.error);

        // The same on a new connection: no other connection to try (the pool's caller says so).
        let (client, upstream) = tokio::io::duplex(1024);
        drop(upstream);
        let failure = send(Connection::new(client)).await.err().expect("fails");
        assert!(!failure.unsent);

        // The request went, then the connection closed: not unsent.
        let (client, mut upstream) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut request = vec![0; 1024];
            let read = upstream.read(&mut request).await.unwrap();
            assert!(read > 0);
        });
        let mut conn = Connection::new(client);
        conn.reused = true;
        let failure = send(conn).await.err().expect("closed before an answer");
        reader.await.unwrap();
        assert!(
            matches!(failure.error, H1Error::Closed),
            "{:?}",
            failure.error
        );
        assert!(!failure.unsent);
    }
}
