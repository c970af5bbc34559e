//! The request context: who is asking, when the request arrived, and the one [`Live`] snapshot
//! every phase of this request reads (authentication and routing see the same configuration);
//! and the request's token estimate, computed at most once and only when something needs it.

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
    /// `[tokens]`: how [`RequestContext::token_estimate`] estimates.
    pub estimate_settings: EstimateSettings,
    /// The estimate, once computed.
    pub estimate: OnceLock<RequestEstimate>,
}

impl RequestContext {
    /// The caller id written to usage records: the client key's id, or `admin`.
    pub fn caller_id(&self) -> String {
        self.client_key
            .as_ref()
            .map_or_else(|| "admin".to_owned(), |key| key.record.id.clone())
    }

    /// The request's token estimate (prompt counted with the tokenizer of `upstream_model` —
    /// tiktoken for OpenAI models, `ceil(bytes / 3)` for others — plus the output reserve:
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, else
    /// `tokens.default_output_tokens`, capped at `tokens.max_output_reserve`). Computed on the
    /// first call (whose `upstream_model` decides the counter: the route's first candidate) and
    /// kept: TPM admission and budget estimates share it. Call it only when a limit needs it —
    /// a request without one never tokenizes.
    pub fn token_estimate(&self, inbound: &Inbound, upstream_model: &str) -> &RequestEstimate {
        self.estimate.get_or_init(|| {
            estimate_request(
                inbound.endpoint.into(),
                inbound.body(),
                TokenCounter::for_model(upstream_model),
                &self.estimate_settings,
            )
        })
    }
}
