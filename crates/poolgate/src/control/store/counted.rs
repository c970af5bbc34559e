//! Every store call, counted when it fails: [`Counted`] wraps the [`ConfigStore`],
//! [`UsageStore`] and [`AffinityStore`] the control plane uses and adds one to `poolgate_store_errors_total{operation}`
//! (the method's name) for each failure of the database itself. A refused write (`Conflict`,
//! `NotFound`) is the caller's business, not a store error.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AffinityStore, ConfigStore, StoreError, Stores, UsageStore};
use crate::domain::{
    AliasRecord, BackendId, BackendRecord, ClientKeyRecord, LimiterKind, LimiterLevel,
    PersistedHealth, Pool, PoolName, ResponseOwnerRecord, UsageRecord,
};
use crate::pricing::{ModelPrice, RestoredSpend, SpendLimitRecord};
use crate::telemetry::metrics::StoreErrors;
use crate::usage::stats::{GroupStats, StatsRange};
use crate::usage::{UsageFilter, UsagePage};

/// A store whose failures are counted.
pub struct Counted<S: ?Sized> {
    inner: Arc<S>,
    errors: StoreErrors,
}

impl Stores {
    /// The same stores, each failure counted in `errors`.
    pub fn counted(self, errors: &StoreErrors) -> Stores {
        Stores {
            config: Arc::new(Counted {
                inner: self.config,
                errors: errors.clone(),
            }),
            usage: Arc::new(Counted {
                inner: self.usage,
                errors: errors.clone(),
            }),
            affinity: Arc::new(Counted {
                inner: self.affinity,
                errors: errors.clone(),
            }),
            postgres: self.postgres,
        }
    }
}

impl<S: ?Sized> Counted<S> {
    fn count<T>(
        &self,
        operation: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(
            StoreError::Database(_)
            | StoreError::UsageWrite(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_)
            | StoreError::Unsupported(_),
        ) = &result
        {
            self.errors.error(operation);
        }
        result
    }
}

/// `impl Trait for Counted<dyn Trait>`: each `async fn name(&self, args…) -> T` delegates to the
/// inner store and counts a failure as `name`.
macro_rules! counted {
    ($store:ident { $(async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $out:ty;)* }) => {
        #[async_trait]
        impl $store for Counted<dyn $store> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$out, StoreError> {
                    self.count(stringify!($name), self.inner.$name($($arg),*).await)
                }
            )*
        }
    };
}

counted!(ConfigStore {
    async fn list_pools(&self) -> Vec<Pool>;
    async fn find_pool(&self, name: &PoolName) -> Option<Pool>;
    async fn create_pool(&self, pool: &Pool) -> ();
    async fn list_backends(&self) -> Vec<BackendRecord>;
    async fn get_backend(&self, id: &BackendId) -> Option<BackendRecord>;
    async fn insert_backend(&self, backend: &BackendRecord) -> ();
    async fn update_backend(&self, backend: &BackendRecord) -> ();
    async fn delete_backend(&self, id: &BackendId) -> bool;
    async fn save_health(&self, id: &BackendId, health: &PersistedHealth) -> ();
    async fn sync_config(&self, pools: &[Pool], backends: &[BackendRecord]) -> ();
    async fn replace_sealed_keys(
        &self,
        sealed: &[(BackendId, String)],
        settings: &[(&str, String)]
    ) -> ();
    async fn list_client_keys(&self) -> Vec<ClientKeyRecord>;
    async fn insert_client_key(&self, key: &ClientKeyRecord) -> ();
    async fn revoke_client_key(&self, id: &str, at_ms: i64) -> bool;
    async fn update_client_key(&self, key: &ClientKeyRecord) -> bool;
    async fn save_limiter_levels(&self, levels: &[LimiterLevel]) -> ();
    async fn load_limiter_levels(&self) -> Vec<LimiterLevel>;
    async fn get_setting(&self, key: &str) -> Option<String>;
    async fn put_setting(&self, key: &str, value: &str) -> ();
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> bool;
    async fn config_version(&self) -> Option<i64>;
    async fn ping(&self) -> ();
    async fn list_aliases(&self) -> Vec<AliasRecord>;
    async fn put_alias(&self, alias: &AliasRecord) -> ();
    async fn delete_alias(&self, alias: &str) -> bool;
    async fn sync_config_aliases(&self, aliases: &[AliasRecord]) -> ();
    async fn list_prices(&self) -> Vec<(String, ModelPrice)>;
    async fn put_price(&self, model: &str, price: &ModelPrice, at_ms: i64) -> ();
    async fn delete_price(&self, model: &str) -> bool;
    async fn list_spend_limits(&self) -> Vec<SpendLimitRecord>;
    async fn put_spend_limits(&self, record: &SpendLimitRecord, at_ms: i64) -> ();
});

counted!(AffinityStore {
    async fn save_response_owners(
        &self,
        owners: &[ResponseOwnerRecord],
        removed: &[String]
    ) -> ();
    async fn load_response_owners(&self, now_ms: i64, limit: u32) -> Vec<ResponseOwnerRecord>;
    async fn purge_response_owners(&self, now_ms: i64) -> u64;
});

counted!(UsageStore {
    async fn insert_usage(&self, records: &[UsageRecord]) -> ();
    async fn list_usage(&self, filter: &UsageFilter) -> UsagePage;
    async fn usage_stats(&self, range: &StatsRange<'_>) -> Vec<GroupStats>;
    async fn count_usage(&self) -> u64;
    async fn prepare_usage(&self, now_ms: i64) -> ();
    async fn prune_usage(&self, before_ms: i64) -> u64;
    async fn prune_rollups(&self, before_ms: i64) -> u64;
    async fn spend_of(
        &self,
        kind: LimiterKind,
        id: &str,
        day_start_ms: i64,
        month_start_ms: i64
    ) -> RestoredSpend;
});
