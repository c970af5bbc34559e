//! LiteLLM proxy for scale: installed into a virtualenv on first use, the same fast mock behind
//! it, measured with 1 and 2 workers in closed loop (next to direct and poolgate, run back to
//! back) and, with 1 worker, in open loop at rates it can serve.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::{load_comparisons, run_scenario, Bench, Endpoint, Load, Stack, Which, MB};
use crate::load::Target;
use crate::procs::{tree, usage};
use crate::stack::{ensure_litellm, start_litellm, LITELLM_VERSION};
use crate::stats::Scenario;

/// The label of LiteLLM with `workers` workers.
pub fn label(workers: u32) -> String {
    if workers == 1 {
        "litellm (1 worker)".to_owned()
    } else {
        format!("litellm ({workers} workers)")
    }
}

impl Bench<'_> {
    pub(super) async fn litellm(&mut self, stack: &Stack) -> Result<()> {
        let venv = ensure_litellm(self.out, &self.logs)?;
        self.results.meta.insert(
            "litellm_version".into(),
            serde_json::Value::String(LITELLM_VERSION.to_owned()),
        );
        let ours: Vec<Endpoint> = self
            .endpoints(stack, false, Which::Fast)?
            .into_iter()
            .filter(|e| e.label != "nginx")
            .collect();
        for workers in [1_u32, 2] {
            let system = format!("litellm-{workers}w");
            let litellm =
                start_litellm(&venv, stack.fast.addr, workers, &self.work, &self.logs).await?;
            eprintln!(
                "bench: LiteLLM ({workers} worker(s)) served its first request after {:.1} s",
                litellm.startup.as_secs_f64()
            );
            self.results.sample(
                &system,
                "startup_ms",
                litellm.startup.as_secs_f64() * 1000.0,
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pids = tree(litellm.child.pid());
            self.results.sample(
                &system,
                "rss_idle_mb",
                usage(&pids).rss_kib as f64 * 1024.0 / MB,
            );
            let endpoint = Endpoint {
                label: label(workers),
                target: Arc::new(Target::chat(litellm.addr, None, "bench", false)?),
                pids,
                off_core: false,
            };
            let mut refs: Vec<&Endpoint> = ours.iter().collect();
            refs.push(&endpoint);
            let connections: &[usize] = match (self.opts.smoke, workers) {
                (true, _) => &[1],
                (false, 1) => &[1, 16, 64],
                (false, _) => &[16, 64],
            };
            for &c in connections {
                let mut scenario = Scenario::new(
                    &format!("litellm{workers}_closed_c{c}"),
                    &format!("closed loop, {c} connection(s), LiteLLM with {workers} worker(s)"),
                    "litellm",
                    c as f64,
                    "direct",
                );
                scenario.compare = load_comparisons(false);
                run_scenario(
                    &mut scenario,
                    &refs,
                    Load::Closed { connections: c },
                    self.opts,
                )
                .await;
                for run in scenario
                    .runs
                    .get(&endpoint.label)
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Some(rss) = run.get("rss_peak_mb") {
                        self.results.sample(&system, "rss_load_mb", *rss);
                    }
                    if let Some(cpu) = run.get("cpu_ms_per_1k") {
                        self.results.sample(&system, "cpu_ms_per_1k", *cpu);
                    }
                }
                self.results.scenarios.push(scenario);
            }
            if workers == 1 {
                let rates: &[f64] = if self.opts.smoke {
                    &[25.0]
                } else {
                    &[25.0, 50.0, 100.0]
                };
                let direct: Vec<&Endpoint> = ours.iter().filter(|e| e.label == "direct").collect();
                for &rate in rates {
                    let connections = 4;
                    let mut scenario = Scenario::new(
                        &format!("litellm1_open_r{rate}"),
                        &format!("open loop, {rate} requests/s offered, LiteLLM with 1 worker"),
                        "open",
                        rate,
                        "direct",
                    );
                    scenario.compare = load_comparisons(false);
                    let mut refs = direct.clone();
                    refs.push(&endpoint);
                    run_scenario(
                        &mut scenario,
                        &refs,
                        Load::Open { rate, connections },
                        self.opts,
                    )
                    .await;
                    self.results.scenarios.push(scenario);
                }
            }
            drop(litellm);
        }
        Ok(())
    }
}
