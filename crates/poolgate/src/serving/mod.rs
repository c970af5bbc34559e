//! Serving client connections with hyper directly (instead of `axum::serve`), so that every
//! limit a gateway on an open port needs is in one place:
//!
//! 1. **accept** ([`accept`]): `TCP_NODELAY` on every socket; accept errors are logged
//!    (rate-limited) and followed by a short back-off (5 ms doubling to 1 s, as Go's `net/http`)
//!    instead of a spin — `EMFILE`/`ENFILE` say which limit to raise.
//! 2. **cap** ([`ServerSettings::max_connections`]): past the cap, a new connection is still
//!    accepted, answered at once with a short `503` + `Retry-After: 1` and closed (at most
//!    [`REJECT_SLOTS`] such answers at a time; beyond that it is closed unanswered). Why accept
//!    rather than leave it in the kernel's backlog: a backlogged client (a load balancer's health
//!    check included) waits in silence until its own timeout, while a 503 tells it at once to go
//!    elsewhere; and the cap sits well below the open-file limit, so accepting one more to answer
//!    it is always possible.
//! 3. **per connection** ([`conn`]): HTTP/1 (and HTTP/2 with prior knowledge, as `axum::serve`
//!    served, told apart by peeking at the first bytes) through hyper-util's auto builder with a
//!    real timer (hyper's header-read timeout needs one — `axum::serve` gives none, so it never
//!    applied); bounded read/write buffers; a deadline for the first request and an idle
//!    (keep-alive) timeout; the write timeout of [`io::WriteTimeout`]; request bodies wrapped in
//!    [`body::TimedBody`].
//! 4. **where connections run** ([`ServerRuntime`]): thread per core ([`per_core`], the
//!    default): one single-threaded runtime per core, each accepting on its own `SO_REUSEPORT`
//!    listener and calling upstreams with its own client, so a request never changes threads;
//!    or on the process's work-stealing runtime.
//! 5. **shutdown** ([`ServerHandle`]): `drain()` stops accepting and asks every connection to
//!    finish its current requests and close (HTTP/1: after the answer in progress; HTTP/2:
//!    GOAWAY); `cut()` drops whatever is still open. [`serve`] returns when every connection
//!    is closed.

pub mod accept;
pub mod body;
mod conn;
mod h1;
pub mod io;
pub mod limits;
pub mod per_core;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use body::{is_body_timeout, BodyPace, BodyTimeout, TimedBody};

use crate::domain::Invalid;

/// Connections answered with a 503 at the same time when the cap is reached.
pub const REJECT_SLOTS: usize = 64;

/// The knobs of the client side (proposed config section `[server]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// `header_read_timeout_seconds` (default 10): a request's head must arrive within this.
    /// hyper starts the clock when the connection begins waiting for a request, so for HTTP/1
    /// it also bounds how long an idle keep-alive connection stays open. The first request of
    /// any connection (HTTP/2's preface included) must arrive within it too.
    pub header_read_timeout: Duration,
    /// `keep_alive_timeout_seconds` (default 60): a connection with no request in flight is
    /// closed after this (for HTTP/1 the shorter of this and `header_read_timeout` applies).
    pub keep_alive_timeout: Duration,
    /// `body_read_timeout_seconds` (default 30) and `body_min_rate_bytes_per_second`
    /// (default 8192): see [`BodyPace`]. `None` = no limit.
    pub body_pace: Option<BodyPace>,
    /// `write_timeout_seconds` (default 30): the client accepted no byte for this long → the
    /// connection is dropped (a stream's upstream with it). `None` = no limit.
    pub write_timeout: Option<Duration>,
    /// `max_connections` (default from the open-file limit, see
    /// [`limits::default_max_connections`]).
    pub max_connections: usize,
    /// `max_buf_size_bytes` (default 64 KiB, at least 8 KiB): hyper's per-connection HTTP/1
    /// read and write buffer cap (request heads larger than this are refused with 431).
    pub max_buf_size: usize,
    /// `http2` (default true): also serve HTTP/2 with prior knowledge (cleartext).
    pub http2: bool,
    /// `http1_server` (default `"poolgate"`): what serves HTTP/1.1 connections.
    pub http1_server: Http1Server,
    /// `http2_max_concurrent_streams` (default 100).
    pub http2_max_concurrent_streams: u32,
    /// `runtime` (default `"thread_per_core"`) and `per_core_threads`.
    pub runtime: ServerRuntime,
}

/// What serves HTTP/1.1 client connections (HTTP/2 is always hyper's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http1Server {
    /// `"poolgate"`: [`h1`], which holds no buffer while a connection waits or streams (#13).
    Poolgate,
    /// `"hyper"`: hyper's HTTP/1 connection, as before #13's own server.
    Hyper,
}

/// Where client connections (and the requests on them) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerRuntime {
    /// `"work_stealing"`: tasks on the process's multi-threaded tokio runtime.
    WorkStealing,
    /// `"thread_per_core"`: `threads` single-threaded runtimes, each with its own listener.
    ThreadPerCore { threads: usize },
}

impl ServerRuntime {
    /// The config file's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRuntime::WorkStealing => "work_stealing",
            ServerRuntime::ThreadPerCore { .. } => "thread_per_core",
        }
    }

    /// The per-core runtimes (0 with the work-stealing runtime).
    pub fn per_core_threads(self) -> usize {
        match self {
            ServerRuntime::WorkStealing => 0,
            ServerRuntime::ThreadPerCore { threads } => threads,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            body_pace: Some(BodyPace {
                timeout: Duration::from_secs(30),
                min_rate: 8192,
            }),
            write_timeout: Some(Duration::from_secs(30)),
            max_connections: limits::default_max_connections(limits::open_file_limit()),
            max_buf_size: 64 * 1024,
            http2: true,
            http1_server: Http1Server::Poolgate,
            http2_max_concurrent_streams: 100,
            runtime: ServerRuntime::ThreadPerCore {
                threads: per_core::default_threads(),
            },
        }
    }
}

impl ServerSettings {
    /// Checks the invariants hyper relies on (it panics on a buffer under 8 KiB); errors name
    /// the `[server]` field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_buf_size < 8192 {
            return Err(Invalid::new(
                "server.max_buf_size_bytes",
                "must be at least 8192",
            ));
        }
        if self.max_connections == 0 {
            return Err(Invalid::new("server.max_connections", "must be at least 1"));
        }
        if self.header_read_timeout.is_zero() {
            return Err(Invalid::new(
                "server.header_read_timeout_seconds",
                "must be at least 1 second",
            ));
        }
        if self.keep_alive_timeout.is_zero() {
            return Err(Invalid::new(
                "server.keep_alive_timeout_seconds",
                "must be at least 1 second",
            ));
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(Invalid::new(
                "server.http2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if let ServerRuntime::ThreadPerCore { threads } = self.runtime {
            if !(1..=per_core::MAX_THREADS).contains(&threads) {
                return Err(Invalid::new(
                    "server.per_core_threads",
                    format!("must be between 1 and {}", per_core::MAX_THREADS),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
    Cut,
}

/// Counters of the accept loop (for tests now, metrics later).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    /// Connections answered 503 (or closed unanswered) because the cap was reached.
    pub rejected: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// What [`Server::serve`] serves: an axum `Router`, or any tower service of that shape.
pub trait AppService<B>:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> AppService<B> for S where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The answer body of an [`AppService`].
pub trait AppBody:
    http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> AppBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// Controls a running server: drain, cut, counters. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    phase: Arc<watch::Sender<Phase>>,
    stats: Arc<ServerStats>,
    open: Arc<Semaphore>,
    max_connections: usize,
    /// Set by [`ServerHandle::finish`]: the per-core runtimes may end.
    finished: Arc<watch::Sender<bool>>,
}

impl ServerHandle {
    /// Stop accepting; every connection finishes the requests it has and closes.
    pub fn drain(&self) {
        self.phase.send_if_modified(|phase| {
            let changed = *phase == Phase::Running;
            if changed {
                *phase = Phase::Draining;
            }
            changed
        });
    }

    /// Close every connection still open, now.
    pub fn cut(&self) {
        self.phase.send_replace(Phase::Cut);
    }

    /// Client connections open right now (rejected ones not counted).
    pub fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.open.available_permits())
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The server's caller is done (usage flushed, shared state left): per-core runtimes, kept
    /// running after their connections closed for the tasks requests started there, end now.
    /// Nothing to do with the work-stealing runtime.
    pub fn finish(&self) {
        self.finished.send_replace(true);
    }

    /// Resolves once every client connection has closed (each gives its permit back).
    async fn all_closed(&self) {
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let _all_closed = self.open.acquire_many(all).await;
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The client-side server: settings checked, a handle to control it, and [`Server::serve`].
pub struct Server {
    settings: Arc<ServerSettings>,
    handle: ServerHandle,
}

impl Server {
    pub fn new(settings: ServerSettings) -> Result<Self, Invalid> {
        settings.validate()?;
        let handle = ServerHandle {
            phase: Arc::new(watch::channel(Phase::Running).0),
            stats: Arc::new(ServerStats::default()),
            open: Arc::new(Semaphore::new(settings.max_connections)),
            max_connections: settings.max_connections,
            finished: Arc::new(watch::channel(false).0),
        };
        Ok(Self {
            settings: Arc::new(settings),
            handle,
        })
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// A listener on `addr` for [`Server::serve`]; with the thread-per-core runtime it allows
    /// the other runtimes' listeners on the same port (`SO_REUSEPORT`).
    pub async fn bind(&self, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
        match self.settings.runtime {
            ServerRuntime::WorkStealing => TcpListener::bind(addr).await,
            ServerRuntime::ThreadPerCore { .. } => per_core::bind_first(addr),
        }
    }

    /// Serves `service` (an axum `Router`, or any tower service of that shape) on `listener`
    /// until [`ServerHandle::drain`] — then until every connection closed — or
    /// [`ServerHandle::cut`]. With the thread-per-core runtime `listener` must come from
    /// [`Server::bind`].
    pub async fn serve<S: AppService<B>, B: AppBody>(self, listener: TcpListener, service: S) {
        let Self { settings, handle } = self;
        if let ServerRuntime::ThreadPerCore { threads } = settings.runtime {
            per_core::serve(threads, settings, handle, listener, service).await;
            return;
        }
        let accepting = Accepting::new(settings, handle);
        accepting
            .accept_until_drained(&listener, &service, Spawn::Detached)
            .await;
        drop(listener);
        // Every connection gives its permit back when it closes.
        accepting.handle.all_closed().await;
    }
}

/// How an accept loop starts a connection's task.
#[derive(Clone, Copy)]
enum Spawn<'a> {
    /// On the current runtime, not tracked (the connection cap's permits say when all closed).
    Detached,
    /// On the current runtime, tracked so that a per-core runtime outlives its connections.
    Tracked(&'a tokio_util::task::TaskTracker),
}

impl Spawn<'_> {
    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(self, task: F) {
        match self {
            Spawn::Detached => drop(tokio::spawn(task)),
            Spawn::Tracked(tracker) => drop(tracker.spawn(task)),
        }
    }
}

/// What an accept loop needs; one per listener.
struct Accepting {
    settings: Arc<ServerSettings>,
    handle: ServerHandle,
    builders: Arc<conn::Builders>,
    rejecting: Arc<Semaphore>,
}

impl Accepting {
    fn new(settings: Arc<ServerSettings>, handle: ServerHandle) -> Accepting {
        Accepting {
            builders: Arc::new(conn::Builders::new(&settings)),
            settings,
            handle,
            rejecting: Arc::new(Semaphore::new(REJECT_SLOTS)),
        }
    }

    /// Accepts connections on `listener` and starts each one's task until the server drains.
    async fn accept_until_drained<S: AppService<B>, B: AppBody>(
        &self,
        listener: &TcpListener,
        service: &S,
        spawn: Spawn<'_>,
    ) {
        let mut phase = self.handle.phase.subscribe();
        let mut backoff = accept::Backoff::default();
        let mut at_cap_log = accept::Throttle::new(Duration::from_secs(10));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = phase.wait_for(|phase| *phase != Phase::Running) => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff.reset();
                    accepted
                }
                Err(error) => {
                    count(&self.handle.stats.accept_errors);
                    if let Some(pause) = backoff.on_error(&error) {
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            _ = phase.wait_for(|phase| *phase != Phase::Running) => break,
                        }
                    }
                    continue;
                }
            };
            count(&self.handle.stats.accepted);
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let Ok(permit) = Arc::clone(&self.handle.open).try_acquire_owned() else {
                count(&self.handle.stats.rejected);
                if let Some(suppressed) = at_cap_log.ready() {
                    tracing::warn!(
                        max_connections = self.settings.max_connections,
                        suppressed,
                        "connection limit reached: new connections are answered 503 until some close (`server.max_connections`)"
                    );
                }
                if let Ok(slot) = Arc::clone(&self.rejecting).try_acquire_owned() {
                    tokio::spawn(async move {
                        accept::reject(stream).await;
                        drop(slot);
                    });
                }
                continue;
            };
            spawn.spawn(conn::serve_connection(
                conn::Accepted {
                    stream,
                    peer,
                    permit,
                },
                service.clone(),
                Arc::clone(&self.builders),
                Arc::clone(&self.settings),
                self.handle.phase.subscribe(),
            ));
        }
    }
}
