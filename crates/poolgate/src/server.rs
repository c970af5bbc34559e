//! Start-up and shutdown: data dir, master key (checked against the database's fingerprint),
//! admin token, store, config sync, background writers, the HTTP listener, and a graceful stop on
//! SIGINT/SIGTERM that lets requests finish and flushes every usage record.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::serve::ListenerExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::crypto::{generate_admin_token, mask_secret, MasterKey, Sealer};
use crate::domain::{now_ms, BackendId, BackendRecord, PersistedHealth, Source};
use crate::error::InitError;
use crate::state::{spawn_health_writer, AppState, HealthWriter};
use crate::store::{self, ConfigStore, Stores};
use crate::usage::{spawn_writer, UsageWriter};

pub const MASTER_KEY_ENV: &str = "POOLGATE_MASTER_KEY";
pub const ADMIN_TOKEN_ENV: &str = "POOLGATE_ADMIN_TOKEN";
const FINGERPRINT_SETTING: &str = "master_key_fingerprint";
const VERSION_SETTING: &str = "master_key_version";

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    Env,
    File(PathBuf),
}

/// Creates the data dir (0700 on Unix) if missing.
pub fn ensure_data_dir(dir: &Path) -> Result<(), InitError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| InitError::io(format!("creating data dir {}", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// An exclusive lock on `<data_dir>/poolgate.lock`, held by a running gateway (and by CLI commands
/// that write the store) so that, e.g., a key rotation cannot run under a live gateway.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data-dir lock, or says who holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, InitError> {
    let path = dir.join("poolgate.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| InitError::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(InitError::Invalid(format!(
            "the data dir {} is in use by a running poolgate (stop it first, or use the admin API)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(InitError::io(format!("locking {}", path.display()), error))
        }
    }
}

/// Writes a secret file readable only by its owner.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), InitError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| InitError::io(format!("writing {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| InitError::io(format!("writing {}", path.display()), e))
}

/// The key file path in use when the key does not come from the environment.
pub fn master_key_path(config: &Config) -> PathBuf {
    config
        .master_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("master.key"))
}

/// Loads the master key: `POOLGATE_MASTER_KEY`, else the key file, else a new key file.
pub fn load_master_key(config: &Config) -> Result<(MasterKey, MasterKeySource), InitError> {
    if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
        let key = MasterKey::from_base64(&text)
            .map_err(|e| InitError::MasterKey(format!("{MASTER_KEY_ENV}: {e}")))?;
        return Ok((key, MasterKeySource::Env));
    }
    let path = master_key_path(config);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = MasterKey::from_base64(&text)
                .map_err(|e| InitError::MasterKey(format!("{}: {e}", path.display())))?;
            Ok((key, MasterKeySource::File(path)))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if config.master_key_file.is_some() {
                return Err(InitError::MasterKey(format!(
                    "key file {} does not exist",
                    path.display()
                )));
            }
            let key = MasterKey::generate();
            write_secret_file(&path, key.to_base64().expose_secret())?;
            tracing::warn!(
                path = %path.display(),
                "generated a new master key file; back it up — without it the stored upstream keys cannot be decrypted. Set {MASTER_KEY_ENV} to keep it elsewhere."
            );
            Ok((key, MasterKeySource::File(path)))
        }
        Err(error) => Err(InitError::io(format!("reading {}", path.display()), error)),
    }
}

/// Checks the key against the fingerprint stored at first start (storing it if absent).
pub async fn open_sealer(store: &dyn ConfigStore, key: MasterKey) -> Result<Sealer, InitError> {
    let fingerprint = key.fingerprint();
    match store.get_setting(FINGERPRINT_SETTING).await? {
        Some(stored) if stored != fingerprint => Err(InitError::MasterKey(format!(
            "the master key (fingerprint {fingerprint}) is not the one this database was created \
             with (fingerprint {stored}); start with the original key in {MASTER_KEY_ENV} or the key file"
        ))),
        Some(_) => {
            let version = store
                .get_setting(VERSION_SETTING)
                .await?
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            Ok(Sealer::new(key, version))
        }
        None => {
            store.put_setting(VERSION_SETTING, "1").await?;
            store.put_setting(FINGERPRINT_SETTING, &fingerprint).await?;
            Ok(Sealer::new(key, 1))
        }
    }
}

/// Opens the stores of `database_url` and the sealer (what the CLI commands need too).
pub async fn open_store(config: &Config) -> Result<(Stores, Sealer, MasterKeySource), InitError> {
    ensure_data_dir(&config.data_dir)?;
    let stores = store::open(&config.database_url).await?;
    let (key, source) = load_master_key(config)?;
    let sealer = open_sealer(&*stores.config, key).await?;
    Ok((stores, sealer, source))
}

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

/// Writes the config file's pools and backends into the store (`source = config`).
pub async fn sync_config(
    config: &Config,
    store: &dyn ConfigStore,
    sealer: &Sealer,
) -> Result<(), InitError> {
    let existing = store.list_backends().await?;
    let now = now_ms();
    let mut records = Vec::with_capacity(config.backends.len());
    for spec in &config.backends {
        let previous = existing.iter().find(|b| b.name == spec.name);
        if let Some(previous) = previous {
            if previous.source == Source::Api {
                return Err(InitError::Config(format!(
                    "backend `{}` in the config file has the name of a backend created through the API; rename one of them",
                    spec.name
                )));
            }
        }
        let id = previous.map_or_else(BackendId::generate, |b| b.id.clone());
        let sealed = sealer
            .seal(id.as_str(), spec.api_key.expose_secret())
            .map_err(|e| InitError::MasterKey(e.to_string()))?;
        records.push(BackendRecord {
            id,
            name: spec.name.clone(),
            label: spec.label.clone(),
            api_base_url: spec.api_base_url.clone(),
            api_key_sealed: sealed,
            api_key_mask: mask_secret(spec.api_key.expose_secret()),
            api: spec.api,
            timeout_seconds: spec.timeout_seconds,
            rpm_limit: spec.rpm_limit,
            weight: spec.weight,
            pool: spec.pool.clone(),
            enabled: spec.enabled,
            model_mappings: spec.model_mappings.clone(),
            source: Source::Config,
            metadata: spec.metadata.clone(),
            health: previous
                .map(|b| b.health.clone())
                .unwrap_or_else(PersistedHealth::default),
            created_at_ms: previous.map_or(now, |b| b.created_at_ms),
            updated_at_ms: now,
        });
    }
    store
        .sync_config(&config.pools, &records)
        .await
        .map_err(|error| InitError::Config(format!("syncing the config file: {error}")))?;
    Ok(())
}

/// A running gateway (used by `main` and by tests).
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
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
    let config = Arc::new(config);
    ensure_data_dir(&config.data_dir)?;
    let lock = lock_data_dir(&config.data_dir)?;
    let (stores, sealer, _) = open_store(&config).await?;
    sync_config(&config, &*stores.config, &sealer).await?;
    let admin_token = load_admin_token(&config)?;
    let (usage, usage_writer) = spawn_writer(Arc::clone(&stores.usage), &config.usage);
    let (health, health_writer) = spawn_health_writer(Arc::clone(&stores.config));
    let state = AppState::new(
        Arc::clone(&config),
        stores,
        sealer,
        admin_token,
        usage,
        health,
    )
    .await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| InitError::io(format!("binding {}", config.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| InitError::io("reading the bound address", e))?;
    let live = state.live();
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        backends = live.backends.len(),
        models = live.models.len(),
        "poolgate listening"
    );
    drop(live);

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let router = crate::api::build_router(state.clone());
    let grace = config.proxy.shutdown_grace;
    let task = tokio::spawn(serve(
        listener,
        router,
        stop_rx,
        handle_signals,
        grace,
        Background {
            usage_writer,
            health_writer,
        },
        state.clone(),
    ));
    Ok(Running {
        addr,
        state,
        _lock: lock,
        stop: Some(stop_tx),
        task,
    })
}

struct Background {
    usage_writer: UsageWriter,
    health_writer: HealthWriter,
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    stop: oneshot::Receiver<()>,
    handle_signals: bool,
    grace: std::time::Duration,
    background: Background,
    state: AppState,
) -> Result<(), InitError> {
    let (begun_tx, begun_rx) = oneshot::channel::<()>();
    let signal = async move {
        tokio::select! {
            _ = stop => {}
            _ = shutdown_signal(), if handle_signals => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = begun_tx.send(());
    };
    // No Nagle delay: small answers and stream events go out at once.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    // `into_make_service`: connections share the router instead of deep-cloning it each.
    let server = axum::serve(listener, router.into_make_service()).with_graceful_shutdown(signal);
    let result = tokio::select! {
        result = server => result.map_err(|e| InitError::io("serving", e)),
        () = async {
            let _ = begun_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "grace period over; ending the remaining streams");
            state.cancel_streams();
            Ok(())
        }
    };
    // Wait for every request under way to hand over its usage record (cut streams included;
    // a request still waiting on an upstream gets a few more seconds).
    if !state
        .usage
        .wait_idle(std::time::Duration::from_secs(5))
        .await
    {
        tracing::warn!(
            pending = state.usage.pending(),
            "requests still running at shutdown; their usage records are lost"
        );
    }
    drop(state);
    // Flush usage and health.
    let written = background.usage_writer.shutdown().await;
    tracing::info!(records = written, "usage records flushed");
    background.health_writer.shutdown().await;
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
