//! The batched usage writer: takes the records the data plane queued in its [`UsageSink`] and
//! stores them in batches (multi-row inserts). Nothing is dropped and no request ever waits:
//!
//! - the queue from the data plane has no hard bound (a writer that falls behind — past
//!   `usage.channel_capacity` queued records — is logged as a backlog);
//! - while the database cannot be written (PostgreSQL down, a connection killed mid-flush), the
//!   writer keeps taking records into a bounded buffer (`usage.buffer_records`) and retries with
//!   backoff; records past the bound go to a spill file in the data dir (counted and logged);
//!   when the database answers again the buffer, then the spill file, are written;
//! - a batch written twice (its outcome unknown, or a spill file replayed after a partial flush)
//!   counts once: the stores skip a request id they hold;
//! - shutdown drains the queue and writes what it can; what the database does not take in time
//!   goes to the spill file, written at the next start.
//!
//! [`spawn_maintenance`] keeps the usage table ready (PostgreSQL day partitions) and applies
//! the retention setting, hourly.

mod spill;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::store::UsageStore;
use crate::config::UsageSettings;
use crate::domain::{now_ms, UsageRecord};
use crate::usage::{channel, UsageSink};

use spill::SpillFile;

/// The longest one batch insert may take before it counts as failed (a frozen database).
const INSERT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two attempts while the database cannot be written.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long shutdown keeps trying to write before it spills what is left.
const SHUTDOWN_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// What the writer is doing, for the admin API.
#[derive(Debug, Default)]
pub struct WriterState {
    /// Records taken from the queue, not written yet (held in memory).
    buffered: AtomicUsize,
    /// Records in the spill file waiting to be written.
    spilled: AtomicU64,
    /// Records that went to the spill file because the buffer was full (since start).
    overflowed: AtomicU64,
    /// Records that could be neither written nor spilled (since start).
    lost: AtomicU64,
    /// The last write failed; the writer is retrying.
    failing: AtomicBool,
}

/// [`WriterState`] at one moment.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsageWriterView {
    /// Records held in memory waiting for the database.
    pub buffered: usize,
    /// The most records held in memory before they spill to a file.
    pub buffer_limit: usize,
    /// Records in the spill file waiting to be written.
    pub spilled: u64,
    /// Records that spilled because the buffer was full, since start.
    pub overflowed: u64,
    /// Records that could be neither written nor spilled, since start.
    pub lost: u64,
    /// Whether writes currently fail (the database is unreachable).
    pub database_failing: bool,
}

/// The background writer; [`UsageWriter::shutdown`] drains what is queued and stops.
pub struct UsageWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
    state: Arc<WriterState>,
    buffer_limit: usize,
}

/// Starts the writer task. `data_dir` holds its spill file; a spill file left by an earlier
/// run is written first.
pub fn spawn_writer(
    store: Arc<dyn UsageStore>,
    settings: &UsageSettings,
    data_dir: &Path,
) -> (UsageSink, UsageWriter) {
    spawn_writer_with(store, settings, data_dir, SHUTDOWN_WRITE_LIMIT)
}

/// [`spawn_writer`], trying at most `shutdown_limit` at shutdown before spilling what is left.
fn spawn_writer_with(
    store: Arc<dyn UsageStore>,
    settings: &UsageSettings,
    data_dir: &Path,
    shutdown_limit: Duration,
) -> (UsageSink, UsageWriter) {
    let (sink, queue) = channel();
    let (stop, stop_rx) = watch::channel(false);
    let state = Arc::new(WriterState::default());
    let writer = Writer {
        store,
        batch_size: settings.batch_size,
        buffer_limit: settings.buffer_records,
        buffer: VecDeque::new(),
        overflow: Vec::new(),
        spill: SpillFile::new(data_dir.join("usage-spill.jsonl")),
        state: Arc::clone(&state),
        retry_at: None,
        backoff: Duration::from_millis(50),
        written: 0,
        shutdown_limit,
    };
    let task = tokio::spawn(writer.run(
        queue.rx,
        stop_rx,
        settings.flush_interval,
        settings.channel_capacity,
    ));
    (
        sink,
        UsageWriter {
            stop,
            task,
            state,
            buffer_limit: settings.buffer_records,
        },
    )
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

    /// A handle on the writer's state for the admin API.
    pub fn state(&self) -> WriterStateHandle {
        WriterStateHandle {
            state: Arc::clone(&self.state),
            buffer_limit: self.buffer_limit,
        }
    }
}

/// Reads the writer's state (cheap to clone).
#[derive(Clone, Debug)]
pub struct WriterStateHandle {
    state: Arc<WriterState>,
    buffer_limit: usize,
}

impl WriterStateHandle {
    pub fn view(&self) -> UsageWriterView {
        let state = &self.state;
        UsageWriterView {
            buffered: state.buffered.load(Ordering::Relaxed),
            buffer_limit: self.buffer_limit,
            spilled: state.spilled.load(Ordering::Relaxed),
            overflowed: state.overflowed.load(Ordering::Relaxed),
            lost: state.lost.load(Ordering::Relaxed),
            database_failing: state.failing.load(Ordering::Relaxed),
        }
    }
}

// === impl Writer ===

struct Writer {
    store: Arc<dyn UsageStore>,
    batch_size: usize,
    buffer_limit: usize,
    buffer: VecDeque<UsageRecord>,
    /// Records past the buffer's bound, spilled together after each wake-up.
    overflow: Vec<UsageRecord>,
    spill: SpillFile,
    state: Arc<WriterState>,
    /// While writes fail: no attempt before this.
    retry_at: Option<Instant>,
    backoff: Duration,
    written: u64,
    shutdown_limit: Duration,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<UsageRecord>,
        mut stop: watch::Receiver<bool>,
        flush_interval: Duration,
        backlog_warning: usize,
    ) -> u64 {
        self.spill.load_count(&self.state);
        let mut warned_at = Instant::now() - Duration::from_secs(60);
        let mut ticker = tokio::time::interval(flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = self.retry_at;
            let due = tokio::select! {
                received = rx.recv() => match received {
                    Some(record) => {
                        self.take(record);
                        // What is already queued, without waking up again for each record.
                        while self.buffer.len() < self.batch_size {
                            match rx.try_recv() {
                                Ok(record) => self.take(record),
                                Err(_) => break,
                            }
                        }
                        let backlog = rx.len();
                        if backlog > backlog_warning && warned_at.elapsed() > Duration::from_secs(10) {
                            warned_at = Instant::now();
                            tracing::warn!(backlog, "usage writer is falling behind; records are queued in memory");
                        }
                        false
                    }
                    None => break,
                },
                _ = ticker.tick() => true,
                () = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => true,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                    false
                }
            };
            self.spill_overflow();
            self.pump(due).await;
        }
        // Drain everything already queued, write what the database takes in time, spill the rest.
        rx.close();
        while let Some(record) = rx.recv().await {
            self.take(record);
        }
        self.spill_overflow();
        let deadline = Instant::now() + self.shutdown_limit;
        self.retry_at = None;
        while !self.buffer.is_empty() || self.spill.has_records() {
            let before = self.written;
            self.pump(true).await;
            if self.written == before {
                // Nothing went in: wait for the retry, unless shutdown ran out of time.
                match self.retry_at {
                    Some(at) if at < deadline => tokio::time::sleep_until(at).await,
                    _ => break,
                }
            }
        }
        if !self.buffer.is_empty() {
            let left: Vec<UsageRecord> = self.buffer.drain(..).collect();
            self.spill_records(&left);
            tracing::warn!(
                records = left.len(),
                path = %self.spill.path().display(),
                "the database did not take every usage record before shutdown; they are kept in the spill file and written at the next start"
            );
        }
        self.state.buffered.store(0, Ordering::Relaxed);
        self.written
    }

    /// One record from the queue: into the buffer, or past its bound to the spill file.
    fn take(&mut self, record: UsageRecord) {
        if self.buffer.len() < self.buffer_limit {
            self.buffer.push_back(record);
            self.state
                .buffered
                .store(self.buffer.len(), Ordering::Relaxed);
        } else {
            self.overflow.push(record);
        }
    }

    /// Writes the records past the buffer's bound to the spill file (logged once per episode:
    /// when the file starts to fill).
    fn spill_overflow(&mut self) {
        if self.overflow.is_empty() {
            return;
        }
        let overflow = std::mem::take(&mut self.overflow);
        if !self.spill.has_records() {
            tracing::warn!(
                buffer_limit = self.buffer_limit,
                path = %self.spill.path().display(),
                "usage buffer is full while the database cannot be written; further records spill to a file"
            );
        }
        self.state
            .overflowed
            .fetch_add(overflow.len() as u64, Ordering::Relaxed);
        self.spill_records(&overflow);
    }

    fn spill_records(&mut self, records: &[UsageRecord]) {
        if let Err(error) = self.spill.append(records, &self.state) {
            self.state
                .lost
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            tracing::error!(%error, lost = records.len(), path = %self.spill.path().display(), "could not write usage records to the spill file; they are lost");
        }
    }

    /// Writes full batches (every batch when `due`), then the spill file, until the buffer is
    /// empty or a write fails (then it waits for the retry time).
    async fn pump(&mut self, due: bool) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        loop {
            if self.buffer.is_empty() && self.spill.has_records() {
                match self.spill.read_chunk(self.batch_size, &self.state) {
                    Ok(records) => self.buffer.extend(records),
                    Err(error) => {
                        tracing::error!(%error, path = %self.spill.path().display(), "cannot read the usage spill file; it is left as it is");
                        self.spill.give_up();
                    }
                }
            }
            if self.buffer.is_empty() {
                if let Err(error) = self.spill.remove_if_done() {
                    tracing::warn!(%error, "cannot remove the written usage spill file");
                }
                return;
            }
            if !due && self.buffer.len() < self.batch_size {
                return;
            }
            let count = self.buffer.len().min(self.batch_size);
            let batch = &self.buffer.make_contiguous()[..count];
            let result = tokio::time::timeout(INSERT_TIMEOUT, self.store.insert_usage(batch)).await;
            match result {
                Ok(Ok(())) => {
                    self.buffer.drain(..count);
                    self.written += count as u64;
                    self.state
                        .buffered
                        .store(self.buffer.len(), Ordering::Relaxed);
                    if self.state.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            buffered = self.buffer.len(),
                            spilled = self.state.spilled.load(Ordering::Relaxed),
                            "usage records are written again"
                        );
                    }
                    self.retry_at = None;
                    self.backoff = Duration::from_millis(50);
                }
                failure => {
                    let error = match failure {
                        Ok(Err(error)) => error.to_string(),
                        _ => format!("no answer within {INSERT_TIMEOUT:?}"),
                    };
                    if !self.state.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, buffered = self.buffer.len(), "usage write failed; records are buffered and retried");
                    } else {
                        tracing::debug!(%error, "usage write failed again");
                    }
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return;
                }
            }
        }
    }
}

// === maintenance ===

/// Prepares the usage table for the next days now, then hourly; with a retention, drops the
/// usage older than it (hourly). Failures are logged and tried again the next hour.
pub fn spawn_maintenance(
    store: Arc<dyn UsageStore>,
    retention: Option<Duration>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        hourly.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            hourly.tick().await;
            let now = now_ms();
            if let Err(error) = store.prepare_usage(now).await {
                tracing::warn!(%error, "could not prepare the usage table for the next days");
            }
            if let Some(retention) = retention {
                let cut = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(0));
                match store.prune_usage(cut).await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(pruned, "usage past the retention dropped"),
                    Err(error) => tracing::warn!(%error, "could not drop old usage"),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
