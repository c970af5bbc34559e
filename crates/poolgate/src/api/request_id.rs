//! Every answer's `x-request-id`: [`assign`] gives each request one id up front (the proxy
//! handlers read it from the request's extensions, so header, usage record, logs and a 5xx body
//! all name the same id) and keeps it as the task's current id while the request is handled.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// A request id, `req_` + a time-ordered UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A new id: the one generator for every answer.
    pub fn generate() -> Self {
        Self(format!("req_{}", uuid::Uuid::now_v7().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Middleware: assigns the id, handles the request with it, and sets `x-request-id`.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = request
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    request.extensions_mut().insert(id.clone());
    let mut response = CURRENT.scope(id.clone(), next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Runs `future` with `id` as the current request id (for tests of the renderers).
#[cfg(test)]
pub async fn scope<F: std::future::Future>(id: RequestId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}
