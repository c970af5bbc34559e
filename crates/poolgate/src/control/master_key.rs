//! The master key that seals upstream keys: where it comes from (`POOLGATE_MASTER_KEY`, the key
//! file, or a new key file), the check against the fingerprint the database was created with, and
//! the rotation that seals every upstream key again with a new key in one transaction.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::changes::Change;
use super::store::ConfigStore;
use super::{ControlError, ControlPlane};
use crate::config::Config;
use crate::crypto::{MasterKey, Sealer};
use crate::error::InitError;
use crate::files::write_secret_file;

/// The environment variable holding the base64 master key.
pub const MASTER_KEY_ENV: &str = "POOLGATE_MASTER_KEY";
const FINGERPRINT_SETTING: &str = "master_key_fingerprint";
const VERSION_SETTING: &str = "master_key_version";

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    Env,
    File(PathBuf),
}

/// The key file path in use when the key does not come from the environment.
pub fn master_key_path(config: &Config) -> PathBuf {
    config
        .master_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("master.key"))
}

/// Loads the master key: `POOLGATE_MASTER_KEY`, else the key file, else a new key file.
pub fn load_master_key(config: &Config) -> Result<(MasterKey, MasterKeySource), InitError> {
    if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
        let key = MasterKey::from_base64(&text)
            .map_err(|e| InitError::MasterKey(format!("{MASTER_KEY_ENV}: {e}")))?;
        return Ok((key, MasterKeySource::Env));
    }
    let path = master_key_path(config);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = MasterKey::from_base64(&text)
                .map_err(|e| InitError::MasterKey(format!("{}: {e}", path.display())))?;
            Ok((key, MasterKeySource::File(path)))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if config.master_key_file.is_some() {
                return Err(InitError::MasterKey(format!(
                    "key file {} does not exist",
                    path.display()
                )));
            }
            let key = MasterKey::generate();
            write_secret_file(&path, key.to_base64().expose_secret())?;
            tracing::warn!(
                path = %path.display(),
                "generated a new master key file; back it up — without it the stored upstream keys cannot be decrypted. Set {MASTER_KEY_ENV} to keep it elsewhere."
            );
            Ok((key, MasterKeySource::File(path)))
        }
        Err(error) => Err(InitError::io(format!("reading {}", path.display()), error)),
    }
}

/// Checks the key against the fingerprint stored at first start (storing it if absent).
pub(super) async fn open_sealer(
    store: &dyn ConfigStore,
    key: MasterKey,
) -> Result<Sealer, InitError> {
    let fingerprint = key.fingerprint();
    match store.get_setting(FINGERPRINT_SETTING).await.map_err(ControlError::from)? {
        Some(stored) if stored != fingerprint => Err(InitError::MasterKey(format!(
            "the master key (fingerprint {fingerprint}) is not the one this database was created \
             with (fingerprint {stored}); start with the original key in {MASTER_KEY_ENV} or the key file"
        ))),
        Some(_) => {
            let version = store
                .get_setting(VERSION_SETTING)
                .await
                .map_err(ControlError::from)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            Ok(Sealer::new(key, version))
        }
        None => {
            store
                .put_setting_if_absent(VERSION_SETTING, "1")
                .await
                .map_err(ControlError::from)?;
            // Instances starting together on an empty shared database: the first key stored
            // wins, and any other is refused like a wrong key.
            if store
                .put_setting_if_absent(FINGERPRINT_SETTING, &fingerprint)
                .await
                .map_err(ControlError::from)?
            {
                Ok(Sealer::new(key, 1))
            } else {
                Box::pin(open_sealer(store, key)).await
            }
        }
    }
}

/// Where the new master key of a rotation is.
#[derive(Debug)]
pub enum NewKey {
    /// Written to the key file (the old one replaced).
    File(PathBuf),
    /// The key came from the environment: this is the new one, to be set before the next start.
    Env(SecretString),
}

/// What a rotation did, for the operator.
#[derive(Debug)]
pub struct Rotation {
    pub version: u32,
    pub fingerprint: String,
    /// How many upstream keys were sealed again.
    pub resealed: usize,
    pub new_key: NewKey,
}

impl ControlPlane {
    /// Generates a new master key and seals every upstream key with it in one transaction (with
    /// the new fingerprint and version). With a key file, the new key is written beside it before
    /// the database depends on it and moved over it after the commit. The caller holds the data
    /// dir lock: no gateway may keep sealing with the old key.
    pub async fn rotate_master_key(&self) -> Result<Rotation, ControlError> {
        let _write = self.inner.writes.lock().await;
        let old = self.inner.snapshots.sealer();
        let version = old.version() + 1;
        let key = MasterKey::generate();
        let key_text = key.to_base64();
        let fingerprint = key.fingerprint();
        let new = Sealer::new(key, version);
        let backends = self.inner.stores.config.list_backends().await?;
        let mut sealed = Vec::with_capacity(backends.len());
        for backend in &backends {
            let plain = old
                .open(backend.id.as_str(), &backend.api_key_sealed)
                .map_err(|source| ControlError::UnreadableKey {
                    backend: backend.name.clone(),
                    source,
                })?;
            sealed.push((
                backend.id.clone(),
                new.seal(backend.id.as_str(), plain.expose_secret())?,
            ));
        }
        let staged = match &self.inner.key_source {
            MasterKeySource::File(path) => {
                let staged = path.with_extension("key.new");
                write_secret_file(&staged, key_text.expose_secret())
                    .map_err(|e| ControlError::KeyFile(e.to_string()))?;
                Some((staged, path.clone()))
            }
            MasterKeySource::Env => None,
        };
        self.inner
            .stores
            .config
            .replace_sealed_keys(
                &sealed,
                &[
                    (FINGERPRINT_SETTING, fingerprint.clone()),
                    (VERSION_SETTING, version.to_string()),
                ],
            )
            .await?;
        let new_key = match staged {
            Some((staged, path)) => {
                std::fs::rename(&staged, &path).map_err(|e| {
                    ControlError::KeyFile(format!("replacing {}: {e}", path.display()))
                })?;
                NewKey::File(path)
            }
            None => NewKey::Env(key_text),
        };
        self.inner.snapshots.set_sealer(new);
        self.commit(Change::MasterKeyRotated).await;
        tracing::info!(version, "master key rotated");
        Ok(Rotation {
            version,
            fingerprint,
            resealed: sealed.len(),
            new_key,
        })
    }
}
