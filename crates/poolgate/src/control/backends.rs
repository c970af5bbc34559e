//! Changes to backends, and the one place a [`BackendRecord`] is built: from a validated
//! definition ([`record_from`]: admin create, command line, config sync) or from a stored record
//! and a validated change ([`apply`]: admin edit). The upstream key is sealed here with the
//! backend id as associated data; only a mask of it is kept in the clear.

use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::changes::Change;
use super::{ControlError, ControlPlane, StoreError};
use crate::crypto::{mask_secret, Sealer};
use crate::domain::{
    now_ms, ApiFields, ApiKind, BackendChange, BackendId, BackendInput, BackendPatch,
    BackendRecord, BackendSpec, PersistedHealth, PoolName, Source,
};

/// A record from a validated definition. With `previous` (the same backend, matched by name)
/// the id, health and creation time are kept; otherwise they are new.
pub(super) fn record_from(
    spec: BackendSpec,
    source: Source,
    sealer: &Sealer,
    previous: Option<&BackendRecord>,
) -> Result<BackendRecord, ControlError> {
    let id = previous.map_or_else(BackendId::generate, |b| b.id.clone());
    let now = now_ms();
    let api_key_sealed = sealer.seal(id.as_str(), spec.api_key.expose_secret())?;
    let mut record = BackendRecord {
        api_key_sealed,
        api_key_mask: mask_secret(spec.api_key.expose_secret()),
        id,
        name: spec.name,
        label: spec.label,
        api_base_url: spec.api_base_url,
        api: spec.api,
        timeout_seconds: spec.timeout_seconds,
        rpm_limit: spec.rpm_limit,
        weight: spec.weight,
        pool: spec.pool,
        enabled: spec.enabled,
        model_mappings: spec.model_mappings,
        source,
        metadata: spec.metadata,
        health: previous.map_or_else(PersistedHealth::default, |b| b.health.clone()),
        created_at_ms: previous.map_or(now, |b| b.created_at_ms),
        updated_at_ms: now,
        responses: spec.responses,
        api_version: spec.api_version,
        tpm_limit: spec.tpm_limit,
        http_version: spec.http_version,
    };
    normalize_anthropic_base(&mut record);
    Ok(record)
}

/// poolgate sends Anthropic requests to `{api_base_url}/v1/messages`. A base URL written with its
/// `/v1` (as OpenAI-style and LiteLLM configs write it: `https://api.anthropic.com/v1`) would
/// make every request a 404, so the trailing `/v1` is removed — the stored and shown URL is the
/// corrected one, and the change is logged.
fn normalize_anthropic_base(record: &mut BackendRecord) {
    if record.api != ApiKind::Anthropic {
        return;
    }
    if let Some(base) = record.api_base_url.strip_suffix("/v1") {
        tracing::info!(
            backend = %record.name,
            "`api_base_url` of an Anthropic backend ended in `/v1`; poolgate adds `/v1/messages` itself, so the `/v1` was removed"
        );
        record.api_base_url = base.to_owned();
    }
}

/// A stored record with a validated change applied (a new key sealed for the same id).
pub(super) fn apply(
    mut record: BackendRecord,
    change: BackendChange,
    sealer: &Sealer,
) -> Result<BackendRecord, ControlError> {
    if let Some(key) = change.api_key {
        record.api_key_sealed = sealer.seal(record.id.as_str(), key.expose_secret())?;
        record.api_key_mask = mask_secret(key.expose_secret());
    }
    macro_rules! set {
        ($($field:ident),*) => {$(
            if let Some(value) = change.$field {
                record.$field = value;
            }
        )*};
    }
    set!(
        name,
        label,
        api_base_url,
        api,
        timeout_seconds,
        rpm_limit,
        weight,
        pool,
        enabled,
        tpm_limit,
        http_version
    );
    set!(model_mappings, metadata);
    if let Some(responses) = change.responses {
        record.responses = Some(responses);
    }
    if let Some(version) = change.api_version {
        record.api_version = Some(version);
    }
    // The rules between fields hold for the result (a new `api` against old fields too).
    ApiFields::of(&record).check(&plain)?;
    record.updated_at_ms = now_ms();
    normalize_anthropic_base(&mut record);
    Ok(record)
}

/// A field's name as the admin API and the store know it.
pub(super) fn plain(field: &str) -> String {
    field.to_owned()
}

impl ControlPlane {
    /// Creates a backend (`source = api`).
    pub async fn create_backend(&self, input: BackendInput) -> Result<BackendRecord, ControlError> {
        let _write = self.inner.writes.lock().await;
        let spec = input.validate(&plain)?;
        self.inner
            .config
            .network
            .check_base_url("api_base_url", &spec.api_base_url)?;
        self.check_pool("pool", &spec.pool).await?;
        let record = record_from(spec, Source::Api, &self.inner.snapshots.sealer(), None)?;
        self.inner.stores.config.insert_backend(&record).await?;
        self.commit(Change::BackendCreated(record.id.clone())).await;
        tracing::info!(backend = %record.id, name = %record.name, "backend created");
        Ok(record)
    }

    /// Changes the fields a patch sets.
    pub async fn update_backend(
        &self,
        id: &BackendId,
        patch: BackendPatch,
    ) -> Result<BackendRecord, ControlError> {
        let _write = self.inner.writes.lock().await;
        let record = self.backend(id).await?;
        let change = patch.validate(&plain)?;
        if let Some(url) = &change.api_base_url {
            self.inner
                .config
                .network
                .check_base_url("api_base_url", url)?;
        }
        if let Some(pool) = &change.pool {
            self.check_pool("pool", pool).await?;
        }
        let record = apply(record, change, &self.inner.snapshots.sealer())?;
        self.inner.stores.config.update_backend(&record).await?;
        self.commit(Change::BackendUpdated(record.id.clone())).await;
        tracing::info!(backend = %record.id, "backend changed");
        Ok(record)
    }

    /// Deletes a backend.
    pub async fn delete_backend(&self, id: &BackendId) -> Result<(), ControlError> {
        let _write = self.inner.writes.lock().await;
        if !self.inner.stores.config.delete_backend(id).await? {
            return Err(ControlError::backend_not_found(id.as_str()));
        }
        self.commit(Change::BackendDeleted(id.clone())).await;
        tracing::info!(backend = %id, "backend deleted");
        Ok(())
    }

    /// Ends a backend's cooldown or error state now: in memory first, then persisted through the
    /// single health writer (waiting for it), which writes the runtime's current state — so a
    /// state it still held queued from before cannot undo the reset.
    pub async fn reset_cooldown(&self, id: &BackendId) -> Result<BackendRecord, ControlError> {
        let _write = self.inner.writes.lock().await;
        let mut record = self.backend(id).await?;
        let runtime = self
            .inner
            .snapshots
            .registry()
            .backend(&record, Instant::now());
        runtime.reset_everywhere().await;
        self.inner.health.mark_dirty(id, &runtime);
        if !self.inner.health.flush().await {
            return Err(ControlError::ShuttingDown);
        }
        record.health = PersistedHealth::default();
        self.commit(Change::CooldownReset(id.clone())).await;
        tracing::info!(backend = %id, "cooldown reset by admin");
        Ok(record)
    }

    /// Writes the config file's pools and backends (`source = config`, matched by name so ids,
    /// health and history stay) and deletes config backends no longer in it — in one
    /// transaction, after every backend was checked.
    pub async fn sync_config(&self) -> Result<(), ControlError> {
        let _write = self.inner.writes.lock().await;
        // Instances starting together on a shared database: the one that synced second read
        // the rows before the first one's sync landed; it reads them again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.sync_config_once().await {
                Err(ControlError::Store(StoreError::Stale(reason))) if attempts < 5 => {
                    tracing::debug!(%reason, "config sync raced another instance; syncing again");
                }
                result => return result,
            }
        }
    }

    async fn sync_config_once(&self) -> Result<(), ControlError> {
        let config = &self.inner.config;
        let existing = self.inner.stores.config.list_backends().await?;
        let stored_pools = self.inner.stores.config.list_pools().await?;
        let sealer = self.inner.snapshots.sealer();
        let mut records = Vec::with_capacity(config.backends.len());
        for (i, spec) in config.backends.iter().enumerate() {
            let previous = existing.iter().find(|b| b.name == spec.name);
            if previous.is_some_and(|b| b.source == Source::Api) {
                return Err(ControlError::Conflict {
                    message: format!(
                        "backend `{}` in the config file has the name of a backend created \
                         through the API; rename one of them",
                        spec.name
                    ),
                    param: "name",
                });
            }
            let known = |pools: &[crate::domain::Pool]| pools.iter().any(|p| p.name == spec.pool);
            if !known(&stored_pools) && !known(&config.pools) {
                return Err(ControlError::UnknownPool {
                    field: format!("backends[{i}].pool"),
                    pool: spec.pool.clone(),
                });
            }
            records.push(record_from(
                spec.clone(),
                Source::Config,
                &sealer,
                previous,
            )?);
        }
        let aliases = self.config_aliases().await?;
        self.inner
            .stores
            .config
            .sync_config(&config.pools, &records)
            .await?;
        self.write_config_routing(&aliases).await?;
        self.commit(Change::ConfigSynced).await;
        Ok(())
    }

    /// `UnknownPool` unless the pool exists.
    async fn check_pool(&self, field: &str, pool: &PoolName) -> Result<(), ControlError> {
        if self.inner.stores.config.find_pool(pool).await?.is_none() {
            return Err(ControlError::UnknownPool {
                field: field.to_owned(),
                pool: pool.clone(),
            });
        }
        Ok(())
    }
}
