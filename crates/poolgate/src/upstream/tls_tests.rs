//! The client over TLS: a local upstream whose certificate a test CA signed
//! (`tests/fixtures/tls`), trusted through `extra_roots`; ALPN choosing HTTP/2 or HTTP/1.1, and
//! how the pool keeps the connections of each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::*;
use crate::domain::HttpVersion;
use crate::egress::EgressPolicy;

const CA: &[u8] = include_bytes!("../../tests/fixtures/tls/ca.pem");
const SERVER_CERT: &[u8] = include_bytes!("../../tests/fixtures/tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../../tests/fixtures/tls/server.key");

fn test_ca() -> Arc<[CertificateDer<'static>]> {
    CertificateDer::pem_slice_iter(CA)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .into()
}

fn client(version: HttpVersion, extra_roots: Arc<[CertificateDer<'static>]>) -> UpstreamClient {
    UpstreamClient::new(&ClientSettings {
        connect_timeout: Duration::from_secs(5),
        egress: Arc::new(EgressPolicy::default()),
        version,
        extra_roots,
        idle_timeout: Duration::from_secs(90),
    })
    .unwrap()
}

/// Connections an upstream accepted, and how many of them are still open.
#[derive(Default)]
struct Connections {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// An `https://` upstream on 127.0.0.1 offering `alpn` (in order of preference: the first the
/// client offers too is chosen) that counts its connections and answers every request with
/// `"{version} {path} alpn={negotiated} conn={index of the connection, from 0}"`.
async fn tls_upstream(alpn: &[&[u8]]) -> (u16, Arc<Connections>) {
    let certificates = CertificateDer::pem_slice_iter(SERVER_CERT)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(Connections::default());
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let index = counter.accepted.fetch_add(1, Ordering::SeqCst);
            counter.open.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                // A client that does not trust the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(socket).await else {
                    counter.open.fetch_sub(1, Ordering::SeqCst);
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map_or_else(
                    || "none".to_owned(),
                    |p| String::from_utf8_lossy(p).into_owned(),
                );
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let answer = format!(
                        "{:?} {} alpn={alpn} conn={index}",
                        request.version(),
                        request.uri().path()
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(answer)),
                        ))
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                counter.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, connections)
}

async fn get(client: &UpstreamClient, port: u16, path: &str) -> Result<String, UpstreamError> {
    let uri: Uri = format!("https://127.0.0.1:{port}{path}").parse().unwrap();
    let mut response = client
        .send(
            Method::GET,
            Ok(uri.into()),
            HeaderMap::new(),
            SplicedBody::whole(Bytes::new()),
        )
        .await?;
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8(body).unwrap())
}

/// The test CA is not among the webpki roots: without it the handshake fails (a connect
/// error, so the request fails over); with it the upstream is reached.
#[tokio::test]
async fn an_upstream_signed_by_an_extra_ca_is_trusted_only_with_it() {
    let (port, _) = tls_upstream(&[b"http/1.1"]).await;
    let error = get(&client(HttpVersion::Auto, Arc::from([])), port, "/x")
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(
        error.tls_failure().map(ToString::to_string).as_deref(),
        Some("invalid peer certificate: UnknownIssuer"),
        "{error:?}"
    );
    assert_eq!(
        get(&client(HttpVersion::Auto, test_ca()), port, "/x")
            .await
            .unwrap(),
        "HTTP/1.1 /x alpn=http/1.1 conn=1"
    );
}

/// `auto` offers `h2` and `http/1.1`: an upstream choosing `h2` gets one connection that every
/// request shares, requests at once included; one choosing `http/1.1` gets pooled HTTP/1.1
/// connections, reused once their answer was read.
#[tokio::test]
async fn auto_follows_alpn_and_pools_each_protocol_its_way() {
    let (port, connections) = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let client_h2 = client(HttpVersion::Auto, test_ca());
    for round in 0..3 {
        let path = format!("/s{round}");
        assert_eq!(
            get(&client_h2, port, &path).await.unwrap(),
            format!("HTTP/2.0 {path} alpn=h2 conn=0")
        );
    }
    assert_eq!(
        connections.accepted.load(Ordering::SeqCst),
        1,
        "one connection for three"
    );
    let answers = futures_util::future::join_all((0..8).map(|index| {
        let client = client_h2.clone();
        async move { get(&client, port, &format!("/c{index}")).await.unwrap() }
    }))
    .await;
    for (index, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &format!("HTTP/2.0 /c{index} alpn=h2 conn=0"));
    }
    assert_eq!(
        connections.accepted.load(Ordering::SeqCst),
        1,
        "shared by eight at once"
    );
    assert_eq!(client_h2.pool.counts(), (0, 1));

    let (port, connections) = tls_upstream(&[b"http/1.1"]).await;
    let client_h1 = client(HttpVersion::Auto, test_ca());
    for round in 0..3 {
        let path = format!("/r{round}");
        assert_eq!(
            get(&client_h1, port, &path).await.unwrap(),
            format!("HTTP/1.1 {path} alpn=http/1.1 conn=0")
        );
    }
    assert_eq!(connections.accepted.load(Ordering::SeqCst), 1, "reused");
    assert_eq!(client_h1.pool.counts(), (1, 0));
}

/// A cold `auto` pool sends a burst before any connection is up: each request connects (ALPN
/// is known only after the handshake), but the first HTTP/2 connection up is shared and every
/// request of the burst goes over it; the later connections close without carrying a stream,
/// and the next requests use the shared one, no new handshake.
#[tokio::test]
async fn a_cold_burst_over_alpn_h2_ends_on_one_shared_connection() {
    let (port, connections) = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let client = client(HttpVersion::Auto, test_ca());
    let answers = futures_util::future::join_all((0..6).map(|index| {
        let client = client.clone();
        async move { get(&client, port, &format!("/b{index}")).await.unwrap() }
    }))
    .await;
    let shared = answers[0].rsplit_once(" conn=").unwrap().1.to_owned();
    for (index, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer,
            &format!("HTTP/2.0 /b{index} alpn=h2 conn={shared}"),
            "one connection for the whole burst"
        );
    }
    let after_burst = connections.accepted.load(Ordering::SeqCst);
    assert!((1..=6).contains(&after_burst), "{after_burst}");
    assert_eq!(client.pool.counts(), (0, 1));
    for round in 0..3 {
        assert_eq!(
            get(&client, port, &format!("/n{round}")).await.unwrap(),
            format!("HTTP/2.0 /n{round} alpn=h2 conn={shared}")
        );
    }
    assert_eq!(connections.accepted.load(Ordering::SeqCst), after_burst);
    // The burst's other connections close without having carried a stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connections.open.load(Ordering::SeqCst) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {after_burst} connections still open",
            connections.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(connections.open.load(Ordering::SeqCst), 1);
}

/// `http1` offers no ALPN at all (hyper-rustls's way: a server then speaks HTTP/1.1) and `http2`
/// only `h2`, whatever the upstream prefers; an upstream that does not agree to `h2` fails an
/// `http2` backend's connect, with a reason.
#[tokio::test]
async fn a_pinned_version_is_the_only_one_offered() {
    let (port, _) = tls_upstream(&[b"h2", b"http/1.1"]).await;
    assert_eq!(
        get(&client(HttpVersion::Http1, test_ca()), port, "/one")
            .await
            .unwrap(),
        "HTTP/1.1 /one alpn=none conn=0"
    );
    let (port, _) = tls_upstream(&[b"http/1.1", b"h2"]).await;
    assert_eq!(
        get(&client(HttpVersion::Http2, test_ca()), port, "/two")
            .await
            .unwrap(),
        "HTTP/2.0 /two alpn=h2 conn=0"
    );
    // An upstream without ALPN: the handshake succeeds, the connect fails.
    let (port, _) = tls_upstream(&[]).await;
    let error = get(&client(HttpVersion::Http2, test_ca()), port, "/three")
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(
        error.detail().contains("did not agree to HTTP/2"),
        "{}",
        error.detail()
    );
    // One with ALPN but not `h2`: the TLS handshake itself fails (RFC 7301's alert).
    let (port, _) = tls_upstream(&[b"http/1.1"]).await;
    let error = get(&client(HttpVersion::Http2, test_ca()), port, "/four")
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(
        error
            .tls_failure()
            .is_some_and(|tls| tls.to_string().contains("NoApplicationProtocol")),
        "{error:?}"
    );
}
