//! The real `poolgate serve` binary with a config file, the test admin token and helpers to call
//! its admin API and proxy routes — for the tests that need the process itself: its open-file
//! limit, its memory, a `kill -9`, a restart, its log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::served::{poolgate_command, Served};
use super::{created, poll_usage, ADMIN_TOKEN};

/// A running `poolgate serve` on 127.0.0.1:0.
pub struct Binary {
    pub served: Served,
    pub url: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
}

/// The command line of `poolgate serve` for `data_dir` with `toml` as its config file.
pub fn serve_command(data_dir: &Path, toml: &str) -> Command {
    let config = data_dir.join("poolgate.toml");
    std::fs::write(&config, toml).unwrap();
    let data = data_dir.to_str().unwrap().to_owned();
    let config = config.to_str().unwrap().to_owned();
    poolgate_command(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--config",
            &config,
        ],
        &[("POOLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
}

impl Binary {
    /// Starts the binary on `data_dir` (created if needed) with `toml` as its config file.
    pub async fn start(data_dir: &Path, toml: &str) -> Binary {
        Self::start_command(data_dir, serve_command(data_dir, toml)).await
    }

    /// Starts `command` (built by [`serve_command`], possibly wrapped) and waits until it
    /// listens.
    pub async fn start_command(data_dir: &Path, command: Command) -> Binary {
        let mut served = Served::spawn_command(command);
        let url = served.url().await;
        Binary {
            served,
            url,
            data_dir: data_dir.to_path_buf(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// The `host:port` it listens on.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(mut self) -> String {
        self.served.sigterm();
        let status = self.served.exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{status}\n{}", self.served.log());
        self.served.log()
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/admin/api{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// POST /admin/api/backends, asserting 201; returns the created backend.
    pub async fn add_backend(&self, body: Value) -> Value {
        created(self.admin(reqwest::Method::POST, "/backends").json(&body)).await
    }

    /// An OpenAI backend serving `model` (upstream id `up-<model>`) at `base_url`.
    pub async fn add_openai_backend(&self, name: &str, base_url: &str, model: &str) -> Value {
        self.add_backend(json!({
            "name": name,
            "api_base_url": base_url,
            "api_key": format!("sk-{name}-secret-key-0001"),
            "model_mappings": {model: format!("up-{model}")},
        }))
        .await
    }

    /// POST to a proxy route with the admin token as client key.
    pub fn proxy(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Usage records (newest first), polling up to 10 s until at least `count` are stored.
    pub async fn usage_records(&self, count: usize) -> Vec<Value> {
        let page = || self.admin(reqwest::Method::GET, "/usage?limit=1000");
        poll_usage(page, count, Duration::from_secs(10)).await
    }

    /// The process's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.served.pid()).unwrap()
    }
}

/// The resident memory (VmRSS) of a process, in bytes (`None` once it is gone).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}
