//! Start-up and shutdown: the data dir and its lock, telemetry (metrics; traces when an OTLP
//! endpoint is set), the shared runtime state (Redis, when configured), the control plane
//! (database, master key, config sync, background writers), the admin token, the data plane, the
//! HTTP listener served by [`crate::serving`] (timeouts, connection cap), and a graceful stop on
//! SIGINT/SIGTERM: `/health/ready` turns 503 at once (and poolgate keeps serving for
//! `health.shutdown_delay`, so load balancers move away first), then requests finish, every usage
//! record is flushed, the instance leaves the instance registry, and the last spans are exported.

use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::AppState;
use crate::config::Config;
use crate::control::ControlPlane;
use crate::crypto::generate_admin_token;
use crate::error::InitError;
use crate::files::{lock_data_dir, write_secret_file, DataDirLock};
use crate::runtime::Cluster;
use crate::serving::{limits::open_file_limit, Server, ServerHandle};
use crate::shared::{RedisOptions, RedisShared};
use crate::state::DataPlane;
use crate::telemetry::{ConnectionStats, ConnectionStatsSource, Tracing};

pub const ADMIN_TOKEN_ENV: &str = "POOLGATE_ADMIN_TOKEN";

/// The admin token: `POOLGATE_ADMIN_TOKEN`, else `<data_dir>/admin-token`, else a new one
/// (written there and printed once).
pub fn load_admin_token(config: &Config) -> Result<SecretString, InitError> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        if token.trim().len() < 16 {
            return Err(InitError::Invalid(format!(
                "{ADMIN_TOKEN_ENV} must be at least 16 characters"
            )));
        }
        return Ok(SecretString::from(token.trim().to_owned()));
    }
    let path = config.data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() < 16 => Err(InitError::Invalid(format!(
            "the admin token in {} must be at least 16 characters (delete the file to generate a new one)",
            path.display()
        ))),
        Ok(text) => Ok(SecretString::from(text.trim().to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = generate_admin_token();
            write_secret_file(&path, token.expose_secret())?;
            // Printed once, on purpose not through the logger.
            eprintln!(
                "\n  poolgate generated an admin token (stored in {}):\n\n    {}\n\n  Use it as `Authorization: Bearer <token>` for /admin/api and the dashboard.\n",
                path.display(),
                token.expose_secret()
            );
            Ok(token)
        }
        Err(error) => Err(InitError::io(format!("reading {}", path.display()), error)),
    }
}

/// A running gateway (used by `main` and by tests).
pub struct Running {
    pub addr: SocketAddr,
    pub data: DataPlane,
    pub control: ControlPlane,
    /// The client side: drain, cut, and its counters (accept errors, rejected connections).
    pub server: ServerHandle,
    _lock: DataDirLock,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), InitError>>,
}

impl Running {
    /// Stops accepting, lets requests finish (within the grace period), flushes usage.
    pub async fn shutdown(mut self) -> Result<(), InitError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server stopped on its own (signal).
    pub async fn wait(self) -> Result<(), InitError> {
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(InitError::Invalid(format!("server task failed: {error}"))),
        }
    }
}

/// Starts everything and serves until `shutdown()` or, with `handle_signals`, SIGINT/SIGTERM.
pub async fn start(config: Config, handle_signals: bool) -> Result<Running, InitError> {
    // Listening for signals from the first moment: a SIGTERM right after "poolgate listening" is
    // a graceful stop, not the default action (an exit without flushing anything).
    let signals = handle_signals.then(ShutdownSignals::install);
    let config = Arc::new(config);
    crate::files::ensure_data_dir(&config.data_dir)?;
    let lock = lock_data_dir(&config.data_dir)?;
    let (observer, traces) = crate::telemetry::start(&config.telemetry)?;
    let redis = match start_shared_state(&config).await {
        Ok(redis) => redis,
        Err(error) => {
            if let Some(traces) = traces {
                traces.shutdown().await;
            }
            return Err(error);
        }
    };
    if let Some(redis) = &redis {
        redis.report_to(observer.metrics().redis());
    }
    let cluster = redis.as_ref().map(|redis| {
        Arc::new(Cluster {
            shared: Arc::clone(redis) as Arc<dyn crate::shared::SharedRuntime>,
            fail_closed: config.redis.as_ref().is_some_and(|r| r.fail_closed),
        })
    });
    let control = match ControlPlane::open_with(Arc::clone(&config), observer, cluster).await {
        Ok(control) => control,
        Err(error) => {
            if let Some(redis) = &redis {
                redis.shutdown().await;
            }
            if let Some(traces) = traces {
                traces.shutdown().await;
            }
            return Err(error);
        }
    };
    match prepare(&config, &control).await {
        Ok((data, listener, addr, server)) => {
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let app = crate::api::App::new(AppState {
                data: data.clone(),
                control: control.clone(),
            });
            let handle = server.handle();
            let task = tokio::spawn(serve(
                server,
                listener,
                app,
                stop_rx,
                StopPlan {
                    signals,
                    delay: config.health.shutdown_delay,
                    grace: config.proxy.shutdown_grace,
                },
                data.clone(),
                control.clone(),
                redis,
                traces,
            ));
            Ok(Running {
                addr,
                data,
                control,
                server: handle,
                _lock: lock,
                stop: Some(stop_tx),
                task,
            })
        }
        Err(error) => {
            control.shutdown().await;
            if let Some(redis) = &redis {
                redis.shutdown().await;
            }
            if let Some(traces) = traces {
                traces.shutdown().await;
            }
            Err(error)
        }
    }
}

/// Connects the shared runtime state when a Redis URL is configured. Redis being down is not an
/// error (the instance starts degraded and goes shared by itself when Redis answers); a URL that
/// cannot be used is.
async fn start_shared_state(config: &Config) -> Result<Option<Arc<RedisShared>>, InitError> {
    let Some(settings) = &config.redis else {
        return Ok(None);
    };
    let options = RedisOptions {
        url: settings.url.clone(),
        instance_id: config.instance_id.clone(),
        key_prefix: settings.key_prefix.clone(),
        call_timeout: settings.call_timeout,
        connect_timeout: settings.connect_timeout,
        breaker_failures: settings.breaker_failures,
        breaker_open_for: settings.breaker_open_for,
        heartbeat_interval: settings.heartbeat_interval,
        allowance_max: settings.allowance_max,
    };
    let redis = RedisShared::start(options)
        .await
        .map_err(|error| InitError::Config(format!("redis.url: {error}")))?;
    Ok(Some(Arc::new(redis)))
}

/// Everything between opening the control plane and serving: the config sync, the admin token,
/// the data plane, the client-side server and the listener.
async fn prepare(
    config: &Config,
    control: &ControlPlane,
) -> Result<(DataPlane, TcpListener, SocketAddr, Server), InitError> {
    control
        .sync_config()
        .await
        .map_err(|error| InitError::Config(format!("syncing the config file: {error}")))?;
    let admin_token = load_admin_token(config)?;
    let data = control.data_plane(admin_token)?;
    let server = Server::new(config.server.clone())
        .map_err(|invalid| InitError::Config(invalid.to_string()))?;
    data.observer.watch_connections(Arc::new(server.handle()))?;
    let listener = server
        .bind(config.listen)
        .await
        .map_err(|e| InitError::io(format!("binding {}", config.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| InitError::io("reading the bound address", e))?;
    let live = data.live();
    let runtime_state = match control.cluster() {
        Some(cluster) => cluster.shared.mode().as_str(),
        None => "local",
    };
    tracing::info!(
        %addr,
        instance = %config.instance_id,
        data_dir = %config.data_dir.display(),
        database = %config.database_url,
        runtime_state,
        backends = live.backends.len(),
        models = live.models.len(),
        traces = data.observer.tracing_enabled(),
        max_connections = config.server.max_connections,
        max_in_flight = config.proxy.max_in_flight,
        server_runtime = config.server.runtime.as_str(),
        per_core_threads = config.server.runtime.per_core_threads(),
        open_file_limit = open_file_limit().map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        "poolgate listening"
    );
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "poolgate serves plain HTTP on a non-loopback address: client keys, the admin token and prompts cross the network unencrypted; put a TLS-terminating proxy in front or listen on 127.0.0.1"
        );
    }
    Ok((data, listener, addr, server))
}

/// How a stop goes: on `Running::shutdown` (or SIGINT/SIGTERM with `handle_signals`), serve on
/// for `delay` with `/health/ready` at 503, then stop accepting and give requests `grace`.
struct StopPlan {
    signals: Option<ShutdownSignals>,
    delay: std::time::Duration,
    grace: std::time::Duration,
}

#[expect(
    clippy::too_many_arguments,
    reason = "the parts of one running server, handed over once by `start`"
)]
async fn serve(
    server: Server,
    listener: TcpListener,
    app: crate::api::App,
    stop: oneshot::Receiver<()>,
    plan: StopPlan,
    data: DataPlane,
    control: ControlPlane,
    redis: Option<Arc<RedisShared>>,
    traces: Option<Tracing>,
) -> Result<(), InitError> {
    let StopPlan {
        mut signals,
        delay: shutdown_delay,
        grace,
    } = plan;
    let handle = server.handle();
    let mut serving = tokio::spawn(server.serve(listener, app));
    // However the server ends, per-core runtimes end with this task.
    let _finish = FinishOnDrop(handle.clone());
    let ended_early = tokio::select! {
        _ = stop => false,
        () = async {
            match signals.as_mut() {
                Some(signals) => signals.recv().await,
                None => std::future::pending().await,
            }
        } => false,
        // The accept loop ended on its own (it only does when told to): nothing to drain.
        _ = &mut serving => true,
    };
    if !ended_early {
        // Load balancers see 503 first; the listener stays open for the delay.
        control.readiness().begin_drain();
        if !shutdown_delay.is_zero() {
            tracing::info!(
                ?shutdown_delay,
                "shutting down: /health/ready answers 503; still serving for the shutdown delay"
            );
            tokio::time::sleep(shutdown_delay).await;
        }
        tracing::info!("shutting down: finishing in-flight requests");
        // Stop accepting; every connection finishes the requests it has and closes.
        handle.drain();
        if tokio::time::timeout(grace, &mut serving).await.is_err() {
            tracing::warn!(?grace, "grace period over; ending the remaining streams");
            data.cancel_streams();
            // Let the streams write their last event, then close whatever is still open.
            if tokio::time::timeout(std::time::Duration::from_millis(500), &mut serving)
                .await
                .is_err()
            {
                handle.cut();
                let _ = serving.await;
            }
        }
    }
    // Wait for every request under way to hand over its usage record (cut streams included;
    // a request still waiting on an upstream gets a few more seconds).
    if !data
        .usage
        .wait_idle(std::time::Duration::from_secs(5))
        .await
    {
        tracing::warn!(
            pending = data.usage.pending(),
            "requests still running at shutdown; their usage records are lost"
        );
    }
    drop(data);
    // Flush usage and health.
    let written = control.shutdown().await;
    tracing::info!(records = written, "usage records flushed");
    if let Some(redis) = redis {
        // Leaves the instance registry: the others' shares grow at once.
        redis.shutdown().await;
    }
    // The spans of the last requests (the stream ends included) are queued by now.
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    Ok(())
}

/// Tells the server it is done with ([`ServerHandle::finish`]) when dropped: at the end of
/// [`serve`] — after the usage flush, so that tasks requests started on a per-core runtime (a
/// budget settle) ran to the end — or if that task is cancelled.
struct FinishOnDrop(ServerHandle);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// SIGINT and SIGTERM, listened for from [`ShutdownSignals::install`] on.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for {name}");
                    None
                }
            };
            ShutdownSignals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Resolves at the first SIGINT or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(self.interrupt.as_mut()) => {}
                () = next(self.terminate.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The connection figures of `/metrics` (`poolgate_connections_*`), read at scrape time.
impl ConnectionStatsSource for ServerHandle {
    fn connection_stats(&self) -> ConnectionStats {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.stats();
        ConnectionStats {
            open: u64::try_from(self.open_connections()).unwrap_or(u64::MAX),
            accepted: stats.accepted.load(Relaxed),
            rejected: stats.rejected.load(Relaxed),
            accept_errors: stats.accept_errors.load(Relaxed),
        }
    }
}
