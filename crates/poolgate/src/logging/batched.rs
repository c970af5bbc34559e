//! Where log lines go: stdout, with the access lines (`poolgate::access`) gathered in memory and
//! written in batches. An access line is appended to one shared buffer (a short lock, no system
//! call); a flusher thread writes the buffer out every `[telemetry] access_log_flush_ms`, and the
//! line that makes it pass [`FLUSH_BYTES`] writes it at once. A busy gateway thus makes one
//! `write` per batch instead of one per request (#13) — nginx's `access_log … buffer= flush=`,
//! Envoy's access-log flush interval. Every other line is written at once, after the gathered
//! ones. Buffer and stdout are written under the buffer's lock, so the lines keep the order in
//! which they were logged. [`flush`] writes what is gathered (at exit).

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use crate::telemetry::access_log::ACCESS_LOG_TARGET;

/// The gathered lines are written once they pass this size.
pub const FLUSH_BYTES: usize = 32 * 1024;

/// The access lines gathered since the last write.
static GATHERED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn gathered() -> MutexGuard<'static, Vec<u8>> {
    // A panic while holding it leaves bytes, not a broken invariant: keep going.
    GATHERED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `lines` (and empties them). Nowhere to report a failed log write: like
/// `tracing-subscriber`'s own writer, the bytes are dropped.
fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        let _ = io::stdout().lock().write_all(lines);
        lines.clear();
    }
}

/// Writes every gathered line now.
pub fn flush() {
    write_out(&mut gathered());
}

/// Starts the thread that writes the gathered lines every `interval`.
fn start_flusher(interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("poolgate-log-flush".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            flush();
        });
    if let Err(error) = spawned {
        eprintln!("poolgate: no log flusher thread ({error}); access lines are written at once");
    }
}

/// The `MakeWriter` of the log output: access lines to the shared buffer when batching is on,
/// everything else straight to stdout.
#[derive(Clone, Copy, Debug)]
pub struct LogOutput {
    batch_access_lines: bool,
}

impl LogOutput {
    /// Access lines gathered and written every `flush_every` (zero: every line at once).
    pub fn new(flush_every: Duration) -> Self {
        let batch_access_lines = !flush_every.is_zero();
        if batch_access_lines {
            start_flusher(flush_every);
        }
        LogOutput { batch_access_lines }
    }

    /// Where an access line goes: the shared buffer when batching is on, else stdout at once.
    pub fn access_writer(self) -> LineWriter {
        if self.batch_access_lines {
            LineWriter::Gathered
        } else {
            LineWriter::Now
        }
    }
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Now
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        if meta.target() == ACCESS_LOG_TARGET {
            self.access_writer()
        } else {
            LineWriter::Now
        }
    }
}

/// Where one line goes.
#[derive(Debug)]
pub enum LineWriter {
    /// To stdout now, after the gathered lines.
    Now,
    /// To the shared buffer.
    Gathered,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut lines = gathered();
        match self {
            LineWriter::Now => {
                write_out(&mut lines);
                io::stdout().write(bytes)
            }
            LineWriter::Gathered => {
                lines.extend_from_slice(bytes);
                if lines.len() >= FLUSH_BYTES {
                    write_out(&mut lines);
                }
                Ok(bytes.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            LineWriter::Now => io::stdout().flush(),
            LineWriter::Gathered => Ok(()),
        }
    }
}
