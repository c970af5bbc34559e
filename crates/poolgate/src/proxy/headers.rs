//! The headers poolgate adds to every proxied answer after authentication — success, relayed
//! upstream error or poolgate's own error alike: the client key's own request limit
//! (`x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests`, as OpenAI sends
//! them) and, with `proxy.expose_routing_headers`, which backend answered after how many
//! attempts (`x-poolgate-backend`, `x-poolgate-attempts`). Per-key token limits, once they exist,
//! add their `x-ratelimit-*-tokens` here with `telemetry::headers::insert_token_limit`.

use http::HeaderMap;
use tokio::time::Instant;

use super::context::RequestContext;
use super::record::UsageDraft;
use crate::state::DataPlane;
use crate::telemetry::headers::{insert_request_limit, insert_routing, rpm_bucket_state};

/// The headers for the answer to the request of `ctx`, whose draft is `draft`.
pub fn answer_headers(data: &DataPlane, ctx: &RequestContext, draft: &UsageDraft) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Keys without a limit (and the admin token) get no rate-limit headers.
    if let Some((rpm, tokens)) = ctx
        .client_key
        .as_ref()
        .and_then(|key| key.runtime.rpm_state(Instant::now))
    {
        insert_request_limit(&mut headers, rpm_bucket_state(rpm, tokens));
    }
    if data.config.proxy.expose_routing_headers {
        let backend = draft.last_backend.as_ref();
        insert_routing(
            &mut headers,
            backend.map(|backend| backend.record.name.as_str()),
            draft.record.attempts,
        );
    }
    headers
}
