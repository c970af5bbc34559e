//! "The Rust stack's floor": issue #13's four hot-path figures for nginx, the `hyper floor`
//! (poolgate's tokio + hyper stack forwarding with no gateway features) and poolgate, with
//! floor / nginx (what the stack itself costs against nginx) and poolgate / floor (what
//! poolgate's features cost on top of it). Every ratio is computed per repeat, then summarised;
//! the goal rows stay relative to nginx ([`super::goals`]).

use crate::stats::{Compare, Scenario, Spread};
use crate::suite::{Results, FLOOR};

/// One figure of the floor table.
pub struct FloorRow {
    pub id: &'static str,
    pub what: String,
    pub unit: &'static str,
    pub nginx: Option<Spread>,
    pub floor: Option<Spread>,
    pub poolgate: Option<Spread>,
    pub floor_vs_nginx: Option<Spread>,
    pub poolgate_vs_floor: Option<Spread>,
    /// poolgate's figure minus the floor's, per repeat (what poolgate's features add), for the
    /// figures where a difference means something (CPU and latency).
    pub poolgate_minus_floor: Option<Spread>,
}

impl FloorRow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "what": self.what, "unit": self.unit,
            "nginx": self.nginx, "floor": self.floor, "poolgate": self.poolgate,
            "floor_vs_nginx": self.floor_vs_nginx,
            "poolgate_vs_floor": self.poolgate_vs_floor,
            "poolgate_minus_floor": self.poolgate_minus_floor,
        })
    }
}

/// A figure measured directly (CPU, throughput): the three systems' values and their ratios.
fn direct_row(
    s: &Scenario,
    id: &'static str,
    what: String,
    unit: &'static str,
    metric: &'static str,
    difference: bool,
) -> FloorRow {
    FloorRow {
        id,
        what,
        unit,
        nginx: s.summary("nginx", metric),
        floor: s.summary(FLOOR, metric),
        poolgate: s.summary("poolgate", metric),
        floor_vs_nginx: s.paired(FLOOR, "nginx", Compare::Ratio(metric)),
        poolgate_vs_floor: s.paired("poolgate", FLOOR, Compare::Ratio(metric)),
        poolgate_minus_floor: difference
            .then(|| s.paired("poolgate", FLOOR, Compare::Added(metric)))
            .flatten(),
    }
}

/// A latency added over direct: each system's figure minus direct's of the same repeat, and the
/// ratios of those added figures, per repeat (a repeat where the denominator added nothing is
/// left out of its ratio).
fn added_row(s: &Scenario, id: &'static str, what: String, metric: &'static str) -> FloorRow {
    let added = |target: &str| s.paired(target, "direct", Compare::Added(metric));
    let ratio = |top: &str, bottom: &str| {
        s.per_repeat(&["direct", top, bottom], |runs| {
            let direct = runs[0].get(metric)?;
            let top = runs[1].get(metric)? - direct;
            let bottom = runs[2].get(metric)? - direct;
            (bottom > 0.0).then_some(top / bottom)
        })
    };
    FloorRow {
        id,
        what,
        unit: "µs",
        nginx: added("nginx"),
        floor: added(FLOOR),
        poolgate: added("poolgate"),
        floor_vs_nginx: ratio(FLOOR, "nginx"),
        poolgate_vs_floor: ratio("poolgate", FLOOR),
        poolgate_minus_floor: s.paired("poolgate", FLOOR, Compare::Added(metric)),
    }
}

/// The floor table's rows; empty when the floor was not measured.
pub fn floor_rows(results: &Results) -> Vec<FloorRow> {
    let measured = |s: &&Scenario| s.runs.contains_key(FLOOR);
    let mut rows = Vec::new();
    let cpu_at = results
        .meta
        .get("cpu_connections")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(64);
    if let Some(s) = results
        .scenario(&format!("closed_c{cpu_at}"))
        .filter(measured)
    {
        rows.push(direct_row(
            s,
            "cpu_ms_per_1k",
            format!("CPU ms per 1,000 requests, {cpu_at} connections"),
            "ms",
            "cpu_ms_per_1k",
            true,
        ));
        rows.push(direct_row(
            s,
            "rps",
            format!("throughput, {cpu_at} connections"),
            "req/s",
            "rps",
            false,
        ));
    }
    // At 1,000 req/s offered (the goal's rate) when it ran, else the lowest rate that did.
    let open = results
        .scenarios
        .iter()
        .filter(|s| s.kind == "open")
        .filter(measured)
        .min_by(|a, b| {
            let key = |s: &Scenario| ((s.param - 1000.0).abs() > 0.5, s.param);
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        });
    if let Some(s) = open {
        rows.push(added_row(
            s,
            "added_p50_us",
            format!(
                "added latency p50 at {} req/s offered (over direct)",
                s.param
            ),
            "p50_us",
        ));
    }
    if let Some(s) = results.scenario("stream_c1").filter(measured) {
        rows.push(added_row(
            s,
            "stream_ttfb_added_p50_us",
            "stream time to first byte added, p50, 1 connection (over direct)".to_owned(),
            "ttfb_p50_us",
        ));
        rows.push(added_row(
            s,
            "stream_ttft_added_p50_us",
            "stream time to first token added, p50, 1 connection (over direct)".to_owned(),
            "ttft_p50_us",
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metrics;

    fn m(pairs: &[(&str, f64)]) -> Option<Metrics> {
        Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
    }

    #[test]
    fn ratios_are_taken_per_repeat_against_nginx_and_the_floor() {
        let mut closed = Scenario::new("closed_c64", "", "closed", 64.0, "direct");
        closed.push("nginx", m(&[("cpu_ms_per_1k", 10.0), ("rps", 60_000.0)]));
        closed.push(FLOOR, m(&[("cpu_ms_per_1k", 15.0), ("rps", 45_000.0)]));
        closed.push("poolgate", m(&[("cpu_ms_per_1k", 36.0), ("rps", 27_000.0)]));
        let mut stream = Scenario::new("stream_c1", "", "stream", 1.0, "direct");
        stream.push(
            "direct",
            m(&[("ttfb_p50_us", 100.0), ("ttft_p50_us", 120.0)]),
        );
        stream.push(
            "nginx",
            m(&[("ttfb_p50_us", 140.0), ("ttft_p50_us", 180.0)]),
        );
        stream.push(FLOOR, m(&[("ttfb_p50_us", 150.0), ("ttft_p50_us", 190.0)]));
        stream.push(
            "poolgate",
            m(&[("ttfb_p50_us", 200.0), ("ttft_p50_us", 210.0)]),
        );
        // nginx only: no floor row.
        let mut open = Scenario::new("open_r1000", "", "open", 1000.0, "direct");
        open.push("direct", m(&[("p50_us", 100.0)]));
        open.push("nginx", m(&[("p50_us", 150.0)]));
        let mut results = Results {
            scenarios: vec![closed, stream, open],
            ..Results::default()
        };
        results.meta.insert("cpu_connections".into(), 64.into());
        let rows = floor_rows(&results);
        let ids: Vec<&str> = rows.iter().map(|r| r.id).collect();
        assert_eq!(
            ids,
            [
                "cpu_ms_per_1k",
                "rps",
                "stream_ttfb_added_p50_us",
                "stream_ttft_added_p50_us"
            ]
        );
        let median = |v: Option<Spread>| v.map(|s| s.median);
        // The first token: added over direct, then poolgate's minus the floor's.
        assert_eq!(median(rows[3].nginx), Some(60.0));
        assert_eq!(median(rows[3].poolgate_minus_floor), Some(20.0));
        assert_eq!(median(rows[0].floor_vs_nginx), Some(1.5));
        assert_eq!(median(rows[0].poolgate_vs_floor), Some(2.4));
        assert_eq!(median(rows[0].poolgate_minus_floor), Some(21.0));
        assert_eq!(median(rows[1].floor_vs_nginx), Some(0.75));
        assert_eq!(median(rows[1].poolgate_vs_floor), Some(0.6));
        assert!(rows[1].poolgate_minus_floor.is_none());
        // Added over direct: nginx 40, floor 50, poolgate 100.
        assert_eq!(median(rows[2].nginx), Some(40.0));
        assert_eq!(median(rows[2].floor_vs_nginx), Some(1.25));
        assert_eq!(median(rows[2].poolgate_vs_floor), Some(2.0));
        assert_eq!(median(rows[2].poolgate_minus_floor), Some(50.0));
    }
}
