//! The spans of one client request: a SERVER span continuing the client's W3C trace context,
//! and one CLIENT child span per upstream attempt carrying the GenAI semantic conventions
//! (`gen_ai.provider.name` — and the older `gen_ai.system` many backends still read —,
//! `gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.response.model`,
//! `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
//! `gen_ai.usage.cache_read.input_tokens`, `server.address`, `server.port`, `error.type`) and
//! poolgate's own `poolgate.*` attributes. Only built when tracing is on.

use std::time::SystemTime;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};

use super::super::handles::RouteHandle;
use super::super::metrics::UNROUTED_MODEL;
use super::super::observer::{AttemptEnd, RequestEnd, RequestStart, TokenCounts};
use crate::domain::ApiKind;

pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// The spans of one request.
pub(crate) struct RequestTrace {
    tracer: SdkTracer,
    /// The client's context with the SERVER span in it.
    cx: Context,
    operation: &'static str,
    attempt: Option<Span>,
}

/// The wall-clock time of a monotonic instant in the past.
fn wall_clock(instant: tokio::time::Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(instant.elapsed())
        .unwrap_or_else(SystemTime::now)
}

/// `gen_ai.provider.name` and the older `gen_ai.system` of a backend's API, as the semantic
/// conventions spell them (Azure OpenAI: `azure.ai.openai`, formerly `az.ai.openai`).
fn provider_attributes(api: ApiKind) -> [KeyValue; 2] {
    let (provider, system) = match api {
        ApiKind::Openai => ("openai", "openai"),
        ApiKind::Anthropic => ("anthropic", "anthropic"),
        ApiKind::Azure => ("azure.ai.openai", "az.ai.openai"),
    };
    [
        KeyValue::new("gen_ai.provider.name", provider),
        KeyValue::new("gen_ai.system", system),
    ]
}

fn usage_attributes(tokens: &TokenCounts) -> impl Iterator<Item = KeyValue> {
    [
        ("gen_ai.usage.input_tokens", tokens.prompt),
        ("gen_ai.usage.output_tokens", tokens.completion),
        ("gen_ai.usage.cache_read.input_tokens", tokens.cached),
    ]
    .into_iter()
    .filter_map(|(key, count)| count.map(|count| KeyValue::new(key, i64::from(count))))
}

impl RequestTrace {
    pub(crate) fn start(tracer: SdkTracer, start: &RequestStart<'_>) -> Self {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(start.headers));
        let operation = start.operation.as_str();
        let mut attributes = vec![
            KeyValue::new("http.request.method", start.http_method),
            KeyValue::new("http.route", start.http_route),
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("poolgate.request_id", start.request_id.to_owned()),
            KeyValue::new("poolgate.stream", start.stream),
        ];
        // A name no route serves is the client's text, not a model: leave it out.
        if start.model.model() != UNROUTED_MODEL {
            attributes.push(KeyValue::new(
                "gen_ai.request.model",
                start.model.model().to_owned(),
            ));
        }
        let span = tracer
            .span_builder(format!("{} {}", start.http_method, start.http_route))
            .with_kind(SpanKind::Server)
            .with_start_time(wall_clock(start.received))
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span),
            tracer,
            operation,
            attempt: None,
        }
    }

    pub(crate) fn start_attempt(&mut self, route: &RouteHandle, upstream_model: &str, number: u32) {
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", self.operation),
            KeyValue::new("gen_ai.request.model", upstream_model.to_owned()),
            KeyValue::new("poolgate.attempt", i64::from(number)),
        ];
        if let Some(backend) = route.backend() {
            let series = backend.series();
            attributes.extend(provider_attributes(series.api));
            attributes.extend([
                KeyValue::new("poolgate.backend", backend.name().to_owned()),
                KeyValue::new("poolgate.pool", backend.pool().to_owned()),
            ]);
            if let Some(address) = &series.server_address {
                attributes.push(KeyValue::new("server.address", address.clone()));
            }
            if let Some(port) = series.server_port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let span = self
            .tracer
            .span_builder(format!("{} {upstream_model}", self.operation))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        if let Some(mut previous) = self.attempt.replace(span) {
            previous.end();
        }
    }

    /// Injects the current attempt's span (or the request's, before any attempt).
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        let propagator = TraceContextPropagator::new();
        let mut injector = HeaderInjector(headers);
        match &self.attempt {
            Some(attempt) => propagator.inject_context(
                &Context::new().with_remote_span_context(attempt.span_context().clone()),
                &mut injector,
            ),
            None => propagator.inject_context(&self.cx, &mut injector),
        }
    }

    pub(crate) fn end_attempt(&mut self, end: &AttemptEnd<'_>) {
        let Some(mut span) = self.attempt.take() else {
            return;
        };
        span.set_attribute(KeyValue::new(
            "poolgate.attempt.result",
            end.result.as_str(),
        ));
        if let Some(status) = end.status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(model) = end.response_model {
            span.set_attribute(KeyValue::new("gen_ai.response.model", model.to_owned()));
        }
        span.set_attributes(usage_attributes(&end.tokens));
        if !end.result.is_success() {
            span.set_attribute(KeyValue::new("error.type", end.result.as_str()));
            span.set_status(Status::error(end.result.as_str()));
        }
        span.end();
    }

    /// Whether the request's span is sampled in (its attributes are kept).
    pub(crate) fn recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// The trace id as 32 hex digits (for the access log).
    pub(crate) fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    pub(crate) fn finish(
        mut self,
        end: &RequestEnd<'_>,
        route: Option<&RouteHandle>,
        attempts: u32,
    ) {
        if let Some(mut attempt) = self.attempt.take() {
            attempt.end();
        }
        let span = self.cx.span();
        let mut attributes = vec![
            KeyValue::new("http.response.status_code", i64::from(end.status)),
            KeyValue::new("poolgate.outcome", end.outcome.as_str()),
            KeyValue::new("poolgate.attempts", i64::from(attempts)),
        ];
        if let Some(backend) = route.and_then(RouteHandle::backend) {
            attributes.extend(provider_attributes(backend.series().api));
            attributes.extend([
                KeyValue::new("poolgate.backend", backend.name().to_owned()),
                KeyValue::new("poolgate.pool", backend.pool().to_owned()),
            ]);
        }
        if let Some(model) = end.response_model {
            attributes.push(KeyValue::new("gen_ai.response.model", model.to_owned()));
        }
        if let Some(key) = end.client_key_id {
            attributes.push(KeyValue::new("poolgate.client_key_id", key.to_owned()));
        }
        attributes.extend(usage_attributes(&end.tokens));
        if let Some(kind) = end.error_kind {
            attributes.push(KeyValue::new("error.type", kind.to_owned()));
        }
        span.set_attributes(attributes);
        // HTTP server semantics: a 5xx is the server's error, a 4xx the client's.
        if end.status >= 500 {
            span.set_status(Status::error(
                end.error_kind.unwrap_or("server error").to_owned(),
            ));
        }
        span.end();
    }
}
