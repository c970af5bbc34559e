//! The cost of poolgate's own features on the hot path: the same closed-loop load through
//! poolgate configured with 1 backend (the baseline), 50 backends, RPM token buckets on (backend
//! and client key), and 10 backends of which 5 answer every request with 429 (short cooldowns,
//! so they keep cooling, probing and failing over). Usage recording cannot be switched off; the
//! usage writer's SQLite batches show in the CPU off the per-core request threads
//! (`off_core_cpu_ms_per_1k`) in every row.

use std::sync::Arc;

use anyhow::Result;

use super::{load_comparisons, run_scenario, Bench, Endpoint, Load};
use crate::load::Target;
use crate::stack::{start_mock_429, start_poolgate_with, BackendDef, Mock, Poolgate, PoolgateSpec};
use crate::stats::{Compare, Scenario};

/// Connections for the feature comparison.
const CONNECTIONS: usize = 16;

/// The baseline's label.
pub const BASELINE: &str = "1 backend";

/// Every configuration's label, baseline first.
pub const LABELS: [&str; 4] = [
    BASELINE,
    "50 backends",
    "RPM limits on",
    "429 churn on 5 of 10",
];

fn backends(prefix: &str, mock: &Mock, count: usize, rpm_limit: u32) -> Vec<BackendDef> {
    (0..count)
        .map(|i| BackendDef {
            name: format!("{prefix}-{i}"),
            upstream: mock.addr,
            models: vec![("bench".to_owned(), "bench-upstream".to_owned())],
            rpm_limit,
            http_version: None,
        })
        .collect()
}

/// One poolgate of a cost comparison: its label, its definition and extra config tables.
pub struct Configuration<'a> {
    pub label: &'a str,
    pub spec: PoolgateSpec,
    pub extra_toml: &'a str,
}

impl Bench<'_> {
    /// Starts one poolgate per configuration, runs the closed loop at `connections` through
    /// each (rotating, `repeats` times; the first is the baseline) into a new scenario, and
    /// returns the poolgates, still running, in order.
    pub(super) async fn compare_configurations(
        &mut self,
        id: &str,
        title: &str,
        kind: &'static str,
        connections: usize,
        configurations: &[Configuration<'_>],
    ) -> Result<Vec<Poolgate>> {
        self.compare_configurations_then(id, title, kind, connections, configurations, |_, _| {
            std::future::ready(Ok(()))
        })
        .await
    }

    /// [`Bench::compare_configurations`], running `setup(index, address)` on each poolgate once
    /// it serves (admin API changes a config file cannot make) before any load.
    pub(super) async fn compare_configurations_then<S, F>(
        &mut self,
        id: &str,
        title: &str,
        kind: &'static str,
        connections: usize,
        configurations: &[Configuration<'_>],
        setup: S,
    ) -> Result<Vec<Poolgate>>
    where
        S: Fn(usize, std::net::SocketAddr) -> F,
        F: std::future::Future<Output = Result<()>>,
    {
        let mut running = Vec::new();
        let mut endpoints = Vec::new();
        for configuration in configurations {
            let poolgate = start_poolgate_with(
                self.bins,
                &configuration.spec,
                configuration.extra_toml,
                &self.work,
                &self.logs,
            )
            .await?;
            setup(running.len(), poolgate.addr).await?;
            endpoints.push(Endpoint {
                label: configuration.label.to_owned(),
                target: Arc::new(Target::chat(
                    poolgate.addr,
                    Some(&poolgate.key),
                    "bench",
                    false,
                )?),
                pids: vec![poolgate.child.pid()],
                off_core: true,
            });
            running.push(poolgate);
        }
        let refs: Vec<&Endpoint> = endpoints.iter().collect();
        let baseline = configurations.first().map_or("", |c| c.label);
        let mut scenario = Scenario::new(id, title, kind, connections as f64, baseline);
        scenario.compare = load_comparisons(false);
        scenario.compare.push(Compare::Ratio("cpu_ms_per_1k"));
        run_scenario(
            &mut scenario,
            &refs,
            Load::Closed { connections },
            self.opts,
        )
        .await;
        self.results.scenarios.push(scenario);
        Ok(running)
    }

    pub(super) async fn features(&mut self, fast: &Mock) -> Result<()> {
        let rate_limited = start_mock_429(self.bins, &self.logs)?;
        let mut churn = backends("ok", fast, 5, 0);
        churn.extend(backends("limited", &rate_limited, 5, 0));
        let configurations = [
            (
                LABELS[0],
                PoolgateSpec {
                    name: "feature-1-backend".into(),
                    backends: backends("fast", fast, 1, 0),
                    churn_cooldown: false,
                    client_rpm: 0,
                    max_in_flight: None,
                    extra_args: Vec::new(),
                },
            ),
            (
                LABELS[1],
                PoolgateSpec {
                    name: "feature-50-backends".into(),
                    backends: backends("fast", fast, 50, 0),
                    churn_cooldown: false,
                    client_rpm: 0,
                    max_in_flight: None,
                    extra_args: Vec::new(),
                },
            ),
            (
                LABELS[2],
                PoolgateSpec {
                    name: "feature-rpm".into(),
                    backends: backends("fast", fast, 1, 10_000_000),
                    churn_cooldown: false,
                    client_rpm: 10_000_000,
                    max_in_flight: None,
                    extra_args: Vec::new(),
                },
            ),
            (
                LABELS[3],
                PoolgateSpec {
                    name: "feature-churn".into(),
                    backends: churn,
                    churn_cooldown: true,
                    client_rpm: 0,
                    max_in_flight: None,
                    extra_args: Vec::new(),
                },
            ),
        ];
        let configurations: Vec<Configuration<'_>> = configurations
            .into_iter()
            .map(|(label, spec)| Configuration {
                label,
                spec,
                extra_toml: "",
            })
            .collect();
        let running = self
            .compare_configurations(
                "features_c16",
                &format!("poolgate features, closed loop, {CONNECTIONS} connections"),
                "feature",
                CONNECTIONS,
                &configurations,
            )
            .await?;
        drop(running);
        drop(rate_limited);
        Ok(())
    }
}
