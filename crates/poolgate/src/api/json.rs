//! Request-body extraction with clear errors: 413 past the body limit (at once, before a byte
//! is read, when `Content-Length` declares more), 408 when the body arrives too slowly (the
//! serving loop's [`crate::serving::TimedBody`]), 415 without a JSON content type, 400 naming
//! the JSON path of a bad or unknown field.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::parse_json;
use crate::serving::is_body_timeout;

/// Largest admin API body.
pub const ADMIN_BODY_LIMIT: usize = 1024 * 1024;

/// Reads the whole body up to `limit` bytes; past it, a JSON 413 — without reading anything
/// when the declared `Content-Length` is already over the limit.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = http_body::Body::size_hint(&body).lower();
    if declared > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(ApiError::payload_too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::payload_too_large(limit)
        } else if is_body_timeout(&error) {
            ApiError::request_timeout()
        } else {
            ApiError::invalid("could not read the request body")
        }
    })
}

/// A JSON body deserialized with `serde_path_to_error`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                let mime = value.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a body with `Content-Type: application/json`",
            ));
        }
        let _ = state;
        let body = read_body(request.into_body(), ADMIN_BODY_LIMIT).await?;
        Ok(Json(parse_json(&body)?))
    }
}
