//! Application state: [`AppState`] (a cheap `Clone`) holds the store, the sealer, the usage and
//! health writers, and one [`Live`] snapshot behind `ArcSwap` — every route, decrypted key and
//! client key the hot path needs. Admin changes commit to the store, rebuild a `Live`, and swap
//! it in; counters (token buckets, cooldowns, in-flight) live beside it, keyed by stable ids.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::crypto::Sealer;
use crate::domain::{BackendId, CanonicalModel, ClientKeyRecord, Pool};
use crate::routing::{build_routes, LiveBackend, Route};
use crate::runtime::{
    health_channel, BackendRuntime, ClientKeyRuntime, HealthMessage, HealthSink, RuntimeRegistry,
};
use crate::store::{ConfigStore, StoreError, Stores};
use crate::usage::UsageSink;

/// A client key as the hot path sees it.
pub struct LiveClientKey {
    pub record: ClientKeyRecord,
    pub runtime: Arc<ClientKeyRuntime>,
}

/// Everything the hot path reads, as one immutable snapshot.
#[derive(Default)]
pub struct Live {
    /// Every backend, enabled or not, in creation order.
    pub backends: Vec<Arc<LiveBackend>>,
    pub by_id: HashMap<BackendId, Arc<LiveBackend>>,
    pub routes: HashMap<CanonicalModel, Route>,
    pub pools: Vec<Pool>,
    /// Unrevoked client keys by id.
    pub client_keys: HashMap<String, Arc<LiveClientKey>>,
    /// Canonical models served by at least one enabled backend, sorted.
    pub models: Vec<CanonicalModel>,
    /// Backends whose key could not be decrypted (kept out of routing), with the reason.
    pub unreadable: Vec<(BackendId, String)>,
}

/// Starts the health writer: it persists the *current* state of each backend marked dirty, so
/// an older queued state never overwrites a newer one.
pub fn spawn_health_writer(store: Arc<dyn ConfigStore>) -> (HealthSink, HealthWriter) {
    let (sink, mut queue) = health_channel();
    let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                received = queue.rx.recv() => received,
                _ = &mut stop_rx => None,
            };
            let stopping = first.is_none();
            // Coalesce: each backend once, at its state when written.
            let mut dirty: HashMap<BackendId, Arc<BackendRuntime>> = HashMap::new();
            let mut flushes = Vec::new();
            let mut take = |message| match message {
                HealthMessage::Dirty(id, runtime) => {
                    dirty.insert(id, runtime);
                }
                HealthMessage::Flush(done) => flushes.push(done),
            };
            if let Some(message) = first {
                take(message);
            }
            while let Ok(message) = queue.rx.try_recv() {
                take(message);
            }
            for (id, runtime) in dirty {
                let now = Instant::now();
                let health = runtime.snapshot(now).persisted(now);
                if let Err(error) = store.save_health(&id, &health).await {
                    tracing::warn!(backend = %id, %error, "could not persist backend health");
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
            if stopping {
                break;
            }
        }
    });
    (sink, HealthWriter { stop, task })
}

/// The background health writer; [`HealthWriter::shutdown`] writes what is queued and stops.
pub struct HealthWriter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HealthWriter {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "health writer task failed");
        }
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub stores: Stores,
    pub sealer: Sealer,
    pub admin_token: SecretString,
    pub http: reqwest::Client,
    pub usage: UsageSink,
    pub health: HealthSink,
    live: ArcSwap<Live>,
    registry: RuntimeRegistry,
    reload_lock: tokio::sync::Mutex<()>,
    /// Serialises admin read-modify-write operations (never taken on the proxy path).
    admin_write: tokio::sync::Mutex<()>,
    /// Set when the shutdown grace period ran out: open streams end themselves.
    stream_cancel: tokio::sync::watch::Sender<bool>,
}

/// The state every handler gets; cloning is one `Arc` increment.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl AppState {
    /// Builds the state and loads the first snapshot from the store.
    pub async fn new(
        config: Arc<Config>,
        stores: Stores,
        sealer: Sealer,
        admin_token: SecretString,
        usage: UsageSink,
        health: HealthSink,
    ) -> Result<AppState, StoreError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.proxy.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            // Never follow an upstream's redirect with the backend's key.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .map_err(|error| StoreError::Corrupt(format!("HTTP client: {error}")))?;
        let state = AppState {
            shared: Arc::new(Shared {
                config,
                stores,
                sealer,
                admin_token,
                http,
                usage,
                health,
                live: ArcSwap::from_pointee(Live::default()),
                registry: RuntimeRegistry::default(),
                reload_lock: tokio::sync::Mutex::new(()),
                admin_write: tokio::sync::Mutex::new(()),
                stream_cancel: tokio::sync::watch::channel(false).0,
            }),
        };
        state.reload().await?;
        Ok(state)
    }

    /// The current snapshot (lock-free).
    pub fn live(&self) -> Arc<Live> {
        self.shared.live.load_full()
    }

    /// Rebuilds the snapshot from the store and swaps it in. Serialised so that two admin
    /// changes cannot swap in their snapshots out of order.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _guard = self.shared.reload_lock.lock().await;
        let pools = self.stores.config.list_pools().await?;
        let records = self.stores.config.list_backends().await?;
        let keys = self.stores.config.list_client_keys().await?;
        let now = Instant::now();

        let mut backends = Vec::with_capacity(records.len());
        let mut unreadable = Vec::new();
        for record in records {
            let (api_key, unreadable_reason) = match self
                .sealer
                .open(record.id.as_str(), &record.api_key_sealed)
            {
                Ok(key) => (key, None),
                Err(error) => {
                    tracing::error!(backend = %record.id, %error, "cannot decrypt the upstream key; backend left out of routing");
                    unreadable.push((record.id.clone(), error.to_string()));
                    (
                        SecretString::from(String::new()),
                        Some(format!("cannot decrypt the upstream key: {error}")),
                    )
                }
            };
            let runtime = self.shared.registry.backend(&record, now);
            backends.push(Arc::new(LiveBackend {
                record,
                api_key,
                runtime,
                unreadable: unreadable_reason,
            }));
        }
        let mut live_keys = HashMap::new();
        for key in keys.into_iter().filter(|k| k.revoked_at_ms.is_none()) {
            let runtime = self.shared.registry.client_key(&key, now);
            live_keys.insert(
                key.id.clone(),
                Arc::new(LiveClientKey {
                    record: key,
                    runtime,
                }),
            );
        }
        let backend_ids: Vec<BackendId> = backends.iter().map(|b| b.id().clone()).collect();
        let key_ids: Vec<&str> = live_keys.keys().map(String::as_str).collect();
        self.shared.registry.retain(&backend_ids, &key_ids);

        let routes = build_routes(&backends, &pools);
        let mut models: Vec<CanonicalModel> = routes.keys().cloned().collect();
        models.sort();
        let by_id = backends
            .iter()
            .map(|b| (b.record.id.clone(), Arc::clone(b)))
            .collect();
        self.shared.live.store(Arc::new(Live {
            backends,
            by_id,
            routes,
            pools,
            client_keys: live_keys,
            models,
            unreadable,
        }));
        Ok(())
    }

    /// Held by an admin change from its read to its reload, so concurrent changes of the same
    /// backend cannot overwrite each other.
    pub async fn admin_write(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.admin_write.lock().await
    }

    /// Ends every open stream (with an error event and a usage record): the grace period of a
    /// shutdown is over.
    pub fn cancel_streams(&self) {
        self.shared.stream_cancel.send_replace(true);
    }

    /// Resolves when [`AppState::cancel_streams`] was called.
    pub fn streams_cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.shared.stream_cancel.subscribe();
        async move {
            let _ = receiver.wait_for(|cancelled| *cancelled).await;
        }
    }

    /// The runtime registry (for the admin reset).
    pub fn registry(&self) -> &RuntimeRegistry {
        &self.shared.registry
    }
}
