//! The control plane's readiness probes: the store answers a cheap query, and the live snapshot
//! is loaded and current (no rebuild after a committed change is still failing).

use std::sync::Arc;

use async_trait::async_trait;

use super::snapshot::Snapshots;
use super::store::ConfigStore;
use crate::readiness::ReadinessProbe;

pub(super) struct StoreProbe(pub Arc<dyn ConfigStore>);

#[async_trait]
impl ReadinessProbe for StoreProbe {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|error| error.to_string())
    }
}

pub(super) struct SnapshotProbe(pub Arc<Snapshots>);

#[async_trait]
impl ReadinessProbe for SnapshotProbe {
    fn name(&self) -> &'static str {
        "snapshot"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.current()
    }
}
