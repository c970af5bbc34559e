//! Where log lines go: stdout, with the access lines (`poolgate::access`) gathered per thread and
//! written in batches. Each thread appends its access lines to a buffer of its own (an
//! uncontended lock, no system call); a flusher thread writes every buffer out each
//! `[telemetry] access_log_flush_ms`, and a thread whose buffer passed [`FLUSH_BYTES`] writes it
//! itself. A busy gateway thus makes one `write` per batch instead of one per request (#13) —
//! nginx's `access_log … buffer= flush=`, Envoy's access-log flush interval. Every other line
//! is written at once, after the lines its own thread had gathered, so one thread's lines keep
//! their order. [`flush`] writes everything gathered (at exit).

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use crate::telemetry::access_log::ACCESS_LOG_TARGET;

/// A thread writes its gathered lines itself once they pass this size.
pub const FLUSH_BYTES: usize = 32 * 1024;

/// One thread's gathered lines.
type Buffer = Arc<Mutex<Vec<u8>>>;

/// Every thread's buffer, for the flusher and [`flush`].
static BUFFERS: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());

thread_local! {
    static OWN: ThreadBuffer = ThreadBuffer::register();
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it leaves bytes, not a broken invariant: keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This thread's buffer, registered for the flusher; what is left in it is written when the
/// thread ends.
struct ThreadBuffer(Buffer);

impl ThreadBuffer {
    fn register() -> Self {
        let buffer = Buffer::default();
        lock(&BUFFERS).push(Arc::clone(&buffer));
        ThreadBuffer(buffer)
    }
}

impl Drop for ThreadBuffer {
    fn drop(&mut self) {
        write_out(&take(&self.0));
    }
}

/// The lines gathered in `buffer`, leaving it empty.
fn take(buffer: &Buffer) -> Vec<u8> {
    std::mem::take(&mut *lock(buffer))
}

fn write_out(lines: &[u8]) {
    if !lines.is_empty() {
        // Nowhere to report a failed log write: like `tracing-subscriber`'s own writer, drop it.
        let _ = io::stdout().lock().write_all(lines);
    }
}

/// Writes every thread's gathered lines (one `write` for all of them), and forgets the buffers
/// of threads that ended.
pub fn flush() {
    let mut lines = Vec::new();
    {
        let mut buffers = lock(&BUFFERS);
        for buffer in buffers.iter() {
            lines.extend_from_slice(&take(buffer));
        }
        buffers.retain(|buffer| Arc::strong_count(buffer) > 1);
    }
    write_out(&lines);
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

/// The `MakeWriter` of the log output: access lines to this thread's buffer when batching is on,
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
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Now
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        if self.batch_access_lines && meta.target() == ACCESS_LOG_TARGET {
            LineWriter::Gathered
        } else {
            LineWriter::Now
        }
    }
}

/// Where one line goes.
#[derive(Debug)]
pub enum LineWriter {
    /// To stdout now, after this thread's gathered lines.
    Now,
    /// To this thread's buffer.
    Gathered,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Now => {
                // `try_with`: a thread that is ending has no buffer any more.
                let _ = OWN.try_with(|own| write_out(&take(&own.0)));
                io::stdout().write(bytes)
            }
            LineWriter::Gathered => {
                let full = OWN.try_with(|own| {
                    let mut lines = lock(&own.0);
                    lines.extend_from_slice(bytes);
                    (lines.len() >= FLUSH_BYTES).then(|| std::mem::take(&mut *lines))
                });
                match full {
                    Ok(Some(lines)) => write_out(&lines),
                    Ok(None) => {}
                    Err(_) => io::stdout().write_all(bytes)?,
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
