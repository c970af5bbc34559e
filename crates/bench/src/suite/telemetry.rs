//! What metrics and tracing cost per request: the same closed-loop load through four poolgates
//! with one backend each — telemetry off (`[metrics] enabled = false`, no access log), metrics
//! only, metrics and the access log (the default), and the default plus OpenTelemetry traces
//! sampled at 100 % (every request is a root span: the default `parentbased_always_on` sampler
//! keeps all of them), exported over OTLP/HTTP to a receiver in this process that decodes every
//! export and counts its spans. After the runs the traced poolgate is stopped gracefully (its last
//! spans flushed) and the spans received are compared with the two per request (one request
//! span, one attempt span) its own `poolgate_requests_total` says it answered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::features::Configuration;
use super::Bench;
use crate::load::request_once;
use crate::stack::{BackendDef, Mock, PoolgateSpec, ADMIN_TOKEN};

/// Connections of the comparison (as for the feature costs).
const CONNECTIONS: usize = 16;

/// The baseline's label.
pub const BASELINE: &str = "telemetry off";

/// Every configuration's label, baseline first.
pub const LABELS: [&str; 4] = [
    BASELINE,
    "metrics",
    "metrics + access log (default)",
    "default + traces (100 % sampled)",
];

/// An OTLP/HTTP receiver on 127.0.0.1:0: decodes each export and counts its spans.
struct OtlpSink {
    addr: SocketAddr,
    spans: Arc<AtomicU64>,
    exports: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl OtlpSink {
    async fn start() -> Result<OtlpSink> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(AtomicU64::new(0));
        let exports = Arc::new(AtomicU64::new(0));
        let counts = (Arc::clone(&spans), Arc::clone(&exports));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (spans, exports) = (Arc::clone(&counts.0), Arc::clone(&counts.1));
                let service = service_fn(move |request: Request<Incoming>| {
                    let (spans, exports) = (Arc::clone(&spans), Arc::clone(&exports));
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        if let Ok(export) = ExportTraceServiceRequest::decode(body) {
                            let count: usize = export
                                .resource_spans
                                .iter()
                                .flat_map(|r| &r.scope_spans)
                                .map(|s| s.spans.len())
                                .sum();
                            spans.fetch_add(count as u64, Ordering::Relaxed);
                            exports.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = connection.await;
                });
            }
        });
        Ok(OtlpSink {
            addr,
            spans,
            exports,
            task,
        })
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `poolgate_requests_total` summed, from the gateway's own `GET /metrics`.
async fn requests_answered(addr: SocketAddr) -> Result<f64> {
    let (status, body) =
        request_once(addr, Method::GET, "/metrics", Some(ADMIN_TOKEN), None).await?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| line.starts_with("poolgate_requests_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// A poolgate with one backend on the fast mock.
fn one_backend(name: &str, fast: &Mock) -> PoolgateSpec {
    PoolgateSpec {
        name: name.to_owned(),
        backends: vec![BackendDef {
            name: "fast".into(),
            upstream: fast.addr,
            models: vec![("bench".to_owned(), "bench-upstream".to_owned())],
            rpm_limit: 0,
            http_version: None,
        }],
        churn_cooldown: false,
        client_rpm: 0,
        max_in_flight: None,
        extra_args: Vec::new(),
    }
}

impl Bench<'_> {
    pub(super) async fn telemetry(&mut self, fast: &Mock) -> Result<()> {
        let sink = OtlpSink::start().await?;
        let traced = format!(
            "[telemetry]\naccess_log = true\notlp_endpoint = \"http://{}\"\n",
            sink.addr
        );
        let configurations = [
            (
                LABELS[0],
                "[metrics]\nenabled = false\n\n[telemetry]\naccess_log = false\n",
            ),
            (LABELS[1], "[telemetry]\naccess_log = false\n"),
            (LABELS[2], ""),
            (LABELS[3], traced.as_str()),
        ];
        let configurations: Vec<Configuration<'_>> = configurations
            .into_iter()
            .enumerate()
            .map(|(index, (label, extra_toml))| Configuration {
                label,
                spec: one_backend(&format!("telemetry-{index}"), fast),
                extra_toml,
            })
            .collect();
        let mut running = self
            .compare_configurations(
                "telemetry_c16",
                &format!("metrics and tracing, closed loop, {CONNECTIONS} connections"),
                "telemetry",
                CONNECTIONS,
                &configurations,
            )
            .await?;

        // Every span of the traced gateway, after a graceful stop flushed the last ones.
        let mut traced = running.pop().context("the traced poolgate")?;
        let answered = requests_answered(traced.addr).await?;
        let traced = tokio::task::spawn_blocking(move || {
            traced.child.stop();
            traced
        })
        .await?;
        drop(traced);
        let spans = sink.spans.load(Ordering::Relaxed) as f64;
        let exports = sink.exports.load(Ordering::Relaxed);
        self.results.sample("traces", "requests_answered", answered);
        self.results.sample("traces", "spans_received", spans);
        self.results.notes.push(format!(
            "Traces (100 % sampled): the traced poolgate answered {answered:.0} requests and the OTLP receiver decoded {spans:.0} spans in {exports} exports ({:.3} spans per request; 2 expected: one request span, one attempt span; fewer means the SDK's batch queue — `OTEL_BSP_MAX_QUEUE_SIZE`, default 2048 — dropped spans under this load).",
            if answered > 0.0 { spans / answered } else { 0.0 }
        ));
        drop(running);
        Ok(())
    }
}
