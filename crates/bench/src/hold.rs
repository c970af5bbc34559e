//! Held streams: thousands of SSE streams opened through a server and kept open until
//! [`Held::close`], for memory figures. The client connects one of two ways ([`Plan`]):
//!
//! - **http1** — one HTTP/1.1 connection per stream (what an SDK over HTTP/1.1 does); past
//!   [`CONNECTIONS_PER_SOURCE`] connections the client sockets are spread over several source
//!   addresses (`127.0.0.2`, `127.0.0.3`, …) so one address's ephemeral ports never run out.
//! - **http2** — HTTP/2 with prior knowledge (cleartext), `per_connection` streams on each
//!   connection: 20,000 streams over 100 connections at 200 each.
//!
//! Closing drops every client connection at once (the client goes away mid-stream). With
//! HTTP/2 the task driving the connection is aborted, so the server sees the socket close —
//! every stream on it ends at once — rather than one reset per stream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::load::{connect_from, tcp_connect, Target};

/// How the client talks to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1: a connection per stream.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge: many streams per connection.
    Http2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }

    /// `http1` or `http2` (the `--held-modes` values).
    pub fn parse(text: &str) -> Result<Protocol, String> {
        match text {
            "http1" => Ok(Protocol::Http1),
            "http2" => Ok(Protocol::Http2),
            other => Err(format!("`{other}` is neither `http1` nor `http2`")),
        }
    }
}

/// The protocol and how many streams share a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub protocol: Protocol,
    /// Streams per client connection (1 with HTTP/1.1).
    pub per_connection: usize,
}

impl Plan {
    pub fn http1() -> Plan {
        Plan {
            protocol: Protocol::Http1,
            per_connection: 1,
        }
    }

    /// HTTP/2, at most `per_connection` streams on each connection (at least 1).
    pub fn http2(per_connection: usize) -> Plan {
        Plan {
            protocol: Protocol::Http2,
            per_connection: per_connection.max(1),
        }
    }

    /// Client connections that carry `streams` streams.
    pub fn connections(self, streams: usize) -> usize {
        streams.div_ceil(self.per_connection.max(1))
    }

    /// Streams on connection `k` of [`Plan::connections`]: spread evenly, the first ones
    /// taking one more when they do not divide.
    pub fn streams_on(self, streams: usize, k: usize) -> usize {
        let connections = self.connections(streams).max(1);
        streams / connections + usize::from(k < streams % connections)
    }
}

/// Client connections per source address when holding many streams: well under the
/// 28,232 ephemeral ports of Linux's default range (`net.ipv4.ip_local_port_range`), so
/// earlier runs' `TIME_WAIT` sockets never exhaust them.
pub const CONNECTIONS_PER_SOURCE: usize = 10_000;

/// The source addresses for `count` connections to `addr`: none (the kernel's choice) up to
/// [`CONNECTIONS_PER_SOURCE`], else `127.0.0.1`, `127.0.0.2`, … (all of `127.0.0.0/8` is
/// loopback on Linux) when `addr` is an IPv4 loopback address.
pub fn sources_for(addr: SocketAddr, count: usize) -> Vec<IpAddr> {
    if count <= CONNECTIONS_PER_SOURCE || !addr.ip().is_loopback() || !addr.is_ipv4() {
        return Vec::new();
    }
    let needed = count.div_ceil(CONNECTIONS_PER_SOURCE).min(250);
    (1..=needed)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last as u8)))
        .collect()
}

/// Streams held open at once (for memory under many concurrent streams).
pub struct Held {
    /// Streams that received their first byte.
    pub opened: usize,
    pub failed: usize,
    /// Why the first few failures failed (for the log).
    pub failures: Vec<String>,
    /// Source addresses the client connections were spread over (0 = the kernel's choice).
    pub sources: usize,
    counts: Arc<Counts>,
    /// One per stream (HTTP/1.1) or per connection (HTTP/2, its streams inside).
    tasks: Vec<JoinHandle<()>>,
}

impl Held {
    /// Streams open right now.
    pub fn open_now(&self) -> usize {
        self.opened
            .saturating_sub(self.counts.ended.load(Ordering::Acquire))
    }

    /// Drops every connection (the client goes away mid-stream).
    pub async fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the stream tasks report.
#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    failed: AtomicUsize,
    /// Opened streams that ended before [`Held::close`].
    ended: AtomicUsize,
    /// The first five failures.
    failures: Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, streams: usize, error: &anyhow::Error) {
        self.failed.fetch_add(streams, Ordering::AcqRel);
        if let Ok(mut failures) = self.failures.lock() {
            if failures.len() < 5 {
                failures.push(format!("{error:#}"));
            }
        }
    }

    /// Counts a stream that opened (or not), frees its opening slot, and reads it to its end.
    async fn hold(&self, opened: Result<Incoming>, permit: Option<OwnedSemaphorePermit>) {
        match opened {
            Ok(mut body) => {
                self.opened.fetch_add(1, Ordering::AcqRel);
                drop(permit);
                while let Some(Ok(_)) = body.frame().await {}
                self.ended.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => self.fail(1, &error),
        }
    }
}

/// Opens `count` streams the `plan`'s way (at most `parallel` opening at once) and keeps them
/// open until [`Held::close`]; returns once every one got its first byte or failed, or after
/// `timeout`.
pub async fn hold_streams(
    target: Arc<Target>,
    count: usize,
    plan: Plan,
    parallel: usize,
    timeout: Duration,
) -> Held {
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let counts = Arc::new(Counts::default());
    let connections = plan.connections(count);
    let sources = sources_for(target.addr, connections);
    let source = |i: usize| (!sources.is_empty()).then(|| sources[i % sources.len()]);
    let tasks = match plan.protocol {
        Protocol::Http1 => (0..count)
            .map(|i| {
                let (target, gate, counts) =
                    (Arc::clone(&target), Arc::clone(&gate), Arc::clone(&counts));
                let source = source(i);
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.ok();
                    let opened = open_stream(&target, source).await;
                    counts.hold(opened, permit).await;
                })
            })
            .collect(),
        Protocol::Http2 => (0..connections)
            .map(|k| {
                tokio::spawn(hold_connection(
                    Arc::clone(&target),
                    source(k),
                    plan.streams_on(count, k),
                    Arc::clone(&gate),
                    Arc::clone(&counts),
                ))
            })
            .collect(),
    };
    let deadline = Instant::now() + timeout;
    let settled =
        || counts.opened.load(Ordering::Acquire) + counts.failed.load(Ordering::Acquire) >= count;
    while Instant::now() < deadline && !settled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failures = counts
        .failures
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    Held {
        opened: counts.opened.load(Ordering::Acquire),
        failed: counts.failed.load(Ordering::Acquire),
        failures,
        sources: sources.len(),
        counts,
        tasks,
    }
}

/// Connects (from `source` when given), sends a stream request and waits for the first body
/// byte.
async fn open_stream(target: &Target, source: Option<IpAddr>) -> Result<Incoming> {
    let mut sender = connect_from(target.addr, source).await?;
    sender.ready().await?;
    let response = sender.send_request(target.request()?).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    // The body keeps the connection task alive: `sender` may drop.
    first_byte(response.into_body()).await
}

type H2Sender = http2::SendRequest<Full<Bytes>>;
type H2Connection = http2::Connection<TokioIo<TcpStream>, Full<Bytes>, TokioExecutor>;

/// One HTTP/2 connection with `streams` streams on it: opens them (each under the `gate`),
/// then drives the connection until the server ends it or [`Held::close`] aborts this task —
/// which drops the connection (the socket closes) and the streams' tasks with it.
async fn hold_connection(
    target: Arc<Target>,
    source: Option<IpAddr>,
    streams: usize,
    gate: Arc<Semaphore>,
    counts: Arc<Counts>,
) {
    // Connect only once the first stream may open: a server closes a connection that sends
    // no request in time (poolgate: `server.header_read_timeout_seconds`, 10 s).
    let mut first = Some(Arc::clone(&gate).acquire_owned().await.ok());
    let (sender, connection) = match connect_h2(target.addr, source).await {
        Ok(pair) => pair,
        Err(error) => return counts.fail(streams, &error),
    };
    let mut held = JoinSet::new();
    for _ in 0..streams {
        let (sender, target) = (sender.clone(), Arc::clone(&target));
        let (gate, counts) = (Arc::clone(&gate), Arc::clone(&counts));
        let first = first.take();
        held.spawn(async move {
            let permit = match first {
                Some(permit) => permit,
                None => gate.acquire_owned().await.ok(),
            };
            let opened = open_h2_stream(sender, &target).await;
            counts.hold(opened, permit).await;
        });
    }
    drop(sender);
    let _ = connection.await;
    while held.join_next().await.is_some() {}
}

/// An HTTP/2 prior-knowledge connection to `addr` (from `source` when given).
async fn connect_h2(addr: SocketAddr, source: Option<IpAddr>) -> Result<(H2Sender, H2Connection)> {
    let stream = tcp_connect(addr, source).await?;
    http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/2 handshake with {addr}"))
}

/// Sends a stream request on an HTTP/2 connection and waits for the first body byte.
async fn open_h2_stream(mut sender: H2Sender, target: &Target) -> Result<Incoming> {
    sender.ready().await?;
    let response = sender.send_request(target.request_h2()?).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    first_byte(response.into_body()).await
}

/// Reads `body` until its first non-empty data frame; returns the rest of it.
async fn first_byte(mut body: Incoming) -> Result<Incoming> {
    loop {
        let frame = body.frame().await.context("stream ended at once")??;
        if frame.data_ref().is_some_and(|data| !data.is_empty()) {
            return Ok(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_connections_are_spread_over_loopback_sources() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(sources_for(addr, 5_000).is_empty());
        let sources = sources_for(addr, 20_000);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[1], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(sources_for("[::1]:9".parse().unwrap(), 20_000).is_empty());
    }

    #[test]
    fn http2_streams_are_spread_evenly_over_as_few_connections_as_the_cap_allows() {
        let plan = Plan::http2(200);
        assert_eq!(plan.connections(20_000), 100);
        assert_eq!(plan.connections(5_001), 26);
        let on: Vec<usize> = (0..26).map(|k| plan.streams_on(5_001, k)).collect();
        assert_eq!(on.iter().sum::<usize>(), 5_001);
        assert!(on.iter().all(|n| (192..=193).contains(n)), "{on:?}");
        assert_eq!(Plan::http1().connections(5_000), 5_000);
        assert_eq!(Plan::http1().streams_on(5_000, 4_999), 1);
        // A cap of 0 is taken as 1, never a division by zero.
        assert_eq!(Plan::http2(0).connections(3), 3);
        assert_eq!(Plan::http2(200).connections(0), 0);
    }

    /// Holds `count` streams the `plan`'s way against a mock whose streams outlast the test,
    /// closes them, and returns the mock's connections and how many of its streams ended.
    async fn hold_and_close(count: usize, plan: Plan) -> (usize, usize) {
        use mock_upstream::{MockConfig, MockUpstream, StreamSpec};
        let mock = MockUpstream::start_with(MockConfig {
            stream_defaults: StreamSpec::new(600).gap_ms(1000),
            record_requests: false,
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let target = Arc::new(Target::chat(mock.addr(), None, "held", true).unwrap());
        let held = hold_streams(target, count, plan, 16, Duration::from_secs(20)).await;
        assert_eq!(
            (held.opened, held.failed),
            (count, 0),
            "{:?}",
            held.failures
        );
        assert_eq!(held.open_now(), count);
        held.close().await;
        // The server sees every stream end once the client's connections are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while mock.cancelled_streams() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (mock.connections(), mock.cancelled_streams())
    }

    #[tokio::test]
    async fn http2_streams_share_connections_and_end_when_they_are_dropped() {
        assert_eq!(hold_and_close(250, Plan::http2(100)).await, (3, 250));
    }

    #[tokio::test]
    async fn http1_streams_each_have_their_connection() {
        assert_eq!(hold_and_close(20, Plan::http1()).await, (20, 20));
    }

    #[test]
    fn modes_parse_from_their_names() {
        for protocol in [Protocol::Http1, Protocol::Http2] {
            assert_eq!(Protocol::parse(protocol.as_str()), Ok(protocol));
        }
        assert!(Protocol::parse("h3").is_err());
    }
}
