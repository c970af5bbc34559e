//! Traces against a real receiver: an OTLP/HTTP endpoint on 127.0.0.1:0 decodes the exported
//! protobuf; the spans are parent and child, carry the GenAI and poolgate attributes, and
//! continue the client's trace id.

mod telemetry_support;

use std::collections::{BTreeMap, HashSet};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use poolgate::domain::{ApiKind, Outcome};
use poolgate::telemetry::{
    AttemptEnd, AttemptResult, BackendLabels, Observer, ObserverOptions, RequestEnd, TokenCounts,
    TraceConfig, TraceSettings, Tracing,
};
use prost::Message;
use telemetry_support::chat;
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
