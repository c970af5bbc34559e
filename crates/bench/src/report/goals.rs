//! The targets, each checked against this run's figures: added latency at 1,000 req/s,
//! throughput against nginx / direct / LiteLLM, streaming, memory, start-up.

use crate::stats::{spread, Compare, Spread};
use crate::suite::{cluster, litellm_label, Results};

/// One of the targets, checked against this run.
pub struct Goal {
    pub id: &'static str,
    pub what: &'static str,
    pub goal: &'static str,
    pub value: Option<Spread>,
    pub unit: &'static str,
    pub met: Option<bool>,
}

impl Goal {
    pub fn status(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        }
    }
}

fn paired(
    results: &Results,
    scenario: &str,
    target: &str,
    against: &str,
    c: Compare,
) -> Option<Spread> {
    results.scenario(scenario)?.paired(target, against, c)
}

pub fn resource(results: &Results, system: &str, figure: &str) -> Option<Spread> {
    spread(results.resources.get(system)?.get(figure)?)
}

/// The best LiteLLM throughput (median req/s) over its configurations, and which one.
pub fn litellm_best(results: &Results) -> Option<(Spread, String)> {
    results
        .scenarios
        .iter()
        .filter(|s| s.kind == "litellm")
        .flat_map(|s| {
            [1_u32, 2].into_iter().filter_map(move |w| {
                let label = litellm_label(w);
                s.summary(&label, "rps")
                    .map(|rps| (rps, format!("{label}, {} connections", s.param)))
            })
        })
        .max_by(|a, b| a.0.median.total_cmp(&b.0.median))
}

/// The targets.
pub fn goals(results: &Results) -> Vec<Goal> {
    let check = |value: Option<Spread>, ok: fn(f64) -> bool| value.map(|v| ok(v.median));
    let mut goals = Vec::new();
    let added_p50 = paired(
        results,
        "open_r1000",
        "poolgate",
        "direct",
        Compare::Added("p50_us"),
    );
    goals.push(Goal {
        id: "added_p50_at_1000rps",
        what: "added latency p50 at 1,000 req/s offered (non-streaming)",
        goal: "≤ 50 µs",
        value: added_p50,
        unit: "µs",
        met: check(added_p50, |v| v <= 50.0),
    });
    let added_p99 = paired(
        results,
        "open_r1000",
        "poolgate",
        "direct",
        Compare::Added("p99_us"),
    );
    goals.push(Goal {
        id: "added_p99_at_1000rps",
        what: "added latency p99 at 1,000 req/s offered (non-streaming)",
        goal: "≤ 500 µs",
        value: added_p99,
        unit: "µs",
        met: check(added_p99, |v| v <= 500.0),
    });
    let vs_nginx = paired(
        results,
        "closed_c64",
        "poolgate",
        "nginx",
        Compare::Ratio("rps"),
    );
    goals.push(Goal {
        id: "rps_vs_nginx_c64",
        what: "throughput through poolgate / through nginx, 64 connections",
        goal: "≥ 0.90",
        value: vs_nginx,
        unit: "×",
        met: check(vs_nginx, |v| v >= 0.9),
    });
    let vs_direct = paired(
        results,
        "closed_c64",
        "poolgate",
        "direct",
        Compare::Ratio("rps"),
    );
    goals.push(Goal {
        id: "rps_vs_direct_c64",
        what: "throughput through poolgate / direct, 64 connections",
        goal: "≥ 0.50",
        value: vs_direct,
        unit: "×",
        met: check(vs_direct, |v| v >= 0.5),
    });
    let ours = results
        .scenario("closed_c64")
        .and_then(|s| s.summary("poolgate", "rps"));
    let vs_litellm = match (ours, litellm_best(results)) {
        (Some(ours), Some((theirs, _))) if theirs.median > 0.0 => Some(Spread {
            median: ours.median / theirs.median,
            min: ours.min / theirs.max.max(1e-9),
            max: ours.max / theirs.min.max(1e-9),
            n: ours.n.min(theirs.n),
        }),
        _ => None,
    };
    goals.push(Goal {
        id: "rps_vs_litellm_best",
        what: "throughput through poolgate (64 connections) / LiteLLM's best configuration",
        goal: "≥ 50",
        value: vs_litellm,
        unit: "×",
        met: check(vs_litellm, |v| v >= 50.0),
    });
    let ttfb = paired(
        results,
        "stream_c1",
        "poolgate",
        "direct",
        Compare::Added("ttfb_p50_us"),
    );
    goals.push(Goal {
        id: "stream_ttfb_added_p50",
        what: "streams: time to first byte added, p50 (1 connection)",
        goal: "≤ 100 µs",
        value: ttfb,
        unit: "µs",
        met: check(ttfb, |v| v <= 100.0),
    });
    // A chunk held back shows twice: events merged into one HTTP chunk (more events per chunk
    // than direct), or events delayed in the kernel (Nagle) — longer gaps than direct.
    let batching = paired(
        results,
        "stream_gap_c16",
        "poolgate",
        "direct",
        Compare::Ratio("events_per_chunk"),
    );
    let gap_added = paired(
        results,
        "stream_gap_c16",
        "poolgate",
        "direct",
        Compare::Added("gap_p99_us"),
    );
    goals.push(Goal {
        id: "stream_no_delayed_chunk",
        what: "streams, 5 ms between chunks: gap between events added at p99 (and events per HTTP chunk no higher than direct's)",
        goal: "≤ 1,000 µs",
        value: gap_added,
        unit: "µs",
        met: match (gap_added, batching) {
            (Some(gap), Some(batch)) => Some(gap.median <= 1000.0 && batch.median <= 1.05),
            _ => None,
        },
    });
    let held = resource(results, "poolgate", "rss_held_streams_mb");
    let held_streams = results
        .held
        .get("streams")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let held_open = results
        .held
        .get("open_at_sample")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    goals.push(Goal {
        id: "rss_5000_streams",
        what: "RSS with 5,000 concurrent open streams",
        goal: "≤ 150 MB",
        value: held,
        unit: "MB",
        met: if held_streams >= 5000 && held_open * 100 >= held_streams * 99 {
            check(held, |v| v <= 150.0)
        } else {
            None
        },
    });
    let idle = resource(results, "poolgate", "rss_idle_mb");
    goals.push(Goal {
        id: "rss_idle",
        what: "RSS idle",
        goal: "≤ 20 MB",
        value: idle,
        unit: "MB",
        met: check(idle, |v| v <= 20.0),
    });
    let admission = paired(
        results,
        "cluster_c1",
        cluster::CLUSTER,
        cluster::SINGLE,
        Compare::Added("p50_us"),
    );
    goals.push(Goal {
        id: "cluster_admission_added_p50",
        what: "cluster mode (PostgreSQL + Redis, RPM limits on): added p50 per request against single mode, 1 connection",
        goal: "≤ 150 µs",
        value: admission,
        unit: "µs",
        met: check(admission, |v| v <= 150.0),
    });
    let startup = resource(results, "poolgate", "startup_ms");
    goals.push(Goal {
        id: "startup",
        what: "start (fresh data dir) to first proxied request answered",
        goal: "≤ 100 ms",
        value: startup,
        unit: "ms",
        met: check(startup, |v| v <= 100.0),
    });
    goals
}
