use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::Service;

use hyper_util::client::legacy::connect::HttpInfo;

use super::*;
use crate::domain::HttpVersion;
use crate::proxy::classify::{connection_failure, Failure};

fn client(version: HttpVersion) -> UpstreamClient {
    UpstreamClient::new(&ClientSettings {
        connect_timeout: Duration::from_secs(5),
        egress: Arc::new(EgressPolicy::default()),
        version,
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
    let error = client(HttpVersion::Auto)
        .send(
            Method::POST,
            Ok(secret_uri(port).into()),
            HeaderMap::new(),
            empty(),
        )
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
    let mut response = client(HttpVersion::Auto)
        .send(Method::POST, Ok(secret_uri(port).into()), headers, empty())
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
            // The connector's addresses are not copied into the answer.
            let extensions = response.inner.extensions();
            assert!(extensions.get::<HttpInfo>().is_none());
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

/// A connection hands the pool ALPN's choice and nothing else.
#[tokio::test]
async fn a_quiet_connection_keeps_alpns_choice_and_drops_the_addresses() {
    struct NegotiatedH2;
    impl Connection for NegotiatedH2 {
        fn connected(&self) -> Connected {
            Connected::new().negotiated_h2()
        }
    }
    assert!(Quiet(NegotiatedH2).connected().is_negotiated_h2());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut extensions = http::Extensions::new();
    tcp.connected().get_extras(&mut extensions);
    assert!(
        extensions.get::<HttpInfo>().is_some(),
        "what hyper-util adds"
    );
    let quiet = Quiet(tcp).connected();
    assert!(!quiet.is_negotiated_h2());
    let mut extensions = http::Extensions::new();
    quiet.get_extras(&mut extensions);
    assert!(extensions.get::<HttpInfo>().is_none());
}
