use std::io::Write as _;

use super::*;
use crate::domain::Outcome;

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req_{i:05}"),
        ts_ms: 1_700_000_000_000 + i64::try_from(i).unwrap(),
        client_key_id: Some("key_abc".into()),
        endpoint: "chat.completions".into(),
        canonical_model: Some("gpt-4o".into()),
        backend_id: Some("bkd_0123456789abcdef".into()),
        upstream_model: Some("gpt-4o-2024-08-06".into()),
        pool: Some("primary".into()),
        attempts: 1,
        status: 200,
        outcome: Outcome::Success,
        error_kind: None,
        prompt_tokens: Some(12),
        completion_tokens: Some(34),
        total_tokens: Some(46),
        cached_tokens: Some(3),
        latency_ms: 420,
        ttfb_ms: Some(90),
        streamed: true,
        tokens_estimated: false,
        cost: None,
        cache_write_tokens: None,
    }
}

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
    let tickets: Vec<Journaled> = (0..100)
        .map(|i| journal.append(&record(i)).unwrap())
        .collect();
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
    let ticket = journal.append(&record(100)).unwrap();
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
        journal.append(&record(i)).unwrap();
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

#[test]
fn garbage_lines_are_skipped_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    journal.append(&record(0)).unwrap();
    let path = segments(dir.path()).pop().unwrap();
    // What a power loss can leave: zeros, then (after a restart of the writer) more lines.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"\0\0\0\0\n{\"s\":7}\n")
        .unwrap();
    journal.append(&record(1)).unwrap();
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
        journal.append(&record(i)).unwrap();
    }
    drop(journal);
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    assert_eq!(replay.records().len(), 5);
    // Crash before `finish` (the store may or may not have them: its unique `request_id`
    // makes the second insert a no-op), while the new run already journaled one.
    let ticket = journal.append(&record(5)).unwrap();
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
        pending.push(journal.append(&record(i)).unwrap());
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
                    journal.append(&record(thread * 500 + i)).unwrap();
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
        let ticket = journal.append(&record(i)).unwrap();
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
