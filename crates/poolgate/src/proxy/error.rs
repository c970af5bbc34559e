//! What can go wrong answering a proxied request, before any byte reached the client. No HTTP
//! framework here: the API layer turns a [`ProxyError`] into a response once, in the client's
//! format. Upstream failures carry a `detail` for the log that the client never sees.

use std::time::Duration;

use http::StatusCode;

use crate::domain::InvalidRequest;
use crate::providers::ProviderError;
use crate::translate::TranslateError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 400: the request itself is wrong (or cannot be expressed for the chosen backend).
    #[error(transparent)]
    InvalidRequest(#[from] InvalidRequest),
    /// 404: no enabled backend serves the model.
    #[error("the model `{model}` does not exist or no enabled backend serves it")]
    ModelNotFound { model: String },
    /// 403: the client key may not use the model.
    #[error("this key may not use the model `{model}`")]
    ModelNotAllowed { model: String },
    /// 429: the client key's own RPM bucket is empty.
    #[error("this key is limited to {rpm} requests per minute")]
    KeyRateLimited { rpm: u32, retry_after: Duration },
    /// 429: the client key's own TPM bucket does not hold this request's estimate yet.
    #[error("this key is limited to {tpm} tokens per minute")]
    KeyTpmLimited { tpm: u64, retry_after: Duration },
    /// 429, never to retry: the request's estimate is larger than the key's whole TPM limit.
    #[error(
        "this request needs about {requested} tokens, more than this key's tpm_limit of {tpm}"
    )]
    KeyTpmTooLarge { requested: u64, tpm: u64 },
    /// 429, never to retry: the request's estimate is larger than the whole `tpm_limit` of every
    /// backend that could serve it (`largest`: the highest of those limits).
    #[error(
        "this request needs about {requested} tokens, more than the tpm_limit of every backend for this model (the largest: {largest})"
    )]
    BackendTpmTooLarge { requested: u64, largest: u64 },
    /// 429: every backend of the route is rate limited or cooling down.
    #[error("every backend for this model is rate limited or cooling down")]
    NoneReady { retry_after: Option<Duration> },
    /// 503: the shared rate limits cannot be checked right now and are set to fail closed.
    #[error("rate limits cannot be checked right now; try again shortly")]
    LimiterUnavailable,
    /// 503: every backend of the route is cooling down after upstream errors (none is rate
    /// limited): the upstreams are failing, not busy.
    #[error("every backend for this model is cooling down after upstream errors; retry shortly")]
    Recovering { retry_after: Option<Duration> },
    /// 502: the upstream's answer was larger than `proxy.max_response_bytes`.
    #[error("the upstream's answer is larger than the limit of {limit} bytes (`proxy.max_response_bytes`)")]
    UpstreamTooLarge { limit: usize },
    /// 502: the upstream answered with a redirect, which poolgate never follows.
    #[error("the upstream answered with a redirect ({status}), which poolgate does not follow; check the backend's `api_base_url`")]
    UpstreamRedirect { status: u16 },
    /// 502: the egress policy refused the address of every backend tried.
    #[error("the egress policy (`[network]`) refused the upstream address; the backend's `last_error` says why")]
    EgressRefused { detail: String },
    /// 503: every backend of the route is disabled or has a refused key.
    #[error("no backend for this model is available: all are disabled or their keys were refused")]
    Unavailable,
    /// 502: the upstreams failed.
    #[error("no upstream could answer: {detail}")]
    UpstreamFailed { detail: String },
    /// 504: the upstream did not answer in time.
    #[error("the upstream did not answer in time: {detail}")]
    UpstreamTimeout { detail: String },
    /// 500: poolgate's own fault.
    #[error("internal error: {detail}")]
    Internal { detail: String },
    /// 404: a call on a response poolgate does not know (or that belongs to another caller).
    #[error("Response with id '{id}' not found.")]
    ResponseNotFound { id: String },
    /// 400: `previous_response_id` names a response whose backend no longer exists.
    #[error("Previous response with id '{id}' not found.")]
    PreviousResponseNotFound { id: String },
    /// 503: the backend that made the response is disabled or its key was refused; no other
    /// key can answer for it.
    #[error("the backend that made response `{id}` is unavailable (disabled, or its key was refused); no other backend holds it")]
    OwnerUnavailable { id: String },
    /// 501: nothing poolgate can forward the request to.
    #[error("{message}")]
    NotImplemented { message: String },
    /// 429 that waiting a little never helps: the client key's budget is spent (the message
    /// says which budget and when it resets). Answered with `x-should-retry: false`.
    #[error("{message}")]
    BudgetExceeded { message: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            ProxyError::KeyRateLimited { .. }
            | ProxyError::KeyTpmLimited { .. }
            | ProxyError::KeyTpmTooLarge { .. }
            | ProxyError::BackendTpmTooLarge { .. }
            | ProxyError::NoneReady { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Unavailable
            | ProxyError::LimiterUnavailable
            | ProxyError::Recovering { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamFailed { .. }
            | ProxyError::UpstreamTooLarge { .. }
            | ProxyError::UpstreamRedirect { .. }
            | ProxyError::EgressRefused { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::ResponseNotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::PreviousResponseNotFound { .. } => StatusCode::BAD_REQUEST,
            ProxyError::OwnerUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BudgetExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Short machine-readable kind: the error `type` clients see, the usage record's
    /// `error_kind`, and a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::InvalidRequest(_) => "invalid_request_error",
            ProxyError::ModelNotFound { .. } => "not_found_error",
            ProxyError::ModelNotAllowed { .. } => "permission_error",
            ProxyError::KeyRateLimited { .. }
            | ProxyError::KeyTpmLimited { .. }
            | ProxyError::KeyTpmTooLarge { .. }
            | ProxyError::BackendTpmTooLarge { .. }
            | ProxyError::NoneReady { .. } => "rate_limit_error",
            ProxyError::Unavailable
            | ProxyError::Recovering { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::UpstreamTooLarge { .. }
            | ProxyError::UpstreamRedirect { .. }
            | ProxyError::EgressRefused { .. } => "upstream_error",
            ProxyError::LimiterUnavailable => "service_unavailable",
            ProxyError::UpstreamTimeout { .. } => "timeout_error",
            ProxyError::Internal { .. } => "server_error",
            ProxyError::ResponseNotFound { .. } => "not_found_error",
            ProxyError::PreviousResponseNotFound { .. } => "invalid_request_error",
            ProxyError::OwnerUnavailable { .. } => "upstream_error",
            ProxyError::NotImplemented { .. } => "not_implemented_error",
            ProxyError::BudgetExceeded { .. } => "insufficient_quota",
        }
    }

    /// Whether the same request may succeed later (rate limits and upstream trouble).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::KeyRateLimited { .. }
                | ProxyError::KeyTpmLimited { .. }
                | ProxyError::NoneReady { .. }
                | ProxyError::Unavailable
                | ProxyError::LimiterUnavailable
                | ProxyError::Recovering { .. }
                | ProxyError::OwnerUnavailable { .. }
                | ProxyError::UpstreamFailed { .. }
                | ProxyError::UpstreamTimeout { .. }
        )
    }

    /// When to try again, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::KeyRateLimited { retry_after, .. }
            | ProxyError::KeyTpmLimited { retry_after, .. } => Some(*retry_after),
            ProxyError::NoneReady { retry_after } | ProxyError::Recovering { retry_after } => {
                *retry_after
            }
            ProxyError::LimiterUnavailable => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ProxyError::Internal {
            detail: detail.to_string(),
        }
    }
}

impl From<ProviderError> for ProxyError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::InvalidRequest(invalid) => ProxyError::InvalidRequest(invalid),
            other => ProxyError::internal(other),
        }
    }
}

impl From<TranslateError> for ProxyError {
    fn from(error: TranslateError) -> Self {
        match error {
            TranslateError::Unsupported(invalid) => ProxyError::InvalidRequest(invalid),
            other => ProxyError::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_map_their_errors_by_fault() {
        let client = ProxyError::from(ProviderError::InvalidRequest(InvalidRequest::new("bad")));
        assert_eq!(client.status(), StatusCode::BAD_REQUEST);
        let ours = ProxyError::from(ProviderError::InvalidKey);
        assert_eq!(ours.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!ours.is_retryable());
        let unsupported =
            ProxyError::from(TranslateError::Unsupported(InvalidRequest::new("no audio")));
        assert_eq!(unsupported.kind(), "invalid_request_error");
    }

    #[test]
    fn rate_limits_say_when_to_come_back() {
        let wait = Duration::from_millis(1500);
        let error = ProxyError::NoneReady {
            retry_after: Some(wait),
        };
        assert_eq!(error.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.retry_after(), Some(wait));
        assert!(error.is_retryable());
        assert_eq!(ProxyError::Unavailable.retry_after(), None);
    }
}
