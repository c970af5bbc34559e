//! The journal's tests: crash replay, torn lines, rotation, group commit, the line format.

use std::io::Write as _;

use super::*;
use crate::domain::tests_support::usage_record as record;
use crate::domain::Outcome;

fn ids(records: &[UsageRecord]) -> Vec<String> {
    records.iter().map(|r| r.request_id.clone()).collect()
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| record(i).request_id).collect()
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join(JOURNAL_DIR))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_crash_replays_exactly_the_unacknowledged_records_once() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert!(replay.records().is_empty());
    replay.finish().unwrap();
    let tickets: Vec<Journaled> = (0..100).map(|i| journal.append(&record(i))).collect();
    // The store committed two batches, out of order inside each.
    let mut first: Vec<Journaled> = tickets[..25].to_vec();
    first.reverse();
    journal.acknowledge(&first).unwrap();
    journal.acknowledge(&tickets[25..40]).unwrap();
    // Crash: no close, no further acknowledgement.
    drop(tickets);
    drop(journal);

    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), expected(40..100));
    assert_eq!(replay.records()[0], record(40));
    assert_eq!(replay.skipped_lines(), 0);
    replay.finish().unwrap();
    // New records continue the numbering; the old segments are gone.
    let ticket = journal.append(&record(100));
    journal.acknowledge(&[ticket]).unwrap();
    journal.close().unwrap();
    assert!(
        segments(dir.path()).is_empty(),
        "{:?}",
        segments(dir.path())
    );
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert!(replay.records().is_empty());
}

#[test]
fn a_torn_last_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    for i in 0..10 {
        journal.append(&record(i));
    }
    drop(journal);
    // The process died in the middle of the last write.
    let path = segments(dir.path()).pop().unwrap();
    let length = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(length - 40)
        .unwrap();
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), expected(0..9));
    assert_eq!(replay.skipped_lines(), 1);
}

/// A fresh journal whose segment holds record 0's line, then `bytes` written into the file by
/// something else (outside a runtime each line is written at once).
fn after_the_first_line(data_dir: &Path, bytes: &[u8]) -> Journal {
    let (journal, replay) = Journal::open(data_dir, JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    journal.append(&record(0));
    let path = segments(data_dir).pop().unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    journal
}

/// A write that failed part-way (a full disk) leaves a line without its newline. The next
/// write starts with one, so that its first line is read back: it used to join the torn line,
/// and neither parsed.
#[test]
fn a_line_written_after_a_failed_write_is_not_joined_to_what_that_write_left() {
    let dir = tempfile::tempdir().unwrap();
    // What the failed write left, and the journal's note of the failure.
    let journal = after_the_first_line(dir.path(), br#"{"seq":99,"record":{"request_id":"req_"#);
    journal
        .inner
        .current
        .read()
        .torn
        .store(true, Ordering::Release);
    journal.append(&record(1));
    journal.append(&record(2));
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), expected(0..3));
    assert_eq!(replay.skipped_lines(), 1);
}

#[test]
fn a_failed_write_marks_its_segment_torn() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    journal.fail_writes();
    let ticket = journal.append(&record(0));
    assert!(ticket.write_failed());
    assert!(journal.inner.current.read().torn.load(Ordering::Acquire));
}

#[test]
fn garbage_lines_are_skipped_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    // What a power loss can leave: zeros, then (after a restart of the writer) more lines.
    let journal = after_the_first_line(dir.path(), b"\0\0\0\0\n{\"s\":7}\n");
    journal.append(&record(1));
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), expected(0..2));
    assert_eq!(replay.skipped_lines(), 2);
}

#[test]
fn a_crash_during_replay_replays_again() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    for i in 0..5 {
        journal.append(&record(i));
    }
    drop(journal);
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(replay.records().len(), 5);
    // Crash before `finish` (the store may or may not have them: its unique `request_id`
    // makes the second insert a no-op), while the new run already journaled one.
    let ticket = journal.append(&record(5));
    drop((journal, replay, ticket));
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), expected(0..6));
}

#[test]
fn segments_rotate_and_are_deleted_so_the_journal_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let settings = JournalSettings {
        segment_bytes: 4096,
    };
    let (journal, replay) = Journal::open(dir.path(), settings).unwrap();
    replay.finish().unwrap();
    let mut most_files = 0;
    let mut pending = Vec::new();
    for i in 0..2_000 {
        pending.push(journal.append(&record(i)));
        // The writer commits in batches of 64, always one batch behind.
        if pending.len() == 128 {
            let batch: Vec<Journaled> = pending.drain(..64).collect();
            journal.acknowledge(&batch).unwrap();
            most_files = most_files.max(segments(dir.path()).len());
        }
    }
    assert!(most_files <= 12, "{most_files} segment files at once");
    assert!(
        journal.pending_bytes() < 128 * 1024,
        "{}",
        journal.pending_bytes()
    );
    // Crash with the last 64 unacknowledged: exactly those come back, across segments.
    let unacked: Vec<String> = ids(&(2_000 - pending.len()..2_000)
        .map(record)
        .collect::<Vec<_>>());
    let half: Vec<Journaled> = pending.drain(..pending.len() - 64).collect();
    journal.acknowledge(&half).unwrap();
    drop((journal, pending));
    let (_, replay) = Journal::open(dir.path(), settings).unwrap();
    assert_eq!(ids(replay.records()), unacked[unacked.len() - 64..]);
}

#[test]
fn concurrent_appends_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let journal = journal.clone();
            scope.spawn(move || {
                for i in 0..500 {
                    journal.append(&record(thread * 500 + i));
                }
            });
        }
    });
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(replay.skipped_lines(), 0);
    let mut got = ids(replay.records());
    got.sort();
    assert_eq!(got, expected(0..4_000));
}

/// The store writer's overflow: records parked by their place only are read back in order,
/// `limit` at a time, across segments; acknowledged, their segments go.
#[test]
fn parked_records_are_read_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let settings = JournalSettings {
        segment_bytes: 4096,
    };
    let (journal, replay) = Journal::open(dir.path(), settings).unwrap();
    replay.finish().unwrap();
    let mut parked = Parked::default();
    let mut kept = Vec::new();
    for i in 0..300 {
        let ticket = journal.append(&record(i));
        // Every tenth record stays in memory (the writer's buffer); the rest are parked.
        if i % 10 == 0 {
            kept.push(ticket);
        } else {
            parked.park(ticket);
        }
        // Acknowledgements of other records rotate the segments meanwhile.
        if i % 50 == 49 {
            journal.acknowledge(&std::mem::take(&mut kept)).unwrap();
        }
    }
    assert_eq!(parked.len(), 270);
    assert!(
        segments(dir.path()).len() > 3,
        "parked records span segments"
    );
    let mut read = Vec::new();
    while !parked.is_empty() {
        let (records, missing) = journal.read_parked(&mut parked, 100).unwrap();
        assert_eq!(missing, 0);
        assert!(records.len() <= 100);
        let tickets: Vec<Journaled> = records.iter().map(|(_, t)| t.clone()).collect();
        read.extend(records.into_iter().map(|(r, _)| r));
        journal.acknowledge(&tickets).unwrap();
    }
    let wanted: Vec<String> = (0..300)
        .filter(|i| i % 10 != 0)
        .map(|i| record(i).request_id)
        .collect();
    assert_eq!(ids(&read), wanted);
    journal.acknowledge(&kept).unwrap();
    journal.close().unwrap();
    assert!(segments(dir.path()).is_empty());
}

// === group commit ===

fn journal_bytes(data_dir: &Path) -> Vec<u8> {
    segments(data_dir)
        .iter()
        .flat_map(|path| std::fs::read(path).unwrap())
        .collect()
}

fn lines_of(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&byte| byte == b'\n').count()
}

#[test]
fn outside_a_runtime_each_line_is_written_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    for i in 0..3 {
        let ticket = journal.append(&record(i));
        assert!(ticket.is_written());
        assert_eq!(lines_of(&journal_bytes(dir.path())), i + 1);
    }
}

/// The thread-per-core runtime's case: the answers finishing in one pass of a current-thread
/// scheduler share one `write`, and each waits for it before its answer may go out.
#[tokio::test(flavor = "current_thread")]
async fn lines_appended_in_one_scheduler_pass_are_written_together_before_anyone_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let journal = journal.clone();
            let data_dir = dir.path().to_owned();
            tokio::spawn(async move {
                let ticket = journal.append(&record(i));
                // Not in the file yet: the batch's write runs after the tasks ready now.
                let before = lines_of(&journal_bytes(&data_dir));
                ticket.durable().await;
                assert!(ticket.is_written());
                let after = lines_of(&journal_bytes(&data_dir));
                (before, after, ticket)
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut tickets = Vec::new();
    for task in tasks {
        let (before, after, ticket) = task.await.unwrap();
        seen.push((before, after));
        tickets.push(ticket);
    }
    // Nobody saw a line before the write, and everybody saw all 50 right after it, all of
    // them in one batch: one write.
    assert!(seen.iter().all(|&(before, _)| before == 0), "{seen:?}");
    assert!(seen.iter().all(|&(_, after)| after == 50), "{seen:?}");
    let first = tickets[0].batch.as_ref().unwrap();
    assert!(tickets
        .iter()
        .all(|ticket| Arc::ptr_eq(ticket.batch.as_ref().unwrap(), first)));
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), expected(0..50));
}

/// A later pass starts a new batch; a task that never waits still gets its line written.
#[tokio::test(flavor = "current_thread")]
async fn every_pass_gets_its_own_write_and_nobody_has_to_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    let data_dir = dir.path().to_owned();
    // In a task, as a request's code runs (the test's own body is not one).
    tokio::spawn(async move {
        let first = journal.append(&record(0));
        assert!(!first.is_written());
        first.durable().await;
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 1);
        // Appended and never awaited (a cancelled request's record).
        drop(journal.append(&record(1)));
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 1);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 2);
    })
    .await
    .unwrap();
}

/// A stream's end: its line is written before `append_now` returns, even inside a task where
/// `append` would wait for the scheduler pass — and it does not join or close the open batch.
#[tokio::test(flavor = "current_thread")]
async fn append_now_writes_at_once_beside_the_open_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    let data_dir = dir.path().to_owned();
    // In a task, as a request's code runs (the test's own body is not one).
    tokio::spawn(async move {
        let grouped = journal.append(&record(0));
        let now = journal.append_now(&record(1));
        assert!(now.is_written());
        assert!(!grouped.is_written());
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 1);
        let also_grouped = journal.append(&record(2));
        assert!(Arc::ptr_eq(
            grouped.batch.as_ref().unwrap(),
            also_grouped.batch.as_ref().unwrap()
        ));
        grouped.durable().await;
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 3);
    })
    .await
    .unwrap();
}

/// A line appended alone (no other request under way) is in the file before `append_alone`
/// returns when the thread has no open batch, and joins the open batch when it has one (that
/// batch is written in this pass anyway: one `write` for both).
#[tokio::test(flavor = "current_thread")]
async fn append_alone_writes_at_once_or_joins_the_open_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    let data_dir = dir.path().to_owned();
    // In a task, as a request's code runs (the test's own body is not one).
    tokio::spawn(async move {
        let alone = journal.append_alone(&record(0));
        assert!(alone.is_written());
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 1);
        // Already durable: the answer does not pause.
        assert!(futures_util::FutureExt::now_or_never(alone.durable()).is_some());

        let grouped = journal.append(&record(1));
        let joined = journal.append_alone(&record(2));
        assert!(Arc::ptr_eq(
            grouped.batch.as_ref().unwrap(),
            joined.batch.as_ref().unwrap()
        ));
        assert!(!joined.is_written());
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 1);
        joined.durable().await;
        assert!(grouped.is_written());
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 3);

        // The batch was written: the next lone line is written at once again.
        let after = journal.append_alone(&record(3));
        assert!(after.is_written());
        assert_eq!(lines_of(&journal_bytes(&data_dir)), 4);
        drop(journal);
    })
    .await
    .unwrap();
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), expected(0..4));
}

/// After a rotation the thread's open batch belongs to the sealed segment: a line of the new
/// segment never joins it (it would sit in a file deleted once that segment is acknowledged).
#[tokio::test(flavor = "current_thread")]
async fn a_line_never_joins_an_open_batch_of_a_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let settings = JournalSettings { segment_bytes: 1 };
    let (journal, replay) = Journal::open(dir.path(), settings).unwrap();
    replay.finish().unwrap();
    tokio::spawn(async move {
        let old = journal.append(&record(0));
        journal.rotate_and_delete().unwrap();
        assert!(!Arc::ptr_eq(&old.segment, &*journal.inner.current.read()));
        let alone = journal.append_alone(&record(1));
        assert!(!Arc::ptr_eq(&old.segment, &alone.segment));
        assert!(alone.is_written());
        assert!(!old.is_written());
        let grouped = journal.append(&record(2));
        assert!(!Arc::ptr_eq(
            old.batch.as_ref().unwrap(),
            grouped.batch.as_ref().unwrap()
        ));
        old.durable().await;
        grouped.durable().await;
        drop(journal);
    })
    .await
    .unwrap();
    let (_, replay) = Journal::open(dir.path(), settings).unwrap();
    assert_eq!(ids(replay.records()), expected(0..3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_work_stealing_runtime_every_line_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let ticket = journal.append(&record(task * 200 + i));
                    ticket.durable().await;
                    assert!(ticket.is_written());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(replay.skipped_lines(), 0);
    let mut got = ids(replay.records());
    got.sort();
    assert_eq!(got, expected(0..1_600));
}

/// A record appended while its runtime shuts down (a cancelled request's guard dropping with its
/// task): the write task cannot run any more, yet the line is written — even while its ticket
/// is still held (by the store writer's queue, in the gateway).
#[test]
fn a_line_appended_while_the_runtime_shuts_down_is_written() {
    struct AppendOnDrop {
        journal: Journal,
        ticket: Arc<Mutex<Option<Journaled>>>,
    }
    impl Drop for AppendOnDrop {
        fn drop(&mut self) {
            *self.ticket.lock() = Some(self.journal.append(&record(7)));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    let ticket = Arc::new(Mutex::new(None));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let guard = AppendOnDrop {
        journal: journal.clone(),
        ticket: Arc::clone(&ticket),
    };
    runtime.block_on(async move {
        tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
    });
    assert_eq!(lines_of(&journal_bytes(dir.path())), 0);
    drop(runtime);
    let held = ticket
        .lock()
        .take()
        .expect("the guard appended as its task dropped");
    assert!(held.is_written());
    assert_eq!(lines_of(&journal_bytes(dir.path())), 1);
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(ids(replay.records()), vec![record(7).request_id]);
    drop(held);
}

// === the hand-written record line ===

/// What the journal wrote before the line was written by hand (and what `acknowledge` still
/// writes): `serde_json` over `Line`.
fn serde_line(seq: u64, record: &UsageRecord) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Line {
        seq: Some(seq),
        record: Some(record),
        acked: None,
    })
    .unwrap();
    line.push(b'\n');
    line
}

fn encoded(seq: u64, record: &UsageRecord) -> Vec<u8> {
    let mut line = Vec::new();
    line::encode(&mut line, seq, record);
    line
}

/// Every field set, strings needing every kind of escape, unicode, extreme numbers.
fn tricky_record() -> UsageRecord {
    UsageRecord {
        request_id: "req_\"quoted\"\\back\\slash/".into(),
        ts_ms: i64::MIN,
        client_key_id: Some(
            "ключ 🔑 \u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}\u{80}\u{2028}".into(),
        ),
        endpoint: "chat.completions".into(),
        canonical_model: Some("gpt-4o\r\n".into()),
        backend_id: Some(String::new()),
        upstream_model: Some("模型/\u{FFFF}\u{10FFFF}".into()),
        pool: Some("\t".into()),
        attempts: u32::MAX,
        status: u16::MAX,
        outcome: Outcome::StreamError,
        error_kind: Some("upstream_timeout".into()),
        prompt_tokens: Some(u32::MAX),
        completion_tokens: Some(0),
        total_tokens: Some(1),
        cached_tokens: Some(10),
        latency_ms: u64::MAX,
        ttfb_ms: Some(0),
        streamed: false,
        tokens_estimated: true,
        cost: Some(crate::pricing::Nanodollars::new(1_234_567)),
        cache_write_tokens: Some(7),
    }
}

#[test]
fn the_record_line_is_the_bytes_serde_json_writes_and_replays_to_the_record() {
    let nulls = UsageRecord {
        client_key_id: None,
        canonical_model: None,
        backend_id: None,
        upstream_model: None,
        pool: None,
        error_kind: None,
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: None,
        cached_tokens: None,
        ttfb_ms: None,
        cost: None,
        cache_write_tokens: None,
        ts_ms: 0,
        ..record(1)
    };
    let outcomes = [
        Outcome::Success,
        Outcome::Error,
        Outcome::StreamError,
        Outcome::Cancelled,
    ];
    let mut records = vec![record(0), tricky_record(), nulls];
    records.extend(outcomes.into_iter().map(|outcome| UsageRecord {
        outcome,
        ts_ms: 1_700_000_000_000,
        cost: Some(crate::pricing::Nanodollars::new(1)),
        ..record(2)
    }));
    records.push(UsageRecord {
        cost: Some(crate::pricing::Nanodollars::from_usd(1_000_000_000)),
        ..record(3)
    });
    for (seq, record) in [0, 1, 9, 10, 12_345, u64::MAX]
        .into_iter()
        .zip(records.iter().cycle())
    {
        let line = encoded(seq, record);
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            String::from_utf8(serde_line(seq, record)).unwrap()
        );
        let parsed: Line<UsageRecord> = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed.seq, Some(seq));
        assert_eq!(parsed.record.as_ref(), Some(record));
    }
    for record in &records {
        let parsed: Line<UsageRecord> = serde_json::from_slice(&encoded(3, record)).unwrap();
        assert_eq!(parsed.record.as_ref(), Some(record));
    }

    // Through the journal: appended through a batch, replayed after a crash.
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    for record in &records {
        journal.append(record);
    }
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(replay.records(), &records[..]);
    assert_eq!(replay.skipped_lines(), 0);
}

/// Segments written by earlier versions (`serde_json` lines, and lines from before the
/// `#[serde(default)]` fields existed) still replay next to the new lines.
#[test]
fn lines_of_earlier_versions_still_replay() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join(JOURNAL_DIR);
    std::fs::create_dir_all(&journal_dir).unwrap();
    let old = concat!(
        r#"{"s":4,"r":{"request_id":"req_old","ts_ms":1700000000000,"client_key_id":null,"endpoint":"messages","canonical_model":"claude","backend_id":"bkd_1","upstream_model":"claude-x","pool":null,"attempts":2,"status":499,"outcome":"cancelled","error_kind":"client_closed","prompt_tokens":5,"completion_tokens":null,"total_tokens":null,"latency_ms":12,"ttfb_ms":null,"streamed":true}}"#,
        "\n",
        r#"{"s":5,"r":{"request_id":"req_\u00e9\"x\"","ts_ms":-1,"client_key_id":"k\n","endpoint":"embeddings","canonical_model":null,"backend_id":null,"upstream_model":null,"pool":"p","attempts":1,"status":200,"outcome":"success","error_kind":null,"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"cached_tokens":null,"latency_ms":1,"ttfb_ms":1,"streamed":false,"tokens_estimated":false,"cost_usd":0.00125,"cache_write_tokens":null}}"#,
        "\n",
        r#"{"a":[[4,4]]}"#,
        "\n",
        r#"{"s":6,"r":{"request_id":"req_6","ts_ms":2,"client_key_id":null,"endpoint":"responses","canonical_model":null,"backend_id":null,"upstream_model":null,"pool":null,"attempts":0,"status":400,"outcome":"error","error_kind":"invalid_request","prompt_tokens":null,"completion_tokens":null,"total_tokens":null,"latency_ms":0,"ttfb_ms":null,"streamed":false}}"#,
        "\n",
    );
    std::fs::write(segment_path(&journal_dir, 3), old).unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    let replayed = replay.records().to_vec();
    assert_eq!(
        ids(&replayed),
        ["req_é\"x\"".to_string(), "req_6".to_string()]
    );
    assert_eq!(replayed[0].client_key_id.as_deref(), Some("k\n"));
    assert_eq!(replayed[0].ts_ms, -1);
    assert_eq!(
        replayed[0].cost,
        Some(crate::pricing::Nanodollars::new(1_250_000))
    );
    assert_eq!(replayed[0].cached_tokens, None);
    assert_eq!(replayed[1].outcome, Outcome::Error);
    assert!(!replayed[1].tokens_estimated);
    assert_eq!(replayed[1].cost, None);
    // A crash before `finish`: the new run's lines (written by hand) replay with the old ones,
    // numbered after them.
    journal.append(&tricky_record());
    drop((journal, replay));
    let (_, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(replay.records().len(), 3);
    assert_eq!(replay.records()[2], tricky_record());
}

fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                Just('/'),
                Just('\u{7f}'),
                Just('é'),
                Just('\u{2028}'),
                Just('😀'),
                (0_u8..0x20).prop_map(char::from),
                proptest::char::range('a', 'z'),
            ],
            0..24
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

proptest::proptest! {
    /// Any record: the hand-written line is byte for byte serde_json's, and parses back to the
    /// record (costs up to $1,000,000: floats keep every amount below that exact).
    #[test]
    fn any_record_line_is_serde_jsons(
        seq in proptest::prelude::any::<u64>(),
        texts in proptest::collection::vec(any_text(), 8),
        present in proptest::collection::vec(proptest::prelude::any::<bool>(), 13),
        numbers in proptest::collection::vec(proptest::prelude::any::<u64>(), 12),
        ts_ms in proptest::prelude::any::<i64>(),
        flags in (proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()),
        outcome in 0_usize..4,
    ) {
        let text = |i: usize| Some(texts[i].clone()).filter(|_| present[i]);
        let number = |i: usize| u32::try_from(numbers[i] >> 32).ok().filter(|_| present[5 + i.min(7)]);
        let record = UsageRecord {
            request_id: texts[0].clone(),
            ts_ms,
            client_key_id: text(1),
            endpoint: texts[2].clone(),
            canonical_model: text(3),
            backend_id: text(4),
            upstream_model: text(5),
            pool: text(6),
            attempts: u32::try_from(numbers[0] >> 32).unwrap_or(0),
            status: u16::try_from(numbers[1] >> 48).unwrap_or(0),
            outcome: [Outcome::Success, Outcome::Error, Outcome::StreamError, Outcome::Cancelled][outcome],
            error_kind: text(7),
            prompt_tokens: number(2),
            completion_tokens: number(3),
            total_tokens: number(4),
            cached_tokens: number(5),
            latency_ms: numbers[6],
            ttfb_ms: Some(numbers[7]).filter(|_| present[12]),
            streamed: flags.0,
            tokens_estimated: flags.1,
            cost: Some(crate::pricing::Nanodollars::new(numbers[8] % 1_000_000_000_000_000)).filter(|_| present[0]),
            cache_write_tokens: number(9),
        };
        let line = encoded(seq, &record);
        proptest::prop_assert_eq!(&line, &serde_line(seq, &record));
        let parsed: Line<UsageRecord> = serde_json::from_slice(&line).unwrap();
        proptest::prop_assert_eq!(parsed.seq, Some(seq));
        proptest::prop_assert_eq!(parsed.record, Some(record));
    }
}
