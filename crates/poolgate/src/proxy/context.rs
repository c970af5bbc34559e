//! The request context: who is asking, when the request arrived, and the one [`Live`] snapshot
//! every phase of this request reads (authentication and routing see the same configuration).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::plan::Inbound;
use crate::state::{Live, LiveClientKey};
use crate::token_count::{estimate_request, EstimateSettings, RequestEstimate, TokenCounter};

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
    /// The request's token estimate, computed on first use ([`RequestContext::token_estimate`]).
    pub estimate: OnceLock<RequestEstimate>,
}

impl RequestContext {
    /// The caller id written to usage records: the client key's id, or `admin`.
    pub fn caller_id(&self) -> String {
        self.client_key
            .as_ref()
            .map_or_else(|| "admin".to_owned(), |key| key.record.id.clone())
    }

    /// What the request is expected to cost in tokens — its prompt counted with the tokenizer of
    /// `upstream_model` (the byte estimate for models without one) and the output it may
    /// produce — computed once per request, only when a limit needs it (a budget; TPM), so a
    /// request with none pays nothing.
    pub fn token_estimate(&self, inbound: &Inbound, upstream_model: &str) -> RequestEstimate {
        *self.estimate.get_or_init(|| {
            estimate_request(
                inbound.endpoint.into(),
                &inbound.raw_bytes(),
                TokenCounter::for_model(upstream_model),
                &EstimateSettings::default(),
            )
        })
    }
}
