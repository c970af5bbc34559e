//! Slow and hostile clients and overload, against the real `poolgate serve` binary on real
//! sockets (issue #14, items 1–4): trickled heads and bodies are cut at their timeouts;
//! `/healthz` answers with 300 half-sent requests open under an open-file limit of 256; a
//! declared 1 GiB body is refused before it is read; ten 30 MiB requests in flight cost less
//! than twice their size; a client that stops reading has its upstream aborted after the write
//! timeout; 2,000 concurrent requests against a limit of 500 are answered at once with 503 +
//! `Retry-After` while health and the admin API answer; a key's `max_parallel_requests` gives
//! 429. And the thread-per-core server runtime (#13) serving answers and streams end to end.

#![expect(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::binary::{rss_of, serve_command, Binary};
use common::ADMIN_TOKEN;
use mock_upstream::{MockConfig, MockUpstream, Reply, StreamSpec};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Reads from `stream` until the peer closes it (or `limit` passes); returns what was read and
/// when the close came (`None` = still open at the limit).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn body_of(answer: &[u8]) -> Value {
    let text = String::from_utf8_lossy(answer);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

// === item 1: slow heads and bodies ===

#[tokio::test]
async fn trickled_heads_and_bodies_are_cut_at_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(
        dir.path(),
        "[server]\nheader_read_timeout_seconds = 1\nbody_read_timeout_seconds = 1\nbody_min_rate_bytes_per_second = 100\n",
    )
    .await;

    // A request head, one byte every 200 ms: never complete.
    let mut head = TcpStream::connect(gateway.addr()).await.unwrap();
    let started = Instant::now();
    let trickle = b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_at = None;
    for byte in trickle {
        if head.write_all(&[*byte]).await.is_err() {
            closed_at = Some(Instant::now());
            break;
        }
        let mut probe = [0_u8; 256];
        // Anything but silence ends it: a close (0 or an error), or an answer before the close.
        if tokio::time::timeout(Duration::from_millis(200), head.read(&mut probe))
            .await
            .is_ok()
        {
            closed_at = Some(Instant::now());
            break;
        }
    }
    let cut_after = closed_at.expect("the trickled head was never cut") - started;
    println!("trickled head cut after {cut_after:?} (header timeout 1 s)");
    assert!(cut_after >= Duration::from_millis(900), "{cut_after:?}");
    assert!(
        cut_after < Duration::from_secs(10),
        "the head was cut only after {cut_after:?} of a 12 s trickle"
    );

    // A body, one byte every 200 ms against a floor of 100 bytes/s: 408 soon after 1 s.
    let mut body = TcpStream::connect(gateway.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 10000\r\n\r\n"
    );
    body.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = body.into_split();
    let started = Instant::now();
    let trickler = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0_u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let read = tokio::time::timeout(Duration::from_secs(15), reader.read(&mut buf))
            .await
            .expect("no answer to a trickled body")
            .unwrap();
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..read]);
    }
    let answered_after = started.elapsed();
    trickler.abort();
    println!(
        "trickled body answered {} after {answered_after:?}",
        status_of(&answer)
    );
    assert_eq!(
        status_of(&answer),
        408,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(body_of(&answer)["error"]["code"], "request_timeout");
    assert!(answered_after >= Duration::from_millis(900));
    assert!(answered_after < Duration::from_secs(10));
    let records = gateway.usage_records(1).await;
    assert_eq!(records[0]["status"], 408, "{:?}", records[0]);
    gateway.stop().await;
}

// === item 1: the open-file limit ===

/// `poolgate serve` under `ulimit -n 256`.
fn under_ulimit(data_dir: &std::path::Path, toml: &str) -> std::process::Command {
    let inner = serve_command(data_dir, toml);
    let mut command = std::process::Command::new("bash");
    command
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command
}

/// Opens `count` connections that each send half a request line and then nothing.
fn half_sent(addr: &str, count: usize) -> Vec<std::net::TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            // Over the cap the server may already have answered and closed: ignore errors.
            let _ = stream.write_all(b"GET /heal");
            stream
        })
        .collect()
}

/// `GET /healthz` on a fresh connection: the status (0 = closed without an answer) and when.
fn health(addr: &str) -> (u16, Duration) {
    let started = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (status_of(&answer), started.elapsed())
}

/// Polls `/healthz` until it answers 200; returns how long that took.
fn health_until_ok(addr: &str, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if health(addr).0 == 200 {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/healthz did not answer 200 within {limit:?}");
}

#[tokio::test]
async fn health_answers_with_300_half_sent_requests_under_an_open_file_limit_of_256() {
    // The default cap from the limit: (256 - 128) / 2 = 64 connections.
    let dir = tempfile::tempdir().unwrap();
    let toml = "[server]\nheader_read_timeout_seconds = 3\n";
    let gateway = Binary::start_command(dir.path(), under_ulimit(dir.path(), toml)).await;
    let addr = gateway.addr();
    let (held, (status, took), recovered) = tokio::task::spawn_blocking(move || {
        let held = half_sent(&addr, 300);
        let over_cap = health(&addr);
        let recovered = health_until_ok(&addr, Duration::from_secs(20));
        (held, over_cap, recovered)
    })
    .await
    .unwrap();
    drop(held);
    let log = gateway.stop().await;
    println!("cap 64: over-cap /healthz {status} in {took:?}; 200 after {recovered:?}");
    assert!(log.contains("max_connections=64"), "{log}");
    // Over the cap: an immediate answer, never a hang.
    assert!(status == 503 || status == 0, "{status}");
    assert!(
        took < Duration::from_secs(3),
        "over the cap it took {took:?}"
    );
    assert!(log.contains("connection limit reached"), "{log}");
    assert!(!log.contains("cannot accept connections"), "{log}");

    // A cap set above what the limit allows: accept fails with EMFILE — logged (rate-limited)
    // and backed off — and /healthz still answers once the half-sent requests are cut.
    let dir = tempfile::tempdir().unwrap();
    let toml = "[server]\nheader_read_timeout_seconds = 3\nmax_connections = 1000\n";
    let gateway = Binary::start_command(dir.path(), under_ulimit(dir.path(), toml)).await;
    let addr = gateway.addr();
    let (held, recovered) = tokio::task::spawn_blocking(move || {
        let held = half_sent(&addr, 300);
        let recovered = health_until_ok(&addr, Duration::from_secs(30));
        (held, recovered)
    })
    .await
    .unwrap();
    drop(held);
    let log = gateway.stop().await;
    let accept_lines = log
        .lines()
        .filter(|line| line.contains("cannot accept connections"))
        .count();
    println!("cap 1000 over the limit: /healthz 200 after {recovered:?}; {accept_lines} accept-error line(s)");
    assert!(
        (1..=3).contains(&accept_lines),
        "expected a rate-limited accept-error line:\n{log}"
    );
    assert!(log.contains("out of file descriptors"), "{log}");
}

// === item 2: memory ===

#[tokio::test]
async fn a_declared_gigabyte_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "").await;
    // Every proxy path that reads a body (the Responses API and count_tokens included).
    for path in [
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ] {
        let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n"
        );
        let started = Instant::now();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b' '; 1024]).await.unwrap();
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        let took = started.elapsed();
        println!(
            "{path}: declared 1 GiB: {} after {took:?}",
            status_of(&answer)
        );
        assert_eq!(
            status_of(&answer),
            413,
            "{path}: {}",
            String::from_utf8_lossy(&answer)
        );
        let code = if path.starts_with("/v1/messages") {
            // Anthropic's shape: the error type says it.
            body_of(&answer)["error"]["type"].clone()
        } else {
            body_of(&answer)["error"]["code"].clone()
        };
        assert!(
            code == "payload_too_large" || code == "request_too_large",
            "{path}: {code}"
        );
        assert!(took < Duration::from_secs(1), "{path}: {took:?}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn ten_30_mib_requests_in_flight_cost_less_than_twice_their_size() {
    const SIZE: usize = 30 * 1024 * 1024;
    const COUNT: usize = 10;
    // The upstream takes each body whole and never answers: the requests stay in flight.
    let upstream = MockUpstream::start_with(MockConfig {
        default_reply: Reply::Hang,
        record_requests: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "").await;
    gateway
        .add_openai_backend("big", &upstream.openai_base_url(), "m")
        .await;
    let filler = "x".repeat(SIZE - 100);
    let body = bytes::Bytes::from(
        json!({"model": "m", "messages": [{"role": "user", "content": filler}]}).to_string(),
    );
    drop(filler);
    assert!(body.len() <= SIZE);
    let baseline = gateway.rss_bytes();

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = Arc::clone(&peak);
        let pid = gateway.served.pid();
        tokio::spawn(async move {
            while let Some(rss) = rss_of(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    let requests: Vec<_> = (0..COUNT)
        .map(|_| {
            let request = gateway
                .proxy("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(body.clone());
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    // (A debug build reads 300 MiB of JSON slowly: up to a minute.)
    while upstream.calls() < COUNT {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of {COUNT} requests reached the upstream",
            upstream.calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in_flight = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sampler.abort();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    let sent = (COUNT * body.len()) as u64;
    println!(
        "{COUNT} x {} MiB in flight after {all_in_flight:?}: RSS {} MiB -> peak {} MiB (+{} MiB for {} MiB of bodies)",
        body.len() >> 20,
        baseline >> 20,
        peak.load(Ordering::Relaxed) >> 20,
        growth >> 20,
        sent >> 20
    );
    assert!(
        growth < 2 * sent,
        "the gateway grew by {} MiB holding {} MiB of request bodies",
        growth >> 20,
        sent >> 20
    );
    for request in requests {
        request.abort();
    }
    gateway.stop().await;
}

// === item 3: a client that stops reading ===

#[tokio::test]
async fn a_stalled_reader_is_cut_after_the_write_timeout_and_its_upstream_aborted() {
    // A long stream: 200,000 small chunks, far more than the socket buffers hold.
    let upstream = MockUpstream::start_with(MockConfig {
        stream_defaults: StreamSpec::new(200_000),
        record_requests: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "[server]\nwrite_timeout_seconds = 1\n").await;
    gateway
        .add_openai_backend("long", &upstream.openai_base_url(), "gpt-long")
        .await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket
        .connect(gateway.addr().parse().unwrap())
        .await
        .unwrap();
    let body = json!({"model": "gpt-long", "stream": true, "messages": [{"role": "user", "content": "go"}]})
        .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
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

    // Stop reading: the relay fills the buffers, the write times out, the upstream is dropped.
    let stalled = Instant::now();
    let up = &upstream;
    common::eventually("the upstream stream is cancelled", || async move {
        up.cancelled_streams() == 1
    })
    .await;
    let cut_after = stalled.elapsed();
    println!("stalled reader: upstream aborted {cut_after:?} after the client stopped reading");
    assert!(cut_after >= Duration::from_millis(900), "{cut_after:?}");
    assert_eq!(upstream.completed_streams(), 0);

    let records = gateway.usage_records(1).await;
    let record = records
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .unwrap();
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["status"], 499, "{record}");
    drop(client);
    gateway.stop().await;
}

// === item 4: overload ===

#[tokio::test]
async fn two_thousand_requests_against_a_limit_of_500_get_a_fast_503_while_admin_answers() {
    const TOTAL: usize = 2_000;
    const LIMIT: usize = 500;
    const UPSTREAM_DELAY: Duration = Duration::from_secs(8);
    let upstream = MockUpstream::start_with(MockConfig {
        default_reply: Reply::Ok.delayed(UPSTREAM_DELAY.as_millis() as u64),
        record_requests: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), &format!("[proxy]\nmax_in_flight = {LIMIT}\n")).await;
    gateway
        .add_openai_backend("slow", &upstream.openai_base_url(), "m")
        .await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let requests: Vec<_> = (0..TOTAL)
        .map(|_| {
            let request = client
                .post(format!("{}/v1/chat/completions", gateway.url))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
            tokio::spawn(async move {
                let sent = Instant::now();
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, retry_after, body, sent.elapsed())
            })
        })
        .collect();

    // While the admitted requests wait on the upstream, health and the admin API answer.
    let up = &upstream;
    common::eventually("the limit is reached upstream", || async move {
        up.calls() >= LIMIT
    })
    .await;
    let health = client
        .get(format!("{}/healthz", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let backends = gateway
        .admin(reqwest::Method::GET, "/backends")
        .send()
        .await
        .unwrap();
    assert_eq!(backends.status(), 200);
    let admin_answered_at = started.elapsed();
    assert!(
        admin_answered_at < UPSTREAM_DELAY,
        "the admin API answered only after the upstream released ({admin_answered_at:?})"
    );

    let mut ok = 0;
    let mut overloaded = Vec::new();
    for request in requests {
        let (status, retry_after, body, took) = request.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                overloaded.push(took);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    overloaded.sort();
    let slowest = overloaded.last().copied().unwrap_or_default();
    println!(
        "{TOTAL} requests, limit {LIMIT}: {ok} served, {} answered 503 (median {:?}, slowest {slowest:?}); admin answered {admin_answered_at:?} in",
        overloaded.len(),
        overloaded.get(overloaded.len() / 2).copied().unwrap_or_default(),
    );
    assert!(ok >= LIMIT, "{ok}");
    assert!(
        overloaded.len() >= TOTAL - LIMIT - 100,
        "{}",
        overloaded.len()
    );
    assert_eq!(ok + overloaded.len(), TOTAL);
    // Refused at once: none of them waited for an upstream slot.
    assert!(slowest < UPSTREAM_DELAY, "{slowest:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_keys_max_parallel_requests_gives_429_with_retry_after() {
    let upstream = MockUpstream::start_with(MockConfig {
        default_reply: Reply::Ok.delayed(1_500),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(dir.path(), "").await;
    gateway
        .add_openai_backend("one", &upstream.openai_base_url(), "m")
        .await;
    let created: Value = gateway
        .admin(reqwest::Method::POST, "/keys")
        .json(&json!({"name": "app", "max_parallel_requests": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["max_parallel_requests"], 2, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();

    let requests: Vec<_> = (0..5)
        .map(|_| {
            let request = gateway
                .client
                .post(format!("{}/v1/chat/completions", gateway.url))
                .bearer_auth(&key)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").cloned();
                let body: Value = response.json().await.unwrap();
                (status, retry_after, body)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let (status, retry_after, body) = request.await.unwrap();
        if status == 429 {
            assert_eq!(retry_after.unwrap(), "1");
            assert_eq!(
                body["error"]["code"], "concurrency_limit_exceeded",
                "{body}"
            );
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // The slots are free again once the answers are done.
    let again = gateway
        .client
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(&key)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let records = gateway.usage_records(6).await;
    let refused = records
        .iter()
        .filter(|r| r["error_kind"] == "concurrency_limit_exceeded")
        .count();
    assert_eq!(refused, 3, "{records:?}");
    gateway.stop().await;
}

// === the thread-per-core runtime (#13) ===

#[tokio::test]
async fn the_thread_per_core_runtime_serves_answers_and_streams_and_records_every_request() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Binary::start(
        dir.path(),
        "[server]\nruntime = \"thread_per_core\"\nper_core_threads = 2\n",
    )
    .await;
    gateway
        .add_openai_backend("one", &upstream.openai_base_url(), "m")
        .await;
    // Each request on its own connection (the test client keeps none idle), so both per-core
    // listeners get some; every third is a stream.
    assert_eq!(chats_at_once(&gateway, "m", 24, 3).await, 8);
    assert_eq!(upstream.calls(), 24);
    // An HTTP/2 backend: each per-core thread's own client speaks h2c to it, answers and
    // streams alike.
    let h2_upstream = MockUpstream::start().await;
    gateway
        .add_backend(json!({
            "name": "two",
            "api_base_url": h2_upstream.openai_base_url(),
            "api_key": "sk-two-secret-key-0001",
            "http_version": "http2",
            "model_mappings": {"m2": "up-m2"},
        }))
        .await;
    assert_eq!(chats_at_once(&gateway, "m2", 8, 2).await, 4);
    let seen = h2_upstream.requests();
    assert_eq!(seen.len(), 8);
    assert!(
        seen.iter().all(|request| request.version == "HTTP/2.0"),
        "{:?}",
        seen.iter().map(|r| &r.version).collect::<Vec<_>>()
    );
    let records = gateway.usage_records(32).await;
    assert_eq!(records.len(), 32, "{records:?}");
    assert!(records.iter().all(|r| r["status"] == 200), "{records:?}");
    // A graceful stop (SIGTERM) ends the per-core threads too: the process exits 0.
    let log = gateway.stop().await;
    assert!(
        log.contains("server_runtime=\"thread_per_core\"") && log.contains("per_core_threads=2"),
        "{log}"
    );
    assert!(log.contains("usage records flushed"), "{log}");
}

/// Sends `count` chat completions for `model` at once, every `stream_every`-th a stream, and
/// checks each answer: 200, a stream ending in `[DONE]` or a JSON answer with usage. Returns
/// the number of streams.
async fn chats_at_once(gateway: &Binary, model: &str, count: usize, stream_every: usize) -> usize {
    let requests: Vec<_> = (0..count)
        .map(|i| {
            let request = gateway.proxy("/v1/chat/completions").json(&json!({
                "model": model,
                "stream": i % stream_every == 0,
                "messages": [{"role": "user", "content": "hi"}],
            }));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            })
        })
        .collect();
    let mut streams_done = 0;
    for request in requests {
        let (status, text) = request.await.unwrap();
        assert_eq!(status, 200, "{text}");
        if text.starts_with("data: ") {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            streams_done += 1;
        } else {
            let body: Value = serde_json::from_str(&text).unwrap();
            assert!(
                body["usage"]["total_tokens"].as_u64().unwrap() > 0,
                "{body}"
            );
        }
    }
    streams_done
}
