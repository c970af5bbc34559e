//! Metrics of a real gateway against the real tools: requests through poolgate to mock upstreams
//! (success, failover after a 429, a stream, a refused connection, a refused key, a 5xx, a
//! timeout, a relayed 4xx, a client that leaves, an unknown model, a wrong key) show up in `GET /metrics` with the
//! counts they should have; the exposition passes Debian's `promtool check metrics`; and a real
//! Prometheus, scraping the gateway with the metrics token, answers a PromQL query with the
//! requests sent, split by backend.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;
mod telemetry_support;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{dead_url, eventually, Gateway, ADMIN_TOKEN};
use mock_upstream::{MockUpstream, Reply};
use serde_json::json;
use telemetry_support::{backend, chat, metrics, scrape, sum};
use tokio::time::Instant;

const SCRAPE_TOKEN: &str = "scrape-token-0123456789abcdef";

fn promtool(text: &str) -> (bool, String) {
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
    (output.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_is_counted_and_promtool_accepts_the_exposition() {
    let gw = Gateway::start_with("[metrics]\nclient_key_labels = true\n", None).await;
    let limited = MockUpstream::start().await;
    limited.push(Reply::rate_limited(Some(60)));
    let fine = MockUpstream::start().await;
    let refusing = MockUpstream::start().await;
    refusing.set_default(Reply::unauthorized());
    let failing = MockUpstream::start().await;
    failing.set_default(Reply::server_error());
    let hanging = MockUpstream::start().await;
    hanging.set_default(Reply::Hang);
    let stuck = MockUpstream::start().await;
    stuck.set_default(Reply::Hang);
    let picky = MockUpstream::start().await;
    picky.set_default(Reply::error(400));
    let none = json!({});
    backend(
        &gw,
        "alpha",
        &limited.openai_base_url(),
        "primary",
        "m-x",
        none.clone(),
    )
    .await;
    backend(
        &gw,
        "beta",
        &fine.openai_base_url(),
        "fallback",
        "m-x",
        none.clone(),
    )
    .await;
    backend(
        &gw,
        "gamma",
        &fine.openai_base_url(),
        "primary",
        "m-s",
        json!({"rpm_limit": 600}),
    )
    .await;
    backend(&gw, "dead", &dead_url(), "primary", "m-conn", none.clone()).await;
    backend(
        &gw,
        "badkey",
        &refusing.openai_base_url(),
        "primary",
        "m-key",
        none.clone(),
    )
    .await;
    backend(
        &gw,
        "broken",
        &failing.openai_base_url(),
        "primary",
        "m-5xx",
        none.clone(),
    )
    .await;
    backend(
        &gw,
        "slow",
        &hanging.openai_base_url(),
        "primary",
        "m-slow",
        json!({"timeout_seconds": 1}),
    )
    .await;
    backend(
        &gw,
        "picky",
        &picky.openai_base_url(),
        "primary",
        "m-4xx",
        none,
    )
    .await;
    backend(
        &gw,
        "stuck",
        &stuck.openai_base_url(),
        "primary",
        "m-stuck",
        json!({}),
    )
    .await;
    let (key_id, key) = gw.create_key(json!({"name": "metrics-key"})).await;

    // A client that leaves while its upstream is still thinking: the request closes as cancelled.
    let leaving = tokio::spawn(chat(&gw, "m-stuck", false).send());
    eventually("the stuck upstream has the request", || async {
        stuck.calls() == 1
    })
    .await;
    leaving.abort();

    // The timeout takes a second: it runs while the others go one by one.
    let timed_out = tokio::spawn(chat(&gw, "m-slow", false).send());
    let status = |response: reqwest::Response| response.status().as_u16();
    assert_eq!(status(chat(&gw, "m-x", false).send().await.unwrap()), 200);
    let stream = chat(&gw, "m-s", true).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.text().await.unwrap().contains("[DONE]"));
    assert_eq!(
        status(chat(&gw, "m-conn", false).send().await.unwrap()),
        502
    );
    assert!(status(chat(&gw, "m-key", false).send().await.unwrap()) >= 502);
    assert_eq!(status(chat(&gw, "m-5xx", false).send().await.unwrap()), 502);
    assert_eq!(status(chat(&gw, "m-4xx", false).send().await.unwrap()), 400);
    assert_eq!(
        status(chat(&gw, "no-such-model", false).send().await.unwrap()),
        404
    );
    let with_key = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({"model": "m-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(with_key), 200);
    let wrong_key = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth("pgk-nobody-0000000000000000")
        .json(&json!({"model": "m-x", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(wrong_key), 401);
    assert_eq!(status(timed_out.await.unwrap().unwrap()), 504);
    // Usage records: every request but the unauthenticated one.
    let records = gw.usage_records(10).await.len();
    assert_eq!(records, 10);
    eventually("the usage writer counted every record", || async {
        sum(
            &metrics(&gw).await,
            "poolgate_usage_records_written_total",
            &[],
        ) == Some(10.0)
    })
    .await;

    let text = metrics(&gw).await;
    let (ok, report) = promtool(&text);
    assert!(ok, "promtool: {report}\n{text}");
    assert!(report.trim().is_empty(), "promtool: {report}");

    let get = |name: &str, labels: &[(&str, &str)]| sum(&text, name, labels);
    let attempts = |backend: &str, result: &str| {
        get(
            "poolgate_upstream_attempts_total",
            &[("backend", backend), ("result", result)],
        )
    };
    // Each attempt by how it ended; every result is there from the start (at 0).
    assert_eq!(attempts("alpha", "rate_limited"), Some(1.0));
    assert_eq!(attempts("alpha", "success"), Some(0.0));
    assert_eq!(attempts("beta", "success"), Some(2.0));
    assert_eq!(attempts("gamma", "success"), Some(1.0));
    assert_eq!(attempts("dead", "connect_error"), Some(1.0));
    assert_eq!(attempts("badkey", "bad_key"), Some(1.0));
    assert_eq!(attempts("broken", "server_error"), Some(1.0));
    assert_eq!(attempts("slow", "timeout"), Some(1.0));
    assert_eq!(attempts("picky", "client_error"), Some(1.0));
    assert_eq!(attempts("stuck", "cancelled"), Some(1.0));
    assert_eq!(get("poolgate_upstream_attempts_total", &[]), Some(10.0));
    // The 429 made one retry, into the other pool.
    assert_eq!(
        get(
            "poolgate_retries_total",
            &[("model", "m-x"), ("reason", "rate_limited")]
        ),
        Some(1.0)
    );
    assert_eq!(get("poolgate_retries_total", &[]), Some(1.0));
    assert_eq!(
        get(
            "poolgate_failovers_total",
            &[
                ("model", "m-x"),
                ("from_pool", "primary"),
                ("to_pool", "fallback")
            ]
        ),
        Some(1.0)
    );
    // Requests by where they ended and how.
    let requests = |labels: &[(&str, &str)]| get("poolgate_requests_total", labels);
    assert_eq!(
        requests(&[
            ("model", "m-x"),
            ("pool", "fallback"),
            ("backend", "beta"),
            ("status_class", "2xx"),
            ("outcome", "success")
        ]),
        Some(2.0)
    );
    assert_eq!(
        requests(&[
            ("model", "m-s"),
            ("backend", "gamma"),
            ("outcome", "success")
        ]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[
            ("model", "m-slow"),
            ("status_class", "5xx"),
            ("outcome", "error")
        ]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[
            ("model", "m-4xx"),
            ("backend", "picky"),
            ("status_class", "4xx")
        ]),
        Some(1.0)
    );
    // A made-up model and a wrong key never become series of their own.
    assert_eq!(
        requests(&[("model", "(unrouted)"), ("status_class", "4xx")]),
        Some(2.0)
    );
    assert!(!text.contains("no-such-model"));
    assert_eq!(
        requests(&[
            ("model", "m-stuck"),
            ("status_class", "4xx"),
            ("outcome", "cancelled")
        ]),
        Some(1.0)
    );
    assert_eq!(requests(&[]), Some(11.0));
    assert_eq!(get("poolgate_requests_in_flight", &[]), Some(0.0));
    // Durations: every request has one; the time poolgate adds, every one that reached upstream.
    assert_eq!(
        get("poolgate_request_duration_seconds_count", &[]),
        Some(11.0)
    );
    assert_eq!(get("poolgate_overhead_seconds_count", &[]), Some(9.0));
    assert_eq!(
        get(
            "poolgate_request_ttfb_seconds_count",
            &[("backend", "gamma")]
        ),
        Some(1.0)
    );
    // Tokens (the mock: 10 prompt, 3 completion), the stream's read at its end.
    for backend in ["beta", "gamma"] {
        let count = if backend == "beta" { 2.0 } else { 1.0 };
        assert_eq!(
            get(
                "poolgate_tokens_total",
                &[("backend", backend), ("kind", "prompt")]
            ),
            Some(10.0 * count),
            "{backend}"
        );
        assert_eq!(
            get(
                "poolgate_tokens_total",
                &[("backend", backend), ("kind", "completion")]
            ),
            Some(3.0 * count),
            "{backend}"
        );
    }
    // Client keys by id (opted in), never by secret.
    assert_eq!(
        get(
            "poolgate_client_requests_total",
            &[("client_key", key_id.as_str()), ("status_class", "2xx")]
        ),
        Some(1.0)
    );
    assert!(!text.contains(&key) && !text.contains(ADMIN_TOKEN));
    // Backends at scrape time: alpha cools after its 429, the RPM bucket of gamma is read live.
    let state = |backend: &str, state: &str| {
        get(
            "poolgate_backend_state",
            &[("backend", backend), ("state", state)],
        )
    };
    assert_eq!(state("alpha", "cooling"), Some(1.0));
    assert_eq!(state("alpha", "healthy"), Some(0.0));
    assert_eq!(state("beta", "healthy"), Some(1.0));
    assert_eq!(state("badkey", "error"), Some(1.0));
    let cooldown = get(
        "poolgate_backend_cooldown_remaining_seconds",
        &[("backend", "alpha")],
    )
    .unwrap();
    assert!(cooldown > 50.0 && cooldown <= 60.0, "{cooldown}");
    assert_eq!(
        get("poolgate_backend_rpm_limit", &[("backend", "gamma")]),
        Some(600.0)
    );
    let tokens_left = get(
        "poolgate_backend_rpm_tokens_remaining",
        &[("backend", "gamma")],
    )
    .unwrap();
    assert!((599.0..=600.0).contains(&tokens_left), "{tokens_left}");
    assert_eq!(
        get("poolgate_backend_rpm_limit", &[("backend", "beta")]),
        None
    );
    assert_eq!(get("poolgate_backend_in_flight", &[]), Some(0.0));
    // The writers and the process.
    assert_eq!(get("poolgate_usage_queue_depth", &[]), Some(0.0));
    assert_eq!(get("poolgate_usage_write_errors_total", &[]), Some(0.0));
    assert_eq!(
        get(
            "poolgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(get("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(get("process_open_fds", &[]).unwrap() > 3.0);
    assert!(get("process_cpu_seconds_total", &[]).unwrap() > 0.0);
    gw.stop().await;
}

// === a real Prometheus ===

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

fn start_prometheus(dir: &Path, target: &str) -> (Killed, u16) {
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
async fn prometheus_scrapes_the_gateway_and_counts_the_requests_by_backend() {
    let gw = Gateway::start_with(&format!("[metrics]\ntoken = \"{SCRAPE_TOKEN}\"\n"), None).await;
    let upstream = MockUpstream::start().await;
    let url = upstream.openai_base_url();
    backend(&gw, "alpha", &url, "primary", "m-a", json!({})).await;
    backend(&gw, "beta", &url, "primary", "m-b", json!({})).await;
    for model in ["m-a", "m-a", "m-a", "m-b", "m-b"] {
        let answer = chat(&gw, model, false).send().await.unwrap();
        assert_eq!(answer.status(), 200);
    }

    // Not open to anyone: the admin token and the metrics token only.
    for token in [None, Some("scrape-token-0123456789abcdeX"), Some("pgk-x-y")] {
        let (status, _, body) = scrape(&gw, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body.contains("authentication_error"), "{body}");
    }
    for token in [ADMIN_TOKEN, SCRAPE_TOKEN] {
        let (status, content_type, _) = scrape(&gw, Some(token)).await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4");
    }

    let dir = tempfile::tempdir().unwrap();
    let target = gw.url.trim_start_matches("http://").to_owned();
    let (_prometheus, port) = start_prometheus(dir.path(), &target);
    let promql =
        "sum by (backend) (poolgate_requests_total{status_class=\"2xx\",outcome=\"success\"})";
    let deadline = Instant::now() + Duration::from_secs(90);
    let by_backend = loop {
        let result = query(&gw.client, port, promql).await;
        if let Some(result) = result.filter(|r| r.len() == 2) {
            // Asked after the series arrived: at least one scrape has completed.
            let up = query(&gw.client, port, "up{job=\"poolgate\"}").await;
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
        &gw.client,
        port,
        "sum by (backend) (poolgate_tokens_total{kind=\"completion\"})",
    )
    .await
    .unwrap();
    assert_eq!(
        tokens,
        BTreeMap::from([
            ("backend=alpha".to_owned(), 9.0),
            ("backend=beta".to_owned(), 6.0)
        ])
    );
    let healthy = query(
        &gw.client,
        port,
        "sum(poolgate_backend_state{state=\"healthy\"})",
    )
    .await
    .unwrap();
    assert_eq!(healthy.values().copied().collect::<Vec<_>>(), vec![2.0]);
    gw.stop().await;
}

// === the guide's example alerts ===

/// The `yaml` block after the `<!-- alerts` marker of docs/operations.md.
fn guide_alerts() -> String {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let block = &guide[guide.find("<!-- alerts").expect("the alerts marker")..];
    let yaml = &block[block.find("```yaml\n").unwrap() + "```yaml\n".len()..];
    yaml[..yaml.find("```").unwrap()].to_owned()
}

/// Runs `promtool <args>` in `dir`; (success, output).
fn promtool_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package `prometheus`) is installed");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

#[test]
fn the_guides_example_alerts_are_valid_rules_that_fire_when_they_should() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), guide_alerts()).unwrap();
    let (ok, report) = promtool_in(dir.path(), &["check", "rules", "rules.yml"]);
    assert!(ok, "promtool check rules: {report}");
    assert!(report.contains("7 rules found"), "{report}");

    // alpha is healthy for 5 minutes, then cools for good; beta cools with a break; the usage
    // queue grows by 500 records a minute.
    let tests = r#"
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'poolgate_backend_state{backend="alpha",pool="primary",state="cooling"}'
        values: '0 0 0 0 0 1x20'
      - series: 'poolgate_backend_state{backend="beta",pool="primary",state="cooling"}'
        values: '1 1 1 1 1 1 1 1 0 1x16'
      - series: 'poolgate_usage_queue_depth'
        values: '0+500x25'
    alert_rule_test:
      - eval_time: 13m
        alertname: PoolgateBackendCoolingTenMinutes
        exp_alerts: []
      - eval_time: 16m
        alertname: PoolgateBackendCoolingTenMinutes
        exp_alerts:
          - exp_labels: {severity: warning, backend: alpha, pool: primary, state: cooling}
            exp_annotations:
              summary: "backend alpha (pool primary) has been cooling down for 10 minutes"
      - eval_time: 5m
        alertname: PoolgateUsageQueueGrowing
        exp_alerts: []
      - eval_time: 20m
        alertname: PoolgateUsageQueueGrowing
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "10000 usage records are waiting for the database"
"#;
    std::fs::write(dir.path().join("tests.yml"), tests).unwrap();
    let (ok, report) = promtool_in(dir.path(), &["test", "rules", "tests.yml"]);
    assert!(ok, "promtool test rules: {report}");
}
