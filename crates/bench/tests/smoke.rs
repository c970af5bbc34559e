//! The CI smoke run of the benchmark harness: `bench --smoke` (direct + poolgate only, a few
//! seconds, nginx and LiteLLM skipped and said so) must write `report.md`, `report.json` and
//! `latency.svg` holding the expected figures. The real benchmark runs are manual
//! (docs/benchmarks.md).
#![expect(
    clippy::expect_used,
    reason = "helpers of an integration test: a failure should panic with the message"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory of the `bench` binary under test; `poolgate` and `mock-upstream` are built
/// there (by `cargo test --workspace` already, else here).
fn bin_dir() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_bench"));
    let dir = bench
        .parent()
        .expect("bench has a parent dir")
        .to_path_buf();
    if !dir.join("poolgate").is_file() || !dir.join("mock-upstream").is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "poolgate", "-p", "mock-upstream"]);
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(
            status.success(),
            "building poolgate and mock-upstream failed"
        );
    }
    dir
}

fn run_smoke(out: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(out)
        .arg("--bin-dir")
        .arg(bin_dir())
        .spawn()
        .expect("starting bench");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for bench") {
            assert!(status.success(), "bench --smoke failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bench --smoke did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn median(value: &Value) -> f64 {
    value["median"]
        .as_f64()
        .unwrap_or_else(|| panic!("no median in {value}"))
}

#[test]
fn smoke_run_writes_the_report() {
    let out = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    run_smoke(out.path());
    eprintln!(
        "bench --smoke took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    assert_eq!(json["meta"]["mode"], "smoke");
    assert!(json["meta"]["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);

    let scenarios = json["scenarios"].as_array().expect("scenarios");
    let scenario = |id: &str| {
        scenarios
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("scenario `{id}` missing"))
    };
    for id in [
        "closed_c1",
        "closed_c16",
        "open_r1000",
        "stream_c1",
        "stream_gap_c16",
    ] {
        let s = scenario(id);
        for target in ["direct", "poolgate"] {
            assert!(
                median(&s["targets"][target]["rps"]) > 0.0,
                "{id}: no throughput for {target}"
            );
            assert!(median(&s["targets"][target]["p50_us"]) > 0.0);
        }
        let vs = &s["comparisons"]["poolgate_vs_direct"];
        assert!(median(&vs["rps_ratio"]) > 0.0, "{id}: no ratio");
        for added in ["added_p50_us", "added_p99_us", "added_p999_us"] {
            assert!(vs[added]["median"].is_f64(), "{id}: no {added}");
        }
    }
    let stream = &scenario("stream_c1")["targets"]["poolgate"];
    for figure in ["ttfb_p50_us", "gap_p99_us", "events_per_chunk"] {
        assert!(median(&stream[figure]) > 0.0, "stream figure {figure}");
    }
    let features = scenario("features_c16");
    for label in [
        "1 backend",
        "50 backends",
        "RPM limits on",
        "429 churn on 5 of 10",
    ] {
        assert!(
            median(&features["targets"][label]["rps"]) > 0.0,
            "feature `{label}`"
        );
    }
    let telemetry = scenario("telemetry_c16");
    for label in [
        "telemetry off",
        "metrics",
        "metrics + access log (default)",
        "default + traces (100 % sampled)",
    ] {
        assert!(
            median(&telemetry["targets"][label]["rps"]) > 0.0,
            "telemetry `{label}`"
        );
    }
    // The traced gateway's spans reached the harness's OTLP receiver.
    assert!(median(&json["resources"]["traces"]["spans_received"]) > 0.0);

    // Cluster mode: PostgreSQL and Redis are installed where the tests run (.ci/run).
    for id in ["cluster_c1", "cluster_c16"] {
        let s = scenario(id);
        for label in [
            "single (SQLite)",
            "SQLite + Redis",
            "cluster (PostgreSQL + Redis)",
        ] {
            assert!(median(&s["targets"][label]["rps"]) > 0.0, "{id}: `{label}`");
        }
    }

    let poolgate = &json["resources"]["poolgate"];
    for figure in ["rss_idle_mb", "rss_load_mb", "startup_ms", "cpu_ms_per_1k"] {
        assert!(median(&poolgate[figure]) > 0.0, "resource {figure}");
    }
    // Held streams (200 in a smoke run), in both client modes: memory open and after closing,
    // no error; over HTTP/2 the 200 streams share one client connection.
    let held = json["held_streams"].as_array().expect("held_streams");
    assert_eq!(held.len(), 2, "one run per mode: {held:?}");
    for (run, mode, connections) in [(&held[0], "http1", 200), (&held[1], "http2", 1)] {
        assert_eq!(run["streams"], 200);
        assert_eq!(run["mode"], mode);
        assert_eq!(run["connections"], connections, "{mode}: {run}");
        assert_eq!(run["open_at_sample"], 200, "held streams ({mode}): {run}");
        assert_eq!(run["failed"], 0);
        for figure in [
            "rss_idle_mb",
            "rss_open_mb",
            "rss_after_close_mb",
            "kb_per_stream",
        ] {
            assert!(
                run[figure].as_f64().unwrap_or(0.0) > 0.0,
                "held {figure} ({mode})"
            );
        }
    }
    // agentgateway's figure: 32 connections, a 1 KB body.
    let agw = scenario("agentgateway_c32_1k");
    assert!(agw["title"]
        .as_str()
        .unwrap_or("")
        .contains("1024 byte body"));
    for target in ["direct", "poolgate"] {
        assert!(
            median(&agw["targets"][target]["rps"]) > 0.0,
            "agentgateway {target}"
        );
    }

    let targets = json["targets"].as_array().expect("targets");
    // 14, and the three held-stream goals again for the HTTP/2 clients.
    assert_eq!(targets.len(), 17);
    for target in targets {
        let status = target["status"].as_str().expect("status");
        assert!(["met", "missed", "not measured"].contains(&status));
    }
    let notes = json["notes"].to_string();
    assert!(notes.contains("nginx: skipped") && notes.contains("LiteLLM: skipped"));

    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    for heading in [
        "## Targets",
        "## Throughput and latency, closed loop",
        "## Latency at a fixed offered load, open loop",
        "## Streaming (SSE)",
        "## Resources",
        "## Many open streams",
        "## agentgateway's figure",
        "## Cost of poolgate's features",
        "## Single vs cluster mode",
        "added p50",
        "RSS idle",
        "nginx: skipped",
    ] {
        assert!(md.contains(heading), "report.md lacks `{heading}`");
    }
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).expect("latency.svg");
    assert!(svg.starts_with("<svg") && svg.contains("poolgate"));
}
