//! The benchmark suite, in the order it runs:
//!
//! 1. **set-up** — three mock upstreams (fast; 5 ms between chunks; 1 s between chunks for long
//!    streams), poolgate in front of them, nginx `proxy_pass` and the `hyper floor` (poolgate's
//!    tokio + hyper stack forwarding with no gateway features) in front of the fast one.
//! 2. **closed** — closed loop at 1, 16, 64, 256 connections: direct, nginx, hyper floor,
//!    poolgate.
//! 3. **open** — open loop at fixed offered rates, latency from the scheduled send time.
//! 4. **stream** — SSE: time to first byte at 1 connection; gaps between events at 16.
//! 5. **held** — 5,000 and 20,000 streams open at once through a fresh poolgate, the clients on
//!    HTTP/1.1 (a connection per stream) and on HTTP/2 (many streams per connection): its
//!    memory per stream, errors, and what it gives back once they closed ([`held`]).
//! 6. **agentgateway** — closed loop at 32 connections with a 1 KB body (the figure
//!    agentgateway publishes): direct, nginx, poolgate.
//! 7. **startup** — fresh data dir -> first proxied request answered, repeated.
//! 8. **features** — poolgate with 1 vs 50 backends, RPM limits on, 429 churn on half.
//! 9. **cluster** — one poolgate in single mode vs cluster mode (PostgreSQL + Redis, started
//!    here when installed), RPM limits on: what the shared (Redis) admission adds per request.
//! 10. **telemetry** — poolgate with telemetry off, metrics, metrics + access log, and traces at
//!     100 % sampling exported to an OTLP receiver.
//! 11. **litellm** (with `--litellm`) — LiteLLM proxy at 1 and 2 workers, same mock behind it.
//! 12. **tokens** — poolgate with TPM limits off and on (tiktoken and byte estimates): what
//!     estimating, reserving and settling add per request.
//!
//! Each scenario runs every target `repeats` times, interleaved (the order rotates per repeat),
//! so each comparison is made between runs minutes apart at most.

pub mod cluster;
pub mod features;
pub mod held;
mod litellm;
mod measure;
pub mod telemetry;
pub mod tokens;

pub use held::HeldRun;
pub use litellm::label as litellm_label;
pub use measure::{load_comparisons, run_scenario, Endpoint, Load, MB};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::load::Target;
use crate::procs::{tree, usage, OpenFiles};
use crate::stack::{
    nginx_binary, nginx_version, start_floor, start_mock, start_nginx, start_poolgate, BackendDef,
    Bins, Floor, Mock, Nginx, Poolgate, PoolgateSpec,
};
use crate::stats::{spread, Scenario};

/// The floor proxy's label in the scenarios (its resources are under [`FLOOR_SYSTEM`]).
pub const FLOOR: &str = "hyper floor";
pub const FLOOR_SYSTEM: &str = "hyper-floor";

/// Milliseconds between content chunks of the "gap" mock.
pub const GAP_MS: u64 = 5;

/// agentgateway's published set-up: 32 connections, a 1 KB request body.
pub const AGENTGATEWAY_CONNECTIONS: usize = 32;
pub const AGENTGATEWAY_BODY: usize = 1024;

/// What to run and for how long.
pub struct Options {
    pub smoke: bool,
    pub litellm: bool,
    pub nginx: bool,
    /// Measure the `hyper floor` proxy next to nginx and poolgate.
    pub floor: bool,
    pub repeats: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Sections to run (empty = all).
    pub only: Vec<String>,
    /// Counts of streams held open at once, one fresh poolgate each.
    pub held_streams: Vec<usize>,
    /// Wait after closing the held streams before RSS is read again.
    pub held_settle: Duration,
    /// How the held streams' clients connect, each count measured in each mode.
    pub held_modes: Vec<crate::hold::Protocol>,
    /// The protocol poolgate speaks to the mock in the held runs (`None`: the clients' own).
    pub held_upstream: Option<crate::hold::Protocol>,
    /// Streams per client connection in the HTTP/2 mode.
    pub held_h2_streams: usize,
    /// Closed-loop connection counts, if not the defaults.
    pub connections: Vec<usize>,
    /// Open-loop rates, if not the defaults.
    pub rates: Vec<f64>,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    fn closed_connections(&self) -> Vec<usize> {
        if !self.connections.is_empty() {
            self.connections.clone()
        } else if self.smoke {
            vec![1, 16]
        } else {
            vec![1, 16, 64, 256]
        }
    }

    fn open_rates(&self) -> Vec<f64> {
        if !self.rates.is_empty() {
            self.rates.clone()
        } else if self.smoke {
            vec![1000.0]
        } else {
            vec![500.0, 1000.0, 2000.0, 4000.0, 8000.0]
        }
    }
}

/// Connections used to offer `rate` requests/s: enough that a slow answer does not hold up the
/// schedule, few enough that each one stays busy.
pub fn open_connections(rate: f64) -> usize {
    ((rate / 50.0) as usize).clamp(4, 64)
}

/// Everything measured, for the report.
#[derive(Default)]
pub struct Results {
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// Things skipped or worth knowing, in the order they happened.
    pub notes: Vec<String>,
    pub scenarios: Vec<Scenario>,
    /// System -> figure -> samples.
    pub resources: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// One entry per held-streams count.
    pub held: Vec<HeldRun>,
}

impl Results {
    pub fn sample(&mut self, system: &str, figure: &str, value: f64) {
        self.resources
            .entry(system.to_owned())
            .or_default()
            .entry(figure.to_owned())
            .or_default()
            .push(value);
    }

    pub fn scenario(&self, id: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.id == id)
    }

    /// The held-streams run of `streams` streams in `mode`, if one was made (or skipped).
    pub fn held_run(&self, streams: usize, mode: crate::hold::Protocol) -> Option<&HeldRun> {
        self.held
            .iter()
            .find(|run| run.streams == streams && run.mode == mode && run.upstream == mode)
    }

    pub fn resources_json(&self) -> serde_json::Value {
        let mut systems = serde_json::Map::new();
        for (system, figures) in &self.resources {
            let mut out = serde_json::Map::new();
            for (figure, samples) in figures {
                if let Some(summary) = spread(samples) {
                    out.insert(figure.clone(), serde_json::json!(summary));
                }
            }
            systems.insert(system.clone(), serde_json::Value::Object(out));
        }
        serde_json::Value::Object(systems)
    }
}

/// The harness's running state.
pub struct Bench<'a> {
    pub opts: &'a Options,
    pub bins: &'a Bins,
    pub out: &'a Path,
    pub work: PathBuf,
    pub logs: PathBuf,
    pub results: Results,
    /// This process's open-file limits (raised to the hard limit; children inherit them).
    pub open_files: OpenFiles,
}

/// The long-lived systems of one run.
struct Stack {
    fast: Mock,
    gap: Mock,
    slow: Mock,
    poolgate: Poolgate,
    nginx: Option<Nginx>,
    floor: Option<Floor>,
}

impl Bench<'_> {
    /// Runs every selected section and returns what was measured.
    pub async fn run(mut self) -> Result<Results> {
        let logs = self.logs.clone();
        let fast = start_mock(self.bins, "mock-fast", 20, 0, &logs)?;
        let gap = start_mock(self.bins, "mock-gap", 20, GAP_MS, &logs)?;
        let slow = start_mock(self.bins, "mock-slow", 60, 1000, &logs)?;
        let spec = main_spec(&fast, &gap, &slow);
        let poolgate = start_poolgate(self.bins, &spec, &self.work, &logs).await?;
        self.results
            .sample("poolgate", "startup_ms", ms(poolgate.startup));
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.results.sample(
            "poolgate",
            "rss_idle_mb",
            usage(&[poolgate.child.pid()]).rss_kib as f64 * 1024.0 / MB,
        );
        let nginx = self.start_nginx(&fast).await;
        let floor = self.start_floor(&fast).await;
        let stack = Stack {
            fast,
            gap,
            slow,
            poolgate,
            nginx,
            floor,
        };

        if self.opts.runs("closed") {
            self.closed(&stack).await?;
        }
        if self.opts.runs("open") {
            self.open(&stack).await?;
        }
        if self.opts.runs("stream") {
            self.streams(&stack).await?;
        }
        if self.opts.runs("held") {
            self.held().await?;
        }
        if self.opts.runs("agentgateway") {
            self.agentgateway(&stack).await?;
        }
        if self.opts.runs("startup") {
            self.startup(&stack).await?;
        }
        if self.opts.runs("features") {
            self.features(&stack.fast).await?;
        }
        if self.opts.runs("cluster") {
            self.cluster(&stack.fast).await?;
        }
        if self.opts.runs("telemetry") {
            self.telemetry(&stack.fast).await?;
        }
        if self.opts.runs("tokens") {
            self.tokens(&stack.fast).await?;
        }
        if self.opts.litellm && self.opts.runs("litellm") {
            if let Err(error) = self.litellm(&stack).await {
                eprintln!("bench: LiteLLM failed: {error:#}");
                self.results
                    .notes
                    .push(format!("LiteLLM: not measured ({error:#})."));
            }
        } else if !self.opts.litellm {
            self.results
                .notes
                .push("LiteLLM: skipped (run with `--litellm` to include it).".into());
        }
        drop(stack);
        Ok(self.results)
    }

    async fn start_nginx(&mut self, fast: &Mock) -> Option<Nginx> {
        if !self.opts.nginx {
            let why = if self.opts.smoke {
                "--smoke"
            } else {
                "--no-nginx"
            };
            self.results.notes.push(format!("nginx: skipped ({why})."));
            return None;
        }
        let Some(binary) = nginx_binary() else {
            self.results.notes.push(
                "nginx: skipped (not installed; `apt-get install nginx-light` to include it)."
                    .into(),
            );
            return None;
        };
        self.results.meta.insert(
            "nginx_version".into(),
            serde_json::Value::String(nginx_version(&binary)),
        );
        match start_nginx(&binary, fast.addr, &self.work, &self.logs).await {
            Ok(nginx) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.results.sample(
                    "nginx",
                    "rss_idle_mb",
                    usage(&tree(nginx.child.pid())).rss_kib as f64 * 1024.0 / MB,
                );
                Some(nginx)
            }
            Err(error) => {
                self.results
                    .notes
                    .push(format!("nginx: failed to start ({error:#})."));
                None
            }
        }
    }

    async fn start_floor(&mut self, fast: &Mock) -> Option<Floor> {
        if !self.opts.floor {
            let why = if self.opts.smoke {
                "--smoke"
            } else {
                "--no-floor"
            };
            self.results
                .notes
                .push(format!("{FLOOR}: skipped ({why})."));
            return None;
        }
        match start_floor(self.bins, fast.addr, &self.logs).await {
            Ok(floor) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.results.sample(
                    FLOOR_SYSTEM,
                    "rss_idle_mb",
                    usage(&[floor.child.pid()]).rss_kib as f64 * 1024.0 / MB,
                );
                Some(floor)
            }
            Err(error) => {
                self.results
                    .notes
                    .push(format!("{FLOOR}: failed to start ({error:#})."));
                None
            }
        }
    }

    /// direct, nginx and the hyper floor (if running: in front of the fast mock only), poolgate
    /// for `model` (the mock's own model id for the others).
    fn endpoints(&self, stack: &Stack, streaming: bool, which: Which) -> Result<Vec<Endpoint>> {
        let mock = match which {
            Which::Fast => &stack.fast,
            Which::Gap => &stack.gap,
        };
        let model = match which {
            Which::Fast => "bench",
            Which::Gap => "bench-gap",
        };
        let mut endpoints = vec![Endpoint {
            label: "direct".into(),
            target: Arc::new(Target::chat(mock.addr, None, "bench-upstream", streaming)?),
            pids: vec![mock.child.pid()],
            off_core: false,
        }];
        if let (Some(nginx), Which::Fast) = (&stack.nginx, which) {
            endpoints.push(Endpoint {
                label: "nginx".into(),
                target: Arc::new(Target::chat(nginx.addr, None, "bench-upstream", streaming)?),
                pids: tree(nginx.child.pid()),
                off_core: false,
            });
        }
        if let (Some(floor), Which::Fast) = (&stack.floor, which) {
            endpoints.push(Endpoint {
                label: FLOOR.into(),
                target: Arc::new(Target::chat(floor.addr, None, "bench-upstream", streaming)?),
                pids: vec![floor.child.pid()],
                off_core: false,
            });
        }
        endpoints.push(Endpoint {
            label: "poolgate".into(),
            target: Arc::new(Target::chat(
                stack.poolgate.addr,
                Some(&stack.poolgate.key),
                model,
                streaming,
            )?),
            pids: vec![stack.poolgate.child.pid()],
            off_core: true,
        });
        Ok(endpoints)
    }

    async fn closed(&mut self, stack: &Stack) -> Result<()> {
        let endpoints = self.endpoints(stack, false, Which::Fast)?;
        let refs: Vec<&Endpoint> = endpoints.iter().collect();
        let all = self.opts.closed_connections();
        // CPU per request is taken at 64 connections (the throughput target), else the most.
        let cpu_at = if all.contains(&64) {
            64
        } else {
            all.iter().copied().max().unwrap_or(1)
        };
        self.results
            .meta
            .insert("cpu_connections".into(), cpu_at.into());
        for connections in all {
            let mut scenario = Scenario::new(
                &format!("closed_c{connections}"),
                &format!("closed loop, {connections} connection(s)"),
                "closed",
                connections as f64,
                "direct",
            );
            scenario.compare = load_comparisons(false);
            run_scenario(
                &mut scenario,
                &refs,
                Load::Closed { connections },
                self.opts,
            )
            .await;
            for label in ["poolgate", "nginx", FLOOR, "direct"] {
                let system = match label {
                    "direct" => "mock-upstream",
                    FLOOR => FLOOR_SYSTEM,
                    _ => label,
                };
                for run in scenario.runs.get(label).into_iter().flatten().flatten() {
                    if connections == cpu_at {
                        if let Some(cpu) = run.get("cpu_ms_per_1k") {
                            self.results.sample(system, "cpu_ms_per_1k", *cpu);
                        }
                    }
                    if let Some(rss) = run.get("rss_peak_mb").filter(|_| connections == cpu_at) {
                        self.results.sample(system, "rss_load_mb", *rss);
                    }
                    if label == "poolgate" && connections == cpu_at {
                        if let Some(cpu) = run.get("off_core_cpu_ms_per_1k") {
                            self.results.sample(system, "off_core_cpu_ms_per_1k", *cpu);
                        }
                    }
                }
            }
            self.results.scenarios.push(scenario);
        }
        Ok(())
    }

    async fn open(&mut self, stack: &Stack) -> Result<()> {
        let endpoints = self.endpoints(stack, false, Which::Fast)?;
        let refs: Vec<&Endpoint> = endpoints.iter().collect();
        for rate in self.opts.open_rates() {
            let connections = open_connections(rate);
            let mut scenario = Scenario::new(
                &format!("open_r{rate}"),
                &format!("open loop, {rate} requests/s offered over {connections} connections"),
                "open",
                rate,
                "direct",
            );
            scenario.compare = load_comparisons(false);
            run_scenario(
                &mut scenario,
                &refs,
                Load::Open { rate, connections },
                self.opts,
            )
            .await;
            self.results.scenarios.push(scenario);
        }
        Ok(())
    }

    async fn streams(&mut self, stack: &Stack) -> Result<()> {
        for (id, title, which, connections) in [
            (
                "stream_c1",
                "SSE streams (20 chunks, no gap), 1 connection".to_owned(),
                Which::Fast,
                1,
            ),
            (
                "stream_gap_c16",
                format!("SSE streams (20 chunks, {GAP_MS} ms apart), 16 connections"),
                Which::Gap,
                16,
            ),
        ] {
            let endpoints = self.endpoints(stack, true, which)?;
            let refs: Vec<&Endpoint> = endpoints.iter().collect();
            let mut scenario = Scenario::new(id, &title, "stream", connections as f64, "direct");
            scenario.compare = load_comparisons(true);
            run_scenario(
                &mut scenario,
                &refs,
                Load::Closed { connections },
                self.opts,
            )
            .await;
            self.results.scenarios.push(scenario);
        }
        Ok(())
    }

    /// agentgateway's published figure: a closed loop at 32 connections with a 1 KB body.
    async fn agentgateway(&mut self, stack: &Stack) -> Result<()> {
        let mut endpoints = self.endpoints(stack, false, Which::Fast)?;
        for endpoint in &mut endpoints {
            let addr = endpoint.target.addr;
            let (auth, model) = match endpoint.label.as_str() {
                "poolgate" => (Some(stack.poolgate.key.as_str()), "bench"),
                _ => (None, "bench-upstream"),
            };
            endpoint.target = Arc::new(Target::chat_sized(
                addr,
                auth,
                model,
                false,
                AGENTGATEWAY_BODY,
            )?);
        }
        let refs: Vec<&Endpoint> = endpoints.iter().collect();
        let connections = AGENTGATEWAY_CONNECTIONS;
        let mut scenario = Scenario::new(
            "agentgateway_c32_1k",
            &format!(
                "closed loop, {connections} connections, {} byte body",
                endpoints[0].target.body_len()
            ),
            "agentgateway",
            connections as f64,
            "direct",
        );
        scenario.compare = load_comparisons(false);
        run_scenario(
            &mut scenario,
            &refs,
            Load::Closed { connections },
            self.opts,
        )
        .await;
        self.results.scenarios.push(scenario);
        Ok(())
    }

    async fn startup(&mut self, stack: &Stack) -> Result<()> {
        for i in 0..self.opts.repeats {
            let spec = main_spec(&stack.fast, &stack.gap, &stack.slow);
            let spec = PoolgateSpec {
                name: format!("poolgate-startup-{i}"),
                ..spec
            };
            let poolgate = start_poolgate(self.bins, &spec, &self.work, &self.logs).await?;
            eprintln!(
                "bench: startup {}/{}: first request served after {:.1} ms",
                i + 1,
                self.opts.repeats,
                ms(poolgate.startup)
            );
            self.results
                .sample("poolgate", "startup_ms", ms(poolgate.startup));
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.results.sample(
                "poolgate",
                "rss_idle_mb",
                usage(&[poolgate.child.pid()]).rss_kib as f64 * 1024.0 / MB,
            );
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Which {
    Fast,
    Gap,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The main poolgate: one backend per mock, each serving its own canonical model.
fn main_spec(fast: &Mock, gap: &Mock, slow: &Mock) -> PoolgateSpec {
    let backend = |name: &str, mock: &Mock, model: &str| BackendDef {
        name: name.to_owned(),
        upstream: mock.addr,
        models: vec![(model.to_owned(), "bench-upstream".to_owned())],
        rpm_limit: 0,
        http_version: None,
    };
    PoolgateSpec {
        name: "poolgate".into(),
        backends: vec![
            backend("fast", fast, "bench"),
            backend("gap", gap, "bench-gap"),
            backend("slow", slow, "bench-slow"),
        ],
        churn_cooldown: false,
        client_rpm: 0,
        max_in_flight: None,
        extra_args: Vec::new(),
    }
}
