//! `bench` — poolgate's benchmark harness. One command starts, on 127.0.0.1, mock upstreams,
//! nginx `proxy_pass`, the `hyper floor` (this package's `hyper-floor`: poolgate's stack with no
//! gateway features), poolgate (and with `--litellm`, LiteLLM proxy), drives load at each with a
//! built-in hyper load generator, tears everything down, and writes `report.md`, `report.json`
//! and `latency.svg` into `--out` (default `target/bench`). See `docs/benchmarks.md`.
//!
//! Modules: [`suite`] (what runs, in order), [`load`] (the load generator), [`hold`] (thousands
//! of streams held open over HTTP/1.1 or HTTP/2), [`stack`] (starting
//! the systems under test), [`procs`] (child processes and `/proc`), [`stats`] (repeats: median
//! and spread), [`report`] and [`plot`] (the output).

mod hold;
mod load;
mod plot;
mod procs;
mod report;
mod services;
mod stack;
mod stats;
mod suite;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::stack::Bins;
use crate::suite::{Bench, Options, Results};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "poolgate's benchmark harness",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Serve an upstream that answers every request with 429 (used for cooldown churn).
    #[command(name = "mock-429", hide = true)]
    Mock429 {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A few seconds: direct + poolgate only, one repeat, short runs (what CI runs).
    #[arg(long)]
    smoke: bool,
    /// Also measure LiteLLM proxy (installed into `<out>/litellm-venv` on first use).
    #[arg(long)]
    litellm: bool,
    /// Skip nginx even when it is installed.
    #[arg(long)]
    no_nginx: bool,
    /// Skip the `hyper floor` proxy (the `hyper-floor` binary: poolgate's tokio + hyper stack
    /// forwarding with no gateway features), measured by default outside `--smoke`.
    #[arg(long)]
    no_floor: bool,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Directory holding the `poolgate` and `mock-upstream` binaries (default: next to this one,
    /// built first when run through `cargo run`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Repeats of every scenario (default 3; 1 with --smoke).
    #[arg(long)]
    repeats: Option<usize>,
    /// Measured time per run, in ms (default 2000; 300 with --smoke).
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Warm-up before each run, in ms (default 500; 100 with --smoke).
    #[arg(long)]
    warmup_ms: Option<u64>,
    /// Counts of concurrent streams held open for the memory figures, each on a fresh poolgate
    /// (default 5000,20000; 200 with --smoke). A count the open-file limit cannot hold is
    /// skipped and said so.
    #[arg(long, value_delimiter = ',')]
    held_streams: Vec<usize>,
    /// Wait after closing the held streams before their RSS is read again, in ms.
    #[arg(long, default_value_t = suite::held::SETTLE.as_millis() as u64)]
    held_settle_ms: u64,
    /// How the held streams' clients connect (comma-separated; each count runs in each):
    /// `http1` — a connection per stream, HTTP/1.1 to the mock too; `http2` — HTTP/2 with prior
    /// knowledge, `--held-h2-streams` streams per connection, HTTP/2 to the mock too.
    #[arg(long, value_delimiter = ',', value_parser = hold::Protocol::parse, default_value = "http1,http2")]
    held_modes: Vec<hold::Protocol>,
    /// The protocol poolgate speaks to the mock in every held run (`http1` or `http2`), instead
    /// of the clients' own: `--held-modes http1 --held-upstream http2` is HTTP/1.1 clients in
    /// front of an HTTP/2 upstream (as an SDK in front of a provider that speaks `h2`). Such a
    /// run is reported with its upstream and judged by no goal.
    #[arg(long, value_parser = hold::Protocol::parse)]
    held_upstream: Option<hold::Protocol>,
    /// Streams per client connection in the `http2` held mode (also poolgate's
    /// `server.http2_max_concurrent_streams` in those runs).
    #[arg(long, default_value_t = suite::held::H2_STREAMS_PER_CONNECTION)]
    held_h2_streams: usize,
    /// `KEY=VALUE` environment for every poolgate the harness starts (repeatable), e.g. to try
    /// an allocator set-up: `--poolgate-env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`.
    #[arg(long, value_parser = parse_env)]
    poolgate_env: Vec<(String, String)>,
    /// TOML appended to every poolgate's config file, e.g. `'[server]
    /// max_buf_size_bytes = 8192'` (its own tables only).
    #[arg(long, default_value = "")]
    poolgate_toml: String,
    /// What poolgate build is measured, for the report (default: `poolgate --version` and the
    /// git commit of the work tree holding the binaries).
    #[arg(long)]
    poolgate_rev: Option<String>,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Closed-loop connection counts (default 1,16,64,256; 1,16 with --smoke).
    #[arg(long, value_delimiter = ',')]
    connections: Vec<usize>,
    /// Open-loop offered rates in requests/s (default 500,1000,2000,4000,8000; 1000 with --smoke).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Run only these sections (comma-separated): closed, open, stream, held, agentgateway,
    /// startup, features, cluster, telemetry, tokens, litellm.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Mock429 { listen }) => runtime(1).and_then(|rt| rt.block_on(mock_429(listen))),
        None => runtime(cli.run.client_threads.max(1)).and_then(|rt| rt.block_on(run(cli.run))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

async fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    // Before any child starts: they inherit it (thousands of held streams need it).
    let open_files = procs::raise_open_files();
    let floor = !args.smoke && !args.no_floor;
    if args.bin_dir.is_none() {
        build_binaries(floor)?;
    }
    let mut bins = Bins::locate(args.bin_dir.as_deref())?;
    bins.poolgate_env = args.poolgate_env.clone();
    bins.poolgate_toml = args.poolgate_toml.clone();
    let smoke = args.smoke;
    let opts = Options {
        smoke,
        litellm: args.litellm,
        nginx: !smoke && !args.no_nginx,
        floor,
        repeats: args.repeats.unwrap_or(if smoke { 1 } else { 3 }).max(1),
        warmup: Duration::from_millis(args.warmup_ms.unwrap_or(if smoke { 100 } else { 500 })),
        duration: Duration::from_millis(
            args.duration_ms
                .unwrap_or(if smoke { 300 } else { 2000 })
                .max(50),
        ),
        only: args.only,
        connections: args.connections,
        rates: args.rates,
        held_streams: if !args.held_streams.is_empty() {
            args.held_streams
        } else if smoke {
            vec![200]
        } else {
            vec![5000, 20_000]
        },
        held_settle: Duration::from_millis(args.held_settle_ms),
        held_modes: args.held_modes,
        held_upstream: args.held_upstream,
        held_h2_streams: args.held_h2_streams.max(1),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Absolute: children run in their own directories.
    let out = std::fs::canonicalize(&args.out)?;
    let logs = out.join("logs");
    let work = out.join("work");
    std::fs::create_dir_all(&logs)?;
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;

    let mut results = Results::default();
    let meta = &mut results.meta;
    meta.insert("date".into(), procs::now_utc().into());
    meta.insert("mode".into(), (if smoke { "smoke" } else { "full" }).into());
    meta.insert("machine".into(), procs::machine());
    meta.insert("repeats".into(), opts.repeats.into());
    meta.insert("warmup_ms".into(), (opts.warmup.as_millis() as u64).into());
    meta.insert(
        "duration_ms".into(),
        (opts.duration.as_millis() as u64).into(),
    );
    meta.insert("client_threads".into(), args.client_threads.into());
    meta.insert(
        "open_files".into(),
        serde_json::json!({"soft": open_files.soft, "hard": open_files.hard}),
    );
    meta.insert("load_average".into(), procs::load_average().into());
    if !args.poolgate_env.is_empty() {
        let env: Vec<String> = args
            .poolgate_env
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        meta.insert("poolgate_env".into(), env.into());
    }
    if !args.poolgate_toml.is_empty() {
        meta.insert("poolgate_toml".into(), args.poolgate_toml.clone().into());
    }
    meta.insert(
        "poolgate".into(),
        args.poolgate_rev
            .clone()
            .unwrap_or_else(|| poolgate_version(&bins))
            .into(),
    );
    meta.insert(
        "binaries".into(),
        bins.poolgate
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
            .into(),
    );
    let bench = Bench {
        opts: &opts,
        bins: &bins,
        out: &out,
        work: work.clone(),
        logs,
        results,
        open_files,
    };
    let mut results = bench.run().await?;
    results
        .meta
        .insert("load_average_end".into(), procs::load_average().into());
    results.meta.insert(
        "harness_seconds".into(),
        started.elapsed().as_secs_f64().into(),
    );
    report::write(&out, &results)?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "bench: wrote {}/report.md, report.json, latency.svg in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `KEY=VALUE` of `--poolgate-env`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Under `cargo run`, builds `poolgate` and `mock-upstream` (and with `floor`, this package's
/// `hyper-floor`) in this binary's profile first, so one command measures the current sources
/// (a no-op when they are up to date).
fn build_binaries(floor: bool) -> Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let me = std::env::current_exe()?;
    let release = me
        .parent()
        .and_then(|dir| dir.file_name())
        .is_some_and(|name| name == "release");
    let build = |args: &[&str], what: &str| -> Result<()> {
        let mut command = std::process::Command::new(&cargo);
        command.arg("build").args(args);
        if release {
            command.arg("--release");
        }
        let status = command.status().context("running cargo build")?;
        anyhow::ensure!(status.success(), "building {what} failed");
        Ok(())
    };
    build(
        &["-p", "poolgate", "-p", "mock-upstream"],
        "poolgate and mock-upstream",
    )?;
    if floor {
        // On its own: built with poolgate, this package's dependencies would get the features
        // poolgate's add, and be rebuilt.
        build(&["-p", "bench", "--bin", "hyper-floor"], "hyper-floor")?;
    }
    Ok(())
}

/// `poolgate --version`, plus the git commit of the work tree holding the binaries.
fn poolgate_version(bins: &Bins) -> String {
    let output = |program: &std::path::Path, args: &[&std::ffi::OsStr]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let version =
        output(&bins.poolgate, &["--version".as_ref()]).unwrap_or_else(|| "poolgate".into());
    let Some(dir) = bins.poolgate.parent() else {
        return version;
    };
    let git = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = vec!["-C".as_ref(), dir.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        output(std::path::Path::new("git"), &all)
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|changes| !changes.is_empty());
            let dirty = if dirty {
                ", with uncommitted changes"
            } else {
                ""
            };
            format!("{version} (built from commit {commit}{dirty})")
        }
        None => version,
    }
}

/// The `mock-429` subcommand.
async fn mock_429(listen: SocketAddr) -> Result<()> {
    use mock_upstream::{MockConfig, MockUpstream, Reply, StreamSpec};
    let config = MockConfig {
        listen,
        default_reply: Reply::rate_limited(None),
        stream_defaults: StreamSpec::default(),
        record_requests: false,
        control: false,
    };
    let mock = MockUpstream::start_with(config)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("listening on {}", mock.addr());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("calls {}", mock.calls());
    mock.shutdown().await;
    Ok(())
}
