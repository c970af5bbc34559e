//! The thread-per-core server (`[server] runtime = "thread_per_core"`): one OS thread per core,
//! each running a single-threaded tokio runtime with its own listener on the shared port
//! (`SO_REUSEPORT`: the kernel spreads new connections over the listeners). A connection, the
//! requests on it, their upstream calls (each thread has its own upstream client, chosen through
//! [`worker_index`]) and their streams all stay on the thread that accepted it, so a request is
//! never handed to another thread and never wakes one. What is not per request (the control
//! plane, the usage writer, Redis, metrics) stays on the process's main runtime.
//!
//! Shutdown: drain stops every accept loop; each thread waits for its own connections, then
//! keeps its runtime running (tasks started by requests, such as a budget settle, finish there)
//! until [`ServerHandle::finish`] says the server is done with it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use super::{Accepting, AppBody, AppService, ServerHandle, ServerSettings, Spawn};

/// The most per-core runtimes a server runs.
pub const MAX_THREADS: usize = 1024;

/// The listen backlog of each listener (what `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the per-core runtime this thread runs (`None` off those threads).
pub fn worker_index() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// The number of per-core runtimes `per_core_threads = 0` means: one per available core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The first listener of the per-core server on `addr`: [`bind_shared_port`], after checking that
/// nothing listens on a named port yet. `SO_REUSEPORT` would let this listener join another
/// process's group on the port (same user, same option) and share its connections; a plain
/// bind first fails on a taken port with "address in use", as the work-stealing server does.
pub fn bind_first(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() != 0 {
        let probe = socket_for(addr)?;
        probe.set_reuseaddr(true)?;
        probe.bind(addr)?;
    }
    bind_shared_port(addr)
}

/// A listener on `addr` that other listeners may share (`SO_REUSEADDR` as `TcpListener::bind`
/// sets it, plus `SO_REUSEPORT`), registered with the calling thread's runtime.
pub fn bind_shared_port(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A TCP socket of `addr`'s family.
fn socket_for(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// Serves on `threads` per-core runtimes: `first` (bound by [`super::Server::bind`]) goes to the
/// first, the others bind the same address. Returns once every connection has closed after a
/// drain or a cut.
pub(super) async fn serve<S: AppService<B>, B: AppBody>(
    threads: usize,
    settings: Arc<ServerSettings>,
    handle: ServerHandle,
    first: TcpListener,
    service: S,
) {
    let addr = match first.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            tracing::error!(%error, "thread-per-core server: reading the listener's address");
            return;
        }
    };
    let first = match first.into_std() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "thread-per-core server: detaching the listener");
            return;
        }
    };
    let mut first = Some(first);
    let mut closed = Vec::with_capacity(threads);
    for index in 0..threads {
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        let worker = Worker {
            index,
            listener: match first.take() {
                Some(listener) => Listen::On(listener),
                None => Listen::Bind(addr),
            },
            accepting: Accepting::new(Arc::clone(&settings), handle.clone()),
            service: service.clone(),
            closed: closed_tx,
        };
        match worker.start() {
            Ok(()) => closed.push(closed_rx),
            Err(error) => {
                tracing::error!(%error, index, "thread-per-core server: starting a thread");
            }
        }
    }
    for thread_closed in closed {
        // An error means the thread ended early (its runtime failed); nothing left to wait for.
        let _ = thread_closed.await;
    }
}

/// Where a per-core thread accepts.
enum Listen {
    /// The listener [`super::Server::bind`] made (the first thread's).
    On(std::net::TcpListener),
    /// A listener of its own on the same port, bound on the thread's runtime.
    Bind(SocketAddr),
}

/// One per-core thread's share of the server.
struct Worker<S> {
    index: usize,
    listener: Listen,
    accepting: Accepting,
    service: S,
    /// Told once every connection this thread accepted has closed.
    closed: oneshot::Sender<()>,
}

impl<S> Worker<S> {
    fn start<B: AppBody>(self) -> std::io::Result<()>
    where
        S: AppService<B>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("poolgate-core-{}", self.index))
            .spawn(move || {
                WORKER.with(|worker| worker.set(Some(self.index)));
                runtime.block_on(self.run());
            })?;
        Ok(())
    }

    async fn run<B: AppBody>(self)
    where
        S: AppService<B>,
    {
        let Worker {
            index,
            listener,
            accepting,
            service,
            closed,
        } = self;
        let mut finished = accepting.handle.finished.subscribe();
        let listener = match listener {
            Listen::On(listener) => TcpListener::from_std(listener),
            Listen::Bind(addr) => bind_shared_port(addr),
        };
        let listener = match listener {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, index, "thread-per-core server: no listener; this thread serves nothing");
                return;
            }
        };
        let connections = tokio_util::task::TaskTracker::new();
        accepting
            .accept_until_drained(&listener, &service, Spawn::Tracked(&connections))
            .await;
        drop(listener);
        connections.close();
        connections.wait().await;
        let _ = closed.send(());
        // Tasks that requests started on this runtime run until the server is done with it.
        let _ = finished.wait_for(|finished| *finished).await;
    }
}
