//! Every answer's `x-request-id`: [`AssignRequestId`] gives each request one id up front (the proxy
//! handlers read it from the request's extensions, so header, usage record, logs and a 5xx body
//! all name the same id) and keeps it as the task's current id while the request is handled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::HeaderValue;
use axum::response::Response;
use tokio::task::futures::TaskLocalFuture;

pub use crate::domain::RequestId;
use crate::domain::X_REQUEST_ID;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The layer that gives every request its id ([`AssignRequestId`]'s service): the id a caller
/// put in the request's extensions, else a new one; the request is handled with it as the
/// task's current id, and the answer gets `x-request-id`. A hand-written service rather than
/// `axum::middleware::from_fn`, which boxes the rest of the stack and its future on every
/// request (#13).
#[derive(Clone, Copy, Debug, Default)]
pub struct AssignRequestId;

impl<S> tower::Layer<S> for AssignRequestId {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// See [`AssignRequestId`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RequestIdService<S>
where
    S: tower::Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        with_request_id(request, |request| self.inner.call(request))
    }
}

/// Gives `request` its id (the one in its extensions, else a new one) and handles it with
/// `handle`, the id current while the answer is computed; the answer gets `x-request-id`.
pub fn with_request_id<B, F: Future>(
    mut request: http::Request<B>,
    handle: impl FnOnce(http::Request<B>) -> F,
) -> WithRequestId<F> {
    let id = request
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    let header = HeaderValue::from_str(id.as_str()).ok();
    request.extensions_mut().insert(id.clone());
    WithRequestId {
        inner: CURRENT.scope(id, handle(request)),
        header,
    }
}

pin_project_lite::pin_project! {
    /// The answer of a request handled with its id current; sets `x-request-id` on it.
    pub struct WithRequestId<F> {
        #[pin]
        inner: TaskLocalFuture<RequestId, F>,
        header: Option<HeaderValue>,
    }
}

impl<F, E> Future for WithRequestId<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(value)) = (&mut result, this.header.take()) {
            response.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        Poll::Ready(result)
    }
}

/// Runs `future` with `id` as the current request id (for tests of the renderers).
#[cfg(test)]
pub async fn scope<F: std::future::Future>(id: RequestId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_uuid_v7s_of_now() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let ids: Vec<RequestId> = (0..1_000).map(|_| RequestId::generate()).collect();
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let distinct: std::collections::HashSet<&str> = ids.iter().map(RequestId::as_str).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            let hex = id.as_str().strip_prefix("req_").unwrap();
            assert_eq!(hex.len(), 32, "{id}");
            let uuid = uuid::Uuid::parse_str(hex).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            let (seconds, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let millis = u128::from(seconds) * 1000 + u128::from(nanos / 1_000_000);
            assert!((before..=after).contains(&millis), "{id}: {millis}");
        }
    }
}
