//! The single health writer: the data plane marks backends dirty through its [`HealthSink`]; this
//! task persists each dirty backend's *current* runtime state (coalesced, off the request path),
//! so an older queued state never overwrites a newer one. An admin reset goes through the same
//! queue and waits for its flush. Shutdown writes what is queued.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::store::ConfigStore;
use crate::domain::BackendId;
use crate::runtime::{health_channel, BackendRuntime, HealthMessage, HealthSink};

/// Starts the health writer.
pub fn spawn_health_writer(store: Arc<dyn ConfigStore>) -> (HealthSink, HealthWriter) {
    let (sink, mut queue) = health_channel();
    let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                received = queue.rx.recv() => received,
                _ = &mut stop_rx => None,
            };
            let stopping = first.is_none();
            // Coalesce: each backend once, at its state when written.
            let mut dirty: HashMap<BackendId, Arc<BackendRuntime>> = HashMap::new();
            let mut flushes = Vec::new();
            let mut take = |message| match message {
                HealthMessage::Dirty(id, runtime) => {
                    dirty.insert(id, runtime);
                }
                HealthMessage::Flush(done) => flushes.push(done),
            };
            if let Some(message) = first {
                take(message);
            }
            while let Ok(message) = queue.rx.try_recv() {
                take(message);
            }
            for (id, runtime) in dirty {
                let now = Instant::now();
                let health = runtime.snapshot(now).persisted(now);
                if let Err(error) = store.save_health(&id, &health).await {
                    tracing::warn!(backend = %id, %error, "could not persist backend health");
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
            if stopping {
                break;
            }
        }
    });
    (sink, HealthWriter { stop, task })
}

/// The background health writer; [`HealthWriter::shutdown`] writes what is queued and stops.
pub struct HealthWriter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HealthWriter {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "health writer task failed");
        }
    }
}
