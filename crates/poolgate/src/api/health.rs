//! The health endpoints, public and never cached: `/health/live` (the process answers) and
//! `/health/ready` (200 when every readiness probe passes; 503 when one fails or, from its first
//! moment, during a graceful stop). `/healthz` stays an alias of live. Failed probes show as
//! `failed` or `timeout`; what went wrong goes to the log, not to this public answer.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::control::ControlPlane;

fn no_store(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /health/live` and `GET /healthz`.
pub async fn live() -> Response {
    no_store(StatusCode::OK, json!({"status": "ok"}))
}

/// `GET /health/ready`.
pub async fn ready(State(control): State<ControlPlane>) -> Response {
    let report = control.readiness().check().await;
    if report.draining {
        return no_store(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "shutting_down"}),
        );
    }
    let checks: Map<String, Value> = report
        .checks
        .iter()
        .map(|(name, status)| ((*name).to_owned(), Value::from(status.as_str())))
        .collect();
    let (status, word) = if report.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    no_store(status, json!({"status": word, "checks": checks}))
}
