use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::Service;

use super::*;
use crate::domain::HttpVersion;
use crate::proxy::classify::{connection_failure, Failure};

fn client(version: HttpVersion) -> UpstreamClient {
    client_idle_for(version, Duration::from_secs(90))
}

/// A client whose idle HTTP/1 connections stay reusable for `idle_timeout`.
fn client_idle_for(version: HttpVersion, idle_timeout: Duration) -> UpstreamClient {
    UpstreamClient::new(&ClientSettings {
        connect_timeout: Duration::from_secs(5),
        egress: Arc::new(EgressPolicy::default()),
        version,
        extra_roots: Arc::from([]),
        idle_timeout,
    })
    .unwrap()
}

fn empty() -> SplicedBody {
    SplicedBody::whole(Bytes::new())
}

/// A URL with a secret in its path and query, as a per-call URL can have.
fn secret_uri(port: u16) -> Uri {
    format!("http://127.0.0.1:{port}/v1/responses/sk-secret-path?key=sk-secret-query")
        .parse()
        .unwrap()
}

/// An empty POST to [`secret_uri`] with `headers`.
async fn post_secret(
    client: &UpstreamClient,
    port: u16,
    headers: HeaderMap,
) -> Result<UpstreamResponse, UpstreamError> {
    client
        .send(Method::POST, Ok(secret_uri(port).into()), headers, empty())
        .await
}

fn assert_no_secret(text: &str, port: u16) {
    assert!(!text.contains("sk-secret"), "{text}");
    assert!(!text.contains(&port.to_string()), "{text}");
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_failure_without_the_url() {
    // A port nothing listens on (bound, then closed).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let error = post_secret(&client(HttpVersion::Auto), port, HeaderMap::new())
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_no_secret(&error.detail(), port);
    assert!(
        error.detail().contains("tcp connect error"),
        "{}",
        error.detail()
    );
    let failure = connection_failure(&error);
    assert!(matches!(&failure, Failure::Connect { .. }), "{failure:?}");
    assert_eq!(
        failure.describe(),
        "upstream unreachable: connection failed"
    );
}

#[tokio::test]
async fn an_unusable_url_fails_before_anything_is_sent() {
    let error = client(HttpVersion::Auto)
        .send(Method::GET, Err(InvalidUrl), HeaderMap::new(), empty())
        .await
        .unwrap_err();
    assert!(matches!(error, UpstreamError::InvalidUrl));
    assert!(!error.is_connect());
}

/// An upstream that answers a head declaring 100 bytes, sends 10, and closes.
#[tokio::test]
async fn a_body_cut_mid_way_is_a_body_error_without_the_url() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = vec![0; 4096];
        let read = socket.read(&mut head).await.unwrap();
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        String::from_utf8_lossy(&head[..read]).into_owned()
    });
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer sk-secret-key".parse().unwrap());
    let mut response = post_secret(&client(HttpVersion::Auto), port, headers)
        .await
        .unwrap();
    assert_eq!(response.content_length(), Some(100));
    // What the upstream saw: the Host from the URI, reqwest's `accept`.
    let request = server.await.unwrap().to_ascii_lowercase();
    assert!(
        request.contains(&format!("host: 127.0.0.1:{port}\r\n")),
        "{request}"
    );
    assert!(request.contains("accept: */*\r\n"), "{request}");
    assert_eq!(response.chunk().await.unwrap().unwrap(), "0123456789");
    let error = response.chunk().await.unwrap_err();
    assert!(matches!(error, UpstreamError::Body(_)), "{error:?}");
    assert!(!error.is_connect());
    let failure = Failure::transport("body was cut off", &error);
    let text = failure.describe();
    assert!(
        text.starts_with("upstream unreachable: body was cut off: "),
        "{text}"
    );
    assert_no_secret(&text, port);
}

/// The connect timeout bounds the whole connect (resolution included), not each TCP attempt.
#[tokio::test(start_paused = true)]
async fn the_connect_timeout_bounds_the_whole_connect() {
    let mut connector = ConnectTimeout {
        inner: tower::service_fn(|_: Uri| std::future::pending::<Result<(), BoxError>>()),
        timeout: Duration::from_secs(3),
    };
    let started = tokio::time::Instant::now();
    let error = connector
        .call(Uri::from_static("http://up.example/"))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    let io = error.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
}

/// `http2` speaks HTTP/2 with prior knowledge on `http://`; `auto` and `http1` speak HTTP/1.1.
/// Over HTTP/1.1 the request carries one `Host` header, the same whether it was prebuilt or
/// built by hyper-util; over HTTP/2 none (the authority is `:authority`), prebuilt or not.
#[tokio::test]
async fn each_version_speaks_its_protocol_on_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/v",
        axum::routing::get(|version: http::Version, headers: HeaderMap| async move {
            let hosts: Vec<&str> = headers
                .get_all(http::header::HOST)
                .iter()
                .map(|value| value.to_str().unwrap())
                .collect();
            format!("{version:?} host={}", hosts.join(","))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let uri: Uri = format!("http://127.0.0.1:{port}/v").parse().unwrap();
    let host = format!("host=127.0.0.1:{port}");
    for (version, expected) in [
        (HttpVersion::Auto, format!("HTTP/1.1 {host}")),
        (HttpVersion::Http1, format!("HTTP/1.1 {host}")),
        (HttpVersion::Http2, "HTTP/2.0 host=".to_owned()),
    ] {
        let prebuilt = Destination {
            host: host_header(&uri),
            uri: uri.clone(),
        };
        for destination in [Destination::from(uri.clone()), prebuilt] {
            let with_host = destination.host.is_some();
            let mut response = client(version)
                .send(Method::GET, Ok(destination), HeaderMap::new(), empty())
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.chunk().await.unwrap().unwrap(),
                expected,
                "{version:?}, prebuilt host: {with_host}"
            );
        }
    }
}

/// The prebuilt `Host` is hyper-util's: the port only when it is not the scheme's default.
#[test]
fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
    for (uri, expected) in [
        ("http://up.example/v1", "up.example"),
        ("http://up.example:80/v1", "up.example"),
        ("http://up.example:443/v1", "up.example:443"),
        ("https://up.example:443/v1", "up.example"),
        ("https://up.example:80/v1", "up.example:80"),
        ("http://127.0.0.1:34651/v1", "127.0.0.1:34651"),
        ("http://[::1]:8080/v1", "[::1]:8080"),
    ] {
        let uri: Uri = uri.parse().unwrap();
        assert_eq!(host_header(&uri).unwrap(), expected, "{uri}");
    }
}

/// An answer of a test upstream, made from the request's path.
type Answer = http::Response<http_body_util::Full<Bytes>>;

/// An upstream on 127.0.0.1 that counts the connections it accepted and answers every request
/// with `answer(path)` (HTTP/1.1 and HTTP/2, told apart by the preface).
async fn upstream_answering(
    answer: impl Fn(&str) -> Answer + Copy + Send + 'static,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let answer = answer(request.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (port, accepted)
}

/// [`upstream_answering`] with the request's path; `GET /big` answers 64 KiB.
async fn counting_upstream() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    upstream_answering(|path| {
        let body = if path == "/big" {
            Bytes::from(vec![b'x'; 64 * 1024])
        } else {
            Bytes::from(path.to_owned())
        };
        http::Response::new(http_body_util::Full::new(body))
    })
    .await
}

async fn get(client: &UpstreamClient, port: u16, path: &str) -> UpstreamResponse {
    let uri: Uri = format!("http://127.0.0.1:{port}{path}").parse().unwrap();
    client
        .send(Method::GET, Ok(uri.into()), HeaderMap::new(), empty())
        .await
        .unwrap()
}

async fn read_all(response: &mut UpstreamResponse) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    body
}

/// An HTTP/1 connection goes back to the pool once its answer was read to the end, and the next
/// request reuses it; an answer dropped half-read closes its connection instead.
#[tokio::test]
async fn http1_connections_are_reused_once_their_answer_was_read() {
    use std::sync::atomic::Ordering;
    let (port, accepted) = counting_upstream().await;
    let client = client(HttpVersion::Http1);
    for round in 0..5 {
        let mut response = get(&client, port, &format!("/r{round}")).await;
        assert_eq!(
            read_all(&mut response).await,
            format!("/r{round}").as_bytes()
        );
        assert_eq!(client.pool.counts(), (1, 0), "idle after round {round}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for five requests"
    );

    // Half-read: not given back; the next request makes a new connection.
    let mut response = get(&client, port, "/big").await;
    assert!(!response.chunk().await.unwrap().unwrap().is_empty());
    assert_eq!(client.pool.counts(), (0, 0), "in use");
    drop(response);
    let mut response = get(&client, port, "/after").await;
    assert_eq!(read_all(&mut response).await, b"/after");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(client.pool.counts(), (1, 0));

    // The reaper keeps an idle connection until its idle timeout (90 s here), then closes it.
    client.pool.reap_for_test(Duration::from_secs(89));
    assert_eq!(client.pool.counts(), (1, 0));
    client.pool.reap_for_test(Duration::from_secs(91));
    assert_eq!(client.pool.counts(), (0, 0));
}

/// An idle HTTP/1 connection is not reused past the idle timeout (an upstream such as uvicorn
/// closes its own after 5 s, and a request written as it does fails): the next request opens a
/// new one.
#[tokio::test]
async fn an_idle_connection_is_not_reused_past_the_idle_timeout() {
    use std::sync::atomic::Ordering;
    let (port, accepted) = counting_upstream().await;
    let client = client_idle_for(HttpVersion::Http1, Duration::from_millis(1000));
    for path in ["/a", "/b"] {
        let mut response = get(&client, port, path).await;
        assert_eq!(read_all(&mut response).await, path.as_bytes());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "reused within the timeout"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut response = get(&client, port, "/c").await;
    assert_eq!(read_all(&mut response).await, b"/c");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new connection after it"
    );
    assert_eq!(
        client.pool.counts(),
        (1, 0),
        "the expired one left the pool"
    );

    // 0: a connection per request.
    let (port, accepted) = counting_upstream().await;
    let client = client_idle_for(HttpVersion::Http1, Duration::ZERO);
    for path in ["/a", "/b"] {
        let mut response = get(&client, port, path).await;
        assert_eq!(read_all(&mut response).await, path.as_bytes());
        assert_eq!(client.pool.counts(), (0, 0));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// [`upstream_answering`] `ok`, announcing `Keep-Alive: {keep_alive}`.
async fn keep_alive_upstream(
    keep_alive: &'static str,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    upstream_answering(move |_| {
        let mut answer = http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")));
        answer
            .headers_mut()
            .insert("keep-alive", http::HeaderValue::from_static(keep_alive));
        answer
    })
    .await
}

/// An upstream's `Keep-Alive: timeout=N` bounds reuse to N − 2 s (a shorter idle timeout
/// still wins); `timeout=2` leaves nothing, and the connection is not pooled.
#[tokio::test]
async fn the_upstreams_keep_alive_timeout_bounds_reuse() {
    use std::sync::atomic::Ordering;
    let (port, accepted) = keep_alive_upstream("timeout=5, max=100").await;
    let client = client(HttpVersion::Http1);
    for path in ["/a", "/b"] {
        let mut response = get(&client, port, path).await;
        assert_eq!(read_all(&mut response).await, b"ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused within 3 s");
    client.pool.reap_for_test(Duration::from_millis(1500));
    assert_eq!(client.pool.counts(), (1, 0), "kept under 3 s");
    client.pool.reap_for_test(Duration::from_millis(3100));
    assert_eq!(client.pool.counts(), (0, 0), "expired after 3 s, not 90");

    let (port, accepted) = keep_alive_upstream("timeout=2").await;
    for _ in 0..2 {
        let mut response = get(&client, port, "/").await;
        assert_eq!(read_all(&mut response).await, b"ok");
        assert_eq!(client.pool.counts(), (0, 0), "not pooled");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // The pool's own timeout when it is shorter.
    let (port, _) = keep_alive_upstream("timeout=30").await;
    let client = client_idle_for(HttpVersion::Http1, Duration::from_secs(4));
    let mut response = get(&client, port, "/").await;
    assert_eq!(read_all(&mut response).await, b"ok");
    client.pool.reap_for_test(Duration::from_millis(4100));
    assert_eq!(client.pool.counts(), (0, 0));
}

#[test]
fn the_announced_keep_alive_timeout_is_read_less_two_seconds() {
    let announced = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("keep-alive", http::HeaderValue::from_static(value));
        pool::announced_keep_alive(&headers)
    };
    assert_eq!(announced("timeout=5"), Some(Duration::from_secs(3)));
    assert_eq!(
        announced("timeout=5, max=1000"),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        announced("max=100, Timeout = 75"),
        Some(Duration::from_secs(73))
    );
    assert_eq!(announced("timeout=\"10\""), Some(Duration::from_secs(8)));
    assert_eq!(announced("timeout=2"), Some(Duration::ZERO));
    assert_eq!(announced("timeout=0"), Some(Duration::ZERO));
    assert_eq!(announced("timeout=soon"), None);
    assert_eq!(announced("max=100"), None);
    assert_eq!(pool::announced_keep_alive(&HeaderMap::new()), None);
    // Several headers: the smallest timeout any gives.
    let mut headers = HeaderMap::new();
    headers.append("keep-alive", http::HeaderValue::from_static("max=100"));
    headers.append("keep-alive", http::HeaderValue::from_static("timeout=30"));
    headers.append("keep-alive", http::HeaderValue::from_static("timeout=5"));
    assert_eq!(
        pool::announced_keep_alive(&headers),
        Some(Duration::from_secs(3))
    );
}

/// Requests at the same time each get a connection over HTTP/1; over HTTP/2 with prior
/// knowledge they share one, made once.
#[tokio::test]
async fn concurrent_requests_share_one_http2_connection() {
    use std::sync::atomic::Ordering;
    for (version, connections) in [(HttpVersion::Http2, 1), (HttpVersion::Http1, 8)] {
        let (port, accepted) = counting_upstream().await;
        let client = client(version);
        let answers = futures_util::future::join_all((0..8).map(|index| {
            let client = client.clone();
            async move {
                let mut response = get(&client, port, &format!("/c{index}")).await;
                read_all(&mut response).await
            }
        }))
        .await;
        for (index, body) in answers.iter().enumerate() {
            assert_eq!(body, format!("/c{index}").as_bytes(), "{version:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{version:?}");
    }
}

/// A pooled connection the upstream closed while it idled is passed over: the request goes out
/// on a new one, no error.
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_passed_over() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Each connection answers one request (keep-alive offered), then closes.
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = vec![0; 4096];
                let _ = socket.read(&mut head).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    let client = client(HttpVersion::Http1);
    for round in 0..3 {
        let mut response = get(&client, port, "/").await;
        assert_eq!(read_all(&mut response).await, b"ok");
        assert_eq!(client.pool.counts(), (1, 0), "pooled after round {round}");
        // The upstream closes the idle connection.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// An answer read to its end while hyper still uploads the request's body (an early 413 from
/// an upstream that stopped reading): the connection is not ready for the next request, which
/// goes out on a new one instead of waiting behind that upload.
#[tokio::test]
async fn a_connection_still_uploading_is_not_waited_for() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let mut head = vec![0; 4096];
                let _ = socket.read(&mut head).await;
                if first {
                    // Answers at once and reads no more of the body.
                    let _ = socket
                        .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                } else {
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    let client = client(HttpVersion::Http1);
    let uri: Uri = format!("http://127.0.0.1:{port}/upload").parse().unwrap();
    let big = SplicedBody::whole(Bytes::from(vec![b'x'; 32 * 1024 * 1024]));
    let mut early = client
        .send(Method::POST, Ok(uri.into()), HeaderMap::new(), big)
        .await
        .unwrap();
    assert_eq!(early.status(), 413);
    assert!(early.chunk().await.unwrap().is_none());
    let next = tokio::time::timeout(Duration::from_secs(5), get(&client, port, "/next"))
        .await
        .expect("the next request does not wait for the upload");
    let mut next = next;
    assert_eq!(read_all(&mut next).await, b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An HTTP/2 connection no request took for three reaper ticks leaves the pool, and the host
/// with it; the next request makes a new one.
#[tokio::test]
async fn an_unused_http2_connection_is_reaped() {
    use std::sync::atomic::Ordering;
    let (port, accepted) = counting_upstream().await;
    let client = client(HttpVersion::Http2);
    let mut response = get(&client, port, "/a").await;
    assert_eq!(read_all(&mut response).await, b"/a");
    assert_eq!(client.pool.counts(), (0, 1));
    client.pool.reap_for_test(Duration::ZERO);
    client.pool.reap_for_test(Duration::ZERO);
    let mut response = get(&client, port, "/b").await;
    assert_eq!(read_all(&mut response).await, b"/b");
    assert_eq!(client.pool.counts(), (0, 1), "used: kept");
    for _ in 0..3 {
        client.pool.reap_for_test(Duration::ZERO);
    }
    assert_eq!(client.pool.counts(), (0, 0));
    assert_eq!(client.pool.hosts_for_test(), 0);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let mut response = get(&client, port, "/c").await;
    assert_eq!(read_all(&mut response).await, b"/c");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Dropping an unused HTTP/2 connection from the pool leaves the streams still open on it to
/// finish: a slow answer started before the reaper dropped it is read to its end.
#[tokio::test]
async fn a_stream_outlives_its_reaped_http2_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_request: http::Request<_>| async move {
            let chunks = futures_util::stream::unfold(0_u8, |sent| async move {
                if sent == 3 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let frame = http_body::Frame::data(Bytes::from(vec![b'a' + sent]));
                Some((Ok::<_, std::convert::Infallible>(frame), sent + 1))
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::StreamBody::new(
                chunks,
            )))
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
            .await;
    });
    let client = client(HttpVersion::Http2);
    let mut response = get(&client, port, "/slow").await;
    for _ in 0..3 {
        client.pool.reap_for_test(Duration::ZERO);
    }
    assert_eq!(client.pool.counts(), (0, 0), "dropped from the pool");
    assert_eq!(read_all(&mut response).await, b"abc");
}

/// An upstream on 127.0.0.1 speaking raw HTTP/1.1: for each request on a connection (its head
/// read to the blank line; the tests send no body), it writes `answer`, then closes the
/// connection when `close` is set. Counts the connections it accepted.
async fn raw_upstream(
    answer: &'static [u8],
    close: bool,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0_u8; 4096];
                loop {
                    let Ok(read) = socket.read(&mut buf).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..read]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// A chunked answer (an SSE stream) comes through chunk by chunk as the upstream sends it, not
/// once it ended; read to its end, its connection carries the next request.
#[tokio::test]
async fn a_chunked_answer_streams_as_sent_and_its_connection_is_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let (next_event, mut wait_for_next) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        counter.fetch_add(1, Ordering::SeqCst);
        for round in 0..2 {
            let mut head = vec![0; 4096];
            let _ = socket.read(&mut head).await.unwrap();
            socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"n\":1}\n\n\r\n",
                )
                .await
                .unwrap();
            if round == 0 {
                // The second event only once the client has read the first.
                wait_for_next.recv().await.unwrap();
            }
            socket
                .write_all(b"f\r\ndata: {\"n\":2}\n\n\r\n0\r\n\r\n")
                .await
                .unwrap();
        }
    });
    let client = client(HttpVersion::Http1);
    let mut response = get(&client, port, "/v1/chat/completions").await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.content_length(), None);
    // The first event arrives while the upstream still holds back the second (a proxy that
    // waited for the end would time out here).
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first event before the stream ended");
    assert_eq!(first.unwrap().unwrap(), "data: {\"n\":1}\n\n");
    next_event.send(()).await.unwrap();
    assert_eq!(
        response.chunk().await.unwrap().unwrap(),
        "data: {\"n\":2}\n\n"
    );
    assert!(response.chunk().await.unwrap().is_none());
    assert_eq!(client.pool.counts(), (1, 0), "back in the pool");

    let mut response = get(&client, port, "/again").await;
    assert_eq!(
        read_all(&mut response).await,
        b"data: {\"n\":1}\n\ndata: {\"n\":2}\n\n"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
}

/// Answers that leave the connection in no known state, or say it ends, are read whole and
/// their connection is closed, not pooled: bytes past the declared length, `Connection:
/// close`, HTTP/1.0, a body delimited by the close.
#[tokio::test]
async fn answers_that_end_their_connection_are_read_and_not_pooled() {
    use std::sync::atomic::Ordering;
    let cases: [(&'static [u8], bool, &[u8]); 4] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
            false,
            b"ok",
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            false,
            b"ok",
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
            b"ok",
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
            true,
            b"until the close",
        ),
    ];
    for (answer, close, body) in cases {
        let (port, accepted) = raw_upstream(answer, close).await;
        let client = client(HttpVersion::Http1);
        for round in 1..=2 {
            let mut response = get(&client, port, "/").await;
            assert_eq!(read_all(&mut response).await, body, "{answer:?}");
            assert_eq!(client.pool.counts(), (0, 0), "{answer:?}");
            assert_eq!(accepted.load(Ordering::SeqCst), round, "{answer:?}");
        }
    }
}

/// A `HEAD` answer has no body whatever its `Content-Length` says, and its connection is
/// reused; a `204` likewise.
#[tokio::test]
async fn head_and_no_content_answers_have_no_body() {
    use std::sync::atomic::Ordering;
    let (port, accepted) =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", false).await;
    let client = client(HttpVersion::Http1);
    let uri: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
    for _ in 0..2 {
        let mut response = client
            .send(
                Method::HEAD,
                Ok(uri.clone().into()),
                HeaderMap::new(),
                empty(),
            )
            .await
            .unwrap();
        assert_eq!(response.content_length(), Some(0));
        assert!(response.chunk().await.unwrap().is_none());
        assert_eq!(client.pool.counts(), (1, 0));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let (port, _) = raw_upstream(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
    let mut response = get(&client, port, "/").await;
    assert_eq!(response.status(), 204);
    assert!(response.chunk().await.unwrap().is_none());
}

/// An answer head that is not HTTP/1 is a send error whose text names no URL; so is one that
/// never ends (over 64 KiB).
#[tokio::test]
async fn a_malformed_answer_head_is_a_send_error_without_the_url() {
    let endless: &'static [u8] = Box::leak(
        [&b"HTTP/1.1 200 OK\r\n"[..], &[b'x'; 70 * 1024][..]]
            .concat()
            .into_boxed_slice(),
    );
    for (answer, expected) in [
        (&b"HTTP/1.1 abc OK\r\n\r\n"[..], "not valid HTTP/1"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "Content-Length",
        ),
        (endless, "over 65536 bytes"),
    ] {
        let (port, _) = raw_upstream(answer, true).await;
        let error = post_secret(&client(HttpVersion::Http1), port, HeaderMap::new())
            .await
            .unwrap_err();
        assert!(matches!(error, UpstreamError::Send(_)), "{error:?}");
        assert!(!error.is_connect());
        assert!(error.detail().contains(expected), "{}", error.detail());
        assert_no_secret(&error.detail(), port);
    }
}

/// An upstream that refuses an upload with a `413` and closes at once (the unread upload makes
/// its close a reset): the client gets the 413, not a connection error, though its own write
/// fails.
#[tokio::test]
async fn an_early_refusal_that_closes_the_connection_is_still_heard() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = vec![0; 4096];
        let _ = socket.read(&mut head).await;
        let _ = socket
            .write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!",
            )
            .await;
        // Closed with the upload unread.
    });
    let client = client(HttpVersion::Http1);
    let uri: Uri = format!("http://127.0.0.1:{port}/upload").parse().unwrap();
    let big = SplicedBody::whole(Bytes::from(vec![b'x'; 32 * 1024 * 1024]));
    let mut response = tokio::time::timeout(
        Duration::from_secs(10),
        client.send(Method::POST, Ok(uri.into()), HeaderMap::new(), big),
    )
    .await
    .expect("answered")
    .expect("the 413, not an error");
    assert_eq!(response.status(), 413);
    assert_eq!(read_all(&mut response).await, b"too big!");
    assert_eq!(client.pool.counts(), (0, 0));
}

/// An upstream that answers `200` before it read the whole request (it reads on): the rest of
/// the request still goes out, and the connection carries the next request.
#[tokio::test]
async fn a_success_that_comes_early_waits_for_the_whole_request() {
    use std::sync::atomic::Ordering;
    const UPLOAD: usize = 4 * 1024 * 1024;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 64 * 1024];
        let head_end = |bytes: &[u8]| bytes.windows(4).position(|w| w == b"\r\n\r\n");
        // The first request: answered as soon as its head is in, then read to its end.
        let mut seen = Vec::new();
        let body_start = loop {
            let read = socket.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..read]);
            if let Some(end) = head_end(&seen) {
                break end + 4;
            }
        };
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        while seen.len() < body_start + UPLOAD {
            let read = socket.read(&mut buf).await.unwrap();
            assert!(
                read > 0,
                "the upload stopped at {} bytes",
                seen.len() - body_start
            );
            seen.extend_from_slice(&buf[..read]);
        }
        counter.store(UPLOAD, Ordering::SeqCst);
        // The second request, on the same connection (its head may have come with the upload's
        // last bytes).
        let second = body_start + UPLOAD;
        while head_end(&seen[second..]).is_none() {
            let read = socket.read(&mut buf).await.unwrap();
            assert!(read > 0);
            seen.extend_from_slice(&buf[..read]);
        }
        assert!(seen[second..].starts_with(b"GET /next HTTP/1.1\r\n"));
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let client = client(HttpVersion::Http1);
    let uri: Uri = format!("http://127.0.0.1:{port}/upload").parse().unwrap();
    let upload = SplicedBody::whole(Bytes::from(vec![b'x'; UPLOAD]));
    let mut response = tokio::time::timeout(
        Duration::from_secs(10),
        client.send(Method::POST, Ok(uri.into()), HeaderMap::new(), upload),
    )
    .await
    .expect("answered")
    .unwrap();
    assert_eq!(read_all(&mut response).await, b"ok");
    assert_eq!(client.pool.counts(), (1, 0));
    // Answered only once the upstream read the whole upload.
    let mut next = get(&client, port, "/next").await;
    assert_eq!(read_all(&mut next).await, b"second");
    assert_eq!(
        received.load(Ordering::SeqCst),
        UPLOAD,
        "the whole upload went"
    );
}
