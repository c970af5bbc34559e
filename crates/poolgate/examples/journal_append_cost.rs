//! A rough, by-hand measurement of what the usage journal costs per record (not a test; speed
//! claims belong to the bench harness). Run:
//!
//!     cargo run --release -p poolgate --example journal_append_cost [records] [threads]
//!
//! It appends `records` typical usage records (split over `threads` threads, outside a runtime:
//! one `write` each, the group commit's worst case) to a journal in a
//! temp dir, acknowledging in batches of 512 as the store writer would, and prints the
//! wall time per record for the append alone and with the acknowledgements.
#![expect(clippy::unwrap_used, reason = "a measurement run by hand")]

use std::time::Instant;

use poolgate::domain::{Outcome, UsageRecord};
use poolgate::journal::{Journal, JournalSettings, Journaled};

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req_0190f1c2a3b47c8d9e{i:012}"),
        ts_ms: 1_764_460_800_000 + i64::try_from(i).unwrap(),
        client_key_id: Some("key_7m2k9q4w1x8z3c5v".into()),
        endpoint: "chat.completions".into(),
        canonical_model: Some("gpt-4o-mini".into()),
        backend_id: Some("bkd_3kq9w0e8r7t6y5u4".into()),
        upstream_model: Some("gpt-4o-mini-2024-07-18".into()),
        pool: Some("primary".into()),
        attempts: 1,
        status: 200,
        outcome: Outcome::Success,
        error_kind: None,
        prompt_tokens: Some(1_234),
        completion_tokens: Some(567),
        total_tokens: Some(1_801),
        cached_tokens: None,
        latency_ms: 2_345,
        ttfb_ms: Some(312),
        streamed: true,
        tokens_estimated: false,
        cost: None,
        cache_write_tokens: None,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().map_or(200_000, |a| a.parse().unwrap());
    let threads: usize = args.next().map_or(1, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let prepared: Vec<UsageRecord> = (0..records).map(record).collect();

    // Appends only (the request path's part).
    let (journal, replay) = Journal::open(dir.path(), JournalSettings::default()).unwrap();
    replay.finish().unwrap();
    let started = Instant::now();
    let tickets: Vec<Journaled> = std::thread::scope(|scope| {
        let handles: Vec<_> = prepared
            .chunks(records.div_ceil(threads))
            .map(|chunk| {
                let journal = journal.clone();
                scope.spawn(move || chunk.iter().map(|r| journal.append(r)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let append = started.elapsed();
    let bytes = journal.pending_bytes();

    // The store writer's part: one acknowledgement per batch of 512, rotation, deletion.
    let started = Instant::now();
    for batch in tickets.chunks(512) {
        journal.acknowledge(batch).unwrap();
    }
    let acknowledge = started.elapsed();
    journal.close().unwrap();

    let per = |d: std::time::Duration| d.as_nanos() as f64 / records as f64 / 1000.0;
    println!(
        "{records} records, {threads} thread(s), {:.0} bytes per line",
        bytes as f64 / records as f64
    );
    println!(
        "append (encode + one write): {:.2} µs per record ({:.0} records/s in all)",
        per(append),
        records as f64 / append.as_secs_f64()
    );
    println!(
        "acknowledge (per record, batches of 512): {:.3} µs",
        per(acknowledge)
    );
}
