//! The data plane's side of the single health writer: when an outcome changes the persisted part
//! of a backend's health, the request path marks the backend dirty — it never writes and never
//! waits. The writer (owned by the control plane) persists each dirty backend's *current* state,
//! so an older queued state can never overwrite a newer one (an admin reset included, which goes
//! through the same queue and waits for its [`HealthSink::flush`]).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::BackendRuntime;
use crate::domain::BackendId;

/// What the health writer is asked to do.
#[derive(Debug)]
pub enum HealthMessage {
    /// Persist this backend's current state.
    Dirty(BackendId, Arc<BackendRuntime>),
    /// Answer once everything queued before has been written.
    Flush(oneshot::Sender<()>),
}

/// The sending side; cheap to clone.
#[derive(Clone, Debug)]
pub struct HealthSink {
    tx: mpsc::UnboundedSender<HealthMessage>,
}

/// The receiving side, consumed by the health writer.
#[derive(Debug)]
pub struct HealthQueue {
    pub rx: mpsc::UnboundedReceiver<HealthMessage>,
}

/// A new sink and the queue it feeds.
pub fn health_channel() -> (HealthSink, HealthQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (HealthSink { tx }, HealthQueue { rx })
}

impl HealthSink {
    /// The persisted part of this backend's health changed: write its state behind.
    pub fn mark_dirty(&self, id: &BackendId, runtime: &Arc<BackendRuntime>) {
        if self
            .tx
            .send(HealthMessage::Dirty(id.clone(), Arc::clone(runtime)))
            .is_err()
        {
            tracing::warn!(backend = %id, "health writer is gone; cooldown state not persisted");
        }
    }

    /// Waits until everything marked before this call has been written. False if the writer is
    /// gone.
    pub async fn flush(&self) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(HealthMessage::Flush(done)).is_err() {
            return false;
        }
        wait.await.is_ok()
    }
}
