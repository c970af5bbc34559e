//! Request-body extraction with clear errors: 413 past the body limit (at once, before a byte
//! is read, when `Content-Length` declares far more), 408 when the body arrives too slowly (the
//! serving loop's [`crate::serving::TimedBody`]), 415 without a JSON content type, 400 naming
//! the JSON path of a bad or unknown field.

use std::time::Duration;

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

/// How much more than the limit an oversized body may be read and dropped before its 413, and
/// for how long: a client still sending then reads the answer, where closing the connection
/// under its unread bytes would reset it and the client would see a broken pipe instead of the
/// error (nginx's lingering close does the same). A body declared bigger still is refused at
/// once, unread.
const DRAIN_BYTES: u64 = 4 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads the whole body up to `limit` bytes; past it, a JSON 413 — without reading anything
/// when the declared `Content-Length` is more than [`DRAIN_BYTES`] over the limit. The body is
/// copied once, into a buffer of its declared size (collecting the frames first and joining them
/// after would hold two copies at the peak).
pub async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = http_body::Body::size_hint(&body).lower();
    let limit_bytes = u64::try_from(limit).unwrap_or(u64::MAX);
    if declared > limit_bytes {
        if declared - limit_bytes <= DRAIN_BYTES {
            drain(body, declared).await;
        }
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
                drain(body, DRAIN_BYTES).await;
                return Err(ApiError::payload_too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// Reads and drops what is left of `body`, up to `at_most` bytes and [`DRAIN_TIME`].
async fn drain(mut body: Body, at_most: u64) {
    let read = async {
        let mut drained: u64 = 0;
        while drained <= at_most {
            match body.frame().await {
                Some(Ok(frame)) => {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    drained = drained.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::stream;

    use super::*;

    /// A body of `chunks` frames of `size` bytes that counts the frames it was asked for.
    fn counted_body(chunks: usize, size: usize, pulled: &Arc<AtomicUsize>) -> Body {
        let pulled = Arc::clone(pulled);
        Body::from_stream(stream::iter((0..chunks).map(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))
        })))
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_read_to_its_end_before_the_413() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let error = read_body(counted_body(40, 1024, &pulled), 8 * 1024)
            .await
            .unwrap_err();
        assert_eq!(error.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
        // The 9th frame passed the limit; the other 31 were read and dropped, so a client still
        // sending them gets the answer instead of a reset connection.
        assert_eq!(pulled.load(Ordering::SeqCst), 40);
    }

    #[tokio::test]
    async fn draining_stops_past_its_bound() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let frame = 1024 * 1024;
        let error = read_body(counted_body(64, frame, &pulled), 1024)
            .await
            .unwrap_err();
        assert_eq!(error.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
        let limit_frames = 1 + usize::try_from(DRAIN_BYTES).unwrap() / frame;
        let pulled = pulled.load(Ordering::SeqCst);
        assert!(pulled <= limit_frames + 1, "{pulled} frames read");
        assert!(pulled < 64, "{pulled} frames read: the whole body");
    }

    #[tokio::test]
    async fn within_the_limit_the_body_is_returned_whole() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let body = read_body(counted_body(4, 1024, &pulled), 8 * 1024)
            .await
            .unwrap();
        assert_eq!(body.len(), 4 * 1024);
    }
}
