//! Repeated measurements: every scenario runs each target several times, interleaved, and
//! reports the median and the spread (min–max) of each figure. Comparisons ("ratio", "added")
//! are computed per repeat between runs made back to back, then summarised the same way.

use std::collections::BTreeMap;

use serde::Serialize;

/// Median and range of one figure over the repeats.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// The median and range of the finite `values`; `None` when there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: sorted[0],
        max: sorted[n - 1],
        n,
    })
}

/// The figures of one run, by name (`rps`, `p50_us`, …).
pub type Metrics = BTreeMap<String, f64>;

/// How a comparison is computed from a target's run and the baseline's run of the same repeat.
#[derive(Clone, Copy)]
pub enum Compare {
    /// target / baseline.
    Ratio(&'static str),
    /// target − baseline.
    Added(&'static str),
}

impl Compare {
    pub fn name(self) -> String {
        match self {
            Compare::Ratio(metric) => format!("{metric}_ratio"),
            Compare::Added(metric) => format!("added_{metric}"),
        }
    }

    fn apply(self, target: &Metrics, baseline: &Metrics) -> Option<f64> {
        match self {
            Compare::Ratio(metric) => {
                let base = *baseline.get(metric)?;
                (base > 0.0).then(|| target.get(metric).map(|t| t / base))?
            }
            Compare::Added(metric) => Some(target.get(metric)? - baseline.get(metric)?),
        }
    }
}

/// One scenario (a load shape), measured on several targets, several times each.
pub struct Scenario {
    pub id: String,
    pub title: String,
    /// `closed`, `open`, `stream`, `feature`.
    pub kind: &'static str,
    /// Connections (closed loop) or offered requests/s (open loop).
    pub param: f64,
    /// Comparisons are made against this target.
    pub baseline: String,
    /// Target -> one entry per repeat (`None` when that run failed).
    pub runs: BTreeMap<String, Vec<Option<Metrics>>>,
    pub compare: Vec<Compare>,
}

impl Scenario {
    pub fn new(id: &str, title: &str, kind: &'static str, param: f64, baseline: &str) -> Self {
        Scenario {
            id: id.to_owned(),
            title: title.to_owned(),
            kind,
            param,
            baseline: baseline.to_owned(),
            runs: BTreeMap::new(),
            compare: Vec::new(),
        }
    }

    pub fn push(&mut self, target: &str, metrics: Option<Metrics>) {
        self.runs
            .entry(target.to_owned())
            .or_default()
            .push(metrics);
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.runs.keys().map(String::as_str)
    }

    /// Median and range of `metric` for `target`.
    pub fn summary(&self, target: &str, metric: &str) -> Option<Spread> {
        let values: Vec<f64> = self
            .runs
            .get(target)?
            .iter()
            .filter_map(|run| run.as_ref()?.get(metric).copied())
            .collect();
        spread(&values)
    }

    /// `compare` of `target` against `against`, per repeat, then summarised.
    pub fn paired(&self, target: &str, against: &str, compare: Compare) -> Option<Spread> {
        let ours = self.runs.get(target)?;
        let theirs = self.runs.get(against)?;
        let values: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .filter_map(|(a, b)| compare.apply(a.as_ref()?, b.as_ref()?))
            .collect();
        spread(&values)
    }

    /// `f` over the runs of `targets` made in the same repeat (in that order), per repeat,
    /// then summarised; a repeat where one of them failed is left out.
    pub fn per_repeat(
        &self,
        targets: &[&str],
        f: impl Fn(&[&Metrics]) -> Option<f64>,
    ) -> Option<Spread> {
        let runs: Vec<&Vec<Option<Metrics>>> = targets
            .iter()
            .map(|target| self.runs.get(*target))
            .collect::<Option<_>>()?;
        let repeats = runs.iter().map(|r| r.len()).min()?;
        let values: Vec<f64> = (0..repeats)
            .filter_map(|i| {
                let same: Vec<&Metrics> =
                    runs.iter().map(|r| r[i].as_ref()).collect::<Option<_>>()?;
                f(&same)
            })
            .collect();
        spread(&values)
    }

    /// Every metric name seen for `target`.
    pub fn metric_names(&self, target: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .runs
            .get(target)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|m| m.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The scenario as JSON: per target the summary of every metric, and the comparisons with
    /// the baseline (and with nginx where both ran).
    pub fn to_json(&self) -> serde_json::Value {
        let mut targets = serde_json::Map::new();
        for target in self.targets() {
            let mut figures = serde_json::Map::new();
            for metric in self.metric_names(target) {
                if let Some(summary) = self.summary(target, &metric) {
                    figures.insert(metric, serde_json::json!(summary));
                }
            }
            targets.insert(target.to_owned(), serde_json::Value::Object(figures));
        }
        let mut comparisons = serde_json::Map::new();
        for target in self.targets().filter(|t| *t != self.baseline) {
            let mut figures = serde_json::Map::new();
            for &compare in &self.compare {
                if let Some(summary) = self.paired(target, &self.baseline, compare) {
                    figures.insert(compare.name(), serde_json::json!(summary));
                }
            }
            if target != "nginx" && self.runs.contains_key("nginx") {
                if let Some(summary) = self.paired(target, "nginx", Compare::Ratio("rps")) {
                    figures.insert("rps_ratio_vs_nginx".to_owned(), serde_json::json!(summary));
                }
            }
            comparisons.insert(
                format!("{target}_vs_{}", self.baseline),
                serde_json::Value::Object(figures),
            );
        }
        serde_json::json!({
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "param": self.param,
            "baseline": self.baseline,
            "repeats": self.runs.values().map(Vec::len).max().unwrap_or(0),
            "targets": targets,
            "comparisons": comparisons,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(spread(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(spread(&[f64::NAN]).is_none());
    }

    #[test]
    fn comparisons_pair_runs_of_the_same_repeat() {
        let mut scenario = Scenario::new("x", "x", "closed", 1.0, "direct");
        let m = |rps: f64, p50: f64| {
            Some(Metrics::from([
                ("rps".to_owned(), rps),
                ("p50_us".to_owned(), p50),
            ]))
        };
        scenario.push("direct", m(100.0, 10.0));
        scenario.push("direct", m(50.0, 20.0));
        scenario.push("poolgate", m(50.0, 15.0));
        scenario.push("poolgate", m(40.0, 30.0));
        let ratio = scenario
            .paired("poolgate", "direct", Compare::Ratio("rps"))
            .unwrap();
        assert_eq!((ratio.min, ratio.max), (0.5, 0.8));
        let added = scenario
            .paired("poolgate", "direct", Compare::Added("p50_us"))
            .unwrap();
        assert_eq!((added.min, added.max), (5.0, 10.0));
        // Added over direct, poolgate's against nginx's, per repeat.
        scenario.push("nginx", m(80.0, 12.0));
        scenario.push("nginx", None);
        let relative = scenario
            .per_repeat(&["direct", "nginx", "poolgate"], |r| {
                Some((r[2]["p50_us"] - r[0]["p50_us"]) / (r[1]["p50_us"] - r[0]["p50_us"]))
            })
            .unwrap();
        assert_eq!((relative.median, relative.n), (2.5, 1));
    }
}
