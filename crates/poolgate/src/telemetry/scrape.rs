//! Building blocks for scrape-time collectors: metric families assembled from values read when
//! Prometheus asks, instead of series updated on the hot path.

use std::collections::HashMap;

use prometheus::core::Desc;
use prometheus::proto::{self, MetricFamily, MetricType};

/// One family to be filled at scrape time.
pub(crate) struct ScrapeFamily {
    pub(crate) desc: Desc,
    kind: MetricType,
    labels: &'static [&'static str],
}

impl ScrapeFamily {
    pub(crate) fn gauge(
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> prometheus::Result<Self> {
        Self::new(name, help, MetricType::GAUGE, labels)
    }

    pub(crate) fn counter(
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> prometheus::Result<Self> {
        Self::new(name, help, MetricType::COUNTER, labels)
    }

    fn new(
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &'static [&'static str],
    ) -> prometheus::Result<Self> {
        let label_names = labels.iter().map(|label| (*label).to_owned()).collect();
        Ok(Self {
            desc: Desc::new(
                name.to_owned(),
                help.to_owned(),
                label_names,
                HashMap::new(),
            )?,
            kind,
            labels,
        })
    }

    /// An empty family of this name, help and type, ready for [`ScrapeFamily::sample`].
    pub(crate) fn start(&self) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(self.kind);
        family
    }

    /// Adds one sample; `values` pair up with the family's label names.
    pub(crate) fn sample(&self, family: &mut MetricFamily, values: &[&str], value: f64) {
        let mut metric = proto::Metric::default();
        metric.set_label(
            self.labels
                .iter()
                .zip(values)
                .map(|(name, value)| {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name((*name).to_owned());
                    pair.set_value((*value).to_owned());
                    pair
                })
                .collect(),
        );
        match self.kind {
            MetricType::COUNTER => {
                let mut counter = proto::Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = proto::Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        family.mut_metric().push(metric);
    }

    /// A family holding one unlabelled sample.
    pub(crate) fn single(&self, value: f64) -> MetricFamily {
        let mut family = self.start();
        self.sample(&mut family, &[], value);
        family
    }
}
