//! The one place errors become HTTP responses. Each layer has its own error type
//! ([`ProxyError`] from the request path, [`ControlError`] from the control plane,
//! [`InvalidRequest`] from whoever read the client's input); here each maps once onto an [`ApiError`] — status, `type`, `code`, `param`,
//! message, `Retry-After` — and one renderer per wire format writes it: OpenAI's
//! `{"error": {…}}` ([`ApiError::openai`]) or Anthropic's `{"type": "error", "error": {…}}`
//! ([`ApiError::anthropic`]). 5xx bodies are generic and name the request id; the cause goes to
//! the log under the same id. `Retry-After` (whole seconds) always comes with `retry-after-ms`
//! (exact): on every 429 (the wait poolgate knows, else [`DEFAULT_RETRY_AFTER`]) and on every 503
//! with a known wait. A 503 that only an operator can end (every backend disabled or refused)
//! suggests no retry.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::request_id;
use crate::control::ControlError;
use crate::domain::{Invalid, InvalidRequest};
use crate::providers::anthropic::{error_type_for_status, ErrorResponse};
use crate::proxy::ProxyError;
use crate::telemetry::headers::insert_retry_after_ms;

/// The wait a 429 suggests when poolgate knows no better one.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<Box<str>>,
    message: Box<str>,
    retry_after: Option<Duration>,
    /// The cause of a 5xx, for the log only.
    detail: Option<Box<str>>,
    /// Waiting never helps: `x-should-retry: false` (read by the OpenAI SDKs before the status),
    /// and no `Retry-After`.
    no_retry: bool,
}

/// The error `type` of a status.
fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 413 | 415 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        501 => "not_implemented_error",
        502 | 503 => "upstream_error",
        504 => "timeout_error",
        _ => "server_error",
    }
}

/// The code a status always carries, if any.
fn code_of(status: StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        401 => Some("invalid_api_key"),
        408 => Some("request_timeout"),
        413 => Some("payload_too_large"),
        429 => Some("rate_limit_exceeded"),
        _ => None,
    }
}

impl ApiError {
    /// An error with the status's `type` and code; see the `with_*` methods for the rest.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind_of(status),
            code: code_of(status),
            param: None,
            message: message.into().into_boxed_str(),
            retry_after: None,
            detail: None,
            no_retry: false,
        }
    }

    /// 429 `insufficient_quota` / `budget_exceeded` with `x-should-retry: false`: the client
    /// key's budget is spent; `message` says which and when it resets.
    pub fn budget_exceeded(message: impl Into<String>) -> Self {
        let mut error =
            Self::new(StatusCode::TOO_MANY_REQUESTS, message).with_code("budget_exceeded");
        error.kind = "insufficient_quota";
        error.no_retry = true;
        error
    }

    /// 400.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404 with its code (`model_not_found`, `backend_not_found`, …).
    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        Self::new(StatusCode::NOT_FOUND, message).with_code(code)
    }

    /// 409 naming the field.
    pub fn conflict(message: impl Into<String>, param: &str) -> Self {
        Self::new(StatusCode::CONFLICT, message).with_param(param)
    }

    /// 413.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 408: the request body arrived too slowly (`server.body_read_timeout_seconds`,
    /// `server.body_min_rate_bytes_per_second`).
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body arrived too slowly; poolgate stopped waiting for it",
        )
    }

    /// 503 + `Retry-After: 1`: the gateway has `proxy.max_in_flight` requests in flight.
    pub fn overloaded(limit: u32) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("poolgate is at its limit of {limit} requests in flight; retry shortly"),
        )
        .with_code("overloaded")
        .with_retry_after(Some(Duration::from_secs(1)));
        error.kind = "server_error";
        error
    }

    /// 429 + `Retry-After: 1`: the client key has its `max_parallel_requests` in flight.
    pub fn key_concurrency(limit: u32) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("this key is limited to {limit} requests in flight at once"),
        )
        .with_code("concurrency_limit_exceeded")
        .with_retry_after(Some(Duration::from_secs(1)))
    }

    /// 500: the client sees a generic message, the log gets `detail`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").with_detail(detail)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into().into_boxed_str());
        self
    }

    pub fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// Tells clients not to retry (`x-should-retry: false`, no `Retry-After`).
    pub fn with_no_retry(mut self) -> Self {
        self.no_retry = true;
        self.retry_after = None;
        self
    }

    pub fn with_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string().into_boxed_str());
        self
    }

    pub fn status_code(&self) -> StatusCode {
        self.status
    }

    /// Short machine-readable kind: the error `type`, and the usage record's `error_kind`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The machine-readable code, if any.
    pub fn code(&self) -> Option<&'static str> {
        self.code
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The message the client sees: for a 5xx the generic text plus the request id.
    pub fn public_message(&self) -> String {
        match (self.status.is_server_error(), request_id::current()) {
            (true, Some(id)) if self.status != StatusCode::NOT_IMPLEMENTED => {
                format!("{} (request id {id})", self.message)
            }
            _ => self.message.to_string(),
        }
    }

    /// Renders in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.public_message(),
                r#type: self.kind,
                param: self.param.as_deref().map(str::to_owned),
                code: self.code,
            },
        };
        self.finish(&body)
    }

    /// Renders in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
    pub fn anthropic(self) -> Response {
        let body = ErrorResponse::new(
            error_type_for_status(self.status.as_u16()),
            self.public_message(),
        );
        self.finish(&body)
    }

    /// Status, `Retry-After` (whole seconds, rounded up, at least 1) with `retry-after-ms`
    /// beside it, and the log of a 5xx cause.
    fn finish<T: Serialize>(self, body: &T) -> Response {
        if let Some(detail) = &self.detail {
            let request_id = request_id::current().map(|id| id.to_string());
            if self.status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(request_id, status = self.status.as_u16(), %detail, "internal error");
            } else {
                tracing::warn!(request_id, status = self.status.as_u16(), %detail, "request failed");
            }
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.no_retry {
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
            return response;
        }
        let wait = self.retry_after.or_else(|| {
            (self.status == StatusCode::TOO_MANY_REQUESTS).then_some(DEFAULT_RETRY_AFTER)
        });
        if let Some(wait) = wait {
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            insert_retry_after_ms(response.headers_mut(), wait);
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.openai()
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(error: InvalidRequest) -> Self {
        let mut api = ApiError::invalid(error.message);
        api.param = error.param.map(String::into_boxed_str);
        api.code = error.code;
        api
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        InvalidRequest::from(invalid).into()
    }
}

impl From<ProxyError> for ApiError {
    fn from(error: ProxyError) -> Self {
        let status = error.status();
        let retry_after = error.retry_after();
        let api = match error {
            ProxyError::InvalidRequest(invalid) => return invalid.into(),
            ProxyError::ModelNotFound { .. } => {
                ApiError::not_found(error.to_string(), "model_not_found")
            }
            ProxyError::KeyTpmTooLarge { .. } | ProxyError::BackendTpmTooLarge { .. } => {
                ApiError::new(status, error.to_string())
                    .with_code("tpm_request_too_large")
                    .with_no_retry()
            }
            ProxyError::ModelNotAllowed { .. }
            | ProxyError::KeyRateLimited { .. }
            | ProxyError::KeyTpmLimited { .. }
            | ProxyError::NoneReady { .. }
            | ProxyError::Recovering { .. }
            | ProxyError::UpstreamTooLarge { .. }
            | ProxyError::UpstreamRedirect { .. } => ApiError::new(status, error.to_string()),
            ProxyError::EgressRefused { ref detail } => {
                let detail = detail.clone();
                ApiError::new(status, error.to_string()).with_detail(detail)
            }
            ProxyError::Unavailable => {
                ApiError::new(status, error.to_string()).with_detail("no routable backend")
            }
            ProxyError::LimiterUnavailable => {
                ApiError::new(status, error.to_string()).with_code("limiter_unavailable")
            }
            ProxyError::UpstreamFailed { .. } => {
                ApiError::new(status, "upstream failed").with_detail(&error)
            }
            ProxyError::UpstreamTimeout { .. } => {
                ApiError::new(status, "the upstream did not answer in time").with_detail(&error)
            }
            ProxyError::Internal { .. } => ApiError::internal(&error),
            ProxyError::ResponseNotFound { .. } => {
                ApiError::not_found(error.to_string(), "response_not_found")
            }
            ProxyError::PreviousResponseNotFound { .. } => ApiError::invalid(error.to_string())
                .with_param("previous_response_id")
                .with_code("previous_response_not_found"),
            ProxyError::OwnerUnavailable { .. } => ApiError::new(status, error.to_string())
                .with_code("response_backend_unavailable")
                .with_detail("the response's backend is disabled or broken"),
            // Permanent for this model: the SDKs would retry a 5xx without being told.
            ProxyError::NotImplemented { .. } => {
                ApiError::new(status, error.to_string()).with_no_retry()
            }
            ProxyError::BudgetExceeded { message } => return ApiError::budget_exceeded(message),
        };
        if api.no_retry {
            return api;
        }
        api.with_retry_after(retry_after)
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::Invalid(invalid) => invalid.into(),
            ControlError::UnknownPool { ref field, .. } => ApiError::invalid(error.to_string())
                .with_param(field.clone())
                .with_code("unknown_pool"),
            ControlError::Conflict { message, param } => ApiError::conflict(message, param),
            ControlError::NotFound { message, code } => ApiError::not_found(message, code),
            other @ (ControlError::Crypto(_)
            | ControlError::UnreadableKey { .. }
            | ControlError::Store(_)
            | ControlError::ShuttingDown
            | ControlError::KeyFile(_)) => ApiError::internal(other),
        }
    }
}

/// `{"error": {...}}` — OpenAI's error shape, used by every JSON endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub r#type: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause_and_name_the_request() {
        let id = RequestId::generate();
        let response = request_id::scope(id.clone(), async {
            ApiError::internal("disk on fire at /secret/path").openai()
        })
        .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("secret"), "{message}");
        assert_eq!(message, format!("internal error (request id {id})"));
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn a_502_carries_no_upstream_text() {
        let error = ProxyError::UpstreamFailed {
            detail: "error sending request for url (http://10.0.0.7:9/v1): connection refused"
                .into(),
        };
        let body = body_of(ApiError::from(error).anthropic()).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "api_error");
        assert_eq!(body["error"]["message"], "upstream failed");
    }

    #[test]
    fn rate_limited_sets_retry_after_rounded_up() {
        let response = ApiError::from(ProxyError::NoneReady {
            retry_after: Some(Duration::from_millis(1_200)),
        })
        .openai();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1200");
    }

    #[test]
    fn every_429_says_when_to_come_back_in_seconds_and_milliseconds() {
        let no_wait_known = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down").anthropic();
        assert_eq!(no_wait_known.headers()[header::RETRY_AFTER], "1");
        assert_eq!(no_wait_known.headers()["retry-after-ms"], "1000");
        let overloaded = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy")
            .with_retry_after(Some(Duration::from_millis(2500)))
            .openai();
        assert_eq!(overloaded.headers()[header::RETRY_AFTER], "3");
        assert_eq!(overloaded.headers()["retry-after-ms"], "2500");
        // Only an operator can end this one: no retry suggested.
        let unavailable = ApiError::from(ProxyError::Unavailable).anthropic();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(unavailable.headers().get(header::RETRY_AFTER).is_none());
        assert!(unavailable.headers().get("retry-after-ms").is_none());
        let key_limit = ApiError::from(ProxyError::KeyRateLimited {
            rpm: 60,
            retry_after: Duration::from_micros(250_001),
        })
        .openai();
        assert_eq!(key_limit.headers()[header::RETRY_AFTER], "1");
        assert_eq!(key_limit.headers()["retry-after-ms"], "251");
        // Other statuses carry neither.
        let failed = ApiError::from(ProxyError::UpstreamFailed { detail: "x".into() }).openai();
        assert!(failed.headers().get(header::RETRY_AFTER).is_none());
        assert!(failed.headers().get("retry-after-ms").is_none());
    }

    #[tokio::test]
    async fn invalid_requests_keep_their_param_and_code() {
        let error = InvalidRequest::param("`stream` must be a boolean", "stream", "invalid_type");
        let body = body_of(ApiError::from(error).openai()).await;
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "`stream` must be a boolean",
                "type": "invalid_request_error", "param": "stream", "code": "invalid_type"}})
        );
    }

    use super::request_id::RequestId;
}
