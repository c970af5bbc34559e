//! Traces of a real gateway against a real receiver: poolgate, started with an OTLP endpoint,
//! forwards requests to mock upstreams (a 429, then a failover to an Anthropic backend in the
//! fallback pool; then a stream) and exports its spans to an OTLP/HTTP endpoint on 127.0.0.1:0,
//! which decodes the protobuf. The spans are parent and child, carry the GenAI and poolgate
//! attributes, continue the client's trace id, and each upstream request carries its attempt's
//! span as `traceparent`; a client trace that is not sampled exports nothing and keeps its flag.
//! The Responses API is observed like chat: created, read back and followed up, each request is
//! counted and traced (a made-up name a wildcard serves is labelled by the wildcard).

mod common;
mod telemetry_support;

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::Gateway;
use mock_upstream::{MockUpstream, Reply};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use telemetry_support::{backend, chat, metrics, sum};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

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

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key) {
        Some(AnyValue::StringValue(value)) => Some(value),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(AnyValue::IntValue(value)) => Some(*value),
        _ => None,
    }
}

fn boolean(span: &Span, key: &str) -> Option<bool> {
    match attribute(span, key) {
        Some(AnyValue::BoolValue(value)) => Some(*value),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: its base URL, what it receives, its task.
#[expect(clippy::unwrap_used, reason = "test helper")]
async fn start_receiver() -> (
    String,
    mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (sender, received) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(receive_traces))
        .with_state(sender);
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    (collector, received, task)
}

/// Every span received so far, decoded from the real protobuf.
#[expect(clippy::unwrap_used, reason = "test helper")]
fn received_spans(received: &mut mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) -> Vec<Span> {
    let mut spans = Vec::new();
    while let Ok((_, body)) = received.try_recv() {
        let export = ExportTraceServiceRequest::decode(body).unwrap();
        for resource_spans in export.resource_spans {
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_spans_reach_an_otlp_receiver_as_parent_and_children() {
    let (sender, mut received) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(receive_traces))
        .with_state(sender);
    let receiver = tokio::spawn(async move { axum::serve(listener, app).await });

    let gw = Gateway::start_with(
        &format!("[telemetry]\notlp_endpoint = \"{collector}\"\n"),
        None,
    )
    .await;
    let openai = MockUpstream::start().await;
    openai.push(Reply::rate_limited(Some(60)));
    let anthropic = MockUpstream::start().await;
    backend(
        &gw,
        "alpha",
        &openai.openai_base_url(),
        "primary",
        "m-x",
        json!({}),
    )
    .await;
    backend(
        &gw,
        "claude",
        &anthropic.base_url(),
        "fallback",
        "m-x",
        json!({"api": "anthropic"}),
    )
    .await;

    // 1. The client's trace: a 429 on alpha, then the fallback pool answers.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let first = chat(&gw, "m-x", false)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let request_id = first.headers()["x-request-id"].to_str().unwrap().to_owned();
    first.text().await.unwrap();
    // 2. A stream without a client trace (alpha is cooling: straight to the fallback).
    let stream = chat(&gw, "m-x", true).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.text().await.unwrap().contains("[DONE]"));
    // 3. A client trace that is not sampled.
    let quiet_trace = "0af7651916cd43dd8448eb211c80319c";
    let quiet = chat(&gw, "m-x", false)
        .header(
            "traceparent",
            format!("00-{quiet_trace}-b7ad6b7169203331-00"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(quiet.status(), 200);
    // A graceful stop exports what is still queued.
    gw.stop().await;

    // Everything the exporter sent, decoded from the real protobuf.
    let mut spans = Vec::new();
    let mut service_names = HashSet::new();
    while let Ok((headers, body)) = received.try_recv() {
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let export = ExportTraceServiceRequest::decode(body).unwrap();
        for resource_spans in export.resource_spans {
            for kv in resource_spans.resource.iter().flat_map(|r| &r.attributes) {
                if let (true, Some(AnyValue::StringValue(name))) = (
                    kv.key == "service.name",
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                ) {
                    service_names.insert(name.clone());
                }
            }
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    assert_eq!(service_names, HashSet::from(["poolgate".to_owned()]));
    // 1 server + 2 attempts, 1 server + 1 attempt; nothing of the unsampled trace.
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert!(spans.iter().all(|s| hex(&s.trace_id) != quiet_trace));
    let kind = |span: &&Span, kind: SpanKind| span.kind == kind as i32;

    // The client's trace continues: same trace id, parent = the client's span.
    let traced: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == client_trace)
        .collect();
    assert_eq!(traced.len(), 3, "{traced:#?}");
    let server = *traced.iter().find(|s| kind(s, SpanKind::Server)).unwrap();
    assert_eq!(hex(&server.parent_span_id), client_span);
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(text(server, "http.route"), Some("/v1/chat/completions"));
    assert_eq!(text(server, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(text(server, "gen_ai.request.model"), Some("m-x"));
    assert_eq!(text(server, "gen_ai.response.model"), Some("up-m-x"));
    assert_eq!(text(server, "gen_ai.provider.name"), Some("anthropic"));
    assert_eq!(int(server, "gen_ai.usage.input_tokens"), Some(10));
    assert_eq!(int(server, "gen_ai.usage.output_tokens"), Some(3));
    assert_eq!(int(server, "http.response.status_code"), Some(200));
    assert_eq!(int(server, "poolgate.attempts"), Some(2));
    assert_eq!(text(server, "poolgate.outcome"), Some("success"));
    assert_eq!(text(server, "poolgate.backend"), Some("claude"));
    assert_eq!(text(server, "poolgate.pool"), Some("fallback"));
    assert_eq!(text(server, "poolgate.client_key_id"), Some("admin"));
    assert_eq!(
        text(server, "poolgate.request_id"),
        Some(request_id.as_str())
    );
    assert_eq!(boolean(server, "poolgate.stream"), Some(false));

    let mut attempts: Vec<&Span> = traced
        .iter()
        .copied()
        .filter(|s| kind(s, SpanKind::Client))
        .collect();
    attempts.sort_by_key(|s| int(s, "poolgate.attempt"));
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(attempt.name, "chat up-m-x");
        assert_eq!(text(attempt, "gen_ai.operation.name"), Some("chat"));
        assert_eq!(text(attempt, "gen_ai.request.model"), Some("up-m-x"));
        assert_eq!(text(attempt, "server.address"), Some("127.0.0.1"));
    }
    let (limited, answered) = (attempts[0], attempts[1]);
    assert_eq!(int(limited, "poolgate.attempt"), Some(1));
    assert_eq!(text(limited, "gen_ai.provider.name"), Some("openai"));
    assert_eq!(text(limited, "gen_ai.system"), Some("openai"));
    assert_eq!(text(limited, "poolgate.backend"), Some("alpha"));
    assert_eq!(text(limited, "poolgate.pool"), Some("primary"));
    assert_eq!(
        text(limited, "poolgate.attempt.result"),
        Some("rate_limited")
    );
    assert_eq!(text(limited, "error.type"), Some("rate_limited"));
    assert_eq!(int(limited, "http.response.status_code"), Some(429));
    assert_eq!(
        int(limited, "server.port"),
        Some(i64::from(openai.addr().port()))
    );
    assert_eq!(
        limited.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
    assert_eq!(int(answered, "poolgate.attempt"), Some(2));
    assert_eq!(text(answered, "gen_ai.provider.name"), Some("anthropic"));
    assert_eq!(text(answered, "poolgate.pool"), Some("fallback"));
    assert_eq!(text(answered, "poolgate.attempt.result"), Some("success"));
    assert_eq!(int(answered, "http.response.status_code"), Some(200));
    assert_eq!(text(answered, "gen_ai.response.model"), Some("up-m-x"));
    assert_eq!(int(answered, "gen_ai.usage.input_tokens"), Some(10));
    assert_eq!(int(answered, "gen_ai.usage.output_tokens"), Some(3));
    assert_eq!(attribute(answered, "error.type"), None);

    // Each upstream request carried its own attempt span as parent (and the client's state).
    let seen = |upstream: &MockUpstream, index: usize| {
        let request = &upstream.requests()[index];
        (
            request.header("traceparent").unwrap().to_owned(),
            request.header("tracestate").map(str::to_owned),
        )
    };
    assert_eq!(
        seen(&openai, 0),
        (
            format!("00-{client_trace}-{}-01", hex(&limited.span_id)),
            Some("vendor=abc".to_owned())
        )
    );
    assert_eq!(
        seen(&anthropic, 0).0,
        format!("00-{client_trace}-{}-01", hex(&answered.span_id))
    );

    // The stream: a new trace, its attempt ends with the stream and has its tokens.
    let streamed: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) != client_trace)
        .collect();
    assert_eq!(streamed.len(), 2);
    let root = *streamed.iter().find(|s| kind(s, SpanKind::Server)).unwrap();
    assert!(
        root.parent_span_id.is_empty(),
        "a new trace starts at poolgate"
    );
    assert_eq!(boolean(root, "poolgate.stream"), Some(true));
    assert_eq!(int(root, "poolgate.attempts"), Some(1));
    let attempt = *streamed.iter().find(|s| kind(s, SpanKind::Client)).unwrap();
    assert_eq!(attempt.parent_span_id, root.span_id);
    assert_eq!(text(attempt, "poolgate.attempt.result"), Some("success"));
    assert_eq!(text(attempt, "gen_ai.response.model"), Some("up-m-x"));
    assert_eq!(int(attempt, "gen_ai.usage.output_tokens"), Some(3));
    assert!(attempt.end_time_unix_nano >= attempt.start_time_unix_nano);
    assert!(root.end_time_unix_nano >= attempt.end_time_unix_nano);

    // Not sampled: no spans, and the upstream still gets the client's trace id with flag 00.
    let (quiet_parent, _) = seen(&anthropic, 2);
    assert!(
        quiet_parent.starts_with(&format!("00-{quiet_trace}-")) && quiet_parent.ends_with("-00"),
        "{quiet_parent}"
    );
    receiver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_calls_are_counted_and_traced_like_chat() {
    let (collector, mut received, receiver) = start_receiver().await;
    let gw = Gateway::start_with(
        &format!("[telemetry]\notlp_endpoint = \"{collector}\"\n"),
        None,
    )
    .await;
    let upstream = MockUpstream::start().await;
    let url = upstream.openai_base_url();
    backend(&gw, "alpha", &url, "primary", "m-x", json!({})).await;
    backend(&gw, "wild", &url, "primary", "w-*", json!({})).await;
    backend(&gw, "any", &url, "primary", "*", json!({})).await;

    let client_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let created = gw
        .proxy("/v1/responses")
        .header(
            "traceparent",
            format!("00-{client_trace}-00f067aa0ba902b7-01"),
        )
        .json(&json!({"model": "m-x", "input": "Hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let created: serde_json::Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let read = gw
        .client
        .get(format!("{}/v1/responses/{id}", gw.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    read.text().await.unwrap();
    let follow_up = gw
        .proxy("/v1/responses")
        .json(&json!({"model": "m-x", "input": "More", "previous_response_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(follow_up.status(), 200);
    follow_up.text().await.unwrap();
    let wild = gw
        .proxy("/v1/responses")
        .json(&json!({"model": "w-made-up-7", "input": "Hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(wild.status(), 200);
    wild.text().await.unwrap();
    // A call on a response nobody made: no attempt, and `*` does not make it a model.
    let unknown = gw
        .client
        .get(format!("{}/v1/responses/resp_unknown", gw.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Counted: by model (the wildcard, never the made-up name), backend and outcome.
    let exposition = metrics(&gw).await;
    let requests = |labels: &[(&str, &str)]| sum(&exposition, "poolgate_requests_total", labels);
    let ok = [("status_class", "2xx"), ("outcome", "success")];
    assert_eq!(
        requests(&[[("model", "m-x"), ("backend", "alpha")].as_slice(), &ok].concat()),
        Some(2.0),
        "{exposition}"
    );
    assert_eq!(
        requests(&[[("model", "w-*"), ("backend", "wild")].as_slice(), &ok].concat()),
        Some(1.0)
    );
    // A call on a stored response names no model.
    assert_eq!(
        requests(&[("model", "(unrouted)"), ("backend", "alpha")]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[("model", "(unrouted)"), ("status_class", "4xx")]),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(requests(&[("model", "*")]), None, "{exposition}");
    assert!(!exposition.contains("w-made-up-7"), "{exposition}");
    assert_eq!(
        sum(
            &exposition,
            "poolgate_upstream_attempts_total",
            &[("result", "success")]
        ),
        Some(4.0)
    );
    gw.stop().await;

    // Traced: a SERVER span per request with its method and route, a CLIENT child per attempt.
    let spans = received_spans(&mut received);
    let server = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32 && s.name == name)
            .collect()
    };
    let posts = server("POST /v1/responses");
    assert_eq!(posts.len(), 3, "{spans:#?}");
    let first = posts
        .iter()
        .find(|s| hex(&s.trace_id) == client_trace)
        .unwrap();
    assert_eq!(text(first, "http.route"), Some("/v1/responses"));
    assert_eq!(text(first, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(text(first, "gen_ai.request.model"), Some("m-x"));
    assert_eq!(text(first, "poolgate.backend"), Some("alpha"));
    assert!(text(first, "gen_ai.response.model").is_some(), "{first:#?}");
    assert!(posts
        .iter()
        .any(|s| text(s, "gen_ai.request.model") == Some("w-*")));
    let reads = server("GET /v1/responses/{id}");
    assert_eq!(reads.len(), 2, "{spans:#?}");
    assert!(reads
        .iter()
        .all(|s| text(s, "http.request.method") == Some("GET")));
    assert!(reads
        .iter()
        .any(|s| text(s, "poolgate.backend") == Some("alpha")));
    let attempts = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .count();
    assert_eq!(attempts, 4);
    let child = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == first.span_id)
        .unwrap();
    assert_eq!(text(child, "poolgate.attempt.result"), Some("success"));
    // The upstream request carried the attempt's span as parent.
    assert_eq!(
        upstream.requests()[0].header("traceparent"),
        Some(format!("00-{client_trace}-{}-01", hex(&child.span_id)).as_str())
    );
    receiver.abort();
}
