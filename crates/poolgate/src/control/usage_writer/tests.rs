//! The usage writer over a real SQLite store that can be switched off (every write then fails,
//! as with an unreachable database): records wait in the bounded buffer, past it in the journal
//! only, and are all written once when writes work again — or at the next start after a
//! shutdown.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use async_trait::async_trait;

use super::*;
use crate::control::store::sqlite::SqliteStore;
use crate::control::store::StoreError;
use crate::domain::Outcome;
use crate::usage::stats::{GroupStats, StatsRange};
use crate::usage::{UsageFilter, UsagePage};

/// A real store whose writes fail while `down` is set.
struct Switchable {
    inner: SqliteStore,
    down: AtomicBool,
}

#[async_trait]
impl UsageStore for Switchable {
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unsupported("the database is down".into()));
        }
        self.inner.insert_usage(records).await
    }
    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError> {
        self.inner.list_usage(filter).await
    }
    async fn usage_stats(&self, range: &StatsRange<'_>) -> Result<Vec<GroupStats>, StoreError> {
        self.inner.usage_stats(range).await
    }
    async fn count_usage(&self) -> Result<u64, StoreError> {
        self.inner.count_usage().await
    }
    async fn prepare_usage(&self, now_ms: i64) -> Result<(), StoreError> {
        self.inner.prepare_usage(now_ms).await
    }
    async fn prune_usage(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_usage(before_ms).await
    }
    async fn prune_rollups(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_rollups(before_ms).await
    }
    async fn spend_of(
        &self,
        kind: crate::domain::LimiterKind,
        id: &str,
        day_start_ms: i64,
        month_start_ms: i64,
    ) -> Result<crate::pricing::RestoredSpend, StoreError> {
        self.inner
            .spend_of(kind, id, day_start_ms, month_start_ms)
            .await
    }
}

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        ts_ms: 1_000,
        client_key_id: None,
        endpoint: "chat.completions".into(),
        canonical_model: None,
        backend_id: None,
        upstream_model: None,
        pool: None,
        attempts: 1,
        status: 200,
        outcome: Outcome::Success,
        error_kind: None,
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: None,
        cached_tokens: None,
        latency_ms: 1,
        ttfb_ms: None,
        streamed: false,
        tokens_estimated: false,
        cost: None,
        cache_write_tokens: None,
    }
}

fn settings() -> UsageSettings {
    UsageSettings {
        batch_size: 10,
        buffer_records: 25,
        flush_interval: Duration::from_millis(10),
        ..UsageSettings::default()
    }
}

async fn store(dir: &Path, down: bool) -> Arc<Switchable> {
    Arc::new(Switchable {
        inner: SqliteStore::open(&dir.join("poolgate.db")).await.unwrap(),
        down: AtomicBool::new(down),
    })
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn metrics() -> Metrics {
    Metrics::new(false).unwrap()
}

fn journal(dir: &Path) -> Journal {
    let (journal, replay) = Journal::open(dir, JournalSettings::default()).unwrap();
    assert!(replay.records().is_empty());
    journal
}

/// Segment files left in the journal's folder.
fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(crate::journal::JOURNAL_DIR)).map_or(0, |entries| entries.count())
}

#[tokio::test]
async fn records_wait_in_the_buffer_then_in_the_journal_and_are_all_written_once_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), true).await;
    let (sink, writer) = spawn_writer(
        store.clone(),
        &settings(),
        Some(journal(dir.path())),
        &metrics(),
        &UsageFlush::default(),
    );
    let state = writer.state();
    for i in 0..60 {
        sink.open();
        sink.record(record(i)).await;
    }
    until(
        "the buffer to fill and the rest to wait in the journal",
        || {
            let view = state.view();
            view.buffered == 25 && view.journaled == 35
        },
    )
    .await;
    let view = state.view();
    assert!(view.database_failing);
    assert_eq!((view.overflowed, view.lost, view.buffer_limit), (35, 0, 25));
    assert_eq!(store.count_usage().await.unwrap(), 0);

    // Records arriving while some wait in the journal queue up behind them.
    for i in 60..65 {
        sink.open();
        sink.record(record(i)).await;
    }
    until("the newer records to wait too", || {
        state.view().journaled == 40
    })
    .await;

    store.down.store(false, Ordering::SeqCst);
    until("everything to be written", || {
        let view = state.view();
        view.buffered == 0 && view.journaled == 0 && !view.database_failing
    })
    .await;
    assert_eq!(writer.shutdown().await, 65);
    assert_eq!(store.count_usage().await.unwrap(), 65);
    // Every record was acknowledged: the journal is gone after the shutdown.
    assert_eq!(segments(dir.path()), 0);
}

#[tokio::test]
async fn without_a_journal_records_past_the_buffer_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), true).await;
    let (sink, writer) = spawn_writer(
        store.clone(),
        &settings(),
        None,
        &metrics(),
        &UsageFlush::default(),
    );
    let state = writer.state();
    for i in 0..40 {
        sink.open();
        sink.record(record(i)).await;
    }
    until("every record to be buffered", || {
        state.view().buffered == 40
    })
    .await;
    assert_eq!(state.view().journaled, 0);
    store.down.store(false, Ordering::SeqCst);
    until("everything to be written", || state.view().buffered == 0).await;
    assert_eq!(writer.shutdown().await, 40);
    assert_eq!(store.count_usage().await.unwrap(), 40);
}

#[tokio::test]
async fn what_shutdown_cannot_write_stays_in_the_journal_and_is_written_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), true).await;
    let (sink, writer, _) = spawn_writer_with(
        store.clone(),
        &settings(),
        Some(journal(dir.path())),
        &metrics(),
        Duration::from_millis(200),
    );
    for i in 0..40 {
        sink.open();
        sink.record(record(i)).await;
    }
    assert_eq!(writer.shutdown().await, 0);
    assert!(segments(dir.path()) > 0);

    // The next start, with the database back; one record was written already (a flush whose
    // acknowledgement was lost): it is not counted twice.
    store.down.store(false, Ordering::SeqCst);
    store.insert_usage(&[record(7)]).await.unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        usage: settings(),
        ..Config::default()
    };
    let journal = open_journal(&config, &*store).await.unwrap();
    assert_eq!(store.count_usage().await.unwrap(), 40);
    let (_sink, writer) = spawn_writer(
        store.clone(),
        &settings(),
        journal,
        &metrics(),
        &UsageFlush::default(),
    );
    assert_eq!(writer.shutdown().await, 0);
    assert_eq!(store.count_usage().await.unwrap(), 40);
    assert_eq!(segments(dir.path()), 0);
}

/// The writer is not woken by each record: fewer than a batch wait for the flush tick, and the
/// record that completes a batch rings for it at once.
#[tokio::test]
async fn a_full_batch_is_written_at_once_and_fewer_records_wait_for_the_tick() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), false).await;
    let settings = UsageSettings {
        batch_size: 4,
        flush_interval: Duration::from_secs(3600),
        ..UsageSettings::default()
    };
    let (sink, writer) = spawn_writer(
        store.clone(),
        &settings,
        None,
        &metrics(),
        &UsageFlush::default(),
    );
    let state = writer.state();
    // The interval's first tick is immediate: let it pass before the records come.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        sink.open();
        sink.record(record(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.count_usage().await.unwrap(), 0, "three records wait");
    assert_eq!(
        state.view().buffered,
        0,
        "the writer did not even take them"
    );

    sink.open();
    sink.record(record(3)).await;
    for _ in 0..300 {
        if store.count_usage().await.unwrap() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.count_usage().await.unwrap(), 4, "the fourth rang");

    // Two more: written by the shutdown's drain, none lost.
    for i in 4..6 {
        sink.open();
        sink.record(record(i)).await;
    }
    assert_eq!(writer.shutdown().await, 6);
    assert_eq!(store.count_usage().await.unwrap(), 6);
}

/// A flush stores at once what is queued, more than a batch included, without waiting for the
/// tick; a flush handle given to no writer returns at once.
#[tokio::test]
async fn a_flush_stores_everything_queued_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), false).await;
    UsageFlush::default().flush().await;
    let settings = UsageSettings {
        batch_size: 4,
        flush_interval: Duration::from_secs(3600),
        ..UsageSettings::default()
    };
    let flush = UsageFlush::default();
    let (sink, writer) = spawn_writer(store.clone(), &settings, None, &metrics(), &flush);
    // The interval's first tick is immediate: let it pass before the records come.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        sink.open();
        sink.record(record(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.count_usage().await.unwrap(), 0, "three records wait");
    flush.flush().await;
    assert_eq!(store.count_usage().await.unwrap(), 3);
    // A backlog past a batch (the doorbell rings, the writer takes a batch per round): the
    // flush still returns only once all of it is stored.
    for i in 3..13 {
        sink.open();
        sink.record(record(i)).await;
    }
    flush.flush().await;
    assert_eq!(store.count_usage().await.unwrap(), 13);
    assert_eq!(writer.shutdown().await, 13);
}

/// A writer over a store that is down and a journal, driven by the test itself (no task), with
/// a handle on its state.
async fn writer_in_hand(
    dir: &Path,
    shutdown_limit: Duration,
) -> (Writer, WriterStateHandle, Journal) {
    let journal = journal(dir);
    let shared = Arc::new(WriterState::default());
    let state = WriterStateHandle {
        state: Arc::clone(&shared),
        buffer_limit: settings().buffer_records,
    };
    let writer = Writer::new(
        store(dir, true).await,
        &settings(),
        Some(journal.clone()),
        shared,
        shutdown_limit,
        metrics().usage(),
    );
    (writer, state, journal)
}

/// Record `i`, appended to `journal` (its line joins this thread's batch).
fn appended(journal: &Journal, i: usize) -> Queued {
    Queued {
        record: record(i),
        journaled: Some(journal.append(&record(i))),
    }
}

/// A record taken past the buffer's bound before its journal line is in the file waits in
/// memory beside the buffer, and is parked once the line is written: the buffer keeps its bound
/// exactly (it used to take such a record, past its bound, until the database came back).
#[tokio::test]
async fn a_record_past_the_bound_whose_journal_line_is_not_written_yet_is_parked_once_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, state, journal) = writer_in_hand(dir.path(), SHUTDOWN_WRITE_LIMIT).await;
    // In a task of its own: the journal's lines appended there are written in one batch when the
    // task yields (outside a task each line would be written at once). On the test's
    // current-thread runtime nothing else runs before it yields.
    tokio::spawn(async move {
        let queued = |i: usize| appended(&journal, i);
        for i in 0..25 {
            writer.take(queued(i));
        }
        let late: Vec<Queued> = (25..30).map(queued).collect();
        assert!(late
            .iter()
            .all(|q| !q.journaled.as_ref().unwrap().is_written()));
        for queued in late {
            writer.take(queued);
        }
        assert_eq!((writer.buffer.len(), writer.unwritten.len()), (25, 5));
        assert_eq!((state.view().buffered, state.view().journaled), (30, 0));

        // The batch's write runs once this task yields.
        tokio::task::yield_now().await;
        writer.park_written();
        assert_eq!((writer.buffer.len(), writer.unwritten.len()), (25, 0));
        let view = state.view();
        assert_eq!((view.buffered, view.journaled, view.overflowed), (25, 5, 5));

        // Once the buffer was written, the parked records come back from the journal.
        writer.buffer.clear();
        writer.unpark();
        let back: Vec<&str> = writer
            .buffer
            .iter()
            .map(|q| q.record.request_id.as_str())
            .collect();
        assert_eq!(back, ["req-25", "req-26", "req-27", "req-28", "req-29"]);
    })
    .await
    .unwrap();
}

/// A record past the buffer's bound whose journal line could not be written is in no journal:
/// memory is the only place left for it, so the buffer takes it (it is not kept waiting for a
/// line that will never be readable), and a shutdown that cannot write it counts it as lost.
#[tokio::test]
async fn a_record_past_the_bound_whose_journal_line_failed_goes_to_the_buffer_and_counts_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, state, journal) = writer_in_hand(dir.path(), Duration::ZERO).await;
    // A task of its own on the current-thread runtime, as in the test above.
    tokio::spawn(async move {
        let queued = |i: usize| appended(&journal, i);
        for i in 0..25 {
            writer.take(queued(i));
        }
        journal.fail_writes();
        for i in 25..28 {
            writer.take(queued(i));
        }
        assert_eq!((writer.buffer.len(), writer.unwritten.len()), (25, 3));

        // The failing batch's write runs once this task yields.
        tokio::task::yield_now().await;
        writer.park_written();
        assert_eq!((writer.buffer.len(), writer.unwritten.len()), (28, 0));
        // A record whose line failed already goes straight to the buffer.
        let late = queued(28);
        tokio::task::yield_now().await;
        assert!(late.journaled.as_ref().unwrap().write_failed());
        writer.take(late);
        assert_eq!((writer.buffer.len(), writer.unwritten.len()), (29, 0));
        let view = state.view();
        assert_eq!((view.buffered, view.journaled, view.overflowed), (29, 0, 0));

        // The database is still down at shutdown: the 25 records whose lines are in the
        // journal stay there for the next start; the 4 others are lost, and counted so.
        let (_sink, queue) = crate::usage::channel(None, 10);
        let (stop, stopped) = watch::channel(false);
        drop(stop);
        writer
            .run(
                queue,
                stopped,
                mpsc::unbounded_channel().1,
                Duration::from_millis(10),
                1_000,
            )
            .await;
        assert_eq!(state.view().lost, 4);
    })
    .await
    .unwrap();
}
