//! The usage journal: every finished request's usage record is appended to a local file before
//! its answer completes (the lines of the answers one thread finishes together share one
//! `write`: `group`), so that a killed process (SIGKILL, OOM kill, panic abort) loses no record
//! the batched store writer had not committed yet; at the next start the records the store never
//! acknowledged are replayed into it.
//!
//! # Files
//! `<data_dir>/usage-journal/<number>.journal`, append-only segments of JSON lines:
//! - a record line `{"s":<seq>,"r":{…UsageRecord…}}` per request (`seq` grows across segments
//!   and runs);
//! - an acknowledgement line `{"a":[[from,to],…]}` written by the store writer after a batch
//!   was committed, naming the committed `seq` ranges (one line per batch, not per record).
//!
//! # Bounded size
//! Appends go to the current segment. After an acknowledgement the current segment is sealed
//! and a new one started when it is full (`segment_bytes`) or when every record in it is
//! acknowledged; sealed segments are deleted oldest first once every record in them is
//! acknowledged (an acknowledgement may live in a later segment, hence oldest first: a segment
//! is never deleted before the ones whose records it acknowledges). While the store keeps up,
//! the journal holds about one flush interval of records; it grows only while the store fails,
//! and then it is exactly the backlog that must not be lost.
//!
//! # Crash at any point
//! - before the append's `write` returned: the client got no complete answer either (the answer
//!   waits for it, [`Durable`]);
//! - after the append, before the store committed: replayed at the next start;
//! - after the store committed, before the acknowledgement line: replayed again — so replay
//!   must be idempotent: the store gets a unique constraint on `request_id` and replays with
//!   `INSERT … ON CONFLICT (request_id) DO NOTHING`;
//! - torn last line (killed in the middle of a `write`): it has no newline or does not parse;
//!   it is skipped (its request never completed);
//! - a `write` that failed part-way (a full disk) leaves a torn line too; the segment's next
//!   write starts with a newline, so its own lines still parse;
//! - during replay: the replayed segments are deleted only after the caller committed them
//!   ([`Replay::finish`]); a crash before that replays them again (idempotent, as above).
//!
//! # What a power loss can still lose
//! There is no `fsync`: a write lives in the page cache until the kernel writes it back
//! (typically within 5–30 s: `vm.dirty_expire_centisecs`, the filesystem's commit interval).
//! A power loss or kernel crash can lose those last seconds of records, or leave zeros or
//! garbage at the end of a segment (skipped as unparsable lines). A killed *process* loses
//! nothing: the data is in the kernel already.

mod group;
mod line;
mod replay;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::domain::UsageRecord;

pub use group::Durable;
pub use replay::Replay;

/// The journal's folder below the data dir.
pub const JOURNAL_DIR: &str = "usage-journal";
const EXTENSION: &str = "journal";

/// Journal knobs (proposed: `[usage] journal = true`, `journal_segment_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalSettings {
    /// A segment is sealed once it holds this much (default 4 MiB ≈ 10,000 records).
    pub segment_bytes: u64,
}

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            segment_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One line of a segment.
#[derive(Serialize, Deserialize)]
struct Line<R> {
    #[serde(rename = "s", skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(rename = "r", skip_serializing_if = "Option::is_none")]
    record: Option<R>,
    #[serde(rename = "a", skip_serializing_if = "Option::is_none")]
    acked: Option<Vec<(u64, u64)>>,
}

struct Segment {
    number: u64,
    path: PathBuf,
    file: File,
    /// Bytes written (records and acknowledgements).
    bytes: AtomicU64,
    appended: AtomicU64,
    acked: AtomicU64,
    /// A write to the file failed: it may have left part of its bytes, a line without its
    /// newline. The next write starts with a newline, so that its first line does not join
    /// that torn one (both would then fail to parse, and a record whose write succeeded would be
    /// lost to the readers).
    torn: AtomicBool,
}

impl Segment {
    fn create(dir: &Path, number: u64) -> io::Result<Segment> {
        let path = segment_path(dir, number);
        let mut options = OpenOptions::new();
        options.append(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        Ok(Segment::over(number, path, file))
    }

    /// Segment `number`, empty so far, written through `file`.
    fn over(number: u64, path: PathBuf, file: File) -> Segment {
        Segment {
            number,
            path,
            file,
            bytes: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            torn: AtomicBool::new(false),
        }
    }

    /// Appends whole `lines` with one `write` (O_APPEND: concurrent writes never interleave),
    /// after a newline if an earlier write failed (see `torn`; a write racing that one on
    /// another thread can still land first).
    fn write_lines(&self, lines: &[u8]) -> io::Result<()> {
        // A plain load first: the swap (a locked instruction) only after a failure.
        let result = if self.torn.load(Ordering::Relaxed) && self.torn.swap(false, Ordering::AcqRel)
        {
            let mut ended = Vec::with_capacity(lines.len() + 1);
            ended.push(b'\n');
            ended.extend_from_slice(lines);
            (&self.file).write_all(&ended)
        } else {
            (&self.file).write_all(lines)
        };
        if result.is_err() {
            self.torn.store(true, Ordering::Release);
        }
        result
    }

    /// One `write` of a whole line.
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        self.write_lines(line)?;
        self.bytes.fetch_add(
            u64::try_from(line.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(())
    }

    fn fully_acked(&self) -> bool {
        self.acked.load(Ordering::Acquire) >= self.appended.load(Ordering::Acquire)
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.{EXTENSION}"))
}

/// A record's place in the journal; hand it to [`Journal::acknowledge`] once the store
/// committed the record. Its line is written with the rest of its batch (`group`):
/// [`Journaled::durable`] resolves once it is.
#[derive(Clone)]
pub struct Journaled {
    segment: Arc<Segment>,
    seq: u64,
    /// Its line's batch (`None`: read back from the file, so written).
    batch: Option<Arc<group::Batch>>,
}

impl Journaled {
    /// Resolves once the record's line is in the kernel.
    pub fn durable(&self) -> Durable {
        self.batch.clone().map_or_else(Durable::now, Durable::of)
    }

    /// `true` once the record's line is in the file (it can be read back).
    pub fn is_written(&self) -> bool {
        self.batch.as_ref().is_none_or(|batch| batch.is_written())
    }

    /// `true` once the write of the record's line failed: it can never be read back (the record
    /// exists only where its caller keeps it).
    pub fn write_failed(&self) -> bool {
        self.batch
            .as_ref()
            .is_some_and(|batch| batch.write_failed())
    }
}

impl std::fmt::Debug for Journaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journaled({}#{})", self.segment.number, self.seq)
    }
}

#[cfg(test)]
impl Journal {
    /// From now on every line's write fails (`ENOSPC`): the current segment is swapped for one
    /// whose file is `/dev/full` (the segment on disk is left as it is).
    pub(crate) fn fail_writes(&self) {
        let mut current = self.inner.current.write();
        let file = OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full opens for writing");
        *current = Arc::new(Segment::over(current.number, current.path.clone(), file));
    }
}

/// Records the store writer took out of memory (its buffer was full while the store could not
/// be written): only their place in the journal is kept, and [`Journal::read_parked`] reads
/// them back. A few bytes per run of consecutive records, whatever the backlog.
#[derive(Debug, Default)]
pub struct Parked {
    runs: VecDeque<Run>,
    count: u64,
}

/// Consecutive parked records of one segment.
struct Run {
    segment: Arc<Segment>,
    from: u64,
    to: u64,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Run({}#{}..={})",
            self.segment.number, self.from, self.to
        )
    }
}

impl Parked {
    /// Keeps only the place of a journaled record (the record itself is dropped by the caller).
    pub fn park(&mut self, ticket: Journaled) {
        self.count += 1;
        if let Some(last) = self.runs.back_mut() {
            if Arc::ptr_eq(&last.segment, &ticket.segment) && last.to + 1 == ticket.seq {
                last.to = ticket.seq;
                return;
            }
        }
        self.runs.push_back(Run {
            segment: ticket.segment,
            from: ticket.seq,
            to: ticket.seq,
        });
    }

    /// How many records are parked.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

struct Inner {
    dir: PathBuf,
    settings: JournalSettings,
    current: RwLock<Arc<Segment>>,
    /// Sealed segments, oldest first, waiting for their last acknowledgement.
    sealed: Mutex<VecDeque<Arc<Segment>>>,
    next_seq: AtomicU64,
}

/// The append side (cheap to clone) and the acknowledgement side of the journal.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    /// Opens the journal in `<data_dir>/usage-journal`: reads what a previous run left (to be
    /// replayed into the store, then [`Replay::finish`]ed) and starts a new segment after it.
    pub fn open(data_dir: &Path, settings: JournalSettings) -> io::Result<(Journal, Replay)> {
        let dir = data_dir.join(JOURNAL_DIR);
        std::fs::create_dir_all(&dir)?;
        let replay = Replay::read(&dir)?;
        let first = Segment::create(&dir, replay.next_segment())?;
        let journal = Journal {
            inner: Arc::new(Inner {
                settings,
                current: RwLock::new(Arc::new(first)),
                sealed: Mutex::new(VecDeque::new()),
                next_seq: AtomicU64::new(replay.next_seq()),
                dir,
            }),
        };
        Ok((journal, replay))
    }

    /// Appends one record: its line (written by hand, see `line`) joins this thread's batch,
    /// written with one `write` for the batch (`group`); await [`Journaled::durable`] before
    /// the answer completes. A failed write is logged: the record still goes to the store, it
    /// is only not crash-safe.
    pub fn append(&self, record: &UsageRecord) -> Journaled {
        self.append_with(record, group::Batch::append)
    }

    /// [`Journal::append`] with the line's own `write`, before this returns: for an answer that
    /// must not pause before its last bytes (a stream's end would otherwise go out in two
    /// writes, one more wake-up of the client per stream).
    pub fn append_now(&self, record: &UsageRecord) -> Journaled {
        self.append_with(record, group::Batch::write_now)
    }

    /// [`Journal::append`] when no other request is under way: no later line will join this
    /// scheduler pass's batch, so the line joins the thread's open batch if an answer recorded
    /// earlier in the pass left one, and is otherwise written before this returns (see `group`).
    pub fn append_alone(&self, record: &UsageRecord) -> Journaled {
        self.append_with(record, group::Batch::append_alone)
    }

    fn append_with(
        &self,
        record: &UsageRecord,
        batch: impl FnOnce(&Arc<Segment>, &mut dyn FnMut(&mut Vec<u8>)) -> Arc<group::Batch>,
    ) -> Journaled {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        // Counted under the read lock: a rotation (write lock) cannot seal and delete the
        // segment between our taking it and counting our record in it.
        let segment = {
            let current = self.inner.current.read();
            current.appended.fetch_add(1, Ordering::AcqRel);
            Arc::clone(&current)
        };
        let batch = batch(&segment, &mut |lines| {
            let before = lines.len();
            line::encode(lines, seq, record);
            let added = u64::try_from(lines.len() - before).unwrap_or(u64::MAX);
            segment.bytes.fetch_add(added, Ordering::Relaxed);
        });
        Journaled {
            segment,
            seq,
            batch: Some(batch),
        }
    }

    /// The store committed these records: one acknowledgement line, then segments that are
    /// done are sealed and deleted. An error means the acknowledgement line could not be
    /// written; the records will be replayed (and ignored as duplicates) after a crash.
    pub fn acknowledge(&self, committed: &[Journaled]) -> io::Result<()> {
        if committed.is_empty() {
            return Ok(());
        }
        let mut seqs: Vec<u64> = committed.iter().map(|done| done.seq).collect();
        seqs.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for seq in seqs {
            match ranges.last_mut() {
                Some((_, to)) if *to + 1 >= seq => *to = (*to).max(seq),
                _ => ranges.push((seq, seq)),
            }
        }
        let mut line = serde_json::to_vec(&Line::<UsageRecord> {
            seq: None,
            record: None,
            acked: Some(ranges),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        self.inner.current.read().write_line(&line)?;
        for done in committed {
            done.segment.acked.fetch_add(1, Ordering::AcqRel);
        }
        self.rotate_and_delete()
    }

    /// Seals the current segment when it is full or completely acknowledged, and deletes the
    /// sealed segments that are done, oldest first.
    fn rotate_and_delete(&self) -> io::Result<()> {
        let inner = &self.inner;
        let rotate = {
            let current = inner.current.read();
            current.appended.load(Ordering::Acquire) > 0
                && (current.bytes.load(Ordering::Relaxed) >= inner.settings.segment_bytes
                    || current.fully_acked())
        };
        if rotate {
            let mut current = inner.current.write();
            let next = Segment::create(&inner.dir, current.number + 1)?;
            let old = std::mem::replace(&mut *current, Arc::new(next));
            inner.sealed.lock().push_back(old);
        }
        let mut sealed = inner.sealed.lock();
        while sealed.front().is_some_and(|segment| segment.fully_acked()) {
            if let Some(segment) = sealed.pop_front() {
                std::fs::remove_file(&segment.path)?;
            }
        }
        Ok(())
    }

    /// Reads back up to `limit` of the `parked` records (oldest first), with their tickets, and
    /// takes them out of `parked`. A parked record is unacknowledged, so its segment is still
    /// there; one whose line cannot be found (a damaged segment) is left to the next start's
    /// replay and counted in the second value.
    pub fn read_parked(
        &self,
        parked: &mut Parked,
        limit: usize,
    ) -> io::Result<(Vec<(UsageRecord, Journaled)>, u64)> {
        // The wanted seqs, by segment (in segment order: seqs grow with segments).
        let mut wanted: BTreeMap<u64, (Arc<Segment>, HashSet<u64>)> = BTreeMap::new();
        let mut taken = 0;
        while taken < limit {
            let Some(run) = parked.runs.front_mut() else {
                break;
            };
            let seq = run.from;
            wanted
                .entry(run.segment.number)
                .or_insert_with(|| (Arc::clone(&run.segment), HashSet::new()))
                .1
                .insert(seq);
            taken += 1;
            if run.from == run.to {
                parked.runs.pop_front();
            } else {
                run.from += 1;
            }
        }
        parked.count -= u64::try_from(taken).unwrap_or(u64::MAX);
        let mut found = Vec::with_capacity(taken);
        for (segment, mut seqs) in wanted.into_values() {
            let mut reader = BufReader::new(File::open(&segment.path)?);
            let mut line = Vec::new();
            while !seqs.is_empty() {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                let Some(complete) = line.strip_suffix(b"\n") else {
                    break;
                };
                if let Ok(Line {
                    seq: Some(seq),
                    record: Some(record),
                    ..
                }) = serde_json::from_slice::<Line<UsageRecord>>(complete)
                {
                    if seqs.remove(&seq) {
                        let ticket = Journaled {
                            segment: Arc::clone(&segment),
                            seq,
                            batch: None,
                        };
                        found.push((record, ticket));
                    }
                }
            }
        }
        found.sort_by_key(|(_, ticket)| ticket.seq);
        let missing = u64::try_from(taken - found.len()).unwrap_or(u64::MAX);
        Ok((found, missing))
    }

    /// Bytes in segments of this run not yet deleted (for a backlog warning).
    pub fn pending_bytes(&self) -> u64 {
        let current = self.inner.current.read().bytes.load(Ordering::Relaxed);
        let sealed: u64 = self
            .inner
            .sealed
            .lock()
            .iter()
            .map(|segment| segment.bytes.load(Ordering::Relaxed))
            .sum();
        current + sealed
    }

    /// At a graceful shutdown, after the store writer drained and acknowledged everything:
    /// deletes every segment that is done (all of them, normally). What is left is replayed at
    /// the next start.
    pub fn close(self) -> io::Result<()> {
        let inner = &self.inner;
        let mut sealed = inner.sealed.lock();
        while sealed.front().is_some_and(|segment| segment.fully_acked()) {
            if let Some(segment) = sealed.pop_front() {
                std::fs::remove_file(&segment.path)?;
            }
        }
        // The current segment may hold acknowledgements of older ones: it goes last.
        let current = inner.current.read();
        if sealed.is_empty() && current.fully_acked() {
            std::fs::remove_file(&current.path)?;
        }
        Ok(())
    }
}
