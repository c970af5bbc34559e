//! The observer end to end without the network: phases in, exposition text out.

mod exposition;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::*;
use crate::domain::{ApiKind, Outcome};

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
        http_method: "POST",
        http_route: "/v1/chat/completions",
        stream: false,
        headers,
    }
}

fn end(status: u16, outcome: Outcome, tokens: TokenCounts) -> RequestEnd<'static> {
    RequestEnd {
        request_id: "req_1",
        client_key_id: Some("key_abc"),
        canonical_model: None,
        status,
        outcome,
        error_kind: None,
        tokens,
        response_model: None,
        cost_usd: None,
        ended: None,
    }
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

#[tokio::test(start_paused = true)]
async fn a_stream_finished_after_its_client_left_counts_its_time_to_the_leaving() {
    let observer = observer(ObserverOptions::default());
    let stream = {
        let route = observer.route("gpt-4o", &backend(&observer, "alpha", "primary"));
        let mut stream =
            observer.start_request(start(&observer.model("gpt-4o"), &HeaderMap::new()));
        stream.start_attempt(&route, "gpt-4o");
        stream.first_byte();
        stream
    };
    tokio::time::advance(Duration::from_secs(3)).await;
    let client_left = Instant::now();
    // The upstream is read on for its usage (the grace read) before the request finishes.
    tokio::time::advance(Duration::from_secs(2)).await;
    stream.finish(RequestEnd {
        ended: Some(client_left),
        ..end(499, Outcome::Cancelled, TokenCounts::default())
    });

    let text = observer.render();
    for family in [
        "poolgate_request_duration_seconds_sum",
        "poolgate_upstream_attempt_duration_seconds_sum",
    ] {
        let seconds = value(&text, family, &[("backend", "alpha")]).unwrap();
        assert!((seconds - 3.0).abs() < 1e-9, "{family}: {seconds}");
    }
}

#[test]
fn an_observation_can_travel_with_a_stream() {
    fn travels<T: Send + 'static>() {}
    travels::<RequestObservation>();
    travels::<Observer>();
    travels::<RouteHandle>();
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
            ..ObserverOptions::default()
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
