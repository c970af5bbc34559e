//! The embedded SQLite store: WAL mode, `busy_timeout`, foreign keys on, migrations
//! (`migrations/sqlite/`) embedded in the binary and run at open. Write transactions start with
//! `BEGIN IMMEDIATE` so that concurrent writers queue on the busy timeout instead of failing with
//! "database is locked". This file is the [`ConfigStore`]; [`usage`] is the usage store and
//! [`affinity`] the response-affinity store.

mod affinity;
mod money;
mod usage;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite};

use super::rows::{
    backend_from_row, client_key_from_row, corrupt, limiter_level_from_row, pool_from_row,
    status_of,
};
use super::{ConfigStore, StoreError};
use crate::domain::{
    now_ms, AliasRecord, BackendId, BackendRecord, CanonicalModel, ClientKeyRecord, LimiterKind,
    LimiterLevel, PersistedHealth, Pool, PoolName, Source,
};
use crate::pricing::{ModelPrice, SpendLimitRecord};

/// The SQLite schema (`migrations/sqlite/`); PostgreSQL will have its own beside it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a write waits for another connection's write transaction to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the database file empty (a valid empty database) with mode 0600 when it is missing,
/// before SQLite opens it: SQLite would create it with the umask's mode (0644), and gives its
/// `-wal` and `-shm` files the database file's mode. An existing file is left as it is; a file
/// that cannot be created here is left to SQLite, whose open then says why.
fn create_owner_only(path: &Path) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = options.open(path);
}

/// SQLite-backed [`ConfigStore`] and [`super::UsageStore`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The usage writer's own connection. Its page cache and prepared inserts stay warm from
    /// batch to batch: SQLite drops a connection's page cache whenever another connection
    /// wrote, so batches spread over the shared pool's connections re-read the index pages they
    /// update and keep a statement cache on each. It is a `rusqlite` connection, not sqlx's: a
    /// batch binds ~11,000 values, and sqlx copied each string it was lent, queued the batch to
    /// its connection's worker thread and back (see `usage::UsageWrites`).
    usage_writes: usage::UsageWrites,
}

impl SqliteStore {
    /// Opens (creating if missing, owner-only) the database file and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        create_owner_only(path);
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let usage_writes = usage::UsageWrites::open(options.get_filename())?;
        Ok(Self { pool, usage_writes })
    }

    /// The journal mode in force (`wal`).
    #[cfg(test)]
    pub async fn journal_mode(&self) -> Result<String, StoreError> {
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<String, _>(0)?)
    }
}

/// Maps constraint failures to the errors the API shows.
fn classify_write_error(error: sqlx::Error, backend: &BackendRecord) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        let message = db.message();
        if message.contains("UNIQUE constraint failed: backends.name") {
            return StoreError::Conflict(format!(
                "a backend named `{}` already exists",
                backend.name
            ));
        }
        if message.contains("FOREIGN KEY constraint failed") {
            return StoreError::NotFound(format!("pool `{}` does not exist", backend.pool));
        }
    }
    StoreError::Database(error)
}

const BACKEND_COLUMNS: &str = "id, name, label, api_base_url, api_key_sealed, api_key_mask, api, \
     timeout_seconds, rpm_limit, weight, pool, enabled, status, model_mappings, source, \
     cooldown_until, consecutive_429_count, last_error, metadata, created_at, updated_at, \
     responses, api_version, tpm_limit, http_version";

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Binds a backend's definition — what an admin edit or a config sync writes — in the order of
/// the first 20 columns of both statements below (`name` … `http_version`).
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
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let query = sqlx::query(
        "INSERT INTO backends (name, label, api_base_url, api_key_sealed, api_key_mask, api, \
         timeout_seconds, rpm_limit, weight, pool, enabled, status, model_mappings, source, \
         metadata, updated_at, responses, api_version, tpm_limit, http_version, id, \
         cooldown_until, consecutive_429_count, last_error, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let query = sqlx::query(
        "UPDATE backends SET name = ?, label = ?, api_base_url = ?, api_key_sealed = ?, \
         api_key_mask = ?, api = ?, timeout_seconds = ?, rpm_limit = ?, weight = ?, pool = ?, \
         enabled = ?, status = ?, model_mappings = ?, source = ?, metadata = ?, updated_at = ?, \
         responses = ?, api_version = ?, tpm_limit = ?, http_version = ? WHERE id = ?",
    );
    let result = bind_definition(query, backend)?
        .bind(backend.id.as_str())
        .execute(executor)
        .await
        .map_err(|error| classify_write_error(error, backend))?;
    Ok(result.rows_affected())
}

#[async_trait]
impl ConfigStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT count(*) FROM pools")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        let rows =
            sqlx::query("SELECT name, priority, description FROM pools ORDER BY priority, name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(pool_from_row).collect()
    }

    async fn find_pool(&self, name: &PoolName) -> Result<Option<Pool>, StoreError> {
        let row = sqlx::query("SELECT name, priority, description FROM pools WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool_from_row).transpose()
    }

    async fn create_pool(&self, pool: &Pool) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO pools (name, priority, description, created_at) VALUES (?, ?, ?, ?) \
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
        let sql = format!("SELECT {BACKEND_COLUMNS} FROM backends WHERE id = ?");
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
        let result = sqlx::query("DELETE FROM backends WHERE id = ?")
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
        // The status column is derived here from `enabled` (kept) and the new health.
        sqlx::query(
            "UPDATE backends SET cooldown_until = ?, consecutive_429_count = ?, last_error = ?, \
             status = CASE WHEN enabled = 0 THEN 'disabled' WHEN ? THEN 'error' \
                           WHEN ? THEN 'cooling' ELSE 'healthy' END \
             WHERE id = ?",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for pool in pools {
            sqlx::query(
                "INSERT INTO pools (name, priority, description, created_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET priority = excluded.priority, \
                 description = excluded.description",
            )
            .bind(pool.name.as_str())
            .bind(pool.priority)
            .bind(&pool.description)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        let existing = sqlx::query("SELECT id, name, source FROM backends")
            .fetch_all(&mut *tx)
            .await?;
        for row in &existing {
            let name: String = row.try_get("name")?;
            let source: String = row.try_get("source")?;
            if source == Source::Config.as_str() && !names.contains(&name.as_str()) {
                sqlx::query("DELETE FROM backends WHERE name = ?")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for backend in backends {
            let existing_id = existing.iter().find_map(|row| {
                let name: String = row.try_get("name").ok()?;
                (name == backend.name)
                    .then(|| row.try_get::<String, _>("id").ok())
                    .flatten()
            });
            match existing_id {
                Some(id) => {
                    let mut updated = backend.clone();
                    updated.id = BackendId::new(id);
                    update_definition_in(&mut *tx, &updated).await?;
                }
                None => insert_backend_in(&mut *tx, backend).await?,
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (id, value) in sealed {
            sqlx::query("UPDATE backends SET api_key_sealed = ? WHERE id = ?")
                .bind(value)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for (key, value) in settings {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES (?, ?) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "UPDATE client_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
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
            "UPDATE client_keys SET name = ?, rpm_limit = ?, max_parallel_requests = ?, \
             allowed_models = ?, tpm_limit = ? WHERE id = ? AND revoked_at IS NULL",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for level in levels {
            // Only for a backend or key that still exists: a checkpoint racing a delete or a
            // revocation (whose triggers removed the level) must not bring the level back.
            let owner = match level.kind {
                LimiterKind::Backend => "SELECT 1 FROM backends WHERE id = ?2",
                LimiterKind::ClientKey => {
                    "SELECT 1 FROM client_keys WHERE id = ?2 AND revoked_at IS NULL"
                }
            };
            sqlx::query(&format!(
                "INSERT INTO limiter_levels (kind, id, rpm, level_units, at_ms) \
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS ({owner}) \
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
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("value")).transpose()?)
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn config_version(&self) -> Result<Option<i64>, StoreError> {
        // One process owns an SQLite database (the data-dir lock): nobody else changes it.
        Ok(None)
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
        rows.iter()
            .map(|row| {
                let source: String = row.try_get("source")?;
                Ok(AliasRecord {
                    alias: row.try_get("alias")?,
                    target: CanonicalModel::new(row.try_get::<String, _>("target")?),
                    source: Source::parse(&source).ok_or_else(|| corrupt("source", &source))?,
                    created_at_ms: row.try_get("created_at")?,
                    updated_at_ms: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        upsert_alias(&self.pool, alias).await
    }

    async fn delete_alias(&self, alias: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM model_aliases WHERE alias = ?")
            .bind(alias)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn sync_config_aliases(&self, aliases: &[AliasRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let stored = sqlx::query("SELECT alias FROM model_aliases WHERE source = 'config'")
            .fetch_all(&mut *tx)
            .await?;
        for row in &stored {
            let name: String = row.try_get("alias")?;
            if !aliases.iter().any(|a| a.alias == name) {
                sqlx::query("DELETE FROM model_aliases WHERE alias = ?")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
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
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    sqlx::query(
        "INSERT INTO model_aliases (alias, target, source, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (alias) DO UPDATE SET target = excluded.target, \
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
