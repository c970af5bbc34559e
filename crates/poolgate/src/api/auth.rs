//! Credentials: the admin token (bearer, compared in constant time) and client keys
//! (`pgk-<id>-<secret>`: looked up by id in the live snapshot, secret hash compared in constant
//! time). The admin token is accepted as a client key too.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use crate::crypto::{parse_client_key, verify_secret};
use crate::state::{DataPlane, Live, LiveClientKey};

/// `x-api-key` (Anthropic's client header), parsed once.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The bearer token of `Authorization`, or the `x-api-key` header (Anthropic clients).
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get(&X_API_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caller of a proxy route: `Ok(None)` for the admin token, `Ok(Some(key))` for a client key
/// of `live` (the snapshot the request goes on to use).
pub fn authenticate_client(
    data: &DataPlane,
    live: &Live,
    headers: &HeaderMap,
) -> Result<Option<Arc<LiveClientKey>>, ApiError> {
    let token = presented_token(headers).ok_or_else(|| {
        ApiError::unauthorized("missing API key: send `Authorization: Bearer <poolgate key>`")
    })?;
    let client_key = parse_client_key(token);
    // A client key is compared with the admin token only when the admin token could be one
    // (a SHA-256 less per request otherwise).
    let admin = &data.admin_token_digest;
    if (client_key.is_none() || admin.is_client_key_shaped()) && admin.matches(token) {
        return Ok(None);
    }
    let unknown = || ApiError::unauthorized("invalid API key");
    let (id, secret) = client_key.ok_or_else(unknown)?;
    let key = live.client_keys.get(id).ok_or_else(unknown)?;
    if !verify_secret(secret, &key.record.secret_hash) {
        return Err(unknown());
    }
    Ok(Some(Arc::clone(key)))
}

/// Middleware guarding every admin route.
pub async fn require_admin(
    State(data): State<DataPlane>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authorized = presented_token(request.headers())
        .is_some_and(|token| data.admin_token_digest.matches(token));
    if !authorized {
        return Err(ApiError::unauthorized(
            "admin API: send `Authorization: Bearer <admin token>`",
        ));
    }
    Ok(next.run(request).await)
}
