//! `https://` backends end to end: a real gateway in front of a mock upstream behind a TLS
//! terminator on 127.0.0.1 whose certificate a test CA signed (`tests/fixtures/tls`), as a model
//! server behind a company's internal CA would be. `proxy.upstream_ca_file` makes poolgate
//! trust that CA; without it the backend's certificate is refused and the request fails over.
#![expect(clippy::unwrap_used, reason = "test")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{send, Gateway};
use mock_upstream::MockUpstream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// Terminates TLS on a new port (offering `h2` and `http/1.1`) and passes the decrypted bytes
/// to `mock`, which tells HTTP/2 from HTTP/1.1 by the preface. Returns the base URL.
async fn tls_front(mock: &MockUpstream) -> String {
    let certificates = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = mock.addr();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    format!("https://127.0.0.1:{port}/v1")
}

const BACKEND_KEY: &str = "sk-tls-secret-key-0001";

async fn add_backend(gateway: &Gateway, name: &str, base_url: &str) {
    gateway
        .add_backend(json!({
            "name": name,
            "api_base_url": base_url,
            "api_key": BACKEND_KEY,
            "model_mappings": {"m": {"upstream_model": "up-m"}},
        }))
        .await;
}

async fn chat(gateway: &Gateway, stream: bool) -> common::Answer {
    send(gateway.proxy("/v1/chat/completions").json(&json!({
        "model": "m",
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    })))
    .await
}

#[tokio::test]
async fn an_https_backend_behind_an_internal_ca_is_reached_with_upstream_ca_file() {
    let mock = MockUpstream::start().await;
    let base_url = tls_front(&mock).await;
    // One runtime, so one upstream pool: the two requests' connection count is the pool's,
    // whichever core would have accepted the client's connection.
    let toml = format!(
        "[server]\nruntime = \"work_stealing\"\n[proxy]\nupstream_ca_file = {:?}\n",
        fixture("ca.pem").display().to_string()
    );
    let gateway = Gateway::start_with(&toml, None).await;
    add_backend(&gateway, "internal", &base_url).await;

    let answer = chat(&gateway, false).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["object"], "chat.completion", "{}", answer.text);
    let answer = chat(&gateway, true).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        answer.text.trim_end().ends_with("data: [DONE]"),
        "{}",
        answer.text
    );

    // Both went through the TLS front with the backend's key and model; ALPN chose HTTP/2,
    // so they shared one connection.
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.version, "HTTP/2.0");
        assert!(
            request
                .headers
                .iter()
                .any(|(name, value)| name == "authorization"
                    && value == &format!("Bearer {BACKEND_KEY}")),
            "{:?}",
            request.headers
        );
        assert_eq!(request.body["model"], "up-m");
    }
    assert_eq!(mock.connections(), 1);
    let records = gateway.usage_records(2).await;
    assert!(
        records.iter().all(|record| record["outcome"] == "success"),
        "{records:?}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn without_the_ca_the_backend_certificate_is_refused_and_the_request_fails_over() {
    let internal = MockUpstream::start().await;
    let base_url = tls_front(&internal).await;
    let fallback = MockUpstream::start().await;
    let gateway = Gateway::start_with("", None).await;
    add_backend(&gateway, "internal", &base_url).await;
    add_backend(&gateway, "plain", &fallback.openai_base_url()).await;

    for _ in 0..4 {
        let answer = chat(&gateway, false).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(internal.calls(), 0, "no request crossed an untrusted TLS");
    assert_eq!(fallback.calls(), 4);
    let backend = gateway.backend(&gateway.backend_id("internal").await).await;
    assert_eq!(
        backend["last_error"],
        "upstream unreachable: TLS handshake failed: invalid peer certificate: UnknownIssuer",
        "{backend}"
    );
    gateway.stop().await;
}
