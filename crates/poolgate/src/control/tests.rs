//! The control plane against a real SQLite file, with a store wrapper that can fail reads or
//! writes, or hold a health write, on demand: validation errors, failed writes that leave
//! nothing behind, a failed rebuild after a commit, a reset racing a queued health write, and
//! changes arriving from another instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::store::sqlite::SqliteStore;
use super::store::{ConfigStore, StoreError, Stores};
use super::*;
use crate::config::DatabaseUrl;
use crate::cooldown::{CooldownPolicy, Health, Outcome as UpstreamOutcome};
use crate::crypto::{MasterKey, Sealer};
use crate::domain::AliasRecord;
use crate::domain::{
    BackendInput, BackendSpec, ClientKeyRecord, LimiterLevel, PersistedHealth, PoolName,
};
use crate::readiness::ProbeStatus;

// === a store that fails or waits when told to ===

#[derive(Default)]
struct Switches {
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    hold_health: AtomicBool,
    health_entered: Notify,
    health_release: Notify,
}

struct FlakyStore {
    inner: Arc<SqliteStore>,
    switches: Arc<Switches>,
}

fn injected() -> StoreError {
    StoreError::Corrupt("injected failure".into())
}

impl FlakyStore {
    fn read(&self) -> Result<(), StoreError> {
        if self.switches.fail_reads.load(Ordering::SeqCst) {
            return Err(injected());
        }
        Ok(())
    }

    fn write(&self) -> Result<(), StoreError> {
        if self.switches.fail_writes.load(Ordering::SeqCst) {
            return Err(injected());
        }
        Ok(())
    }
}

#[async_trait]
impl ConfigStore for FlakyStore {
    async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        self.inner.list_pools().await
    }
    async fn find_pool(&self, name: &PoolName) -> Result<Option<Pool>, StoreError> {
        self.inner.find_pool(name).await
    }
    async fn create_pool(&self, pool: &Pool) -> Result<(), StoreError> {
        self.write()?;
        self.inner.create_pool(pool).await
    }
    async fn list_backends(&self) -> Result<Vec<BackendRecord>, StoreError> {
        self.read()?;
        self.inner.list_backends().await
    }
    async fn get_backend(&self, id: &BackendId) -> Result<Option<BackendRecord>, StoreError> {
        self.inner.get_backend(id).await
    }
    async fn insert_backend(&self, backend: &BackendRecord) -> Result<(), StoreError> {
        self.write()?;
        self.inner.insert_backend(backend).await
    }
    async fn update_backend(&self, backend: &BackendRecord) -> Result<(), StoreError> {
        self.write()?;
        self.inner.update_backend(backend).await
    }
    async fn delete_backend(&self, id: &BackendId) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.delete_backend(id).await
    }
    async fn save_health(
        &self,
        id: &BackendId,
        health: &PersistedHealth,
    ) -> Result<(), StoreError> {
        if self.switches.hold_health.load(Ordering::SeqCst) {
            self.switches.health_entered.notify_one();
            self.switches.health_release.notified().await;
        }
        self.inner.save_health(id, health).await
    }
    async fn sync_config(
        &self,
        pools: &[Pool],
        backends: &[BackendRecord],
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.sync_config(pools, backends).await
    }
    async fn replace_sealed_keys(
        &self,
        sealed: &[(BackendId, String)],
        settings: &[(&str, String)],
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.replace_sealed_keys(sealed, settings).await
    }
    async fn list_client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError> {
        self.inner.list_client_keys().await
    }
    async fn insert_client_key(&self, key: &ClientKeyRecord) -> Result<(), StoreError> {
        self.write()?;
        self.inner.insert_client_key(key).await
    }
    async fn revoke_client_key(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.revoke_client_key(id, at_ms).await
    }
    async fn update_client_key(&self, key: &ClientKeyRecord) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.update_client_key(key).await
    }
    async fn save_limiter_levels(&self, levels: &[LimiterLevel]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.save_limiter_levels(levels).await
    }
    async fn load_limiter_levels(&self) -> Result<Vec<LimiterLevel>, StoreError> {
        self.inner.load_limiter_levels().await
    }
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.get_setting(key).await
    }
    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write()?;
        self.inner.put_setting(key, value).await
    }
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.put_setting_if_absent(key, value).await
    }
    async fn config_version(&self) -> Result<Option<i64>, StoreError> {
        self.inner.config_version().await
    }
    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError> {
        self.read()?;
        self.inner.list_aliases().await
    }
    async fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        self.write()?;
        self.inner.put_alias(alias).await
    }
    async fn delete_alias(&self, alias: &str) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.delete_alias(alias).await
    }
    async fn sync_config_aliases(&self, aliases: &[AliasRecord]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.sync_config_aliases(aliases).await
    }
    async fn list_prices(&self) -> Result<Vec<(String, crate::pricing::ModelPrice)>, StoreError> {
        self.read()?;
        self.inner.list_prices().await
    }
    async fn put_price(
        &self,
        model: &str,
        price: &crate::pricing::ModelPrice,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.put_price(model, price, at_ms).await
    }
    async fn delete_price(&self, model: &str) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.delete_price(model).await
    }
    async fn list_spend_limits(&self) -> Result<Vec<crate::pricing::SpendLimitRecord>, StoreError> {
        self.read()?;
        self.inner.list_spend_limits().await
    }
    async fn put_spend_limits(
        &self,
        record: &crate::pricing::SpendLimitRecord,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.put_spend_limits(record, at_ms).await
    }
}

// === harness ===

struct Harness {
    _dir: tempfile::TempDir,
    control: ControlPlane,
    /// The same database, unwrapped: what is really stored.
    sqlite: Arc<SqliteStore>,
    switches: Arc<Switches>,
    feed: Arc<LocalChangeFeed>,
}

async fn harness_with(configure: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poolgate.db");
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        database_url: DatabaseUrl::Sqlite(path.clone()),
        ..Config::default()
    };
    configure(&mut config);
    let sqlite = Arc::new(SqliteStore::open(&path).await.unwrap());
    let switches = Arc::new(Switches::default());
    let flaky = Arc::new(FlakyStore {
        inner: Arc::clone(&sqlite),
        switches: Arc::clone(&switches),
    });
    let feed = Arc::new(LocalChangeFeed::default());
    let control = ControlPlane::assemble(
        Arc::new(config),
        Parts {
            stores: Stores {
                config: flaky,
                usage: sqlite.clone(),
                affinity: sqlite.clone(),
                postgres: None,
            },
            sealer: Sealer::new(MasterKey::generate(), 1),
            key_source: MasterKeySource::Env,
            changes: feed.clone(),
            pg_feed: None,
            cluster: None,
            observer: crate::telemetry::Observer::new(Default::default(), None).unwrap(),
        },
    )
    .await
    .unwrap();
    Harness {
        _dir: dir,
        control,
        sqlite,
        switches,
        feed,
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

fn input(name: &str) -> BackendInput {
    crate::domain::tests_support::backend_input(name)
}

/// Polls (every 10 ms, up to 5 s) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === tests ===

#[tokio::test]
async fn a_change_is_validated_once_sealed_stored_published_and_served() {
    let h = harness().await;
    let mut heard = h.feed.subscribe();
    let record = h.control.create_backend(input("one")).await.unwrap();
    assert!(record.api_key_sealed.starts_with("pgenc:"), "sealed");
    assert_eq!(record.api_key_mask, "sk-…0001");
    let stored = h.sqlite.get_backend(&record.id).await.unwrap().unwrap();
    assert_eq!(stored, record);
    let published = heard.try_recv().unwrap();
    assert_eq!(published.change, Change::BackendCreated(record.id.clone()));
    assert_eq!(published.origin, h.control.instance());
    let live = h.control.live();
    assert!(live.routes.contains_exact("m"), "the snapshot serves it");
    h.control.shutdown().await;
}

#[tokio::test]
async fn invalid_input_is_refused_naming_the_field_and_nothing_changes() {
    let h = harness().await;
    h.control.create_backend(input("one")).await.unwrap();
    let before = h.control.live();
    let cases: Vec<(BackendInput, &str)> = vec![
        (
            BackendInput {
                rpm_limit: Some(-1),
                ..input("two")
            },
            "rpm_limit",
        ),
        (
            BackendInput {
                api_base_url: "ftp://x".into(),
                ..input("two")
            },
            "api_base_url",
        ),
        (
            BackendInput {
                name: "two words".into(),
                ..input("two")
            },
            "name",
        ),
    ];
    for (bad, field) in cases {
        match h.control.create_backend(bad).await {
            Err(ControlError::Invalid(invalid)) => assert_eq!(invalid.field, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    match h
        .control
        .create_backend(BackendInput {
            pool: Some("no-such-pool".into()),
            ..input("two")
        })
        .await
    {
        Err(ControlError::UnknownPool { field, pool }) => {
            assert_eq!((field.as_str(), pool.as_str()), ("pool", "no-such-pool"));
        }
        other => panic!("{other:?}"),
    }
    match h.control.create_backend(input("one")).await {
        Err(ControlError::Conflict { param, message }) => {
            assert_eq!(param, "name");
            assert!(message.contains("one"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.sqlite.list_backends().await.unwrap().len(), 1);
    assert!(
        Arc::ptr_eq(&before, &h.control.live()),
        "refused changes do not rebuild the snapshot"
    );
    h.control.shutdown().await;
}

#[tokio::test]
async fn a_failed_write_leaves_the_store_and_the_snapshot_unchanged() {
    let h = harness().await;
    let existing = h.control.create_backend(input("one")).await.unwrap();
    let before = h.control.live();
    let mut heard = h.feed.subscribe();
    h.switches.fail_writes.store(true, Ordering::SeqCst);

    let created = h.control.create_backend(input("two")).await;
    assert!(
        matches!(created, Err(ControlError::Store(_))),
        "{created:?}"
    );
    let patch = crate::domain::BackendPatch {
        weight: Some(9),
        ..Default::default()
    };
    let updated = h.control.update_backend(&existing.id, patch).await;
    assert!(
        matches!(updated, Err(ControlError::Store(_))),
        "{updated:?}"
    );

    assert_eq!(
        h.sqlite.list_backends().await.unwrap(),
        vec![existing],
        "nothing half-written"
    );
    assert!(
        Arc::ptr_eq(&before, &h.control.live()),
        "snapshot unchanged"
    );
    assert!(heard.try_recv().is_err(), "nothing published");
    // Each failure of the store is counted, by operation.
    assert_eq!(store_errors(&h.control, "insert_backend"), 1);
    assert_eq!(store_errors(&h.control, "update_backend"), 1);
    h.control.shutdown().await;
}

/// `poolgate_store_errors_total{operation}` as the control plane's metrics show it.
fn store_errors(control: &ControlPlane, operation: &str) -> u64 {
    let series = format!("poolgate_store_errors_total{{operation=\"{operation}\"}} ");
    control
        .observer()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn a_config_sync_checks_every_backend_before_writing_any() {
    let spec = |name: &str, pool: &str| -> BackendSpec {
        BackendInput {
            pool: Some(pool.to_owned()),
            ..input(name)
        }
        .validate(&|f| f.to_owned())
        .unwrap()
    };
    let h = harness_with(|config| {
        config.backends = vec![spec("cfg-a", "primary"), spec("cfg-b", "undeclared")];
    })
    .await;
    match h.control.sync_config().await {
        Err(ControlError::UnknownPool { field, .. }) => assert_eq!(field, "backends[1].pool"),
        other => panic!("{other:?}"),
    }
    assert!(h.sqlite.list_backends().await.unwrap().is_empty());
    h.control.shutdown().await;
}

#[tokio::test]
async fn a_rebuild_that_fails_after_the_commit_is_retried_not_reported() {
    let h = harness().await;
    h.switches.fail_reads.store(true, Ordering::SeqCst);
    let record = h
        .control
        .create_backend(input("one"))
        .await
        .expect("the write succeeded, so the change does too");
    assert!(h.sqlite.get_backend(&record.id).await.unwrap().is_some());
    assert!(
        !h.control.live().by_id.contains_key(&record.id),
        "the rebuild failed"
    );
    // Not ready meanwhile: the snapshot lags behind the store (whose cheap query still works).
    let report = h.control.readiness().check().await;
    assert!(!report.ready());
    assert_eq!(
        report.checks,
        vec![
            ("store", ProbeStatus::Ok),
            ("snapshot", ProbeStatus::Failed)
        ]
    );
    assert!(store_errors(&h.control, "list_backends") >= 1);
    h.switches.fail_reads.store(false, Ordering::SeqCst);
    let control = h.control.clone();
    eventually("the background retry rebuilds the snapshot", || {
        control.live().by_id.contains_key(&record.id)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.control.readiness().check().await.ready() {
        assert!(
            Instant::now() < deadline,
            "ready again once the store answers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.control.shutdown().await;
}

#[tokio::test]
async fn a_reset_racing_a_queued_health_write_wins() {
    let h = harness().await;
    let record = h.control.create_backend(input("one")).await.unwrap();
    let backend = Arc::clone(&h.control.live().by_id[&record.id]);
    let policy = CooldownPolicy {
        jitter: 0.0,
        ..CooldownPolicy::default()
    };
    // A request meets a 429: the backend cools and is marked dirty for the health writer.
    let mut admitted = backend.runtime.admit(Instant::now()).unwrap();
    let limited = UpstreamOutcome::RateLimited {
        retry_after: Some(Duration::from_secs(600)),
    };
    assert!(matches!(
        admitted.resolve(limited, &policy, Instant::now()),
        crate::runtime::Resolution::Local(true)
    ));
    drop(admitted);
    h.switches.hold_health.store(true, Ordering::SeqCst);
    h.control
        .inner
        .health
        .mark_dirty(&record.id, &backend.runtime);
    // The writer has read the cooling state and is about to write it.
    h.switches.health_entered.notified().await;
    h.switches.hold_health.store(false, Ordering::SeqCst);

    let reset = tokio::spawn({
        let control = h.control.clone();
        let id = record.id.clone();
        async move { control.reset_cooldown(&id).await }
    });
    let runtime = Arc::clone(&backend.runtime);
    eventually("the reset is applied in memory", || {
        runtime.snapshot(Instant::now()).health == Health::Healthy
    })
    .await;
    // Now the stale (cooling) write goes through; the reset must still win.
    h.switches.health_release.notify_one();
    let answered = reset.await.unwrap().unwrap();
    assert_eq!(answered.health, PersistedHealth::default());
    let stored = h.sqlite.get_backend(&record.id).await.unwrap().unwrap();
    assert_eq!(
        stored.health,
        PersistedHealth::default(),
        "the stored health is the reset's"
    );
    h.control.shutdown().await;
    let stored = h.sqlite.get_backend(&record.id).await.unwrap().unwrap();
    assert_eq!(stored.health, PersistedHealth::default(), "and stays so");
}

#[tokio::test]
async fn changes_from_another_instance_rebuild_this_snapshot() {
    let h = harness().await;
    // Another instance writes a pool and tells the feed.
    let pool = Pool {
        name: PoolName::new("elsewhere"),
        priority: 7,
        description: String::new(),
    };
    h.sqlite.create_pool(&pool).await.unwrap();
    h.feed
        .publish(Published {
            origin: InstanceId::generate(),
            change: Change::PoolCreated(pool.name.clone()),
        })
        .await;
    let control = h.control.clone();
    eventually("the follower rebuilds the snapshot", || {
        control.live().pools.iter().any(|p| p.name == pool.name)
    })
    .await;
    h.control.shutdown().await;
}

#[tokio::test]
async fn client_keys_and_pools_are_validated_and_revoked_keys_leave_the_snapshot() {
    let h = harness().await;
    let (record, plaintext) = h
        .control
        .create_client_key(ClientKeyInput {
            max_parallel_requests: Some(4),
            name: "  app  ".into(),
            rpm_limit: Some(10),
            allowed_models: vec!["m".into()],
            tpm_limit: Some(5_000),
        })
        .await
        .unwrap();
    assert_eq!(record.name, "app");
    assert_eq!(record.tpm_limit, 5_000);
    assert_eq!(
        h.control.live().client_keys[&record.id].runtime.tpm_limit(),
        5_000
    );
    // A change of limits reaches the key's runtime; a bad one names its field.
    let changed = h
        .control
        .update_client_key(
            &record.id,
            ClientKeyPatch {
                tpm_limit: Some(9_000),
                ..ClientKeyPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((changed.tpm_limit, changed.rpm_limit), (9_000, 10));
    assert_eq!(
        h.control.live().client_keys[&record.id].runtime.tpm_limit(),
        9_000
    );
    for bad in [-1, 150_000_001] {
        match h
            .control
            .update_client_key(
                &record.id,
                ClientKeyPatch {
                    tpm_limit: Some(bad),
                    ..ClientKeyPatch::default()
                },
            )
            .await
        {
            Err(ControlError::Invalid(invalid)) => assert_eq!(invalid.field, "tpm_limit"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(record.max_parallel_requests, 4);
    assert!(secrecy::ExposeSecret::expose_secret(&plaintext).starts_with("pgk-"));
    assert!(h.control.live().client_keys.contains_key(&record.id));
    match h
        .control
        .create_client_key(ClientKeyInput {
            name: "x".into(),
            allowed_models: vec!["a b".into()],
            ..ClientKeyInput::default()
        })
        .await
    {
        Err(ControlError::Invalid(invalid)) => assert_eq!(invalid.field, "allowed_models[0]"),
        other => panic!("{other:?}"),
    }
    match h
        .control
        .create_client_key(ClientKeyInput {
            name: "x".into(),
            max_parallel_requests: Some(-1),
            ..ClientKeyInput::default()
        })
        .await
    {
        Err(ControlError::Invalid(invalid)) => assert_eq!(invalid.field, "max_parallel_requests"),
        other => panic!("{other:?}"),
    }
    h.control.revoke_client_key(&record.id).await.unwrap();
    assert!(!h.control.live().client_keys.contains_key(&record.id));
    assert!(matches!(
        h.control.revoke_client_key(&record.id).await,
        Err(ControlError::NotFound { .. })
    ));
    match h
        .control
        .create_pool(PoolInput {
            name: "p".into(),
            priority: 5_000_000,
            description: String::new(),
        })
        .await
    {
        Err(ControlError::Invalid(invalid)) => assert_eq!(invalid.field, "priority"),
        other => panic!("{other:?}"),
    }
    h.control.shutdown().await;
}

#[tokio::test]
async fn bucket_levels_are_checkpointed_while_running_and_written_exactly_at_shutdown() {
    let h =
        harness_with(|config| config.limits.checkpoint_interval = Duration::from_millis(100)).await;
    let record = h
        .control
        .create_backend(BackendInput {
            rpm_limit: Some(60),
            ..input("limited")
        })
        .await
        .unwrap();
    let backend = Arc::clone(&h.control.live().by_id[&record.id]);
    for _ in 0..40 {
        drop(backend.runtime.admit(Instant::now()).unwrap());
    }
    let unit = u64::try_from(crate::limits::UNITS_PER_TOKEN).unwrap();
    // A checkpoint (what a crash would leave) comes within an interval or so.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stored = loop {
        let levels = h.sqlite.load_limiter_levels().await.unwrap();
        if let Some(level) = levels.into_iter().find(|l| l.id == record.id.as_str()) {
            break level;
        }
        assert!(Instant::now() < deadline, "no checkpoint written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stored.kind, crate::domain::LimiterKind::Backend);
    assert_eq!(stored.rpm, 60);
    assert!(
        (20 * unit..22 * unit).contains(&stored.level_units),
        "{stored:?}"
    );
    // More tokens taken, then a graceful stop: the level as of the shutdown.
    for _ in 0..5 {
        drop(backend.runtime.admit(Instant::now()).unwrap());
    }
    h.control.shutdown().await;
    let levels = h.sqlite.load_limiter_levels().await.unwrap();
    assert_eq!(levels.len(), 1, "{levels:?}");
    assert!(levels[0].at_ms >= stored.at_ms);
    assert!(
        (15 * unit..18 * unit).contains(&levels[0].level_units),
        "{levels:?}"
    );
}

#[tokio::test]
async fn aliases_and_sticky_settings_are_published_into_the_snapshot() {
    let h = harness_with(|config| {
        config
            .aliases
            .insert("fast".into(), crate::domain::CanonicalModel::new("m"));
    })
    .await;
    h.control.create_backend(input("one")).await.unwrap();
    h.control.sync_config().await.unwrap();
    let live = h.control.live();
    assert_eq!(live.routes.route("fast").unwrap().canonical.as_str(), "m");
    h.control.set_alias("quick", "m").await.unwrap();
    assert_eq!(h.control.live().routes.canonical("quick").as_str(), "m");
    // One step only: an alias of an alias is refused, naming the alias.
    match h.control.set_alias("chain", "quick").await {
        Err(ControlError::Invalid(invalid)) => assert_eq!(invalid.field, "alias"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.control.delete_alias("nope").await,
        Err(ControlError::NotFound { .. })
    ));

    assert!(!h.control.live().sticky.enabled, "off by default");
    let input = crate::domain::sticky::StickyInput {
        enabled: Some(true),
        ..Default::default()
    };
    h.control.set_sticky(input).await.unwrap();
    assert!(h.control.live().sticky.enabled);
    assert!(h.control.sticky().await.unwrap().enabled, "stored");
    h.control.shutdown().await;
}

#[tokio::test]
async fn a_config_alias_may_not_take_the_name_of_an_api_alias() {
    let h = harness_with(|config| {
        config
            .aliases
            .insert("quick".into(), crate::domain::CanonicalModel::new("m"));
    })
    .await;
    h.control.set_alias("quick", "other").await.unwrap();
    match h.control.sync_config().await {
        Err(ControlError::Conflict { param, .. }) => assert_eq!(param, "alias"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.control.live().routes.canonical("quick").as_str(),
        "other",
        "the API's alias stands"
    );
    h.control.shutdown().await;
}
