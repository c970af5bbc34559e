//! The upstream connection pool: hyper's own client connections (`hyper::client::conn`), kept
//! per host (scheme and authority) and reused, with only what a gateway needs of hyper-util's
//! pooled client (which it replaces on the request path; hyper-util's connectors stay):
//!
//! - **HTTP/1**: poolgate's own exchange ([`super::h1`]), driven by the request's task: an
//!   idle connection the upstream has not closed is taken (the newest first) or a new one made;
//!   after the answer's body was read to its end, the connection goes back to the pool (one
//!   whose answer came before the whole request went, an early `413`, is closed instead). An
//!   answer dropped before its end closes its connection. No task per connection or request,
//!   one clock read when a connection is taken from the pool and one when it goes back, one
//!   header lookup (`Keep-Alive`) per answer: the request path takes a lock no other thread
//!   contends for (one pool per per-core runtime) and scans the few hosts a gateway talks to.
//! - **HTTP/2**: one connection per host carries every request; with `http_version = "http2"`
//!   (prior knowledge) requests that find none wait while one is made instead of each
//!   connecting. With `auto`, ALPN picks: an `h2` connection becomes the host's shared one (one
//!   that another request's connect beat closes, its request going on the first).
//! - **Retry**: a request that a reused connection did not take (its first write failed: the
//!   upstream had closed it) tries the next connection; nothing else is retried here.
//! - **Idle HTTP/1 connections** are not reused past the pool's idle timeout
//!   (`proxy.upstream_idle_timeout_ms`, 4 s by default, undici's default), nor past what the
//!   upstream's `Keep-Alive: timeout=N` announces less two seconds (both counted from when the
//!   answer's end was read, a little after the upstream's own clock started): an upstream
//!   closes an idle connection after its own timeout (uvicorn, which serves vLLM, and Node after
//!   5 s), and a request written on a connection the upstream is closing at that moment fails
//!   (`connection closed before message completed`). A task started with the pool's first
//!   connection ticks every 30 s and closes the expired ones and the HTTP/2 connection no
//!   request took for three ticks (60–90 s); at most [`MAX_IDLE_PER_HOST`] idle connections per
//!   host are kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Parts, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;
use tower::ServiceExt;

use super::h1;
use super::{host_header, BoxError, Connector, UpstreamError, HTTP2_KEEP_ALIVE};
use crate::domain::HttpVersion;
use crate::providers::body::SplicedBody;

/// Idle connections kept per host (a gateway talks to few hosts, with many requests each).
pub const MAX_IDLE_PER_HOST: usize = 1024;
/// How often the idle connections are looked at.
const REAP_EVERY: Duration = Duration::from_secs(30);
/// A shared HTTP/2 connection no request took for this many ticks is closed (60–90 s).
const IDLE_TICKS: u32 = 3;
/// What is taken off an upstream's announced `Keep-Alive: timeout`: a connection is not reused
/// within this much of the moment the upstream closes it (undici's `keepAliveTimeoutThreshold`;
/// it also covers the upstream's clock starting before poolgate read the answer's end).
const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(2);
/// The longest idle timeout a pool takes (`proxy.upstream_idle_timeout_ms` is checked against
/// it too), so that adding it to the clock cannot overflow.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Pooled connections a request tries before it makes a new one (each closed before it took
/// the request).
const MAX_REFUSALS: u32 = 4;

/// A connection as the connector made it (TCP, or TLS over it), boxed: an idle connection in the
/// pool and a body reading from one move a pointer.
pub type Stream = Box<TokioIo<<Connector as tower::Service<Uri>>::Response>>;
type H1Conn = h1::Connection<Stream>;
type H2Sender = http2::SendRequest<SplicedBody>;

/// The connections of one client.
pub struct Pool {
    connector: Connector,
    version: HttpVersion,
    /// How long an HTTP/1 connection stays reusable once idle (the upstream may announce less).
    idle_timeout: Duration,
    hosts: Mutex<Hosts>,
    /// Whether the idle reaper runs.
    reaping: AtomicBool,
}

#[derive(Default)]
struct Hosts {
    /// The reaper's clock.
    tick: u32,
    list: Vec<Host>,
}

/// One scheme and authority's connections.
struct Host {
    https: bool,
    authority: Authority,
    /// Idle HTTP/1 connections, each with the moment it stops being reusable; the newest last.
    idle: Vec<(H1Conn, Instant)>,
    /// The HTTP/2 connection every request to the host shares.
    shared: Option<H2Sender>,
    /// The reaper's tick when a request last took the shared connection.
    shared_used: u32,
    /// Held while a prior-knowledge HTTP/2 connection is made.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl Hosts {
    fn find(&mut self, https: bool, authority: &Authority) -> Option<&mut Host> {
        self.list
            .iter_mut()
            .find(|host| host.https == https && host.authority == *authority)
    }

    fn entry(&mut self, https: bool, authority: &Authority) -> &mut Host {
        let index = match self
            .list
            .iter()
            .position(|host| host.https == https && host.authority == *authority)
        {
            Some(index) => index,
            None => {
                self.list.push(Host {
                    https,
                    authority: authority.clone(),
                    idle: Vec::new(),
                    shared: None,
                    shared_used: 0,
                    connecting: Arc::default(),
                });
                self.list.len() - 1
            }
        };
        &mut self.list[index]
    }
}

/// A connection to send one request on.
enum Conn {
    Http1(H1Conn),
    Http2(H2Sender),
}

/// Why a request was not answered on a connection.
enum Unsent {
    /// The connection did not take it (it closed first): it may go to another one.
    Returned(Box<Request<SplicedBody>>),
    Failed(UpstreamError),
}

/// The way back to the pool of an HTTP/1 connection whose answer is being read.
pub struct Giveback {
    pool: Weak<Pool>,
    https: bool,
    authority: Authority,
    /// What the upstream's `Keep-Alive: timeout` leaves of the idle timeout, if it sent one.
    keep_for: Option<Duration>,
}

impl Giveback {
    fn give(self, conn: H1Conn) {
        if let Some(pool) = self.pool.upgrade() {
            let keep_for = self.keep_for.map_or(pool.idle_timeout, |keep_for| {
                keep_for.min(pool.idle_timeout)
            });
            pool.put(self.https, &self.authority, conn, keep_for);
        }
    }
}

impl Pool {
    pub fn new(connector: Connector, version: HttpVersion, idle_timeout: Duration) -> Pool {
        Pool {
            connector,
            version,
            idle_timeout: idle_timeout.min(MAX_IDLE_TIMEOUT),
            hosts: Mutex::default(),
            reaping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `request` (an absolute `http`/`https` URI) on a pooled or a new connection;
    /// `host` is the prebuilt `Host` value for HTTP/1 (built here when `None`).
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<SplicedBody>,
        host: Option<HeaderValue>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let target = request.uri().clone();
        let https = match target.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UpstreamError::InvalidUrl),
        };
        let authority = target
            .authority()
            .cloned()
            .ok_or(UpstreamError::InvalidUrl)?;
        // Reused connections that did not take the request, so far: past a few, a new one.
        let mut refused = 0;
        loop {
            let pooled = if refused < MAX_REFUSALS {
                self.checkout(https, &authority)
            } else {
                None
            };
            let (conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => {
                    let (conn, made) = self.connect(https, &authority, &target).await?;
                    // Not made here: another request's shared connection.
                    (conn, !made)
                }
            };
            match self
                .send_on(conn, request, &target, host.as_ref(), https, &authority)
                .await
            {
                Ok(response) => return Ok(response),
                Err(Unsent::Returned(back)) if reused => {
                    request = *back;
                    refused += 1;
                }
                Err(Unsent::Returned(_)) => return Err(UpstreamError::Unsent),
                Err(Unsent::Failed(error)) => return Err(error),
            }
        }
    }

    /// A pooled connection to the host: its shared HTTP/2 one, else its newest idle HTTP/1
    /// one still reusable; closed and expired ones found on the way are dropped.
    fn checkout(&self, https: bool, authority: &Authority) -> Option<Conn> {
        let mut hosts = self.lock();
        let tick = hosts.tick;
        let host = hosts.find(https, authority)?;
        if let Some(shared) = &host.shared {
            if !shared.is_closed() {
                let shared = shared.clone();
                host.shared_used = tick;
                return Some(Conn::Http2(shared));
            }
            host.shared = None;
        }
        if host.idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        // The newest idle connection still open; closed and expired ones go.
        while let Some((mut conn, until)) = host.idle.pop() {
            if until > now && conn.is_usable() {
                return Some(Conn::Http1(conn));
            }
        }
        None
    }

    /// A new connection; `true` with it when it was made for this request (`false`: a shared
    /// HTTP/2 connection another request made while this one waited). The wait for another
    /// request's connect is a small future; only the connect itself (TLS, the HTTP/2 handshake)
    /// is boxed, so the requests of a burst that wait for the first connection hold a few
    /// bytes each, not a connect's state each.
    async fn connect(
        self: &Arc<Self>,
        https: bool,
        authority: &Authority,
        target: &Uri,
    ) -> Result<(Conn, bool), UpstreamError> {
        if self.version != HttpVersion::Http2 {
            return Box::pin(self.open(https, authority, target)).await;
        }
        let connecting = Arc::clone(&self.lock().entry(https, authority).connecting);
        let _turn = connecting.lock().await;
        if let Some(conn) = self.checkout(https, authority) {
            return Ok((conn, false));
        }
        Box::pin(self.open(https, authority, target)).await
    }

    /// Connects (resolution, egress check, TCP, TLS under the connect timeout), then speaks
    /// HTTP/2 when asked to or when ALPN chose it, else HTTP/1.1. `true` with the connection
    /// when it is the one made here (`false`: ALPN chose HTTP/2 and another request's shared
    /// connection was up first, so this one is dropped and the request goes on that one).
    async fn open(
        self: &Arc<Self>,
        https: bool,
        authority: &Authority,
        target: &Uri,
    ) -> Result<(Conn, bool), UpstreamError> {
        let mut parts = Parts::default();
        parts.scheme = Some(if https { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let origin = Uri::from_parts(parts).unwrap_or_else(|_| target.clone());
        let io = self
            .connector
            .clone()
            .oneshot(origin)
            .await
            .map_err(UpstreamError::Connect)?;
        let negotiated_h2 = io.connected().is_negotiated_h2();
        let http2 = match self.version {
            HttpVersion::Http2 => {
                // Over TLS the upstream must have agreed to `h2` (the only protocol offered):
                // one that did not would fail only at the first request, as a send error.
                if https && !negotiated_h2 {
                    return Err(UpstreamError::Connect(
                        "the upstream did not agree to HTTP/2 (ALPN h2)".into(),
                    ));
                }
                true
            }
            HttpVersion::Http1 => false,
            HttpVersion::Auto => negotiated_h2,
        };
        if http2 {
            let mut builder = http2::Builder::new(BoxingExecutor);
            builder.timer(TokioTimer::new());
            // A dead peer of the long-lived shared connection is noticed by a ping.
            builder
                .keep_alive_interval(HTTP2_KEEP_ALIVE)
                .keep_alive_timeout(HTTP2_KEEP_ALIVE);
            let sender = self.drive(builder.handshake(io)).await?;
            let mut hosts = self.lock();
            let tick = hosts.tick;
            let host = hosts.entry(https, authority);
            match &host.shared {
                // Another request's connect (ALPN chose HTTP/2 for both) finished first: this
                // request goes on that one, and this connection closes with its last handle
                // instead of carrying one stream for as long as it lasts.
                Some(shared) if !shared.is_closed() => Ok((Conn::Http2(shared.clone()), false)),
                _ => {
                    host.shared = Some(sender.clone());
                    host.shared_used = tick;
                    Ok((Conn::Http2(sender), true))
                }
            }
        } else {
            self.start_reaper();
            Ok((
                Conn::Http1(h1::Connection::new(Box::new(TokioIo::new(io)))),
                true,
            ))
        }
    }

    /// Finishes a connection's `handshake` (its error is a connect failure), runs the
    /// connection in its own task (how it ended shows in the requests it carried) and makes
    /// sure the reaper runs; returns the connection's sender.
    async fn drive<S, C, E>(
        self: &Arc<Self>,
        handshake: impl Future<Output = Result<(S, C), E>>,
    ) -> Result<S, UpstreamError>
    where
        C: Future + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (sender, connection) = handshake
            .await
            .map_err(|error| UpstreamError::Connect(Box::new(error)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.start_reaper();
        Ok(sender)
    }

    async fn send_on(
        self: &Arc<Self>,
        conn: Conn,
        request: Request<SplicedBody>,
        target: &Uri,
        host: Option<&HeaderValue>,
        https: bool,
        authority: &Authority,
    ) -> Result<Response<PooledBody>, Unsent> {
        match conn {
            Conn::Http1(conn) => {
                // Origin form (`/path?query`; `/?query` for a URL with no path) and the `Host`
                // header, as hyper-util sent.
                let path = target.path_and_query().map_or("/", |path| path.as_str());
                let rooted;
                let path = if path.starts_with('?') {
                    rooted = format!("/{path}");
                    rooted.as_str()
                } else {
                    path
                };
                let built;
                let host = match host {
                    Some(host) => Some(host),
                    None => {
                        built = host_header(target);
                        built.as_ref()
                    }
                };
                let answer = conn
                    .send(
                        request.method(),
                        path,
                        request.headers(),
                        host,
                        request.body(),
                    )
                    .await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(failure) if failure.unsent => {
                        return Err(Unsent::Returned(Box::new(request)))
                    }
                    Err(failure) => {
                        return Err(Unsent::Failed(UpstreamError::Send(Box::new(failure.error))))
                    }
                };
                let giveback = Giveback {
                    pool: Arc::downgrade(self),
                    https,
                    authority: authority.clone(),
                    keep_for: announced_keep_alive(&answer.headers),
                };
                let mut response = Response::new(PooledBody::http1(answer.body, giveback));
                *response.status_mut() = answer.status;
                *response.version_mut() = answer.version;
                *response.headers_mut() = answer.headers;
                Ok(response)
            }
            Conn::Http2(mut sender) => {
                if sender.ready().await.is_err() {
                    self.forget_shared(https, authority);
                    return Err(Unsent::Returned(Box::new(request)));
                }
                let response = sender.try_send_request(request).await;
                let response = response.map_err(|mut error| match error.take_message() {
                    Some(back) => Unsent::Returned(Box::new(back)),
                    None => Unsent::Failed(UpstreamError::Send(Box::new(error.into_error()))),
                })?;
                Ok(response.map(PooledBody::Http2))
            }
        }
    }

    /// Drops the host's shared HTTP/2 connection once it failed.
    fn forget_shared(&self, https: bool, authority: &Authority) {
        if let Some(host) = self.lock().find(https, authority) {
            host.shared = None;
        }
    }

    /// An HTTP/1 connection whose answer was read to its end: idle from now on, reusable for
    /// `keep_for`. One kept for no time is dropped, which closes it.
    fn put(self: &Arc<Self>, https: bool, authority: &Authority, conn: H1Conn, keep_for: Duration) {
        if keep_for.is_zero() {
            return;
        }
        let until = Instant::now() + keep_for;
        let mut hosts = self.lock();
        let host = hosts.entry(https, authority);
        if host.idle.len() < MAX_IDLE_PER_HOST {
            host.idle.push((conn, until));
        }
    }

    /// Starts the idle reaper once, on the runtime of the first HTTP/1 connection (it ends
    /// with the pool).
    fn start_reaper(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap();
            }
        });
    }

    /// One reaper tick: drops the expired and the closed idle HTTP/1 connections and the
    /// HTTP/2 connection no request took for [`IDLE_TICKS`] ticks (streams still open on it go
    /// on; hyper closes it after them), and forgets hosts left with nothing.
    fn reap(&self) {
        self.reap_at(Instant::now());
    }

    fn reap_at(&self, now: Instant) {
        let mut hosts = self.lock();
        hosts.tick = hosts.tick.wrapping_add(1);
        let tick = hosts.tick;
        for host in &mut hosts.list {
            host.idle
                .retain_mut(|(conn, until)| *until > now && conn.is_usable());
            let unused = tick.wrapping_sub(host.shared_used) >= IDLE_TICKS;
            if unused || host.shared.as_ref().is_some_and(H2Sender::is_closed) {
                host.shared = None;
            }
        }
        // A host whose prior-knowledge connect is under way keeps its lock's entry.
        hosts.list.retain(|host| {
            !host.idle.is_empty()
                || host.shared.is_some()
                || Arc::strong_count(&host.connecting) > 1
        });
    }

    /// Idle HTTP/1 connections and shared HTTP/2 ones, for tests.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let hosts = self.lock();
        let idle = hosts.list.iter().map(|host| host.idle.len()).sum();
        let shared = hosts
            .list
            .iter()
            .filter(|host| host.shared.is_some())
            .count();
        (idle, shared)
    }

    /// A reaper tick as if it ran `later` from now.
    #[cfg(test)]
    pub fn reap_for_test(&self, later: Duration) {
        self.reap_at(Instant::now() + later);
    }

    #[cfg(test)]
    pub fn hosts_for_test(&self) -> usize {
        self.lock().list.len()
    }
}

/// What an upstream's `Keep-Alive: timeout=N` (seconds) leaves for reusing its connection:
/// N less [`KEEP_ALIVE_MARGIN`] (nothing for N ≤ 2); the smallest when several headers give
/// one. `None` without a readable timeout.
pub(super) fn announced_keep_alive(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get_all("keep-alive")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|parameter| {
            let (name, seconds) = parameter.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("timeout")
                .then(|| seconds.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .min()?;
    Some(Duration::from_secs(seconds).saturating_sub(KEEP_ALIVE_MARGIN))
}

// === impl PooledBody ===

/// An answer's body: read from its HTTP/1 connection, which goes back to the pool once the body
/// was read to its end, or from the shared HTTP/2 connection.
pub enum PooledBody {
    Http1 {
        body: h1::Body<Stream>,
        giveback: Option<Giveback>,
    },
    Http2(Incoming),
}

impl PooledBody {
    fn http1(body: h1::Body<Stream>, giveback: Giveback) -> PooledBody {
        let mut pooled = PooledBody::Http1 {
            body,
            giveback: Some(giveback),
        };
        // Nothing to read (a 204, a `content-length: 0`): the connection is free now.
        pooled.give_back_if_ended();
        pooled
    }

    fn give_back_if_ended(&mut self) {
        if let PooledBody::Http1 { body, giveback } = self {
            if body.is_end() {
                if let (Some(conn), Some(giveback)) = (body.take_connection(), giveback.take()) {
                    giveback.give(conn);
                }
            }
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match &mut *self {
            PooledBody::Http1 { body, .. } => {
                let data = ready!(body.poll_data(cx));
                self.give_back_if_ended();
                Poll::Ready(data.map(|data| {
                    data.map(http_body::Frame::data)
                        .map_err(|error| Box::new(error) as BoxError)
                }))
            }
            PooledBody::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|error| Box::new(error) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::Http1 { body, .. } => body.is_end(),
            PooledBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            PooledBody::Http1 { body, .. } => body.exact_length().map_or_else(
                http_body::SizeHint::default,
                http_body::SizeHint::with_exact,
            ),
            PooledBody::Http2(body) => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PooledBody::Http1 { giveback, .. } => f
                .debug_struct("PooledBody::Http1")
                .field("pooled", &giveback.is_some())
                .finish_non_exhaustive(),
            PooledBody::Http2(_) => f.debug_struct("PooledBody::Http2").finish_non_exhaustive(),
        }
    }
}

/// Spawns each of hyper's HTTP/2 futures (the connection's, and per request the ones that send
/// the body and wait for the answer's head) boxed on the current runtime, as hyper-util's
/// client did. Spawned as they are, each request's short-lived task is as large as hyper's
/// biggest HTTP/2 future (the connection's): 5,000 streams opened at once held 9.1 KB each
/// instead of 6.1 KB (docs/benchmarks.md, session 14).
#[derive(Clone, Copy)]
struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let future: Pin<Box<dyn std::future::Future<Output = F::Output> + Send>> = Box::pin(future);
        tokio::spawn(future);
    }
}
