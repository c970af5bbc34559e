//! The PostgreSQL schema (`migrations/postgres`) against a real PostgreSQL: it applies, several
//! migrators starting at the same moment are safe (sqlx's advisory lock serialises them), a
//! duplicate usage row is ignored, and usage rows land in day partitions that retention drops.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod services;

use std::time::Duration;

use services::PostgresServer;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Connection;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const DAY_MS: i64 = 86_400_000;
/// 2025-03-01T00:00:00Z
const MARCH_1_MS: i64 = 1_740_787_200_000;

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap()
}

/// The key sqlx's PostgreSQL migrator passes to `pg_advisory_lock` (sqlx-postgres
/// `generate_lock_id`): a constant times the CRC-32 of the database name.
fn sqlx_migration_lock_id(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

async fn table_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn insert_usage(pool: &PgPool, request_id: &str, ts: i64) -> u64 {
    sqlx::query(
        "INSERT INTO usage_records (request_id, ts, endpoint, attempts, status, outcome, \
         latency_ms, streamed) VALUES ($1, $2, 'chat', 1, 200, 'success', 12, false) \
         ON CONFLICT (ts, request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(ts)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected()
}

#[tokio::test]
async fn migration_applies_and_usage_rows_are_unique_and_partitioned() {
    let server = PostgresServer::start().await;
    let url = server.create_database("schema").await;
    let db = pool(&url).await;
    MIGRATOR.run(&db).await.unwrap();
    // A second run is a no-op.
    MIGRATOR.run(&db).await.unwrap();

    for table in [
        "pools",
        "backends",
        "client_keys",
        "usage_records",
        "usage_records_default",
        "settings",
        "config_version",
    ] {
        assert!(table_exists(&db, table).await, "table `{table}`");
    }
    let pools: Vec<String> = sqlx::query_scalar("SELECT name FROM pools ORDER BY priority")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(pools, ["primary", "fallback"]);

    // Day partitions: three days from March 1st, idempotent.
    let created: i32 = sqlx::query_scalar("SELECT poolgate_ensure_usage_partitions($1, 3)")
        .bind(MARCH_1_MS + 5_000)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(created, 3);
    let again: i32 = sqlx::query_scalar("SELECT poolgate_ensure_usage_partitions($1, 3)")
        .bind(MARCH_1_MS)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(again, 0, "existing partitions are kept");
    for day in [
        "usage_records_20250301",
        "usage_records_20250302",
        "usage_records_20250303",
    ] {
        assert!(table_exists(&db, day).await, "partition `{day}`");
    }

    // A retried batch: the same (ts, request_id) is inserted once.
    let ts = MARCH_1_MS + DAY_MS + 1_234;
    assert_eq!(insert_usage(&db, "req-1", ts).await, 1);
    assert_eq!(insert_usage(&db, "req-1", ts).await, 0, "duplicate ignored");
    assert_eq!(insert_usage(&db, "req-2", ts).await, 1);
    // Without ON CONFLICT the duplicate is refused by the unique constraint.
    let duplicate = sqlx::query(
        "INSERT INTO usage_records (request_id, ts, endpoint, attempts, status, outcome, \
         latency_ms, streamed) VALUES ('req-1', $1, 'chat', 1, 200, 'success', 12, false)",
    )
    .bind(ts)
    .execute(&db)
    .await
    .unwrap_err();
    // (PostgreSQL names the partition's copy of the constraint in the error.)
    let duplicate = duplicate.as_database_error().unwrap();
    assert_eq!(
        duplicate.code().as_deref(),
        Some("23505"),
        "unique violation"
    );
    assert!(duplicate
        .constraint()
        .is_some_and(|c| c.contains("request_id")));
    let in_day: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records_20250302")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(in_day, 2, "rows land in their day's partition");

    // A day with no partition goes to the default partition; the insert does not fail, and that
    // day is then skipped by the partition maker (its rows would not fit a new partition).
    let late = MARCH_1_MS + 10 * DAY_MS;
    assert_eq!(insert_usage(&db, "req-3", late).await, 1);
    assert_eq!(insert_usage(&db, "req-3", late).await, 0);
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records_default")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(in_default, 1);
    let created: i32 = sqlx::query_scalar("SELECT poolgate_ensure_usage_partitions($1, 1)")
        .bind(late)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(created, 0);

    // Retention: partitions that end at or before the cut are dropped, later ones kept.
    let dropped: i32 = sqlx::query_scalar("SELECT poolgate_drop_usage_partitions($1)")
        .bind(MARCH_1_MS + 2 * DAY_MS)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(dropped, 2);
    assert!(!table_exists(&db, "usage_records_20250302").await);
    assert!(table_exists(&db, "usage_records_20250303").await);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(total, 1, "only the default partition's row is left");
}

#[tokio::test]
async fn migrators_starting_together_apply_the_schema_once() {
    let server = PostgresServer::start().await;
    let url = server.create_database("together").await;
    let pools = futures_util::future::join_all((0..4).map(|_| pool(&url))).await;
    let results = futures_util::future::join_all(pools.iter().map(|db| MIGRATOR.run(db))).await;
    for result in results {
        result.unwrap();
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pools[0])
        .await
        .unwrap();
    let migrations = i64::try_from(MIGRATOR.iter().count()).unwrap();
    assert_eq!(applied, migrations, "each migration applied once");
    let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM pools")
        .fetch_one(&pools[0])
        .await
        .unwrap();
    assert_eq!(seeded, 2, "the seed rows were inserted once");
}

#[tokio::test]
async fn a_migrator_waits_for_the_advisory_lock() {
    let server = PostgresServer::start().await;
    let url = server.create_database("locked").await;

    // Another "instance" holds the migration lock.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let lock_id = sqlx_migration_lock_id("locked");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_id)
        .execute(&mut holder)
        .await
        .unwrap();

    let db = pool(&url).await;
    let migrating = tokio::spawn({
        let db = db.clone();
        async move { MIGRATOR.run(&db).await }
    });

    // The migrator is seen waiting on exactly that advisory lock (pg_locks splits the 64-bit key
    // into classid = high 32 bits, objid = low 32 bits).
    let observer = pool(&url).await;
    let high = lock_id >> 32;
    let low = lock_id & 0xffff_ffff;
    let mut waiting = false;
    for _ in 0..600 {
        waiting = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND classid::bigint = $1 AND objid::bigint = $2)",
        )
        .bind(high)
        .bind(low)
        .fetch_one(&observer)
        .await
        .unwrap();
        if waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "the migrator waits on sqlx's advisory lock");
    assert!(!migrating.is_finished());
    assert!(
        !table_exists(&observer, "backends").await,
        "nothing applied while another instance holds the lock"
    );

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_id)
        .execute(&mut holder)
        .await
        .unwrap();
    migrating.await.unwrap().unwrap();
    assert!(table_exists(&observer, "backends").await);
}
