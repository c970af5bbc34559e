//! **held** — memory with many open streams: for each count N (default 5,000 and 20,000) and
//! each client mode ([`Protocol`]; `--held-modes`, default both), a fresh mock and a fresh
//! poolgate (so memory kept from earlier load is not counted), N streams held open (the upstream
//! sends one event per second), then every client connection dropped at once.
//!
//! - **http1**: one HTTP/1.1 client connection per stream, HTTP/1.1 to the mock (backend
//!   `http_version = "http1"`): poolgate holds two sockets per stream.
//! - **http2**: HTTP/2 prior-knowledge client connections carrying `--held-h2-streams` streams
//!   each (poolgate's `server.http2_max_concurrent_streams` is set to the same), HTTP/2 to the
//!   mock (backend `http_version = "http2"`): poolgate holds a few sockets in all.
//!
//! Figures per run: RSS idle (before), RSS with the N streams open, RSS per stream
//! (`(open − idle) / open streams`), streams that failed to open or ended early, how long
//! poolgate took to finish every stream once the clients left (its descriptors back near the
//! idle count and no request in flight on the backend), and RSS the settle time after that
//! (what the allocator gave back).
//!
//! `--held-upstream` sets the protocol to the mock for every run instead (HTTP/1.1 clients in
//! front of an HTTP/2 upstream, say): such runs are reported with it and judged by no goal.
//!
//! A run the open-file limit cannot hold is skipped and said so ([`descriptor_shortfall`]),
//! rather than measured as errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hyper::Method;
use serde::Serialize;

use super::{Bench, MB};
use crate::hold::{hold_streams, Plan, Protocol, CONNECTIONS_PER_SOURCE};
use crate::load::{request_once, Target};
use crate::procs::{usage, OpenFiles};
use crate::stack::{start_mock, start_poolgate_with, BackendDef, PoolgateSpec, ADMIN_TOKEN};

/// How long after the last stream closed the "after close" RSS is read (default of
/// `--held-settle-ms`).
pub const SETTLE: Duration = Duration::from_secs(2);

/// The longest wait for poolgate to finish every stream after the clients left.
pub const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Streams per HTTP/2 client connection (default of `--held-h2-streams`); poolgate's
/// `server.http2_max_concurrent_streams` in those runs.
pub const H2_STREAMS_PER_CONNECTION: usize = 200;

/// Descriptors poolgate keeps for everything but connections (its `RESERVED_DESCRIPTORS`).
const POOLGATE_RESERVED: u64 = 128;

/// Content chunks of the held runs' mock, one a second: longer than any run, so a stream
/// that ends before the harness closes it ended on an error.
const HELD_CHUNKS: u32 = 900;

/// Streams opening at once. Each takes about a second: poolgate holds back the content-free
/// first event until the first content event (failover stays possible), which the mock sends
/// a second later — so N streams take ~N / 128 s to open. Over HTTP/1.1 each is a new
/// connection and 128 keep the accept queue short. Over HTTP/2, 1,024 at once on a fresh
/// poolgate failed: its first burst of upstream requests over the new HTTP/2 connection to the
/// mock ended in "error sending request" / "error decoding response body" (502, then the
/// backend cooled down and the rest got 503) — 128 at once never did.
const OPENING: usize = 128;

/// The model the held runs ask for.
const HELD_MODEL: &str = "bench-held";

/// What one held-streams run measured (or why it was skipped).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeldRun {
    /// Streams asked for.
    pub streams: usize,
    /// How the clients connected.
    pub mode: Protocol,
    /// The protocol poolgate spoke to the mock (the clients' own unless `--held-upstream`).
    pub upstream: Protocol,
    /// Streams per client connection (1 with HTTP/1.1).
    pub streams_per_connection: usize,
    /// Client connections carrying the streams.
    pub connections: usize,
    /// Why it was not measured (descriptor limit), if it was not.
    pub skipped: Option<String>,
    /// Streams that got their first byte.
    pub opened: usize,
    /// Streams that failed to open (connect error, non-2xx, ended before the first byte).
    pub failed: usize,
    /// Streams open when RSS was sampled (opened minus those that ended on their own).
    pub open_at_sample: usize,
    /// Opened streams that ended before the harness closed them.
    pub ended_early: usize,
    /// Up to five error messages of failed streams.
    pub failures: Vec<String>,
    /// Client source addresses used (0 = one, the kernel's choice).
    pub sources: usize,
    pub open_seconds: f64,
    pub rss_idle_mb: f64,
    pub rss_open_mb: f64,
    /// `(rss_open − rss_idle) / open_at_sample`, in KB (10³ bytes).
    pub kb_per_stream: f64,
    /// RSS the settle time after every stream was finished.
    pub rss_after_close_mb: f64,
    pub settle_ms: u64,
    /// poolgate's open descriptors before the first stream, with the streams open, and after
    /// the settle time (a connection still open then shows here).
    pub fds_idle: usize,
    pub fds_open: usize,
    pub fds_after_close: usize,
    /// Requests poolgate counted in flight on the backend when the after-close RSS was read
    /// (`None`: the admin API did not answer).
    pub in_flight_after_close: Option<u64>,
    /// Client connections dropped → poolgate's descriptors back near the idle count and no
    /// request in flight (at most [`CLOSE_WAIT`]).
    pub close_seconds: f64,
}

impl HeldRun {
    /// Every stream opened and stayed open until closed.
    pub fn without_error(&self) -> bool {
        self.skipped.is_none()
            && self.failed == 0
            && self.ended_early == 0
            && self.open_at_sample == self.streams
    }
}

/// Open files each process needs to hold `streams` streams the `plan`'s way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptors {
    /// The client connections and, per stream (HTTP/1.1) or per client connection at most
    /// (HTTP/2: the mock accepts at least as many streams per connection as poolgate does), an
    /// upstream socket, + [`POOLGATE_RESERVED`].
    pub poolgate: u64,
    /// One socket per client connection, + 256 for its own files.
    pub harness: u64,
    /// One socket per upstream connection, + 64.
    pub mock: u64,
}

impl Descriptors {
    pub fn for_streams(streams: usize, plan: Plan) -> Descriptors {
        let clients = plan.connections(streams) as u64;
        let upstream = match plan.protocol {
            Protocol::Http1 => streams as u64,
            Protocol::Http2 => clients,
        };
        Descriptors {
            poolgate: clients + upstream + POOLGATE_RESERVED,
            harness: clients + 256,
            mock: upstream + 64,
        }
    }

    /// The most any one process needs.
    pub fn most(self) -> u64 {
        self.poolgate.max(self.harness).max(self.mock)
    }
}

/// Why `streams` held streams cannot run the `plan`'s way under `limits`, if they cannot.
pub fn descriptor_shortfall(streams: usize, plan: Plan, limits: OpenFiles) -> Option<String> {
    let hard = limits.hard?;
    let need = Descriptors::for_streams(streams, plan);
    let most = need.most();
    let how = match plan.protocol {
        Protocol::Http1 => "a client and an upstream socket per stream".to_owned(),
        Protocol::Http2 => format!(
            "{} HTTP/2 client connections of up to {} streams and at most as many upstream connections",
            plan.connections(streams),
            plan.per_connection
        ),
    };
    (hard < most).then(|| {
        format!(
            "not measurable on this machine: {streams} streams over {} need {} open files in poolgate ({how}, + {POOLGATE_RESERVED}) and {} in the harness, but the hard limit (`ulimit -Hn`) is {hard}; run as a user allowed more (`ulimit -Hn`, systemd `LimitNOFILE`) or with `--held-modes http2`",
            plan.protocol.as_str(),
            need.poolgate,
            need.harness
        )
    })
}

impl Bench<'_> {
    pub(super) async fn held(&mut self) -> Result<()> {
        for streams in self.opts.held_streams.clone() {
            for mode in self.opts.held_modes.clone() {
                let plan = match mode {
                    Protocol::Http1 => Plan::http1(),
                    Protocol::Http2 => Plan::http2(self.opts.held_h2_streams),
                };
                let run = match descriptor_shortfall(streams, plan, self.open_files) {
                    Some(reason) => {
                        eprintln!(
                            "bench: held {streams} streams ({}): {reason}",
                            mode.as_str()
                        );
                        self.results.notes.push(format!(
                            "Held {streams} streams ({}): {reason}.",
                            mode.as_str()
                        ));
                        HeldRun {
                            streams,
                            mode,
                            upstream: self.opts.held_upstream.unwrap_or(mode),
                            streams_per_connection: plan.per_connection,
                            connections: plan.connections(streams),
                            skipped: Some(reason),
                            ..HeldRun::default()
                        }
                    }
                    None => self.held_one(streams, plan).await?,
                };
                self.results.held.push(run);
            }
        }
        Ok(())
    }

    async fn held_one(&mut self, streams: usize, plan: Plan) -> Result<HeldRun> {
        let upstream = self.opts.held_upstream.unwrap_or(plan.protocol);
        let mode = if upstream == plan.protocol {
            plan.protocol.as_str().to_owned()
        } else {
            format!("{}-to-{}", plan.protocol.as_str(), upstream.as_str())
        };
        let mock = start_mock(
            self.bins,
            &format!("mock-held-{streams}-{mode}"),
            HELD_CHUNKS,
            1000,
            &self.logs,
        )?;
        let spec = PoolgateSpec {
            name: format!("poolgate-held-{streams}-{mode}"),
            backends: vec![BackendDef {
                name: "held".into(),
                upstream: mock.addr,
                models: vec![(HELD_MODEL.to_owned(), "bench-upstream".to_owned())],
                rpm_limit: 0,
                http_version: Some(upstream.as_str()),
            }],
            churn_cooldown: false,
            client_rpm: 0,
            // The default (from `server.max_connections`, itself derived from the open-file
            // limit) would refuse part of them: the memory figure wants them all.
            max_in_flight: Some(streams + 64),
            extra_args: Vec::new(),
        };
        let server = match plan.protocol {
            Protocol::Http1 => String::new(),
            Protocol::Http2 => format!(
                "[server]\nhttp2_max_concurrent_streams = {}\n",
                plan.per_connection
            ),
        };
        let poolgate =
            start_poolgate_with(self.bins, &spec, &server, &self.work, &self.logs).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = poolgate.child.pid();
        let rss = || usage(&[pid]).rss_kib as f64 * 1024.0 / MB;
        let target = Arc::new(Target::chat(
            poolgate.addr,
            Some(&poolgate.key),
            HELD_MODEL,
            true,
        )?);
        let idle = rss();
        let fds_idle = open_fds(pid);
        let connections = plan.connections(streams);
        eprintln!(
            "bench: opening {streams} concurrent streams through poolgate over {connections} {mode} connections{}",
            if connections > CONNECTIONS_PER_SOURCE {
                " (from several 127.0.0.x source addresses)"
            } else {
                ""
            }
        );
        let started = Instant::now();
        let timeout = Duration::from_secs(60) + Duration::from_millis(10) * streams as u32;
        let held = hold_streams(target, streams, plan, OPENING, timeout).await;
        let open_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let open_at_sample = held.open_now();
        let open = rss();
        let fds_open = open_fds(pid);
        let (opened, failed, failures, sources) = (
            held.opened,
            held.failed,
            held.failures.clone(),
            held.sources,
        );
        let ended_early = opened.saturating_sub(held.open_now());
        held.close().await;
        // poolgate notices a client gone at its next write (the upstream's next event, within
        // a second) or, with HTTP/2, when the connection's socket closes; it then drops the
        // upstream stream or socket and records the cancelled request. Wait until its
        // descriptors are back near the idle count and nothing is in flight, so the figure is
        // what the allocator kept, not streams still closing.
        let closing = Instant::now();
        loop {
            let finished = open_fds(pid) <= fds_idle + 16
                && in_flight(poolgate.addr).await.is_some_and(|n| n == 0);
            if finished || closing.elapsed() >= CLOSE_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let close_seconds = closing.elapsed().as_secs_f64();
        let settle = self.opts.held_settle;
        tokio::time::sleep(settle).await;
        let after = rss();
        let fds_after_close = open_fds(pid);
        let in_flight_after_close = in_flight(poolgate.addr).await;
        let kb_per_stream = if open_at_sample > 0 {
            (open - idle) * MB / 1000.0 / open_at_sample as f64
        } else {
            0.0
        };
        eprintln!(
            "bench: {open_at_sample} of {streams} streams open over {connections} {mode} connections ({failed} failed, {ended_early} ended early): poolgate RSS idle {idle:.1} MB, open {open:.1} MB ({kb_per_stream:.1} KB per stream, {fds_open} descriptors); finished in {close_seconds:.1} s, {:.1} s later {after:.1} MB ({fds_after_close} descriptors, {} in flight)",
            settle.as_secs_f64(),
            in_flight_after_close.map_or_else(|| "?".to_owned(), |n| n.to_string())
        );
        for failure in &failures {
            eprintln!("bench:   a failed stream: {failure}");
        }
        drop(poolgate);
        drop(mock);
        Ok(HeldRun {
            streams,
            mode: plan.protocol,
            upstream,
            streams_per_connection: plan.per_connection,
            connections,
            skipped: None,
            opened,
            failed,
            open_at_sample,
            ended_early,
            failures,
            sources,
            open_seconds,
            rss_idle_mb: idle,
            rss_open_mb: open,
            kb_per_stream,
            rss_after_close_mb: after,
            settle_ms: settle.as_millis() as u64,
            fds_idle,
            fds_open,
            fds_after_close,
            in_flight_after_close,
            close_seconds,
        })
    }
}

/// Entries of `/proc/<pid>/fd` (0 when unreadable).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Requests in flight on poolgate's backends, from its admin API (`None` when it did not
/// answer).
async fn in_flight(addr: std::net::SocketAddr) -> Option<u64> {
    let (status, body) = request_once(
        addr,
        Method::GET,
        "/admin/api/backends",
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .ok()?;
    if !status.is_success() {
        return None;
    }
    sum_in_flight(&serde_json::from_slice(&body).ok()?)
}

/// The sum of `in_flight` over the backends of a `GET /admin/api/backends` answer.
fn sum_in_flight(backends: &serde_json::Value) -> Option<u64> {
    backends
        .as_array()?
        .iter()
        .map(|backend| backend["in_flight"].as_u64())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(hard: Option<u64>) -> OpenFiles {
        OpenFiles { soft: hard, hard }
    }

    #[test]
    fn http1_needs_two_descriptors_per_stream_and_cannot_hold_20000_under_20000() {
        let plan = Plan::http1();
        assert!(descriptor_shortfall(5_000, plan, limits(Some(20_000))).is_none());
        let why = descriptor_shortfall(20_000, plan, limits(Some(20_000))).unwrap();
        assert!(
            why.contains("40128") && why.contains("20000") && why.contains("over http1"),
            "{why}"
        );
        assert!(descriptor_shortfall(20_000, plan, limits(Some(65_536))).is_none());
        assert!(descriptor_shortfall(20_000, plan, limits(None)).is_none());
    }

    #[test]
    fn http2_needs_descriptors_per_connection_not_per_stream() {
        let plan = Plan::http2(200);
        let need = Descriptors::for_streams(20_000, plan);
        // 100 client connections, at most 100 upstream ones, + the reserve.
        assert_eq!(need.poolgate, 100 + 100 + POOLGATE_RESERVED);
        assert_eq!(need.harness, 100 + 256);
        assert_eq!(need.mock, 100 + 64);
        assert!(descriptor_shortfall(20_000, plan, limits(Some(20_000))).is_none());
        // A tiny limit still skips it, and says how the streams were to be carried.
        let why = descriptor_shortfall(20_000, plan, limits(Some(300))).unwrap();
        assert!(
            why.contains("100 HTTP/2 client connections of up to 200 streams"),
            "{why}"
        );
        // One stream per connection costs what HTTP/1.1 does.
        assert_eq!(
            Descriptors::for_streams(5_000, Plan::http2(1)),
            Descriptors::for_streams(5_000, Plan::http1())
        );
    }

    #[test]
    fn in_flight_is_summed_over_the_backends_and_unknown_when_unreadable() {
        let answer =
            serde_json::json!([{"name": "a", "in_flight": 3}, {"name": "b", "in_flight": 0}]);
        assert_eq!(sum_in_flight(&answer), Some(3));
        assert_eq!(sum_in_flight(&serde_json::json!([])), Some(0));
        assert_eq!(sum_in_flight(&serde_json::json!([{"name": "a"}])), None);
        assert_eq!(sum_in_flight(&serde_json::json!({"error": "x"})), None);
    }
}
