//! What `GET /health/ready` asks: a short list of named [`ReadinessProbe`]s (the store answers,
//! the snapshot is loaded and current — and whatever a later part adds, such as Redis reachable
//! or degraded mode on), each bounded by a timeout, plus the draining flag a graceful stop sets
//! first, so that load balancers take the instance out before it stops accepting connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;

/// One thing the gateway needs to serve requests.
#[async_trait]
pub trait ReadinessProbe: Send + Sync + 'static {
    /// Short and fixed: the key in the `/health/ready` answer (`store`, `snapshot`, `redis`).
    fn name(&self) -> &'static str;

    /// `Err` says what is wrong; it goes to the log, never into the public answer.
    async fn check(&self) -> Result<(), String>;
}

/// How one probe went, as the public answer shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeStatus {
    Ok,
    Failed,
    TimedOut,
}

impl ProbeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStatus::Ok => "ok",
            ProbeStatus::Failed => "failed",
            ProbeStatus::TimedOut => "timeout",
        }
    }
}

/// One `/health/ready` answer.
#[derive(Debug)]
pub struct ReadinessReport {
    /// A graceful stop has begun (no probe was run).
    pub draining: bool,
    pub checks: Vec<(&'static str, ProbeStatus)>,
}

impl ReadinessReport {
    /// Ready: not draining, and every probe passed.
    pub fn ready(&self) -> bool {
        !self.draining
            && self
                .checks
                .iter()
                .all(|(_, status)| *status == ProbeStatus::Ok)
    }
}

/// The probes and the draining flag; cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    probes: RwLock<Vec<Arc<dyn ReadinessProbe>>>,
    draining: AtomicBool,
    timeout: Duration,
}

impl Readiness {
    /// No probes yet; each probe gets `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                probes: RwLock::new(Vec::new()),
                draining: AtomicBool::new(false),
                timeout,
            }),
        }
    }

    /// Adds a probe (at start-up).
    pub fn add(&self, probe: Arc<dyn ReadinessProbe>) {
        self.inner.probes.write().push(probe);
    }

    /// A graceful stop has begun: `/health/ready` answers 503 from now on.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Runs every probe at once, each within the timeout (none while draining).
    pub async fn check(&self) -> ReadinessReport {
        if self.draining() {
            return ReadinessReport {
                draining: true,
                checks: Vec::new(),
            };
        }
        let probes = self.inner.probes.read().clone();
        let timeout = self.inner.timeout;
        let runs = probes.iter().map(|probe| async move {
            let status = match tokio::time::timeout(timeout, probe.check()).await {
                Ok(Ok(())) => ProbeStatus::Ok,
                Ok(Err(error)) => {
                    tracing::warn!(probe = probe.name(), %error, "readiness probe failed");
                    ProbeStatus::Failed
                }
                Err(_) => {
                    tracing::warn!(probe = probe.name(), ?timeout, "readiness probe timed out");
                    ProbeStatus::TimedOut
                }
            };
            (probe.name(), status)
        });
        ReadinessReport {
            draining: false,
            checks: futures_util::future::join_all(runs).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Result<(), &'static str>);

    #[async_trait]
    impl ReadinessProbe for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn check(&self) -> Result<(), String> {
            self.1.map_err(str::to_owned)
        }
    }

    struct Hangs;

    #[async_trait]
    impl ReadinessProbe for Hangs {
        fn name(&self) -> &'static str {
            "hangs"
        }
        async fn check(&self) -> Result<(), String> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ready_when_every_probe_passes_within_its_time_and_not_draining() {
        let readiness = Readiness::new(Duration::from_millis(500));
        readiness.add(Arc::new(Fixed("store", Ok(()))));
        let report = readiness.check().await;
        assert!(report.ready());
        assert_eq!(report.checks, vec![("store", ProbeStatus::Ok)]);

        readiness.add(Arc::new(Fixed("redis", Err("connection refused"))));
        readiness.add(Arc::new(Hangs));
        let report = readiness.check().await;
        assert!(!report.ready());
        assert_eq!(
            report.checks,
            vec![
                ("store", ProbeStatus::Ok),
                ("redis", ProbeStatus::Failed),
                ("hangs", ProbeStatus::TimedOut)
            ]
        );

        let healthy = Readiness::new(Duration::from_millis(500));
        healthy.add(Arc::new(Fixed("store", Ok(()))));
        healthy.begin_drain();
        let report = healthy.check().await;
        assert!(report.draining && !report.ready());
        assert!(report.checks.is_empty());
    }
}
