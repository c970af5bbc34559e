//! The client side's connection figures — open connections, accepted, refused over
//! `server.max_connections`, failed accepts — read at scrape time through
//! [`ConnectionStatsSource`], which the serving layer's handle implements. Nothing here is
//! updated per request.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::scrape::ScrapeFamily;

/// The serving layer's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub open: u64,
    pub accepted: u64,
    /// Answered 503 (or closed unanswered) because the connection cap was reached.
    pub rejected: u64,
    pub accept_errors: u64,
}

/// What the serving layer implements so that a scrape can read its counters.
pub trait ConnectionStatsSource: Send + Sync + 'static {
    fn connection_stats(&self) -> ConnectionStats;
}

/// The `poolgate_connections_*` families, read from a [`ConnectionStatsSource`] at every scrape.
pub struct ConnectionCollector {
    source: Arc<dyn ConnectionStatsSource>,
    open: ScrapeFamily,
    accepted: ScrapeFamily,
    rejected: ScrapeFamily,
    accept_errors: ScrapeFamily,
}

impl ConnectionCollector {
    pub fn new(source: Arc<dyn ConnectionStatsSource>) -> prometheus::Result<Self> {
        Ok(Self {
            source,
            open: ScrapeFamily::gauge(
                "poolgate_connections_open",
                "Client connections open now.",
                &[],
            )?,
            accepted: ScrapeFamily::counter(
                "poolgate_connections_accepted_total",
                "Client connections accepted.",
                &[],
            )?,
            rejected: ScrapeFamily::counter(
                "poolgate_connections_rejected_total",
                "Client connections answered 503 (or closed) at once because server.max_connections was reached.",
                &[],
            )?,
            accept_errors: ScrapeFamily::counter(
                "poolgate_accept_errors_total",
                "Failed accepts on the listening socket (e.g. out of file descriptors).",
                &[],
            )?,
        })
    }
}

impl Collector for ConnectionCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![
            &self.open.desc,
            &self.accepted.desc,
            &self.rejected.desc,
            &self.accept_errors.desc,
        ]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.source.connection_stats();
        vec![
            self.open.single(stats.open as f64),
            self.accepted.single(stats.accepted as f64),
            self.rejected.single(stats.rejected as f64),
            self.accept_errors.single(stats.accept_errors as f64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use prometheus::proto::MetricType;

    use super::*;

    struct Fixed(ConnectionStats);

    impl ConnectionStatsSource for Fixed {
        fn connection_stats(&self) -> ConnectionStats {
            self.0
        }
    }

    #[test]
    fn the_serving_counters_are_read_at_scrape_time() {
        let collector = ConnectionCollector::new(Arc::new(Fixed(ConnectionStats {
            open: 3,
            accepted: 10,
            rejected: 2,
            accept_errors: 1,
        })))
        .unwrap();
        let families = collector.collect();
        let read: Vec<(&str, f64)> = families
            .iter()
            .map(|family| {
                let metric = &family.get_metric()[0];
                let value = if family.get_field_type() == MetricType::COUNTER {
                    metric.get_counter().get_value()
                } else {
                    metric.get_gauge().get_value()
                };
                (family.name(), value)
            })
            .collect();
        assert_eq!(
            read,
            [
                ("poolgate_connections_open", 3.0),
                ("poolgate_connections_accepted_total", 10.0),
                ("poolgate_connections_rejected_total", 2.0),
                ("poolgate_accept_errors_total", 1.0),
            ]
        );
    }
}
