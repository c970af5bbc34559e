//! The server under a low open-file limit (issue #14, item 1): 300 half-sent requests against a
//! server process whose `ulimit -n` is 256, then a fresh `GET /healthz`.
//!
//! A test binary of its own without the libtest harness: the server must run in a child process
//! (this binary again, with `POOLGATE_FD_CHILD` set) so that its lowered limit and its
//! descriptors are its own, while this process holds the 300 client sockets.
//!
//! Two cases:
//! - **cap below the limit** (`max_connections` derived from the limit: 64): the server never
//!   runs out of descriptors; connections over the cap are answered 503 (or, with every reject
//!   slot busy, closed) at once; `/healthz` answers 200 as soon as the half-sent requests were
//!   cut at the header timeout. No accept error happens at all.
//! - **cap above the limit** (a misconfigured `max_connections = 1000`): `accept` fails with
//!   `EMFILE`; the server logs it (one line per 10 s, not one per failure), backs off instead of
//!   spinning (a handful of failed accepts, not thousands), and `/healthz` — waiting in the
//!   kernel's backlog — is answered 200 once the half-sent requests were cut.
#![expect(clippy::unwrap_used, reason = "test binary")]

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use poolgate::serving::{Server, ServerSettings};

const CHILD_ENV: &str = "POOLGATE_FD_CHILD";
const OPEN_FILES: u64 = 256;
const HALF_SENT: usize = 300;
const HEADER_TIMEOUT: Duration = Duration::from_secs(4);

fn main() {
    if let Ok(max_connections) = std::env::var(CHILD_ENV) {
        child(max_connections.parse().unwrap());
        return;
    }
    // `cargo test -- <filter>`: run unless a filter names something else.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        println!("serving_fd_limit: test");
        return;
    }
    if let Some(filter) = args.iter().find(|arg| !arg.starts_with('-')) {
        if !"serving_fd_limit".contains(filter.as_str()) {
            println!("0 passed, 0 failed");
            return;
        }
    }
    let started = Instant::now();
    cap_below_the_limit();
    cap_above_the_limit();
    println!(
        "serving_fd_limit: 2 cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("2 passed, 0 failed");
}

// === the server (child) ===

fn child(max_connections: usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(OPEN_FILES),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        let settings = ServerSettings {
            header_read_timeout: HEADER_TIMEOUT,
            max_connections,
            ..ServerSettings::default()
        };
        let server = Server::new(settings).unwrap();
        let handle = server.handle();
        let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let serving = tokio::spawn(server.serve(listener, router));
        // Serve until the parent closes stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .unwrap();
        handle.drain();
        handle.cut();
        serving.await.unwrap();
        let stats = handle.stats();
        println!(
            "STATS accepted={} rejected={} accept_errors={}",
            stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
            stats.rejected.load(std::sync::atomic::Ordering::Relaxed),
            stats
                .accept_errors
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    });
}

// === the clients (parent) ===

struct ServerProcess {
    child: Child,
    port: u16,
    stdout: BufReader<std::process::ChildStdout>,
}

impl ServerProcess {
    fn start(max_connections: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, max_connections)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        Self {
            child,
            port,
            stdout,
        }
    }

    /// Stops the server; returns its STATS line and its log.
    fn stop(mut self) -> (Stats, String) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "server failed:\n{log}"
        );
        let stats = rest
            .lines()
            .find_map(|line| line.strip_prefix("STATS "))
            .unwrap_or_else(|| panic!("no stats in {rest:?}"));
        (Stats::parse(stats), log)
    }
}

#[derive(Debug)]
struct Stats {
    rejected: u64,
    accept_errors: u64,
}

impl Stats {
    fn parse(text: &str) -> Self {
        let field = |name: &str| -> u64 {
            text.split(' ')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        Self {
            rejected: field("rejected"),
            accept_errors: field("accept_errors"),
        }
    }
}

/// Opens `count` connections that each send half a request line and then nothing.
fn half_sent(port: u16, count: usize) -> Vec<std::net::TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            // Over the cap the server may already have answered and closed: ignore errors.
            let _ = stream.write_all(b"GET /heal");
            stream
        })
        .collect()
}

/// `GET /healthz` on a fresh connection: the status (0 = closed without an answer) and when.
fn health(port: u16, limit: Duration) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

/// Polls `/healthz` until it answers 200; returns how long that took.
fn health_until_ok(port: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if health(port, Duration::from_secs(10)).0 == 200 {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/healthz did not answer 200 within {limit:?}");
}

fn cap_below_the_limit() {
    let expected_cap = poolgate::serving::limits::default_max_connections(Some(OPEN_FILES));
    let server = ServerProcess::start(&expected_cap.to_string());
    let opening = Instant::now();
    let held = half_sent(server.port, HALF_SENT);
    println!(
        "opened {HALF_SENT} half-sent connections in {:?}",
        opening.elapsed()
    );
    // Over the cap: an immediate answer, never a hang (503, or a close when every reject slot
    // is busy).
    let (status, took) = health(server.port, Duration::from_secs(10));
    assert!(
        status == 503 || status == 0,
        "fresh request over the cap got {status} after {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "over the cap it took {took:?}"
    );
    let recovered = health_until_ok(server.port, Duration::from_secs(20));
    drop(held);
    let (stats, log) = server.stop();
    println!(
        "cap below the limit (max_connections {expected_cap}): over-cap answer {status} in {took:?}; \
         /healthz 200 after {recovered:?}; {stats:?}"
    );
    assert_eq!(stats.accept_errors, 0, "{log}");
    assert!(
        stats.rejected >= (HALF_SENT - expected_cap) as u64,
        "{stats:?}"
    );
    assert!(log.contains("connection limit reached"), "{log}");
}

fn cap_above_the_limit() {
    let server = ServerProcess::start("1000");
    let held = half_sent(server.port, HALF_SENT);
    let recovered = health_until_ok(server.port, Duration::from_secs(30));
    // Keep the half-sent ones a little longer so the back-off is exercised for a while.
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    let (stats, log) = server.stop();
    let accept_lines = log
        .lines()
        .filter(|line| line.contains("cannot accept connections"))
        .count();
    println!(
        "cap above the limit: /healthz 200 after {recovered:?}; {stats:?}; {accept_lines} accept-error log line(s)"
    );
    assert!(stats.accept_errors >= 1, "EMFILE never happened: {stats:?}");
    assert!(
        stats.accept_errors < 100,
        "accept errors were not backed off: {stats:?}"
    );
    assert!(
        (1..=3).contains(&accept_lines),
        "expected a rate-limited log line:\n{log}"
    );
    assert!(log.contains("out of file descriptors"), "{log}");
}
