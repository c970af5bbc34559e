//! The PostgreSQL store, for several instances sharing one database: a connection pool, the
//! migrations of `migrations/postgres/` run at open (sqlx takes a PostgreSQL advisory lock around
//! them, so instances starting at the same moment apply them once), and the same records as
//! SQLite (times in Unix ms, JSON as text). A trigger bumps `config_version` and notifies channel
//! [`CONFIG_CHANNEL`] with every configuration write, in the writing transaction; the control
//! plane's change feed listens to it. This file is the [`ConfigStore`]; [`usage`] is the usage
//! store (day partitions, batched idempotent inserts, statistics in SQL) and [`affinity`] the
//! response-affinity store (each batch of owners announced on [`OWNERS_CHANNEL`]).

mod affinity;
mod money;
mod usage;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use sqlx::Postgres;

use super::rows::{
    alias_from_row, backend_from_row, client_key_from_row, corrupt, limiter_level_from_row,
    pool_from_row, status_of,
};
use super::{ConfigStore, StoreError};
use crate::config::DatabaseSettings;
use crate::domain::{
    now_ms, AliasRecord, BackendId, BackendRecord, ClientKeyRecord, LimiterKind, LimiterLevel,
    PersistedHealth, Pool, PoolName, Source,
};
use crate::pricing::{ModelPrice, SpendLimitRecord};
pub use affinity::{OwnerNotice, OWNERS_CHANNEL};

/// The PostgreSQL schema (`migrations/postgres/`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel the configuration trigger notifies (`config <version>`); the change feed also
/// sends cooldown resets on it (`reset <origin> <backend id>`).
pub const CONFIG_CHANNEL: &str = "poolgate_config";

/// How long opening the store waits for a connection before it says the server is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock (transaction scope) that serialises config-file syncs of instances starting
/// together.
const SYNC_LOCK: i64 = 0x706f_6f6c_6761_7465; // "poolgate"

/// PostgreSQL-backed [`ConfigStore`] and [`super::UsageStore`].
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects (a pool of `settings.max_connections`), runs the migrations and creates the usage
    /// partitions of the next days.
    pub async fn open(url: &str, settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("poolgate");
        let pool = match PgPoolOptions::new()
            .max_connections(settings.max_connections)
            // A request for a connection while the server is down fails instead of queueing.
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => pool,
            // The pool only says it timed out: one direct connection, under the same bound,
            // says why (refused, no such host, …), and the message names where.
            Err(sqlx::Error::PoolTimedOut) => {
                let direct =
                    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options));
                let cause = match direct.await {
                    Ok(Err(error)) => error.to_string(),
                    Ok(Ok(_)) | Err(_) => "no connection within 5 s".to_owned(),
                };
                return Err(unreachable(&options, cause));
            }
            Err(error @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_))) => {
                return Err(unreachable(&options, error.to_string()))
            }
            Err(error) => return Err(error.into()),
        };
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool (the change feed opens its listening connection with the same options).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The server at `options` could not be reached: where (never the password), and why.
fn unreachable(options: &PgConnectOptions, cause: String) -> StoreError {
    StoreError::Unreachable(format!(
        "PostgreSQL at {}:{}: {cause}",
        options.get_host(),
        options.get_port()
    ))
}

/// Maps constraint failures to the errors the API shows.
fn classify_write_error(error: sqlx::Error, backend: &BackendRecord) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        match db.code().as_deref() {
            Some("23505") if db.constraint() == Some("backends_name_key") => {
                return StoreError::Conflict(format!(
                    "a backend named `{}` already exists",
                    backend.name
                ));
            }
            Some("23503") => {
                return StoreError::NotFound(format!("pool `{}` does not exist", backend.pool));
            }
            _ => {}
        }
    }
    StoreError::Database(error)
}

const BACKEND_COLUMNS: &str = "id, name, label, api_base_url, api_key_sealed, api_key_mask, api, \
     timeout_seconds, rpm_limit, weight, pool, enabled, status, model_mappings, source, \
     cooldown_until, consecutive_429_count, last_error, metadata, created_at, updated_at, \
     responses, api_version, tpm_limit, http_version";

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds a backend's definition in the order of `$1`..`$20` of both statements below.
fn bind_definition<'q>(
    query: Query<'q>,
    backend: &'q BackendRecord,
) -> Result<Query<'q>, StoreError> {
    let mappings =
        serde_json::to_string(&backend.model_mappings).map_err(|e| corrupt("model_mappings", e))?;
    let status = status_of(backend.enabled, &backend.health, now_ms());
    Ok(query
        .bind(&backend.name)
        .bind(&backend.label)
        .bind(&backend.api_base_url)
        .bind(&backend.api_key_sealed)
        .bind(&backend.api_key_mask)
        .bind(backend.api.as_str())
        .bind(i64::from(backend.timeout_seconds))
        .bind(i64::from(backend.rpm_limit))
        .bind(i64::from(backend.weight))
        .bind(backend.pool.as_str())
        .bind(backend.enabled)
        .bind(status.as_str())
        .bind(mappings)
        .bind(backend.source.as_str())
        .bind(backend.metadata.to_string())
        .bind(backend.updated_at_ms)
        .bind(backend.responses)
        .bind(backend.api_version.as_deref())
        .bind(i64::from(backend.tpm_limit))
        .bind(backend.http_version.as_str()))
}

async fn insert_backend_in<'c, E>(executor: E, backend: &BackendRecord) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let query = sqlx::query(
        "INSERT INTO backends (name, label, api_base_url, api_key_sealed, api_key_mask, api, \
         timeout_seconds, rpm_limit, weight, pool, enabled, status, model_mappings, source, \
         metadata, updated_at, responses, api_version, tpm_limit, http_version, id, \
         cooldown_until, consecutive_429_count, last_error, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24, $25)",
    );
    bind_definition(query, backend)?
        .bind(backend.id.as_str())
        .bind(backend.health.cooldown_until_ms)
        .bind(i64::from(backend.health.consecutive_429_count))
        .bind(&backend.health.last_error)
        .bind(backend.created_at_ms)
        .execute(executor)
        .await
        .map_err(|error| classify_write_error(error, backend))?;
    Ok(())
}

/// Updates the definition of a backend (not its health, id or `created_at`).
async fn update_definition_in<'c, E>(
    executor: E,
    backend: &BackendRecord,
) -> Result<u64, StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let query = sqlx::query(
        "UPDATE backends SET name = $1, label = $2, api_base_url = $3, api_key_sealed = $4, \
         api_key_mask = $5, api = $6, timeout_seconds = $7, rpm_limit = $8, weight = $9, \
         pool = $10, enabled = $11, status = $12, model_mappings = $13, source = $14, \
         metadata = $15, updated_at = $16, responses = $17, api_version = $18, \
         tpm_limit = $19, http_version = $20 WHERE id = $21",
    );
    let result = bind_definition(query, backend)?
        .bind(backend.id.as_str())
        .execute(executor)
        .await
        .map_err(|error| classify_write_error(error, backend))?;
    Ok(result.rows_affected())
}

async fn upsert_setting<'c, E>(executor: E, key: &str, value: &str) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(executor)
    .await?;
    Ok(())
}

#[async_trait]
impl ConfigStore for PgStore {
    async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        let rows =
            sqlx::query("SELECT name, priority, description FROM pools ORDER BY priority, name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(pool_from_row).collect()
    }

    async fn find_pool(&self, name: &PoolName) -> Result<Option<Pool>, StoreError> {
        let row = sqlx::query("SELECT name, priority, description FROM pools WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool_from_row).transpose()
    }

    async fn create_pool(&self, pool: &Pool) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO pools (name, priority, description, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(pool.name.as_str())
        .bind(pool.priority)
        .bind(&pool.description)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a pool named `{}` already exists",
                pool.name
            )));
        }
        Ok(())
    }

    async fn list_backends(&self) -> Result<Vec<BackendRecord>, StoreError> {
        let sql = format!("SELECT {BACKEND_COLUMNS} FROM backends ORDER BY created_at, name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(backend_from_row).collect()
    }

    async fn get_backend(&self, id: &BackendId) -> Result<Option<BackendRecord>, StoreError> {
        let sql = format!("SELECT {BACKEND_COLUMNS} FROM backends WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(backend_from_row).transpose()
    }

    async fn insert_backend(&self, backend: &BackendRecord) -> Result<(), StoreError> {
        insert_backend_in(&self.pool, backend).await
    }

    async fn update_backend(&self, backend: &BackendRecord) -> Result<(), StoreError> {
        if update_definition_in(&self.pool, backend).await? == 0 {
            return Err(StoreError::NotFound(format!(
                "backend `{}` does not exist",
                backend.id
            )));
        }
        Ok(())
    }

    async fn delete_backend(&self, id: &BackendId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM backends WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn save_health(
        &self,
        id: &BackendId,
        health: &PersistedHealth,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        // Health columns only: the configuration trigger does not fire for these.
        sqlx::query(
            "UPDATE backends SET cooldown_until = $1, consecutive_429_count = $2, \
             last_error = $3, status = CASE WHEN NOT enabled THEN 'disabled' WHEN $4 THEN 'error' \
             WHEN $5 THEN 'cooling' ELSE 'healthy' END WHERE id = $6",
        )
        .bind(health.cooldown_until_ms)
        .bind(i64::from(health.consecutive_429_count))
        .bind(&health.last_error)
        .bind(health.broken)
        .bind(health.cooldown_until_ms.is_some_and(|until| until > now))
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sync_config(
        &self,
        pools: &[Pool],
        backends: &[BackendRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Instances starting together sync one after the other.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SYNC_LOCK)
            .execute(&mut *tx)
            .await?;
        for pool in pools {
            sqlx::query(
                "INSERT INTO pools (name, priority, description, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                 priority = excluded.priority, description = excluded.description",
            )
            .bind(pool.name.as_str())
            .bind(pool.priority)
            .bind(&pool.description)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        let existing: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, name, source FROM backends")
                .fetch_all(&mut *tx)
                .await?;
        // The records were built from what the caller read before this transaction: a name
        // stored under another id means another instance synced meanwhile (the keys are sealed
        // for the ids the caller chose), so the caller reads again.
        for backend in backends {
            if existing
                .iter()
                .any(|(id, name, _)| *name == backend.name && id != backend.id.as_str())
            {
                return Err(StoreError::Stale(format!(
                    "backend `{}` was written by another instance meanwhile",
                    backend.name
                )));
            }
        }
        for (_, name, source) in &existing {
            if source == Source::Config.as_str() && !backends.iter().any(|b| b.name == *name) {
                sqlx::query("DELETE FROM backends WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for backend in backends {
            if existing.iter().any(|(_, name, _)| *name == backend.name) {
                update_definition_in(&mut *tx, backend).await?;
            } else {
                insert_backend_in(&mut *tx, backend).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn replace_sealed_keys(
        &self,
        sealed: &[(BackendId, String)],
        settings: &[(&str, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, value) in sealed {
            sqlx::query("UPDATE backends SET api_key_sealed = $1 WHERE id = $2")
                .bind(value)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for (key, value) in settings {
            upsert_setting(&mut *tx, key, value).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, display_prefix, secret_hash, rpm_limit, max_parallel_requests, \
             allowed_models, created_at, revoked_at, tpm_limit FROM client_keys \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(client_key_from_row).collect()
    }

    async fn insert_client_key(&self, key: &ClientKeyRecord) -> Result<(), StoreError> {
        let models =
            serde_json::to_string(&key.allowed_models).map_err(|e| corrupt("allowed_models", e))?;
        sqlx::query(
            "INSERT INTO client_keys (id, name, display_prefix, secret_hash, rpm_limit, \
             max_parallel_requests, allowed_models, created_at, revoked_at, tpm_limit) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.display_prefix)
        .bind(&key.secret_hash)
        .bind(i64::from(key.rpm_limit))
        .bind(i64::from(key.max_parallel_requests))
        .bind(models)
        .bind(key.created_at_ms)
        .bind(key.revoked_at_ms)
        .bind(i64::from(key.tpm_limit))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_client_key(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE client_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(at_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn update_client_key(&self, key: &ClientKeyRecord) -> Result<bool, StoreError> {
        let models =
            serde_json::to_string(&key.allowed_models).map_err(|e| corrupt("allowed_models", e))?;
        let result = sqlx::query(
            "UPDATE client_keys SET name = $1, rpm_limit = $2, max_parallel_requests = $3, \
             allowed_models = $4, tpm_limit = $5 WHERE id = $6 AND revoked_at IS NULL",
        )
        .bind(&key.name)
        .bind(i64::from(key.rpm_limit))
        .bind(i64::from(key.max_parallel_requests))
        .bind(models)
        .bind(i64::from(key.tpm_limit))
        .bind(&key.id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn save_limiter_levels(&self, levels: &[LimiterLevel]) -> Result<(), StoreError> {
        if levels.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for level in levels {
            // Only for a backend or key that still exists. `FOR SHARE` locks its row until the
            // commit: a delete or revocation under way waits for this transaction (then its
            // trigger removes the level), or commits first (then the row no longer qualifies
            // when re-read) — a checkpoint racing it never brings the level back.
            let owner = match level.kind {
                LimiterKind::Backend => "SELECT 1 FROM backends WHERE id = $2 FOR SHARE",
                LimiterKind::ClientKey => {
                    "SELECT 1 FROM client_keys WHERE id = $2 AND revoked_at IS NULL FOR SHARE"
                }
            };
            sqlx::query(&format!(
                "INSERT INTO limiter_levels (kind, id, rpm, level_units, at_ms) \
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS ({owner}) \
                 ON CONFLICT (kind, id) DO UPDATE SET \
                 rpm = excluded.rpm, level_units = excluded.level_units, at_ms = excluded.at_ms"
            ))
            .bind(level.kind.as_str())
            .bind(&level.id)
            .bind(i64::from(level.rpm))
            .bind(i64::try_from(level.level_units).unwrap_or(i64::MAX))
            .bind(level.at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_limiter_levels(&self) -> Result<Vec<LimiterLevel>, StoreError> {
        let rows = sqlx::query("SELECT kind, id, rpm, level_units, at_ms FROM limiter_levels")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(limiter_level_from_row).collect()
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let value = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(value)
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        upsert_setting(&self.pool, key, value).await
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn config_version(&self) -> Result<Option<i64>, StoreError> {
        let version = sqlx::query_scalar("SELECT version FROM config_version")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(version))
    }

    async fn list_prices(&self) -> Result<Vec<(String, ModelPrice)>, StoreError> {
        money::list_prices(&self.pool).await
    }

    async fn put_price(
        &self,
        model: &str,
        price: &ModelPrice,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        money::put_price(&self.pool, model, price, at_ms).await
    }

    async fn delete_price(&self, model: &str) -> Result<bool, StoreError> {
        money::delete_price(&self.pool, model).await
    }

    async fn list_spend_limits(&self) -> Result<Vec<SpendLimitRecord>, StoreError> {
        money::list_spend_limits(&self.pool).await
    }

    async fn put_spend_limits(
        &self,
        record: &SpendLimitRecord,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        money::put_spend_limits(&self.pool, record, at_ms).await
    }

    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT alias, target, source, created_at, updated_at FROM model_aliases \
             ORDER BY alias",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alias_from_row).collect()
    }

    async fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        upsert_alias(&self.pool, alias).await
    }

    async fn delete_alias(&self, alias: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM model_aliases WHERE alias = $1")
            .bind(alias)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn sync_config_aliases(&self, aliases: &[AliasRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Instances starting together sync one after the other.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SYNC_LOCK)
            .execute(&mut *tx)
            .await?;
        let names: Vec<&str> = aliases.iter().map(|a| a.alias.as_str()).collect();
        sqlx::query("DELETE FROM model_aliases WHERE source = 'config' AND alias <> ALL($1)")
            .bind(&names)
            .execute(&mut *tx)
            .await?;
        for alias in aliases {
            upsert_alias(&mut *tx, alias).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Creates or replaces an alias, keeping the `created_at` of an existing row.
async fn upsert_alias<'c, E>(executor: E, alias: &AliasRecord) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query(
        "INSERT INTO model_aliases (alias, target, source, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (alias) DO UPDATE SET target = excluded.target, \
         source = excluded.source, updated_at = excluded.updated_at",
    )
    .bind(&alias.alias)
    .bind(alias.target.as_str())
    .bind(alias.source.as_str())
    .bind(alias.created_at_ms)
    .bind(alias.updated_at_ms)
    .execute(executor)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
