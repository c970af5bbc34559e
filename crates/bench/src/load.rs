//! The load generator, built on hyper's HTTP/1.1 client: keep-alive connections, latencies in
//! HdrHistograms (nanoseconds).
//!
//! - **closed loop**: N connections, each sends its next request as soon as the previous answer
//!   is complete; gives the throughput ceiling at that concurrency.
//! - **open loop**: a fixed offered rate spread over C connections; each request has a scheduled
//!   send time and its latency counts from that time whenever the connection was still busy with
//!   an earlier request (coordinated omission corrected, as wrk2 does). When the connection was
//!   idle, it counts from the actual send, so the timer's own lateness (tokio sleeps have 1 ms
//!   resolution) is not charged to the server.
//! - **streams**: the same loops with `"stream": true`, plus time to first body byte and the gap
//!   between consecutive SSE events as the client sees them; events sent together (batched)
//!   show up as gaps of 0 and as more events per HTTP body chunk.
//!
//! Thousands of streams held open (HTTP/1.1 or HTTP/2) are [`crate::hold`]'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

type Sender = SendRequest<Full<Bytes>>;

/// Where requests go and what they carry.
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
    path: String,
    /// `http://addr/path`: HTTP/2 carries the authority in the URI, not in `Host`.
    uri: Uri,
    auth: Option<HeaderValue>,
    body: Bytes,
    pub streaming: bool,
}

impl Target {
    /// A `POST /v1/chat/completions` for `model`, as an OpenAI client would send it.
    pub fn chat(
        addr: SocketAddr,
        auth: Option<&str>,
        model: &str,
        streaming: bool,
    ) -> Result<Target> {
        Target::chat_sized(addr, auth, model, streaming, 0)
    }

    /// [`Target::chat`] whose user message is padded with prose until the JSON body is
    /// `body_bytes` long (0 = no padding): agentgateway's published figure uses a 1 KB body.
    pub fn chat_sized(
        addr: SocketAddr,
        auth: Option<&str>,
        model: &str,
        streaming: bool,
        body_bytes: usize,
    ) -> Result<Target> {
        let body = chat_body(model, streaming, body_bytes)?;
        let path = "/v1/chat/completions";
        Ok(Target {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            path: path.to_owned(),
            uri: format!("http://{addr}{path}").parse()?,
            auth: auth
                .map(|key| HeaderValue::from_str(&format!("Bearer {key}")))
                .transpose()?,
            body: Bytes::from(body),
            streaming,
        })
    }

    /// The request body's length in bytes.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// The request for HTTP/1.1: origin-form path and a `Host` header.
    pub fn request(&self) -> Result<Request<Full<Bytes>>> {
        self.build(
            Request::builder()
                .uri(self.path.as_str())
                .header(HOST, self.host.clone()),
        )
    }

    /// The request for HTTP/2: the absolute URI gives `:scheme` and `:authority`.
    pub fn request_h2(&self) -> Result<Request<Full<Bytes>>> {
        self.build(Request::builder().uri(self.uri.clone()))
    }

    fn build(&self, builder: hyper::http::request::Builder) -> Result<Request<Full<Bytes>>> {
        let mut builder = builder
            .method(Method::POST)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        Ok(builder.body(Full::new(self.body.clone()))?)
    }
}

/// A chat completion body for `model`, padded to `body_bytes` (when larger than the bare body).
fn chat_body(model: &str, streaming: bool, body_bytes: usize) -> Result<Vec<u8>> {
    const PROSE: &str =
        "The quick brown fox jumps over the lazy dog while the gateway forwards every byte. ";
    let build = |content: &str| {
        let mut body = serde_json::json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": content}
            ],
            "max_tokens": 32,
            "temperature": 0.2,
        });
        if streaming {
            body["stream"] = serde_json::Value::Bool(true);
        }
        serde_json::to_vec(&body)
    };
    let question = "Say hello in one short sentence.";
    let bare = build(question)?;
    let Some(missing) = body_bytes.checked_sub(bare.len()).filter(|m| *m > 0) else {
        return Ok(bare);
    };
    // Plain ASCII without quotes or backslashes: one byte of JSON per byte of text.
    let mut content = String::with_capacity(missing + question.len() + 1);
    while content.len() < missing - 1 {
        content.push_str(PROSE);
    }
    content.truncate(missing - 1);
    content.push(' ');
    content.push_str(question);
    Ok(build(&content)?)
}

/// Nanosecond histogram: 1 ns to 1 h, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What one load run measured (only requests scheduled after the warm-up count).
pub struct Run {
    /// 2xx answers completed in the measured window.
    pub ok: u64,
    /// 2xx answers completed at any time, warm-up included (for CPU per request).
    pub completed: u64,
    pub errors: u64,
    pub measured: Duration,
    pub latency: Histogram<u64>,
    /// Streams: request sent -> first body byte.
    pub ttfb: Histogram<u64>,
    /// Streams: request sent -> the body chunk that completed the first non-empty `"content"`
    /// (time to first token; a proxy that holds back content-free leading events, as
    /// poolgate's failover does, gives its first byte and its first token together).
    pub ttft: Histogram<u64>,
    /// Streams: time between consecutive SSE events (0 when two arrive in one chunk).
    pub gaps: Histogram<u64>,
    pub events: u64,
    /// Streams: non-empty body chunks (frames) received.
    pub chunks: u64,
}

impl Run {
    /// An empty run; `empty` is the histogram every figure starts from.
    fn new(measured: Duration, empty: &Histogram<u64>) -> Run {
        Run {
            ok: 0,
            completed: 0,
            errors: 0,
            measured,
            latency: empty.clone(),
            ttfb: empty.clone(),
            ttft: empty.clone(),
            gaps: empty.clone(),
            events: 0,
            chunks: 0,
        }
    }

    fn merge(&mut self, other: &Run) {
        self.ok += other.ok;
        self.completed += other.completed;
        self.errors += other.errors;
        self.events += other.events;
        self.chunks += other.chunks;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttfb.add(&other.ttfb);
        let _ = self.ttft.add(&other.ttft);
        let _ = self.gaps.add(&other.gaps);
    }

    /// Completed requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64().max(1e-9)
    }
}

/// Microseconds at quantile `q` of a nanosecond histogram (0 when empty).
pub fn quantile_us(histogram: &Histogram<u64>, q: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(q) as f64 / 1000.0
}

async fn connect(addr: SocketAddr) -> Result<Sender> {
    connect_from(addr, None).await
}

/// Connects to `addr`, from the local address `source` when given (port chosen by the kernel).
pub async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> Result<Sender> {
    let stream = tcp_connect(addr, source).await?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A TCP connection to `addr` (from `source` when given), with `TCP_NODELAY`.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await,
        Some(source) => {
            let socket = match source {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(addr).await
        }
    }
    .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A live connection, reconnecting when the server closed it.
async fn ready(slot: &mut Option<Sender>, addr: SocketAddr) -> Result<&mut Sender> {
    if let Some(sender) = slot.as_mut() {
        if !sender.is_closed() && sender.ready().await.is_ok() {
            // Re-borrow to satisfy the borrow checker across the await.
            return slot.as_mut().context("connection vanished");
        }
    }
    *slot = None;
    let sender = connect(addr).await?;
    Ok(slot.insert(sender))
}

/// Counts SSE event ends (blank lines) in `data`; `newline` carries a trailing `\n` across reads.
fn count_event_ends(data: &[u8], newline: &mut bool) -> u64 {
    let mut events = 0;
    let mut previous = *newline;
    for &byte in data {
        match byte {
            b'\n' if previous => {
                events += 1;
                previous = false;
            }
            b'\n' => previous = true,
            b'\r' => {}
            _ => previous = false,
        }
    }
    *newline = previous;
    events
}

/// Finds the first non-empty `"content":"…"` value in a stream's body, read chunk by chunk (the
/// pattern may straddle two chunks): the first token of an OpenAI chat stream, whose role chunk
/// carries `"content":""`.
#[derive(Default)]
struct FirstContent {
    /// The last bytes of the previous chunk, shorter than the pattern plus one byte.
    tail: Vec<u8>,
    found: bool,
}

impl FirstContent {
    const PATTERN: &'static [u8] = b"\"content\":\"";

    /// Whether `data` completed the first non-empty content (true once only). A match that
    /// starts in the kept tail is looked for in the tail and the head of `data`, one in `data`
    /// in `data` itself: the chunk is not copied.
    fn feed(&mut self, data: &[u8]) -> bool {
        if self.found {
            return false;
        }
        let keep = Self::PATTERN.len();
        let mut boundary = std::mem::take(&mut self.tail);
        boundary.extend_from_slice(&data[..data.len().min(keep)]);
        let found = Self::holds(&boundary) || Self::holds(data);
        if found {
            self.found = true;
        } else if data.len() >= keep {
            self.tail = data[data.len() - keep..].to_vec();
        } else {
            self.tail = boundary.split_off(boundary.len().saturating_sub(keep));
        }
        found
    }

    /// Whether `bytes` hold the pattern followed by anything but the closing quote.
    fn holds(bytes: &[u8]) -> bool {
        let needle = Self::PATTERN;
        bytes
            .windows(needle.len() + 1)
            .any(|w| w.starts_with(needle) && w[needle.len()] != b'"')
    }
}

/// Sends one request and reads the whole answer. Returns when it completed and whether the
/// status was 2xx; stream figures go into `run` when `record`.
async fn exchange(
    sender: &mut Sender,
    target: &Target,
    origin: Instant,
    run: &mut Run,
    record: bool,
) -> Result<(Instant, bool)> {
    let response = sender.send_request(target.request()?).await?;
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut first: Option<Instant> = None;
    let mut first_token: Option<Instant> = None;
    let mut content = FirstContent::default();
    let mut last_event: Option<Instant> = None;
    let mut newline = false;
    let observe = record && ok && target.streaming;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() || !observe {
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        if content.feed(&data) {
            first_token = Some(now);
        }
        run.chunks += 1;
        for _ in 0..count_event_ends(&data, &mut newline) {
            run.events += 1;
            if let Some(previous) = last_event {
                run.gaps.saturating_record(nanos(now - previous));
            }
            last_event = Some(now);
        }
    }
    let done = Instant::now();
    if let Some(first) = first {
        run.ttfb.saturating_record(nanos(first - origin));
    }
    if let Some(first_token) = first_token {
        run.ttft.saturating_record(nanos(first_token - origin));
    }
    Ok((done, ok))
}

/// Closed loop: `connections` connections, back to back, for `warmup + duration`.
pub async fn closed_loop(
    target: Arc<Target>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Run> {
    let empty = histogram()?;
    let warm = Instant::now() + warmup;
    let end = warm + duration;
    let workers: Vec<JoinHandle<Run>> = (0..connections)
        .map(|_| {
            let run = Run::new(duration, &empty);
            tokio::spawn(closed_worker(Arc::clone(&target), warm, end, run))
        })
        .collect();
    let mut run = Run::new(duration, &empty);
    for worker in workers {
        if let Ok(result) = worker.await {
            run.merge(&result);
        }
    }
    Ok(run)
}

async fn closed_worker(target: Arc<Target>, warm: Instant, end: Instant, mut run: Run) -> Run {
    let mut slot = None;
    while Instant::now() < end {
        let sender = match ready(&mut slot, target.addr).await {
            Ok(sender) => sender,
            Err(_) => {
                if Instant::now() >= warm {
                    run.errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let origin = Instant::now();
        let record = origin >= warm;
        match exchange(sender, &target, origin, &mut run, record).await {
            Ok((done, true)) => {
                run.completed += 1;
                if record && done <= end {
                    run.ok += 1;
                    run.latency.saturating_record(nanos(done - origin));
                }
            }
            Ok((_, false)) => run.errors += u64::from(record),
            Err(_) => {
                run.errors += u64::from(record);
                slot = None;
            }
        }
    }
    run
}

/// Open loop: `rate` requests per second spread evenly over `connections` connections.
pub async fn open_loop(
    target: Arc<Target>,
    rate: f64,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Run> {
    let empty = histogram()?;
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(target.addr).await?);
    }
    let t0 = Instant::now();
    let warm = t0 + warmup;
    let end = warm + duration;
    let period = connections as f64 / rate;
    let workers: Vec<JoinHandle<Run>> = senders
        .into_iter()
        .enumerate()
        .map(|(k, sender)| {
            let schedule = Schedule {
                t0,
                offset: k as f64 / rate,
                period,
                warm,
                end,
            };
            let run = Run::new(duration, &empty);
            tokio::spawn(open_worker(Arc::clone(&target), sender, schedule, run))
        })
        .collect();
    let mut run = Run::new(duration, &empty);
    for worker in workers {
        if let Ok(result) = worker.await {
            run.merge(&result);
        }
    }
    Ok(run)
}

struct Schedule {
    t0: Instant,
    offset: f64,
    period: f64,
    warm: Instant,
    end: Instant,
}

async fn open_worker(target: Arc<Target>, sender: Sender, s: Schedule, mut run: Run) -> Run {
    let mut slot = Some(sender);
    let mut previous_done = s.t0;
    for i in 0_u64.. {
        let scheduled = s.t0 + Duration::from_secs_f64(s.offset + i as f64 * s.period);
        if scheduled >= s.end {
            break;
        }
        let idle = previous_done <= scheduled;
        tokio::time::sleep_until(scheduled.into()).await;
        let record = scheduled >= s.warm;
        let sender = match ready(&mut slot, target.addr).await {
            Ok(sender) => sender,
            Err(_) => {
                run.errors += u64::from(record);
                previous_done = Instant::now();
                continue;
            }
        };
        let sent = Instant::now();
        let origin = if idle { sent } else { scheduled };
        match exchange(sender, &target, origin, &mut run, record).await {
            Ok((done, ok)) => {
                previous_done = done;
                run.completed += u64::from(ok);
                if record && ok {
                    run.ok += 1;
                    run.latency.saturating_record(nanos(done - origin));
                } else if record {
                    run.errors += 1;
                }
            }
            Err(_) => {
                previous_done = Instant::now();
                run.errors += u64::from(record);
                slot = None;
            }
        }
    }
    run
}

/// One request on a fresh connection (set-up calls, readiness polls).
pub async fn request_once(
    addr: SocketAddr,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes)> {
    let mut sender = connect(addr).await?;
    sender.ready().await?;
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json");
    if let Some(auth) = auth {
        builder = builder.header(AUTHORIZATION, format!("Bearer {auth}"));
    }
    let request = builder.body(Full::new(body.unwrap_or_default()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sized_body_has_the_size_asked_for_and_stays_a_chat_request() {
        let body = chat_body("bench", false, 1024).unwrap();
        assert_eq!(body.len(), 1024);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["model"], "bench");
        assert!(json["messages"][1]["content"]
            .as_str()
            .unwrap()
            .ends_with("Say hello in one short sentence."));
        // Smaller than the bare body: not padded.
        assert_eq!(
            chat_body("bench", true, 10).unwrap(),
            chat_body("bench", true, 0).unwrap()
        );
    }

    #[test]
    fn event_ends_are_counted_across_reads() {
        let mut newline = false;
        assert_eq!(count_event_ends(b"data: a\n\ndata: b\n", &mut newline), 1);
        assert!(newline);
        assert_eq!(count_event_ends(b"\ndata: c\r\n\r\n", &mut newline), 2);
        assert_eq!(count_event_ends(b"data: [DONE]\n\n\n", &mut newline), 1);
    }

    #[test]
    fn the_first_token_is_the_first_non_empty_content_even_across_chunks() {
        let role = br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        let mut content = FirstContent::default();
        assert!(!content.feed(role));
        assert!(!content.feed(b"\n\ndata: {\"choices\":[{\"delta\":{\"cont"));
        assert!(!content.feed(b"ent\":"));
        assert!(content.feed(b"\"chunk0\"}}]}\n\n"));
        // Only the first one counts.
        assert!(!content.feed(br#"data: {"choices":[{"delta":{"content":"chunk1"}}]}"#));

        // Empty content straddling two chunks is not a token.
        let mut content = FirstContent::default();
        assert!(!content.feed(br#"{"content":"#));
        assert!(!content.feed(br#""", "x":1}"#));
        assert!(content.feed(br#"{"content":"a"}"#));
    }

    #[test]
    fn the_first_token_is_found_at_its_first_byte_when_the_stream_comes_a_byte_at_a_time() {
        let stream: &[u8] = br#"data: {"delta":{"role":"assistant","content":""}}

data: {"delta":{"content":"hi"}}

"#;
        let first_token = stream
            .windows(12)
            .position(|w| w == br#""content":"h"#)
            .map(|start| start + 11)
            .unwrap();
        let mut content = FirstContent::default();
        let fired: Vec<usize> = (0..stream.len())
            .filter(|&at| content.feed(&stream[at..=at]))
            .collect();
        assert_eq!(fired, vec![first_token]);
    }
}
