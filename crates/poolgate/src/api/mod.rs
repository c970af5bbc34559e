//! The HTTP surface: [`build_router`] assembles the OpenAI-compatible proxy (`/v1/…`), the
//! Anthropic-compatible `/v1/messages`, the
//! token-protected admin API (`/admin/api/…`, with its OpenAPI document), the health endpoints
//! (`/health/live`, `/health/ready`, `/healthz`), `GET /metrics` and the dashboard. Handlers are thin: they authenticate, extract, and call [`crate::proxy`] or the store;
//! [`error`] is the one place an error becomes a response.

pub mod admin;
pub mod anthropic;
pub mod auth;
pub mod error;
pub mod health;
pub mod json;
pub mod metrics;
pub mod openai;
pub mod proxy;
pub mod request_id;

use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::get;
use axum::Router;

use crate::control::ControlPlane;
use crate::state::DataPlane;
use error::ApiError;

/// The router's state: the two halves, each handler taking the one it needs (`State<DataPlane>`
/// for the proxy routes, `State<ControlPlane>` — and the data plane for live views — for the
/// admin routes).
#[derive(Clone)]
pub struct AppState {
    pub data: DataPlane,
    pub control: ControlPlane,
}

impl FromRef<AppState> for DataPlane {
    fn from_ref(state: &AppState) -> DataPlane {
        state.data.clone()
    }
}

impl FromRef<AppState> for ControlPlane {
    fn from_ref(state: &AppState) -> ControlPlane {
        state.control.clone()
    }
}

/// Routes reachable without any credential: the named allow-list. The dashboard's page and
/// static assets (under `/dashboard/`) are public too; every datum they show comes from the
/// token-protected admin API.
pub const PUBLIC_ROUTES: &[&str] = &[
    "/healthz",
    "/health/live",
    "/health/ready",
    "/admin/api/openapi.json",
    "/",
    "/dashboard/",
];

/// The whole application router.
pub fn build_router(state: AppState) -> Router {
    let (admin_router, _) = admin::router(state.data.clone());
    Router::new()
        .route("/healthz", get(health::live))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/", get(|| async { Redirect::temporary("/dashboard/") }))
        .merge(openai::router())
        .merge(anthropic::router())
        .nest("/admin/api", admin_router)
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(request_id::AssignRequestId)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route", "unknown_route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
    .with_code("method_not_allowed")
}
