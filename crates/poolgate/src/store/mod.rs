//! Persistence behind one trait, [`Store`]: backends, pools, client keys, usage records and
//! settings. [`sqlite`] is the embedded default; another driver implements the same trait.
//! Nothing on the request hot path calls the store except the batched usage and health writers.

pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::{
    BackendId, BackendRecord, ClientKeyRecord, PersistedHealth, Pool, PoolName, UsageRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which usage records to list.
#[derive(Clone, Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct UsageFilter {
    /// Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to_ms: Option<i64>,
    pub backend_id: Option<String>,
    pub model: Option<String>,
    /// A client key id (`admin` for requests made with the admin token).
    pub client_key_id: Option<String>,
    /// Only records with this outcome (`success`, `error`, `stream_error`, `cancelled`).
    pub outcome: Option<String>,
    /// Only records whose HTTP status is at least this (e.g. 400 for "errors only").
    pub status_min: Option<u16>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<u32>,
    /// Return records older than this cursor (`next_cursor` of the previous page).
    pub before: Option<i64>,
}

/// A page of usage records, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsagePage {
    pub records: Vec<UsageRecord>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<i64>,
}

/// Which usage records the statistics read.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleQuery<'a> {
    pub from_ms: i64,
    pub to_ms: i64,
    pub backend_id: Option<&'a str>,
    pub model: Option<&'a str>,
    pub client_key_id: Option<&'a str>,
}

/// The subset of a usage record the statistics need.
#[derive(Clone, Debug)]
pub struct UsageSample {
    pub ts_ms: i64,
    pub backend_id: Option<String>,
    pub canonical_model: Option<String>,
    pub status: u16,
    pub outcome: crate::domain::Outcome,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
}

/// Every persistence operation poolgate needs. Implementations store what they are handed.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- pools ---
    async fn list_pools(&self) -> Result<Vec<Pool>, StoreError>;
    /// Err(Conflict) if the name exists.
    async fn create_pool(&self, pool: &Pool) -> Result<(), StoreError>;

    // --- backends ---
    async fn list_backends(&self) -> Result<Vec<BackendRecord>, StoreError>;
    async fn get_backend(&self, id: &BackendId) -> Result<Option<BackendRecord>, StoreError>;
    /// Err(Conflict) on a duplicate name, Err(NotFound) on an unknown pool.
    async fn insert_backend(&self, backend: &BackendRecord) -> Result<(), StoreError>;
    /// Replaces every field but the id and `created_at`; Err(NotFound) if gone.
    async fn update_backend(&self, backend: &BackendRecord) -> Result<(), StoreError>;
    async fn delete_backend(&self, id: &BackendId) -> Result<bool, StoreError>;
    /// Write-behind of cooldown / error state.
    async fn save_health(&self, id: &BackendId, health: &PersistedHealth)
        -> Result<(), StoreError>;
    /// In one transaction: create missing `pools`, upsert `backends` by name (keeping ids, health
    /// and `created_at` of existing rows), and delete `source = config` backends not in the list.
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

    // --- usage ---
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError>;
    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError>;
    async fn usage_samples(&self, query: &SampleQuery<'_>) -> Result<Vec<UsageSample>, StoreError>;
    async fn count_usage(&self) -> Result<u64, StoreError>;

    // --- settings ---
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// A pool by name, if it exists.
    async fn find_pool(&self, name: &PoolName) -> Result<Option<Pool>, StoreError> {
        Ok(self
            .list_pools()
            .await?
            .into_iter()
            .find(|pool| &pool.name == name))
    }
}
