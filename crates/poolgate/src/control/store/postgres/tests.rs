//! The PostgreSQL store against a real PostgreSQL (the test services harness starts one per test
//! on a free port): the same round trips as the SQLite store, the configuration version and its
//! notification, idempotent usage batches, and statistics equal to SQLite's for the same records
//! (SQLite's are checked against the plain definitions in its own tests).

#[path = "../../../../tests/services/mod.rs"]
mod services;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use sqlx::postgres::PgListener;

use super::*;
use crate::control::store::sqlite::SqliteStore;
use crate::control::store::test_support::{
    comparable, lifetime_after_migration, record_strategy, spend_before_lifetime_sql, usage,
};
use crate::control::store::UsageStore;
use crate::domain::{CanonicalModel, HttpVersion, UsageRecord};
use crate::usage::stats::{assemble, Stats, StatsQuery, StatsRange, StatsSource};
use crate::usage::UsageFilter;
use services::PostgresServer;

fn backend(name: &str) -> BackendRecord {
    crate::domain::tests_support::backend_record(name)
}

async fn open(server: &PostgresServer, database: &str) -> PgStore {
    let url = server.create_database(database).await;
    PgStore::open(&url, &DatabaseSettings::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_config_store_round_trips_and_versions_every_configuration_write() {
    let server = PostgresServer::start().await;
    let store = open(&server, "config").await;
    let pools: Vec<_> = store
        .list_pools()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name.to_string(), p.priority))
        .collect();
    assert_eq!(
        pools,
        [("primary".to_owned(), 0), ("fallback".to_owned(), 1)]
    );
    let mut listener = PgListener::connect_with(store.pool()).await.unwrap();
    listener.listen(CONFIG_CHANNEL).await.unwrap();
    let version = store.config_version().await.unwrap().unwrap();

    // Backends: create, read, change, refuse duplicates and unknown pools, delete.
    let mut one = backend("one");
    store.insert_backend(&one).await.unwrap();
    assert_eq!(store.get_backend(&one.id).await.unwrap().unwrap(), one);
    let heard = listener.recv().await.unwrap();
    assert_eq!(heard.payload(), format!("config {}", version + 1));
    one.label = "changed".into();
    one.enabled = false;
    one.tpm_limit = 2_000_000;
    one.http_version = HttpVersion::Http1;
    store.update_backend(&one).await.unwrap();
    assert_eq!(store.get_backend(&one.id).await.unwrap().unwrap(), one);
    let error = store.insert_backend(&backend("one")).await.unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    let mut orphan = backend("orphan");
    orphan.pool = PoolName::new("nope");
    let error = store.insert_backend(&orphan).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");

    // Health is not configuration: no new version.
    let before_health = store.config_version().await.unwrap().unwrap();
    let health = PersistedHealth {
        cooldown_until_ms: Some(now_ms() + 60_000),
        consecutive_429_count: 3,
        broken: false,
        last_error: Some("429 from upstream".into()),
    };
    one.enabled = true;
    store.update_backend(&one).await.unwrap();
    let after_update = store.config_version().await.unwrap().unwrap();
    assert!(after_update > before_health);
    store.save_health(&one.id, &health).await.unwrap();
    assert_eq!(
        store.get_backend(&one.id).await.unwrap().unwrap().health,
        health
    );
    assert_eq!(store.config_version().await.unwrap(), Some(after_update));
    let status: String = sqlx::query_scalar("SELECT status FROM backends WHERE id = $1")
        .bind(one.id.as_str())
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(status, "cooling");

    // Pools once; client keys; settings (set once under a race).
    let pool = Pool {
        name: PoolName::new("overflow"),
        priority: 5,
        description: String::new(),
    };
    store.create_pool(&pool).await.unwrap();
    assert!(matches!(
        store.create_pool(&pool).await,
        Err(StoreError::Conflict(_))
    ));
    let key = ClientKeyRecord {
        id: "abc".into(),
        name: "ci".into(),
        display_prefix: "pgk-abc-…".into(),
        secret_hash: vec![7; 32],
        rpm_limit: 10,
        max_parallel_requests: 3,
        allowed_models: vec![CanonicalModel::new("gpt-4o")],
        created_at_ms: 1,
        revoked_at_ms: None,
        tpm_limit: 40_000,
    };
    store.insert_client_key(&key).await.unwrap();
    assert_eq!(store.list_client_keys().await.unwrap(), vec![key.clone()]);
    // Issue #11: a key's limits change in place (0006's `tpm_limit` included).
    let mut changed_key = key.clone();
    changed_key.tpm_limit = 150_000_000;
    changed_key.rpm_limit = 11;
    assert!(store.update_client_key(&changed_key).await.unwrap());
    assert_eq!(
        store.list_client_keys().await.unwrap(),
        vec![changed_key.clone()]
    );
    assert!(store.revoke_client_key("abc", 5).await.unwrap());
    assert!(!store.revoke_client_key("abc", 6).await.unwrap());
    assert_eq!(
        store.list_client_keys().await.unwrap()[0].revoked_at_ms,
        Some(5)
    );
    assert!(store.put_setting_if_absent("fp", "a").await.unwrap());
    assert!(!store.put_setting_if_absent("fp", "b").await.unwrap());
    assert_eq!(store.get_setting("fp").await.unwrap().as_deref(), Some("a"));
    store.put_setting("fp", "c").await.unwrap();
    assert_eq!(store.get_setting("fp").await.unwrap().as_deref(), Some("c"));

    assert!(store.delete_backend(&one.id).await.unwrap());
    assert!(!store.delete_backend(&one.id).await.unwrap());
}

/// Issue #14's bucket levels, as in the SQLite store: upserted, loaded, gone with their backend
/// or revoked key (triggers), never written for an owner that is gone — also when the checkpoint
/// races an uncommitted delete — and not announced as configuration.
#[tokio::test]
async fn limiter_levels_round_trip_and_go_with_their_backend_or_key() {
    use crate::domain::{LimiterKind, LimiterLevel};
    let server = PostgresServer::start().await;
    let store = open(&server, "levels").await;
    let record = backend("limited");
    store.insert_backend(&record).await.unwrap();
    let raced = backend("raced");
    store.insert_backend(&raced).await.unwrap();
    let key = ClientKeyRecord {
        id: "key-1".into(),
        name: "k".into(),
        display_prefix: "pgk-key-1-…".into(),
        secret_hash: vec![1; 32],
        rpm_limit: 60,
        max_parallel_requests: 0,
        allowed_models: Vec::new(),
        created_at_ms: 1,
        revoked_at_ms: None,
        tpm_limit: 0,
    };
    store.insert_client_key(&key).await.unwrap();
    let level = |kind, id: &str, units| LimiterLevel {
        kind,
        id: id.to_owned(),
        rpm: 60,
        level_units: units,
        at_ms: 1_000,
    };
    let version = store.config_version().await.unwrap();
    store
        .save_limiter_levels(&[
            level(LimiterKind::Backend, record.id.as_str(), 5),
            level(LimiterKind::ClientKey, "key-1", 7),
            // No such key: nothing stored.
            level(LimiterKind::ClientKey, "key-2", 8),
        ])
        .await
        .unwrap();
    // An upsert replaces the level.
    store
        .save_limiter_levels(&[level(LimiterKind::ClientKey, "key-1", 9)])
        .await
        .unwrap();
    assert_eq!(
        store.config_version().await.unwrap(),
        version,
        "not configuration"
    );
    let mut levels = store.load_limiter_levels().await.unwrap();
    levels.sort_by_key(|l| l.level_units);
    assert_eq!(
        levels,
        [
            level(LimiterKind::Backend, record.id.as_str(), 5),
            level(LimiterKind::ClientKey, "key-1", 9)
        ]
    );

    // Deleted and revoked: the levels go, and a late checkpoint does not bring them back.
    assert!(store.delete_backend(&record.id).await.unwrap());
    assert!(store.revoke_client_key("key-1", 2).await.unwrap());
    assert!(store.load_limiter_levels().await.unwrap().is_empty());
    store
        .save_limiter_levels(&[
            level(LimiterKind::Backend, record.id.as_str(), 5),
            level(LimiterKind::ClientKey, "key-1", 7),
        ])
        .await
        .unwrap();
    assert!(store.load_limiter_levels().await.unwrap().is_empty());

    // A checkpoint racing a delete that is not committed yet waits for it, then writes nothing.
    let mut delete = store.pool().begin().await.unwrap();
    sqlx::query("DELETE FROM backends WHERE id = $1")
        .bind(raced.id.as_str())
        .execute(&mut *delete)
        .await
        .unwrap();
    let checkpoint = {
        let store = store.clone();
        let raced = level(LimiterKind::Backend, raced.id.as_str(), 3);
        tokio::spawn(async move { store.save_limiter_levels(&[raced]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !checkpoint.is_finished(),
        "the checkpoint waits for the delete"
    );
    delete.commit().await.unwrap();
    checkpoint.await.unwrap().unwrap();
    assert!(store.load_limiter_levels().await.unwrap().is_empty());
}

#[tokio::test]
async fn config_sync_keeps_ids_and_refuses_a_stale_view() {
    let server = PostgresServer::start().await;
    let store = open(&server, "sync").await;
    let mut from_config = backend("cfg");
    from_config.source = Source::Config;
    let mut stale = backend("stale");
    stale.source = Source::Config;
    store.insert_backend(&from_config).await.unwrap();
    store.insert_backend(&stale).await.unwrap();
    store.insert_backend(&backend("api")).await.unwrap();

    let mut changed = from_config.clone();
    changed.rpm_limit = 7;
    store.sync_config(&[], &[changed]).await.unwrap();
    let backends = store.list_backends().await.unwrap();
    let mut names: Vec<_> = backends.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "cfg"]);
    let cfg = backends.iter().find(|b| b.name == "cfg").unwrap();
    assert_eq!((&cfg.id, cfg.rpm_limit), (&from_config.id, 7));

    // Another instance built its records before this one's sync landed: a new id for a name
    // that exists is refused as stale, and nothing of its batch is written.
    let mut late = backend("cfg");
    late.source = Source::Config;
    late.rpm_limit = 99;
    let error = store.sync_config(&[], &[late]).await.unwrap_err();
    assert!(matches!(error, StoreError::Stale(_)), "{error:?}");
    let cfg = store.get_backend(&from_config.id).await.unwrap().unwrap();
    assert_eq!(cfg.rpm_limit, 7);
}

/// The statistics of `[from, from + 6 h)` in buckets of `bucket_ms` (whole hours) from the raw
/// records and from the hourly rollup, made comparable.
async fn rollup_and_raw(store: &dyn UsageStore, from: i64, bucket_ms: i64) -> (Stats, Stats) {
    let query = StatsQuery::default();
    let raw = StatsRange::new(&query, from, from + 6 * 3_600_000, bucket_ms);
    let rollup = raw.rollup();
    assert_eq!(
        (rollup.from_ms, rollup.bucket_ms),
        (raw.from_ms, raw.bucket_ms)
    );
    let raw = assemble(&store.usage_stats(&raw).await.unwrap(), &raw);
    let rolled = assemble(&store.usage_stats(&rollup).await.unwrap(), &rollup);
    (comparable(raw), comparable(rolled))
}

async fn stats_of(store: &dyn UsageStore, from: i64, to: i64, bucket_ms: i64) -> Stats {
    let query = StatsQuery::default();
    let range = StatsRange::new(&query, from, to, bucket_ms);
    let groups = store.usage_stats(&range).await.unwrap();
    assemble(&groups, &range)
}

#[tokio::test]
async fn usage_batches_are_idempotent_paged_and_partitioned() {
    let server = PostgresServer::start().await;
    let store = open(&server, "usage").await;
    let now = now_ms();
    store.prepare_usage(now).await.unwrap();
    let today = |i: i64| UsageRecord {
        ts_ms: now + i,
        ..usage(i)
    };
    let records: Vec<_> = (0..25).map(today).collect();
    store.insert_usage(&records).await.unwrap();
    // The same batch again (an acknowledgement lost), and a batch naming one request twice.
    store.insert_usage(&records).await.unwrap();
    let twice = today(30);
    store
        .insert_usage(&[twice.clone(), twice, today(31)])
        .await
        .unwrap();
    assert_eq!(store.count_usage().await.unwrap(), 27);
    // The rollup counted each stored request once (the retried batch and the twice-named
    // request added nothing).
    let hour = 3_600_000;
    let (raw, rolled) = rollup_and_raw(&store, now.div_euclid(hour) * hour, 2 * hour).await;
    assert_eq!(rolled.total.requests, 27);
    assert_eq!(raw, rolled);

    let first = store
        .list_usage(&UsageFilter {
            limit: Some(10),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(first.records[0], today(31));
    let second = store
        .list_usage(&UsageFilter {
            limit: Some(20),
            before: first.next_cursor,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(second.records.len(), 17);
    assert_eq!(second.next_cursor, None);
    let only_a = store
        .list_usage(&UsageFilter {
            model: Some("a".into()),
            status_min: Some(200),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(only_a.records.len(), 14);

    // Today's rows are in today's partition, not the default one.
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records_default")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(in_default, 0);
    // Retention: nothing before yesterday to drop; everything before tomorrow + 3 days goes.
    assert_eq!(store.prune_usage(now - 86_400_000).await.unwrap(), 0);
    assert!(store.prune_usage(now + 4 * 86_400_000).await.unwrap() >= 1);
    assert_eq!(store.count_usage().await.unwrap(), 0);
    // The rollup outlives the dropped partitions: a range over them still reports them.
    let query = StatsQuery::default();
    let long = StatsRange::new(&query, now - 3 * 86_400_000, now + hour, hour).rollup();
    let stats = assemble(&store.usage_stats(&long).await.unwrap(), &long);
    assert_eq!(stats.source, StatsSource::Rollup);
    assert_eq!(stats.total.requests, 27);
    assert_eq!(stats.by_key["abc"].requests, 27);
    // The rollup's own retention, in slices.
    assert!(store.prune_rollups(now + 2 * hour).await.unwrap() >= 1);
    let stats = assemble(&store.usage_stats(&long).await.unwrap(), &long);
    assert_eq!(stats.total.requests, 0);
}

/// Random records, stored in PostgreSQL and in SQLite: every aggregate and series is equal.
#[test]
fn statistics_equal_sqlites_for_the_same_records() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, pg) = runtime.block_on(async {
        let server = PostgresServer::start().await;
        let pg = open(&server, "stats").await;
        (server, pg)
    });
    let mut runner = TestRunner::new(ProptestConfig::with_cases(12));
    let strategy = (prop::collection::vec(record_strategy(), 0..120), 1_i64..30);
    runner
        .run(&strategy, |(records, bucket_seconds)| {
            let records: Vec<UsageRecord> = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| UsageRecord {
                    request_id: format!("req-{i}"),
                    ..r
                })
                .collect();
            let (from_pg, from_sqlite, rollups) = runtime.block_on(async {
                sqlx::query("TRUNCATE usage_records, usage_rollup_hour")
                    .execute(pg.pool())
                    .await
                    .unwrap();
                pg.insert_usage(&records).await.unwrap();
                let dir = tempfile::tempdir().unwrap();
                let sqlite = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
                sqlite.insert_usage(&records).await.unwrap();
                let bucket_ms = bucket_seconds * 1000;
                let from_pg = stats_of(&pg, 0, 60_000, bucket_ms).await;
                let from_sqlite = stats_of(&sqlite, 0, 60_000, bucket_ms).await;
                // The same records spread over six hours, with a retried batch: the rollup
                // answers what the raw records do, in both stores.
                sqlx::query("TRUNCATE usage_records, usage_rollup_hour")
                    .execute(pg.pool())
                    .await
                    .unwrap();
                let spread: Vec<UsageRecord> = records
                    .iter()
                    .map(|r| UsageRecord {
                        ts_ms: r.ts_ms * 360,
                        ..r.clone()
                    })
                    .collect();
                let dir = tempfile::tempdir().unwrap();
                let sqlite = SqliteStore::open(&dir.path().join("r.db")).await.unwrap();
                for store in [&pg as &dyn UsageStore, &sqlite] {
                    store
                        .insert_usage(&spread[..spread.len() / 2])
                        .await
                        .unwrap();
                    store.insert_usage(&spread).await.unwrap();
                }
                let hours = (bucket_seconds % 3 + 1) * 3_600_000;
                let rollups = (
                    rollup_and_raw(&pg, 0, hours).await,
                    rollup_and_raw(&sqlite, 0, hours).await,
                );
                (from_pg, from_sqlite, rollups)
            });
            let ((pg_raw, pg_rolled), (sqlite_raw, sqlite_rolled)) = rollups;
            prop_assert_eq!(&pg_raw, &pg_rolled);
            prop_assert_eq!(&pg_rolled, &sqlite_rolled);
            prop_assert_eq!(&sqlite_raw, &sqlite_rolled);
            prop_assert_eq!(&from_pg.by_key, &from_sqlite.by_key);
            prop_assert_eq!(&from_pg.total, &from_sqlite.total);
            prop_assert_eq!(&from_pg.by_backend, &from_sqlite.by_backend);
            prop_assert_eq!(&from_pg.by_model, &from_sqlite.by_model);
            prop_assert_eq!(&from_pg.series, &from_sqlite.series);
            prop_assert_eq!(&from_pg.series_by_backend, &from_sqlite.series_by_backend);
            prop_assert_eq!(&from_pg.series_by_model, &from_sqlite.series_by_model);
            Ok(())
        })
        .unwrap();
    drop(server);
}

#[tokio::test]
async fn aliases_azure_backends_and_response_owners_match_sqlite() {
    use crate::control::store::AffinityStore;
    use crate::domain::{ApiKind, ResponseOwnerRecord};
    let server = PostgresServer::start().await;
    let store = open(&server, "v3").await;
    let mut config = PgListener::connect_with(store.pool()).await.unwrap();
    config
        .listen_all([CONFIG_CHANNEL, OWNERS_CHANNEL])
        .await
        .unwrap();

    // Azure backends with the two new columns; changing one is a configuration change.
    let mut azure = backend("az");
    azure.api = ApiKind::Azure;
    azure.responses = Some(true);
    azure.api_version = Some("2025-04-01-preview".into());
    store.insert_backend(&azure).await.unwrap();
    assert_eq!(store.get_backend(&azure.id).await.unwrap().unwrap(), azure);
    let version = store.config_version().await.unwrap().unwrap();
    azure.api_version = Some("v1".into());
    azure.responses = None;
    store.update_backend(&azure).await.unwrap();
    assert_eq!(store.get_backend(&azure.id).await.unwrap().unwrap(), azure);
    assert_eq!(store.config_version().await.unwrap(), Some(version + 1));

    // Aliases: the same rules as SQLite's, and each write announced.
    let alias = |name: &str, target: &str, source: Source| AliasRecord {
        alias: name.to_owned(),
        target: CanonicalModel::new(target),
        source,
        created_at_ms: 10,
        updated_at_ms: 20,
    };
    store
        .put_alias(&alias("api-one", "gpt-4o", Source::Api))
        .await
        .unwrap();
    // (An upsert fires the INSERT and the UPDATE statement triggers: it may count twice.)
    assert!(store.config_version().await.unwrap() > Some(version + 1));
    store
        .sync_config_aliases(&[
            alias("cfg-a", "m1", Source::Config),
            alias("cfg-b", "m2", Source::Config),
        ])
        .await
        .unwrap();
    let mut changed = alias("api-one", "gpt-4.1", Source::Api);
    changed.created_at_ms = 99;
    store.put_alias(&changed).await.unwrap();
    store
        .sync_config_aliases(&[alias("cfg-b", "m3", Source::Config)])
        .await
        .unwrap();
    let stored = store.list_aliases().await.unwrap();
    let names: Vec<(&str, &str)> = stored
        .iter()
        .map(|a| (a.alias.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(names, [("api-one", "gpt-4.1"), ("cfg-b", "m3")]);
    assert_eq!(
        stored[0].created_at_ms, 10,
        "an update keeps the creation time"
    );
    assert!(store.delete_alias("api-one").await.unwrap());
    assert!(!store.delete_alias("api-one").await.unwrap());

    // Response owners: upserted (a repeated id in one batch keeps the last), deleted, loaded
    // newest first, purged — and every batch announced on the owners channel.
    let owner = |id: &str, created: i64, expires: i64| ResponseOwnerRecord {
        response_id: id.to_owned(),
        backend_id: BackendId::new("bkd_a"),
        caller: "key_1".into(),
        created_at_ms: created,
        expires_at_ms: expires,
    };
    let mut many: Vec<ResponseOwnerRecord> = (0..250)
        .map(|i| owner(&format!("resp_{i}"), i, 1_000 + i))
        .collect();
    many.push(owner("resp_2", 2, 1_002));
    store.save_response_owners(&many, &[]).await.unwrap();
    store
        .save_response_owners(&[owner("resp_0", 500, 5_000)], &["resp_1".to_owned()])
        .await
        .unwrap();
    let loaded = store.load_response_owners(1_100, 1_000).await.unwrap();
    assert_eq!(loaded.len(), 150);
    assert_eq!(loaded[0].response_id, "resp_249", "newest first");
    let renewed = loaded.iter().find(|o| o.response_id == "resp_0").unwrap();
    assert_eq!((renewed.created_at_ms, renewed.expires_at_ms), (0, 5_000));
    assert!(loaded.iter().all(|o| o.response_id != "resp_1"), "deleted");
    assert_eq!(store.purge_response_owners(1_100).await.unwrap(), 99);
    assert_eq!(
        store.load_response_owners(0, 1_000).await.unwrap().len(),
        150
    );

    let mut announced = Vec::new();
    let mut removed = Vec::new();
    while removed.is_empty() {
        let heard = config.recv().await.unwrap();
        if heard.channel() == OWNERS_CHANNEL {
            let notice = OwnerNotice::parse(heard.payload()).unwrap();
            announced.extend(notice.owners());
            removed.extend(notice.removed().iter().cloned());
        }
    }
    assert_eq!(announced.len(), 252);
    assert_eq!(announced[251], owner("resp_0", 500, 5_000));
    assert_eq!(removed, ["resp_1"]);

    // Cached tokens are stored and summed.
    store.insert_usage(&[usage(1), usage(2)]).await.unwrap();
    let page = store.list_usage(&UsageFilter::default()).await.unwrap();
    let mut cached: Vec<_> = page.records.iter().map(|r| r.cached_tokens).collect();
    cached.sort();
    assert_eq!(cached, [Some(1), Some(2)]);

    // A record whose tokens poolgate estimated says so when read back.
    store.insert_usage(&[usage(3)]).await.unwrap();
    let page = store.list_usage(&UsageFilter::default()).await.unwrap();
    let estimated: Vec<_> = page
        .records
        .iter()
        .map(|r| (r.request_id.as_str(), r.tokens_estimated))
        .collect();
    assert_eq!(
        estimated,
        [("req-3", true), ("req-2", false), ("req-1", false)]
    );
}

/// Issue #11: prices and spend limits round-trip (and version the configuration, so other
/// instances rebuild), a backend's limits go with it, and usage records keep their cost and
/// cache-write tokens, summed per window for the budgets restored at start-up.
#[tokio::test]
async fn prices_spend_limits_and_costs_round_trip() {
    use crate::domain::LimiterKind;
    use crate::pricing::{
        BudgetLimits, ModelPrice, Nanodollars, PricePerToken, RestoredSpend, SpendLimitRecord,
    };

    let server = PostgresServer::start().await;
    let store = open(&server, "money").await;
    let version = store.config_version().await.unwrap().unwrap();
    let price = ModelPrice {
        input: PricePerToken::from_nanodollars(2_500),
        output: PricePerToken::from_nanodollars(10_000),
        cached_input: Some(PricePerToken::from_nanodollars(1_250)),
        cache_write: None,
    };
    store.put_price("gpt-x", &price, 1).await.unwrap();
    let cheaper = ModelPrice {
        input: PricePerToken::from_nanodollars(1),
        ..price
    };
    store.put_price("gpt-x", &cheaper, 2).await.unwrap();
    store.put_price("a-model", &price, 3).await.unwrap();
    assert_eq!(
        store.list_prices().await.unwrap(),
        [("a-model".to_owned(), price), ("gpt-x".to_owned(), cheaper)]
    );
    assert!(store.config_version().await.unwrap().unwrap() > version);
    assert!(store.delete_price("gpt-x").await.unwrap());
    assert!(!store.delete_price("gpt-x").await.unwrap());
    assert_eq!(store.list_prices().await.unwrap().len(), 1);

    let one = backend("capped");
    store.insert_backend(&one).await.unwrap();
    let key_limits = SpendLimitRecord {
        kind: LimiterKind::ClientKey,
        id: "key-1".into(),
        limits: BudgetLimits {
            daily: Some(Nanodollars::new(5)),
            monthly: None,
            total: Some(Nanodollars::from_usd(1_000_000_000)),
        },
    };
    let cap = SpendLimitRecord {
        kind: LimiterKind::Backend,
        id: one.id.to_string(),
        limits: BudgetLimits::monthly_cap(Some(Nanodollars::new(7))),
    };
    store.put_spend_limits(&key_limits, 1).await.unwrap();
    store.put_spend_limits(&cap, 1).await.unwrap();
    let mut listed = store.list_spend_limits().await.unwrap();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = vec![key_limits.clone(), cap.clone()];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(listed, expected);
    // The backend's cap goes with it; limits with no window set remove the row.
    assert!(store.delete_backend(&one.id).await.unwrap());
    assert_eq!(
        store.list_spend_limits().await.unwrap(),
        std::slice::from_ref(&key_limits)
    );
    let none = SpendLimitRecord {
        limits: BudgetLimits::default(),
        ..key_limits
    };
    store.put_spend_limits(&none, 2).await.unwrap();
    assert!(store.list_spend_limits().await.unwrap().is_empty());

    // Cost and cache-write tokens on records; spend per window.
    let day_ms = 86_400_000;
    let records: Vec<UsageRecord> = [(0, 100), (day_ms, 20), (day_ms + 5, 3)]
        .into_iter()
        .enumerate()
        .map(|(i, (ts, cost))| UsageRecord {
            request_id: format!("money-{i}"),
            ts_ms: ts,
            client_key_id: Some("key-1".into()),
            cost: Some(Nanodollars::new(cost)),
            cache_write_tokens: Some(9),
            ..usage(i64::try_from(i).unwrap())
        })
        .collect();
    store.prepare_usage(0).await.unwrap();
    store.insert_usage(&records).await.unwrap();
    let page = store
        .list_usage(&UsageFilter {
            client_key_id: Some("key-1".into()),
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    let read: Vec<_> = page
        .records
        .iter()
        .map(|r| (r.cost.map(Nanodollars::get), r.cache_write_tokens))
        .collect();
    assert_eq!(
        read,
        [
            (Some(3), Some(9)),
            (Some(20), Some(9)),
            (Some(100), Some(9))
        ]
    );
    assert_eq!(
        store
            .spend_of(LimiterKind::ClientKey, "key-1", day_ms, 0)
            .await
            .unwrap(),
        RestoredSpend {
            today: Nanodollars::new(23),
            this_month: Nanodollars::new(123),
            total: Nanodollars::new(123),
        }
    );
    assert_eq!(
        store
            .spend_of(LimiterKind::ClientKey, "nobody", 0, 0)
            .await
            .unwrap(),
        RestoredSpend::default()
    );
    // A batch written again adds nothing to the lifetime spend; pruning the records and the
    // rollup leaves it whole.
    store.insert_usage(&records[1..]).await.unwrap();
    store.prune_usage(10 * day_ms).await.unwrap();
    store.prune_rollups(10 * day_ms).await.unwrap();
    let after = store
        .spend_of(LimiterKind::ClientKey, "key-1", 10 * day_ms, 10 * day_ms)
        .await
        .unwrap();
    assert_eq!(
        after,
        RestoredSpend {
            today: Nanodollars::default(),
            this_month: Nanodollars::default(),
            total: Nanodollars::new(123),
        }
    );
}

/// Migration 0010 starts each lifetime spend from what the restore read before it: the larger
/// of the raw records' sum and the rollup's (as SQLite's 0012).
#[tokio::test]
async fn the_migration_starts_lifetime_spend_from_records_and_rollup() {
    let server = PostgresServer::start().await;
    let url = server.create_database("lifetime").await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version < 10)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    for statement in spend_before_lifetime_sql() {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = PgStore::open(&url, &DatabaseSettings::default())
        .await
        .unwrap();
    let totals: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, id, cost_nanousd FROM usage_lifetime_spend ORDER BY kind, id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(totals, lifetime_after_migration());
}
