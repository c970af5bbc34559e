//! Reading what a previous run left in the journal: every record line whose `seq` no
//! acknowledgement line names, once, in `seq` order. Torn or unparsable lines are skipped and
//! counted.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{Line, EXTENSION};
use crate::domain::UsageRecord;

/// The unacknowledged records of earlier runs. Insert them into the store (ignoring
/// duplicates of `request_id`), then call [`Replay::finish`] to delete the segments read.
#[derive(Debug)]
pub struct Replay {
    files: Vec<PathBuf>,
    records: Vec<UsageRecord>,
    skipped_lines: usize,
    next_seq: u64,
    next_segment: u64,
}

impl Replay {
    pub(super) fn read(dir: &Path) -> io::Result<Replay> {
        let mut numbered: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
                continue;
            }
            if let Some(number) = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok())
            {
                numbered.push((number, path));
            }
        }
        numbered.sort_by_key(|(number, _)| *number);

        let mut records: BTreeMap<u64, UsageRecord> = BTreeMap::new();
        let mut acked: Vec<(u64, u64)> = Vec::new();
        let mut skipped_lines = 0;
        let mut max_seq: Option<u64> = None;
        for (_, path) in &numbered {
            let mut reader = BufReader::new(std::fs::File::open(path)?);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                // A line without its newline was cut by the crash: that request never
                // completed its answer.
                let Some(complete) = line.strip_suffix(b"\n") else {
                    skipped_lines += 1;
                    break;
                };
                match serde_json::from_slice::<Line<UsageRecord>>(complete) {
                    Ok(Line {
                        seq: Some(seq),
                        record: Some(record),
                        ..
                    }) => {
                        max_seq = max_seq.max(Some(seq));
                        records.insert(seq, record);
                    }
                    Ok(Line {
                        acked: Some(ranges),
                        ..
                    }) => {
                        for &(_, to) in &ranges {
                            max_seq = max_seq.max(Some(to));
                        }
                        acked.extend(ranges);
                    }
                    Ok(_) | Err(_) => skipped_lines += 1,
                }
            }
        }
        for (from, to) in acked {
            let done: Vec<u64> = records.range(from..=to).map(|(seq, _)| *seq).collect();
            for seq in done {
                records.remove(&seq);
            }
        }
        if skipped_lines > 0 {
            tracing::warn!(
                skipped_lines,
                "the usage journal had torn or unreadable lines (a crash in the middle of a write); they were skipped"
            );
        }
        Ok(Replay {
            next_segment: numbered.last().map_or(0, |(number, _)| number + 1),
            next_seq: max_seq.map_or(0, |seq| seq + 1),
            files: numbered.into_iter().map(|(_, path)| path).collect(),
            records: records.into_values().collect(),
            skipped_lines,
        })
    }

    /// The records to insert, oldest first.
    pub fn records(&self) -> &[UsageRecord] {
        &self.records
    }

    /// Lines that were torn or unreadable.
    pub fn skipped_lines(&self) -> usize {
        self.skipped_lines
    }

    /// The store committed [`Replay::records`]: deletes the segments they came from.
    pub fn finish(self) -> io::Result<()> {
        for path in &self.files {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(super) fn next_segment(&self) -> u64 {
        self.next_segment
    }
}
