//! Tests of the SQLite store against a real database file in a temp dir.

use super::*;
use crate::control::store::test_support::usage;
use crate::control::store::UsageStore;
use crate::domain::{ApiKind, CanonicalModel, HttpVersion, UsageRecord};
use sqlx::sqlite::SqlitePoolOptions;

fn backend(name: &str) -> BackendRecord {
    crate::domain::tests_support::backend_record(name)
}

pub(super) async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("poolgate.db"))
        .await
        .unwrap();
    (dir, store)
}

/// Databases created before the migrations moved to `migrations/sqlite/` keep working: the same
/// version and the same SHA-384 checksum sqlx recorded when it applied the file.
#[test]
fn the_first_migration_keeps_its_version_and_checksum() {
    let first = MIGRATOR.iter().next().unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.description, "init");
    let hex: String = first.checksum.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "ea0189a3d74148a3d03947c0748c87e3de23419801872e3ed247fbd6028a3e84\
         94a60ce64cd50f310199d5c08ee65154"
    );
}

/// A database that already holds two records of one request (possible before request ids were
/// unique: schema v1) migrates: the duplicate goes, the first record stays, the unique index is
/// created (by 0002; 0004 does the same for a database that had taken another path there).
#[tokio::test]
async fn the_unique_request_id_migrations_remove_duplicates_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poolgate.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR.iter().filter(|m| m.version < 2).cloned().collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    for latency in [1, 2] {
        sqlx::query(
            "INSERT INTO usage_records (request_id, ts, endpoint, attempts, status, outcome, \
             latency_ms, streamed) VALUES ('req-dup', 0, 'chat.completions', 1, 200, 'success', ?, 0)",
        )
        .bind(latency)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let store = SqliteStore::open(&path).await.unwrap();
    let page = store
        .list_usage(&crate::usage::UsageFilter::default())
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].latency_ms, 1, "the first record is kept");
    let duplicate = UsageRecord {
        request_id: "req-dup".into(),
        ..page.records[0].clone()
    };
    store.insert_usage(&[duplicate]).await.unwrap();
    assert_eq!(store.count_usage().await.unwrap(), 1);
    // One unique index on the request id (0009 drops the second one 0004 had added).
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage_records' \
         AND sql LIKE '%(request_id)%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(indexes, ["usage_request_id"]);
}

#[tokio::test]
async fn opens_in_wal_mode_with_default_pools() {
    let (_dir, store) = open().await;
    assert_eq!(store.journal_mode().await.unwrap(), "wal");
    let pools = store.list_pools().await.unwrap();
    let names: Vec<_> = pools
        .iter()
        .map(|p| (p.name.as_str(), p.priority))
        .collect();
    assert_eq!(names, vec![("primary", 0), ("fallback", 1)]);
}

/// The database file and its WAL files are the owner's only (SQLite alone would create them
/// with the umask's mode, 0644).
#[cfg(unix)]
#[tokio::test]
async fn the_database_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = open().await;
    store.list_pools().await.unwrap();
    for file in ["poolgate.db", "poolgate.db-wal", "poolgate.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
}

#[tokio::test]
async fn backend_crud_round_trips() {
    let (_dir, store) = open().await;
    let mut one = backend("one");
    store.insert_backend(&one).await.unwrap();
    assert_eq!(store.get_backend(&one.id).await.unwrap().unwrap(), one);

    one.label = "changed".into();
    one.enabled = false;
    one.pool = PoolName::new("fallback");
    one.http_version = HttpVersion::Http2;
    store.update_backend(&one).await.unwrap();
    let read = store.get_backend(&one.id).await.unwrap().unwrap();
    assert_eq!(read, one);
    assert_eq!(read.label, "changed");
    assert!(!read.enabled);
    assert_eq!(read.pool.as_str(), "fallback");

    assert_eq!(store.list_backends().await.unwrap().len(), 1);
    assert!(store.delete_backend(&one.id).await.unwrap());
    assert!(!store.delete_backend(&one.id).await.unwrap());
    assert!(store.get_backend(&one.id).await.unwrap().is_none());
}

#[tokio::test]
async fn duplicate_names_and_unknown_pools_are_refused() {
    let (_dir, store) = open().await;
    store.insert_backend(&backend("dup")).await.unwrap();
    let error = store.insert_backend(&backend("dup")).await.unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");

    let mut orphan = backend("orphan");
    orphan.pool = PoolName::new("nope");
    let error = store.insert_backend(&orphan).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
    assert_eq!(store.list_backends().await.unwrap().len(), 1);
}

#[tokio::test]
async fn pools_are_created_once() {
    let (_dir, store) = open().await;
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
    assert_eq!(store.list_pools().await.unwrap().len(), 3);
}

#[tokio::test]
async fn health_is_persisted_and_derives_status() {
    let (_dir, store) = open().await;
    let one = backend("one");
    store.insert_backend(&one).await.unwrap();
    let health = PersistedHealth {
        cooldown_until_ms: Some(now_ms() + 60_000),
        consecutive_429_count: 3,
        broken: false,
        last_error: Some("429 from upstream".into()),
    };
    store.save_health(&one.id, &health).await.unwrap();
    assert_eq!(
        store.get_backend(&one.id).await.unwrap().unwrap().health,
        health
    );
    let status: String = sqlx::query_scalar("SELECT status FROM backends WHERE id = ?")
        .bind(one.id.as_str())
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(status, "cooling");
}

#[tokio::test]
async fn config_sync_upserts_by_name_and_removes_stale_config_backends() {
    let (_dir, store) = open().await;
    let mut from_config = backend("cfg");
    from_config.source = Source::Config;
    let stale = {
        let mut b = backend("stale");
        b.source = Source::Config;
        b
    };
    let from_api = backend("api");
    store.insert_backend(&from_config).await.unwrap();
    store.insert_backend(&stale).await.unwrap();
    store.insert_backend(&from_api).await.unwrap();

    let mut changed = backend("cfg");
    changed.source = Source::Config;
    changed.rpm_limit = 7;
    store.sync_config(&[], &[changed]).await.unwrap();

    let backends = store.list_backends().await.unwrap();
    let mut names: Vec<_> = backends.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, vec!["api", "cfg"]);
    let cfg = backends.iter().find(|b| b.name == "cfg").unwrap();
    assert_eq!(cfg.id, from_config.id, "the id survives a sync");
    assert_eq!(cfg.rpm_limit, 7);
}

#[tokio::test]
async fn client_keys_and_settings_round_trip() {
    let (_dir, store) = open().await;
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
        tpm_limit: 7,
    };
    store.insert_client_key(&key).await.unwrap();
    assert_eq!(store.list_client_keys().await.unwrap(), vec![key.clone()]);
    assert!(store.revoke_client_key("abc", 5).await.unwrap());
    assert!(!store.revoke_client_key("abc", 6).await.unwrap());
    assert_eq!(
        store.list_client_keys().await.unwrap()[0].revoked_at_ms,
        Some(5)
    );

    assert_eq!(store.get_setting("x").await.unwrap(), None);
    store.put_setting("x", "1").await.unwrap();
    store.put_setting("x", "2").await.unwrap();
    assert_eq!(store.get_setting("x").await.unwrap().as_deref(), Some("2"));
}

#[tokio::test]
async fn concurrent_writers_do_not_hit_database_is_locked() {
    let (_dir, store) = open().await;
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for batch in 0..20 {
                let records: Vec<_> = (0..10)
                    .map(|i| usage(writer * 1000 + batch * 10 + i))
                    .collect();
                store.insert_usage(&records).await?;
                store
                    .put_setting(&format!("w{writer}"), &batch.to_string())
                    .await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.count_usage().await.unwrap(), 8 * 20 * 10);
}

#[tokio::test]
async fn limiter_levels_round_trip_and_go_with_their_backend_or_key() {
    use crate::domain::{LimiterKind, LimiterLevel};
    let (_dir, store) = open().await;
    let record = backend("limited");
    store.insert_backend(&record).await.unwrap();
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
        tpm_limit: 7,
    };
    store.insert_client_key(&key).await.unwrap();
    let level = |kind, id: &str, units| LimiterLevel {
        kind,
        id: id.to_owned(),
        rpm: 60,
        level_units: units,
        at_ms: 1_000,
    };
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
    let mut levels = store.load_limiter_levels().await.unwrap();
    levels.sort_by_key(|l| l.level_units);
    assert_eq!(levels.len(), 2, "{levels:?}");
    assert_eq!(
        levels[0],
        level(LimiterKind::Backend, record.id.as_str(), 5)
    );
    assert_eq!(levels[1], level(LimiterKind::ClientKey, "key-1", 9));

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
}

/// A database made by schema v1 (backends with rows, usage) is upgraded by migration 0003: every
/// backend keeps its fields (the table is rebuilt for the new `api` CHECK), `azure` is accepted,
/// usage records gain `cached_tokens`.
#[tokio::test]
async fn migration_0003_upgrades_a_v1_database_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poolgate.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let first_only = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(MIGRATOR.iter().take(1).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    first_only.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO backends (id, name, label, api_base_url, api_key_sealed, api_key_mask, api, \
         timeout_seconds, rpm_limit, weight, pool, enabled, status, model_mappings, source, \
         cooldown_until, consecutive_429_count, last_error, metadata, created_at, updated_at) \
         VALUES ('bkd_old', 'old', 'Old', 'http://h/v1', 'pgenc:v1:x', 'sk-…1234', 'anthropic', \
         30, 60, 2, 'fallback', 1, 'cooling', '{\"m\":{\"upstream_model\":\"u\"}}', 'api', 99, 3, \
         'upstream rate limited (429)', '{\"a\":1}', 5, 6)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let azure = sqlx::query("UPDATE backends SET api = 'azure' WHERE id = 'bkd_old'")
        .execute(&pool)
        .await;
    assert!(azure.is_err(), "v1 refuses `azure`");
    pool.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    let old = store
        .get_backend(&BackendId::new("bkd_old"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.name, "old");
    assert_eq!(old.api, ApiKind::Anthropic);
    assert_eq!(old.pool.as_str(), "fallback");
    assert_eq!(old.weight, 2);
    assert_eq!(old.health.cooldown_until_ms, Some(99));
    assert_eq!(old.health.consecutive_429_count, 3);
    assert_eq!(old.metadata, serde_json::json!({"a": 1}));
    assert_eq!((old.created_at_ms, old.updated_at_ms), (5, 6));
    assert_eq!((old.responses, old.api_version), (None, None));
    // 0011: rows written before speak `auto`.
    assert_eq!(old.http_version, HttpVersion::Auto);

    let mut azure = backend("az");
    azure.api = ApiKind::Azure;
    azure.responses = Some(true);
    azure.api_version = Some("2025-04-01-preview".into());
    store.insert_backend(&azure).await.unwrap();
    assert_eq!(store.get_backend(&azure.id).await.unwrap().unwrap(), azure);
    // The pool's foreign key still holds after the rebuild.
    let mut orphan = backend("orphan");
    orphan.pool = PoolName::new("no-such-pool");
    assert!(matches!(
        store.insert_backend(&orphan).await,
        Err(StoreError::NotFound(_))
    ));
    store.insert_usage(&[usage(1)]).await.unwrap();
    let page = store
        .list_usage(&crate::usage::UsageFilter::default())
        .await
        .unwrap();
    assert_eq!(page.records[0].cached_tokens, Some(1));
}

#[tokio::test]
async fn aliases_round_trip_and_config_sync_replaces_only_config_aliases() {
    let (_dir, store) = open().await;
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
}

#[tokio::test]
async fn response_owners_are_upserted_deleted_loaded_newest_first_and_purged() {
    use crate::control::store::AffinityStore;
    use crate::domain::ResponseOwnerRecord;
    let (_dir, store) = open().await;
    let owner = |id: &str, created: i64, expires: i64| ResponseOwnerRecord {
        response_id: id.to_owned(),
        backend_id: BackendId::new("bkd_a"),
        caller: "key_1".into(),
        created_at_ms: created,
        expires_at_ms: expires,
    };
    let many: Vec<ResponseOwnerRecord> = (0..250)
        .map(|i| owner(&format!("resp_{i}"), i, 1_000 + i))
        .collect();
    store.save_response_owners(&many, &[]).await.unwrap();
    store
        .save_response_owners(&[owner("resp_0", 500, 5_000)], &["resp_1".to_owned()])
        .await
        .unwrap();
    let loaded = store.load_response_owners(1_100, 1_000).await.unwrap();
    // Unexpired at 1100: resp_0 (renewed) and resp_101..=resp_249.
    assert_eq!(loaded.len(), 150);
    assert_eq!(loaded[0].response_id, "resp_249", "newest first");
    let renewed = loaded.iter().find(|o| o.response_id == "resp_0").unwrap();
    assert_eq!(
        (renewed.created_at_ms, renewed.expires_at_ms),
        (0, 5_000),
        "an upsert renews the expiry, not the creation"
    );
    assert!(loaded.iter().all(|o| o.response_id != "resp_1"), "deleted");
    assert_eq!(store.load_response_owners(1_100, 3).await.unwrap().len(), 3);
    assert_eq!(store.purge_response_owners(1_100).await.unwrap(), 99);
    assert_eq!(
        store.load_response_owners(0, 1_000).await.unwrap().len(),
        150
    );
}
