//! The HTTP/1.1 server connection against real sockets on 127.0.0.1: a raw client writes exact
//! bytes and reads the exact answer. Keep-alive and pipelining, request bodies (length, chunked,
//! `100-continue`), answer framing (length, chunked, to the close, `HEAD`, `204`), refusals, a
//! client that leaves, graceful shutdown, and answers that break. Real time, not paused (the
//! sockets are real): every read has a deadline, [`WAIT`], and the few pauses are short.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::{read_draining, serve, BoxError, RequestBody, CONTINUE};

/// The longest any read waits: a bug fails the test rather than hanging it.
const WAIT: Duration = Duration::from_secs(2);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(60);
const MAX_HEAD: usize = 16 * 1024;

type TestBody = UnsyncBoxBody<Bytes, BoxError>;
type Answer = Response<TestBody>;

// === the app's side ===

fn body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(bytes: impl Into<Bytes>) -> Answer {
    Response::new(body(bytes))
}

fn with_status(status: StatusCode, bytes: impl Into<Bytes>) -> Answer {
    let mut answer = text(bytes);
    *answer.status_mut() = status;
    answer
}

/// The whole request body, as the app reads it.
async fn read_body(request: Request<RequestBody>) -> Bytes {
    request
        .into_body()
        .collect()
        .await
        .expect("the request body failed")
        .to_bytes()
}

/// A body of unknown length fed frame by frame through `frames`; it ends when `frames` is
/// dropped, and its `dropped` receiver resolves when the body itself is dropped.
struct ChannelBody {
    frames: mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>,
    _dropped: oneshot::Sender<()>,
}

type Frames = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.frames.poll_recv(cx)
    }
}

/// A streamed body, its sender, and what resolves once the body is dropped.
fn channel_body() -> (Frames, TestBody, oneshot::Receiver<()>) {
    let (frames, receiver) = mpsc::unbounded_channel();
    let (guard, dropped) = oneshot::channel();
    let body = ChannelBody {
        frames: receiver,
        _dropped: guard,
    };
    (frames, body.boxed_unsync(), dropped)
}

fn data(bytes: &'static [u8]) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

/// An app from an async handler.
fn service<F, Fut>(
    handler: F,
) -> impl hyper::service::Service<
    Request<RequestBody>,
    Response = Answer,
    Error = Infallible,
    Future = impl Future<Output = Result<Answer, Infallible>> + Send,
> + Send
       + 'static
where
    F: Fn(Request<RequestBody>) -> Fut + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    hyper::service::service_fn(move |request| {
        let answer = handler(request);
        async move { Ok::<_, Infallible>(answer.await) }
    })
}

/// A connected pair: the raw client and the server's accepted socket.
async fn connect() -> (Client, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let client = Client {
        stream,
        buf: BytesMut::new(),
    };
    (client, server)
}

/// Serves one connection with `handler` on a task; the task's result is the connection's.
async fn start<F, Fut>(max_head: usize, handler: F) -> (Client, JoinHandle<Result<(), BoxError>>)
where
    F: Fn(Request<RequestBody>) -> Fut + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let (client, server) = connect().await;
    let conn = tokio::spawn(serve(server, service(handler), max_head, None));
    (client, conn)
}

/// The connection task's result, within [`WAIT`].
async fn ended(conn: JoinHandle<Result<(), BoxError>>) -> Result<(), BoxError> {
    timeout(WAIT, conn)
        .await
        .expect("the connection did not end")
        .expect("the connection task panicked")
}

/// The next value `receiver` gets, within [`WAIT`].
async fn next<T>(receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(WAIT, receiver.recv())
        .await
        .expect("the app was not called")
        .expect("the app is gone")
}

/// Whether the oneshot's sender was dropped (or sent) within [`WAIT`].
async fn resolves(dropped: oneshot::Receiver<()>) -> bool {
    timeout(WAIT, dropped).await.is_ok()
}

// === the client's side ===

/// A raw HTTP/1.1 client: exact bytes out, exact bytes in.
struct Client {
    stream: TcpStream,
    /// Read and not yet taken.
    buf: BytesMut,
}

/// An answer's head, parsed.
#[derive(Debug)]
struct Head {
    status_line: String,
    /// Names lowercased, in order.
    headers: Vec<(String, String)>,
}

impl Head {
    fn status(&self) -> u16 {
        self.status_line[9..12].parse().unwrap()
    }

    /// The header's only value; panics if it came more than once.
    fn get(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let value = values.next().map(|(_, value)| value.as_str());
        assert!(values.next().is_none(), "`{name}` came twice: {self:?}");
        value
    }

    /// The headers but `date`, for exact comparisons.
    fn without_date(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .filter(|(name, _)| name != "date")
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }
}

/// An answer, with its body decoded and as it came on the wire.
#[derive(Debug)]
struct Reply {
    head: Head,
    body: Vec<u8>,
    wire: Vec<u8>,
}

impl Client {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads once more; `false` at the end of the stream.
    async fn fill(&mut self) -> bool {
        self.buf.reserve(16 * 1024);
        let read = timeout(WAIT, self.stream.read_buf(&mut self.buf))
            .await
            .unwrap_or_else(|_| panic!("nothing more came; so far: {:?}", self.buf))
            .unwrap_or_else(|error| panic!("read failed ({error}); so far: {:?}", self.buf));
        read > 0
    }

    /// Exactly `n` more bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed before {n} bytes: {:?}", self.buf);
        }
        self.buf.split_to(n).to_vec()
    }

    /// The next line, with its CRLF.
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|pair| pair == b"\r\n") {
                return self.buf.split_to(at + 2).to_vec();
            }
            assert!(self.fill().await, "closed in a line: {:?}", self.buf);
        }
    }

    async fn head(&mut self) -> Head {
        loop {
            if let Some(at) = self.buf.windows(4).position(|four| four == b"\r\n\r\n") {
                let raw = self.buf.split_to(at + 4);
                let raw = std::str::from_utf8(&raw).expect("a head in UTF-8");
                let mut lines = raw.trim_end_matches("\r\n").split("\r\n");
                let status_line = lines.next().unwrap_or_default().to_owned();
                assert!(status_line.starts_with("HTTP/1.1 "), "{raw:?}");
                let headers = lines
                    .map(|line| {
                        let (name, value) = line.split_once(": ").expect("a header line");
                        (name.to_ascii_lowercase(), value.to_owned())
                    })
                    .collect();
                return Head {
                    status_line,
                    headers,
                };
            }
            assert!(self.fill().await, "closed before a head: {:?}", self.buf);
        }
    }

    /// The next answer, framed as a client would: `to_head`, the request was a `HEAD`.
    async fn reply(&mut self, to_head: bool) -> Reply {
        let head = self.head().await;
        let status = head.status();
        let (body, wire) = if to_head || status < 200 || status == 204 || status == 304 {
            (Vec::new(), Vec::new())
        } else if head.get("transfer-encoding") == Some("chunked") {
            self.chunked().await
        } else if let Some(length) = head.get("content-length") {
            let body = self.take(length.parse().unwrap()).await;
            (body.clone(), body)
        } else {
            let body = self.rest().await;
            (body.clone(), body)
        };
        Reply { head, body, wire }
    }

    /// A chunked body: decoded, and as it came.
    async fn chunked(&mut self) -> (Vec<u8>, Vec<u8>) {
        let (mut body, mut wire) = (Vec::new(), Vec::new());
        loop {
            let line = self.line().await;
            wire.extend_from_slice(&line);
            let text = std::str::from_utf8(&line).unwrap().trim_end();
            let size = text.split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if size == 0 {
                let end = self.take(2).await;
                assert_eq!(end, b"\r\n", "trailers or garbage after the last chunk");
                wire.extend_from_slice(&end);
                return (body, wire);
            }
            let chunk = self.take(size + 2).await;
            assert!(chunk.ends_with(b"\r\n"), "{chunk:?}");
            body.extend_from_slice(&chunk[..size]);
            wire.extend_from_slice(&chunk);
        }
    }

    /// Everything up to the end of the stream.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        self.buf.split().to_vec()
    }

    /// The server closed, with nothing more sent.
    async fn closed(&mut self) {
        assert_eq!(self.rest().await, b"", "bytes before the close");
    }

    /// Nothing arrives for [`QUIET`] (and nothing is waiting).
    async fn quiet(&mut self) {
        assert!(self.buf.is_empty(), "unexpected bytes: {:?}", self.buf);
        let read = timeout(QUIET, self.stream.read_buf(&mut self.buf)).await;
        assert!(read.is_err(), "unexpected: {read:?}, {:?}", self.buf);
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n")
}

/// An app that says `<method> <path>` and echoes the body after a `:`.
async fn echo(request: Request<RequestBody>) -> Answer {
    let line = format!("{} {}:", request.method(), request.uri());
    let body = read_body(request).await;
    text([line.as_bytes(), &body].concat())
}

// === keep-alive and pipelining ===

#[tokio::test]
async fn keep_alive_answers_requests_one_after_another() {
    let (mut client, _conn) = start(MAX_HEAD, echo).await;
    for path in ["/a", "/bb"] {
        client.send(get(path)).await;
        let reply = client.reply(false).await;
        assert_eq!(reply.head.status_line, "HTTP/1.1 200 OK");
        let expected = format!("GET {path}:");
        let length = expected.len().to_string();
        assert_eq!(
            reply.head.without_date(),
            [("content-length", length.as_str())]
        );
        assert_eq!(reply.body, expected.as_bytes());
        let date = reply.head.get("date").expect("a date header");
        let date = httpdate::parse_http_date(date).expect("an HTTP date");
        let skew = SystemTime::now()
            .duration_since(date)
            .unwrap_or_else(|early| early.duration());
        assert!(skew < Duration::from_secs(5), "date {date:?}");
    }
}

#[tokio::test]
async fn the_request_head_reaches_the_app() {
    let (mut client, _conn) = start(MAX_HEAD, |request: Request<RequestBody>| async move {
        let values: Vec<_> = request
            .headers()
            .get_all("x-multi")
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect();
        text(format!(
            "{} {} {:?} host={:?} {}",
            request.method(),
            request.uri(),
            request.version(),
            request.headers()["host"],
            values.join("|")
        ))
    })
    .await;
    client
        .send("DELETE /v1/x?y=1&z=%20 HTTP/1.1\r\nHost: example\r\nX-Multi: one\r\nx-multi: two, three\r\n\r\n")
        .await;
    let reply = client.reply(false).await;
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        "DELETE /v1/x?y=1&z=%20 HTTP/1.1 host=\"example\" one|two, three"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (mut client, _conn) = start(MAX_HEAD, echo).await;
    client
        .send(
            "POST /1 HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello\
             GET /2 HTTP/1.1\r\nhost: t\r\n\r\n\
             POST /3 HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             GET /4 HTTP/1.1\r\nhost: t\r\n\r\n",
        )
        .await;
    for expected in ["POST /1:hello", "GET /2:", "POST /3:abc", "GET /4:"] {
        let reply = client.reply(false).await;
        assert_eq!(reply.head.status(), 200);
        assert_eq!(String::from_utf8(reply.body).unwrap(), expected);
    }
    client.quiet().await;
}

// === request bodies ===

#[tokio::test]
async fn a_length_body_sent_in_pieces_reaches_the_app_whole() {
    let (mut client, _conn) = start(MAX_HEAD, echo).await;
    client
        .send("POST /p HTTP/1.1\r\nhost: t\r\ncontent-length: 11\r\n\r\nhel")
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.send("lo wo").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.send("rld").await;
    let reply = client.reply(false).await;
    assert_eq!(reply.body, b"POST /p:hello world");
    // The body's end was found exactly: the connection carries the next request.
    client.send(get("/next")).await;
    assert_eq!(client.reply(false).await.body, b"GET /next:");
}

#[tokio::test]
async fn a_large_length_body_reaches_the_app_whole() {
    let (mut client, _conn) = start(MAX_HEAD, |request| async move {
        let body = read_body(request).await;
        let sum: u64 = body.iter().map(|&byte| u64::from(byte)).sum();
        text(format!("{} {sum}", body.len()))
    })
    .await;
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = payload.iter().map(|&byte| u64::from(byte)).sum();
    client
        .send(format!(
            "POST / HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        ))
        .await;
    client.send(&payload).await;
    let reply = client.reply(false).await;
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        format!("300000 {sum}")
    );
}

#[tokio::test]
async fn a_chunked_body_sent_byte_by_byte_reaches_the_app_whole() {
    let (mut client, _conn) = start(MAX_HEAD, echo).await;
    client
        .send("POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    let chunks = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    for byte in chunks {
        client.send([*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reply = client.reply(false).await;
    assert_eq!(reply.body, b"POST /c:hello world");
    // The trailers were read to their end: the connection carries the next request.
    client.send(get("/next")).await;
    assert_eq!(client.reply(false).await.body, b"GET /next:");
}

#[tokio::test]
async fn expect_continue_is_sent_once_the_app_reads_the_body() {
    let gate = Arc::new(Notify::new());
    let (called, mut calls) = mpsc::unbounded_channel();
    let app_gate = Arc::clone(&gate);
    let (mut client, _conn) = start(MAX_HEAD, move |request| {
        let gate = Arc::clone(&app_gate);
        let _ = called.send(());
        async move {
            gate.notified().await;
            echo(request).await
        }
    })
    .await;
    client
        .send("POST /e HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await;
    next(&mut calls).await;
    // The app has the request but has not read its body: no `100` yet.
    client.quiet().await;
    gate.notify_one();
    assert_eq!(
        client.take(CONTINUE.len()).await,
        b"HTTP/1.1 100 Continue\r\n\r\n"
    );
    client.send("hello").await;
    let reply = client.reply(false).await;
    assert_eq!(reply.head.status(), 200);
    assert_eq!(reply.head.get("connection"), None);
    assert_eq!(reply.body, b"POST /e:hello");
    // Kept alive (the app waits for the gate on every request).
    gate.notify_one();
    client.send(get("/next")).await;
    assert_eq!(client.reply(false).await.body, b"GET /next:");
}

#[tokio::test]
async fn expect_continue_with_an_unread_body_gets_no_100_and_a_close() {
    let (mut client, conn) = start(MAX_HEAD, |_request| async {
        with_status(StatusCode::PAYLOAD_TOO_LARGE, "no")
    })
    .await;
    client
        .send("POST /e HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await;
    let reply = client.reply(false).await;
    // The first head is the final one: no `100` before it.
    assert_eq!(reply.head.status_line, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(reply.head.get("connection"), Some("close"));
    assert_eq!(reply.body, b"no");
    client.closed().await;
    drop(client);
    assert!(ended(conn).await.is_ok());
}

#[tokio::test]
async fn an_unread_body_already_read_in_keeps_the_connection() {
    // An early refusal (a 401 before the body is read) to a request whose body came with its
    // head: the body is skipped, the connection stays, and the next request is answered.
    let (mut client, _conn) = start(MAX_HEAD, |request: Request<RequestBody>| async move {
        if request.uri().path() == "/refused" {
            with_status(StatusCode::UNAUTHORIZED, "no")
        } else {
            echo(request).await
        }
    })
    .await;
    client
        .send(
            "POST /refused HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello\
             POST /refused HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             POST /next HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
    for _ in 0..2 {
        let reply = client.reply(false).await;
        assert_eq!(reply.head.status(), 401);
        assert_eq!(reply.head.get("connection"), None, "{reply:?}");
        assert_eq!(reply.body, b"no");
    }
    let reply = client.reply(false).await;
    assert_eq!(String::from_utf8(reply.body).unwrap(), "POST /next:ok");
    client.quiet().await;
}

#[tokio::test]
async fn a_half_close_after_pipelined_requests_ends_only_the_last() {
    // `printf '…' | nc -N`: two requests in one write, then the client's write side shuts.
    // While the second request's bytes wait in the buffer, the close does not count as the
    // client leaving: the first is answered. The second, like any request whose client
    // closed its side, is then taken as abandoned (hyper's rule: a FIN mid-request is a client
    // that left, so its upstream call is not made for nobody).
    let (mut client, conn) = start(MAX_HEAD, |request: Request<RequestBody>| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        echo(request).await
    })
    .await;
    client
        .send("GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /b HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    client.stream.shutdown().await.unwrap();
    let reply = client.reply(false).await;
    assert_eq!(String::from_utf8(reply.body).unwrap(), "GET /a:");
    client.closed().await;
    drop(client);
    let ended = ended(conn).await.unwrap_err();
    assert!(
        matches!(
            ended.downcast_ref::<super::ServeError>(),
            Some(super::ServeError::ClientGone)
        ),
        "{ended:?}"
    );
}

#[tokio::test]
async fn an_unread_body_does_not_reset_the_answer_away() {
    let (client, _conn) = start(MAX_HEAD, |_request| async {
        with_status(StatusCode::PAYLOAD_TOO_LARGE, "no")
    })
    .await;
    let mut stream = client.stream;
    let payload = vec![b'x'; 512 * 1024];
    let mut request = b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 524288\r\n\r\n".to_vec();
    request.extend_from_slice(&payload);
    let (mut read, mut write) = stream.split();
    let (written, answer) = tokio::join!(write.write_all(&request), async {
        let mut answer = Vec::new();
        let read = timeout(WAIT, read.read_to_end(&mut answer)).await;
        (read, answer)
    });
    let (read, answer) = answer;
    let read = read.expect("no end of the answer");
    assert!(read.is_ok(), "{read:?}, after {answer:?}");
    assert!(written.is_ok(), "{written:?}");
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nno"), "{answer}");
}

// === answers ===

#[tokio::test]
async fn a_streamed_answer_goes_out_chunked_frame_by_frame() {
    let (streams, mut streamed) = mpsc::unbounded_channel();
    let (mut client, _conn) = start(MAX_HEAD, move |_request| {
        let (frames, body, _dropped) = channel_body();
        let _ = streams.send(frames);
        async move { Response::new(body) }
    })
    .await;
    client.send(get("/s")).await;
    let frames = next(&mut streamed).await;
    // The head goes out before the body has anything.
    let head = client.head().await;
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(head.without_date(), [("transfer-encoding", "chunked")]);
    frames.send(data(b"hello")).unwrap();
    assert_eq!(client.take(10).await, b"5\r\nhello\r\n");
    // An empty frame puts nothing on the wire, and does not end the body.
    frames.send(data(b"")).unwrap();
    client.quiet().await;
    frames.send(data(b"abcdefghijklmnopqrstuvwxyz")).unwrap();
    assert_eq!(
        client.take(32).await,
        b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    );
    drop(frames);
    assert_eq!(client.take(5).await, b"0\r\n\r\n");
    client.quiet().await;
    // Kept alive: an empty stream is one last chunk.
    client.send(get("/s")).await;
    drop(next(&mut streamed).await);
    let reply = client.reply(false).await;
    assert_eq!(reply.head.get("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.wire, b"0\r\n\r\n");
}

#[tokio::test]
async fn a_streamed_answer_to_http10_ends_with_the_close() {
    let (mut client, conn) = start(MAX_HEAD, |_request| async {
        let (frames, body, _dropped) = channel_body();
        for frame in [&b"hello"[..], b"", b" world"] {
            frames.send(data(frame)).unwrap();
        }
        Response::new(body)
    })
    .await;
    client.send("GET /s HTTP/1.0\r\n\r\n").await;
    let head = client.head().await;
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(head.without_date(), [("connection", "close")]);
    assert_eq!(client.rest().await, b"hello world");
    drop(client);
    assert!(ended(conn).await.is_ok());
}

#[tokio::test]
async fn a_head_answer_has_a_length_and_no_body() {
    let (mut client, _conn) = start(MAX_HEAD, |_request| async { text("hello world") }).await;
    client.send("HEAD / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let reply = client.reply(true).await;
    assert_eq!(reply.head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.head.without_date(), [("content-length", "11")]);
    client.quiet().await;
    client.send(get("/")).await;
    let reply = client.reply(false).await;
    assert_eq!(reply.body, b"hello world");
}

/// RFC 9110 §8.6: a `HEAD` answer must not say a length other than the `GET`'s; hyper writes
/// no `content-length: 0` for an empty `HEAD` body (axum's `HEAD` of a streamed route).
#[tokio::test]

async fn a_head_answer_with_an_empty_body_says_no_length() {
    let (mut client, _conn) = start(MAX_HEAD, |_request| async {
        Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync())
    })
    .await;
    client.send("HEAD / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let reply = client.reply(true).await;
    assert_eq!(reply.head.get("content-length"), None);
}

#[tokio::test]
async fn a_no_content_answer_has_no_length_and_no_body() {
    let (mut client, _conn) = start(MAX_HEAD, |request: Request<RequestBody>| async move {
        if request.uri() == "/next" {
            return text("next");
        }
        // Even what the app sets wrongly: no length, no body.
        let mut answer = with_status(StatusCode::NO_CONTENT, "oops");
        answer
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, 4.into());
        answer
    })
    .await;
    client.send(get("/")).await;
    let reply = client.reply(false).await;
    assert_eq!(reply.head.status_line, "HTTP/1.1 204 No Content");
    assert_eq!(reply.head.without_date(), []);
    client.quiet().await;
    client.send(get("/next")).await;
    assert_eq!(client.reply(false).await.body, b"next");
}

// === refusals ===

#[tokio::test]
async fn bad_requests_are_refused_with_json_a_request_id_and_a_close() {
    let big = format!(
        "GET / HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let endless = format!("GET / HTTP/1.1\r\nhost: t\r\nx-big: {}", "a".repeat(2000));
    let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    let cases: [(&str, String, usize, u16); 10] = [
        (
            "both framings",
            "POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
                .into(),
            MAX_HEAD,
            400,
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            MAX_HEAD,
            400,
        ),
        (
            "Transfer-Encoding not ending in chunked",
            "POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, gzip\r\n\r\n".into(),
            MAX_HEAD,
            400,
        ),
        (
            "Content-Length not a number",
            "POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 12abc\r\n\r\n".into(),
            MAX_HEAD,
            400,
        ),
        (
            "two Content-Lengths",
            "POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"
                .into(),
            MAX_HEAD,
            400,
        ),
        (
            "two values in one Content-Length",
            "POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5, 6\r\n\r\nhello!".into(),
            MAX_HEAD,
            400,
        ),
        (
            "malformed request line",
            "NOT A REQUEST\r\n\r\n".into(),
            MAX_HEAD,
            400,
        ),
        ("a head over max_head", big, 1024, 431),
        ("an unfinished head over max_head", endless, 1024, 431),
        ("more than 100 header lines", many, MAX_HEAD, 431),
    ];
    for (case, request, max_head, status) in cases {
        let calls = Arc::new(AtomicUsize::new(0));
        let app_calls = Arc::clone(&calls);
        let (mut client, conn) = start(max_head, move |_request| {
            app_calls.fetch_add(1, Ordering::SeqCst);
            async { text("called") }
        })
        .await;
        client.send(&request).await;
        let reply = client.reply(false).await;
        assert_eq!(reply.head.status(), status, "{case}: {reply:?}");
        assert_eq!(
            reply.head.get("content-type"),
            Some("application/json"),
            "{case}"
        );
        assert_eq!(reply.head.get("connection"), Some("close"), "{case}");
        let request_id = reply.head.get("x-request-id").unwrap_or_default();
        assert!(
            request_id.starts_with("req_") && request_id.len() == 36,
            "{case}: x-request-id {request_id:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(
            json["error"]["message"].as_str().is_some(),
            "{case}: {json}"
        );
        assert_eq!(json["error"]["type"], "invalid_request_error", "{case}");
        client.closed().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "{case}: the app was called"
        );
        drop(client);
        assert!(ended(conn).await.is_err(), "{case}");
    }
}

// === the close ===

#[tokio::test]
async fn connection_close_from_the_client_is_answered_then_closed() {
    let (mut client, conn) = start(MAX_HEAD, echo).await;
    client
        .send("GET /c HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await;
    let reply = client.reply(false).await;
    assert_eq!(reply.head.get("connection"), Some("close"));
    assert_eq!(reply.body, b"GET /c:");
    client.closed().await;
    drop(client);
    assert!(ended(conn).await.is_ok());
}

#[tokio::test]
async fn http10_is_closed_unless_it_asks_for_keep_alive() {
    let (mut client, _conn) = start(MAX_HEAD, echo).await;
    for _ in 0..2 {
        client
            .send("GET /k HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await;
        let reply = client.reply(false).await;
        assert_eq!(
            reply.head.without_date(),
            [("content-length", "7"), ("connection", "keep-alive")]
        );
        assert_eq!(reply.body, b"GET /k:");
    }
    client.send("GET /c HTTP/1.0\r\n\r\n").await;
    let reply = client.reply(false).await;
    assert_eq!(
        reply.head.without_date(),
        [("content-length", "7"), ("connection", "close")]
    );
    client.closed().await;
}

/// hyper ends the connection after an answer whose app set `connection: close`.
#[tokio::test]

async fn connection_close_from_the_app_closes() {
    let (mut client, _conn) = start(MAX_HEAD, |_request| async {
        let mut answer = text("bye");
        answer.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        answer
    })
    .await;
    client.send(get("/")).await;
    let reply = client.reply(false).await;
    assert_eq!(reply.head.get("connection"), Some("close"));
    client.closed().await;
}

// === a client that leaves ===

/// `read_draining`: a read that leaves room in the buffer drained the kernel's queue, so the
/// socket is marked not readable — `try_io` no longer even tries (the client-gone peek then
/// costs no syscall) — and the client's next bytes still wake it. A read that fills the room
/// may have left bytes queued, so the socket stays readable.
#[tokio::test]
async fn a_short_read_marks_the_socket_drained_and_the_next_bytes_still_wake_it() {
    let (mut client, server) = connect().await;
    let asks_the_kernel = |server: &TcpStream| {
        let mut asked = false;
        let _ = server.try_io(Interest::READABLE, || {
            asked = true;
            Ok(())
        });
        asked
    };

    client.stream.write_all(b"hello").await.unwrap();
    let mut buf = BytesMut::with_capacity(64);
    // An accepted socket starts out marked ready: its first read may come before the bytes do.
    let first = loop {
        timeout(WAIT, server.readable()).await.unwrap().unwrap();
        match read_draining(&server, &mut buf) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => break other.unwrap(),
        }
    };
    assert_eq!(first, 5);
    assert_eq!(&buf[..], b"hello");
    assert!(
        !asks_the_kernel(&server),
        "a short read must mark the socket drained"
    );

    client.stream.write_all(b"world, and more").await.unwrap();
    timeout(WAIT, server.readable()).await.unwrap().unwrap();
    let mut small = BytesMut::with_capacity(4);
    let room = small.capacity();
    assert!(room < 15, "the room must be smaller than what was sent");
    assert_eq!(read_draining(&server, &mut small).unwrap(), room);
    assert!(
        asks_the_kernel(&server),
        "a read that filled the room must leave the socket readable"
    );
    timeout(WAIT, server.readable()).await.unwrap().unwrap();
    buf.reserve(64);
    let rest = read_draining(&server, &mut buf).unwrap();
    assert_eq!(rest, 15 - room);

    // The close is seen as well, after the marks above.
    drop(client);
    timeout(WAIT, server.readable()).await.unwrap().unwrap();
    assert_eq!(read_draining(&server, &mut buf).unwrap(), 0);
}

#[tokio::test]
async fn a_client_that_leaves_drops_the_pending_answer() {
    for shut_only in [false, true] {
        let (calls, mut called) = mpsc::unbounded_channel();
        let (mut client, conn) = start(MAX_HEAD, move |_request| {
            let (guard, dropped) = oneshot::channel::<()>();
            let _ = calls.send(dropped);
            async move {
                let _guard = guard;
                std::future::pending::<Answer>().await
            }
        })
        .await;
        client.send(get("/wait")).await;
        let dropped = next(&mut called).await;
        if shut_only {
            client.stream.shutdown().await.unwrap();
        } else {
            drop(client);
        }
        assert!(resolves(dropped).await, "shut only: {shut_only}");
        let error = ended(conn).await.unwrap_err();
        assert!(error.to_string().contains("left"), "{error}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_after_its_body_drops_the_pending_answer() {
    let (calls, mut called) = mpsc::unbounded_channel();
    let (mut client, conn) = start(MAX_HEAD, move |request| {
        let (guard, dropped) = oneshot::channel::<()>();
        let _ = calls.send(dropped);
        async move {
            let _guard = guard;
            let _ = read_body(request).await;
            std::future::pending::<Answer>().await
        }
    })
    .await;
    client
        .send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    let dropped = next(&mut called).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(client);
    assert!(resolves(dropped).await);
    assert!(ended(conn).await.is_err());
}

/// The app took the body's bytes (all `Content-Length` of them) but did not poll for the
/// end it already reached: the body was read, and a client that leaves should still be seen.
#[tokio::test]

async fn a_client_that_leaves_after_its_body_bytes_drops_the_pending_answer() {
    let (calls, mut called) = mpsc::unbounded_channel();
    let (mut client, _conn) = start(MAX_HEAD, move |request: Request<RequestBody>| {
        let (guard, dropped) = oneshot::channel::<()>();
        let (read, was_read) = oneshot::channel::<Bytes>();
        let _ = calls.send((dropped, was_read));
        async move {
            let _guard = guard;
            let mut body = request.into_body();
            let frame = body.frame().await;
            let bytes = frame.and_then(|frame| frame.ok()?.into_data().ok());
            let _ = read.send(bytes.unwrap_or_default());
            std::future::pending::<Answer>().await
        }
    })
    .await;
    client
        .send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    let (dropped, was_read) = next(&mut called).await;
    assert_eq!(
        timeout(WAIT, was_read).await.unwrap().unwrap(),
        &b"hello"[..]
    );
    drop(client);
    assert!(resolves(dropped).await);
}

#[tokio::test]
async fn a_client_that_leaves_drops_the_waiting_stream() {
    let (streams, mut streamed) = mpsc::unbounded_channel();
    let (mut client, conn) = start(MAX_HEAD, move |_request| {
        let (frames, body, dropped) = channel_body();
        let _ = streams.send((frames, dropped));
        async move { Response::new(body) }
    })
    .await;
    client.send(get("/s")).await;
    let (frames, dropped) = next(&mut streamed).await;
    frames.send(data(b"hello")).unwrap();
    let _head = client.head().await;
    assert_eq!(client.take(10).await, b"5\r\nhello\r\n");
    drop(client);
    // The sender is still here: the body waits for its next frame, and is dropped.
    assert!(resolves(dropped).await);
    assert!(ended(conn).await.is_err());
    drop(frames);
}

// === graceful shutdown ===

#[tokio::test]
async fn graceful_shutdown_closes_an_idle_keep_alive_connection() {
    let (mut client, server) = connect().await;
    let conn = serve(
        server,
        service(|_request| async { text("ok") }),
        MAX_HEAD,
        None,
    );
    let mut conn = pin!(conn);
    client.send(get("/")).await;
    let reply = tokio::select! {
        result = conn.as_mut() => panic!("the connection ended: {result:?}"),
        reply = client.reply(false) => reply,
    };
    assert_eq!(reply.head.get("connection"), None);
    assert_eq!(reply.body, b"ok");
    conn.as_mut().graceful_shutdown();
    let result = timeout(WAIT, conn.as_mut())
        .await
        .expect("the connection did not end");
    assert!(result.is_ok(), "{result:?}");
    client.closed().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_answer_in_flight_then_closes() {
    let gate = Arc::new(Notify::new());
    let app_gate = Arc::clone(&gate);
    let (calls, mut called) = mpsc::unbounded_channel();
    let (mut client, server) = connect().await;
    let conn = serve(
        server,
        service(move |_request| {
            let gate = Arc::clone(&app_gate);
            let _ = calls.send(());
            async move {
                gate.notified().await;
                text("done")
            }
        }),
        MAX_HEAD,
        None,
    );
    let mut conn = pin!(conn);
    client.send(get("/")).await;
    tokio::select! {
        result = conn.as_mut() => panic!("the connection ended: {result:?}"),
        () = next(&mut called) => {}
    }
    conn.as_mut().graceful_shutdown();
    gate.notify_one();
    let (result, (reply, rest)) = tokio::join!(timeout(WAIT, conn.as_mut()), async {
        let reply = client.reply(false).await;
        (reply, client.rest().await)
    });
    let result = result.expect("the connection did not end");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(reply.head.get("connection"), Some("close"));
    assert_eq!(reply.body, b"done");
    assert_eq!(rest, b"");
}

#[tokio::test]
async fn graceful_shutdown_during_a_stream_closes_after_it() {
    let (streams, mut streamed) = mpsc::unbounded_channel();
    let (mut client, server) = connect().await;
    let conn = serve(
        server,
        service(move |_request| {
            let (frames, body, _dropped) = channel_body();
            let _ = streams.send(frames);
            async move { Response::new(body) }
        }),
        MAX_HEAD,
        None,
    );
    let mut conn = pin!(conn);
    client.send(get("/")).await;
    let frames = tokio::select! {
        result = conn.as_mut() => panic!("the connection ended: {result:?}"),
        frames = next(&mut streamed) => frames,
    };
    frames.send(data(b"hello")).unwrap();
    let head = tokio::select! {
        result = conn.as_mut() => panic!("the connection ended: {result:?}"),
        head = client.head() => head,
    };
    assert_eq!(head.get("transfer-encoding"), Some("chunked"));
    conn.as_mut().graceful_shutdown();
    frames.send(data(b" world")).unwrap();
    drop(frames);
    let (result, rest) = tokio::join!(timeout(WAIT, conn.as_mut()), client.rest());
    let result = result.expect("the connection did not end");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(rest, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
}

// === answers that break ===

#[tokio::test]
async fn a_failing_answer_body_closes_without_its_end() {
    for length in [None, Some(11)] {
        let (mut client, conn) = start(MAX_HEAD, move |_request| async move {
            let (frames, body, _dropped) = channel_body();
            frames.send(data(b"hello")).unwrap();
            frames.send(Err("the upstream broke".into())).unwrap();
            let mut answer = Response::new(body);
            if let Some(length) = length {
                answer
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, length.into());
            }
            answer
        })
        .await;
        client.send(get("/")).await;
        let head = client.head().await;
        let rest = client.rest().await;
        if length.is_some() {
            assert_eq!(head.get("content-length"), Some("11"));
            assert_eq!(rest, b"hello");
        } else {
            assert_eq!(head.get("transfer-encoding"), Some("chunked"));
            assert_eq!(rest, b"5\r\nhello\r\n");
        }
        let error = ended(conn).await.unwrap_err();
        assert!(error.to_string().contains("body failed"), "{error}");
    }
}

#[tokio::test]
async fn an_app_length_that_disagrees_with_the_body_ends_the_connection() {
    /// The declared length, the body's frames, what the client gets after the head.
    type Case = (u64, &'static [&'static [u8]], &'static [u8]);
    let cases: [Case; 3] = [
        (5, &[b"hello world"], b"hello"),
        (5, &[b"hel", b"lo world", b"!"], b"hello"),
        (20, &[b"hello", b" world"], b"hello world"),
    ];
    for (declared, frames, expected) in cases {
        let (mut client, conn) = start(MAX_HEAD, move |_request| async move {
            let (sender, body, _dropped) = channel_body();
            for frame in frames {
                sender.send(data(frame)).unwrap();
            }
            let mut answer = Response::new(body);
            answer
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, declared.into());
            answer
        })
        .await;
        client.send(get("/")).await;
        let head = client.head().await;
        assert_eq!(
            head.get("content-length"),
            Some(declared.to_string().as_str())
        );
        assert_eq!(client.rest().await, expected, "declared {declared}");
        let error = ended(conn).await.unwrap_err();
        assert!(
            error.to_string().contains("Content-Length"),
            "declared {declared}: {error}"
        );
    }
}
