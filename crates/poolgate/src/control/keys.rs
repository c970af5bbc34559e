//! Changes to pools and client keys. A client key's plaintext exists once, in the answer to its
//! creation; only a SHA-256 of its secret is stored.

use secrecy::SecretString;

use super::changes::Change;
use super::{ControlError, ControlPlane};
use crate::crypto::generate_client_key;
use crate::domain::{
    now_ms, validate_concurrency, validate_key_name, validate_model_name, validate_name,
    validate_priority, validate_rpm, validate_tpm, CanonicalModel, ClientKeyRecord, Pool, PoolName,
};

/// A new pool before validation.
#[derive(Clone, Debug)]
pub struct PoolInput {
    pub name: String,
    /// Lower is tried first.
    pub priority: i64,
    pub description: String,
}

/// A new client key before validation.
#[derive(Clone, Debug, Default)]
pub struct ClientKeyInput {
    pub name: String,
    /// 0 or absent = unlimited.
    pub rpm_limit: Option<i64>,
    /// Requests in flight at once; 0 or absent = unlimited.
    pub max_parallel_requests: Option<i64>,
    /// Absent or empty = every model.
    pub allowed_models: Vec<String>,
    /// Tokens per minute; 0 or absent = unlimited.
    pub tpm_limit: Option<i64>,
}

/// A change to a client key before validation: absent fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct ClientKeyPatch {
    pub name: Option<String>,
    pub rpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    /// Empty = every model.
    pub allowed_models: Option<Vec<String>>,
    pub tpm_limit: Option<i64>,
}

fn allowed_models(models: Vec<String>) -> Result<Vec<CanonicalModel>, ControlError> {
    let mut allowed = Vec::with_capacity(models.len());
    for (i, model) in models.into_iter().enumerate() {
        validate_model_name(&format!("allowed_models[{i}]"), &model)?;
        allowed.push(CanonicalModel::new(model));
    }
    Ok(allowed)
}

impl ControlPlane {
    /// Creates a pool.
    pub async fn create_pool(&self, input: PoolInput) -> Result<Pool, ControlError> {
        let _write = self.inner.writes.lock().await;
        validate_name("name", &input.name)?;
        let pool = Pool {
            name: PoolName::new(input.name),
            priority: validate_priority("priority", input.priority)?,
            description: input.description,
        };
        self.inner.stores.config.create_pool(&pool).await?;
        self.commit(Change::PoolCreated(pool.name.clone())).await;
        tracing::info!(pool = %pool.name, "pool created");
        Ok(pool)
    }

    /// Creates a client key; returns it with its plaintext (shown once).
    pub async fn create_client_key(
        &self,
        input: ClientKeyInput,
    ) -> Result<(ClientKeyRecord, SecretString), ControlError> {
        let _write = self.inner.writes.lock().await;
        let name = validate_key_name("name", &input.name)?;
        let rpm_limit = validate_rpm("rpm_limit", input.rpm_limit.unwrap_or(0))?;
        let max_parallel_requests = validate_concurrency(
            "max_parallel_requests",
            input.max_parallel_requests.unwrap_or(0),
        )?;
        let allowed_models = allowed_models(input.allowed_models)?;
        let tpm_limit = validate_tpm("tpm_limit", input.tpm_limit.unwrap_or(0))?;
        let generated = generate_client_key();
        let record = ClientKeyRecord {
            id: generated.id,
            name,
            display_prefix: generated.display_prefix,
            secret_hash: generated.secret_hash.to_vec(),
            rpm_limit,
            max_parallel_requests,
            allowed_models,
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            tpm_limit,
        };
        self.inner.stores.config.insert_client_key(&record).await?;
        self.commit(Change::ClientKeyCreated(record.id.clone()))
            .await;
        tracing::info!(key = %record.id, "client key created");
        Ok((record, generated.plaintext))
    }

    /// Changes an active client key's name or limits; the new limits apply to the next request
    /// (its buckets keep their fill).
    pub async fn update_client_key(
        &self,
        id: &str,
        patch: ClientKeyPatch,
    ) -> Result<ClientKeyRecord, ControlError> {
        let _write = self.inner.writes.lock().await;
        let not_found = || ControlError::NotFound {
            message: format!("no active key `{id}`"),
            code: "key_not_found",
        };
        let mut record = self
            .inner
            .stores
            .config
            .list_client_keys()
            .await?
            .into_iter()
            .find(|key| key.id == id && key.revoked_at_ms.is_none())
            .ok_or_else(not_found)?;
        if let Some(name) = patch.name {
            record.name = validate_key_name("name", &name)?;
        }
        if let Some(rpm) = patch.rpm_limit {
            record.rpm_limit = validate_rpm("rpm_limit", rpm)?;
        }
        if let Some(parallel) = patch.max_parallel_requests {
            record.max_parallel_requests = validate_concurrency("max_parallel_requests", parallel)?;
        }
        if let Some(models) = patch.allowed_models {
            record.allowed_models = allowed_models(models)?;
        }
        if let Some(tpm) = patch.tpm_limit {
            record.tpm_limit = validate_tpm("tpm_limit", tpm)?;
        }
        if !self.inner.stores.config.update_client_key(&record).await? {
            return Err(not_found());
        }
        self.commit(Change::ClientKeyUpdated(record.id.clone()))
            .await;
        tracing::info!(key = %record.id, "client key updated");
        Ok(record)
    }

    /// Revokes a client key: it stops working at once.
    pub async fn revoke_client_key(&self, id: &str) -> Result<(), ControlError> {
        let _write = self.inner.writes.lock().await;
        if !self
            .inner
            .stores
            .config
            .revoke_client_key(id, now_ms())
            .await?
        {
            return Err(ControlError::NotFound {
                message: format!("no active key `{id}`"),
                code: "key_not_found",
            });
        }
        self.commit(Change::ClientKeyRevoked(id.to_owned())).await;
        tracing::info!(key = %id, "client key revoked");
        Ok(())
    }
}
