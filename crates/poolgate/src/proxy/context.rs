//! The request context: who is asking, when the request arrived, and the one [`Live`] snapshot
//! every phase of this request reads (authentication and routing see the same configuration).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::state::{Live, LiveClientKey};

/// Who is asking, and request facts known before routing.
pub struct RequestContext {
    pub request_id: String,
    /// None for the admin token used as a client key.
    pub client_key: Option<Arc<LiveClientKey>>,
    pub received: Instant,
    pub received_ms: i64,
    /// Per-request override of `proxy.max_wait` (`x-poolgate-max-wait-ms`).
    pub max_wait: Option<Duration>,
    /// The snapshot loaded once for this request.
    pub live: Arc<Live>,
}

impl RequestContext {
    /// The caller id written to usage records: the client key's id, or `admin`.
    pub fn caller_id(&self) -> String {
        self.client_key
            .as_ref()
            .map_or_else(|| "admin".to_owned(), |key| key.record.id.clone())
    }
}
