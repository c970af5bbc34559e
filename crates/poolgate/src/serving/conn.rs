//! One client connection — [`h1`]'s for HTTP/1.1 (unless `server.http1_server = "hyper"`),
//! hyper's for HTTP/2 — driven under three clocks: the first request must arrive within
//! `header_read_timeout` (a silent socket and HTTP/2's preface included), a connection with no
//! request in flight closes after `keep_alive_timeout` (HTTP/1.1: the shorter of the two, as
//! hyper's header timer made it), and the server's drain / cut signals (watched by
//! [`PhaseChange`], which costs the connection's task an atomic swap per wake-up, not a lock).
//!
//! Which protocol a connection speaks is seen by peeking at its first bytes ([`sniff`]), not by
//! reading them: hyper-util's auto builder reads the 24 bytes of HTTP/2's preface first and
//! hands them to hyper's HTTP/1 connection as its first read, after which hyper grows its 8 KiB
//! read buffer to 16 KiB for the rest of the head — 9 KB more memory per HTTP/1.1 connection
//! for its whole life (#13). The auto builder still serves a connection whose first bytes do
//! not tell yet (a strict prefix of the preface, or none).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tower::ServiceExt;

use super::body::{BodyPace, TimedBody};
use super::h1;
use super::io::WriteTimeout;
use super::{AppBody, AppService, Phase, ServerSettings};

type Builder = auto::Builder<TokioExecutor>;

/// hyper's connection settings, built once per server: one builder per way a connection can
/// start.
pub(super) struct Builders {
    /// Serves HTTP/1 only, reading nothing first.
    http1: Builder,
    /// `None` when `server.http2` is off.
    http2: Option<Http2Builders>,
    /// HTTP/1 connections are served by [`h1`], not by hyper (`server.http1_server`).
    own_http1: bool,
}

/// The builders a server that speaks HTTP/2 too needs besides its HTTP/1-only one.
struct Http2Builders {
    /// Serves HTTP/2 only (a client whose first bytes are the preface).
    only: Builder,
    /// Reads the first bytes itself and picks (a client whose first bytes did not tell).
    either: Builder,
}

impl Builders {
    pub(super) fn new(settings: &ServerSettings) -> Builders {
        let either = builder(settings);
        Builders {
            http1: either.clone().http1_only(),
            http2: settings.http2.then(|| Http2Builders {
                only: either.clone().http2_only(),
                either,
            }),
            own_http1: settings.http1_server == super::Http1Server::Poolgate,
        }
    }
}

fn builder(settings: &ServerSettings) -> Builder {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(settings.max_buf_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_send_buf_size(settings.max_buf_size)
        // Detect dead peers of long-lived HTTP/2 connections.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// HTTP/2's connection preface (RFC 9113, section 3.4): what a client with prior knowledge
/// sends first.
pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say about its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sniffed {
    Http1,
    Http2,
    /// A strict prefix of the preface, nothing (the client closed), or an error.
    Undecided,
}

/// Looks at the first bytes of `stream` without reading them, waiting until there are some.
async fn sniff(stream: &TcpStream) -> Sniffed {
    let mut first = [0u8; H2_PREFACE.len()];
    match stream.peek(&mut first).await {
        Ok(len) => sniffed(&first[..len]),
        Err(_) => Sniffed::Undecided,
    }
}

/// What `first`, the bytes a connection has sent so far, say about its protocol.
pub(super) fn sniffed(first: &[u8]) -> Sniffed {
    if first.is_empty() {
        Sniffed::Undecided
    } else if !H2_PREFACE.starts_with(first) {
        Sniffed::Http1
    } else if first.len() == H2_PREFACE.len() {
        Sniffed::Http2
    } else {
        Sniffed::Undecided
    }
}

/// An accepted socket with its place under the connection cap.
pub(super) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// Serves one connection until it closes, idles out, or the server cuts it.
pub(super) async fn serve_connection<S: AppService<B>, B: AppBody>(
    accepted: Accepted,
    service: S,
    builders: Arc<Builders>,
    settings: Arc<ServerSettings>,
    mut phase: watch::Receiver<Phase>,
) {
    let Accepted {
        stream,
        peer,
        permit,
    } = accepted;
    // From the accept: the first request's deadline counts the sniff too.
    let activity = Arc::new(Activity::new());
    let idle = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(idle);
    let (builder, http1) = match &builders.http2 {
        None => (&builders.http1, true),
        Some(http2) => {
            let sniffed = tokio::select! {
                biased;
                sniffed = sniff(&stream) => sniffed,
                () = &mut idle => {
                    tracing::debug!(%peer, "closing a connection that sent nothing in time");
                    return;
                }
                () = phase_left_running(&mut phase) => return,
            };
            match sniffed {
                Sniffed::Http1 => (&builders.http1, true),
                Sniffed::Http2 => (&http2.only, false),
                Sniffed::Undecided => (&http2.either, false),
            }
        }
    };
    let service = ConnService {
        inner: service,
        activity: Arc::clone(&activity),
        pace: settings.body_pace,
    };
    let clocks = Clocks {
        peer,
        activity: &activity,
        idle,
        settings: &settings,
        phase,
    };
    if http1 && builders.own_http1 {
        let conn = h1::serve(
            stream,
            service,
            settings.max_buf_size,
            settings.write_timeout,
        );
        tokio::pin!(conn);
        // For HTTP/1 an idle keep-alive connection also waits for a request head: hyper's
        // header clock applies to it (see `ServerSettings::keep_alive_timeout`), and it ends a
        // head still arriving then too (no grace after the polite close).
        let idle = Idle {
            limit: settings
                .keep_alive_timeout
                .min(settings.header_read_timeout),
            grace: Duration::ZERO,
        };
        drive(conn, |conn| conn.graceful_shutdown(), clocks, idle).await;
    } else {
        let io = TokioIo::new(WriteTimeout::new(stream, settings.write_timeout));
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let idle = Idle {
            limit: settings.keep_alive_timeout,
            grace: settings.header_read_timeout,
        };
        drive(conn, |conn| conn.graceful_shutdown(), clocks, idle).await;
    }
    drop(permit);
}

/// How long a served connection may idle.
struct Idle {
    /// With no request in flight, then a polite close (HTTP/2: a GOAWAY).
    limit: Duration,
    /// After the polite close, before the connection is dropped.
    grace: Duration,
}

/// What [`drive`] watches besides the connection itself.
struct Clocks<'a> {
    peer: SocketAddr,
    activity: &'a Activity,
    /// The first request's deadline, then the idle one.
    idle: Pin<&'a mut tokio::time::Sleep>,
    settings: &'a ServerSettings,
    phase: watch::Receiver<Phase>,
}

/// Drives a connection `conn` under the three clocks and the server's phase until it ends.
/// `idle_rule`: how long a connection that was served stays open with no request in flight.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    clocks: Clocks<'_>,
    idle_rule: Idle,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let Clocks {
        peer,
        activity,
        mut idle,
        settings,
        mut phase,
    } = clocks;
    let mut draining = false;
    // Copied out: the borrow (a read lock on the phase) must not live across the poll below.
    let phase_now = *phase.borrow_and_update();
    match phase_now {
        Phase::Running => {}
        Phase::Draining => {
            // A request already in the socket (the sniff saw its first bytes; without HTTP/2,
            // maybe) is read before the shutdown, and so answered: hyper closes a connection
            // that has read nothing at once.
            let polled = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
            if let Poll::Ready(result) = polled {
                log_end(peer, result);
                return;
            }
            draining = true;
            graceful_shutdown(conn.as_mut());
        }
        Phase::Cut => return,
    }
    let mut phase_change = Some(PhaseChange::new(phase));
    loop {
        tokio::select! {
            // The connection first: it is what wakes the task nearly every time.
            biased;
            result = conn.as_mut() => {
                log_end(peer, result);
                break;
            }
            changed = async { phase_change.as_mut()?.await }, if phase_change.is_some() => {
                let Some(mut phase) = changed else {
                    // The server's handle is gone: nothing will drain or cut any more.
                    phase_change = None;
                    continue;
                };
                let now = *phase.borrow_and_update();
                phase_change = Some(PhaseChange::new(phase));
                match now {
                    Phase::Cut => break,
                    Phase::Draining if !draining => {
                        draining = true;
                        graceful_shutdown(conn.as_mut());
                    }
                    Phase::Draining | Phase::Running => {}
                }
            }
            () = &mut idle => {
                let now = Instant::now();
                match activity.idle_since() {
                    None => idle.as_mut().reset(now + idle_rule.limit),
                    Some((since, served)) => {
                        let limit = if served {
                            idle_rule.limit
                        } else {
                            settings.header_read_timeout
                        };
                        if now < since + limit {
                            idle.as_mut().reset(since + limit);
                        } else if served && !draining {
                            // Idle keep-alive: close politely (HTTP/2 gets a GOAWAY) and give
                            // it one more period before dropping it.
                            draining = true;
                            graceful_shutdown(conn.as_mut());
                            idle.as_mut().reset(now + idle_rule.grace);
                        } else {
                            tracing::debug!(%peer, served, "closing a connection that sent no (further) request in time");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// What hyper's connection ended with: an error is logged (at debug: a client that reset its
/// connection is routine).
fn log_end(peer: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "client connection ended with an error");
    }
}

/// Resolves once the server drains or cuts (a connection that has not sent its first bytes yet
/// has nothing to finish); never if the server's handle is gone.
async fn phase_left_running(phase: &mut watch::Receiver<Phase>) {
    loop {
        if *phase.borrow_and_update() != Phase::Running {
            return;
        }
        if phase.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

// === impl PhaseChange ===

/// Resolves with the receiver once the server's phase changed (`None`: the server's handle is
/// gone). `select!` polls every branch on each wake-up of the connection's task, and a watch's
/// `changed()` takes its `Notify`'s lock on every poll (≈ 0.5 % of poolgate's CPU, #13): the
/// `changed()` inside is polled only once its own waker fired, every other poll is an atomic
/// swap.
struct PhaseChange {
    changed: Pin<Box<dyn Future<Output = Option<watch::Receiver<Phase>>> + Send>>,
    woken: Arc<WokenFlag>,
    /// Wakes through `woken`: what the inner future registers.
    waker: Waker,
}

/// Set when the inner future's waker fired; that waker also wakes the task.
struct WokenFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for WokenFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl PhaseChange {
    fn new(mut phase: watch::Receiver<Phase>) -> Self {
        let woken = Arc::new(WokenFlag {
            // The first poll polls the inner future (and registers its waker).
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            changed: Box::pin(async move { phase.changed().await.ok().map(|()| phase) }),
            waker: Waker::from(Arc::clone(&woken)),
            woken,
        }
    }
}

impl Future for PhaseChange {
    type Output = Option<watch::Receiver<Phase>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Registered before the flag is read: a wake-up after the read wakes this task.
        self.woken.task.register(cx.waker());
        if !self.woken.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.changed
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

// === impl Activity ===

/// Requests in flight on one connection and since when it is idle.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// Milliseconds after `opened` when the last request finished.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        InFlight(Arc::clone(self))
    }

    /// `None` while a request is in flight; else since when idle, and whether any request came.
    fn idle_since(&self) -> Option<(Instant, bool)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some((since, self.served.load(Ordering::Acquire)))
    }
}

/// Held by a request from its head until its answer's body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(elapsed, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl ConnService ===

/// The hyper service of one connection: wraps the request body in a [`TimedBody`], counts the
/// request in flight until its answer is done, and calls the app.
struct ConnService<S> {
    inner: S,
    activity: Arc<Activity>,
    pace: Option<BodyPace>,
}

impl<S, B, RB> hyper::service::Service<http::Request<RB>> for ConnService<S>
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone,
    RB: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<InFlightBody<B>>;
    type Error = Infallible;
    type Future = RequestFuture<tower::util::Oneshot<S, http::Request<axum::body::Body>>>;

    fn call(&self, request: http::Request<RB>) -> Self::Future {
        let guard = self.activity.begin();
        let pace = self.pace;
        let request = request.map(|body| axum::body::Body::new(TimedBody::new(body, pace)));
        RequestFuture {
            inner: self.inner.clone().oneshot(request),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// The app's answer, with the in-flight guard moved into its body.
    pub(super) struct RequestFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B> Future for RequestFuture<F>
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
{
    type Output = Result<http::Response<InFlightBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| InFlightBody { inner, guard })))
    }
}

pin_project_lite::pin_project! {
    /// An answer body that keeps its request counted as in flight until it is done.
    pub(super) struct InFlightBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker counting its wake-ups.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A watched phase, its change future, and a waker counting how often the change woke it.
    fn watched() -> (watch::Sender<Phase>, PhaseChange, Arc<Count>, Waker) {
        let (sender, receiver) = watch::channel(Phase::Running);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (sender, PhaseChange::new(receiver), count, waker)
    }

    #[tokio::test]
    async fn a_phase_change_wakes_the_task_and_resolves_with_the_new_phase() {
        let (sender, mut change, count, waker) = watched();
        let mut cx = Context::from_waker(&waker);

        assert!(Pin::new(&mut change).poll(&mut cx).is_pending());
        // Polled again without a wake-up: still pending, and the inner future is not polled.
        assert!(Pin::new(&mut change).poll(&mut cx).is_pending());
        assert!(!change.woken.woken.load(Ordering::SeqCst));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);

        sender.send_replace(Phase::Draining);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the change wakes the task"
        );
        let Poll::Ready(Some(mut receiver)) = Pin::new(&mut change).poll(&mut cx) else {
            panic!("the change did not resolve");
        };
        assert_eq!(*receiver.borrow_and_update(), Phase::Draining);
    }

    #[tokio::test]
    async fn a_dropped_server_handle_resolves_with_none() {
        let (sender, mut change, count, waker) = watched();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut change).poll(&mut cx).is_pending());
        drop(sender);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            Pin::new(&mut change).poll(&mut cx),
            Poll::Ready(None)
        ));
    }
}
