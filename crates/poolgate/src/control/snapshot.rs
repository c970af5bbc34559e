//! Builds the [`Live`] snapshot from the stored rows — decrypting upstream keys, attaching each
//! backend's and key's runtime from the registry, computing the routes — and swaps it in. Builds
//! are serialised, so two changes cannot swap their snapshots in out of order. After a commit the
//! snapshot is rebuilt at once; if that fails the change stays committed and a background task
//! retries (logging) until a rebuild succeeds. [`spawn_follower`] rebuilds on changes published by
//! other instances, and — with a database several instances share — whenever the stored
//! configuration version is not the one the snapshot was built from (checked periodically, a
//! backstop for a missed notification).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::changes::{Change, InstanceId, Published};
use super::models::{sticky_from_stored, STICKY_SETTING};
use super::store::UsageStore;
use super::store::{ConfigStore, StoreError};
use super::usage_writer::UsageFlush;
use crate::crypto::Sealer;
use crate::domain::BackendId;
use crate::domain::LimiterKind;
use crate::egress::EgressPolicy;
use crate::pricing::budget::RestoredSpend;
use crate::pricing::ledgers::SpendLedgers;
use crate::pricing::{ModelPrice, PriceSource, PriceTable, SpendLedger, SpendLimitRecord};
use crate::providers::target::UpstreamTarget;
use crate::routing::{LiveBackend, RouteTable};
use crate::runtime::{Cluster, RuntimeRegistry};
use crate::scrub::KeyScrubber;
use crate::state::{Live, LiveClientKey, LiveReader};
use crate::telemetry::Observer;

/// The snapshot and what it is built from.
pub(super) struct Snapshots {
    store: Arc<dyn ConfigStore>,
    egress: Arc<EgressPolicy>,
    sealer: ArcSwap<Sealer>,
    live: Arc<ArcSwap<Live>>,
    registry: RuntimeRegistry,
    rebuild: tokio::sync::Mutex<()>,
    retrying: AtomicBool,
    /// The configuration version the snapshot was built from (shared databases; -1 before).
    version: AtomicI64,
    /// Set by the first successful build.
    loaded: AtomicBool,
    /// Resolves each backend's and route's metric series as the snapshot is built.
    observer: Observer,
    /// Prices and spend ledgers (issue #11).
    money: SnapshotMoney,
}

/// What the snapshot's prices and spend ledgers are built from.
pub(super) struct SnapshotMoney {
    /// Where a new ledger's spend so far is read from.
    pub usage: Arc<dyn UsageStore>,
    /// Stores the queued usage records before a new ledger reads the spend so far.
    pub flush: UsageFlush,
    /// The config file's `[prices]`.
    pub config_prices: BTreeMap<String, ModelPrice>,
    pub ledgers: Arc<SpendLedgers>,
}

impl Snapshots {
    /// An empty snapshot; call [`Snapshots::rebuild`] to load the stored state.
    /// `egress`: the policy IP-literal backend URLs are checked against; `cluster`: the shared
    /// runtime state the runtimes use (cluster mode); `observer`: resolves each backend's and
    /// route's metric series as the snapshot is built.
    pub fn new(
        store: Arc<dyn ConfigStore>,
        sealer: Sealer,
        egress: Arc<EgressPolicy>,
        cluster: Option<Arc<Cluster>>,
        observer: Observer,
        money: SnapshotMoney,
    ) -> Self {
        Self {
            store,
            egress,
            sealer: ArcSwap::from_pointee(sealer),
            live: Arc::new(ArcSwap::from_pointee(Live::default())),
            registry: RuntimeRegistry::new(cluster),
            rebuild: tokio::sync::Mutex::new(()),
            retrying: AtomicBool::new(false),
            version: AtomicI64::new(-1),
            loaded: AtomicBool::new(false),
            observer,
            money,
        }
    }

    /// The configuration version the snapshot was built from (`None` for a database no other
    /// instance writes, or before the first build).
    pub fn version(&self) -> Option<i64> {
        let version = self.version.load(Ordering::Relaxed);
        (version >= 0).then_some(version)
    }

    /// Whether the snapshot is behind the stored configuration: older than `announced` (a
    /// notified version), or else built from another version than the store's now. A store
    /// that cannot answer is not ahead (the next check asks again).
    async fn is_behind(&self, announced: Option<i64>) -> bool {
        if let Some(announced) = announced {
            return Some(announced) > self.version();
        }
        match self.store.config_version().await {
            Ok(stored) => stored.is_some() && stored != self.version(),
            Err(error) => {
                tracing::debug!(%error, "configuration version check failed");
                false
            }
        }
    }

    /// The data plane's read-only view of the snapshot.
    pub fn reader(&self) -> LiveReader {
        LiveReader::new(Arc::clone(&self.live))
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    pub fn sealer(&self) -> Arc<Sealer> {
        self.sealer.load_full()
    }

    /// Seals with a new master key from now on (after a rotation committed).
    pub fn set_sealer(&self, sealer: Sealer) {
        self.sealer.store(Arc::new(sealer));
    }

    pub fn registry(&self) -> &RuntimeRegistry {
        &self.registry
    }

    /// Rebuilds the snapshot from the store and swaps it in.
    pub async fn rebuild(&self) -> Result<(), StoreError> {
        let result = self.load_and_swap().await;
        if result.is_ok() {
            self.loaded.store(true, Ordering::Release);
        }
        result
    }

    async fn load_and_swap(&self) -> Result<(), StoreError> {
        let _serial = self.rebuild.lock().await;
        // Read first: a change committed while the rows are read makes the snapshot newer than
        // its version says, and the next check rebuilds again (never the other way round).
        let version = self.store.config_version().await?;
        let pools = self.store.list_pools().await?;
        let records = self.store.list_backends().await?;
        let keys = self.store.list_client_keys().await?;
        let aliases = self.store.list_aliases().await?;
        let sticky = sticky_from_stored(self.store.get_setting(STICKY_SETTING).await?.as_deref());
        let api_prices = self.store.list_prices().await?;
        let spend_limits = self.store.list_spend_limits().await?;
        let ledgers = self.spend_ledgers(spend_limits).await?;
        let prices = Arc::new(price_table(&self.money.config_prices, api_prices));
        let sealer = self.sealer();
        let now = Instant::now();

        let mut backends = Vec::with_capacity(records.len());
        let mut unreadable = Vec::new();
        for record in records {
            let (api_key, unreadable_reason) = match sealer
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
            let runtime = self.registry.backend(&record, now);
            let record_id = record.id.to_string();
            let scrubber = KeyScrubber::new(api_key.expose_secret());
            // A literal address is fixed per backend: checked once here (a policy tightened in
            // the config file since the backend was stored included).
            let egress_refused = url::Url::parse(&record.api_base_url)
                .ok()
                .and_then(|url| self.egress.check_url(&url).err())
                .map(|refusal| {
                    format!("the egress policy refuses the backend's address: {refusal}")
                });
            let upstream = UpstreamTarget::new(record.api, &record.api_base_url, &api_key);
            backends.push(Arc::new(LiveBackend {
                telemetry: LiveBackend::telemetry_for(&self.observer, &record),
                upstream,
                record,
                api_key,
                runtime,
                unreadable: unreadable_reason,
                scrubber,
                egress_refused,
                spend: ledgers.get(&(LimiterKind::Backend, record_id)).cloned(),
            }));
        }
        let mut client_keys = HashMap::new();
        for key in keys.into_iter().filter(|k| k.revoked_at_ms.is_none()) {
            let runtime = self.registry.client_key(&key, now);
            client_keys.insert(
                key.id.clone(),
                Arc::new(LiveClientKey {
                    spend: ledgers
                        .get(&(LimiterKind::ClientKey, key.id.clone()))
                        .cloned(),
                    record: key,
                    runtime,
                }),
            );
        }
        let backend_ids: Vec<BackendId> = backends.iter().map(|b| b.id().clone()).collect();
        let key_ids: Vec<&str> = client_keys.keys().map(String::as_str).collect();
        self.registry.retain(&backend_ids, &key_ids);

        let routes = RouteTable::build(
            &backends,
            &pools,
            aliases.into_iter().map(|a| (a.alias, a.target)),
            &self.observer,
        );
        let models = routes.listed();
        let by_id = backends
            .iter()
            .map(|b| (b.id().clone(), Arc::clone(b)))
            .collect();
        self.live.store(Arc::new(Live {
            backends,
            by_id,
            routes,
            pools,
            client_keys,
            models,
            unreadable,
            sticky,
            prices,
        }));
        if let Some(version) = version {
            self.version.store(version, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The ledger of every key and backend with a spend limit: kept from the last build, or new
    /// with what the usage store says it spent today, this month and in total (so a restart
    /// does not forget it). Ledgers of limits removed since are dropped.
    async fn spend_ledgers(
        &self,
        limits: Vec<SpendLimitRecord>,
    ) -> Result<HashMap<(LimiterKind, String), Arc<SpendLedger>>, StoreError> {
        let now = chrono::Utc::now();
        let (day_start, month_start) = window_starts_ms(now);
        let mut ledgers = HashMap::with_capacity(limits.len());
        let mut flushed = false;
        for record in limits {
            let restored = match self.money.ledgers.get(record.kind, &record.id) {
                Some(_) => RestoredSpend::default(),
                None => {
                    // The requests of the last flush interval are still queued: stored first,
                    // or a budget set just after them would not count them.
                    if !flushed {
                        self.money.flush.flush().await;
                        flushed = true;
                    }
                    self.money
                        .usage
                        .spend_of(record.kind, &record.id, day_start, month_start)
                        .await?
                }
            };
            let ledger =
                self.money
                    .ledgers
                    .ensure(record.kind, &record.id, record.limits, restored, now);
            ledgers.insert((record.kind, record.id), ledger);
        }
        let keep: Vec<_> = ledgers.keys().cloned().collect();
        self.money.ledgers.retain(&keep);
        Ok(ledgers)
    }

    /// Whether the snapshot serves what the store holds: built once, and no rebuild after a
    /// committed change is still failing.
    pub fn current(&self) -> Result<(), String> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err("the live snapshot is not loaded yet".to_owned());
        }
        if self.retrying.load(Ordering::Acquire) {
            return Err(
                "a stored change is not in the live snapshot yet (rebuild retrying)".to_owned(),
            );
        }
        Ok(())
    }

    /// After a committed change: rebuild now. A failure does not undo or fail the change; it is
    /// logged and a background task retries until a rebuild succeeds.
    pub async fn refresh(self: &Arc<Self>) {
        if let Err(error) = self.rebuild().await {
            tracing::error!(%error, "a change is stored but the live snapshot could not be rebuilt; retrying");
            self.retry_in_background();
        }
    }

    fn retry_in_background(self: &Arc<Self>) {
        if self.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let snapshots = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                tokio::time::sleep(delay).await;
                match snapshots.rebuild().await {
                    Ok(()) => {
                        tracing::info!("live snapshot rebuilt after earlier failures");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?delay, "live snapshot rebuild failed again; retrying");
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            snapshots.retrying.store(false, Ordering::Release);
        });
    }
}

/// Follows the change feed: a change published by another instance rebuilds this one's snapshot
/// (a remote cooldown reset also clears the local runtime). Changes of this instance were applied
/// when they were made; a subscriber that lagged behind rebuilds to catch up. With `backstop`
/// (a database other instances write), the stored configuration version is also compared every
/// `backstop`. Bursts of changes are taken together and rebuild once.
pub(super) fn spawn_follower(
    snapshots: Arc<Snapshots>,
    mut changes: broadcast::Receiver<Published>,
    me: InstanceId,
    backstop: Option<Duration>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut check = tokio::time::interval(backstop.unwrap_or(Duration::from_secs(3600)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            let first = tokio::select! {
                received = changes.recv() => received,
                _ = check.tick(), if backstop.is_some() => {
                    if snapshots.is_behind(None).await {
                        tracing::info!("the stored configuration changed without a notification; rebuilding");
                        snapshots.refresh().await;
                    }
                    continue;
                }
            };
            let mut rebuild = false;
            let mut next = Some(first);
            while let Some(received) = next.take() {
                match received {
                    Ok(published) if published.origin == me => {}
                    Ok(Published {
                        change: Change::Remote { version },
                        ..
                    }) => rebuild |= snapshots.is_behind(version).await,
                    Ok(published) => {
                        tracing::debug!(origin = %published.origin, change = ?published.change, "change from another instance");
                        if let Change::CooldownReset(id) = &published.change {
                            if let Some(runtime) = snapshots.registry().find_backend(id) {
                                runtime.reset();
                            }
                        }
                        rebuild |= published.change.alters_snapshot();
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "missed published changes; rebuilding the snapshot");
                        rebuild = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                // Whatever else is already queued, in the same rebuild.
                match changes.try_recv() {
                    Ok(published) => next = Some(Ok(published)),
                    Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                        next = Some(Err(broadcast::error::RecvError::Lagged(missed)));
                    }
                    Err(_) => {}
                }
            }
            if rebuild {
                snapshots.refresh().await;
            }
        }
    })
}

/// The price table: the embedded defaults, the config file's prices over them, the admin API's
/// over both. A model id either layer cannot hold (checked when it was written) is logged and
/// left out rather than failing the snapshot.
fn price_table(
    config: &BTreeMap<String, ModelPrice>,
    api: Vec<(String, ModelPrice)>,
) -> PriceTable {
    let defaults = match PriceTable::defaults() {
        Ok(table) => table.clone(),
        Err(error) => {
            tracing::error!(%error, "the embedded default prices are unusable");
            PriceTable::default()
        }
    };
    let layered = defaults
        .merged(config.clone(), PriceSource::Config)
        .unwrap_or_else(|error| {
            tracing::error!(%error, "config-file prices left out");
            defaults.clone()
        });
    layered
        .merged(api, PriceSource::Api)
        .unwrap_or_else(|error| {
            tracing::error!(%error, "stored prices left out");
            layered.clone()
        })
}

/// Unix milliseconds of the start of `now`'s UTC day and month.
pub(super) fn window_starts_ms(now: chrono::DateTime<chrono::Utc>) -> (i64, i64) {
    use chrono::{Datelike, TimeZone};
    let date = now.date_naive();
    let day = date.and_hms_opt(0, 0, 0).map_or(0, |start| {
        chrono::Utc.from_utc_datetime(&start).timestamp_millis()
    });
    let month = date
        .with_day(1)
        .and_then(|first| first.and_hms_opt(0, 0, 0))
        .map_or(0, |start| {
            chrono::Utc.from_utc_datetime(&start).timestamp_millis()
        });
    (day, month)
}
