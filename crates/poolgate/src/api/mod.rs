//! The HTTP surface: [`build_router`] assembles the OpenAI-compatible proxy (`/v1/…`), the
//! Anthropic-compatible `/v1/messages`, the
//! token-protected admin API (`/admin/api/…`, with its OpenAPI document), `/healthz` and the
//! dashboard. Handlers are thin: they authenticate, extract, and call [`crate::proxy`] or the store.

pub mod admin;
pub mod anthropic;
pub mod auth;
pub mod json;
pub mod openai;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// Routes reachable without any credential: the named allow-list. The dashboard's page and
/// static assets (under `/dashboard/`) are public too; every datum they show comes from the
/// token-protected admin API.
pub const PUBLIC_ROUTES: &[&str] = &["/healthz", "/admin/api/openapi.json", "/", "/dashboard/"];

/// The whole application router.
pub fn build_router(state: AppState) -> Router {
    let (admin_router, _) = admin::router(state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(|| async { Redirect::temporary("/dashboard/") }))
        .merge(openai::router())
        .merge(anthropic::router())
        .nest("/admin/api", admin_router)
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(ensure_request_id))
        .with_state(state)
}

/// A new request id, `req_` + a time-ordered UUID: the one generator for every answer.
pub fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}

/// Every answer carries `x-request-id` (the proxy sets its own; everything else gets one here).
async fn ensure_request_id(mut response: Response) -> Response {
    if !response.headers().contains_key("x-request-id") {
        let id = new_request_id();
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", value);
        }
    }
    response
}

async fn healthz() -> Response {
    let mut response = axum::Json(serde_json::json!({"status": "ok"})).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound {
        message: "no such route".into(),
        code: "unknown_route",
    }
}

async fn method_not_allowed() -> Response {
    let body = serde_json::json!({"error": {
        "message": "method not allowed on this route",
        "type": "invalid_request_error", "param": null, "code": "method_not_allowed"}});
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}
