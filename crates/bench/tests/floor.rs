//! The `hyper-floor` proxy against a real mock upstream on 127.0.0.1: a chat completion and a
//! streamed answer come back byte for byte as the mock sends them directly (but for the mock's
//! per-request id and clock), the request reaches the mock unchanged but for its hop-by-hop
//! headers, and a stream is relayed as it is produced, not buffered.
#![expect(
    clippy::expect_used,
    reason = "helpers of an integration test: a failure should panic with the message"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mock_upstream::{MockConfig, MockUpstream, Reply, StreamSpec};

/// The floor process, killed when dropped.
struct Floor {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Floor {
    fn start(upstream: SocketAddr) -> Floor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hyper-floor"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &upstream.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting hyper-floor");
        let stdout = child.stdout.take().expect("hyper-floor's stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading hyper-floor's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("hyper-floor printed `{line}`"))
            .parse()
            .expect("hyper-floor's address");
        Floor { child, addr }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The answer: status, content type, the body's frames with when each arrived.
struct Answer {
    status: StatusCode,
    content_type: String,
    frames: Vec<(Duration, Bytes)>,
}

impl Answer {
    fn body(&self) -> Vec<u8> {
        self.frames.iter().flat_map(|(_, b)| b.to_vec()).collect()
    }
}

async fn post(client: &HttpClient, addr: SocketAddr, body: &serde_json::Value) -> Answer {
    let request = Request::post(format!("http://{addr}/v1/chat/completions?api-version=1"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-floor-test")
        .header("x-floor-probe", "kept")
        // Hop-by-hop: neither these nor the header `Connection` names go upstream.
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let sent = Instant::now();
    let answer = client.request(request).await.expect("an answer");
    let status = answer.status();
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut body = answer.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("a body frame").into_data() {
            frames.push((sent.elapsed(), data));
        }
    }
    Answer {
        status,
        content_type,
        frames,
    }
}

/// The body with the mock's per-request values (`chatcmpl-mock-<seq>`, `"created":<unix s>`)
/// blanked, so two answers to the same request compare byte for byte.
fn normalised(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 body");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    loop {
        let next = ["chatcmpl-mock-", "\"created\":"]
            .iter()
            .filter_map(|marker| rest.find(marker).map(|at| (at, marker.len())))
            .min();
        let Some((at, len)) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at + len]);
        out.push('N');
        rest = rest[at + len..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_forwards_answers_and_streams_byte_for_byte() {
    let mock = MockUpstream::start_with(MockConfig::default())
        .await
        .expect("mock upstream");
    let floor = Floor::start(mock.addr());
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // A chat completion.
    let request = serde_json::json!({
        "model": "bench-upstream",
        "messages": [{"role": "user", "content": "ping"}],
    });
    let direct = post(&client, mock.addr(), &request).await;
    let through = post(&client, floor.addr, &request).await;
    assert_eq!(through.status, StatusCode::OK);
    assert_eq!(through.content_type, "application/json");
    let body = through.body();
    assert!(
        String::from_utf8_lossy(&body).contains("\"id\":\"chatcmpl-mock-2\""),
        "the mock's own answer to the second request: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(normalised(&body), normalised(&direct.body()));
    assert_ne!(
        normalised(&body),
        body,
        "the normalisation blanked something"
    );
    let seen = mock.last_request().expect("the mock saw the request");
    assert_eq!(
        (
            seen.method.as_str(),
            seen.path.as_str(),
            seen.query.as_deref()
        ),
        ("POST", "/v1/chat/completions", Some("api-version=1"))
    );
    assert_eq!(seen.body, request);
    assert_eq!(seen.header("authorization"), Some("Bearer sk-floor-test"));
    assert_eq!(seen.header("x-floor-probe"), Some("kept"));
    assert_eq!(seen.header("x-hop"), None);

    // A stream, 3 content chunks 60 ms apart: the same bytes, relayed as they come.
    let request = serde_json::json!({
        "model": "bench-upstream",
        "stream": true,
        "messages": [{"role": "user", "content": "ping"}],
    });
    let spec = StreamSpec::new(3).gap_ms(60);
    mock.push_all([Reply::Stream(spec.clone()), Reply::Stream(spec)]);
    let direct = post(&client, mock.addr(), &request).await;
    let through = post(&client, floor.addr, &request).await;
    assert_eq!(through.status, StatusCode::OK);
    assert_eq!(through.content_type, "text/event-stream");
    let body = through.body();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(
        body.windows(6).filter(|w| w == b"data: ").count(),
        6,
        "role, 3 content chunks, finish, [DONE]"
    );
    assert_eq!(normalised(&body), normalised(&direct.body()));
    // The first event (sent before the first gap) came well before the last (three gaps on).
    let (first, _) = through.frames.first().expect("a first frame");
    let (last, _) = through.frames.last().expect("a last frame");
    assert!(
        *last >= *first + Duration::from_millis(120),
        "the stream was held back: first frame at {first:?}, last at {last:?}"
    );
    assert_eq!(mock.calls(), 4);
    drop(floor);
    mock.shutdown().await;
}
