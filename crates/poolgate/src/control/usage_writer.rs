//! The batched usage writer: takes the records the data plane queued in its [`UsageSink`],
//! stores them in batches (multi-row inserts), then acknowledges them in the usage [`Journal`]
//! — a record is acknowledged only after the database committed it. Nothing is dropped and no
//! request ever waits:
//!
//! - every record is in the journal before its answer completes (the sink appends it), so a
//!   crash loses nothing: what is unacknowledged is replayed at the next start ([`open_journal`]);
//! - the queue from the data plane has no hard bound (a writer that falls behind — past
//!   `usage.channel_capacity` queued records — is logged as a backlog);
//! - while the database cannot be written (PostgreSQL down, a connection killed mid-flush), the
//!   writer keeps taking records into a bounded buffer (`usage.buffer_records`) and retries with
//!   backoff; past the bound it keeps only their place in the journal ([`Parked`]: memory stays
//!   bounded) and reads them back from the journal once the buffer is written (with the journal
//!   off, `usage.journal = false`, there is nowhere else to keep them: they stay in memory);
//! - a batch written twice (its outcome unknown, or a journal replay after a crash between the
//!   commit and the acknowledgement) counts once: the stores skip a request id they hold;
//! - shutdown drains the queue and writes what the database takes within a limit; the rest stays
//!   unacknowledged in the journal and is written at the next start.
//!
//! Its figures go to the metrics: records waiting (queue, buffer and journal-only), records
//! written, failed writes (the store's own count has them as `insert_usage` too), records lost
//! at shutdown (those the journal keeps for the next start are not lost). Records replayed from
//! the journal at start are not counted as written: some of them may have been stored already
//! (the store skips those), so the start-up log line gives their number.
//!
//! [`spawn_maintenance`] keeps the usage table ready (PostgreSQL day partitions) and applies
//! the retention setting, hourly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::store::UsageStore;
use crate::config::{Config, UsageSettings};
use crate::domain::{now_ms, UsageRecord};
use crate::error::InitError;
use crate::journal::{Journal, JournalSettings, Journaled, Parked};
use crate::telemetry::metrics::UsageMetrics;
use crate::telemetry::Metrics;
use crate::usage::{channel, Queued, UsageQueue, UsageSink};

/// Records replayed per insert at start-up.
const REPLAY_BATCH: usize = 500;

/// The longest [`UsageFlush::flush`] waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Asks the usage writer to store now what the data plane has queued, instead of at its next
/// batch or tick: a spend ledger created for a new budget or cap reads what was spent so far
/// from the store, which must not miss the last flush interval's requests. Cheap to clone; does
/// nothing until [`spawn_writer`] has started the writer it is given to.
#[derive(Clone, Debug, Default)]
pub struct UsageFlush {
    requests: Arc<OnceLock<mpsc::UnboundedSender<oneshot::Sender<()>>>>,
}

impl UsageFlush {
    /// Returns once every record queued before the call is stored, the database refused them
    /// for now (they stay queued and journaled), or [`FLUSH_WAIT`] passed.
    pub async fn flush(&self) {
        let Some(requests) = self.requests.get() else {
            return;
        };
        let (reply, stored) = oneshot::channel();
        if requests.send(reply).is_ok() {
            let _ = tokio::time::timeout(FLUSH_WAIT, stored).await;
        }
    }
}

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

/// The longest one batch insert may take before it counts as failed (a frozen database).
const INSERT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two attempts while the database cannot be written.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long shutdown keeps trying to write before it leaves the rest to the journal.
const SHUTDOWN_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// What the writer is doing, for the admin API.
#[derive(Debug, Default)]
pub struct WriterState {
    /// Records taken from the queue, not written yet (held in memory).
    buffered: AtomicUsize,
    /// Records past the buffer, kept only in the journal, waiting to be written.
    parked: AtomicU64,
    /// Records that went past the buffer into the journal only (since start).
    overflowed: AtomicU64,
    /// Records that could not be written and are not in the journal either (since start).
    lost: AtomicU64,
    /// The last write failed; the writer is retrying.
    failing: AtomicBool,
}

/// [`WriterState`] at one moment.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsageWriterView {
    /// Records held in memory waiting for the database.
    pub buffered: usize,
    /// The most records held in memory; past it they wait in the usage journal only.
    pub buffer_limit: usize,
    /// Records waiting in the usage journal only (past the buffer), to be read back and written.
    pub journaled: u64,
    /// Records that went past the buffer into the journal only, since start.
    pub overflowed: u64,
    /// Records that could not be written and were not in the journal (journal off, database
    /// down at shutdown), since start.
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

/// Starts the writer task over `journal` (None: `usage.journal = false`).
pub fn spawn_writer(
    store: Arc<dyn UsageStore>,
    settings: &UsageSettings,
    journal: Option<Journal>,
    metrics: &Metrics,
    flush: &UsageFlush,
) -> (UsageSink, UsageWriter) {
    let (sink, writer, flushes) =
        spawn_writer_with(store, settings, journal, metrics, SHUTDOWN_WRITE_LIMIT);
    if flush.requests.set(flushes).is_err() {
        tracing::warn!("a usage flush handle was given to a second writer; it serves the first");
    }
    (sink, writer)
}

/// [`spawn_writer`], trying at most `shutdown_limit` at shutdown before leaving the rest to the
/// journal.
fn spawn_writer_with(
    store: Arc<dyn UsageStore>,
    settings: &UsageSettings,
    journal: Option<Journal>,
    metrics: &Metrics,
    shutdown_limit: Duration,
) -> (
    UsageSink,
    UsageWriter,
    mpsc::UnboundedSender<oneshot::Sender<()>>,
) {
    let (sink, queue) = channel(journal.clone(), settings.batch_size);
    let (flushes, flush_requests) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let state = Arc::new(WriterState::default());
    let writer = Writer::new(
        store,
        settings,
        journal,
        Arc::clone(&state),
        shutdown_limit,
        metrics.usage(),
    );
    let task = tokio::spawn(writer.run(
        queue,
        stop_rx,
        flush_requests,
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
        flushes,
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
            journaled: state.parked.load(Ordering::Relaxed),
            overflowed: state.overflowed.load(Ordering::Relaxed),
            lost: state.lost.load(Ordering::Relaxed),
            database_failing: state.failing.load(Ordering::Relaxed),
        }
    }
}

// === impl Writer ===

struct Writer {
    store: Arc<dyn UsageStore>,
    journal: Option<Journal>,
    batch_size: usize,
    buffer_limit: usize,
    /// Records (with their journal tickets) waiting for the database, oldest first.
    buffer: VecDeque<Queued>,
    /// Records past the buffer, kept only in the journal (oldest first, all older than any
    /// record taken into the buffer while some are parked — except those that waited in
    /// `unwritten`: the store does not depend on the order).
    parked: Parked,
    /// Records that came past the buffer's bound before their journal line was in the file (a
    /// request's line is written at the end of its runtime's scheduler pass, and this task can
    /// take the record first): held here until the line is written, then parked
    /// ([`Writer::park_written`]), so that the buffer keeps its bound. A line whose write failed
    /// never becomes readable: its record goes to the buffer.
    unwritten: VecDeque<Queued>,
    /// The buffer went past its bound without a journal (logged once per episode).
    unbounded_warned: bool,
    state: Arc<WriterState>,
    /// While writes fail: no attempt before this.
    retry_at: Option<Instant>,
    backoff: Duration,
    written: u64,
    shutdown_limit: Duration,
    metrics: UsageMetrics,
}

impl Writer {
    fn new(
        store: Arc<dyn UsageStore>,
        settings: &UsageSettings,
        journal: Option<Journal>,
        state: Arc<WriterState>,
        shutdown_limit: Duration,
        metrics: UsageMetrics,
    ) -> Self {
        Writer {
            store,
            journal,
            batch_size: settings.batch_size,
            buffer_limit: settings.buffer_records,
            buffer: VecDeque::new(),
            parked: Parked::default(),
            unwritten: VecDeque::new(),
            unbounded_warned: false,
            state,
            retry_at: None,
            backoff: Duration::from_millis(50),
            written: 0,
            shutdown_limit,
            metrics,
        }
    }

    async fn run(
        mut self,
        queue: UsageQueue,
        mut stop: watch::Receiver<bool>,
        mut flush_requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
        flush_interval: Duration,
        backlog_warning: usize,
    ) -> u64 {
        let UsageQueue { mut rx, doorbell } = queue;
        let mut warned_at = Instant::now() - Duration::from_secs(60);
        // [`UsageFlush`] callers waiting for this round to store everything queued.
        let mut flushing: Vec<oneshot::Sender<()>> = Vec::new();
        let mut ticker = tokio::time::interval(flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = self.retry_at;
            // Woken by a full batch (the doorbell) or the flush tick, not by every record; a
            // backlog of a batch or more is taken at once, a batch per round.
            let due = if rx.len() >= self.batch_size {
                false
            } else {
                tokio::select! {
                    () = doorbell.rung() => false,
                    _ = ticker.tick() => true,
                    () = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => true,
                    Some(reply) = flush_requests.recv() => {
                        flushing.push(reply);
                        true
                    }
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                        false
                    }
                }
            };
            self.park_written();
            let mut taken = 0;
            let mut closed = false;
            // A flush takes everything queued; otherwise a batch per round.
            let limit = if flushing.is_empty() {
                self.batch_size
            } else {
                usize::MAX
            };
            while taken < limit {
                match rx.try_recv() {
                    Ok(queued) => {
                        self.take(queued);
                        taken += 1;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            doorbell.taken(taken);
            if closed {
                break;
            }
            let backlog = rx.len();
            if backlog > backlog_warning && warned_at.elapsed() > Duration::from_secs(10) {
                warned_at = Instant::now();
                tracing::warn!(backlog, "usage writer is falling behind; records are queued in memory (and safe in the journal)");
            }
            self.pump(due).await;
            self.count_waiting(rx.len());
            for reply in flushing.drain(..) {
                let _ = reply.send(());
            }
        }
        // Drain everything already queued, write what the database takes in time; the rest
        // stays in the journal.
        rx.close();
        while let Some(queued) = rx.recv().await {
            self.take(queued);
        }
        // In memory anyway: written first, with the buffer.
        let unwritten = std::mem::take(&mut self.unwritten);
        self.buffer.extend(unwritten);
        let deadline = Instant::now() + self.shutdown_limit;
        self.retry_at = None;
        while !self.buffer.is_empty() || !self.parked.is_empty() {
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
        let left = self.buffer.len() as u64 + self.parked.len();
        if left > 0 {
            let unjournaled = self
                .buffer
                .iter()
                .filter(|queued| {
                    queued
                        .journaled
                        .as_ref()
                        .is_none_or(Journaled::write_failed)
                })
                .count() as u64;
            self.state.lost.fetch_add(unjournaled, Ordering::Relaxed);
            self.metrics.records_lost.inc_by(unjournaled);
            if unjournaled < left {
                tracing::warn!(
                    records = left - unjournaled,
                    "the database did not take every usage record before shutdown; they stay in the usage journal and are written at the next start"
                );
            }
            if unjournaled > 0 {
                tracing::error!(
                    records = unjournaled,
                    "the database did not take every usage record before shutdown and they are not in the usage journal (`usage.journal` off, or its write failed); they are lost"
                );
            }
        }
        self.buffer.clear();
        self.state.buffered.store(0, Ordering::Relaxed);
        self.count_waiting(0);
        if let Some(journal) = self.journal.take() {
            if let Err(error) = journal.close() {
                tracing::warn!(%error, "could not tidy up the usage journal; it is replayed at the next start");
            }
        }
        self.written
    }

    /// The metrics' queue depth: records waiting, `in_channel` still queued plus those taken
    /// (in the buffer, or in the journal only).
    fn count_waiting(&self, in_channel: usize) {
        let waiting = (in_channel as u64)
            .saturating_add(self.in_memory() as u64)
            .saturating_add(self.parked.len());
        self.metrics
            .queue_depth
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Records held in memory: the buffer, and those waiting for their journal line.
    fn in_memory(&self) -> usize {
        self.buffer.len() + self.unwritten.len()
    }

    /// Publishes how many records are in memory and how many in the journal only.
    fn publish_counts(&self) {
        self.state
            .buffered
            .store(self.in_memory(), Ordering::Relaxed);
        self.state
            .parked
            .store(self.parked.len(), Ordering::Relaxed);
    }

    /// One record from the queue: into the buffer, or — past its bound, or behind records
    /// parked already — only its place in the journal (once its line is in the file; until
    /// then it waits in `unwritten`). A record that is in no journal (`usage.journal` off, or
    /// its line's write failed) can only be kept in memory: the buffer takes it past its bound.
    fn take(&mut self, queued: Queued) {
        let full = self.buffer.len() >= self.buffer_limit;
        let Queued { record, journaled } = queued;
        let journaled = if full || !self.parked.is_empty() {
            match journaled {
                Some(ticket) if ticket.is_written() => {
                    self.park(ticket);
                    return;
                }
                Some(ticket) if !ticket.write_failed() => {
                    self.unwritten.push_back(Queued {
                        record,
                        journaled: Some(ticket),
                    });
                    self.publish_counts();
                    return;
                }
                in_no_journal => {
                    if full && !self.unbounded_warned {
                        self.unbounded_warned = true;
                        tracing::warn!(
                            buffer_limit = self.buffer_limit,
                            "usage buffer is full while the database cannot be written, and a record is in no usage journal (the journal is off, or its write failed): such records are kept in memory past the limit"
                        );
                    }
                    in_no_journal
                }
            }
        } else {
            journaled
        };
        self.buffer.push_back(Queued { record, journaled });
        self.publish_counts();
    }

    /// Keeps only the place of a record whose journal line is in the file.
    fn park(&mut self, ticket: Journaled) {
        if self.parked.is_empty() {
            tracing::warn!(
                buffer_limit = self.buffer_limit,
                "usage buffer is full while the database cannot be written; further records wait in the usage journal only"
            );
        }
        self.parked.park(ticket);
        self.state.overflowed.fetch_add(1, Ordering::Relaxed);
        self.publish_counts();
    }

    /// Parks the records of `unwritten` whose journal line is in the file now; the buffer takes
    /// them instead once it has room again and nothing is parked (a written buffer), and those
    /// whose line's write failed (memory is the only place left for them).
    fn park_written(&mut self) {
        if self.unwritten.is_empty() {
            return;
        }
        let mut waiting = VecDeque::new();
        for queued in std::mem::take(&mut self.unwritten) {
            if self.parked.is_empty() && self.buffer.len() < self.buffer_limit {
                self.buffer.push_back(queued);
                continue;
            }
            match queued.journaled {
                Some(ticket) if ticket.is_written() => self.park(ticket),
                Some(ticket) if ticket.write_failed() => self.buffer.push_back(Queued {
                    record: queued.record,
                    journaled: Some(ticket),
                }),
                journaled => waiting.push_back(Queued {
                    record: queued.record,
                    journaled,
                }),
            }
        }
        self.unwritten = waiting;
        self.publish_counts();
    }

    /// With the buffer written: the next parked records, read back from the journal.
    fn unpark(&mut self) {
        let Some(journal) = &self.journal else {
            return;
        };
        match journal.read_parked(&mut self.parked, self.buffer_limit.max(self.batch_size)) {
            Ok((records, missing)) => {
                if missing > 0 {
                    tracing::error!(
                        missing,
                        "usage records could not be read back from the journal; they are replayed at the next start"
                    );
                }
                self.buffer
                    .extend(records.into_iter().map(|(record, ticket)| Queued {
                        record,
                        journaled: Some(ticket),
                    }));
            }
            Err(error) => {
                tracing::error!(%error, records = self.parked.len(), "cannot read usage records back from the journal; they are replayed at the next start");
                self.parked = Parked::default();
            }
        }
        self.publish_counts();
    }

    /// Writes full batches (every batch when `due`), then the parked records, until the buffer
    /// is empty or a write fails (then it waits for the retry time).
    async fn pump(&mut self, due: bool) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        loop {
            if self.buffer.is_empty() && !self.parked.is_empty() {
                self.unpark();
            }
            if self.buffer.is_empty() {
                self.unbounded_warned = false;
                return;
            }
            if !due && self.buffer.len() < self.batch_size {
                return;
            }
            let count = self.buffer.len().min(self.batch_size);
            // Taken out of the buffer, not cloned; a failed write puts them back in front.
            let mut batch: Vec<UsageRecord> = Vec::with_capacity(count);
            let mut tickets: Vec<Option<Journaled>> = Vec::with_capacity(count);
            for queued in self.buffer.drain(..count) {
                batch.push(queued.record);
                tickets.push(queued.journaled);
            }
            let result =
                tokio::time::timeout(INSERT_TIMEOUT, self.store.insert_usage(&batch)).await;
            match result {
                Ok(Ok(())) => {
                    let tickets: Vec<Journaled> = tickets.into_iter().flatten().collect();
                    if let Some(journal) = &self.journal {
                        if let Err(error) = journal.acknowledge(&tickets) {
                            // Stored, but the journal does not know: a crash would replay them
                            // (and the store would skip them).
                            tracing::warn!(%error, "could not acknowledge usage records in the journal");
                        }
                    }
                    self.written += count as u64;
                    self.metrics.records_written.inc_by(count as u64);
                    self.publish_counts();
                    if self.state.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            buffered = self.buffer.len(),
                            journaled = self.parked.len(),
                            "usage records are written again"
                        );
                    }
                    self.retry_at = None;
                    self.backoff = Duration::from_millis(50);
                }
                failure => {
                    for (record, journaled) in batch.into_iter().zip(tickets).rev() {
                        self.buffer.push_front(Queued { record, journaled });
                    }
                    self.metrics.write_errors.inc();
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
/// usage older than it (hourly); drops the hourly rollup older than `rollup_retention` (hourly,
/// in slices of 5 000 rows). Failures are logged and tried again the next hour.
pub fn spawn_maintenance(
    store: Arc<dyn UsageStore>,
    retention: Option<Duration>,
    rollup_retention: Duration,
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
            let cut = now.saturating_sub(i64::try_from(rollup_retention.as_millis()).unwrap_or(0));
            match store.prune_rollups(cut).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "usage rollup past its retention dropped"),
                Err(error) => tracing::warn!(%error, "could not drop the old usage rollup"),
            }
        }
    })
}

#[cfg(test)]
mod tests;
