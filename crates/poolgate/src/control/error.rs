//! What a change can run into: the input breaks a rule (naming the field), a name is taken,
//! something does not exist, or the database or the sealing failed. No HTTP here: the admin API
//! maps each to a status once, the command line prints it.

use crate::crypto::CryptoError;
use crate::domain::{Invalid, PoolName};

use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A value breaks a rule (400, `param` = the field).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The pool a backend names does not exist (400).
    #[error("`{field}`: pool `{pool}` does not exist (create it with POST /admin/api/pools)")]
    UnknownPool { field: String, pool: PoolName },
    /// A name is taken (409).
    #[error("{message}")]
    Conflict {
        message: String,
        param: &'static str,
    },
    /// No such thing (404).
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    /// Sealing an upstream key failed (500).
    #[error("master key: {0}")]
    Crypto(#[from] CryptoError),
    /// A stored upstream key cannot be opened with the master key in use.
    #[error("master key: backend `{backend}`: {source}")]
    UnreadableKey {
        backend: String,
        #[source]
        source: CryptoError,
    },
    /// The database failed (500).
    #[error("database: {0}")]
    Store(StoreError),
    /// The control plane's writers have stopped (shutdown): the change is not persisted (500).
    #[error("the control plane is shutting down")]
    ShuttingDown,
    /// The master key file could not be written (500).
    #[error("master key file: {0}")]
    KeyFile(String),
}

impl From<StoreError> for ControlError {
    fn from(error: StoreError) -> Self {
        match error {
            // Every uniqueness rule in the store is about a name.
            StoreError::Conflict(message) => ControlError::Conflict {
                message,
                param: "name",
            },
            StoreError::NotFound(message) => ControlError::NotFound {
                message,
                code: "not_found",
            },
            other => ControlError::Store(other),
        }
    }
}

impl ControlError {
    pub(crate) fn backend_not_found(id: &str) -> Self {
        ControlError::NotFound {
            message: format!("backend `{id}` does not exist"),
            code: "backend_not_found",
        }
    }
}
