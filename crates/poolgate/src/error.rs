//! Errors split by phase: [`InitError`] stops start-up, [`ApiError`] answers one request. This is
//! the one place an error becomes an HTTP response (OpenAI's error shape, `Retry-After` on 429).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::Invalid;

/// Why the gateway could not start (or a command-line action failed).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("{0}")]
    Invalid(String),
}

impl InitError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        InitError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Everything that can go wrong while answering one request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is wrong.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// 401: no or unknown credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: known credentials, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    /// 409: e.g. a duplicate name (`param` names the field).
    #[error("{message}")]
    Conflict {
        message: String,
        param: Option<String>,
    },
    /// 413.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: the client's own limit, or no upstream is ready.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// 502: upstreams failed.
    #[error("{0}")]
    BadGateway(String),
    /// 503: nothing could serve the request (every backend disabled or broken).
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 504: upstreams timed out.
    #[error("{0}")]
    GatewayTimeout(String),
    /// 501.
    #[error("{0}")]
    NotImplemented(String),
    /// 500: the cause is logged; the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short machine-readable kind, used as the error `type` and in usage records.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType(_) => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::NotFound { .. } => "not_found_error",
            ApiError::Conflict { .. } => "conflict_error",
            ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::BadGateway(_) | ApiError::ServiceUnavailable(_) => "upstream_error",
            ApiError::GatewayTimeout(_) => "timeout_error",
            ApiError::NotImplemented(_) => "not_implemented_error",
            ApiError::Internal(_) => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::Unauthorized(_) => Some("invalid_api_key"),
            ApiError::NotFound { code, .. } => Some(code),
            ApiError::PayloadTooLarge { .. } => Some("payload_too_large"),
            ApiError::RateLimited { .. } => Some("rate_limit_exceeded"),
            _ => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } | ApiError::Conflict { param, .. } => {
                param.as_deref()
            }
            _ => None,
        }
    }

    /// The message shown to the client: never the cause of a 500.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The OpenAI error body.
    pub fn openai_body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.public_message(),
                r#type: self.kind(),
                param: self.param().map(str::to_owned),
                code: self.code(),
            },
        }
    }

    /// Builds the response with a given JSON body: status, `Retry-After`, and logs 5xx causes.
    pub fn into_response_with<T: Serialize>(self, body: &T) -> Response {
        let status = self.status_code();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up, at least 1: what HTTP clients parse.
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::InvalidRequest {
            message: invalid.to_string(),
            param: Some(invalid.field),
            code: Some("invalid_value"),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            // Every uniqueness rule in the store is about a name.
            crate::store::StoreError::Conflict(message) => ApiError::Conflict {
                message,
                param: Some("name".to_owned()),
            },
            crate::store::StoreError::NotFound(message) => ApiError::NotFound {
                message,
                code: "not_found",
            },
            other => ApiError::internal(other),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.openai_body();
        self.into_response_with(&body)
    }
}

/// Parses JSON, naming the path of the first problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid value at `{path}`: {inner}")
        };
        ApiError::InvalidRequest {
            message,
            param: (path != ".").then_some(path),
            code: Some("invalid_body"),
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::invalid(format!("request body is not valid JSON: {error}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let error = ApiError::internal("disk on fire at /secret/path");
        assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.openai_body().error.message, "internal server error");
    }

    #[test]
    fn rate_limited_sets_retry_after_rounded_up() {
        let response = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(1_200)),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
