//! Metrics against the real tools: the rendered exposition passes Debian's `promtool check
//! metrics`, and a real Prometheus scrapes it (bearer token) from a server on 127.0.0.1:0; a
//! PromQL query returns the requests recorded, split by backend.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod telemetry_support;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use poolgate::domain::{ApiKind, Outcome};
use poolgate::telemetry::settings::{MetricsSettings, RawMetrics, RawTelemetry};
use poolgate::telemetry::{
    AttemptEnd, AttemptResult, BackendLabels, Observer, ObserverOptions, RequestEnd,
    TelemetrySettings, TokenCounts, CONTENT_TYPE,
};
use secrecy::SecretString;
use telemetry_support::chat;
use tokio::net::TcpListener;
use tokio::time::Instant;

const ADMIN_TOKEN: &str = "pga-test-admin-token-0123456789abcdef";
const SCRAPE_TOKEN: &str = "scrape-token-0123456789abcdef";

fn record_requests(observer: &Observer, backend: &str, pool: &str, count: usize) {
    let handle = observer.backend(BackendLabels {
        name: backend,
        pool,
        api: ApiKind::Openai,
        api_base_url: "http://127.0.0.1:9/v1",
    });
    let route = observer.route("gpt-4o", &handle);
    let model = observer.model("gpt-4o");
    let headers = HeaderMap::new();
    for _ in 0..count {
        let mut request = observer.start_request(chat(&model, &headers, "req_test", false));
        request.start_attempt(&route, "gpt-4o-2024-08-06");
        request.first_byte();
        request.end_attempt(AttemptEnd::result(AttemptResult::Success, Some(200)));
        request.finish(RequestEnd {
            request_id: "req_test",
            client_key_id: Some("key_1"),
            status: 200,
            outcome: Outcome::Success,
            error_kind: None,
            tokens: TokenCounts {
                prompt: Some(10),
                completion: Some(20),
                cached: Some(2),
            },
            response_model: Some("gpt-4o-2024-08-06"),
            cost_usd: Some(0.001),
        });
    }
}

fn populated_observer() -> Observer {
    let observer = Observer::new(
        ObserverOptions {
            client_key_labels: true,
            access_log: false,
            ..ObserverOptions::default()
        },
        None,
    )
    .unwrap();
    record_requests(&observer, "alpha", "primary", 3);
    record_requests(&observer, "beta", "fallback", 2);
    observer.metrics().store_errors().error("usage_insert");
    observer.metrics().usage().records_written.inc_by(5);
    observer
}

#[test]
fn promtool_accepts_the_rendered_metrics() {
    let text = populated_observer().render();
    assert!(text.contains("poolgate_requests_total{"), "{text}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) is installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool: {report}\n{text}");
    assert!(report.trim().is_empty(), "promtool: {report}");
}

// === a real Prometheus ===

struct ScrapeTarget {
    observer: Observer,
    settings: Arc<MetricsSettings>,
    admin_token: SecretString,
}

/// What the gateway's `GET /metrics` will do: admin or metrics token, text format.
async fn metrics(State(target): State<Arc<ScrapeTarget>>, headers: HeaderMap) -> impl IntoResponse {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !target.settings.allows(presented, &target.admin_token) {
        return (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    }
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        target.observer.render(),
    )
        .into_response()
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The TCP port a process listens on on 127.0.0.1, found through its socket inodes in /proc
/// (Prometheus binds port 0 itself; nothing picks a port beforehand).
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (address, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        let (host, port) = address.split_once(':')?;
        (*state == "0A" && host == "0100007F" && inodes.contains(*inode))
            .then(|| u16::from_str_radix(port, 16).ok())
            .flatten()
    })
}

fn start_prometheus(dir: &Path, target: std::net::SocketAddr) -> (Killed, u16) {
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: poolgate\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
         \x20   authorization:\n      credentials: {SCRAPE_TOKEN}\n\
         \x20   static_configs:\n      - targets: ['{target}']\n"
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package `prometheus`) is installed");
    let pid = child.id();
    let process = Killed(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(port) = listening_port(pid) {
            return (process, port);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a PromQL instant query; returns label set -> value.
async fn query(
    client: &reqwest::Client,
    prometheus: u16,
    promql: &str,
) -> Option<BTreeMap<String, f64>> {
    let response = client
        .get(format!("http://127.0.0.1:{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    let results = body["data"]["result"].as_array()?;
    Some(
        results
            .iter()
            .map(|result| {
                let label = result["metric"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let value = result["value"][1].as_str().unwrap().parse().unwrap();
                (label, value)
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_requests_split_by_backend() {
    let settings = TelemetrySettings::from_raw(
        RawMetrics {
            token: Some("env:TEST_SCRAPE_TOKEN".into()),
            ..RawMetrics::default()
        },
        RawTelemetry::default(),
        &|name| (name == "TEST_SCRAPE_TOKEN").then(|| SCRAPE_TOKEN.to_owned()),
    )
    .unwrap();
    let target = Arc::new(ScrapeTarget {
        observer: populated_observer(),
        settings: Arc::new(settings.metrics),
        admin_token: SecretString::from(ADMIN_TOKEN.to_owned()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&target));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Not open to anyone.
    let url = format!("http://{address}/metrics");
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let admin = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert_eq!(admin.headers()["content-type"], "text/plain; version=0.0.4");

    let dir = tempfile::tempdir().unwrap();
    let (_prometheus, port) = start_prometheus(dir.path(), address);
    let promql =
        "sum by (backend) (poolgate_requests_total{status_class=\"2xx\",outcome=\"success\"})";
    let deadline = Instant::now() + Duration::from_secs(90);
    let by_backend = loop {
        let result = query(&client, port, promql).await;
        if let Some(result) = result.filter(|r| r.len() == 2) {
            // Asked after the series arrived: at least one scrape has completed.
            let up = query(&client, port, "up{job=\"poolgate\"}").await;
            assert_eq!(
                up.and_then(|up| up.values().next().copied()),
                Some(1.0),
                "the scrape target is up"
            );
            break result;
        }
        assert!(Instant::now() < deadline, "prometheus never had the series");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        by_backend,
        BTreeMap::from([
            ("backend=alpha".to_owned(), 3.0),
            ("backend=beta".to_owned(), 2.0)
        ])
    );
    let tokens = query(
        &client,
        port,
        "sum by (backend) (poolgate_tokens_total{kind=\"completion\"})",
    )
    .await
    .unwrap();
    assert_eq!(
        tokens,
        BTreeMap::from([
            ("backend=alpha".to_owned(), 60.0),
            ("backend=beta".to_owned(), 40.0)
        ])
    );
    server.abort();
}
