//! The issues' targets, each checked against this run's figures. Issue #13's are relative to
//! nginx `proxy_pass` measured in the same run (absolute microseconds differ a lot from one
//! machine to the next): CPU per request ≤ 2× nginx's, throughput ≥ 0.60× nginx's, added p50 at
//! 1,000 req/s ≤ nginx's, stream time to first byte added ≤ 1.5× nginx's; and memory: 5,000
//! open streams in ≤ 100 MB, ≤ 40 MB once they closed, 20,000 open with no error — each of these
//! three checked per client mode (HTTP/1.1, a connection per stream; HTTP/2, many streams per
//! connection), the row naming its mode. The earlier
//! absolute targets that these do not replace stay: p99 at 1,000 req/s, against direct and
//! LiteLLM, no delayed chunk, idle RSS, cluster admission, start-up.

use crate::hold::Protocol;
use crate::stats::{spread, Compare, Spread};
use crate::suite::{cluster, litellm_label, HeldRun, Results};

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

/// One measured value as a spread of one.
fn single(value: f64) -> Spread {
    Spread {
        median: value,
        min: value,
        max: value,
        n: 1,
    }
}

/// A held-streams run that measured what it was asked for (≥ 99 % of the streams open).
fn held_measured(results: &Results, streams: usize, mode: Protocol) -> Option<&HeldRun> {
    results
        .held_run(streams, mode)
        .filter(|run| run.skipped.is_none() && run.open_at_sample * 100 >= streams * 99)
}

/// The held-streams goals' ids and descriptions in one client mode: RSS with 5,000 open, RSS
/// once they closed, 20,000 open with no error.
fn held_labels(mode: Protocol) -> [(&'static str, &'static str); 3] {
    match mode {
        Protocol::Http1 => [
            ("rss_5000_streams", "RSS with 5,000 concurrent open streams — HTTP/1.1 clients, a connection per stream"),
            ("rss_after_5000_streams_closed", "RSS once the 5,000 streams closed (every stream finished, then the settle time) — HTTP/1.1 clients"),
            ("streams_20000_no_error", "20,000 concurrent open streams: streams that failed or ended early — HTTP/1.1 clients, a connection per stream"),
        ],
        Protocol::Http2 => [
            ("rss_5000_streams_http2", "RSS with 5,000 concurrent open streams — HTTP/2 clients, many streams per connection, HTTP/2 to the upstream"),
            ("rss_after_5000_streams_closed_http2", "RSS once the 5,000 streams closed (every stream finished, then the settle time) — HTTP/2 clients"),
            ("streams_20000_no_error_http2", "20,000 concurrent open streams: streams that failed or ended early — HTTP/2 clients, many streams per connection, HTTP/2 to the upstream"),
        ],
    }
}

/// The memory and 20,000-stream goals, one row per client mode: HTTP/1.1 (a connection per
/// stream, how the issue first measured them) always, HTTP/2 when that mode ran. Each row says
/// its mode; neither stands in for the other.
fn held_goals(goals: &mut Vec<Goal>, results: &Results) {
    let check = |value: Option<Spread>, ok: fn(f64) -> bool| value.map(|v| ok(v.median));
    let modes: Vec<Protocol> = [Protocol::Http1, Protocol::Http2]
        .into_iter()
        .filter(|mode| *mode == Protocol::Http1 || results.held.iter().any(|run| run.mode == *mode))
        .collect();
    for &mode in &modes {
        let [(id, what), ..] = held_labels(mode);
        let open = held_measured(results, 5000, mode).map(|run| single(run.rss_open_mb));
        goals.push(Goal {
            id,
            what,
            goal: "≤ 100 MB",
            value: open,
            unit: "MB",
            met: check(open, |v| v <= 100.0),
        });
    }
    for &mode in &modes {
        let [_, (id, what), _] = held_labels(mode);
        let closed = held_measured(results, 5000, mode).map(|run| single(run.rss_after_close_mb));
        goals.push(Goal {
            id,
            what,
            goal: "≤ 40 MB",
            value: closed,
            unit: "MB",
            met: check(closed, |v| v <= 40.0),
        });
    }
    for &mode in &modes {
        let [.., (id, what)] = held_labels(mode);
        let many = results
            .held_run(20_000, mode)
            .filter(|run| run.skipped.is_none());
        goals.push(Goal {
            id,
            what,
            goal: "0",
            value: many.map(|run| single((run.failed + run.ended_early) as f64)),
            unit: "streams",
            met: many.map(HeldRun::without_error),
        });
    }
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
    let cpu = paired(
        results,
        "closed_c64",
        "poolgate",
        "nginx",
        Compare::Ratio("cpu_ms_per_1k"),
    );
    goals.push(Goal {
        id: "cpu_vs_nginx_c64",
        what: "CPU per request through poolgate / through nginx, 64 connections",
        goal: "≤ 2×",
        value: cpu,
        unit: "×",
        met: check(cpu, |v| v <= 2.0),
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
        what: "throughput through poolgate / through nginx, 64 connections (0.90 is the aim)",
        goal: "≥ 0.60",
        value: vs_nginx,
        unit: "×",
        met: check(vs_nginx, |v| v >= 0.6),
    });
    // Both added over the same direct run: poolgate's p50 − nginx's p50 of the same repeat.
    let added_p50 = paired(
        results,
        "open_r1000",
        "poolgate",
        "nginx",
        Compare::Added("p50_us"),
    );
    goals.push(Goal {
        id: "added_p50_at_1000rps_vs_nginx",
        what: "added latency p50 at 1,000 req/s offered (non-streaming): poolgate's minus nginx's",
        goal: "≤ 0 µs",
        value: added_p50,
        unit: "µs",
        met: check(added_p50, |v| v <= 0.0),
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
    // Time to first byte added over direct, poolgate's ÷ nginx's, per repeat.
    let ttfb = results.scenario("stream_c1").and_then(|s| {
        s.per_repeat(&["direct", "nginx", "poolgate"], |runs| {
            let direct = runs[0].get("ttfb_p50_us")?;
            let nginx = runs[1].get("ttfb_p50_us")? - direct;
            let ours = runs[2].get("ttfb_p50_us")? - direct;
            (nginx > 0.0).then_some(ours / nginx)
        })
    });
    goals.push(Goal {
        id: "stream_ttfb_added_vs_nginx",
        what: "streams: time to first byte added over direct, p50 (1 connection): poolgate's / nginx's",
        goal: "≤ 1.5×",
        value: ttfb,
        unit: "×",
        met: check(ttfb, |v| v <= 1.5),
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
    held_goals(&mut goals, results);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(streams: usize, mode: Protocol, rss_open_mb: f64) -> HeldRun {
        HeldRun {
            streams,
            mode,
            upstream: mode,
            opened: streams,
            open_at_sample: streams,
            rss_open_mb,
            rss_after_close_mb: rss_open_mb / 4.0,
            ..HeldRun::default()
        }
    }

    fn goal<'a>(goals: &'a [Goal], id: &str) -> &'a Goal {
        goals.iter().find(|g| g.id == id).unwrap()
    }

    #[test]
    fn each_client_mode_is_judged_in_its_own_row() {
        let results = Results {
            held: vec![
                run(5000, Protocol::Http1, 220.0),
                run(5000, Protocol::Http2, 80.0),
                HeldRun {
                    skipped: Some("descriptor limit".into()),
                    ..run(20_000, Protocol::Http1, 0.0)
                },
                HeldRun {
                    failed: 3,
                    open_at_sample: 19_997,
                    ..run(20_000, Protocol::Http2, 300.0)
                },
            ],
            ..Results::default()
        };
        let goals = goals(&results);
        assert_eq!(goal(&goals, "rss_5000_streams").status(), "missed");
        assert_eq!(goal(&goals, "rss_5000_streams_http2").status(), "met");
        assert!(goal(&goals, "rss_5000_streams_http2")
            .what
            .contains("HTTP/2"));
        assert_eq!(
            goal(&goals, "rss_after_5000_streams_closed").status(),
            "missed"
        );
        assert_eq!(
            goal(&goals, "rss_after_5000_streams_closed_http2").status(),
            "met"
        );
        // Skipped over HTTP/1.1: not measured, not met by the HTTP/2 run's figure.
        assert_eq!(
            goal(&goals, "streams_20000_no_error").status(),
            "not measured"
        );
        let many = goal(&goals, "streams_20000_no_error_http2");
        assert_eq!(many.status(), "missed");
        assert_eq!(many.value.map(|v| v.median), Some(3.0));
    }

    #[test]
    fn a_run_whose_upstream_is_not_its_clients_protocol_is_judged_by_no_goal() {
        let results = Results {
            held: vec![HeldRun {
                upstream: Protocol::Http2,
                ..run(5000, Protocol::Http1, 90.0)
            }],
            ..Results::default()
        };
        let goals = goals(&results);
        assert_eq!(goal(&goals, "rss_5000_streams").status(), "not measured");
    }

    #[test]
    fn without_http2_runs_only_the_http1_rows_are_shown() {
        let results = Results {
            held: vec![run(5000, Protocol::Http1, 90.0)],
            ..Results::default()
        };
        let goals = goals(&results);
        assert_eq!(goal(&goals, "rss_5000_streams").status(), "met");
        assert_eq!(
            goal(&goals, "streams_20000_no_error").status(),
            "not measured"
        );
        assert!(goals.iter().all(|g| !g.id.ends_with("_http2")));
    }
}
