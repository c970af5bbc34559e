//! What running as a cluster costs one request: the same closed-loop load through one poolgate
//! in single mode (SQLite, this instance's own token buckets) and in cluster mode (PostgreSQL and
//! Redis: a request's admission takes from the backend's and the client key's shared buckets),
//! plus SQLite with Redis (the Redis admission alone). Both limits are on and high (10,000,000
//! per minute), so every request is admitted. With token allowances on (the default) most
//! admissions are paid from tokens the admit script leased to the instance (one call in 33 at
//! 1 connection); the last configuration turns them off (`redis.allowance_max = 0`, what a
//! limit too small to lease from costs): every request makes the admission call. The *added
//! p50* of cluster against single at 1 connection is what the issue sets a target for.

use std::sync::Arc;

use anyhow::Result;

use super::{load_comparisons, run_scenario, Bench, Endpoint, Load};
use crate::load::Target;
use crate::services::{postgres_bin, redis_installed, start_postgres, start_redis};
use crate::stack::{start_poolgate_with, BackendDef, Mock, PoolgateSpec};
use crate::stats::{Compare, Scenario};

/// The baseline's label.
pub const SINGLE: &str = "single (SQLite)";
/// Every configuration's label, baseline first.
pub const LABELS: [&str; 4] = [
    SINGLE,
    "SQLite + Redis",
    "cluster (PostgreSQL + Redis)",
    "cluster, allowances off (a Redis call per request)",
];
/// The label of cluster mode.
pub const CLUSTER: &str = LABELS[2];

impl Bench<'_> {
    pub(super) async fn cluster(&mut self, fast: &Mock) -> Result<()> {
        let Some(pg_bin) = postgres_bin() else {
            self.results.notes.push(
                "cluster: skipped (PostgreSQL is not installed; `apt-get install postgresql redis-server`)."
                    .into(),
            );
            return Ok(());
        };
        if !redis_installed() {
            self.results.notes.push(
                "cluster: skipped (redis-server is not installed; `apt-get install redis-server`)."
                    .into(),
            );
            return Ok(());
        }
        let redis = start_redis(&self.work, &self.logs)?;
        let postgres = start_postgres(&pg_bin, &self.work, &self.logs)?;
        let redis_url = format!("redis://{}/", redis.addr);
        let spec = |name: &str, args: Vec<String>| PoolgateSpec {
            name: name.to_owned(),
            backends: vec![BackendDef {
                name: "fast".into(),
                upstream: fast.addr,
                models: vec![("bench".to_owned(), "bench-upstream".to_owned())],
                rpm_limit: 10_000_000,
                http_version: None,
            }],
            churn_cooldown: false,
            client_rpm: 10_000_000,
            max_in_flight: None,
            extra_args: args,
        };
        let both = |name: &str, database: &str| {
            spec(
                name,
                vec![
                    "--redis-url".into(),
                    redis_url.clone(),
                    "--database-url".into(),
                    database.to_owned(),
                ],
            )
        };
        let configurations = [
            (LABELS[0], spec("cluster-single", Vec::new()), ""),
            (
                LABELS[1],
                spec(
                    "cluster-redis",
                    vec!["--redis-url".into(), redis_url.clone()],
                ),
                "",
            ),
            (LABELS[2], both("cluster-both", &postgres.url), ""),
            (
                LABELS[3],
                both("cluster-no-allowance", &postgres.url_b),
                "[redis]\nallowance_max = 0\n",
            ),
        ];
        let mut running = Vec::new();
        let mut endpoints = Vec::new();
        for (label, spec, extra_toml) in &configurations {
            let poolgate =
                start_poolgate_with(self.bins, spec, extra_toml, &self.work, &self.logs).await?;
            let mut pids = vec![poolgate.child.pid()];
            if *label != SINGLE {
                // Redis works for these: its CPU is charged to them.
                pids.push(redis.child.pid());
            }
            endpoints.push(Endpoint {
                label: (*label).to_owned(),
                target: Arc::new(Target::chat(
                    poolgate.addr,
                    Some(&poolgate.key),
                    "bench",
                    false,
                )?),
                pids,
                off_core: false,
            });
            running.push(poolgate);
        }
        let refs: Vec<&Endpoint> = endpoints.iter().collect();
        for connections in [1, 16] {
            let mut scenario = Scenario::new(
                &format!("cluster_c{connections}"),
                &format!("single vs cluster mode, closed loop, {connections} connection(s)"),
                "cluster",
                connections as f64,
                SINGLE,
            );
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
        }
        drop(running);
        drop(postgres);
        drop(redis);
        Ok(())
    }
}
