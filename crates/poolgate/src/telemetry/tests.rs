//! The observer end to end without the network: phases in, exposition text out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::*;
use crate::domain::{ApiKind, BackendStatus, Outcome};

/// The samples of a rendered exposition: (name, labels) -> value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

/// The value of the one series of `name` whose labels include `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches {matching:?}"
    );
    matching.first().copied()
}

fn observer(options: ObserverOptions) -> Observer {
    Observer::new(options, None).unwrap()
}

fn backend(observer: &Observer, name: &str, pool: &str) -> BackendHandle {
    observer.backend(BackendLabels {
        name,
        pool,
        api: ApiKind::Openai,
        api_base_url: "https://api.example.com/v1",
    })
}

fn start<'a>(model: &'a RouteHandle, headers: &'a HeaderMap) -> RequestStart<'a> {
    RequestStart {
        received: Instant::now(),
        request_id: "req_1",
        model,
        operation: Operation::Chat,
        http_route: "/v1/chat/completions",
        stream: false,
        headers,
    }
}

fn end(status: u16, outcome: Outcome, tokens: TokenCounts) -> RequestEnd<'static> {
    RequestEnd {
        request_id: "req_1",
        client_key_id: Some("key_abc"),
        status,
        outcome,
        error_kind: None,
        tokens,
        response_model: None,
        cost_usd: None,
    }
}

/// Touches every family once (a retried, failed-over request; sinks; backend state).
fn populate(observer: &Observer) {
    let alpha = backend(observer, "alpha", "primary");
    let beta = backend(observer, "beta", "fallback");
    let model = observer.model("gpt-4o");
    let headers = HeaderMap::new();
    let mut request = observer.start_request(start(&model, &headers));
    request.start_attempt(&observer.route("gpt-4o", &alpha), "gpt-4o");
    request.end_attempt(AttemptEnd::result(AttemptResult::ServerError, Some(502)));
    request.start_attempt(&observer.route("gpt-4o", &beta), "gpt-4o");
    request.first_byte();
    let mut finished = end(
        200,
        Outcome::Success,
        TokenCounts {
            prompt: Some(1),
            completion: Some(1),
            cached: Some(1),
        },
    );
    finished.cost_usd = Some(0.01);
    request.finish(finished);
    observer.metrics().store_errors().error("usage_insert");
    observer.metrics().redis().error("admit");
    observer.watch_backends(Arc::new(FakeBackends)).unwrap();
}

#[test]
fn every_family_follows_the_naming_conventions() {
    let observer = observer(ObserverOptions {
        client_key_labels: true,
        access_log: false,
    });
    populate(&observer);
    let text = observer.render();
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned(), kind.to_owned());
        }
    }
    assert_eq!(families.len(), 32, "{families:?}");
    for (name, kind) in &families {
        assert!(
            name.starts_with("poolgate_") || name.starts_with("process_"),
            "{name}"
        );
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("{name}: unexpected type {other}"),
        }
        assert!(!name.contains("milli") && !name.ends_with("_ms"), "{name}");
    }
    assert_eq!(
        value(
            &text,
            "poolgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(families.contains_key("process_cpu_seconds_total"));
    assert!(families.contains_key("process_resident_memory_bytes"));
    assert!(families.contains_key("process_open_fds"));
}

#[test]
fn client_key_series_only_when_enabled() {
    let off = observer(ObserverOptions::default());
    let model = off.model("gpt-4o");
    off.start_request(start(&model, &HeaderMap::new()))
        .finish(end(429, Outcome::Error, TokenCounts::default()));
    assert!(!off.render().contains("client_key"));

    let on = observer(ObserverOptions {
        client_key_labels: true,
        access_log: false,
    });
    let model = on.model("gpt-4o");
    on.start_request(start(&model, &HeaderMap::new()))
        .finish(end(429, Outcome::Error, TokenCounts::default()));
    let text = on.render();
    assert_eq!(
        value(
            &text,
            "poolgate_client_requests_total",
            &[
                ("client_key", "key_abc"),
                ("status_class", "4xx"),
                ("outcome", "error")
            ]
        ),
        Some(1.0)
    );
    // Never a request id in any label.
    assert!(!text.contains("req_1"));
}

#[tokio::test(start_paused = true)]
async fn a_retried_request_feeds_every_family() {
    let observer = observer(ObserverOptions::default());
    let alpha = backend(&observer, "alpha", "primary");
    let beta = backend(&observer, "beta", "fallback");
    let on_alpha = observer.route("gpt-4o", &alpha);
    let on_beta = observer.route("gpt-4o", &beta);
    let model = observer.model("gpt-4o");
    let headers = HeaderMap::new();

    let mut request = observer.start_request(start(&model, &headers));
    tokio::time::advance(Duration::from_millis(10)).await;
    request.start_attempt(&on_alpha, "gpt-4o-2024-08-06");
    tokio::time::advance(Duration::from_millis(100)).await;
    request.end_attempt(AttemptEnd::result(AttemptResult::RateLimited, Some(429)));
    request.start_attempt(&on_beta, "gpt-4o");
    tokio::time::advance(Duration::from_millis(200)).await;
    request.first_byte();
    request.end_attempt(AttemptEnd::result(AttemptResult::Success, Some(200)));
    tokio::time::advance(Duration::from_millis(5)).await;
    assert_eq!(
        value(&observer.render(), "poolgate_requests_in_flight", &[]),
        Some(1.0)
    );
    let mut finished = end(
        200,
        Outcome::Success,
        TokenCounts {
            prompt: Some(12),
            completion: Some(30),
            cached: Some(4),
        },
    );
    finished.cost_usd = Some(0.25);
    request.finish(finished);

    let text = observer.render();
    let attempts = |backend: &str, result: &str| {
        value(
            &text,
            "poolgate_upstream_attempts_total",
            &[("backend", backend), ("result", result)],
        )
    };
    assert_eq!(attempts("alpha", "rate_limited"), Some(1.0));
    assert_eq!(attempts("alpha", "success"), Some(0.0));
    assert_eq!(attempts("beta", "success"), Some(1.0));
    assert_eq!(
        value(
            &text,
            "poolgate_retries_total",
            &[("model", "gpt-4o"), ("reason", "rate_limited")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_failovers_total",
            &[("from_pool", "primary"), ("to_pool", "fallback")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_requests_total",
            &[
                ("model", "gpt-4o"),
                ("pool", "fallback"),
                ("backend", "beta"),
                ("status_class", "2xx"),
                ("outcome", "success")
            ]
        ),
        Some(1.0)
    );
    for (kind, count) in [("prompt", 12.0), ("completion", 30.0), ("cached", 4.0)] {
        assert_eq!(
            value(
                &text,
                "poolgate_tokens_total",
                &[("backend", "beta"), ("kind", kind)]
            ),
            Some(count)
        );
    }
    assert_eq!(
        value(&text, "poolgate_cost_usd_total", &[("backend", "beta")]),
        Some(0.25)
    );
    // 315 ms in all, 300 ms of it upstream: poolgate added 15 ms.
    let duration = value(
        &text,
        "poolgate_request_duration_seconds_sum",
        &[("backend", "beta")],
    )
    .unwrap();
    assert!((duration - 0.315).abs() < 1e-9, "{duration}");
    let overhead = value(&text, "poolgate_overhead_seconds_sum", &[]).unwrap();
    assert!((overhead - 0.015).abs() < 1e-9, "{overhead}");
    assert_eq!(
        value(&text, "poolgate_overhead_seconds_bucket", &[("le", "0.01")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_overhead_seconds_bucket",
            &[("le", "0.025")]
        ),
        Some(1.0)
    );
    let ttfb = value(
        &text,
        "poolgate_request_ttfb_seconds_sum",
        &[("backend", "beta")],
    )
    .unwrap();
    assert!((ttfb - 0.310).abs() < 1e-9, "{ttfb}");
    let upstream = value(
        &text,
        "poolgate_upstream_attempt_duration_seconds_sum",
        &[("backend", "alpha")],
    )
    .unwrap();
    assert!((upstream - 0.1).abs() < 1e-9, "{upstream}");
    assert_eq!(value(&text, "poolgate_requests_in_flight", &[]), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn streams_end_their_attempt_with_the_request_and_drops_count_as_cancelled() {
    let observer = observer(ObserverOptions::default());
    let alpha = backend(&observer, "alpha", "primary");
    let route = observer.route("gpt-4o", &alpha);
    let model = observer.model("gpt-4o");
    let headers = HeaderMap::new();

    let mut stream = observer.start_request(start(&model, &headers));
    stream.start_attempt(&route, "gpt-4o");
    stream.first_byte();
    tokio::time::advance(Duration::from_secs(3)).await;
    stream.finish(end(200, Outcome::StreamError, TokenCounts::default()));

    let mut dropped = observer.start_request(start(&model, &headers));
    dropped.start_attempt(&route, "gpt-4o");
    drop(dropped);

    // No route at all: the made-up model name never becomes a label.
    observer
        .start_request(start(observer.unrouted(), &headers))
        .finish(end(404, Outcome::Error, TokenCounts::default()));

    let text = observer.render();
    let attempts = |result: &str| {
        value(
            &text,
            "poolgate_upstream_attempts_total",
            &[("backend", "alpha"), ("result", result)],
        )
    };
    assert_eq!(attempts("stream_error"), Some(1.0));
    assert_eq!(attempts("cancelled"), Some(1.0));
    let stream_time = value(
        &text,
        "poolgate_upstream_attempt_duration_seconds_sum",
        &[("backend", "alpha")],
    )
    .unwrap();
    assert!((stream_time - 3.0).abs() < 1e-9, "{stream_time}");
    assert_eq!(
        value(
            &text,
            "poolgate_requests_total",
            &[
                ("backend", "alpha"),
                ("status_class", "4xx"),
                ("outcome", "cancelled")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_requests_total",
            &[
                ("model", metrics::UNROUTED_MODEL),
                ("backend", ""),
                ("status_class", "4xx")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "poolgate_requests_in_flight", &[]), Some(0.0));
}

#[test]
fn an_observation_can_travel_with_a_stream() {
    fn travels<T: Send + 'static>() {}
    travels::<RequestObservation>();
    travels::<Observer>();
    travels::<RouteHandle>();
}

#[test]
fn a_models_handle_makes_no_series_before_its_first_request() {
    let observer = observer(ObserverOptions::default());
    let _model = observer.model("gpt-4o");
    let _alpha = backend(&observer, "alpha", "primary");
    let text = observer.render();
    assert!(!text.contains("model=\"gpt-4o\""), "{text}");
    // The attempt counters of a backend exist from the start (rate() sees the first one).
    assert_eq!(
        value(
            &text,
            "poolgate_upstream_attempts_total",
            &[("backend", "alpha"), ("result", "timeout")]
        ),
        Some(0.0)
    );
}

#[test]
fn with_tracing_off_the_clients_trace_context_passes_through() {
    let observer = observer(ObserverOptions::default());
    let model = observer.model("gpt-4o");
    let mut incoming = HeaderMap::new();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    incoming.insert("traceparent", parent.parse().unwrap());
    incoming.insert("tracestate", "vendor=1".parse().unwrap());
    let request = observer.start_request(start(&model, &incoming));
    let mut upstream = HeaderMap::new();
    request.inject_trace_context(&mut upstream);
    assert_eq!(upstream["traceparent"], parent);
    assert_eq!(upstream["tracestate"], "vendor=1");

    let plain = observer.start_request(start(&model, &HeaderMap::new()));
    let mut upstream = HeaderMap::new();
    plain.inject_trace_context(&mut upstream);
    assert!(upstream.is_empty());
}

struct FakeBackends;

impl BackendStatsSource for FakeBackends {
    fn for_each_backend(&self, visit: &mut dyn FnMut(BackendStats<'_>)) {
        visit(BackendStats {
            backend: "alpha",
            pool: "primary",
            state: BackendStatus::Cooling,
            cooldown_remaining: Duration::from_millis(42_500),
            rpm_limit: Some(60),
            rpm_tokens_remaining: Some(17.0),
            in_flight: 3,
        });
        visit(BackendStats {
            backend: "beta",
            pool: "fallback",
            state: BackendStatus::Disabled,
            cooldown_remaining: Duration::ZERO,
            rpm_limit: None,
            rpm_tokens_remaining: None,
            in_flight: 0,
        });
    }
}

#[test]
fn backend_state_is_read_at_scrape_time() {
    let observer = observer(ObserverOptions::default());
    observer.watch_backends(Arc::new(FakeBackends)).unwrap();
    let text = observer.render();
    let state = |backend: &str, state: &str| {
        value(
            &text,
            "poolgate_backend_state",
            &[("backend", backend), ("state", state)],
        )
    };
    assert_eq!(state("alpha", "cooling"), Some(1.0));
    assert_eq!(state("alpha", "healthy"), Some(0.0));
    assert_eq!(state("beta", "disabled"), Some(1.0));
    assert_eq!(
        value(
            &text,
            "poolgate_backend_cooldown_remaining_seconds",
            &[("backend", "alpha")]
        ),
        Some(42.5)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_backend_rpm_tokens_remaining",
            &[("backend", "alpha")]
        ),
        Some(17.0)
    );
    // Unlimited backends have no RPM series.
    assert_eq!(
        value(
            &text,
            "poolgate_backend_rpm_tokens_remaining",
            &[("backend", "beta")]
        ),
        None
    );
    assert_eq!(
        value(&text, "poolgate_backend_in_flight", &[("backend", "alpha")]),
        Some(3.0)
    );
}

#[test]
fn sinks_get_their_own_handles() {
    let observer = observer(ObserverOptions::default());
    let usage = observer.metrics().usage();
    usage.queue_depth.set(7);
    usage.records_written.inc_by(512);
    usage.write_errors.inc();
    observer.metrics().store_errors().error("health_save");
    observer.metrics().redis().error("admit");
    observer.metrics().redis().degraded.set(1);
    let text = observer.render();
    assert_eq!(value(&text, "poolgate_usage_queue_depth", &[]), Some(7.0));
    assert_eq!(
        value(&text, "poolgate_usage_records_written_total", &[]),
        Some(512.0)
    );
    assert_eq!(
        value(&text, "poolgate_usage_write_errors_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_store_errors_total",
            &[("operation", "health_save")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "poolgate_redis_errors_total",
            &[("operation", "admit")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "poolgate_redis_degraded", &[]), Some(1.0));
}

/// A writer collecting what the subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_access_log_is_one_json_line_of_ids_and_numbers() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let observer = observer(ObserverOptions {
            client_key_labels: false,
            access_log: true,
        });
        let alpha = backend(&observer, "alpha", "primary");
        let route = observer.route("gpt-4o", &alpha);
        let model = observer.model("gpt-4o");
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            "Bearer sk-secret-client-key".parse().unwrap(),
        );
        let mut request = observer.start_request(start(&model, &headers));
        request.start_attempt(&route, "gpt-4o");
        request.first_byte();
        request.end_attempt(AttemptEnd::result(AttemptResult::Success, Some(200)));
        request.finish(end(
            200,
            Outcome::Success,
            TokenCounts {
                prompt: Some(5),
                completion: Some(7),
                cached: None,
            },
        ));
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "poolgate::access");
    let fields = &line["fields"];
    assert_eq!(fields["request_id"], "req_1");
    assert_eq!(fields["client_key_id"], "key_abc");
    assert_eq!(fields["model"], "gpt-4o");
    assert_eq!(fields["backend"], "alpha");
    assert_eq!(fields["pool"], "primary");
    assert_eq!(fields["attempts"], 1);
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["outcome"], "success");
    assert_eq!(fields["prompt_tokens"], 5);
    assert_eq!(fields["completion_tokens"], 7);
    assert!(fields["latency_ms"].is_u64() && fields["ttfb_ms"].is_u64());
    assert!(fields.get("cached_tokens").is_none());
    assert!(!text.contains("sk-secret"));
}
