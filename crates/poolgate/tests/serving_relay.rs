//! The serving loop (`poolgate::serving`) in front of the real router and the real streaming
//! relay, before it replaces `axum::serve` in `server.rs`: a second listener serves
//! `api::build_router` over the running gateway's own state (store, usage writer, live
//! snapshot), so the request path is the product's.
//!
//! A client that stops reading a long stream: after `write_timeout` the connection is dropped,
//! the relay's `Drop` aborts the upstream request (the mock upstream sees its stream cancelled)
//! and the request's usage record says `cancelled` (499). Under `axum::serve` the same client
//! holds the upstream for as long as it likes (issue #14, item 3).

mod common;

use std::time::Duration;

use common::Gateway;
use mock_upstream::{MockConfig, MockUpstream, StreamSpec};
use poolgate::serving::{Server, ServerSettings};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

#[tokio::test]
async fn a_stalled_reader_is_cut_and_its_upstream_aborted_and_recorded_cancelled() {
    // A long stream: 200,000 small chunks, far more than the socket buffers hold.
    let upstream = MockUpstream::start_with(MockConfig {
        stream_defaults: StreamSpec::new(200_000),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gateway = Gateway::start().await;
    gateway
        .add_openai_backend(
            "long",
            &upstream.openai_base_url(),
            "primary",
            &["gpt-long"],
        )
        .await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(ServerSettings {
        write_timeout: Some(Duration::from_secs(1)),
        max_connections: 64,
        ..ServerSettings::default()
    })
    .unwrap();
    let handle = server.handle();
    let running = gateway.running.as_ref().unwrap();
    let router = poolgate::api::build_router(poolgate::api::AppState {
        data: running.data.clone(),
        control: running.control.clone(),
    });
    let serving = tokio::spawn(server.serve(listener, router));

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    let body = json!({"model": "gpt-long", "stream": true, "messages": [{"role": "user", "content": "go"}]})
        .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        common::ADMIN_TOKEN,
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0_u8; 2048];
    let read = client.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..read]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let request_id = head
        .lines()
        .find_map(|line| line.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_owned();

    // Stop reading. The relay fills the buffers, the write times out, the connection drops.
    let stalled = Instant::now();
    let up = &upstream;
    common::eventually("the upstream stream is cancelled", || async move {
        up.cancelled_streams() == 1
    })
    .await;
    assert!(stalled.elapsed() >= Duration::from_millis(900));
    assert_eq!(upstream.completed_streams(), 0);

    let records = gateway.usage_records(1).await;
    let record: &Value = records
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .unwrap();
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["streamed"], true, "{record}");

    drop(client);
    handle.drain();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap();
    gateway.stop().await;
}
