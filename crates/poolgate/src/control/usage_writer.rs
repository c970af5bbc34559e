//! The batched usage writer: takes the records the data plane queued in its [`UsageSink`] and
//! stores them in multi-row inserts. Nothing is dropped: the queue has no hard bound (a writer
//! that falls behind — past `usage.channel_capacity` queued records — is logged as a backlog,
//! never answered by dropping records or by making requests wait), a failed write is retried, and
//! shutdown drains the queue. Its figures go to the metrics: queue depth, records written, failed
//! writes (the store's own count has them as `insert_usage` too), records lost at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::store::UsageStore;
use crate::config::UsageSettings;
use crate::domain::UsageRecord;
use crate::telemetry::metrics::UsageMetrics;
use crate::telemetry::Metrics;
use crate::usage::{channel, UsageSink};

/// The background writer; [`UsageWriter::shutdown`] drains what is queued and stops.
pub struct UsageWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

/// Starts the writer task.
pub fn spawn_writer(
    store: Arc<dyn UsageStore>,
    settings: &UsageSettings,
    metrics: &Metrics,
) -> (UsageSink, UsageWriter) {
    let (sink, queue) = channel();
    let (stop, stop_rx) = watch::channel(false);
    let writer = Writer {
        store,
        metrics: metrics.usage(),
    };
    let task = tokio::spawn(run_writer(
        writer,
        queue.rx,
        stop_rx,
        settings.batch_size,
        settings.flush_interval,
        settings.channel_capacity,
    ));
    (sink, UsageWriter { stop, task })
}

impl UsageWriter {
    /// Writes everything queued so far, then stops. Returns how many records the writer wrote in
    /// its life. Call after the server stopped accepting requests.
    pub async fn shutdown(self) -> u64 {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(written) => written,
            Err(error) => {
                tracing::error!(%error, "usage writer task failed");
                0
            }
        }
    }
}

/// The store and the figures the writer keeps.
struct Writer {
    store: Arc<dyn UsageStore>,
    metrics: UsageMetrics,
}

async fn run_writer(
    writer: Writer,
    mut rx: mpsc::UnboundedReceiver<UsageRecord>,
    mut stop: watch::Receiver<bool>,
    batch_size: usize,
    flush_interval: Duration,
    backlog_warning: usize,
) -> u64 {
    let mut warned_at = tokio::time::Instant::now() - Duration::from_secs(60);
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(batch_size);
    let mut written = 0_u64;
    let mut ticker = tokio::time::interval(flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Some(record) => {
                    batch.push(record);
                    // Take what is already queued without waking up again for each record.
                    while batch.len() < batch_size {
                        match rx.try_recv() {
                            Ok(record) => batch.push(record),
                            Err(_) => break,
                        }
                    }
                    if batch.len() >= batch_size {
                        written += writer.flush(&mut batch, false).await;
                        let backlog = rx.len();
                        if backlog > backlog_warning && warned_at.elapsed() > Duration::from_secs(10) {
                            warned_at = tokio::time::Instant::now();
                            tracing::warn!(backlog, "usage writer is falling behind; records are queued in memory");
                        }
                    }
                }
                None => break,
            },
            _ = ticker.tick() => {
                if !batch.is_empty() {
                    written += writer.flush(&mut batch, false).await;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
        writer.queued(rx.len() + batch.len());
    }
    // Drain everything already queued.
    rx.close();
    while let Some(record) = rx.recv().await {
        batch.push(record);
        if batch.len() >= batch_size {
            written += writer.flush(&mut batch, true).await;
        }
    }
    written += writer.flush(&mut batch, true).await;
    writer.queued(0);
    written
}

impl Writer {
    /// Records waiting: queued in the channel plus the batch being filled.
    fn queued(&self, records: usize) {
        self.metrics
            .queue_depth
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// Writes one batch, retrying on failure. While running, it retries until it succeeds
    /// (keeping the records); at shutdown it gives up after a few tries and logs what was lost.
    async fn flush(&self, batch: &mut Vec<UsageRecord>, final_flush: bool) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let mut delay = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.store.insert_usage(batch).await;
            if result.is_err() {
                self.metrics.write_errors.inc();
            }
            match result {
                Ok(()) => {
                    batch.clear();
                    self.metrics.records_written.inc_by(count);
                    return count;
                }
                Err(error) if final_flush && tries >= 5 => {
                    tracing::error!(%error, lost = batch.len(), "could not write usage records at shutdown");
                    batch.clear();
                    self.metrics.records_lost.inc_by(count);
                    return 0;
                }
                Err(error) => {
                    tracing::warn!(%error, pending = batch.len(), "usage write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
