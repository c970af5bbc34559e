//! Streaming through the real router and real (mock) upstreams on port 0: SSE passes through byte
//! for byte and event by event; the usage chunk poolgate injected is stripped; no retry after the
//! first streamed byte but fail-over before it; a client that leaves cancels the upstream; the
//! idle and first-byte timeouts; `/v1/completions` streams; the shape of the mid-stream error
//! event; and — with the real binary — no usage record lost across a SIGTERM.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::served::Served;
use common::Gateway;
use futures_util::StreamExt;
use mock_upstream::{MockConfig, MockUpstream, Reply, StreamSpec};
use serde_json::{json, Value};
use tokio::time::Instant;

/// The canonical model every test routes; backends map it to `up-gpt-stream`.
const MODEL: &str = "gpt-stream";

// === helpers ===

/// One SSE event as the client received it.
#[derive(Debug)]
struct Event {
    /// The event's text, blank line excluded.
    text: String,
    /// Its `data` lines joined by `\n`.
    data: String,
    /// When the client had it whole, from the start of the request.
    at: Duration,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }

    fn is_error(&self) -> bool {
        self.json().get("error").is_some()
    }

    /// The `"choices": []` chunk that carries only usage.
    fn is_usage_only(&self) -> bool {
        self.json()["choices"].as_array().is_some_and(Vec::is_empty)
    }

    /// Non-empty content: `delta.content` (chat) or `text` (legacy completions).
    fn content(&self) -> Option<String> {
        let json = self.json();
        let choice = &json["choices"][0];
        choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    }
}

/// A streamed answer read to its end.
#[derive(Debug)]
struct Streamed {
    status: u16,
    headers: reqwest::header::HeaderMap,
    raw: Vec<u8>,
    /// The body as the client's HTTP stack handed it over, one entry per non-empty frame.
    frames: Vec<Bytes>,
    events: Vec<Event>,
    /// Bytes after the last blank line.
    tail: String,
    /// The body failed instead of ending cleanly.
    transport_error: Option<String>,
    /// When the body ended, from the start of the request.
    ended: Duration,
}

impl Streamed {
    fn content(&self) -> String {
        self.events.iter().filter_map(Event::content).collect()
    }

    fn content_events(&self) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| e.content().is_some())
            .collect()
    }

    fn request_id(&self) -> String {
        self.headers
            .get("x-request-id")
            .expect("x-request-id header")
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// Ended with `data: [DONE]`, cleanly, and nothing after it.
    fn assert_complete(&self) {
        assert_eq!(self.transport_error, None, "{}", self.text());
        assert!(
            self.events.last().is_some_and(Event::is_done),
            "the stream must end with data: [DONE]:\n{}",
            self.text()
        );
        assert_eq!(self.tail, "", "bytes after the last event");
        assert!(!self.events.iter().any(Event::is_error), "{}", self.text());
    }
}

fn parse_event(bytes: &[u8], at: Duration) -> Event {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let data = text
        .split('\n')
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|value| value.strip_prefix(' ').unwrap_or(value))
        .collect::<Vec<_>>()
        .join("\n");
    Event { text, data, at }
}

/// Reads the whole body event by event, noting when each event arrived; panics if it takes more
/// than 10 s (a hang).
async fn read_stream(response: reqwest::Response, start: Instant) -> Streamed {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut raw = Vec::new();
    let mut frames = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut transport_error = None;
    loop {
        let next = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the stream did not end within 10 s");
        match next {
            None => break,
            Some(Err(error)) => {
                transport_error = Some(format!("{error:?}"));
                break;
            }
            Some(Ok(bytes)) => {
                let at = start.elapsed();
                raw.extend_from_slice(&bytes);
                pending.extend_from_slice(&bytes);
                if !bytes.is_empty() {
                    frames.push(bytes);
                }
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    events.push(parse_event(&event[..end], at));
                }
            }
        }
    }
    Streamed {
        status,
        headers,
        raw,
        frames,
        events,
        tail: String::from_utf8_lossy(&pending).into_owned(),
        transport_error,
        ended: start.elapsed(),
    }
}

fn chat_body(stream_options: Option<Value>) -> Value {
    let mut body = json!({
        "model": MODEL,
        "stream": true,
        "messages": [{"role": "user", "content": "tell me a story"}],
    });
    if let Some(options) = stream_options {
        body["stream_options"] = options;
    }
    body
}

fn completion_body() -> Value {
    json!({"model": MODEL, "stream": true, "prompt": "once upon a time"})
}

/// Sends a streaming request through the gateway; returns when the response headers arrived.
async fn send(gateway: &Gateway, path: &str, body: &Value) -> (Instant, reqwest::Response) {
    let start = Instant::now();
    let response = gateway.proxy(path).json(body).send().await.unwrap();
    (start, response)
}

/// Sends and reads the whole stream.
async fn stream(gateway: &Gateway, path: &str, body: &Value) -> Streamed {
    let (start, response) = send(gateway, path, body).await;
    read_stream(response, start).await
}

/// Adds an OpenAI backend serving [`MODEL`] in `pool`, with a time-to-first-byte limit; returns
/// its id.
async fn add_backend(
    gateway: &Gateway,
    name: &str,
    upstream: &MockUpstream,
    pool: &str,
    timeout_seconds: u32,
) -> String {
    let created = gateway
        .add_backend(json!({
            "name": name,
            "api_base_url": upstream.openai_base_url(),
            "api_key": format!("sk-{name}-secret-key-0001"),
            "pool": pool,
            "timeout_seconds": timeout_seconds,
            "model_mappings": { MODEL: { "upstream_model": format!("up-{MODEL}") } },
        }))
        .await;
    created["id"].as_str().unwrap().to_owned()
}

/// The usage record of one request (by `x-request-id`), polling up to 5 s for it to be written.
async fn usage_record(gateway: &Gateway, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = gateway.usage_records(0).await;
        if let Some(record) = records.iter().find(|r| r["request_id"] == request_id) {
            return record.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no usage record for {request_id}; records: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the OpenAI SDKs raise on: a `data:`-only event (no `event:` name) whose JSON has
/// `error.message`, `error.type` and `error.code` as strings.
fn assert_openai_error_event(event: &Event, code: &str) {
    assert!(
        !event.text.lines().any(|line| line.starts_with("event:")),
        "an SDK only checks unnamed events for `error`: {:?}",
        event.text
    );
    let json: Value = serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("error event is not JSON ({e}): {:?}", event.data));
    let error = &json["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert!(
        error["type"].as_str().is_some_and(|t| !t.is_empty()),
        "{json}"
    );
    assert_eq!(error["code"], code, "{json}");
}

/// Replaces every `"created":<digits>` by `"created":0`; returns the text and the values seen.
fn normalize_created(text: &str) -> (String, Vec<u64>) {
    const KEY: &str = "\"created\":";
    let mut out = String::with_capacity(text.len());
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        out.push_str(&rest[..i + KEY.len()]);
        rest = &rest[i + KEY.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        values.push(rest[..digits].parse().unwrap());
        out.push('0');
        rest = &rest[digits..];
    }
    out.push_str(rest);
    (out, values)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === 1. byte-identical pass-through ===

/// Method: the gateway's upstream (mock A) and a reference mock B are both fresh, so the request
/// is number 1 on each and the ids (`chatcmpl-mock-1`) agree. B is sent exactly the body A
/// received from the gateway (mapped model included), with the same scripted reply, so B's
/// answer is what A sent the gateway. The only other per-request value, `created` (Unix
/// seconds), may tick between the two calls: it is checked to lie inside the test's time window
/// and then zeroed in both before a byte-for-byte comparison.
#[tokio::test]
async fn stream_passes_through_byte_for_byte_when_the_client_asks_for_usage() {
    let spec = StreamSpec::new(4)
        .gap_ms(20)
        .content("Hello brave new world");
    let upstream = MockUpstream::start().await;
    let reference = MockUpstream::start().await;
    upstream.push(Reply::Stream(spec.clone()));
    reference.push(Reply::Stream(spec));
    let gateway = Gateway::start().await;
    add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let before = unix_now();
    let got = stream(
        &gateway,
        "/v1/chat/completions",
        &chat_body(Some(json!({"include_usage": true}))),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    let content_type = got.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert!(got.request_id().starts_with("req_"), "{}", got.request_id());

    // Nothing was injected: the upstream saw the client's own stream_options.
    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent.body["model"], format!("up-{MODEL}"));
    // The usage chunk the client asked for is kept.
    let usage_chunk = got
        .events
        .iter()
        .find(|e| e.is_usage_only())
        .expect("the usage chunk the client asked for");
    assert_eq!(usage_chunk.json()["usage"]["total_tokens"], 14);

    // What the upstream sent, replayed on the reference mock.
    let direct = reqwest::Client::new()
        .post(format!("{}/chat/completions", reference.openai_base_url()))
        .json(&sent.body)
        .send()
        .await
        .unwrap();
    let expected = read_stream(direct, Instant::now()).await;
    expected.assert_complete();
    let after = unix_now();

    let (got_text, created) = normalize_created(&got.text());
    let (expected_text, _) = normalize_created(&expected.text());
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|&c| (before..=after).contains(&c)),
        "created {created:?} outside {before}..={after}"
    );
    assert_eq!(got_text, expected_text);
    assert_eq!(got.raw.len(), expected.raw.len());
    gateway.stop().await;
}

// === 2. injected usage is read and stripped ===

#[tokio::test]
async fn injected_usage_is_recorded_and_stripped_from_the_client_stream() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Stream(
        StreamSpec::new(5).content("one two three four five"),
    ));
    let gateway = Gateway::start().await;
    let backend_id = add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    assert_eq!(got.content(), "one two three four five");

    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert!(
        !got.events.iter().any(Event::is_usage_only),
        "the injected usage chunk reached the client:\n{}",
        got.text()
    );
    assert!(!got.text().contains("\"choices\":[]"), "{}", got.text());

    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["prompt_tokens"], 10, "{record}");
    assert_eq!(record["completion_tokens"], 5, "{record}");
    assert_eq!(record["total_tokens"], 15, "{record}");
    assert_eq!(record["streamed"], true, "{record}");
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(record["backend_id"], backend_id.as_str(), "{record}");
    assert!(record["ttfb_ms"].is_u64(), "{record}");
    assert!(
        record["ttfb_ms"].as_u64() <= record["latency_ms"].as_u64(),
        "{record}"
    );
    gateway.stop().await;
}

// === 3. event by event ===

#[tokio::test]
async fn events_reach_the_client_as_they_arrive_not_buffered() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Stream(StreamSpec::new(6).gap_ms(150)));
    let gateway = Gateway::start().await;
    add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    got.assert_complete();
    let content = got.content_events();
    assert_eq!(content.len(), 6, "{}", got.text());
    let first = content[0].at;
    let last = content[5].at;
    assert!(
        first + Duration::from_millis(400) < got.ended,
        "first content at {first:?}, stream ended at {:?}: buffered",
        got.ended
    );
    assert!(
        last - first >= Duration::from_millis(500),
        "6 chunks 150 ms apart arrived within {:?}",
        last - first
    );
    let mut arrivals: Vec<Duration> = content.iter().map(|e| e.at).collect();
    arrivals.dedup();
    assert!(
        arrivals.len() >= 4,
        "chunks arrived in clumps: {arrivals:?}"
    );
    gateway.stop().await;
}

// === 4. no retry after the first streamed byte ===

/// The role chunk is held until the first content (so a stream that dies before it can fail
/// over); once that comes, both go out in one frame — one write — and the relay goes on event by
/// event.
#[tokio::test]
async fn the_held_role_chunk_and_the_first_content_go_out_in_one_frame() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Stream(StreamSpec::new(3).gap_ms(100)));
    let gateway = Gateway::start().await;
    add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    let frames: Vec<String> = got
        .frames
        .iter()
        .map(|frame| String::from_utf8_lossy(frame).into_owned())
        .collect();
    let first = &frames[0];
    assert!(first.contains("\"role\":\"assistant\""), "{frames:#?}");
    assert!(
        first.contains("chunk0"),
        "the first content came apart: {frames:#?}"
    );
    assert!(!first.contains("chunk1"), "{frames:#?}");
    // The next contents, 100 ms apart, each in a frame of its own.
    let with = |text: &str| frames.iter().position(|f| f.contains(text));
    assert_eq!(with("chunk1"), Some(1), "{frames:#?}");
    assert_eq!(with("chunk2"), Some(2), "{frames:#?}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_stream_dying_midway_ends_with_an_error_event_and_is_not_retried() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    first.push(Reply::Stream(StreamSpec::new(5).gap_ms(30).die_after(2)));
    let gateway = Gateway::start().await;
    let first_id = add_backend(&gateway, "first", &first, "primary", 60).await;
    let second_id = add_backend(&gateway, "second", &second, "fallback", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.transport_error, None,
        "the client's body must end cleanly"
    );
    assert_eq!(got.content(), "chunk0 chunk1", "{}", got.text());
    let last = got.events.last().unwrap();
    assert!(last.is_error(), "{}", got.text());
    assert_openai_error_event(last, "upstream_stream_error");
    assert!(!got.events.iter().any(Event::is_done), "{}", got.text());
    assert_eq!(got.tail, "");
    assert_eq!(first.calls(), 1);
    assert_eq!(second.calls(), 0, "retried after bytes reached the client");

    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["outcome"], "stream_error", "{record}");
    assert_eq!(record["error_kind"], "upstream_stream_error", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(record["backend_id"], first_id.as_str(), "{record}");

    // The first backend is in a short error cooldown (5 s by default)...
    let view = gateway.backend(&first_id).await;
    assert_eq!(view["status"], "cooling", "{view}");
    let remaining = view["cooldown_remaining_ms"].as_u64().unwrap();
    assert!((1..=5_000).contains(&remaining), "{view}");
    assert_eq!(view["last_error"], "stream ended unexpectedly", "{view}");
    // ... so the next request goes to the second one.
    let next = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    next.assert_complete();
    assert_eq!(second.calls(), 1);
    let record = usage_record(&gateway, &next.request_id()).await;
    assert_eq!(record["backend_id"], second_id.as_str(), "{record}");
    gateway.stop().await;
}

// === 5. failure before the first byte fails over ===

#[tokio::test]
async fn a_dropped_connection_before_the_first_byte_fails_over() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    first.push(Reply::Drop);
    let gateway = Gateway::start().await;
    add_backend(&gateway, "first", &first, "primary", 60).await;
    let second_id = add_backend(&gateway, "second", &second, "fallback", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    assert_eq!(got.content(), "chunk0 chunk1 chunk2");
    assert_eq!((first.calls(), second.calls()), (1, 1));
    assert_eq!(second.completed_streams(), 1);

    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["attempts"], 2, "{record}");
    assert_eq!(record["backend_id"], second_id.as_str(), "{record}");
    assert_eq!(record["total_tokens"], 13, "{record}");
    gateway.stop().await;
}

/// A legacy completion stream has no role preamble, so `die_after(0)` dies after the headers but
/// before any byte of the body: the gateway has nothing to commit yet and tries the next backend.
#[tokio::test]
async fn a_stream_dying_before_its_first_byte_fails_over() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    first.push(Reply::Stream(StreamSpec::new(3).die_after(0)));
    let gateway = Gateway::start().await;
    let first_id = add_backend(&gateway, "first", &first, "primary", 60).await;
    let second_id = add_backend(&gateway, "second", &second, "fallback", 60).await;

    let got = stream(&gateway, "/v1/completions", &completion_body()).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    assert_eq!(got.content(), "chunk0 chunk1 chunk2");
    assert_eq!((first.calls(), second.calls()), (1, 1));

    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["attempts"], 2, "{record}");
    assert_eq!(record["backend_id"], second_id.as_str(), "{record}");
    assert_eq!(gateway.backend(&first_id).await["status"], "cooling");
    gateway.stop().await;
}

// === 6. client disconnect ===

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_upstream_and_records_499() {
    let upstream = MockUpstream::start().await;
    // Two minutes of chunks: only the client leaving can end it in time.
    upstream.push(Reply::Stream(StreamSpec::new(600).gap_ms(200)));
    let gateway = Gateway::start().await;
    let backend_id = add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let (_, response) = send(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("chunk0") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("first chunk")
            .expect("body still open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);

    let up = &upstream;
    common::eventually("the upstream stream is cancelled", || async move {
        up.cancelled_streams() == 1
    })
    .await;
    assert_eq!(upstream.completed_streams(), 0);

    let record = usage_record(&gateway, &request_id).await;
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["error_kind"], "client_closed", "{record}");
    assert_eq!(record["streamed"], true, "{record}");
    let (gw, id) = (&gateway, backend_id.as_str());
    common::eventually("the backend's in-flight slot is released", || async move {
        gw.backend(id).await["in_flight"] == 0
    })
    .await;
    gateway.stop().await;
}

/// "Exactly one usage record per client request, whatever happened" — also when the client
/// gives up while the gateway is still waiting for the upstream's first byte.
#[tokio::test]
async fn a_client_leaving_before_the_first_byte_still_gets_a_usage_record() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Hang);
    let gateway = Gateway::start().await;
    let backend_id = add_backend(&gateway, "one", &upstream, "primary", 60).await;

    // The client leaves once the gateway is waiting for the upstream.
    let request = gateway
        .proxy("/v1/chat/completions")
        .json(&chat_body(None))
        .send();
    let client = tokio::spawn(request);
    let up = &upstream;
    common::eventually("the request reached the upstream", || async move {
        up.calls() == 1
    })
    .await;
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());

    let deadline = Instant::now() + Duration::from_secs(3);
    let records = loop {
        let records = gateway.usage_records(0).await;
        if !records.is_empty() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        records.len(),
        1,
        "a client that left before the first byte left no usage record"
    );
    assert_eq!(records[0]["outcome"], "cancelled", "{}", records[0]);
    assert_eq!(records[0]["status"], 499, "{}", records[0]);
    assert_eq!(
        gateway.backend(&backend_id).await["in_flight"],
        0,
        "in-flight slot leaked"
    );
    gateway.stop().await;
}

// === 7. idle timeout between chunks ===

const IDLE_1S: &str = "[proxy]\nstream_idle_timeout_seconds = 1\n";

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event_after_the_idle_timeout() {
    let upstream = MockUpstream::start().await;
    // The upstream falls silent after its first content chunk.
    upstream.push(Reply::Stream(StreamSpec::new(3).stall_after(1)));
    let gateway = Gateway::start_with(IDLE_1S, None).await;
    let backend_id = add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.transport_error, None, "the body must end cleanly");
    assert!(got.events.len() >= 2, "{}", got.text());
    let error = got.events.last().unwrap();
    let before = &got.events[got.events.len() - 2];
    assert_eq!(before.json()["choices"][0]["delta"]["content"], "chunk0");
    assert_openai_error_event(error, "upstream_stream_stalled");
    // The stream ended (`read_stream` allows 10 s) long before the upstream's next chunk: the
    // idle timeout cut it, not before about a second of silence.
    let silence = error.at - before.at;
    assert!(
        silence >= Duration::from_millis(800),
        "error event {silence:?} after the last chunk (idle timeout 1 s)"
    );
    assert_eq!(got.content(), "chunk0");

    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["outcome"], "stream_error", "{record}");
    assert_eq!(record["error_kind"], "upstream_stream_stalled", "{record}");
    assert_eq!(gateway.backend(&backend_id).await["status"], "cooling");
    gateway.stop().await;
}

/// 8 chunks x 400 ms = 3.2 s: longer than the idle timeout (1 s) and the backend's
/// time-to-first-byte limit (2 s), but no gap exceeds either, so nothing cuts it.
#[tokio::test]
async fn a_long_healthy_stream_is_not_cut_by_idle_or_first_byte_timeouts() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Stream(StreamSpec::new(8).gap_ms(400)));
    let gateway = Gateway::start_with(IDLE_1S, None).await;
    add_backend(&gateway, "one", &upstream, "primary", 2).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200);
    got.assert_complete();
    assert_eq!(got.content_events().len(), 8, "{}", got.text());
    assert!(got.ended >= Duration::from_millis(3_200), "{:?}", got.ended);
    assert_eq!(upstream.completed_streams(), 1);
    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["completion_tokens"], 8, "{record}");
    gateway.stop().await;
}

// === 8. time-to-first-byte timeout on streams ===

#[tokio::test]
async fn a_stream_slower_than_the_first_byte_timeout_fails_over() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    first.push(Reply::Hang);
    let gateway = Gateway::start().await;
    let first_id = add_backend(&gateway, "first", &first, "primary", 1).await;
    let second_id = add_backend(&gateway, "second", &second, "fallback", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    assert_eq!(got.content(), "chunk0 chunk1 chunk2");
    // `first` never answers: the stream came from `second` after the 1 s first-byte timeout.
    let first_event = got.events[0].at;
    assert!(
        first_event >= Duration::from_millis(1_000),
        "first event after {first_event:?}, before the 1 s first-byte timeout"
    );
    assert_eq!((first.calls(), second.calls()), (1, 1));

    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["attempts"], 2, "{record}");
    assert_eq!(record["backend_id"], second_id.as_str(), "{record}");
    let view = gateway.backend(&first_id).await;
    assert_eq!(view["status"], "cooling", "{view}");
    assert_eq!(view["last_error"], "upstream timed out", "{view}");
    gateway.stop().await;
}

// === 9. legacy completions ===

#[tokio::test]
async fn completions_stream_passes_through_with_usage_recorded() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Stream(
        StreamSpec::new(4).gap_ms(10).content("the quick brown fox"),
    ));
    let gateway = Gateway::start().await;
    add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let got = stream(&gateway, "/v1/completions", &completion_body()).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    assert!(got.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(got.content(), "the quick brown fox");
    assert!(got
        .events
        .iter()
        .filter(|e| !e.is_done())
        .all(|e| e.json()["object"] == "text_completion"));
    assert!(
        !got.events.iter().any(Event::is_usage_only),
        "{}",
        got.text()
    );

    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.path, "/v1/completions");
    assert_eq!(sent.body["prompt"], "once upon a time");
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    let record = usage_record(&gateway, &got.request_id()).await;
    assert_eq!(record["endpoint"], "completions", "{record}");
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["streamed"], true, "{record}");
    assert_eq!(record["prompt_tokens"], 10, "{record}");
    assert_eq!(record["completion_tokens"], 4, "{record}");
    assert_eq!(record["total_tokens"], 14, "{record}");
    gateway.stop().await;
}

// === 11. the error event's format ===

#[tokio::test]
async fn the_mid_stream_error_event_is_what_openai_sdks_raise_on() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Stream(StreamSpec::new(3).die_after(1)));
    let gateway = Gateway::start().await;
    add_backend(&gateway, "one", &upstream, "primary", 60).await;

    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.transport_error, None);
    assert_eq!(
        got.tail, "",
        "the error event must be terminated by a blank line"
    );
    let errors: Vec<&Event> = got.events.iter().filter(|e| e.is_error()).collect();
    assert_eq!(errors.len(), 1, "{}", got.text());
    assert!(std::ptr::eq(errors[0], got.events.last().unwrap()));
    assert_openai_error_event(errors[0], "upstream_stream_error");
    let json = errors[0].json();
    assert_eq!(json["error"]["type"], "upstream_error", "{json}");
    assert!(json["error"].get("param").is_some(), "{json}");
    // The message is generic: no upstream URL or address leaks to the client.
    let message = json["error"]["message"].as_str().unwrap();
    assert!(!message.contains("127.0.0.1"), "{message}");
    gateway.stop().await;
}

// === 10. SIGTERM of the real binary ===

const BIN_ADMIN_TOKEN: &str = "sigterm-test-admin-tok-0123456789abcdefg";

/// The real `poolgate serve` in a temp data dir, on port 0, with one backend pointing at a
/// mock upstream. Killed if the test ends before it exits.
struct Binary {
    served: Served,
    dir: tempfile::TempDir,
    url: String,
    client: reqwest::Client,
}

impl Binary {
    async fn start(upstream: &MockUpstream, proxy_toml: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BIN_ADMIN_TOKEN.len(), 40);
        std::fs::write(dir.path().join("admin-token"), BIN_ADMIN_TOKEN).unwrap();
        let config = dir.path().join("poolgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[proxy]
{proxy_toml}

[usage]
flush_interval_ms = 50

[[backends]]
name = "mock"
api_base_url = "{}"
api_key = "sk-test-key-123456"

[backends.model_mappings]
"{MODEL}" = "up-{MODEL}"
"#,
                upstream.openai_base_url()
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap().to_owned();
        let mut served = Served::spawn(dir.path(), &["--config", &config], &[]);
        let url = served.url().await;
        Binary {
            served,
            dir,
            url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn log(&self) -> String {
        self.served.log()
    }

    fn sigterm(&self) {
        self.served.sigterm();
    }

    /// Waits for the process to exit (at most `limit`) and returns its status.
    async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.served.exit(limit).await
    }

    /// Sends a chat completion in a task; the task yields (streamed, status, body). `started`
    /// counts streams whose first body bytes arrived.
    fn spawn_request(
        &self,
        i: usize,
        streaming: bool,
        started: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> tokio::task::JoinHandle<Result<(bool, u16, String), String>> {
        let request = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(BIN_ADMIN_TOKEN)
            .json(&json!({
                "model": MODEL,
                "stream": streaming,
                "messages": [{"role": "user", "content": format!("request {i}")}],
            }));
        let started = std::sync::Arc::clone(started);
        tokio::spawn(async move {
            let response = request.send().await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            let mut chunks = response.bytes_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| format!("{e:?}"))?;
                if body.is_empty() && streaming {
                    started.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                body.extend_from_slice(&chunk);
            }
            Ok((streaming, status, String::from_utf8(body).unwrap()))
        })
    }

    /// The usage records in the database (after exit).
    async fn usage_rows(&self) -> (u64, Vec<poolgate::domain::UsageRecord>) {
        let config = common::config_for("", self.dir.path());
        let control = poolgate::control::ControlPlane::open(std::sync::Arc::new(config))
            .await
            .unwrap();
        let count = control.usage_count().await.unwrap();
        let page = control
            .usage_page(&poolgate::usage::UsageFilter {
                limit: Some(1000),
                ..poolgate::usage::UsageFilter::default()
            })
            .await
            .unwrap();
        control.shutdown().await;
        (count, page.records)
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish_and_loses_no_usage_record() {
    const REQUESTS: usize = 30;
    // Every answer waits 300 ms; streams then send 10 chunks 100 ms apart.
    let upstream = MockUpstream::start_with(MockConfig {
        default_reply: Reply::Ok.delayed(300),
        stream_defaults: StreamSpec::new(10).gap_ms(100),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut binary = Binary::start(&upstream, "shutdown_grace_seconds = 20").await;

    // Half the requests stream; the signal comes once every stream has delivered its first
    // bytes (so they are mid-stream) and every JSON request is waiting at the upstream.
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks: Vec<_> = (0..REQUESTS / 2)
        .map(|i| binary.spawn_request(i, true, &started))
        .collect();
    let counter = &started;
    common::eventually("every stream has started", || async move {
        counter.load(std::sync::atomic::Ordering::Acquire) == REQUESTS / 2
    })
    .await;
    tasks.extend((REQUESTS / 2..REQUESTS).map(|i| binary.spawn_request(i, false, &started)));
    // Every request reached the upstream, so the gateway accepted it; none has finished yet.
    let up = &upstream;
    common::eventually("all requests reach the upstream", || async move {
        up.calls() == REQUESTS
    })
    .await;
    assert_eq!(upstream.completed_streams(), 0, "the signal came too late");
    binary.sigterm();

    let mut answered = 0;
    for task in tasks {
        let (streaming, status, body) = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("an in-flight request failed at shutdown: {e}"));
        assert_eq!(status, 200, "{body}");
        if streaming {
            assert!(
                body.ends_with("data: [DONE]\n\n"),
                "an in-flight stream was cut at shutdown:\n{body}"
            );
            let content: String = body
                .split("\n\n")
                .filter_map(|event| parse_event(event.as_bytes(), Duration::ZERO).content())
                .collect();
            assert_eq!(content.split_whitespace().count(), 10, "{body}");
        } else {
            let json: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["usage"]["total_tokens"], 20, "{body}");
        }
        answered += 1;
    }
    assert_eq!(upstream.completed_streams(), REQUESTS / 2);

    let status = binary.exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}:\n{}", binary.log());
    let (count, records) = binary.usage_rows().await;
    assert_eq!(
        count,
        answered as u64,
        "usage records lost at shutdown:\n{}",
        binary.log()
    );
    assert!(records
        .iter()
        .all(|r| r.outcome == poolgate::domain::Outcome::Success));
    assert_eq!(
        records
            .iter()
            .filter(|r| r.streamed && r.total_tokens == Some(20))
            .count(),
        REQUESTS / 2
    );
}

/// When the grace period runs out, the streams still running are cut — but their usage records
/// must still be written ("work that must finish is not lost"): one row per request, none lost.
#[tokio::test]
async fn streams_cut_when_the_grace_period_ends_still_leave_usage_records() {
    const STREAMS: usize = 4;
    // 20 chunks 2 s apart: 40 s, far longer than the 1 s grace period and the 15 s the exit may
    // take.
    let upstream = MockUpstream::start_with(MockConfig {
        stream_defaults: StreamSpec::new(20).gap_ms(2_000),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut binary = Binary::start(&upstream, "shutdown_grace_seconds = 1").await;
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| binary.spawn_request(i, true, &started))
        .collect();
    let counter = &started;
    common::eventually("every stream has started", || async move {
        counter.load(std::sync::atomic::Ordering::Acquire) == STREAMS
    })
    .await;
    binary.sigterm();

    let status = binary.exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}:\n{}", binary.log());
    for task in tasks {
        // Cut: a transport error, or a body without [DONE].
        if let Ok((_, _, body)) = task.await.unwrap() {
            assert!(!body.ends_with("data: [DONE]\n\n"), "{body}");
        }
    }
    let (count, records) = binary.usage_rows().await;
    assert_eq!(
        count,
        STREAMS as u64,
        "usage records of the cut streams were lost: {records:?}\n{}",
        binary.log()
    );
}

// === HTTP/2 towards upstreams ===

/// Adds a backend serving `model` (upstream `up-<model>`) at `upstream` with `http_version`
/// (`None`: the field left out).
async fn add_versioned_backend(
    gateway: &Gateway,
    name: &str,
    upstream: &MockUpstream,
    model: &str,
    http_version: Option<&str>,
) -> Value {
    let mut body = json!({
        "name": name,
        "api_base_url": upstream.openai_base_url(),
        "api_key": format!("sk-{name}-secret-key-0001"),
        "model_mappings": { model: { "upstream_model": format!("up-{model}") } },
    });
    if let Some(version) = http_version {
        body["http_version"] = json!(version);
    }
    gateway.add_backend(body).await
}

#[tokio::test]
async fn an_http2_backend_speaks_h2c_upstream_and_a_default_one_http1() {
    let h2 = MockUpstream::start().await;
    let h1 = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    let created = add_versioned_backend(&gateway, "h2", &h2, MODEL, Some("http2")).await;
    assert_eq!(created["http_version"], "http2");
    let created = add_versioned_backend(&gateway, "h1", &h1, "gpt-plain", None).await;
    assert_eq!(created["http_version"], "auto");

    let (status, body) = gateway.chat(MODEL).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "chunk0 chunk1 chunk2"
    );
    let got = stream(&gateway, "/v1/chat/completions", &chat_body(None)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.assert_complete();
    assert_eq!(got.content(), "chunk0 chunk1 chunk2");
    let versions: Vec<String> = h2.requests().into_iter().map(|r| r.version).collect();
    assert_eq!(versions, ["HTTP/2.0", "HTTP/2.0"]);
    assert_eq!(h2.connections(), 1);

    let (status, body) = gateway.chat("gpt-plain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h1.last_request().unwrap().version, "HTTP/1.1");
    gateway.stop().await;
}

/// Opens `count` streams through the gateway that the upstream holds (it never answers) and
/// waits until all of them reached it; returns the tasks holding them.
async fn hold_streams(
    gateway: &Gateway,
    upstream: &MockUpstream,
    model: &str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    upstream.set_default(Reply::Hang);
    let calls_before = upstream.calls();
    let held = (0..count)
        .map(|_| {
            let request = gateway
                .proxy("/v1/chat/completions")
                .json(&json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}));
            tokio::spawn(async move {
                // Never answered: the task is aborted while waiting.
                let _ = request.send().await;
            })
        })
        .collect();
    common::eventually("every held stream reaches the upstream", || async {
        upstream.calls() == calls_before + count
    })
    .await;
    held
}

#[tokio::test]
async fn fifty_concurrent_streams_share_one_http2_upstream_connection() {
    const STREAMS: usize = 50;
    let h2 = MockUpstream::start().await;
    let h1 = MockUpstream::start().await;
    // One HTTP/2 connection per upstream client: one per process with the work-stealing
    // runtime (one per core with the default thread-per-core runtime, each core's own).
    let gateway = Gateway::start_with("[server]\nruntime = \"work_stealing\"\n", None).await;
    add_versioned_backend(&gateway, "h2", &h2, MODEL, Some("http2")).await;
    add_versioned_backend(&gateway, "h1", &h1, "gpt-plain", Some("http1")).await;

    // All 50 open at the upstream at once: over HTTP/2 on one connection, over HTTP/1.1 on 50.
    let held = hold_streams(&gateway, &h2, MODEL, STREAMS).await;
    assert_eq!(h2.connections(), 1);
    let held_h1 = hold_streams(&gateway, &h1, "gpt-plain", STREAMS).await;
    assert_eq!(h1.connections(), STREAMS);
    for task in held.into_iter().chain(held_h1) {
        task.abort();
    }

    // Streams that run to their end share it too.
    h2.set_default(Reply::Stream(StreamSpec::new(3).gap_ms(5)));
    let body = chat_body(None);
    let streams = (0..STREAMS).map(|_| stream(&gateway, "/v1/chat/completions", &body));
    for got in futures_util::future::join_all(streams).await {
        assert_eq!(got.status, 200, "{}", got.text());
        got.assert_complete();
    }
    assert_eq!(h2.completed_streams(), STREAMS);
    assert_eq!(h2.connections(), 1);
    gateway.stop().await;
}
