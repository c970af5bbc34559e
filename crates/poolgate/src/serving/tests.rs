//! The server against real sockets on 127.0.0.1: slow and silent clients, a client that stops
//! reading, the connection cap, HTTP/2, drain and cut. Timeouts are short (about a second) and
//! the upper bounds generous: these check that a limit applies, not how fast anything is.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use super::*;

/// Set when the streaming answer's body is dropped; counts what it produced.
#[derive(Clone, Default)]
struct StreamProbe {
    dropped: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
}

struct EndlessBody {
    probe: StreamProbe,
}

impl Drop for EndlessBody {
    fn drop(&mut self) {
        self.probe.dropped.store(true, Ordering::SeqCst);
    }
}

impl futures_util::Stream for EndlessBody {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.probe.produced.fetch_add(65_536, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(Bytes::from(vec![b'x'; 65_536]))))
    }
}

fn app(probe: StreamProbe) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|request: Request| async move {
                match axum::body::to_bytes(request.into_body(), 1 << 20).await {
                    Ok(body) => (StatusCode::OK, body.len().to_string()).into_response(),
                    Err(error) if is_body_timeout(&error) => {
                        (StatusCode::REQUEST_TIMEOUT, "slow body").into_response()
                    }
                    Err(_) => StatusCode::BAD_REQUEST.into_response(),
                }
            }),
        )
        .route(
            "/stream",
            get(move || {
                let probe = probe.clone();
                async move { Response::new(Body::from_stream(EndlessBody { probe })) }
            }),
        )
        .route(
            "/thread",
            get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "done"
            }),
        )
}

fn quick_settings() -> ServerSettings {
    ServerSettings {
        header_read_timeout: Duration::from_secs(1),
        keep_alive_timeout: Duration::from_secs(2),
        body_pace: Some(BodyPace {
            timeout: Duration::from_secs(1),
            min_rate: 100,
        }),
        write_timeout: Some(Duration::from_secs(1)),
        max_connections: 64,
        ..ServerSettings::default()
    }
}

struct Running {
    addr: std::net::SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<()>,
    probe: StreamProbe,
}

async fn start(settings: ServerSettings) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probe = StreamProbe::default();
    let server = Server::new(settings).unwrap();
    let handle = server.handle();
    let task = tokio::spawn(server.serve(listener, app(probe.clone())));
    Running {
        addr,
        handle,
        task,
        probe,
    }
}

/// Reads until the peer closes (or resets); returns what arrived and when the end came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut buf = [0_u8; 4096];
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => received.extend_from_slice(&buf[..read]),
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "the server did not close the connection within {limit:?}"
    );
    (received, Instant::now())
}

async fn get_status(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Reads `/echo`'s answer to a 5-byte body, up to the server's close: 200, the body `5`.
async fn assert_echoed_five_bytes(stream: &mut TcpStream) {
    let (answer, _) = read_until_closed(stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n5"),
        "{text}"
    );
}

/// Polls `condition` every 20 ms; fails the test when it is still false after `limit`.
async fn wait_until(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    let polled = tokio::time::timeout(limit, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "not within {limit:?}: {what}");
}

/// Sends one byte every `every` (at most 100) until the server closes.
fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(every).await;
            if writer.write_all(b"t").await.is_err() {
                break;
            }
        }
    })
}

/// Sends `first`, then one more byte every 200 ms, never finishing the head, until the server
/// closes (asserted, within 10 s); returns when the close came.
async fn trickle_until_closed(mut stream: TcpStream, first: &[u8]) -> Instant {
    stream.write_all(first).await.unwrap();
    let (mut reader, writer) = stream.into_split();
    let trickle = trickle(writer, Duration::from_millis(200));
    let mut buf = [0_u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await;
    let closed = Instant::now();
    trickle.abort();
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "expected the server to close"
    );
    closed
}

#[tokio::test]
async fn trickled_headers_are_cut_at_the_header_timeout() {
    let server = start(quick_settings()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let elapsed = trickle_until_closed(stream, b"GET /heal").await - started;
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    assert_eq!(get_status(server.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_timeout() {
    let server = start(quick_settings()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(received.is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    assert_eq!(server.handle.open_connections(), 0);
}

#[tokio::test]
async fn a_trickled_body_is_answered_408() {
    let server = start(quick_settings()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\nab")
        .await
        .unwrap();
    let (mut reader, writer) = stream.into_split();
    let trickle = trickle(writer, Duration::from_millis(300));
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0_u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !answer.windows(9).any(|w| w == b"slow body") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => answer.extend_from_slice(&buf[..read]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to the trickled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    trickle.abort();
    // A body sent at once is not affected.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert_echoed_five_bytes(&mut stream).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let server = start(quick_settings()).await;
    // A small receive buffer so the stall is reached after little data.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0_u8; 512];
    let read = stream.read(&mut head).await.unwrap();
    assert!(head[..read].starts_with(b"HTTP/1.1 200"));
    // Stop reading. The server fills the socket buffers, waits `write_timeout`, and drops the
    // answer (for a proxied stream: the relay, which aborts the upstream and records
    // `cancelled`).
    let stalled = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the stalled answer is dropped",
        || server.probe.dropped.load(Ordering::SeqCst),
    )
    .await;
    let waited = stalled.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "dropped after {waited:?}"
    );
    // It produced only what fits in the socket buffers and hyper's write buffer, not an
    // unbounded amount.
    let produced = server.probe.produced.load(Ordering::SeqCst);
    assert!(produced < 64 << 20, "produced {produced} bytes");
    drop(stream);
    wait_until(Duration::from_secs(5), "every connection closed", || {
        server.handle.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn over_the_cap_connections_get_a_quick_503_until_idle_ones_time_out() {
    // A header timeout long enough that the held connections are still held when the fresh
    // request comes, even on a slow machine.
    let server = start(ServerSettings {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(3),
        ..quick_settings()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /heal").await.unwrap();
        held.push(stream);
    }
    wait_until(Duration::from_secs(5), "8 connections open", || {
        server.handle.open_connections() == 8
    })
    .await;
    let (status, text) = get_status(server.addr, "/healthz").await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("connection_limit"));
    assert!(server.handle.stats().rejected.load(Ordering::Relaxed) >= 1);
    // The half-sent ones are cut at the header timeout; then the health check answers.
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if get_status(server.addr, "/healthz").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(answered.is_ok(), "the health check never got through");
    for mut stream in held {
        let (received, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(received.is_empty());
    }
}

/// Three requests on one HTTP/1.1 connection, answered, then the idle close: HTTP/1 takes the
/// shorter of the header timeout (1 s) and keep-alive (2 s).
async fn assert_kept_alive_then_closed_when_idle(settings: ServerSettings) {
    let server = start(settings).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0_u8; 1024];
        let read = stream.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..read]);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );
    }
    let idle = Instant::now();
    read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(idle.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn keep_alive_connections_are_reused_then_closed_when_idle() {
    assert_kept_alive_then_closed_when_idle(quick_settings()).await;
}

#[tokio::test]
async fn http1_server_hyper_still_serves_http1() {
    // The way back to hyper's HTTP/1 connection.
    assert_kept_alive_then_closed_when_idle(ServerSettings {
        http1_server: super::Http1Server::Hyper,
        ..quick_settings()
    })
    .await;
}

#[tokio::test]
async fn a_trickled_head_on_a_reused_connection_is_cut_at_the_idle_limit() {
    // After one answer, the next head comes a byte every 200 ms and never ends: the
    // connection ends at the header timeout (1 s) after the answer, as hyper's header clock
    // did, not a second period later.
    let server = start(quick_settings()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0_u8; 1024];
    let read = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..read]).ends_with("ok"));
    let answered = Instant::now();
    let elapsed = trickle_until_closed(stream, b"G").await - answered;
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1800),
        "closed after {elapsed:?}"
    );
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_and_idles_out() {
    let server = start(quick_settings()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    // The sender kept: dropping it would close the connection from this side.
    let (_sender, connection) = healthz_over_http2(stream, server.addr).await;
    // Idle past keep_alive_timeout (2 s): the server says GOAWAY and the connection ends.
    let idle = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(idle.elapsed() >= Duration::from_millis(1900));
}

#[test]
fn the_first_bytes_tell_http1_from_http2_only_when_they_can() {
    use conn::{sniffed, Sniffed, H2_PREFACE};
    assert_eq!(
        sniffed(b"POST /v1/chat/completions HTTP/1.1\r\n"),
        Sniffed::Http1
    );
    assert_eq!(sniffed(b"GET / HTTP/1.1\r\n\r\n"), Sniffed::Http1);
    assert_eq!(sniffed(b"PRX"), Sniffed::Http1);
    assert_eq!(sniffed(H2_PREFACE), Sniffed::Http2);
    // A strict prefix of the preface ("P" could still be "POST"), or nothing: undecided.
    assert_eq!(sniffed(b"P"), Sniffed::Undecided);
    assert_eq!(sniffed(&H2_PREFACE[..23]), Sniffed::Undecided);
    assert_eq!(sniffed(b""), Sniffed::Undecided);
}

#[tokio::test]
async fn a_request_whose_first_bytes_do_not_tell_its_protocol_is_still_served() {
    let server = start(quick_settings()).await;
    // HTTP/1: "P" could begin HTTP/2's preface; the rest comes later.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(
            b"OST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        )
        .await
        .unwrap();
    assert_echoed_five_bytes(&mut stream).await;

    // HTTP/2: the preface in two writes, 100 ms apart.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&conn::H2_PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let io = SkipFirstBytes {
        inner: stream,
        skip: 10,
    };
    healthz_over_http2(io, server.addr).await;
}

/// Opens an HTTP/2 connection (prior knowledge) on `io`, checks that `GET /healthz` is answered
/// `ok` over HTTP/2, and returns the connection's sender and task.
async fn healthz_over_http2<I>(
    io: I,
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.as_ref(), b"ok");
    (sender, connection)
}

#[tokio::test]
async fn the_first_request_deadline_counts_from_the_accept_when_the_first_bytes_come_late() {
    // Connections on this test's runtime, so that the timings are this runtime's.
    let server = start(ServerSettings {
        runtime: ServerRuntime::WorkStealing,
        ..quick_settings()
    })
    .await;
    let late_first_bytes = |first: &'static [u8]| async move {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let connected = Instant::now();
        tokio::time::sleep(Duration::from_millis(900)).await;
        stream.write_all(first).await.unwrap();
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        closed - connected
    };
    let (http1, http2) = tokio::join!(late_first_bytes(b"G"), late_first_bytes(conn::H2_PREFACE));
    // The deadline is 1 s after the accept; from the first bytes it would be 1.9 s.
    for (first, open_for) in [("G", http1), ("the HTTP/2 preface", http2)] {
        assert!(
            open_for >= Duration::from_millis(900) && open_for < Duration::from_millis(1800),
            "{first} at 0.9 s, then silence: closed after {open_for:?}"
        );
    }
}

#[tokio::test]
async fn a_request_waiting_in_the_socket_when_the_drain_comes_is_answered() {
    for _ in 0..5 {
        let server = start(ServerSettings {
            runtime: ServerRuntime::WorkStealing,
            ..quick_settings()
        })
        .await;
        // A socket pair the reactor reports ready just before the request's socket: the task
        // that drains runs after the request arrived and before the connection's task does.
        let side = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let side_writer = TcpStream::connect(side.local_addr().unwrap())
            .await
            .unwrap();
        let (mut side_reader, _) = side.accept().await.unwrap();
        let handle = server.handle.clone();
        let drainer = tokio::spawn(async move {
            let mut one = [0_u8; 1];
            side_reader.read_exact(&mut one).await.unwrap();
            handle.drain();
        });
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // The server accepts and its connection task waits for the first bytes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        side_writer.try_write(b"x").unwrap();
        stream
            .try_write(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        drainer.await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    }
}

/// A socket whose first `skip` written bytes are taken as written without being sent (they were
/// sent by hand before).
struct SkipFirstBytes {
    inner: TcpStream,
    skip: usize,
}

impl tokio::io::AsyncRead for SkipFirstBytes {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SkipFirstBytes {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let skipped = self.skip.min(buf.len());
            self.skip -= skipped;
            return std::task::Poll::Ready(Ok(skipped));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn drain_lets_requests_finish_and_cut_ends_the_rest() {
    let server = start(quick_settings()).await;
    let slow = tokio::spawn(get_status(server.addr, "/slow"));
    wait_until(Duration::from_secs(5), "a connection open", || {
        server.handle.open_connections() > 0
    })
    .await;
    // Give hyper the request head before draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.handle.drain();
    let (status, text) = slow.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("done"));
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returns once every connection closed")
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting"
    );

    // A stream that never ends holds the drain until it is cut.
    let server = start(ServerSettings {
        write_timeout: None,
        ..quick_settings()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0_u8; 64];
    let _ = stream.read(&mut head).await.unwrap();
    server.handle.drain();
    let mut task = server.task;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut task)
            .await
            .is_err(),
        "drain must wait for the open stream"
    );
    server.handle.cut();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("cut ends the server")
        .unwrap();
    assert!(server.probe.dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn thread_per_core_spreads_connections_over_its_threads_and_drains_them() {
    let server = Server::new(ServerSettings {
        runtime: ServerRuntime::ThreadPerCore { threads: 2 },
        ..quick_settings()
    })
    .unwrap();
    let listener = server.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = server.handle();
    let task = tokio::spawn(server.serve(listener, app(StreamProbe::default())));
    // Each connection is answered on the per-core thread whose listener the kernel gave it to.
    let mut threads = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (status, text) = get_status(addr, "/thread").await;
        assert_eq!(status, 200, "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        threads.insert(body.to_owned());
    }
    assert_eq!(
        threads.into_iter().collect::<Vec<_>>(),
        ["poolgate-core-0", "poolgate-core-1"],
        "40 connections reach both listeners of the shared port"
    );
    // A request under way when the drain begins still gets its answer; then serve returns.
    let slow = tokio::spawn(get_status(addr, "/slow"));
    wait_until(Duration::from_secs(5), "a connection open", || {
        handle.open_connections() > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.drain();
    let (status, text) = slow.await.unwrap();
    assert_eq!(status, 200, "{text}");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns once every connection closed")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    handle.finish();
}

#[test]
fn settings_are_checked() {
    assert!(ServerSettings::default().validate().is_ok());
    let small = ServerSettings {
        max_buf_size: 4096,
        ..ServerSettings::default()
    };
    assert_eq!(
        small.validate().unwrap_err().field,
        "server.max_buf_size_bytes"
    );
    assert!(Server::new(ServerSettings {
        max_connections: 0,
        ..ServerSettings::default()
    })
    .is_err());
}

#[tokio::test]
async fn thread_per_core_refuses_a_port_another_server_listens_on() {
    let per_core_server = || {
        Server::new(ServerSettings {
            runtime: ServerRuntime::ThreadPerCore { threads: 2 },
            ..quick_settings()
        })
        .unwrap()
    };
    // Another process's per-core listener (same user, SO_REUSEPORT too): joining its group would
    // share its connections; the bind must fail as a plain one does.
    let other = per_core::bind_shared_port("127.0.0.1:0".parse().unwrap()).unwrap();
    let taken = other.local_addr().unwrap();
    let error = per_core_server().bind(taken).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    // A plain listener (the work-stealing server's) on the port: the same.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = per_core_server()
        .bind(plain.local_addr().unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    // Once the other server is gone, the port is free; the per-core threads then share it.
    drop(other);
    let listener = per_core_server().bind(taken).await.unwrap();
    assert_eq!(listener.local_addr().unwrap(), taken);
    per_core::bind_shared_port(taken).unwrap();
}
