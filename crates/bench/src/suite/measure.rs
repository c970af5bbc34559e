//! One load run against one system, with the CPU and peak memory of its processes, and the
//! repeat loop that runs a scenario on every system in rotating order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::oneshot;

use super::Options;
use crate::load::{closed_loop, open_loop, quantile_us, Run, Target};
use crate::procs::{threads_cpu_s, usage};
use crate::stats::{Compare, Metrics, Scenario};

/// A target of the load: where requests go and which processes to watch.
pub struct Endpoint {
    pub label: String,
    pub target: Arc<Target>,
    /// The process tree whose CPU and memory are charged to this target.
    pub pids: Vec<u32>,
    /// Also measure the CPU of poolgate's threads other than its per-core request threads: the
    /// control plane's runtime, where the usage writer runs its SQLite batches, and the rest.
    pub off_core: bool,
}

/// The shape of one load run.
#[derive(Clone, Copy)]
pub enum Load {
    Closed { connections: usize },
    Open { rate: f64, connections: usize },
}

/// Bytes per MB (decimal megabytes, as the targets are written).
pub const MB: f64 = 1_000_000.0;

/// One load run against `endpoint`, with the CPU and peak memory of its processes.
pub async fn measure(endpoint: &Endpoint, load: Load, opts: &Options) -> Result<Metrics> {
    let before = usage(&endpoint.pids);
    let off_core_before = off_core_cpu(endpoint);
    let (stop, stopped) = oneshot::channel::<()>();
    let pids = endpoint.pids.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        let mut stopped = stopped;
        loop {
            peak = peak.max(usage(&pids).rss_kib);
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        peak
    });
    let target = Arc::clone(&endpoint.target);
    let run = match load {
        Load::Closed { connections } => {
            closed_loop(target, connections, opts.warmup, opts.duration).await?
        }
        Load::Open { rate, connections } => {
            open_loop(target, rate, connections, opts.warmup, opts.duration).await?
        }
    };
    let _ = stop.send(());
    let peak_kib = sampler.await.unwrap_or(0);
    let after = usage(&endpoint.pids);
    let mut metrics = run_metrics(&run);
    let thousands = run.completed as f64 / 1000.0;
    if thousands > 0.0 {
        metrics.insert(
            "cpu_ms_per_1k".into(),
            (after.cpu_s - before.cpu_s) * 1000.0 / thousands,
        );
        if let Some(off_core_before) = off_core_before {
            let off_core_after = off_core_cpu(endpoint).unwrap_or(off_core_before);
            metrics.insert(
                "off_core_cpu_ms_per_1k".into(),
                (off_core_after - off_core_before) * 1000.0 / thousands,
            );
        }
    }
    metrics.insert("rss_peak_mb".into(), peak_kib as f64 * 1024.0 / MB);
    if let Load::Open { rate, .. } = load {
        metrics.insert("offered_rps".into(), rate);
    }
    Ok(metrics)
}

/// CPU seconds of poolgate's threads that are not its per-core request threads
/// (`poolgate-core-N`, see `serving::per_core`): the process's CPU, which keeps that of threads
/// that ended (the blocking pool's come and go), less the per-core threads', which live as long
/// as the process. Under `runtime = "work_stealing"` there are no per-core threads: all of it.
fn off_core_cpu(endpoint: &Endpoint) -> Option<f64> {
    let pid = *endpoint.pids.first()?;
    endpoint
        .off_core
        .then(|| usage(&[pid]).cpu_s - threads_cpu_s(pid, |name| name.starts_with("poolgate-core")))
}

fn run_metrics(run: &Run) -> Metrics {
    let mut m = Metrics::new();
    m.insert("rps".into(), run.rps());
    m.insert("ok".into(), run.ok as f64);
    m.insert("errors".into(), run.errors as f64);
    m.insert("p50_us".into(), quantile_us(&run.latency, 0.5));
    m.insert("p99_us".into(), quantile_us(&run.latency, 0.99));
    m.insert("p999_us".into(), quantile_us(&run.latency, 0.999));
    m.insert("max_us".into(), quantile_us(&run.latency, 1.0));
    if run.events > 0 {
        m.insert("ttfb_p50_us".into(), quantile_us(&run.ttfb, 0.5));
        m.insert("ttfb_p99_us".into(), quantile_us(&run.ttfb, 0.99));
        if !run.ttft.is_empty() {
            m.insert("ttft_p50_us".into(), quantile_us(&run.ttft, 0.5));
        }
        m.insert("gap_p50_us".into(), quantile_us(&run.gaps, 0.5));
        m.insert("gap_p90_us".into(), quantile_us(&run.gaps, 0.9));
        m.insert("gap_p99_us".into(), quantile_us(&run.gaps, 0.99));
        m.insert("gap_max_us".into(), quantile_us(&run.gaps, 1.0));
        m.insert(
            "events_per_chunk".into(),
            run.events as f64 / run.chunks.max(1) as f64,
        );
    }
    m
}

/// Runs `load` on every endpoint `repeats` times, rotating the order, into a new scenario.
pub async fn run_scenario(
    scenario: &mut Scenario,
    endpoints: &[&Endpoint],
    load: Load,
    opts: &Options,
) {
    for repeat in 0..opts.repeats {
        for i in 0..endpoints.len() {
            let endpoint = endpoints[(i + repeat) % endpoints.len()];
            let result = measure(endpoint, load, opts).await;
            match &result {
                Ok(m) => eprintln!(
                    "bench: {:<22} {}/{} {:<22} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>9.1} µs{}{}",
                    scenario.id,
                    repeat + 1,
                    opts.repeats,
                    endpoint.label,
                    m.get("rps").copied().unwrap_or(0.0),
                    m.get("p50_us").copied().unwrap_or(0.0),
                    m.get("p99_us").copied().unwrap_or(0.0),
                    m.get("ttfb_p50_us")
                        .map(|t| format!("  ttfb p50 {t:.1} µs"))
                        .unwrap_or_default(),
                    match m.get("errors").copied().unwrap_or(0.0) {
                        e if e > 0.0 => format!("  errors {e}"),
                        _ => String::new(),
                    },
                ),
                Err(error) => eprintln!(
                    "bench: {} {} failed: {error:#}",
                    scenario.id, endpoint.label
                ),
            }
            scenario.push(&endpoint.label, result.ok());
        }
    }
}

/// The comparisons every load scenario reports.
pub fn load_comparisons(streaming: bool) -> Vec<Compare> {
    let mut compare = vec![
        Compare::Ratio("rps"),
        Compare::Added("p50_us"),
        Compare::Added("p99_us"),
        Compare::Added("p999_us"),
    ];
    if streaming {
        compare.extend([
            Compare::Added("ttfb_p50_us"),
            Compare::Added("ttfb_p99_us"),
            Compare::Added("ttft_p50_us"),
            Compare::Added("gap_p99_us"),
            Compare::Ratio("events_per_chunk"),
        ]);
    }
    compare
}
