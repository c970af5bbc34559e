//! Persistence behind traits by purpose: [`ConfigStore`] (backends, pools, client keys, model
//! aliases, settings and the persisted part of backend health), [`UsageStore`] (usage records,
//! their pages and the statistics, aggregated in SQL) and [`AffinityStore`] (which backend made
//! each Responses API response). [`open`] picks the implementation from the `database_url`:
//! [`sqlite`] (one instance) or [`postgres`] (any number of instances sharing it).
//! Implementations store what they are handed: validation, sealing and ids are the callers'
//! business.

mod counted;
pub mod postgres;
mod rollup;
mod rows;
pub mod sqlite;
#[cfg(test)]
mod test_support;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{DatabaseSettings, DatabaseUrl};
use crate::domain::{
    AliasRecord, BackendId, BackendRecord, ClientKeyRecord, LimiterKind, LimiterLevel,
    PersistedHealth, Pool, PoolName, ResponseOwnerRecord, UsageRecord,
};
use crate::pricing::{ModelPrice, RestoredSpend, SpendLimitRecord};
use crate::usage::stats::{GroupStats, StatsRange};
use crate::usage::{UsageFilter, UsagePage};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
    /// Another instance changed the same rows meanwhile: read again and retry.
    #[error("{0}")]
    Stale(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The database server could not be reached at start-up (where, and why).
    #[error("could not connect to {0}")]
    Unreachable(String),
    /// The usage writer's own SQLite connection (`rusqlite`, see `sqlite::usage`).
    #[error(transparent)]
    UsageWrite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What the control plane edits: every operation that changes several rows runs in one
/// transaction.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    // --- pools ---
    async fn list_pools(&self) -> Result<Vec<Pool>, StoreError>;
    async fn find_pool(&self, name: &PoolName) -> Result<Option<Pool>, StoreError>;
    /// Err(Conflict) if the name exists.
    async fn create_pool(&self, pool: &Pool) -> Result<(), StoreError>;

    // --- backends ---
    async fn list_backends(&self) -> Result<Vec<BackendRecord>, StoreError>;
    async fn get_backend(&self, id: &BackendId) -> Result<Option<BackendRecord>, StoreError>;
    /// Err(Conflict) on a duplicate name, Err(NotFound) on an unknown pool.
    async fn insert_backend(&self, backend: &BackendRecord) -> Result<(), StoreError>;
    /// Replaces the definition (not the health, id or `created_at`); Err(NotFound) if gone.
    async fn update_backend(&self, backend: &BackendRecord) -> Result<(), StoreError>;
    async fn delete_backend(&self, id: &BackendId) -> Result<bool, StoreError>;
    /// The persisted part of a backend's health (written by the single health writer).
    async fn save_health(&self, id: &BackendId, health: &PersistedHealth)
        -> Result<(), StoreError>;
    /// In one transaction: upsert `pools`, upsert `backends` by name (keeping ids, health and
    /// `created_at` of existing rows), and delete `source = config` backends not in the list.
    async fn sync_config(
        &self,
        pools: &[Pool],
        backends: &[BackendRecord],
    ) -> Result<(), StoreError>;
    /// In one transaction: replace every backend's sealed key and set the given settings.
    async fn replace_sealed_keys(
        &self,
        sealed: &[(BackendId, String)],
        settings: &[(&str, String)],
    ) -> Result<(), StoreError>;

    // --- client keys ---
    async fn list_client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError>;
    async fn insert_client_key(&self, key: &ClientKeyRecord) -> Result<(), StoreError>;
    /// Sets `revoked_at`; false if no such (unrevoked) key.
    async fn revoke_client_key(&self, id: &str, at_ms: i64) -> Result<bool, StoreError>;
    /// Writes an unrevoked key's name and limits (`name`, `rpm_limit`, `max_parallel_requests`,
    /// `allowed_models`, `tpm_limit`); false if no such (unrevoked) key.
    async fn update_client_key(&self, key: &ClientKeyRecord) -> Result<bool, StoreError>;

    // --- RPM bucket levels (limits across restarts) ---
    /// Upserts these levels (one transaction); a level of a backend or key that is gone is
    /// deleted with it.
    async fn save_limiter_levels(&self, levels: &[LimiterLevel]) -> Result<(), StoreError>;
    async fn load_limiter_levels(&self) -> Result<Vec<LimiterLevel>, StoreError>;

    // --- settings ---
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Stores the setting unless it exists; true if this call stored it (instances starting at
    /// the same moment agree on one value).
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError>;

    // --- changes made by other instances ---
    /// The version of the stored configuration, bumped by every configuration write, when the
    /// database is shared by several instances; `None` when only this process writes it.
    async fn config_version(&self) -> Result<Option<i64>, StoreError>;

    /// A cheap query that reads the database (the readiness probe).
    async fn ping(&self) -> Result<(), StoreError> {
        self.list_pools().await.map(drop)
    }
    // --- model aliases ---
    /// Every alias, by name.
    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError>;
    /// Creates or replaces an alias (keeping its `created_at`).
    async fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError>;
    /// False if no such alias.
    async fn delete_alias(&self, alias: &str) -> Result<bool, StoreError>;
    /// In one transaction: upsert the config file's aliases (`source = config`) and delete the
    /// `source = config` aliases no longer in it.
    async fn sync_config_aliases(&self, aliases: &[AliasRecord]) -> Result<(), StoreError>;

    // --- prices and spend limits (issue #11) ---
    /// Prices set through the admin API, by model id.
    async fn list_prices(&self) -> Result<Vec<(String, ModelPrice)>, StoreError>;
    /// Sets (or replaces) the admin-API price of `model`.
    async fn put_price(
        &self,
        model: &str,
        price: &ModelPrice,
        at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Removes the admin-API price of `model`; false if it had none.
    async fn delete_price(&self, model: &str) -> Result<bool, StoreError>;
    /// Every stored spend limit (client keys' budgets, backends' monthly caps).
    async fn list_spend_limits(&self) -> Result<Vec<SpendLimitRecord>, StoreError>;
    /// Sets the limits of one key or backend; limits with no window set remove the row.
    async fn put_spend_limits(
        &self,
        record: &SpendLimitRecord,
        at_ms: i64,
    ) -> Result<(), StoreError>;
}

/// Response affinity at rest: which backend made each response id, written behind the request
/// path in batches and read once at start.
#[async_trait]
pub trait AffinityStore: Send + Sync + 'static {
    /// In one transaction: upsert `owners` and delete `removed` response ids.
    async fn save_response_owners(
        &self,
        owners: &[ResponseOwnerRecord],
        removed: &[String],
    ) -> Result<(), StoreError>;
    /// The owners not expired at `now_ms`, newest first, at most `limit`.
    async fn load_response_owners(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<ResponseOwnerRecord>, StoreError>;
    /// Deletes the owners expired at `now_ms`; returns how many.
    async fn purge_response_owners(&self, now_ms: i64) -> Result<u64, StoreError>;
}

/// Where usage records go and how they are read back.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// One batch, in one transaction. A record whose request id is stored already is skipped,
    /// so writing a batch again (a retry, or the journal replaying records a crash left
    /// unacknowledged, some already committed) never counts a request twice.
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError>;
    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError>;
    /// The aggregates of every group (total, per backend, per model, per bucket and per bucket
    /// and backend / model) of the range, computed by the database: one row per non-empty group.
    async fn usage_stats(&self, range: &StatsRange<'_>) -> Result<Vec<GroupStats>, StoreError>;
    async fn count_usage(&self) -> Result<u64, StoreError>;
    /// Gets the storage ready for the records of the next days (PostgreSQL: day partitions).
    async fn prepare_usage(&self, now_ms: i64) -> Result<(), StoreError>;
    /// Deletes the records older than `before_ms` (PostgreSQL: drops whole day partitions);
    /// returns how many partitions (PostgreSQL) or rows (SQLite) went.
    async fn prune_usage(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Deletes the hourly rollup rows of hours starting before `before_ms`, in slices; returns
    /// how many rows went. The raw retention never touches the rollup.
    async fn prune_rollups(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// What one client key (or backend) has spent: since `day_start_ms`, since
    /// `month_start_ms`, and in every stored record (budgets restored at start-up).
    async fn spend_of(
        &self,
        kind: LimiterKind,
        id: &str,
        day_start_ms: i64,
        month_start_ms: i64,
    ) -> Result<RestoredSpend, StoreError>;
}

/// The stores of one database.
#[derive(Clone)]
pub struct Stores {
    pub config: Arc<dyn ConfigStore>,
    pub usage: Arc<dyn UsageStore>,
    pub affinity: Arc<dyn AffinityStore>,
    /// The PostgreSQL store, when that is the database (its change feed listens on it).
    pub postgres: Option<Arc<postgres::PgStore>>,
}

/// Opens (creating and migrating if needed) the database a URL names.
pub async fn open(url: &DatabaseUrl, settings: &DatabaseSettings) -> Result<Stores, StoreError> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let store = Arc::new(sqlite::SqliteStore::open(path).await?);
            Ok(Stores {
                config: store.clone(),
                usage: store.clone(),
                affinity: store,
                postgres: None,
            })
        }
        DatabaseUrl::Postgres(text) => {
            let store = Arc::new(postgres::PgStore::open(text, settings).await?);
            Ok(Stores {
                config: store.clone(),
                usage: store.clone(),
                affinity: store.clone(),
                postgres: Some(store),
            })
        }
    }
}
