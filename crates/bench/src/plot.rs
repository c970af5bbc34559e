//! `latency.svg`: latency (p50 thick, p99 thin with dots) against offered
//! load for direct, nginx, the hyper floor, poolgate and LiteLLM, from the open-loop scenarios, both axes
//! logarithmic.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::suite::{litellm_label, Results, FLOOR};

/// (offered req/s, p50 µs, p99 µs) per system, sorted by offered load.
fn series(results: &Results) -> BTreeMap<String, Vec<(f64, f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for scenario in results.scenarios.iter().filter(|s| s.kind == "open") {
        for target in scenario.targets() {
            let (Some(p50), Some(p99)) = (
                scenario.summary(target, "p50_us"),
                scenario.summary(target, "p99_us"),
            ) else {
                continue;
            };
            out.entry(target.to_owned()).or_default().push((
                scenario.param,
                p50.median,
                p99.median,
            ));
        }
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| (a.0 - b.0).abs() < f64::EPSILON);
    }
    out
}

fn color(system: &str) -> RGBColor {
    match system {
        "direct" => RGBColor(90, 90, 90),
        "nginx" => RGBColor(0, 150, 57),
        "poolgate" => RGBColor(31, 119, 180),
        FLOOR => RGBColor(148, 103, 189),
        _ => RGBColor(214, 39, 40),
    }
}

/// Draws the plot; fails when there is no open-loop data.
pub fn latency_vs_load(path: &Path, results: &Results) -> Result<()> {
    let data = series(results);
    let points = data.values().flatten();
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, 0.0_f64, f64::MAX, 0.0_f64);
    for &(x, p50, p99) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(p50.max(1.0));
        y_max = y_max.max(p99);
    }
    if x_max <= 0.0 {
        return Err(anyhow!("no open-loop measurements to plot"));
    }
    let draw = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency vs offered load (open loop; thick: p50, thin with dots: p99)",
            ("sans-serif", 22),
        )
        .margin(16)
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            ((x_min * 0.8)..(x_max * 1.25)).log_scale(),
            // Headroom on top for the legend.
            ((y_min * 0.7)..(y_max * 5.0)).log_scale(),
        )
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("offered load (requests/s)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("latency (µs)")
        .draw()
        .map_err(|e| draw(&e))?;
    let order = ["direct", "nginx", FLOOR, "poolgate", &litellm_label(1)];
    for system in order {
        let Some(points) = data.get(system) else {
            continue;
        };
        let c = color(system);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, p50, _)| (x, p50)),
                c.stroke_width(3),
            ))
            .map_err(|e| draw(&e))?
            .label(format!("{system} p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, _, p99)| (x, p99)),
                c.stroke_width(1),
            ))
            .map_err(|e| draw(&e))?
            .label(format!("{system} p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(1)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, _, p99)| Circle::new((x, p99), 3, c.filled())),
            )
            .map_err(|e| draw(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
