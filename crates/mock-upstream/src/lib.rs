//! A fast, scriptable OpenAI- and Anthropic-shaped upstream for poolgate's tests and benchmarks.
//!
//! Start one in-process with [`MockUpstream::start`] (127.0.0.1, port 0), point the gateway at
//! [`MockUpstream::openai_base_url`] or [`MockUpstream::base_url`], script answers with
//! [`MockUpstream::push`], then assert on [`MockUpstream::calls`] and
//! [`MockUpstream::requests`]. The `mock-upstream` binary serves the same endpoints for the
//! benchmark harness.
//!
//! One port speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c: a client that opens with the
//! HTTP/2 preface), up to 100,000 concurrent streams per HTTP/2 connection. Each
//! [`RecordedRequest`] says which version it came over, and [`MockUpstream::connections`]
//! counts the connections accepted (how many sockets a client spent).
//!
//! Every request, in order:
//! 1. the body is read whole and the request recorded as a [`RecordedRequest`] and counted;
//! 2. the next queued [`Reply`] is popped (or the default, initially [`Reply::Ok`]);
//! 3. [`Reply::Delay`]s are waited out; [`Reply::Hang`] never answers, [`Reply::Drop`] closes
//!    the connection, [`Reply::Status`]/[`Reply::Error`] answer with that status;
//! 4. otherwise the endpoint answers as the real API would:
//!
//! | endpoint | answer |
//! |---|---|
//! | `POST /v1/chat/completions` | `chat.completion`, or `chat.completion.chunk` SSE ending in `data: [DONE]` |
//! | `POST /v1/completions` | `text_completion`, or its SSE stream |
//! | `POST /v1/embeddings` | one 8-float embedding per input |
//! | `GET /v1/models`, `GET /v1/models/{id}` | `mock-model` (Anthropic's shape if `anthropic-version` is sent) |
//! | `POST /v1/messages` | Anthropic `message`, or its named SSE events ending in `message_stop` |
//! | `POST /v1/messages/count_tokens` | `{"input_tokens":10}` |
//! | `POST /v1/responses` | a Response object, or its typed SSE events (`event: response.…`) ending in `response.completed`; 404 `previous_response_not_found` for a `previous_response_id` this mock did not make |
//! | `GET` / `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel` | the kept response / `response.deleted` / `cancelled` (background responses only, else 400); 404 for ids it does not keep |
//! | Azure: `POST /openai/deployments/{deployment}/{chat/completions,completions,embeddings}?api-version=…`, `/openai/responses…?api-version=…`, `/openai/v1/…` | as the OpenAI endpoint, after Azure's checks: `api-key` header (else 401), `api-version` where needed (else 404 `Resource not found`), a known deployment (else 404 `DeploymentNotFound`); `x-ratelimit-remaining-*` headers; errors in Azure's shape |
//! | `POST /__mock/replies` (only with [`MockConfig::control`]) | queues `times` (default 1) error replies of `status` (with `retry-after: retry_after` if given) in the endpoint's native shape: `{"status": 429, "retry_after": 30, "times": 1}`; 204 |
//! | anything else | 404 in OpenAI's error shape (Anthropic's if `anthropic-version` is sent) |
//!
//! Deterministic numbers: ids are `chatcmpl-mock-N` / `cmpl-mock-N` / `msg_mock_N` with N the
//! request's 1-based sequence number, and `resp_mock_{port}_N` for the Responses API (so the id
//! tells which mock made it, see [`MockUpstream::response_id_prefix`]); Responses usage reports
//! 8 of the 10 input tokens as `cached_tokens` when the same prompt (its `prompt_cache_key`, else
//! its instructions and first input item) reached this mock before; the model echoes the request's `model` (`mock-model` if
//! absent); prompt/input tokens are always 10; completion/output tokens are the number of
//! whitespace-separated words of the content. The default content is `"chunk0 chunk1 chunk2"`
//! (one word per chunk of the default [`StreamSpec`]).

mod body;
mod record;
mod reply;
mod responses;
mod route;
mod server;
mod wire;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::record::RecordedRequest;
pub use crate::reply::{Reply, ReportedUsage, StreamSpec};
use crate::server::Shared;

/// How a [`MockUpstream`] is started; [`MockUpstream::start`] uses the defaults.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Where to listen; default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The reply when nothing is queued; default [`Reply::Ok`].
    pub default_reply: Reply,
    /// How [`Reply::Ok`] and [`Reply::Content`] stream when a request asks for a stream;
    /// default [`StreamSpec::default`] (3 chunks, no gap).
    pub stream_defaults: StreamSpec,
    /// Keep every request for [`MockUpstream::requests`]; default `true`. Benchmarks turn it off
    /// so memory stays flat ([`MockUpstream::calls`] still counts).
    pub record_requests: bool,
    /// Serve the control route `POST /__mock/replies` (scripting a separate process: tests in
    /// other languages); default `false`. Control requests are neither recorded nor counted.
    pub control: bool,
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            default_reply: Reply::Ok,
            stream_defaults: StreamSpec::default(),
            record_requests: true,
            control: false,
        }
    }
}

/// A running mock upstream. It serves in a background task until dropped or
/// [`shut down`](MockUpstream::shutdown); dropping it stops the server and closes its
/// connections.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping (or firing) it stops the accept loop.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

// === impl MockUpstream ===

impl MockUpstream {
    /// Binds 127.0.0.1:0 and serves in a background tokio task until dropped (or `shutdown()`).
    ///
    /// # Panics
    /// If 127.0.0.1:0 cannot be bound — a broken test machine.
    pub async fn start() -> MockUpstream {
        match MockUpstream::start_with(MockConfig::default()).await {
            Ok(mock) => mock,
            Err(e) => panic!("mock-upstream: cannot listen on 127.0.0.1:0: {e}"),
        }
    }

    /// Binds `config.listen` and serves in a background tokio task.
    pub async fn start_with(config: MockConfig) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, addr.port().to_string()));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server::accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(MockUpstream {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1` — an OpenAI-compatible client's base URL.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT` — Anthropic style base (requests go to `{base}/v1/messages`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a reply: each incoming request (any endpoint) pops the next one; when the queue is
    /// empty the default reply is used.
    pub fn push(&self, reply: Reply) {
        self.shared.push(reply);
    }

    /// Queues several replies, in order.
    pub fn push_all(&self, replies: impl IntoIterator<Item = Reply>) {
        for reply in replies {
            self.shared.push(reply);
        }
    }

    /// The reply used when nothing is queued (initially [`Reply::Ok`]).
    pub fn set_default(&self, reply: Reply) {
        self.shared.set_default(reply);
    }

    /// Chat completions and Messages answers report these token figures from now on (cache
    /// reads and writes included), instead of the fixed defaults; `None` restores those.
    pub fn set_usage(&self, usage: Option<ReportedUsage>) {
        *self.shared.usage.lock() = usage;
    }

    /// Queued replies not yet used.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// Number of requests received (all endpoints).
    pub fn calls(&self) -> usize {
        self.shared.calls()
    }

    /// Number of connections accepted so far (HTTP/1.1 and HTTP/2 alike).
    pub fn connections(&self) -> usize {
        self.shared.connections()
    }

    /// Every request, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.last_request()
    }

    /// What every Responses API id this mock makes starts with (`resp_mock_{port}_`): tells
    /// which mock served a response.
    pub fn response_id_prefix(&self) -> String {
        format!("resp_mock_{}_", self.shared.tag)
    }

    /// Ids of the responses this mock keeps (made with `store` not `false`, not deleted).
    pub fn stored_responses(&self) -> Vec<String> {
        self.shared.responses.ids()
    }

    /// `http://127.0.0.1:PORT` as an Azure OpenAI resource endpoint: deployment URLs under
    /// `/openai/deployments/{deployment}/…`, the v1 form under `/openai/v1/…`.
    pub fn azure_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The only `api-key` Azure routes accept from now on (initially any non-empty key).
    pub fn set_azure_api_key(&self, key: impl Into<String>) {
        self.shared.azure.lock().api_key = Some(key.into());
    }

    /// The only deployments Azure deployment URLs serve from now on (initially any); others
    /// answer 404 `DeploymentNotFound`.
    pub fn set_azure_deployments<S: Into<String>>(&self, deployments: impl IntoIterator<Item = S>) {
        self.shared.azure.lock().deployments = deployments.into_iter().map(Into::into).collect();
    }

    /// Number of streaming responses whose body was dropped before the stream finished (the
    /// client went away, or the server shut down mid-stream). `die_after` aborts are not counted.
    pub fn cancelled_streams(&self) -> usize {
        self.shared.streams.cancelled.load(Ordering::Acquire)
    }

    /// Number of streaming responses fully sent.
    pub fn completed_streams(&self) -> usize {
        self.shared.streams.completed.load(Ordering::Acquire)
    }

    /// Stops accepting, closes every connection and waits until that is done.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            // The accept loop only ends by finishing; a join error would be a panic in it.
            task.await.ok();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // Dropping the sender stops the accept loop, which closes the connections.
        self.stop.take();
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}
