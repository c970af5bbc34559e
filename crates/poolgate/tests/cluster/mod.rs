//! A cluster for integration tests: a real PostgreSQL (and, when asked, a real Redis) started by
//! the tests on free ports on 127.0.0.1, one master key file every instance reads, and N
//! in-process gateways (`server::start`, each in its own data dir, listening on 127.0.0.1:0)
//! sharing them — started at the same moment, as a rolling deploy or a restart would.
//!
//! Include it with `mod common; mod services; mod cluster;`.
#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness (included by several test crates)"
)]

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use poolgate::crypto::MasterKey;
use secrecy::ExposeSecret;
use serde_json::Value;
use tempfile::TempDir;

use crate::common::{send, Answer, Gateway};
use crate::services::{PostgresServer, RedisServer};

/// The canonical model every backend of these tests serves (as upstream model `up-m`).
pub const MODEL: &str = "m";

pub struct Cluster {
    pub postgres: PostgresServer,
    pub redis: Option<RedisServer>,
    pub database_url: String,
    /// Holds `master.key`, shared by every instance.
    keys: TempDir,
    /// The TOML every instance starts with (before its own keys).
    pub toml: String,
    /// Lines of the `[redis]` table besides `url`.
    redis_settings: String,
    pub instances: Vec<Gateway>,
}

/// A backend entry for the config file: `name` at `url` in `pool` serving [`MODEL`], plus
/// `extra` lines (`rpm_limit = 60`).
pub fn backend_toml(name: &str, url: &str, pool: &str, extra: &str) -> String {
    format!(
        "[[backends]]\nname = \"{name}\"\napi_base_url = \"{url}\"\napi_key = \"sk-{name}-secret-key-0001\"\npool = \"{pool}\"\n{extra}\n[backends.model_mappings]\n{MODEL} = \"up-{MODEL}\"\n"
    )
}

impl Cluster {
    /// PostgreSQL (+ Redis when `redis` is given: the `[redis]` settings besides `url`), then
    /// `n` instances started together with `toml` (tables only: `[cooldown]`, `[[backends]]`,
    /// …).
    pub async fn start(n: usize, redis: Option<&str>, toml: &str) -> Cluster {
        let redis_settings = redis.unwrap_or_default().to_owned();
        let (postgres, redis) = tokio::join!(PostgresServer::start(), async {
            if redis.is_some() {
                Some(RedisServer::start().await)
            } else {
                None
            }
        });
        let database_url = postgres.create_database("cluster").await;
        let keys = tempfile::tempdir().unwrap();
        std::fs::write(
            keys.path().join("master.key"),
            MasterKey::generate().to_base64().expose_secret(),
        )
        .unwrap();
        let mut cluster = Cluster {
            postgres,
            redis,
            database_url,
            keys,
            toml: toml.to_owned(),
            redis_settings,
            instances: Vec::new(),
        };
        let starting: Vec<String> = (0..n).map(|i| cluster.instance_toml(i)).collect();
        cluster.instances =
            join_all(starting.iter().map(|toml| Gateway::start_with(toml, None))).await;
        cluster
    }

    pub fn key_file(&self) -> PathBuf {
        self.keys.path().join("master.key")
    }

    /// The whole config of instance `i`.
    pub fn instance_toml(&self, i: usize) -> String {
        let redis = self
            .redis
            .as_ref()
            .map(|redis| {
                format!(
                    "[redis]\nurl = \"{}\"\n{}\n",
                    redis.url(),
                    self.redis_settings
                )
            })
            .unwrap_or_default();
        format!(
            "database_url = \"{}\"\ninstance_id = \"node-{i}\"\nmaster_key_file = \"{}\"\n{}\n{redis}",
            self.database_url,
            self.key_file().display(),
            self.toml,
        )
    }

    /// GET `/admin/api/cluster` of instance `i`.
    pub async fn view(&self, i: usize) -> Value {
        send(self.instances[i].admin(reqwest::Method::GET, "/cluster"))
            .await
            .json
    }

    /// The runtime state mode every instance reports (`shared`, `degraded`, `local`).
    pub async fn modes(&self) -> Vec<String> {
        let mut modes = Vec::new();
        for i in 0..self.instances.len() {
            let view = self.view(i).await;
            modes.push(
                view["runtime_state"]["mode"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            );
        }
        modes
    }

    /// Stops every instance gracefully (usage flushed).
    pub async fn stop(self) {
        for gateway in self.instances {
            gateway.stop().await;
        }
    }
}

/// A chat completion for [`MODEL`] through `gateway`, with the admin token as client key.
pub async fn chat(gateway: &Gateway) -> Answer {
    send(gateway.proxy("/v1/chat/completions").json(
        &serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ))
    .await
}

/// A chat completion with a client key.
pub async fn chat_as(gateway: &Gateway, key: &str) -> Answer {
    send(
        gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(key)
            .json(&serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
}

/// Polls `condition` every 20 ms for up to `limit`; returns how long it took to hold.
pub async fn within<F, Fut>(what: &str, limit: Duration, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < limit,
            "{what}: did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}
