//! The usage writer's spill file (`<data_dir>/usage-spill.jsonl`, one JSON record per line):
//! records the bounded buffer cannot hold while the database is unreachable, and those still
//! unwritten at shutdown. It is read back in order once the database answers (and at the next
//! start), and removed when every record in it has been written. A crash while it is being
//! replayed replays it again: the stores skip request ids they hold. Plain blocking file I/O —
//! this only runs while the database is failing or at start and stop.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::WriterState;
use crate::domain::UsageRecord;

pub(super) struct SpillFile {
    path: PathBuf,
    /// Bytes of the file already read back.
    offset: u64,
    /// Records in the file not read back yet.
    unread: u64,
    /// The file could not be read: leave it for an operator.
    given_up: bool,
}

impl SpillFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            unread: 0,
            given_up: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts the records a previous run left (they are written first).
    pub fn load_count(&mut self, state: &WriterState) {
        let Ok(file) = File::open(&self.path) else {
            return;
        };
        let lines = BufReader::new(file).lines().map_while(Result::ok).count() as u64;
        self.unread = lines;
        state.spilled.store(lines, Ordering::Relaxed);
        if lines > 0 {
            tracing::info!(records = lines, path = %self.path.display(), "usage records left by an earlier run will be written");
        }
    }

    pub fn has_records(&self) -> bool {
        self.unread > 0 && !self.given_up
    }

    /// Appends records (flushed to the disk before returning).
    pub fn append(&mut self, records: &[UsageRecord], state: &WriterState) -> std::io::Result<()> {
        let mut text = String::new();
        for record in records {
            let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
            text.push_str(&line);
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.unread += records.len() as u64;
        state
            .spilled
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the next (at most) `max` records. A line that is not a record is skipped (logged
    /// and counted as lost).
    pub fn read_chunk(
        &mut self,
        max: usize,
        state: &WriterState,
    ) -> std::io::Result<Vec<UsageRecord>> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(file);
        let mut records = Vec::with_capacity(max.min(4096));
        let mut line = String::new();
        while records.len() < max {
            line.clear();
            let read = reader.read_line(&mut line)?;
            if read == 0 {
                // The end: whatever the count said, nothing is left.
                self.unread = 0;
                break;
            }
            self.offset += read as u64;
            self.unread = self.unread.saturating_sub(1);
            let _ = state
                .spilled
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            match serde_json::from_str::<UsageRecord>(line.trim_end()) {
                Ok(record) => records.push(record),
                Err(error) => {
                    state.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, path = %self.path.display(), "skipped a line of the usage spill file that is not a record");
                }
            }
        }
        Ok(records)
    }

    /// Stops reading a file that cannot be read (it stays for an operator).
    pub fn give_up(&mut self) {
        self.given_up = true;
    }

    /// Removes the file once everything in it was read back and written (the caller's buffer
    /// is empty).
    pub fn remove_if_done(&mut self) -> std::io::Result<()> {
        if self.given_up || self.unread > 0 || self.offset == 0 {
            return Ok(());
        }
        self.offset = 0;
        match std::fs::remove_file(&self.path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => {
                tracing::info!(path = %self.path.display(), "every spilled usage record is written");
                Ok(())
            }
        }
    }
}
