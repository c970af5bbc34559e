//! The systems under test, each started on 127.0.0.1 in its own directory under the run's work
//! dir and stopped when dropped: the mock upstream (the `mock-upstream` binary, plus this
//! binary's `mock-429` for cooldown churn), poolgate with a fresh data dir and a generated
//! config, nginx `proxy_pass` with a generated config, the `hyper-floor` proxy (this package's
//! second binary), and LiteLLM proxy from a virtualenv.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hyper::Method;

use crate::load::request_once;
use crate::procs::{free_addr, Child};

/// The binaries the harness runs.
pub struct Bins {
    pub poolgate: PathBuf,
    pub mock: PathBuf,
    /// This harness (for `bench mock-429`).
    pub me: PathBuf,
    /// The floor proxy, next to this harness (it is built with it, not with poolgate).
    pub floor: PathBuf,
    /// Environment given to every poolgate started (`--poolgate-env`).
    pub poolgate_env: Vec<(String, String)>,
    /// TOML appended to every poolgate's config file (`--poolgate-toml`).
    pub poolgate_toml: String,
}

impl Bins {
    /// `poolgate` and `mock-upstream` in `dir` (default: next to this executable).
    pub fn locate(dir: Option<&Path>) -> Result<Bins> {
        let me = std::env::current_exe().context("locating the bench binary")?;
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => me
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("the bench binary has no parent directory"))?,
        };
        let dir = std::fs::canonicalize(&dir)
            .with_context(|| format!("binary directory {}", dir.display()))?;
        let bins = Bins {
            poolgate: dir.join("poolgate"),
            mock: dir.join("mock-upstream"),
            floor: me.with_file_name("hyper-floor"),
            me,
            poolgate_env: Vec::new(),
            poolgate_toml: String::new(),
        };
        for bin in [&bins.poolgate, &bins.mock] {
            if !bin.is_file() {
                bail!(
                    "{} is missing: build it first (`cargo build --release -p poolgate -p mock-upstream`) or pass --bin-dir",
                    bin.display()
                );
            }
        }
        Ok(bins)
    }
}

/// The admin token every poolgate instance gets (`POOLGATE_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "bench-admin-token-not-secret-0123";

/// A POST body that every OpenAI-shaped upstream answers.
fn probe_body(model: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": "ping"}]})
            .to_string(),
    )
}

/// Polls `addr` with a chat completion until it answers 2xx; returns the time from `since`.
async fn wait_until_serving(
    child: &mut Child,
    addr: SocketAddr,
    auth: Option<&str>,
    model: &str,
    since: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let body = probe_body(model);
    loop {
        let answer = request_once(
            addr,
            Method::POST,
            "/v1/chat/completions",
            auth,
            Some(body.clone()),
        )
        .await;
        if let Ok((status, _)) = answer {
            if status.is_success() {
                return Ok(since.elapsed());
            }
        }
        still_starting(child, since, timeout, "serve a request")?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// [`wait_until_serving`] for a plain proxy in front of the mock (nginx, the floor): no key,
/// the mock's own model id, 10 s.
async fn wait_until_forwarding(
    child: &mut Child,
    addr: SocketAddr,
    since: Instant,
) -> Result<Duration> {
    let timeout = Duration::from_secs(10);
    wait_until_serving(child, addr, None, "bench-upstream", since, timeout).await
}

/// An error if `child` exited, or has not managed to `what` within `timeout` of `since`.
fn still_starting(child: &mut Child, since: Instant, timeout: Duration, what: &str) -> Result<()> {
    if !child.running() {
        bail!(
            "{} exited during start-up; see {}",
            child.name(),
            child.log().display()
        );
    }
    if since.elapsed() > timeout {
        bail!(
            "{} did not {what} within {timeout:?}; see {}",
            child.name(),
            child.log().display()
        );
    }
    Ok(())
}

/// Waits for poolgate's "poolgate listening addr=…" log line (it binds port 0, so no port is
/// picked in advance and none can be taken by another process meanwhile); returns the address.
async fn wait_until_listening(child: &mut Child, timeout: Duration) -> Result<SocketAddr> {
    let since = Instant::now();
    loop {
        let log = std::fs::read(child.log()).unwrap_or_default();
        if let Some(addr) = listening_addr(&String::from_utf8_lossy(&log)) {
            return addr
                .parse()
                .with_context(|| format!("{} logged a bad address `{addr}`", child.name()));
        }
        still_starting(child, since, timeout, "log its address")?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The address of the "poolgate listening" line (human format: `addr=…`, JSON: `"addr":"…"`).
/// The log is a file, so poolgate writes it without colours.
fn listening_addr(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|line| line.contains("poolgate listening"))?;
    let start = match line.find("addr=") {
        Some(at) => at + "addr=".len(),
        None => line.find("\"addr\":")? + "\"addr\":".len(),
    };
    let addr: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',')
        .collect();
    Some(addr.trim_matches('"').to_owned())
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

// === mock upstream ===

/// A running mock upstream.
pub struct Mock {
    pub child: Child,
    pub addr: SocketAddr,
}

/// `mock-upstream` with `chunks` content chunks per stream, `gap_ms` before each.
pub fn start_mock(bins: &Bins, name: &str, chunks: u32, gap_ms: u64, logs: &Path) -> Result<Mock> {
    let mut command = Command::new(&bins.mock);
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--stream-chunks",
        &chunks.to_string(),
        "--chunk-gap-ms",
        &gap_ms.to_string(),
    ]);
    let (child, addr) = Child::spawn_listening(name, command, logs, Duration::from_secs(10))?;
    Ok(Mock { child, addr })
}

/// An upstream that answers every request with 429 (no Retry-After).
pub fn start_mock_429(bins: &Bins, logs: &Path) -> Result<Mock> {
    let mut command = Command::new(&bins.me);
    command.args(["mock-429", "--listen", "127.0.0.1:0"]);
    let (child, addr) = Child::spawn_listening("mock-429", command, logs, Duration::from_secs(10))?;
    Ok(Mock { child, addr })
}

// === poolgate ===

/// One `[[backends]]` entry.
pub struct BackendDef {
    pub name: String,
    pub upstream: SocketAddr,
    /// canonical -> upstream model.
    pub models: Vec<(String, String)>,
    pub rpm_limit: u32,
    /// `http_version` (`"http1"`, `"http2"`), when not poolgate's default (`"auto"`).
    pub http_version: Option<&'static str>,
}

/// What a poolgate instance is configured with.
pub struct PoolgateSpec {
    pub name: String,
    pub backends: Vec<BackendDef>,
    /// Short 429 cooldowns (10 ms, no backoff growth, no jitter) so cooling backends churn.
    pub churn_cooldown: bool,
    /// RPM limit of the client key the load uses (0 = unlimited).
    pub client_rpm: u32,
    /// `proxy.max_in_flight`, when not poolgate's default.
    pub max_in_flight: Option<usize>,
    /// More `poolgate serve` arguments (`--redis-url …`, `--database-url …`).
    pub extra_args: Vec<String>,
}

impl PoolgateSpec {
    fn toml(&self) -> String {
        let mut text = String::from("[proxy]\nmax_attempts = 5\n");
        if let Some(max) = self.max_in_flight {
            let _ = writeln!(text, "max_in_flight = {max}");
        }
        text.push('\n');
        if self.churn_cooldown {
            text.push_str(
                "[cooldown]\nbase_seconds = 0.01\nmax_seconds = 0.01\njitter = 0.0\nerror_seconds = 1\n\n",
            );
        }
        for backend in &self.backends {
            let _ = write!(
                text,
                "[[backends]]\nname = \"{}\"\napi_base_url = \"http://{}/v1\"\napi_key = \"sk-bench-{}\"\nrpm_limit = {}\n",
                backend.name, backend.upstream, backend.name, backend.rpm_limit
            );
            if let Some(version) = backend.http_version {
                let _ = writeln!(text, "http_version = \"{version}\"");
            }
            text.push_str("[backends.model_mappings]\n");
            for (canonical, upstream) in &backend.models {
                let _ = writeln!(text, "\"{canonical}\" = \"{upstream}\"");
            }
            text.push('\n');
        }
        text
    }

    fn probe_model(&self) -> Result<&str> {
        self.backends
            .first()
            .and_then(|b| b.models.first())
            .map(|(canonical, _)| canonical.as_str())
            .ok_or_else(|| anyhow!("poolgate spec `{}` has no model", self.name))
    }
}

/// A running poolgate.
pub struct Poolgate {
    pub child: Child,
    pub addr: SocketAddr,
    /// A client key (`pgk-…`) created through the admin API.
    pub key: String,
    /// Spawn -> first proxied request answered 2xx.
    pub startup: Duration,
}

/// Starts poolgate with a fresh data dir under `work/<name>`, waits for the first proxied
/// request to succeed (that time is the start-up time), then creates a client key.
pub async fn start_poolgate(
    bins: &Bins,
    spec: &PoolgateSpec,
    work: &Path,
    logs: &Path,
) -> Result<Poolgate> {
    start_poolgate_with(bins, spec, "", work, logs).await
}

/// [`start_poolgate`] with `extra_toml` appended to the config file (its own tables, such as
/// `[metrics]` and `[telemetry]`). The `OTEL_*` variables of the harness are not passed on:
/// what is measured is what the config file says.
pub async fn start_poolgate_with(
    bins: &Bins,
    spec: &PoolgateSpec,
    extra_toml: &str,
    work: &Path,
    logs: &Path,
) -> Result<Poolgate> {
    let dir = work.join(&spec.name);
    fresh_dir(&dir)?;
    let config = dir.join("poolgate.toml");
    std::fs::write(
        &config,
        format!("{}{extra_toml}\n{}", spec.toml(), bins.poolgate_toml),
    )?;
    let mut command = Command::new(&bins.poolgate);
    command
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .args(&spec.extra_args)
        .env("POOLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("POOLGATE_MASTER_KEY")
        .env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.envs(bins.poolgate_env.iter().map(|(k, v)| (k, v)));
    let started = Instant::now();
    let mut child = Child::spawn(&spec.name, command, logs)?;
    let addr = wait_until_listening(&mut child, Duration::from_secs(30)).await?;
    let startup = wait_until_serving(
        &mut child,
        addr,
        Some(ADMIN_TOKEN),
        spec.probe_model()?,
        started,
        Duration::from_secs(30),
    )
    .await?;
    let request = serde_json::json!({"name": "bench", "rpm_limit": spec.client_rpm});
    let (status, body) = request_once(
        addr,
        Method::POST,
        "/admin/api/keys",
        Some(ADMIN_TOKEN),
        Some(Bytes::from(request.to_string())),
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("creating a client key answered {status}"))?;
    let key = answer["key"]
        .as_str()
        .ok_or_else(|| anyhow!("creating a client key answered {status}: {answer}"))?
        .to_owned();
    Ok(Poolgate {
        child,
        addr,
        key,
        startup,
    })
}

// === nginx ===

/// The nginx binary, if installed.
pub fn nginx_binary() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/nginx"),
        PathBuf::from("/usr/bin/nginx"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nginx")));
    }
    candidates.into_iter().find(|path| path.is_file())
}

/// `nginx -v` (it prints to stderr).
pub fn nginx_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("-v")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stderr).trim().to_owned())
        .unwrap_or_default()
}

/// A running nginx (master + workers).
pub struct Nginx {
    pub child: Child,
    pub addr: SocketAddr,
}

/// A plain reverse proxy: HTTP/1.1 keep-alive to the upstream, no buffering (for SSE), no
/// access log, `auto` workers (one per core).
pub async fn start_nginx(
    binary: &Path,
    upstream: SocketAddr,
    work: &Path,
    logs: &Path,
) -> Result<Nginx> {
    let prefix = work.join("nginx");
    // nginx cannot bind port 0 and say which port it got: a free port is picked first, and if
    // another process takes it before nginx binds it, nginx is started again on a new one.
    let mut attempts_left = 3;
    loop {
        attempts_left -= 1;
        match start_nginx_once(binary, upstream, &prefix, logs).await {
            Ok(nginx) => return Ok(nginx),
            Err(error) if attempts_left > 0 && port_was_taken(&prefix) => {
                eprintln!("nginx: its port was taken ({error:#}); starting it on another");
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether nginx's error log says its listening address was in use.
fn port_was_taken(prefix: &Path) -> bool {
    std::fs::read_to_string(prefix.join("error.log"))
        .is_ok_and(|log| log.contains("Address already in use"))
}

async fn start_nginx_once(
    binary: &Path,
    upstream: SocketAddr,
    prefix: &Path,
    logs: &Path,
) -> Result<Nginx> {
    fresh_dir(prefix)?;
    let addr = free_addr()?;
    let p = prefix.display();
    let config = format!(
        r#"worker_processes auto;
worker_rlimit_nofile 20000;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {{
        server {upstream};
        keepalive 512;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"#
    );
    let file = prefix.join("nginx.conf");
    std::fs::write(&file, config)?;
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&file)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .args(["-g", "daemon off;"]);
    let started = Instant::now();
    let mut child = Child::spawn("nginx", command, logs)?;
    wait_until_forwarding(&mut child, addr, started).await?;
    Ok(Nginx { child, addr })
}

// === the floor ===

/// A running `hyper-floor`.
pub struct Floor {
    pub child: Child,
    pub addr: SocketAddr,
}

/// `hyper-floor` in front of `upstream`, once it has forwarded a chat completion.
pub async fn start_floor(bins: &Bins, upstream: SocketAddr, logs: &Path) -> Result<Floor> {
    if !bins.floor.is_file() {
        bail!(
            "{} is missing: build it (`cargo build --release -p bench --bin hyper-floor`)",
            bins.floor.display()
        );
    }
    let mut command = Command::new(&bins.floor);
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream.to_string(),
    ]);
    let started = Instant::now();
    let (mut child, addr) =
        Child::spawn_listening("hyper-floor", command, logs, Duration::from_secs(10))?;
    wait_until_forwarding(&mut child, addr, started).await?;
    Ok(Floor { child, addr })
}

// === LiteLLM ===

/// The LiteLLM release the harness installs (newer releases move the proxy extra into a
/// separate `litellm-proxy` package).
pub const LITELLM_VERSION: &str = "1.80.0";

/// `<out>/litellm-venv` with `litellm[proxy]==LITELLM_VERSION`, created on first use.
pub fn ensure_litellm(out: &Path, logs: &Path) -> Result<PathBuf> {
    let venv = out.join("litellm-venv");
    let marker = venv.join(format!(".bench-litellm-{LITELLM_VERSION}"));
    if marker.is_file() {
        return Ok(venv);
    }
    eprintln!(
        "bench: installing litellm[proxy]=={LITELLM_VERSION} into {} (a few minutes, once)",
        venv.display()
    );
    let log = std::fs::File::create(logs.join("litellm-install.log"))?;
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .status()
        .context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv failed; see litellm-install.log");
    }
    let status = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            &format!("litellm[proxy]=={LITELLM_VERSION}"),
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!("pip install litellm[proxy] failed; see litellm-install.log");
    }
    std::fs::write(&marker, LITELLM_VERSION)?;
    Ok(venv)
}

/// A running LiteLLM proxy.
pub struct LiteLlm {
    pub child: Child,
    pub addr: SocketAddr,
    pub startup: Duration,
}

/// LiteLLM proxy with one model `bench` -> the mock, no database, no auth, `workers` workers.
pub async fn start_litellm(
    venv: &Path,
    upstream: SocketAddr,
    workers: u32,
    work: &Path,
    logs: &Path,
) -> Result<LiteLlm> {
    let dir = work.join(format!("litellm-{workers}"));
    fresh_dir(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench-upstream\n      api_base: http://{upstream}/v1\n      api_key: sk-bench\nlitellm_settings:\n  drop_params: true\n  telemetry: false\n"
        ),
    )?;
    let addr = free_addr()?;
    let mut command = Command::new(venv.join("bin/litellm"));
    command
        .arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--num_workers", &workers.to_string()])
        .current_dir(&dir)
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_TELEMETRY", "False")
        .env("NO_DOCS", "True")
        .env_remove("DATABASE_URL")
        .env_remove("LITELLM_MASTER_KEY");
    let started = Instant::now();
    let mut child = Child::spawn(&format!("litellm-{workers}"), command, logs)?;
    let startup = wait_until_serving(
        &mut child,
        addr,
        None,
        "bench",
        started,
        Duration::from_secs(180),
    )
    .await?;
    Ok(LiteLlm {
        child,
        addr,
        startup,
    })
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn the_listening_address_is_read_from_either_log_format() {
        let human = "2026-11-30T10:00:00.000000Z  INFO poolgate::server: poolgate listening addr=127.0.0.1:40123 instance=\"a\"\n";
        assert_eq!(listening_addr(human).as_deref(), Some("127.0.0.1:40123"));
        let json =
            r#"{"fields":{"message":"poolgate listening","addr":"127.0.0.1:8080","backends":1}}"#;
        assert_eq!(listening_addr(json).as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(listening_addr("INFO migrations applied\n"), None);
    }
}
