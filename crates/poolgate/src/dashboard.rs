//! The web dashboard's mount point. The full dashboard is not built yet; until it is, `/dashboard/`
//! serves a short page that points operators to the admin API and its OpenAPI document.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

const PLACEHOLDER: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>poolgate</title></head><body><h1>poolgate</h1><p>The web dashboard is not part of this \
build yet. Manage backends through the admin API: <code>/admin/api</code> (OpenAPI document at \
<a href=\"/admin/api/openapi.json\">/admin/api/openapi.json</a>).</p></body></html>";

pub fn router() -> Router<AppState> {
    Router::new().route("/dashboard/", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'none'; object-src 'none'; frame-ancestors 'none'",
            ),
        ],
        PLACEHOLDER,
    )
}
