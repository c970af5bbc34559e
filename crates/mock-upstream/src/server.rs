//! The server: accept loop, one hyper connection per task (HTTP/1.1, or HTTP/2 with prior
//! knowledge on the same port), and the request handler (record -> pop the scripted reply ->
//! route -> answer).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;

use crate::body::{MockBody, SseBody, SsePlan, StreamCounters};
use crate::record::RecordedRequest;
use crate::reply::{Reply, StreamSpec};
use crate::responses::{prompt_key, CancelError, ResponseStore};
use crate::route::{query_param, AzureRoute, Endpoint, Route};
use crate::wire::responses::{ResponseMeta, ResponseObject};
use crate::wire::{self, anthropic, azure, openai, responses, Flavor, Meta};
use crate::MockConfig;

/// Model echoed back when the request names none.
const DEFAULT_MODEL: &str = "mock-model";

/// Streams one HTTP/2 connection may carry at once: a benchmark multiplexes thousands of held
/// streams over a few connections. Flow-control windows stay at hyper's defaults (memory per
/// stream is what its requests and answers actually buffer).
pub(crate) const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100_000;

/// State shared by the handle ([`crate::MockUpstream`]) and every connection.
pub(crate) struct Shared {
    script: Mutex<Script>,
    requests: Mutex<Vec<RecordedRequest>>,
    record_requests: bool,
    calls: AtomicUsize,
    /// Connections accepted (HTTP/1.1 and HTTP/2 alike).
    connections: AtomicUsize,
    pub(crate) streams: Arc<StreamCounters>,
    stream_defaults: StreamSpec,
    /// Part of every response id, so ids from different mocks never collide (the port).
    pub(crate) tag: String,
    pub(crate) responses: ResponseStore,
    pub(crate) azure: Mutex<AzureSettings>,
    control: bool,
    /// Token figures chat and Messages answers report instead of the defaults.
    pub(crate) usage: Mutex<Option<crate::reply::ReportedUsage>>,
}

/// Body of `POST /__mock/replies`.
#[derive(Deserialize)]
struct ScriptedErrors {
    status: u16,
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    times: Option<usize>,
}

/// What Azure routes accept: `None` / empty accept anything.
#[derive(Default)]
pub(crate) struct AzureSettings {
    pub(crate) api_key: Option<String>,
    pub(crate) deployments: Vec<String>,
}

struct Script {
    queue: VecDeque<Reply>,
    default: Reply,
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(config: MockConfig, tag: String) -> Shared {
        Shared {
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: config.default_reply,
            }),
            requests: Mutex::new(Vec::new()),
            record_requests: config.record_requests,
            calls: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            streams: Arc::default(),
            stream_defaults: config.stream_defaults,
            tag,
            responses: ResponseStore::default(),
            azure: Mutex::default(),
            control: config.control,
            usage: Mutex::new(None),
        }
    }

    /// `POST /__mock/replies`: queues scripted errors; None if not a control request.
    fn control(&self, parts: &Parts, body: &[u8]) -> Option<Response<MockBody>> {
        if !self.control || parts.uri.path() != "/__mock/replies" {
            return None;
        }
        let scripted = match serde_json::from_slice::<ScriptedErrors>(body) {
            Ok(scripted) if parts.method == hyper::Method::POST => scripted,
            _ => {
                let message =
                    "POST a JSON body {\"status\": 429, \"retry_after\": 30, \"times\": 1}";
                return Some(json_response(
                    400,
                    wire::error_body(Flavor::OpenAi, 400, message),
                    &[],
                ));
            }
        };
        for _ in 0..scripted.times.unwrap_or(1) {
            let reply = Reply::Error {
                status: scripted.status,
                message: format!("mock-upstream: scripted {} error", scripted.status),
                headers: scripted
                    .retry_after
                    .map(|secs| ("retry-after".to_owned(), secs.to_string()))
                    .into_iter()
                    .collect(),
            };
            self.push(reply);
        }
        Some(json_response(204, Bytes::new(), &[]))
    }

    pub(crate) fn push(&self, reply: Reply) {
        self.script.lock().queue.push_back(reply);
    }

    pub(crate) fn set_default(&self, reply: Reply) {
        self.script.lock().default = reply;
    }

    pub(crate) fn queued(&self) -> usize {
        self.script.lock().queue.len()
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().clone()
    }

    pub(crate) fn last_request(&self) -> Option<RecordedRequest> {
        self.requests.lock().last().cloned()
    }

    /// Records the request (if enabled), counts it, and returns its 1-based sequence number.
    fn record(&self, parts: &Parts, body: &[u8]) -> usize {
        if self.record_requests {
            let recorded = RecordedRequest::from_parts(parts, body);
            self.requests.lock().push(recorded);
        }
        // Counted after recording, so whoever sees `calls() == n` also sees n requests.
        self.calls.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// What Azure checks before anything else: the `api-key` header, `api-version` where the
    /// URL form needs it, and the deployment. `Some((status, body))` refuses the request.
    fn azure_gate(&self, route: &AzureRoute, parts: &Parts) -> Option<(u16, Bytes)> {
        let settings = self.azure.lock();
        let key = parts.headers.get("api-key").and_then(|v| v.to_str().ok());
        let key_ok = match (&settings.api_key, key) {
            (_, None) => false,
            (Some(expected), Some(key)) => key == expected,
            (None, Some(key)) => !key.is_empty(),
        };
        if !key_ok {
            return Some((401, azure::unauthorized()));
        }
        if route.needs_api_version && query_param(parts.uri.query(), "api-version").is_none() {
            return Some((404, azure::resource_not_found()));
        }
        match &route.deployment {
            Some(deployment)
                if !settings.deployments.is_empty()
                    && !settings.deployments.contains(deployment) =>
            {
                Some((404, azure::deployment_not_found()))
            }
            _ => None,
        }
    }

    fn next_reply(&self) -> Reply {
        let mut script = self.script.lock();
        match script.queue.pop_front() {
            Some(reply) => reply,
            None => script.default.clone(),
        }
    }
}

// === serving ===

/// Accepts connections until `stop` fires (or its sender is dropped), then aborts every
/// connection and waits for them to end.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let builder = Arc::new(builder());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.connections.fetch_add(1, Ordering::AcqRel);
                    connections.spawn(serve_connection(
                        stream,
                        Arc::clone(&shared),
                        Arc::clone(&builder),
                    ));
                }
                // Out of file descriptors or similar: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// hyper's connection settings: HTTP/1.1, and HTTP/2 when the client opens with its preface.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS);
    builder
}

/// Serves one connection; returning drops the socket, which is how [`Reply::Drop`] closes it
/// (over HTTP/2 that ends every stream of the connection, as a crashed upstream would).
async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    // Each SSE event is its own small write; Nagle would hold them back.
    stream.set_nodelay(true).ok();
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        hyper::service::service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&kill), req))
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = kill.notified() => {}
    }
}

// === handling ===

/// The fields of a request body the mock looks at.
#[derive(Default, Deserialize)]
struct RequestFields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(default)]
    instructions: Option<serde_json::Value>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    prompt_cache_key: Option<String>,
}

#[derive(Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A request reduced to what the answer depends on.
struct Received {
    endpoint: Endpoint,
    flavor: Flavor,
    fields: RequestFields,
    seq: usize,
    /// The deployment of an Azure deployment URL (echoed as the model if the body has none).
    deployment: Option<String>,
}

async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if let Some(response) = shared.control(&parts, &body) {
        return Ok(response);
    }
    let seq = shared.record(&parts, &body);
    let route = Route::of(&parts.method, parts.uri.path());
    if let Some(azure) = &route.azure {
        if let Some((status, body)) = shared.azure_gate(azure, &parts) {
            return Ok(json_response(status, body, &[]));
        }
    }
    let reply = shared.next_reply();
    let request = Received {
        flavor: route.flavor(parts.headers.contains_key("anthropic-version")),
        deployment: route.azure.and_then(|azure| azure.deployment),
        endpoint: route.endpoint,
        fields: serde_json::from_slice(&body).unwrap_or_default(),
        seq,
    };
    let mut response = respond(&shared, &kill, &parts, &request, reply).await;
    if request.flavor == Flavor::Azure && response.status().is_success() {
        // What Azure reports on every answer.
        let headers = response.headers_mut();
        headers.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("99"),
        );
        headers.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("9990"),
        );
    }
    Ok(response)
}

async fn respond(
    shared: &Shared,
    kill: &Notify,
    parts: &Parts,
    request: &Received,
    mut reply: Reply,
) -> Response<MockBody> {
    loop {
        return match reply {
            Reply::Delay { ms, then } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply = *then;
                continue;
            }
            Reply::Hang => std::future::pending().await,
            Reply::Drop => {
                // The connection task drops the socket; this future is dropped with it.
                kill.notify_one();
                std::future::pending().await
            }
            Reply::Status {
                status,
                body,
                headers,
            } => json_response(status, wire::json_bytes(&body), &headers),
            Reply::Error {
                status,
                message,
                headers,
            } => json_response(
                status,
                wire::error_body(request.flavor, status, &message),
                &headers,
            ),
            Reply::Ok => success(shared, parts, request, None, None),
            Reply::Content(text) => success(shared, parts, request, Some(&text), None),
            Reply::Stream(spec) => success(shared, parts, request, None, Some(&spec)),
        };
    }
}

/// The endpoint's normal answer: `content` overrides the text, `forced` forces a stream.
fn success(
    shared: &Shared,
    parts: &Parts,
    request: &Received,
    content: Option<&str>,
    forced: Option<&StreamSpec>,
) -> Response<MockBody> {
    let fields = &request.fields;
    let streaming = forced.is_some() || fields.stream == Some(true);
    let spec = forced.unwrap_or(&shared.stream_defaults);
    let include_usage = fields
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let meta = Meta {
        seq: request.seq,
        created: unix_now(),
        model: fields
            .model
            .as_deref()
            .or(request.deployment.as_deref())
            .unwrap_or(DEFAULT_MODEL),
        usage: *shared.usage.lock(),
    };
    let text = || match content {
        Some(text) => text.to_owned(),
        None => spec.pieces(None).concat(),
    };
    let pieces = || spec.pieces(content);
    match &request.endpoint {
        Endpoint::ChatCompletions if streaming => {
            let plan = openai::chat_stream(meta, &pieces(), include_usage);
            sse_response(plan, spec, shared)
        }
        Endpoint::ChatCompletions => json_response(200, openai::chat(meta, &text()), &[]),
        Endpoint::Completions if streaming => {
            let plan = openai::completion_stream(meta, &pieces(), include_usage);
            sse_response(plan, spec, shared)
        }
        Endpoint::Completions => json_response(200, openai::completion(meta, &text()), &[]),
        Endpoint::Messages if streaming => {
            sse_response(anthropic::message_stream(meta, &pieces()), spec, shared)
        }
        Endpoint::Messages => json_response(200, anthropic::message(meta, &text()), &[]),
        Endpoint::CountTokens => json_response(200, anthropic::count_tokens_reply(), &[]),
        Endpoint::Embeddings => json_response(
            200,
            openai::embeddings(meta.model, fields.input.as_ref()),
            &[],
        ),
        Endpoint::Models => json_response(
            200,
            match request.flavor {
                Flavor::OpenAi | Flavor::Azure => openai::models(),
                Flavor::Anthropic => anthropic::models(),
            },
            &[],
        ),
        Endpoint::Model(id) => {
            let body = match request.flavor {
                Flavor::OpenAi | Flavor::Azure => openai::model_info(id),
                Flavor::Anthropic => anthropic::model_info(id),
            };
            json_response(200, body, &[])
        }
        Endpoint::CreateResponse => {
            if let Some(previous) = fields.previous_response_id.as_deref() {
                if !shared.responses.knows(previous) {
                    return json_response(404, responses::previous_not_found(previous), &[]);
                }
            }
            let id = format!("resp_mock_{}_{}", shared.tag, request.seq);
            let prompt = prompt_key(
                fields.prompt_cache_key.as_deref(),
                fields.instructions.as_ref(),
                fields.input.as_ref(),
            );
            let background = fields.background == Some(true);
            let response_meta = ResponseMeta {
                meta,
                id: &id,
                previous_response_id: fields.previous_response_id.as_deref(),
                store: fields.store != Some(false),
                background,
                cached_tokens: shared.responses.cached_tokens(prompt),
            };
            let object = ResponseObject::new(&response_meta, &text());
            if response_meta.store {
                shared.responses.keep(object.clone());
            }
            if streaming && !background {
                sse_response(responses::response_stream(&object, &pieces()), spec, shared)
            } else {
                json_response(200, object.to_bytes(), &[])
            }
        }
        Endpoint::GetResponse(id) => match shared.responses.get(id) {
            Some(body) => json_response(200, body, &[]),
            None => json_response(404, responses::not_found(id), &[]),
        },
        Endpoint::DeleteResponse(id) => {
            if shared.responses.delete(id) {
                json_response(200, responses::deleted(id), &[])
            } else {
                json_response(404, responses::not_found(id), &[])
            }
        }
        Endpoint::CancelResponse(id) => match shared.responses.cancel(id) {
            Ok(body) => json_response(200, body, &[]),
            Err(CancelError::NotFound) => json_response(404, responses::not_found(id), &[]),
            Err(CancelError::NotBackground) => {
                json_response(400, responses::not_cancellable(), &[])
            }
        },
        Endpoint::Unknown => {
            let message = format!(
                "mock-upstream: no route for `{} {}`",
                parts.method,
                parts.uri.path()
            );
            json_response(404, wire::error_body(request.flavor, 404, &message), &[])
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// === responses ===

fn json_response(status: u16, body: Bytes, extra: &[(String, String)]) -> Response<MockBody> {
    let mut response = Response::new(MockBody::Full(Some(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    add_headers(&mut response, extra);
    response
}

fn sse_response(plan: SsePlan, spec: &StreamSpec, shared: &Shared) -> Response<MockBody> {
    let body = SseBody::new(plan, spec, Arc::clone(&shared.streams));
    let mut response = Response::new(MockBody::Sse(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Adds scripted headers: the first value of a name replaces a default (e.g. `content-type`),
/// later values of that name are appended. Invalid names or values are skipped.
fn add_headers(response: &mut Response<MockBody>, extra: &[(String, String)]) {
    let headers = response.headers_mut();
    for (i, (name, value)) in extra.iter().enumerate() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        let seen = extra[..i]
            .iter()
            .any(|(earlier, _)| earlier.eq_ignore_ascii_case(name.as_str()));
        if seen {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}
