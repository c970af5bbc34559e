//! `GET /metrics`: the Prometheus text exposition of [`crate::telemetry`]. Not public: the admin
//! token or the `[metrics] token` (scrapers) as a bearer token, compared in constant time; 404
//! when `[metrics] enabled = false`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::auth::presented_token;
use super::error::ApiError;
use crate::state::DataPlane;
use crate::telemetry::CONTENT_TYPE;

pub async fn metrics(State(data): State<DataPlane>, headers: HeaderMap) -> Response {
    let settings = &data.config.telemetry.metrics;
    if !settings.enabled {
        return ApiError::not_found(
            "metrics are turned off (`[metrics] enabled = false`)",
            "metrics_disabled",
        )
        .into_response();
    }
    if !settings.allows(presented_token(&headers), &data.admin_token) {
        return ApiError::unauthorized(
            "metrics: send `Authorization: Bearer <admin token or [metrics] token>`",
        )
        .into_response();
    }
    let mut response = data.observer.render().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
