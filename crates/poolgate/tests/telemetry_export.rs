//! Telemetry against the real tools: the rendered metrics pass Debian's `promtool check
//! metrics`; a real Prometheus scrapes them (bearer token) from a server on 127.0.0.1:0 and a
//! PromQL query returns the requests recorded, split by backend; traces arrive at an OTLP/HTTP
//! receiver on 127.0.0.1:0 as real protobuf with the parent/child spans, attributes and the
//! client's trace id.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use poolgate::domain::{ApiKind, Outcome};
use poolgate::telemetry::settings::{MetricsSettings, RawMetrics, RawTelemetry};
use poolgate::telemetry::{
    AttemptEnd, AttemptResult, BackendLabels, Observer, ObserverOptions, Operation, RequestEnd,
    RequestStart, RouteHandle, TelemetrySettings, TokenCounts, TraceConfig, TraceSettings, Tracing,
    CONTENT_TYPE,
};
use prost::Message;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

const ADMIN_TOKEN: &str = "pga-test-admin-token-0123456789abcdef";
const SCRAPE_TOKEN: &str = "scrape-token-0123456789abcdef";

/// A chat request received now.
fn chat<'a>(
    model: &'a RouteHandle,
    headers: &'a HeaderMap,
    request_id: &'a str,
    stream: bool,
) -> RequestStart<'a> {
    RequestStart {
        received: Instant::now(),
        request_id,
        model,
        operation: Operation::Chat,
        http_route: "/v1/chat/completions",
        stream,
        headers,
    }
}

/// Feeds `count` finished chat requests through `observer`, each answered by `backend`.
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

// === an OTLP/HTTP receiver ===

async fn receive_traces(
    State(sender): State<mpsc::UnboundedSender<(HeaderMap, Bytes)>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let _ = sender.send((headers, body));
    StatusCode::OK
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key) {
        Some(AnyValue::StringValue(value)) => Some(value),
        _ => None,
    }
}

fn int_attribute(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(AnyValue::IntValue(value)) => Some(*value),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_receiver_with_parent_and_child_spans() {
    let (sender, mut received) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(receive_traces))
        .with_state(sender);
    let receiver = tokio::spawn(async move { axum::serve(listener, app).await });

    let env = BTreeMap::from([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ]);
    let trace_settings =
        TraceSettings::resolve(&TraceConfig::default(), |name| env.get(name).cloned())
            .unwrap()
            .expect("an endpoint turns tracing on");
    assert_eq!(trace_settings.endpoint, format!("{collector}/v1/traces"));
    let tracing = Tracing::start(&trace_settings).unwrap();
    let observer = Observer::new(ObserverOptions::default(), Some(&tracing)).unwrap();
    assert!(observer.tracing_enabled());

    let primary = observer.backend(BackendLabels {
        name: "alpha",
        pool: "primary",
        api: ApiKind::Openai,
        api_base_url: "https://api.openai.example:8443/v1",
    });
    let fallback = observer.backend(BackendLabels {
        name: "claude",
        pool: "fallback",
        api: ApiKind::Anthropic,
        api_base_url: "https://api.anthropic.example",
    });
    let model = observer.model("gpt-4o");
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut incoming = HeaderMap::new();
    incoming.insert(
        "traceparent",
        format!("00-{client_trace}-{client_span}-01")
            .parse()
            .unwrap(),
    );
    let mut request = observer.start_request(chat(&model, &incoming, "req_trace", true));

    request.start_attempt(&observer.route("gpt-4o", &primary), "gpt-4o-2024-08-06");
    let mut first_upstream = HeaderMap::new();
    request.inject_trace_context(&mut first_upstream);
    request.end_attempt(AttemptEnd::result(AttemptResult::RateLimited, Some(429)));

    request.start_attempt(&observer.route("gpt-4o", &fallback), "claude-sonnet-4");
    let mut second_upstream = HeaderMap::new();
    request.inject_trace_context(&mut second_upstream);
    request.first_byte();
    // A stream: the attempt ends with the request.
    request.finish(RequestEnd {
        request_id: "req_trace",
        client_key_id: Some("key_1"),
        status: 200,
        outcome: Outcome::Success,
        error_kind: None,
        tokens: TokenCounts {
            prompt: Some(11),
            completion: Some(22),
            cached: Some(3),
        },
        response_model: Some("claude-sonnet-4-20250514"),
        cost_usd: None,
    });

    // The client said "not sampled": the default parent-based sampler records nothing, and
    // the upstream still gets the client's trace id with the flag kept.
    let mut unsampled = HeaderMap::new();
    unsampled.insert(
        "traceparent",
        format!("00-{client_trace}-{client_span}-00")
            .parse()
            .unwrap(),
    );
    let mut quiet = observer.start_request(chat(&model, &unsampled, "req_unsampled", false));
    quiet.start_attempt(&observer.route("gpt-4o", &primary), "gpt-4o-2024-08-06");
    let mut quiet_upstream = HeaderMap::new();
    quiet.inject_trace_context(&mut quiet_upstream);
    let quiet_parent = quiet_upstream["traceparent"].to_str().unwrap().to_owned();
    assert!(
        quiet_parent.starts_with(&format!("00-{client_trace}-")) && quiet_parent.ends_with("-00"),
        "{quiet_parent}"
    );
    quiet.end_attempt(AttemptEnd::result(AttemptResult::Success, Some(200)));
    quiet.finish(RequestEnd {
        request_id: "req_unsampled",
        client_key_id: None,
        status: 200,
        outcome: Outcome::Success,
        error_kind: None,
        tokens: TokenCounts::default(),
        response_model: None,
        cost_usd: None,
    });
    tracing.shutdown().await;

    // Everything the exporter sent, decoded from the real protobuf.
    let mut spans = Vec::new();
    let mut service_names = HashSet::new();
    while let Ok((headers, body)) = received.try_recv() {
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let export = ExportTraceServiceRequest::decode(body).unwrap();
        for resource_spans in export.resource_spans {
            if let Some(resource) = &resource_spans.resource {
                for kv in &resource.attributes {
                    if kv.key == "service.name" {
                        if let Some(AnyValue::StringValue(name)) =
                            kv.value.as_ref().and_then(|v| v.value.as_ref())
                        {
                            service_names.insert(name.clone());
                        }
                    }
                }
            }
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    assert_eq!(
        service_names,
        HashSet::from(["poolgate".to_owned()]),
        "service.name"
    );
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(server.len(), 1);
    let server = server[0];
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    attempts.sort_by_key(|s| int_attribute(s, "poolgate.attempt"));
    assert_eq!(attempts.len(), 2);

    // The client's trace continues: same trace id, parent = the client's span.
    assert_eq!(hex(&server.trace_id), client_trace);
    assert_eq!(hex(&server.parent_span_id), client_span);
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(
        string_attribute(server, "gen_ai.operation.name"),
        Some("chat")
    );
    assert_eq!(
        string_attribute(server, "gen_ai.request.model"),
        Some("gpt-4o")
    );
    assert_eq!(
        string_attribute(server, "gen_ai.response.model"),
        Some("claude-sonnet-4-20250514")
    );
    assert_eq!(int_attribute(server, "gen_ai.usage.input_tokens"), Some(11));
    assert_eq!(
        int_attribute(server, "gen_ai.usage.output_tokens"),
        Some(22)
    );
    assert_eq!(
        int_attribute(server, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(int_attribute(server, "poolgate.attempts"), Some(2));
    assert_eq!(
        string_attribute(server, "poolgate.outcome"),
        Some("success")
    );
    assert_eq!(string_attribute(server, "poolgate.backend"), Some("claude"));
    assert_eq!(
        string_attribute(server, "poolgate.request_id"),
        Some("req_trace")
    );

    for attempt in &attempts {
        assert_eq!(hex(&attempt.trace_id), client_trace);
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(
            string_attribute(attempt, "gen_ai.operation.name"),
            Some("chat")
        );
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(first.name, "chat gpt-4o-2024-08-06");
    assert_eq!(
        string_attribute(first, "gen_ai.provider.name"),
        Some("openai")
    );
    assert_eq!(string_attribute(first, "gen_ai.system"), Some("openai"));
    assert_eq!(
        string_attribute(first, "gen_ai.request.model"),
        Some("gpt-4o-2024-08-06")
    );
    assert_eq!(
        string_attribute(first, "server.address"),
        Some("api.openai.example")
    );
    assert_eq!(int_attribute(first, "server.port"), Some(8443));
    assert_eq!(string_attribute(first, "poolgate.backend"), Some("alpha"));
    assert_eq!(string_attribute(first, "poolgate.pool"), Some("primary"));
    assert_eq!(
        string_attribute(first, "poolgate.attempt.result"),
        Some("rate_limited")
    );
    assert_eq!(string_attribute(first, "error.type"), Some("rate_limited"));
    assert_eq!(int_attribute(first, "http.response.status_code"), Some(429));
    assert_eq!(
        first.status.as_ref().map(|s| s.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );

    assert_eq!(second.name, "chat claude-sonnet-4");
    assert_eq!(
        string_attribute(second, "gen_ai.provider.name"),
        Some("anthropic")
    );
    assert_eq!(int_attribute(second, "server.port"), Some(443));
    assert_eq!(string_attribute(second, "poolgate.pool"), Some("fallback"));
    assert_eq!(
        string_attribute(second, "gen_ai.response.model"),
        Some("claude-sonnet-4-20250514")
    );
    assert_eq!(int_attribute(second, "gen_ai.usage.input_tokens"), Some(11));
    assert_eq!(
        int_attribute(second, "gen_ai.usage.output_tokens"),
        Some(22)
    );
    assert_eq!(
        int_attribute(second, "gen_ai.usage.cache_read.input_tokens"),
        Some(3)
    );
    assert_eq!(attribute(second, "error.type"), None);

    // Each upstream request carried its own attempt span as the parent.
    for (headers, span) in [(&first_upstream, first), (&second_upstream, second)] {
        let parent = headers["traceparent"].to_str().unwrap();
        assert_eq!(
            parent,
            format!("00-{client_trace}-{}-01", hex(&span.span_id))
        );
    }
    receiver.abort();
}
