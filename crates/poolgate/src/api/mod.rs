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
pub mod models;
pub mod openai;
pub mod proxy;
pub mod request_id;

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::{FromRef, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{Redirect, Response};
use axum::routing::future::RouteFuture;
use axum::routing::get;
use axum::Router;
use futures_util::future::{BoxFuture, Either};

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

/// The whole HTTP surface as one service: the proxy's `POST` endpoints go straight to their
/// handlers (with the request id, as the router gives it), every other request through
/// [`build_router`]'s router. The answers are the router's; the hot path skips its path match,
/// its per-request clone of the route's boxed service and the boxing of its futures (#13).
#[derive(Clone)]
pub struct App {
    router: Router,
    data: DataPlane,
}

impl App {
    pub fn new(state: AppState) -> Self {
        let data = state.data.clone();
        Self {
            router: build_router(state),
            data,
        }
    }
}

/// The paths of the routes [`App`] serves without the router. The routers (`openai::router`,
/// `anthropic::router`) register the same constants, so the fast lane and the router cannot
/// disagree on a path; the router still answers other methods on them (405 with `Allow`).
pub(super) const CHAT_COMPLETIONS_PATH: &str = "/v1/chat/completions";
pub(super) const COMPLETIONS_PATH: &str = "/v1/completions";
pub(super) const EMBEDDINGS_PATH: &str = "/v1/embeddings";
pub(super) const MESSAGES_PATH: &str = "/v1/messages";

/// The routes [`App`] serves without the router: `POST` on these exact paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProxyRoute {
    ChatCompletions,
    Completions,
    Embeddings,
    Messages,
}

impl ProxyRoute {
    fn of(method: &Method, path: &str) -> Option<Self> {
        if method != Method::POST {
            return None;
        }
        match path {
            CHAT_COMPLETIONS_PATH => Some(Self::ChatCompletions),
            COMPLETIONS_PATH => Some(Self::Completions),
            EMBEDDINGS_PATH => Some(Self::Embeddings),
            MESSAGES_PATH => Some(Self::Messages),
            _ => None,
        }
    }

    async fn handle(self, data: DataPlane, request: Request) -> Result<Response, Infallible> {
        let data = State(data);
        Ok(match self {
            Self::ChatCompletions => openai::chat_completions(data, request).await,
            Self::Completions => openai::completions(data, request).await,
            Self::Embeddings => openai::embeddings(data, request).await,
            Self::Messages => anthropic::messages(data, request).await,
        })
    }
}

type ProxyFuture = BoxFuture<'static, Result<Response, Infallible>>;

impl tower::Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<request_id::WithRequestId<ProxyFuture>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both the handlers and the router are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match ProxyRoute::of(request.method(), request.uri().path()) {
            Some(route) => {
                let data = self.data.clone();
                Either::Left(request_id::with_request_id(request, |request| {
                    // Built in its box: the handler's future is kilobytes (see `boxed`).
                    crate::boxed::pinned_in_place(|| route.handle(data, request)) as ProxyFuture
                }))
            }
            None => Either::Right(self.router.call(request)),
        }
    }
}

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

async fn not_found(uri: Uri) -> Response {
    in_shape_of(&uri, ApiError::not_found("no such route", "unknown_route"))
}

async fn method_not_allowed(uri: Uri) -> Response {
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
    .with_code("method_not_allowed");
    in_shape_of(&uri, error)
}

/// An error in the shape of the API the path belongs to: Anthropic's under `/v1/messages`
/// (what the Anthropic SDKs parse), OpenAI's everywhere else.
fn in_shape_of(uri: &Uri, error: ApiError) -> Response {
    let path = uri.path();
    if path == MESSAGES_PATH || path.starts_with("/v1/messages/") {
        error.anthropic()
    } else {
        error.openai()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_posts_to_the_exact_proxy_paths_skip_the_router() {
        let post = |path| ProxyRoute::of(&Method::POST, path);
        assert_eq!(
            post("/v1/chat/completions"),
            Some(ProxyRoute::ChatCompletions)
        );
        assert_eq!(post("/v1/completions"), Some(ProxyRoute::Completions));
        assert_eq!(post("/v1/embeddings"), Some(ProxyRoute::Embeddings));
        assert_eq!(post("/v1/messages"), Some(ProxyRoute::Messages));
        for other in [
            "/v1/chat/completions/",
            "/v1/messages/count_tokens",
            "/v1/responses",
            "/",
        ] {
            assert_eq!(post(other), None, "{other}");
        }
        // Other methods get the router's answers (405 with its JSON body).
        assert_eq!(ProxyRoute::of(&Method::GET, "/v1/chat/completions"), None);
    }
}
