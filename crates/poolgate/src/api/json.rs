//! Request-body extraction with clear errors: 413 past the body limit (at once, before a byte
//! is read, when `Content-Length` declares more), 408 when the body arrives too slowly (the
//! serving loop's [`crate::serving::TimedBody`]), 415 without a JSON content type, 400 naming
//! the JSON path of a bad or unknown field.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::parse_json;
use crate::serving::is_body_timeout;

/// Largest admin API body.
pub const ADMIN_BODY_LIMIT: usize = 1024 * 1024;

/// Reads the whole body up to `limit` bytes; past it, a JSON 413 — without reading anything
/// when the declared `Content-Length` is already over the limit. The body is copied once, into a
/// buffer of its declared size (collecting the frames first and joining them after would hold
/// two copies at the peak).
pub async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = http_body::Body::size_hint(&body).lower();
    if declared > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut buffer = BytesMut::with_capacity(usize::try_from(declared).unwrap_or(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if is_body_timeout(&error) {
                ApiError::request_timeout()
            } else {
                ApiError::invalid("could not read the request body")
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
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
