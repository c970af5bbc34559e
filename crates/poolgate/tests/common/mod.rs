//! Shared harness for integration tests: a real poolgate (router, SQLite file, background
//! writers) listening on 127.0.0.1:0 in a temp data dir, the `poolgate serve` binary on port 0
//! ([`served`]), and helpers to call them and check what they did.
#![allow(dead_code)]
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test harness")]

pub mod binary;
pub mod served;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_upstream::MockUpstream;
use poolgate::config::{parse_toml, Config, Overrides};
use poolgate::server::{self, Running};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;

pub const ADMIN_TOKEN: &str = "pga-test-admin-token-0123456789abcdef";

/// A running gateway in a temp dir.
pub struct Gateway {
    pub running: Option<Running>,
    pub url: String,
    pub dir: TempDir,
    pub client: reqwest::Client,
    /// [`ADMIN_TOKEN`] unless started with another ([`Gateway::start_with_admin_token`]).
    pub admin_token: String,
}

impl Gateway {
    /// Starts with no config file.
    pub async fn start() -> Gateway {
        Self::start_with("", None).await
    }

    /// Starts with a TOML config (listen and data_dir are set by the harness), optionally
    /// reusing the data dir of a previous gateway (restart).
    pub async fn start_with(toml: &str, dir: Option<TempDir>) -> Gateway {
        Self::start_with_admin_token(toml, dir, ADMIN_TOKEN).await
    }

    /// [`Gateway::start_with`], the admin token being `admin_token`.
    pub async fn start_with_admin_token(
        toml: &str,
        dir: Option<TempDir>,
        admin_token: &str,
    ) -> Gateway {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        std::fs::write(dir.path().join("admin-token"), admin_token).unwrap();
        let config = config_for(toml, dir.path());
        let running = server::start(config, false).await.expect("gateway starts");
        let url = format!("http://{}", running.addr);
        Gateway {
            running: Some(running),
            url,
            dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            admin_token: admin_token.to_owned(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("poolgate.db")
    }

    /// Graceful stop (usage flushed); returns the data dir for a restart.
    pub async fn stop(mut self) -> TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
        self.dir
    }

    /// The running gateway's data plane (its live snapshot).
    pub fn data(&self) -> &poolgate::state::DataPlane {
        &self.running.as_ref().unwrap().data
    }

    /// A request to the admin API with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/admin/api{path}", self.url))
            .bearer_auth(&self.admin_token)
    }

    /// POST /admin/api/backends, asserting 201; returns the created backend.
    pub async fn add_backend(&self, body: Value) -> Value {
        created(self.admin(reqwest::Method::POST, "/backends").json(&body)).await
    }

    /// An OpenAI-style backend pointing at a mock upstream, serving `models` (canonical = upstream
    /// id prefixed with `up-`).
    pub async fn add_openai_backend(
        &self,
        name: &str,
        base_url: &str,
        pool: &str,
        models: &[&str],
    ) -> Value {
        let mappings: serde_json::Map<String, Value> = models
            .iter()
            .map(|m| {
                (
                    (*m).to_owned(),
                    json!({ "upstream_model": format!("up-{m}") }),
                )
            })
            .collect();
        self.add_backend(json!({
            "name": name,
            "api_base_url": base_url,
            "api_key": format!("sk-{name}-secret-key-0001"),
            "pool": pool,
            "model_mappings": mappings,
        }))
        .await
    }

    /// Creates a client key; returns (id, plaintext).
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let response = self
            .admin(reqwest::Method::POST, "/keys")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let value: Value = response.json().await.unwrap();
        (
            value["id"].as_str().unwrap().to_owned(),
            value["key"].as_str().unwrap().to_owned(),
        )
    }

    /// POST to a proxy route with the admin token as client key.
    pub fn proxy(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
    }

    /// A chat completion for `model` (non-streaming), returning (status, body).
    pub async fn chat(&self, model: &str) -> (u16, Value) {
        let response = self
            .proxy("/v1/chat/completions")
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GET /admin/api{path}, as JSON.
    pub async fn admin_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.admin(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The id of the backend named `name` (from GET /admin/api/backends).
    pub async fn backend_id(&self, name: &str) -> String {
        let list: Value = self.admin_get("/backends").await;
        list["data"]
            .as_array()
            .or(list.as_array())
            .unwrap()
            .iter()
            .find(|backend| backend["name"] == name)
            .unwrap_or_else(|| panic!("no backend named {name}: {list}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// POST /admin/api/pools, asserting 201; returns the created pool.
    pub async fn add_pool(&self, name: &str, priority: u32) -> Value {
        created(
            self.admin(reqwest::Method::POST, "/pools")
                .json(&serde_json::json!({"name": name, "priority": priority})),
        )
        .await
    }

    /// GET /admin/api/backends/{id}.
    pub async fn backend(&self, id: &str) -> Value {
        self.admin_get(&format!("/backends/{id}")).await
    }

    /// GET /admin/api/keys: every client key's view.
    pub async fn keys(&self) -> Vec<Value> {
        self.admin_get("/keys").await
    }

    /// The admin view of the client key `id` (from GET /admin/api/keys).
    pub async fn key(&self, id: &str) -> Value {
        self.keys()
            .await
            .into_iter()
            .find(|key| key["id"] == id)
            .unwrap_or_else(|| panic!("no client key {id}"))
    }

    /// Usage records (newest first), polling until at least `count` are written.
    pub async fn usage_records(&self, count: usize) -> Vec<Value> {
        self.usage_records_within(count, Duration::from_secs(10))
            .await
    }

    /// Usage records (newest first), polling up to `wait` until at least `count` are written.
    pub async fn usage_records_within(&self, count: usize, wait: Duration) -> Vec<Value> {
        poll_usage(
            || self.admin(reqwest::Method::GET, "/usage?limit=1000"),
            count,
            wait,
        )
        .await
    }
}

/// Sends a creating request (an admin POST), asserts 201 and returns the created object.
pub async fn created(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    let status = response.status();
    let value: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "creating failed: {value}");
    value
}

/// The records of a usage page request (newest first), polled up to `wait` until at least
/// `count` are stored.
pub async fn poll_usage(
    page: impl Fn() -> reqwest::RequestBuilder,
    count: usize,
    wait: Duration,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let page: Value = page().send().await.unwrap().json().await.unwrap();
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.len() >= count || tokio::time::Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The validated config for a test gateway.
pub fn config_for(toml: &str, data_dir: &Path) -> Config {
    let raw = parse_toml(toml).expect("test config parses");
    let mut config = Config::from_raw(
        raw,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.to_path_buf()),
            ..Overrides::default()
        },
        &|name| std::env::var(name).ok(),
    )
    .expect("test config is valid");
    // Deterministic cooldowns unless a test sets its own.
    if !toml.contains("jitter") {
        config.cooldown.jitter = 0.0;
    }
    config.usage.flush_interval = Duration::from_millis(20);
    config
}

/// Polls `condition` every 20 ms for up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === answers ===

/// One HTTP answer, read whole.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
    /// From sending the request to having the whole body.
    pub took: Duration,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After` in whole seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }

    /// Asserts the OpenAI error shape: `{"error": {"message", "type", "param", "code"}}`.
    pub fn assert_openai_error(&self) {
        let error = &self.json["error"];
        assert!(
            error["message"].is_string() && error["type"].is_string(),
            "not an OpenAI-shaped error (status {}): {}",
            self.status,
            self.text
        );
        let fields = error.as_object().expect("error is an object");
        assert!(
            fields.contains_key("param") && fields.contains_key("code"),
            "error lacks `param`/`code`: {}",
            self.text
        );
    }
}

impl Answer {
    /// Asserts a refusal that waiting never helps (a spent budget or cap): 429 in OpenAI's
    /// shape, `insufficient_quota` / `budget_exceeded`, `x-should-retry: false`, no
    /// `Retry-After`. Returns the message.
    pub fn assert_budget_exceeded(&self) -> &str {
        assert_eq!(self.status, 429, "{self}");
        self.assert_openai_error();
        assert_eq!(self.json["error"]["type"], "insufficient_quota", "{self}");
        assert_eq!(self.json["error"]["code"], "budget_exceeded", "{self}");
        assert_eq!(self.header("x-should-retry"), Some("false"), "{self}");
        assert_eq!(self.header("retry-after"), None, "{self}");
        self.json["error"]["message"].as_str().unwrap()
    }

    /// Asserts a 429 in Anthropic's error shape (`{"type": "error", "error": {"type":
    /// "rate_limit_error", …}}`). Returns the message.
    pub fn assert_anthropic_rate_limited(&self) -> &str {
        assert_eq!(self.status, 429, "{self}");
        assert_eq!(self.json["type"], "error", "{self}");
        assert_eq!(self.json["error"]["type"], "rate_limit_error", "{self}");
        self.json["error"]["message"].as_str().unwrap()
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.text)
    }
}

/// Sends a request and reads the whole answer.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    let response = request.send().await.expect("request reaches the gateway");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        took: started.elapsed(),
    }
}

// === what upstreams saw, what is on disk ===

/// The `authorization` header of the last request the upstream saw.
pub fn bearer_seen(upstream: &MockUpstream) -> String {
    upstream
        .last_request()
        .expect("the upstream saw a request")
        .header("authorization")
        .unwrap_or_default()
        .to_owned()
}

pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Every file under `dir` (recursively) with its bytes.
pub fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_in(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out
}

/// A base URL nothing listens on: connection refused.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}
