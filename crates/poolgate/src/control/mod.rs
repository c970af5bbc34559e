//! The control plane: the one owner of every change to backends, pools, client keys and the
//! master key — whether it comes from the admin API, the command line or the config file.
//!
//! Each change is one [`ControlPlane`] method that does the same steps in the same order:
//! **validate** once (the rules of [`crate::domain`]), **seal** upstream keys, **write** in one
//! transaction, **publish** the change through the [`ChangeFeed`], and **rebuild** the live
//! snapshot the data plane reads. A rebuild that fails after the commit is logged and retried in
//! the background; it never turns a stored change into a failed one.
//!
//! The store is a private module: nothing outside the control plane can name it, so the request
//! path cannot reach the database. What the data plane gets from here is a [`DataPlane`]: a
//! read-only view of the snapshot and the two sinks (usage records, backend health) whose
//! writers run here.

mod affinity_writer;
mod backends;
pub mod changes;
mod error;
mod health;
mod keys;
mod limits_checkpoint;
mod master_key;
mod models;
mod money;
mod pg_changes;
mod probes;
mod snapshot;
mod spend_follower;
mod store;
mod usage_writer;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::task::JoinHandle;

use std::num::NonZeroUsize;

use crate::config::Config;
use crate::domain::{now_ms, BackendId, BackendRecord, ClientKeyRecord, Pool};
use crate::error::InitError;
use crate::files::ensure_data_dir;
use crate::readiness::Readiness;
use crate::routing::affinity::{owner_channel, AffinityLimits, LocalAffinity};
use crate::runtime::{Cluster, HealthSink};
use crate::state::{DataPlane, Live};
use crate::telemetry::Observer;
use crate::usage::stats::{assemble, Stats, StatsRange, StatsSource};
use crate::usage::{UsageFilter, UsagePage, UsageSink};

pub use changes::{Change, ChangeFeed, InstanceId, LocalChangeFeed, Published};
pub use error::ControlError;
pub use keys::{ClientKeyInput, ClientKeyPatch, PoolInput};
pub use master_key::{MasterKeySource, NewKey, Rotation, MASTER_KEY_ENV};
pub use money::BudgetPatch;
pub use store::StoreError;
pub use usage_writer::UsageWriterView;

use affinity_writer::AffinityWriter;
use health::HealthWriter;
use limits_checkpoint::LimitsCheckpoint;
use pg_changes::PgChangeFeed;
use snapshot::Snapshots;
use store::Stores;
use usage_writer::{UsageFlush, UsageWriter, WriterStateHandle};

/// The control plane; cloning is one `Arc` increment.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    stores: Stores,
    key_source: MasterKeySource,
    snapshots: Arc<Snapshots>,
    changes: Arc<dyn ChangeFeed>,
    instance: InstanceId,
    usage: UsageSink,
    health: HealthSink,
    usage_state: WriterStateHandle,
    /// The PostgreSQL change feed (with a shared database).
    pg_feed: Option<Arc<PgChangeFeed>>,
    /// The runtime state shared with the other instances (cluster mode).
    cluster: Option<Arc<Cluster>>,
    /// Response owners and sticky sessions, handed to the data plane.
    affinity: Arc<LocalAffinity>,
    /// Serialises changes from their first read to their rebuild, so two edits of one backend
    /// cannot overwrite each other (never taken on the request path).
    writes: tokio::sync::Mutex<()>,
    workers: parking_lot::Mutex<Option<Workers>>,
    /// Metrics (and traces) of this gateway: fed by the writers, handed to the data plane.
    observer: Observer,
    /// What `/health/ready` checks (store, snapshot; later parts add theirs).
    readiness: Readiness,
}

/// The background tasks of the control plane.
struct Workers {
    usage: UsageWriter,
    health: HealthWriter,
    /// Single mode only (cluster mode: the buckets live in Redis).
    limits: Option<LimitsCheckpoint>,
    affinity: AffinityWriter,
    follower: JoinHandle<()>,
    maintenance: JoinHandle<()>,
    /// Owners announced by other instances (shared database).
    owner_follower: Option<JoinHandle<()>>,
    /// Cluster mode: capped backends' spend as the cluster settled it.
    spend_follower: Option<JoinHandle<()>>,
}

/// What [`ControlPlane::assemble`] wires together.
struct Parts {
    stores: Stores,
    sealer: crate::crypto::Sealer,
    key_source: MasterKeySource,
    changes: Arc<dyn ChangeFeed>,
    pg_feed: Option<Arc<PgChangeFeed>>,
    cluster: Option<Arc<Cluster>>,
    observer: Observer,
}

impl ControlPlane {
    /// Opens the database of `config.database_url` (migrating it), loads the master key and
    /// checks it against the database, starts the usage and health writers and the change
    /// follower, and builds the first snapshot.
    pub async fn open(config: Arc<Config>) -> Result<ControlPlane, InitError> {
        // Metrics without traces: the command line and tests; the server brings its own.
        let observer = Observer::new(config.telemetry.observer, None)?;
        Self::open_with(config, observer, None).await
    }

    /// [`ControlPlane::open`] with the gateway's observer (metrics, and traces when on): the
    /// snapshot resolves its series, the writers count into it, the data plane gets it.
    pub async fn open_observed(
        config: Arc<Config>,
        observer: Observer,
    ) -> Result<ControlPlane, InitError> {
        Self::open_with(config, observer, None).await
    }

    /// [`ControlPlane::open_observed`] for a gateway whose runtimes use `cluster`'s shared
    /// state. With a PostgreSQL database, changes made by other instances are followed
    /// (`LISTEN/NOTIFY` and a periodic version check).
    pub async fn open_with(
        config: Arc<Config>,
        observer: Observer,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<ControlPlane, InitError> {
        ensure_data_dir(&config.data_dir)?;
        let stores = store::open(&config.database_url, &config.database)
            .await
            .map_err(ControlError::from)?;
        stores
            .usage
            .prepare_usage(now_ms())
            .await
            .map_err(ControlError::from)?;
        let has_key = master_key::database_has_key(&*stores.config).await?;
        let (key, key_source, generated) = master_key::load_master_key(&config, has_key)?;
        let sealer = master_key::open_sealer(&*stores.config, key).await?;
        // The database records the key's fingerprint now: a generated key file must stay.
        if let Some(generated) = generated {
            generated.keep();
        }
        let pg_feed = stores
            .postgres
            .as_ref()
            .map(|pg| Arc::new(PgChangeFeed::start(pg.pool().clone())));
        let changes: Arc<dyn ChangeFeed> = match &pg_feed {
            Some(feed) => feed.clone(),
            None => Arc::new(LocalChangeFeed::default()),
        };
        Self::assemble(
            config,
            Parts {
                stores,
                sealer,
                key_source,
                changes,
                pg_feed,
                cluster,
                observer,
            },
        )
        .await
    }

    /// Wires the parts together (tests inject their own store or feed through here).
    async fn assemble(config: Arc<Config>, parts: Parts) -> Result<ControlPlane, InitError> {
        let Parts {
            stores,
            sealer,
            key_source,
            changes,
            pg_feed,
            cluster,
            observer,
        } = parts;
        let clustered = cluster.is_some();
        let stores = stores.counted(&observer.metrics().store_errors());
        // Serves the snapshot's new spend ledgers once the writer runs (below).
        let usage_flush = UsageFlush::default();
        let snapshots = Arc::new(Snapshots::new(
            Arc::clone(&stores.config),
            sealer,
            Arc::new(config.network.clone()),
            cluster.clone(),
            observer.clone(),
            snapshot::SnapshotMoney {
                usage: Arc::clone(&stores.usage),
                flush: usage_flush.clone(),
                config_prices: config.prices.clone(),
                ledgers: Arc::default(),
            },
        ));
        // Bucket levels stored before a restart apply as the snapshot creates the runtimes. In
        // cluster mode the buckets live in Redis (they outlive an instance's restart): no
        // levels are restored or checkpointed here.
        if !clustered {
            let levels = stores
                .config
                .load_limiter_levels()
                .await
                .map_err(ControlError::from)?;
            snapshots.registry().restore_levels(levels);
        }
        // Records a crash left in the journal are stored first: the spend ledgers the snapshot
        // creates read what each key and backend spent from the store.
        let journal = usage_writer::open_journal(&config, &*stores.usage).await?;
        snapshots.rebuild().await.map_err(ControlError::from)?;
        // Every backend's state, cooldown, bucket and in-flight count, read at scrape time.
        observer.watch_backends(Arc::new(snapshots.reader()))?;
        let instance = InstanceId::generate();
        let (usage, usage_writer) = usage_writer::spawn_writer(
            Arc::clone(&stores.usage),
            &config.usage,
            journal,
            observer.metrics(),
            &usage_flush,
        );
        let usage_state = usage_writer.state();
        let (health, health_writer) = health::spawn_health_writer(Arc::clone(&stores.config));
        let limits = (!clustered).then(|| {
            limits_checkpoint::spawn_checkpoint(
                Arc::clone(&stores.config),
                Arc::clone(&snapshots),
                config.limits.checkpoint_interval,
            )
        });
        let (affinity, affinity_writer, owner_follower) =
            open_affinity(&config, &stores, pg_feed.as_deref()).await?;
        // Another instance may change a shared database: compare versions as a backstop.
        let backstop = stores
            .postgres
            .is_some()
            .then_some(config.database.config_poll);
        let follower = snapshot::spawn_follower(
            Arc::clone(&snapshots),
            changes.subscribe(),
            instance,
            backstop,
        );
        let maintenance = usage_writer::spawn_maintenance(
            Arc::clone(&stores.usage),
            config.usage.retention,
            config.usage.rollup_retention,
        );
        let spend_follower = cluster.as_ref().map(|cluster| {
            spend_follower::spawn_spend_follower(
                Arc::clone(&snapshots),
                Arc::clone(&cluster.shared),
                config
                    .redis
                    .as_ref()
                    .map_or(Duration::from_secs(1), |redis| redis.heartbeat_interval),
            )
        });
        let readiness = Readiness::new(config.health.ready_timeout);
        readiness.add(Arc::new(probes::StoreProbe(Arc::clone(&stores.config))));
        readiness.add(Arc::new(probes::SnapshotProbe(Arc::clone(&snapshots))));
        Ok(ControlPlane {
            inner: Arc::new(Inner {
                config,
                stores,
                key_source,
                snapshots,
                changes,
                instance,
                usage,
                health,
                usage_state,
                pg_feed,
                cluster,
                affinity,
                writes: tokio::sync::Mutex::new(()),
                workers: parking_lot::Mutex::new(Some(Workers {
                    usage: usage_writer,
                    health: health_writer,
                    limits,
                    affinity: affinity_writer,
                    follower,
                    maintenance,
                    owner_follower,
                    spend_follower,
                })),
                observer,
                readiness,
            }),
        })
    }

    /// The data plane over this control plane's snapshot and writers.
    pub fn data_plane(&self, admin_token: SecretString) -> Result<DataPlane, InitError> {
        DataPlane::new(
            Arc::clone(&self.inner.config),
            self.inner.snapshots.reader(),
            self.inner.usage.clone(),
            self.inner.health.clone(),
            self.inner.affinity.clone(),
            admin_token,
            self.inner.observer.clone(),
        )
    }

    /// The gateway's observer.
    pub fn observer(&self) -> &Observer {
        &self.inner.observer
    }

    /// The readiness probes and the draining flag (`/health/ready`).
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Writes every queued usage record, health state and RPM bucket level, stops the background
    /// tasks, and
    /// returns how many usage records were written in the control plane's life. Call once the
    /// data plane has handed over its records.
    pub async fn shutdown(&self) -> u64 {
        let Some(workers) = self.inner.workers.lock().take() else {
            return 0;
        };
        workers.follower.abort();
        workers.maintenance.abort();
        if let Some(owner_follower) = &workers.owner_follower {
            owner_follower.abort();
        }
        if let Some(spend_follower) = &workers.spend_follower {
            spend_follower.abort();
        }
        let written = workers.usage.shutdown().await;
        workers.health.shutdown().await;
        if let Some(limits) = workers.limits {
            limits.shutdown().await;
        }
        workers.affinity.shutdown().await;
        written
    }

    /// The snapshot now (for views and tests).
    pub fn live(&self) -> Arc<Live> {
        self.inner.snapshots.live()
    }

    /// This instance, as changes name it.
    pub fn instance(&self) -> InstanceId {
        self.inner.instance
    }

    // === how this instance runs with the others (the admin API's cluster view) ===

    /// This instance's id (`POOLGATE_INSTANCE_ID`).
    pub fn instance_id(&self) -> &str {
        &self.inner.config.instance_id
    }

    /// `sqlite` or `postgres`.
    pub fn database_kind(&self) -> &'static str {
        if self.inner.stores.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// With a shared database: whether the change feed is listening.
    pub fn change_feed_connected(&self) -> Option<bool> {
        self.inner.pg_feed.as_ref().map(|feed| feed.connected())
    }

    /// The configuration version the snapshot was built from (shared database).
    pub fn snapshot_version(&self) -> Option<i64> {
        self.inner.snapshots.version()
    }

    /// The usage writer's buffer and what waits in the journal past it.
    pub fn usage_writer(&self) -> UsageWriterView {
        self.inner.usage_state.view()
    }

    /// The runtime state shared with the other instances (cluster mode).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.inner.cluster.as_ref()
    }

    /// After a commit: publish the change and rebuild the snapshot (retrying in the background
    /// on failure; the change itself stands).
    async fn commit(&self, change: Change) {
        let rebuild = change.alters_snapshot();
        self.inner
            .changes
            .publish(Published {
                origin: self.inner.instance,
                change,
            })
            .await;
        if rebuild {
            self.inner.snapshots.refresh().await;
        }
    }

    // === reads for the admin API and the command line ===

    /// Every backend, in creation order.
    pub async fn backends(&self) -> Result<Vec<BackendRecord>, ControlError> {
        Ok(self.inner.stores.config.list_backends().await?)
    }

    /// One backend, or `NotFound`.
    pub async fn backend(&self, id: &BackendId) -> Result<BackendRecord, ControlError> {
        self.inner
            .stores
            .config
            .get_backend(id)
            .await?
            .ok_or_else(|| ControlError::backend_not_found(id.as_str()))
    }

    /// Pools in priority order.
    pub async fn pools(&self) -> Result<Vec<Pool>, ControlError> {
        Ok(self.inner.stores.config.list_pools().await?)
    }

    /// Client keys, revoked ones included.
    pub async fn client_keys(&self) -> Result<Vec<ClientKeyRecord>, ControlError> {
        Ok(self.inner.stores.config.list_client_keys().await?)
    }

    /// A page of usage records, newest first.
    pub async fn usage_page(&self, filter: &UsageFilter) -> Result<UsagePage, ControlError> {
        Ok(self.inner.stores.usage.list_usage(filter).await?)
    }

    /// How many usage records are stored.
    pub async fn usage_count(&self) -> Result<u64, ControlError> {
        Ok(self.inner.stores.usage.count_usage().await?)
    }

    /// Statistics over a range, aggregated by the database: from the raw records, or — for a
    /// range longer than two days or starting before the raw retention — from the hourly
    /// rollup, widened to whole hours (see `usage::stats`).
    pub async fn stats(&self, range: &StatsRange<'_>) -> Result<Stats, ControlError> {
        let retention = self
            .inner
            .config
            .usage
            .retention
            .map(|retention| i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let range = match StatsSource::pick(range.from_ms, range.to_ms, now_ms(), retention) {
            StatsSource::Raw => *range,
            StatsSource::Rollup => range.rollup(),
        };
        let groups = self.inner.stores.usage.usage_stats(&range).await?;
        Ok(assemble(&groups, &range))
    }
}

/// The affinity maps, filled with the stored response owners that have not expired (newest
/// first, up to the map's size), and the writer that stores new ones.
/// With a shared database (`pg_feed`), the owners other instances store are followed too.
async fn open_affinity(
    config: &Config,
    stores: &Stores,
    pg_feed: Option<&PgChangeFeed>,
) -> Result<(Arc<LocalAffinity>, AffinityWriter, Option<JoinHandle<()>>), InitError> {
    let settings = &config.affinity;
    let entries = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
    let limits = AffinityLimits {
        owner_ttl: settings.owner_ttl,
        owner_entries: entries(settings.owner_max_entries),
        session_entries: entries(settings.session_max_entries),
    };
    let (sink, queue) = owner_channel();
    let maps = Arc::new(LocalAffinity::new(limits, sink));
    // Subscribed before the stored owners are read: nothing announced in between is missed.
    let announced = pg_feed.map(PgChangeFeed::subscribe_owners);
    let limit = u32::try_from(settings.owner_max_entries).unwrap_or(u32::MAX);
    let stored = stores
        .affinity
        .load_response_owners(now_ms(), limit)
        .await
        .map_err(ControlError::from)?;
    let loaded = stored.len();
    maps.preload(stored);
    if loaded > 0 {
        tracing::info!(loaded, "response owners loaded");
    }
    let follower = announced.map(|feed| {
        affinity_writer::spawn_owner_follower(Arc::clone(&stores.affinity), Arc::clone(&maps), feed)
    });
    let flush_every = if follower.is_some() {
        affinity_writer::SHARED_FLUSH_EVERY
    } else {
        affinity_writer::FLUSH_EVERY
    };
    let writer = affinity_writer::spawn_writer(
        Arc::clone(&stores.affinity),
        queue,
        Arc::clone(&maps),
        flush_every,
    );
    Ok((maps, writer, follower))
}

#[cfg(test)]
mod tests;
