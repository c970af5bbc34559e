//! The report: `report.json` (every figure: median, min, max over the repeats), `report.md`
//! (the same as tables, with the targets checked), and `latency.svg`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

mod floor;
mod goals;

use crate::stats::{Compare, Scenario, Spread};
use crate::suite::{
    cluster, features, litellm_label, telemetry, tokens, Results, FLOOR, FLOOR_SYSTEM,
};

use floor::floor_rows;
use goals::{goals, litellm_best, resource};

// === JSON ===

fn to_json(results: &Results) -> serde_json::Value {
    let goals: Vec<serde_json::Value> = goals(results)
        .iter()
        .map(|g| {
            serde_json::json!({
                "id": g.id, "what": g.what, "goal": g.goal, "unit": g.unit,
                "value": g.value, "status": g.status(),
            })
        })
        .collect();
    let litellm_best = litellm_best(results)
        .map(|(rps, config)| serde_json::json!({"rps": rps, "configuration": config}));
    serde_json::json!({
        "meta": results.meta,
        "notes": results.notes,
        "targets": goals,
        "scenarios": results.scenarios.iter().map(Scenario::to_json).collect::<Vec<_>>(),
        "resources": results.resources_json(),
        "held_streams": results.held,
        "litellm_best": litellm_best,
        "floor": floor_rows(results).iter().map(floor::FloorRow::to_json).collect::<Vec<_>>(),
    })
}

// === Markdown ===

/// `median (min–max)` with `digits` decimals; `–` when absent.
fn fmt(value: Option<Spread>, digits: usize) -> String {
    match value {
        None => "–".to_owned(),
        Some(s) if s.n <= 1 || (s.max - s.min).abs() < f64::EPSILON => {
            format!("{:.*}", digits, s.median)
        }
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        ),
    }
}

fn ratio(value: Option<Spread>) -> String {
    match value {
        None => "–".to_owned(),
        some => format!("{}×", fmt(some, 2)),
    }
}

fn meta_str<'a>(results: &'a Results, key: &str) -> &'a str {
    results
        .meta
        .get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
}

fn to_markdown(results: &Results) -> String {
    let mut md = String::new();
    let m = &results.meta;
    let _ = writeln!(md, "# poolgate benchmark report\n");
    let _ = writeln!(
        md,
        "- when: {} — mode: {} — repeats: {} — each run: {} ms warm-up + {} ms measured",
        meta_str(results, "date"),
        meta_str(results, "mode"),
        m.get("repeats").cloned().unwrap_or_default(),
        m.get("warmup_ms").cloned().unwrap_or_default(),
        m.get("duration_ms").cloned().unwrap_or_default(),
    );
    if let Some(machine) = m.get("machine") {
        let _ = writeln!(
            md,
            "- machine: {} CPU(s), {}, {} GiB, Linux {} (shared: the load generator, the mock, and the system under test all run on it)",
            machine["nproc"], machine["cpu_model"].as_str().unwrap_or("?"), machine["mem_gib"],
            machine["kernel"].as_str().unwrap_or("?"),
        );
    }
    let _ = writeln!(
        md,
        "- poolgate: {} — load generator: {} thread(s), hyper HTTP/1.1 keep-alive (held streams: HTTP/1.1 and HTTP/2)",
        meta_str(results, "poolgate"),
        m.get("client_threads").cloned().unwrap_or_default(),
    );
    for note in &results.notes {
        let _ = writeln!(md, "- {note}");
    }
    let _ = writeln!(
        md,
        "\nFigures are **median (min–max)** over the repeats. A ratio or an *added* figure is computed per repeat between runs made back to back, then summarised. Latencies in µs.\n"
    );

    let _ = writeln!(
        md,
        "## Targets\n\n| target | goal | measured | status |\n|---|---|---|---|"
    );
    for goal in goals(results) {
        let value = match goal.unit {
            "×" => ratio(goal.value),
            unit => format!("{} {unit}", fmt(goal.value, 1)),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | **{}** |",
            goal.what,
            goal.goal,
            value,
            goal.status()
        );
    }

    floor_table(&mut md, results);
    load_tables(&mut md, results);
    stream_table(&mut md, results);
    resource_table(&mut md, results);
    held_table(&mut md, results);
    feature_table(&mut md, results);
    cluster_table(&mut md, results);
    telemetry_table(&mut md, results);
    tokens_table(&mut md, results);
    litellm_table(&mut md, results);
    md
}

/// "The Rust stack's floor": nginx, the hyper floor and poolgate side by side on #13's figures.
fn floor_table(md: &mut String, results: &Results) {
    let rows = floor_rows(results);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## The Rust stack's floor\n\n*hyper floor*: this package's `hyper-floor`, a reverse proxy on poolgate's stack (tokio multi-thread runtime, hyper via hyper-util's `auto::Builder`, a pooled hyper-util client, jemalloc, TCP_NODELAY) forwarding every request unchanged, with no gateway features. floor / nginx is what that stack costs against nginx; poolgate / floor is what poolgate's features cost on top of it. Latency rows are added over direct; ratios are per repeat.\n\n| figure | nginx | hyper floor | poolgate | floor / nginx | poolgate / floor | poolgate − floor |\n|---|---|---|---|---|---|---|"
    );
    for row in rows {
        let digits = if row.unit == "req/s" { 0 } else { 1 };
        let value = |v| match v {
            None => "–".to_owned(),
            some => format!("{} {}", fmt(some, digits), row.unit),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.what,
            value(row.nginx),
            value(row.floor),
            value(row.poolgate),
            ratio(row.floor_vs_nginx),
            ratio(row.poolgate_vs_floor),
            value(row.poolgate_minus_floor),
        );
    }
}

fn load_tables(md: &mut String, results: &Results) {
    for (kind, heading, param) in [
        (
            "closed",
            "Throughput and latency, closed loop",
            "connections",
        ),
        (
            "agentgateway",
            "agentgateway's figure: closed loop, 32 connections, 1 KB body",
            "connections",
        ),
        (
            "open",
            "Latency at a fixed offered load, open loop",
            "offered req/s",
        ),
    ] {
        let scenarios: Vec<&Scenario> = results
            .scenarios
            .iter()
            .filter(|s| s.kind == kind)
            .collect();
        if scenarios.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "\n## {heading}\n\n| {param} | system | req/s | vs direct | vs nginx | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | CPU ms / 1k req |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for s in scenarios {
            for target in ["direct", "nginx", FLOOR, "poolgate", &litellm_label(1)] {
                if !s.runs.contains_key(target) {
                    continue;
                }
                let vs = |c| {
                    if target == s.baseline {
                        "–".to_owned()
                    } else {
                        ratio(s.paired(target, &s.baseline, c))
                    }
                };
                let added = |metric| {
                    if target == s.baseline {
                        "–".to_owned()
                    } else {
                        fmt(s.paired(target, &s.baseline, Compare::Added(metric)), 1)
                    }
                };
                let vs_nginx =
                    if [FLOOR, "poolgate"].contains(&target) && s.runs.contains_key("nginx") {
                        ratio(s.paired(target, "nginx", Compare::Ratio("rps")))
                    } else {
                        "–".to_owned()
                    };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    s.param,
                    target,
                    fmt(s.summary(target, "rps"), 0),
                    vs(Compare::Ratio("rps")),
                    vs_nginx,
                    fmt(s.summary(target, "p50_us"), 1),
                    fmt(s.summary(target, "p99_us"), 1),
                    fmt(s.summary(target, "p999_us"), 1),
                    added("p50_us"),
                    added("p99_us"),
                    added("p999_us"),
                    fmt(s.summary(target, "cpu_ms_per_1k"), 1),
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\n*vs direct / vs nginx*: requests per second through that system divided by direct (or nginx), same repeat. *added*: latency through that system minus direct. *CPU ms / 1k req*: CPU time of that system's processes (for direct: the mock itself) per 1,000 requests."
    );
}

fn stream_table(md: &mut String, results: &Results) {
    let scenarios: Vec<&Scenario> = results
        .scenarios
        .iter()
        .filter(|s| s.kind == "stream")
        .collect();
    if scenarios.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Streaming (SSE)\n\n| scenario | system | streams/s | TTFB p50 | TTFB p99 | added TTFB p50 | added TTFB p99 | TTFT p50 | added TTFT p50 | event gap p50 | event gap p99 | event gap max | events per chunk |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in scenarios {
        for target in ["direct", "nginx", FLOOR, "poolgate"] {
            if !s.runs.contains_key(target) {
                continue;
            }
            let added = |metric| {
                if target == "direct" {
                    "–".to_owned()
                } else {
                    fmt(s.paired(target, "direct", Compare::Added(metric)), 1)
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.title,
                target,
                fmt(s.summary(target, "rps"), 0),
                fmt(s.summary(target, "ttfb_p50_us"), 1),
                fmt(s.summary(target, "ttfb_p99_us"), 1),
                added("ttfb_p50_us"),
                added("ttfb_p99_us"),
                fmt(s.summary(target, "ttft_p50_us"), 1),
                added("ttft_p50_us"),
                fmt(s.summary(target, "gap_p50_us"), 1),
                fmt(s.summary(target, "gap_p99_us"), 1),
                fmt(s.summary(target, "gap_max_us"), 1),
                fmt(s.summary(target, "events_per_chunk"), 2),
            );
        }
    }
    let _ = writeln!(
        md,
        "\n*TTFB*: request sent → first body byte. *TTFT* (time to first token): request sent → the body chunk that completed the first event with a non-empty `content` (poolgate holds a stream's content-free role chunk back until then, so that a stream that dies before its first token can still fail over: its first byte is its first token). *event gap*: time between two consecutive SSE events as the client's HTTP parser hands them over (0 when they came in one body chunk or one TCP read). *events per chunk*: SSE events per HTTP body chunk the client received; a proxy that held events back to send them together would raise it above direct's."
    );
}

fn resource_table(md: &mut String, results: &Results) {
    let systems = [
        "poolgate",
        "nginx",
        FLOOR_SYSTEM,
        "mock-upstream",
        "litellm-1w",
        "litellm-2w",
    ];
    let present: Vec<&str> = systems
        .into_iter()
        .filter(|s| results.resources.contains_key(*s))
        .collect();
    if present.is_empty() {
        return;
    }
    let _ = write!(md, "\n## Resources\n\n| figure |");
    for s in &present {
        let _ = write!(md, " {s} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in &present {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    let rows = [
        ("rss_idle_mb", "RSS idle (MB)".to_owned(), 1),
        (
            "rss_load_mb",
            "RSS under load, peak per run (MB)".to_owned(),
            1,
        ),
        (
            "cpu_ms_per_1k",
            "CPU ms per 1,000 requests (64 connections)".to_owned(),
            1,
        ),
        (
            "off_core_cpu_ms_per_1k",
            "… of which off the per-core request threads (usage writer's SQLite, control plane)"
                .to_owned(),
            2,
        ),
        (
            "startup_ms",
            "start → first request served (ms)".to_owned(),
            1,
        ),
    ];
    for (figure, title, digits) in rows {
        if !present
            .iter()
            .any(|s| resource(results, s, figure).is_some())
        {
            continue;
        }
        let _ = write!(md, "| {title} |");
        for s in &present {
            let _ = write!(md, " {} |", fmt(resource(results, s, figure), digits));
        }
        let _ = writeln!(md);
    }
}

fn held_table(md: &mut String, results: &Results) {
    if results.held.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Many open streams (a fresh poolgate per count and mode)\n\n| streams | clients | open when sampled | failed | ended early | opened in (s) | RSS idle (MB) | RSS open (MB) | per stream (KB) | descriptors idle / open | all finished in (s) | RSS then + settle (MB) |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &results.held {
        let clients = held_clients(run);
        if let Some(reason) = &run.skipped {
            let _ = writeln!(
                md,
                "| {} | {clients} | skipped: {reason} | | | | | | | | | |",
                run.streams
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {clients} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} | {:.1} | {:.1} ({} ms) |",
            run.streams,
            run.open_at_sample,
            run.failed,
            run.ended_early,
            run.open_seconds,
            run.rss_idle_mb,
            run.rss_open_mb,
            run.kb_per_stream,
            run.fds_idle,
            run.fds_open,
            run.close_seconds,
            run.rss_after_close_mb,
            run.settle_ms,
        );
    }
    let _ = writeln!(
        md,
        "\nEach count runs on a fresh mock and a fresh poolgate per client mode. *clients*: **http1** — a HTTP/1.1 connection per stream, and poolgate speaks HTTP/1.1 to the mock (a client and an upstream socket per stream); **http2** — HTTP/2 with prior knowledge, the streams spread over as few connections as poolgate's `http2_max_concurrent_streams` allows, and poolgate speaks HTTP/2 to the mock (`http_version = \"http2\"`; a few sockets in all). *RSS idle* before the first stream, *RSS open* 0.5 s after the last one got its first byte (the upstream sends one event per second), *per stream* = (open − idle) ÷ streams open, then every client connection is dropped at once; poolgate notices at its next write (HTTP/1.1: the next event, within a second) or when the connection's socket closes (HTTP/2) — *all finished in* is until its descriptors are back near the idle count and its admin API counts no request in flight (at most 30 s) — and RSS is read again after the settle time: what the allocator gave back to the system. *failed*: a connection, a non-2xx answer or no first byte; *ended early*: opened, then ended before the harness closed it."
    );
    for run in results.held.iter().filter(|run| !run.failures.is_empty()) {
        let _ = writeln!(
            md,
            "\n{} streams ({}), first failures: {}",
            run.streams,
            run.mode.as_str(),
            run.failures.join("; ")
        );
    }
    for run in results
        .held
        .iter()
        .filter(|run| run.skipped.is_none() && run.in_flight_after_close != Some(0))
    {
        let what = match run.in_flight_after_close {
            Some(n) => format!("poolgate still counted {n} request(s) in flight"),
            None => "poolgate's admin API did not say how many requests were in flight".to_owned(),
        };
        let _ = writeln!(
            md,
            "\n{} streams ({}): {what} when the after-close RSS was read.",
            run.streams,
            run.mode.as_str(),
        );
    }
}

/// `http1, 5000 connections` / `http2, 25 connections × 200`, and the upstream's protocol when
/// it is not the clients' (`--held-upstream`).
fn held_clients(run: &crate::suite::HeldRun) -> String {
    let clients = match run.mode {
        crate::hold::Protocol::Http1 => format!("http1, {} connections", run.connections),
        crate::hold::Protocol::Http2 => format!(
            "http2, {} connections × ≤ {}",
            run.connections, run.streams_per_connection
        ),
    };
    if run.upstream == run.mode {
        clients
    } else {
        format!("{clients}; **{} to the mock**", run.upstream.as_str())
    }
}

fn feature_table(md: &mut String, results: &Results) {
    let Some(s) = results.scenarios.iter().find(|s| s.kind == "feature") else {
        return;
    };
    cost_table(
        md,
        s,
        "Cost of poolgate's features",
        &features::LABELS,
        "1 backend",
    );
    let _ = writeln!(
        md,
        "\nEvery configuration records usage (it cannot be switched off); its SQLite batches are in the last column (the CPU off the per-core request threads). *429 churn*: 5 of 10 backends answer every request with 429; cooldowns of 10 ms make them cool, probe and fail over continuously."
    );
}

fn telemetry_table(md: &mut String, results: &Results) {
    let Some(s) = results.scenarios.iter().find(|s| s.kind == "telemetry") else {
        return;
    };
    cost_table(
        md,
        s,
        "Cost of metrics and tracing",
        &telemetry::LABELS,
        "off",
    );
    let _ = writeln!(
        md,
        "\n*telemetry off*: `[metrics] enabled = false`, `[telemetry] access_log = false`. *metrics*: the Prometheus series counted per request (not scraped during the run). *access log*: one info line per request (human format) written to the process's log file. *traces*: a request span and an attempt span per request, batched and exported over OTLP/HTTP (protobuf) to a receiver in the harness. The CPU column is the whole poolgate process (exporter thread included); the ratio is the cost per request."
    );
}

fn tokens_table(md: &mut String, results: &Results) {
    let Some(s) = results.scenarios.iter().find(|s| s.kind == "tokens") else {
        return;
    };
    cost_table(md, s, "Cost of TPM limits", &tokens::LABELS, "TPM off");
    let _ = writeln!(
        md,
        "\n*TPM on*: `tpm_limit` of 150000000 on the backend and the client key (never refused): every request's prompt is estimated (tiktoken `o200k_base` for `gpt-4o-mini`, `ceil(bytes / 3)` for an unknown model), reserved on both buckets and settled with the answer's usage."
    );
}

/// A table of configurations of one closed-loop scenario against its baseline.
fn cost_table(md: &mut String, s: &Scenario, heading: &str, labels: &[&str], baseline: &str) {
    let _ = writeln!(
        md,
        "\n## {heading} ({})\n\n| configuration | req/s | vs {baseline} | p50 | p99 | added p50 | added p99 | CPU ms / 1k req | CPU vs {baseline} | off per-core threads, CPU ms / 1k req |\n|---|---|---|---|---|---|---|---|---|---|",
        s.title
    );
    for target in labels.iter().copied() {
        if !s.runs.contains_key(target) {
            continue;
        }
        let cmp = |c| {
            if target == s.baseline {
                "–".to_owned()
            } else {
                match c {
                    Compare::Ratio(_) => ratio(s.paired(target, &s.baseline, c)),
                    Compare::Added(_) => fmt(s.paired(target, &s.baseline, c), 1),
                }
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            target,
            fmt(s.summary(target, "rps"), 0),
            cmp(Compare::Ratio("rps")),
            fmt(s.summary(target, "p50_us"), 1),
            fmt(s.summary(target, "p99_us"), 1),
            cmp(Compare::Added("p50_us")),
            cmp(Compare::Added("p99_us")),
            fmt(s.summary(target, "cpu_ms_per_1k"), 1),
            cmp(Compare::Ratio("cpu_ms_per_1k")),
            fmt(s.summary(target, "off_core_cpu_ms_per_1k"), 2),
        );
    }
}

fn cluster_table(md: &mut String, results: &Results) {
    let scenarios: Vec<&Scenario> = results
        .scenarios
        .iter()
        .filter(|s| s.kind == "cluster")
        .collect();
    if scenarios.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Single vs cluster mode (one instance)\n\n| configuration | connections | req/s | vs single | p50 | p99 | added p50 | added p99 | CPU ms / 1k req (incl. Redis) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for s in scenarios {
        for target in cluster::LABELS {
            if !s.runs.contains_key(target) {
                continue;
            }
            let cmp = |c| {
                if target == s.baseline {
                    "–".to_owned()
                } else {
                    match c {
                        Compare::Ratio(_) => ratio(s.paired(target, &s.baseline, c)),
                        Compare::Added(_) => fmt(s.paired(target, &s.baseline, c), 1),
                    }
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                target,
                s.param,
                fmt(s.summary(target, "rps"), 0),
                cmp(Compare::Ratio("rps")),
                fmt(s.summary(target, "p50_us"), 1),
                fmt(s.summary(target, "p99_us"), 1),
                cmp(Compare::Added("p50_us")),
                cmp(Compare::Added("p99_us")),
                fmt(s.summary(target, "cpu_ms_per_1k"), 1),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nBackend and client-key RPM limits are on (10,000,000/min: every request is admitted, and every one takes from both buckets). Single mode takes them from this instance's buckets; with Redis, an admission is one atomic Redis call (both buckets, the cooldown and the probe slot) that also leases the instance a token allowance of 32 per bucket, from which the next admissions are paid without a call (one call in 33 at 1 connection); with allowances off (`redis.allowance_max = 0`, as for limits under 6,000/min) every request makes the call. Redis's CPU is counted with the configurations that use it."
    );
}

fn litellm_table(md: &mut String, results: &Results) {
    let scenarios: Vec<&Scenario> = results
        .scenarios
        .iter()
        .filter(|s| s.kind == "litellm")
        .collect();
    if scenarios.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## LiteLLM proxy (for scale)\n\n| configuration | connections | LiteLLM req/s | poolgate req/s | direct req/s | poolgate / LiteLLM | LiteLLM p50 | LiteLLM added p50 | poolgate added p50 |\n|---|---|---|---|---|---|---|---|---|"
    );
    for s in scenarios {
        for workers in [1_u32, 2] {
            let label = litellm_label(workers);
            if !s.runs.contains_key(&label) {
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                label,
                s.param,
                fmt(s.summary(&label, "rps"), 0),
                fmt(s.summary("poolgate", "rps"), 0),
                fmt(s.summary("direct", "rps"), 0),
                ratio(s.paired("poolgate", &label, Compare::Ratio("rps"))),
                fmt(s.summary(&label, "p50_us"), 1),
                fmt(s.paired(&label, "direct", Compare::Added("p50_us")), 1),
                fmt(s.paired("poolgate", "direct", Compare::Added("p50_us")), 1),
            );
        }
    }
    if let Some((rps, config)) = litellm_best(results) {
        let _ = writeln!(
            md,
            "\nLiteLLM's best configuration here: {config}, {} req/s.",
            fmt(Some(rps), 0)
        );
    }
}

/// Writes `report.json`, `report.md` and `latency.svg` into `out`.
pub fn write(out: &Path, results: &Results) -> Result<()> {
    let json = serde_json::to_string_pretty(&to_json(results))?;
    std::fs::write(out.join("report.json"), json).context("writing report.json")?;
    let mut md = to_markdown(results);
    match crate::plot::latency_vs_load(&out.join("latency.svg"), results) {
        Ok(()) => {
            let _ = writeln!(
                md,
                "\n## Latency vs offered load\n\n![latency vs offered load](latency.svg)"
            );
        }
        Err(error) => {
            let _ = writeln!(md, "\n(plot failed: {error:#})");
        }
    }
    std::fs::write(out.join("report.md"), md).context("writing report.md")?;
    Ok(())
}
