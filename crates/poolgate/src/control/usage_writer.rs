//! The batched usage writer: takes the records the data plane queued in its [`UsageSink`] and
//! stores them in multi-row inserts, then acknowledges them in the usage [`Journal`]. Nothing is
//! dropped: the queue has no hard bound (a writer that falls behind — past
//! `usage.channel_capacity` queued records — is logged as a backlog, never answered by dropping
//! records or by making requests wait), a failed write is retried, shutdown drains the queue, and
//! what a crash (or a store that stays down at shutdown) leaves unacknowledged in the journal is
//! replayed into the store at the next start ([`open_journal`]). Its figures go to the metrics:
//! queue depth, records written, failed writes (the store's own count has them as `insert_usage`
//! too), records lost at shutdown (those the journal keeps for the next start are not lost).
//! Records replayed from the journal at start are not counted as written: some of them may have
//! been stored already (the store skips those), so the start-up log line gives their number.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::store::UsageStore;
use crate::config::{Config, UsageSettings};
use crate::domain::UsageRecord;
use crate::error::InitError;
use crate::journal::{Journal, JournalSettings, Journaled};
use crate::telemetry::metrics::UsageMetrics;
use crate::telemetry::Metrics;
use crate::usage::{channel, Queued, UsageSink};

/// Records replayed per insert at start-up.
const REPLAY_BATCH: usize = 500;

/// Opens the usage journal (when `usage.journal` is on) and first replays into the store what an
/// earlier run left unacknowledged — records stored already are skipped by the store — then
/// deletes the replayed segments. A failed replay stops the start and keeps the journal.
pub async fn open_journal(
    config: &Config,
    store: &dyn UsageStore,
) -> Result<Option<Journal>, InitError> {
    if !config.usage.journal {
        return Ok(None);
    }
    let settings = JournalSettings {
        segment_bytes: config.usage.journal_segment_bytes,
    };
    let (journal, replay) = Journal::open(&config.data_dir, settings)
        .map_err(|e| InitError::io("opening the usage journal", e))?;
    let records = replay.records();
    if !records.is_empty() {
        for batch in records.chunks(REPLAY_BATCH) {
            store.insert_usage(batch).await.map_err(|error| {
                InitError::Invalid(format!(
                    "replaying the usage journal into the database: {error} (the journal is kept; the next start tries again)"
                ))
            })?;
        }
        tracing::info!(
            records = records.len(),
            "usage records of an earlier run replayed from the journal (a crash left them unacknowledged)"
        );
    }
    replay
        .finish()
        .map_err(|e| InitError::io("deleting the replayed usage journal", e))?;
    Ok(Some(journal))
}

/// The background writer; [`UsageWriter::shutdown`] drains what is queued and stops.
pub struct UsageWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

/// Starts the writer task.
pub fn spawn_writer(
    store: Arc<dyn UsageStore>,
    settings: &UsageSettings,
    journal: Option<Journal>,
    metrics: &Metrics,
) -> (UsageSink, UsageWriter) {
    let (sink, queue) = channel(journal.clone());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_writer(
        Batcher {
            store,
            journal,
            records: Vec::with_capacity(settings.batch_size),
            tickets: Vec::with_capacity(settings.batch_size),
            metrics: metrics.usage(),
        },
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

async fn run_writer(
    mut batch: Batcher,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    mut stop: watch::Receiver<bool>,
    batch_size: usize,
    flush_interval: Duration,
    backlog_warning: usize,
) -> u64 {
    let mut warned_at = tokio::time::Instant::now() - Duration::from_secs(60);
    let mut written = 0_u64;
    let mut ticker = tokio::time::interval(flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Some(queued) => {
                    batch.push(queued);
                    // Take what is already queued without waking up again for each record.
                    while batch.len() < batch_size {
                        match rx.try_recv() {
                            Ok(queued) => batch.push(queued),
                            Err(_) => break,
                        }
                    }
                    if batch.len() >= batch_size {
                        written += batch.flush(false).await;
                        let backlog = rx.len();
                        if backlog > backlog_warning && warned_at.elapsed() > Duration::from_secs(10) {
                            warned_at = tokio::time::Instant::now();
                            tracing::warn!(backlog, "usage writer is falling behind; records are queued in memory (and safe in the journal)");
                        }
                    }
                }
                None => break,
            },
            _ = ticker.tick() => {
                if !batch.is_empty() {
                    written += batch.flush(false).await;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
        batch.queued(rx.len());
    }
    // Drain everything already queued.
    rx.close();
    while let Some(queued) = rx.recv().await {
        batch.push(queued);
        if batch.len() >= batch_size {
            written += batch.flush(true).await;
        }
    }
    written += batch.flush(true).await;
    batch.queued(0);
    if let Some(journal) = batch.journal.take() {
        if let Err(error) = journal.close() {
            tracing::warn!(%error, "could not tidy up the usage journal; it is replayed at the next start");
        }
    }
    written
}

/// The records of one batch and their journal tickets.
struct Batcher {
    store: Arc<dyn UsageStore>,
    journal: Option<Journal>,
    records: Vec<UsageRecord>,
    tickets: Vec<Journaled>,
    metrics: UsageMetrics,
}

impl Batcher {
    fn push(&mut self, queued: Queued) {
        self.records.push(queued.record);
        self.tickets.extend(queued.journaled);
    }

    /// Records waiting: `in_channel` still queued plus the batch being filled.
    fn queued(&self, in_channel: usize) {
        let records = in_channel.saturating_add(self.records.len());
        self.metrics
            .queue_depth
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes one batch, retrying on failure, then acknowledges it in the journal. While
    /// running, it retries until it succeeds (keeping the records); at shutdown it gives up after
    /// a few tries — the records stay in the journal and are replayed at the next start.
    async fn flush(&mut self, final_flush: bool) -> u64 {
        if self.records.is_empty() {
            return 0;
        }
        let mut delay = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.store.insert_usage(&self.records).await;
            if result.is_err() {
                self.metrics.write_errors.inc();
            }
            match result {
                Ok(()) => {
                    let count = u64::try_from(self.records.len()).unwrap_or(u64::MAX);
                    self.records.clear();
                    self.metrics.records_written.inc_by(count);
                    if let Some(journal) = &self.journal {
                        if let Err(error) = journal.acknowledge(&self.tickets) {
                            // Stored, but the journal does not know: a crash would replay them
                            // (and the store would skip them).
                            tracing::warn!(%error, "could not acknowledge usage records in the journal");
                        }
                    }
                    self.tickets.clear();
                    return count;
                }
                Err(error) if final_flush && tries >= 5 => {
                    // A record with a journal ticket is stored at the next start; one without
                    // (no journal, or its append failed) is lost.
                    let kept = if self.journal.is_some() {
                        self.tickets.len().min(self.records.len())
                    } else {
                        0
                    };
                    let lost = self.records.len() - kept;
                    self.metrics
                        .records_lost
                        .inc_by(u64::try_from(lost).unwrap_or(u64::MAX));
                    tracing::error!(%error, records = self.records.len(), kept_in_journal = kept, lost, "could not write usage records at shutdown; those kept in the usage journal are stored at the next start");
                    self.records.clear();
                    self.tickets.clear();
                    return 0;
                }
                Err(error) => {
                    tracing::warn!(%error, pending = self.records.len(), "usage write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
