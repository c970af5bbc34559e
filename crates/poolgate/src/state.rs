//! Application state: [`AppState`] (a cheap `Clone`) holds the store, the sealer, the usage and
//! health writers, and one [`Live`] snapshot behind `ArcSwap` — every route, decrypted key and
//! client key the hot path needs. Admin changes commit to the store, rebuild a `Live`, and swap
//! it in; counters (token buckets, cooldowns, in-flight) live beside it, keyed by stable ids.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::cooldown::{CooldownSnapshot, CooldownState};
use crate::crypto::Sealer;
use crate::domain::{now_ms, BackendId, CanonicalModel, ClientKeyRecord, PersistedHealth, Pool};
use crate::limits::RpmLimiter;
use crate::routing::{build_routes, BackendRuntime, LiveBackend, Route};
use crate::store::{ConfigStore, StoreError, Stores};
use crate::usage::UsageSink;

/// A client key as the hot path sees it.
pub struct LiveClientKey {
    pub record: ClientKeyRecord,
    pub limiter: Arc<RpmLimiter>,
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

/// Counters that outlive snapshots.
#[derive(Default)]
struct Registry {
    backends: HashMap<BackendId, Arc<BackendRuntime>>,
    client_keys: HashMap<String, Arc<RpmLimiter>>,
}

/// Converts a persisted wall-clock deadline into a monotonic instant.
pub fn instant_from_ms(until_ms: i64, now: Instant) -> Instant {
    let remaining = until_ms.saturating_sub(now_ms());
    now + Duration::from_millis(u64::try_from(remaining).unwrap_or(0))
}

/// Converts a monotonic deadline into wall-clock Unix milliseconds.
pub fn ms_from_instant(until: Instant, now: Instant) -> i64 {
    let remaining = until.saturating_duration_since(now);
    now_ms().saturating_add(i64::try_from(remaining.as_millis()).unwrap_or(i64::MAX))
}

/// The persisted form of a cooldown snapshot.
pub fn persisted_health(
    snapshot: &CooldownSnapshot,
    last_error: Option<String>,
    now: Instant,
) -> PersistedHealth {
    PersistedHealth {
        cooldown_until_ms: snapshot.until.map(|until| ms_from_instant(until, now)),
        consecutive_429_count: snapshot.consecutive_429,
        broken: snapshot.broken,
        last_error,
    }
}

/// Write-behind of backend health: the hot path queues, a task writes.
#[derive(Clone)]
pub struct HealthSink {
    tx: mpsc::UnboundedSender<(BackendId, PersistedHealth)>,
}

impl HealthSink {
    pub fn save(&self, id: BackendId, health: PersistedHealth) {
        if self.tx.send((id, health)).is_err() {
            tracing::warn!("health writer is gone; cooldown state not persisted");
        }
    }
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

/// Starts the health writer.
pub fn spawn_health_writer(store: Arc<dyn ConfigStore>) -> (HealthSink, HealthWriter) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(BackendId, PersistedHealth)>();
    let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                received = rx.recv() => received,
                _ = &mut stop_rx => None,
            };
            // Coalesce: only the newest state of each backend matters.
            let mut latest: HashMap<BackendId, PersistedHealth> = HashMap::new();
            let stopping = first.is_none();
            if let Some((id, health)) = first {
                latest.insert(id, health);
            }
            while let Ok((id, health)) = rx.try_recv() {
                latest.insert(id, health);
            }
            for (id, health) in latest {
                if let Err(error) = store.save_health(&id, &health).await {
                    tracing::warn!(backend = %id, %error, "could not persist backend health");
                }
            }
            if stopping {
                break;
            }
        }
    });
    (HealthSink { tx }, HealthWriter { stop, task })
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
    registry: Mutex<Registry>,
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
                registry: Mutex::new(Registry::default()),
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
        let mut live_keys = HashMap::new();
        {
            let mut registry = self.shared.registry.lock();
            let mut seen = Vec::with_capacity(records.len());
            for record in records {
                let api_key = match self.sealer.open(record.id.as_str(), &record.api_key_sealed) {
                    Ok(key) => key,
                    Err(error) => {
                        tracing::error!(backend = %record.id, %error, "cannot decrypt the upstream key; backend left out of routing");
                        unreadable.push((record.id.clone(), error.to_string()));
                        SecretString::from(String::new())
                    }
                };
                let runtime = registry
                    .backends
                    .entry(record.id.clone())
                    .or_insert_with(|| {
                        let until = record
                            .health
                            .cooldown_until_ms
                            .map(|ms| instant_from_ms(ms, now));
                        Arc::new(BackendRuntime::new(
                            record.rpm_limit,
                            CooldownState::restore(
                                record.health.consecutive_429_count,
                                until,
                                record.health.broken,
                            ),
                        ))
                    })
                    .clone();
                if runtime.limiter.rpm() != record.rpm_limit {
                    runtime.limiter.reconfigure(record.rpm_limit, now);
                }
                seen.push(record.id.clone());
                let unreadable_reason = unreadable
                    .iter()
                    .find(|(id, _)| id == &record.id)
                    .map(|(_, reason)| format!("cannot decrypt the upstream key: {reason}"));
                backends.push(Arc::new(LiveBackend {
                    record,
                    api_key,
                    runtime,
                    unreadable: unreadable_reason,
                }));
            }
            registry.backends.retain(|id, _| seen.contains(id));

            for key in keys.into_iter().filter(|k| k.revoked_at_ms.is_none()) {
                let limiter = registry
                    .client_keys
                    .entry(key.id.clone())
                    .or_insert_with(|| Arc::new(RpmLimiter::new(key.rpm_limit)))
                    .clone();
                if limiter.rpm() != key.rpm_limit {
                    limiter.reconfigure(key.rpm_limit, now);
                }
                live_keys.insert(
                    key.id.clone(),
                    Arc::new(LiveClientKey {
                        record: key,
                        limiter,
                    }),
                );
            }
            registry
                .client_keys
                .retain(|id, _| live_keys.contains_key(id));
        }

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

    /// Queues the persisted part of a backend's health for writing.
    pub fn persist_health(&self, backend: &LiveBackend, now: Instant) {
        let snapshot = backend.runtime.cooldown.lock().snapshot();
        let last_error = backend.runtime.last_error.lock().clone();
        self.health.save(
            backend.id().clone(),
            persisted_health(&snapshot, last_error, now),
        );
    }
}
