//! Helpers shared by the telemetry integration tests.

use axum::http::HeaderMap;
use poolgate::telemetry::{Operation, RequestStart, RouteHandle};
use tokio::time::Instant;

/// A chat request received now.
pub fn chat<'a>(
    model: &'a RouteHandle,
    headers: &'a HeaderMap,
    request_id: &'a str,
    stream: bool,
) -> RequestStart<'a> {
    RequestStart {
        received: Instant::now(),
        request_id,
        model,
        operation: Operation::Chat,
        http_route: "/v1/chat/completions",
        stream,
        headers,
    }
}
