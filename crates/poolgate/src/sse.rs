//! Server-Sent Events on the streaming hot path: an incremental, byte-preserving framer for
//! upstream bodies ([`SseFramer`]) and a writer for the events poolgate produces itself
//! ([`encode_event`]).
//!
//! Parsing follows the WHATWG HTML "server-sent events" interpretation rules: a line ends in CRLF,
//! LF or a lone CR; an empty line dispatches the event; a line starting with `:` is a comment;
//! `name: value` loses at most one space after the colon; a line without a colon is a field name
//! with an empty value; `data` lines are joined with `\n`; unknown fields (`retry` included) are
//! ignored; a UTF-8 BOM at the very start of the stream is ignored for parsing.
//!
//! # Framing model
//! Every blank line closes one [`SseEvent`] whose [`raw`](SseEvent::raw) holds the exact upstream
//! bytes from the end of the previous event up to and including that blank line — comments,
//! unknown fields, a BOM and invalid UTF-8 included. So a comment-only block (`: keep-alive\n\n`)
//! and even a lone blank line are events too (all parsed fields `None`), and the concatenation of
//! every `raw` plus [`SseFramer::finish`] reproduces the input exactly, however it was chunked.
//!
//! One exception to "raw ends with its blank line": when a chunk ends with the CR of a CRLF and
//! that CR completes a blank line, the event is dispatched at once (no added latency) with `raw`
//! ending in `\r`; the LF, when it arrives, becomes the first byte of the next event's `raw` and is
//! not a line of its own. For a client the stray LF is at most an extra blank line, which the SSE
//! rules make a no-op, so dropping or forwarding any single event stays safe.
//!
//! # Cost
//! Each input byte is scanned once for line ends (`memchr`'s SIMD search) and each completed line
//! is parsed once; nothing is rescanned when an event arrives in many small pieces. Events that
//! lie inside one chunk are sliced out of it without copying; only an event that straddles chunks
//! is copied into the framer's buffer (bounded by [`SseFramer::with_max_event_bytes`]).

use bytes::{Bytes, BytesMut};

/// Default bound on one event's size: 16 MiB.
const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The UTF-8 byte order mark, ignored at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One complete event (or comment-only block) as framed from the upstream bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The exact upstream bytes of this event, including its terminating blank line.
    /// Concatenating `raw` of all events (plus [`SseFramer::finish`]) reproduces the input exactly.
    pub raw: Bytes,
    /// Value of the last `event` field; `None` if there was none. (`Some("")` for `event:`; an SSE
    /// client would call that event `message`.)
    pub event: Option<String>,
    /// Values of the `data` lines joined by `\n`; `None` if there was no `data` line.
    pub data: Option<String>,
    /// Value of the last `id` field of this event (values containing U+0000 are ignored, as the
    /// spec says). Unlike a browser's "last event ID", this is per event, not carried over.
    pub id: Option<String>,
}

/// Framing failed; the stream should be aborted.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// One event grew past the configured size without being dispatched.
    #[error("an SSE event exceeded the limit of {limit} bytes")]
    EventTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },
}

/// Splits a stream of upstream body chunks into [`SseEvent`]s. See the module docs.
#[derive(Debug)]
pub struct SseFramer {
    /// Bytes of the event in progress (everything after the last dispatched event).
    pending: BytesMut,
    /// Offset in `pending` where the current, unfinished line starts.
    line_start: usize,
    /// Fields parsed from the completed lines of the event in progress.
    fields: Fields,
    /// The last byte seen was a lone CR ending a line: an LF first in the next chunk completes it.
    after_cr: bool,
    /// No line has been completed yet, so the next one may start with a BOM.
    at_stream_start: bool,
    max_event_bytes: usize,
    /// An error was returned; the framer refuses further input.
    failed: bool,
}

/// The parsed fields of the event in progress.
#[derive(Debug, Default)]
struct Fields {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

/// A line end found in a byte slice.
#[derive(Debug, Clone, Copy)]
struct LineEnd {
    /// Index of the first terminator byte (the end of the line's content).
    end: usize,
    /// Index just after the terminator (the start of the next line).
    next: usize,
    /// The terminator is a CR not followed by LF *within the slice*.
    lone_cr: bool,
}

// === impl SseEvent ===

impl SseEvent {
    /// Whether this is the OpenAI end-of-stream marker (`data: [DONE]`).
    pub fn is_done(&self) -> bool {
        self.data.as_deref() == Some("[DONE]")
    }
}

// === impl SseFramer ===

impl Default for SseFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl SseFramer {
    /// A framer with the default cap of 16 MiB per event.
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A framer that fails with [`SseError::EventTooLarge`] once one event (its raw bytes,
    /// terminating blank line included) would be longer than `max` bytes.
    pub fn with_max_event_bytes(max: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            line_start: 0,
            fields: Fields::default(),
            after_cr: false,
            at_stream_start: true,
            max_event_bytes: max,
            failed: false,
        }
    }

    /// Feeds the next chunk and appends every event it completes to `out`, in order.
    ///
    /// Events lying wholly inside `chunk` are slices of it (no copy). On error, the events
    /// completed before the oversized one are still in `out`; the framer then drops its buffer and
    /// every later call returns the same error (and [`finish`](Self::finish) returns `None`).
    pub fn push(&mut self, chunk: Bytes, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let result = self.push_inner(&chunk, out);
        if result.is_err() {
            self.failed = true;
            self.pending = BytesMut::new();
            self.line_start = 0;
            self.fields = Fields::default();
        }
        result
    }

    /// Ends the stream: the bytes of an unfinished event, if any, to be forwarded as they are.
    ///
    /// The returned event's `raw` is every byte after the last dispatched event; its fields are
    /// parsed as if the stream had ended with a blank line (an unterminated last line counts), so
    /// usage in an upstream's final, unterminated event can still be read. Note that a
    /// spec-following client discards such an event. The bytes may also be only the LF of a split
    /// CRLF, or a comment: then every field is `None`. `None` when no byte is pending (or after
    /// an error).
    pub fn finish(mut self) -> Option<SseEvent> {
        if self.failed || self.pending.is_empty() {
            return None;
        }
        let line = &self.pending[self.line_start..];
        if !line.is_empty() {
            let line = strip_bom(line, &mut self.at_stream_start);
            self.fields.apply_line(line);
        }
        Some(self.fields.into_event(self.pending.freeze()))
    }

    fn push_inner(&mut self, chunk: &Bytes, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        // An LF first in this chunk after a lone CR last in the previous one is the second half of
        // a CRLF: part of that line end, not a line of its own.
        let mut skip_lf = std::mem::take(&mut self.after_cr) && chunk.first() == Some(&b'\n');
        let mut pos = 0;
        if !self.pending.is_empty() {
            if skip_lf {
                self.extend_pending(b"\n")?;
                self.line_start = self.pending.len();
                pos = 1;
                skip_lf = false;
            }
            match self.continue_pending(chunk, pos, out)? {
                Some(next) => pos = next,
                None => return Ok(()),
            }
        }
        self.frame_in_place(chunk, pos, skip_lf, out)
    }

    /// Extends the buffered event with `bytes[pos..]` line by line until a blank line dispatches
    /// it. Returns where the rest of the chunk starts, or `None` if the whole chunk was consumed.
    fn continue_pending(
        &mut self,
        bytes: &[u8],
        mut pos: usize,
        out: &mut Vec<SseEvent>,
    ) -> Result<Option<usize>, SseError> {
        while let Some(eol) = find_line_end(bytes, pos) {
            // The line is `pending[line_start..]` followed by `bytes[pos..eol.end]`.
            let line_end = self.pending.len() + (eol.end - pos);
            self.extend_pending(&bytes[pos..eol.next])?;
            self.after_cr = eol.lone_cr && eol.next == bytes.len();
            pos = eol.next;
            let line = strip_bom(
                &self.pending[self.line_start..line_end],
                &mut self.at_stream_start,
            );
            if self.fields.apply_line(line) {
                let raw = self.pending.split().freeze();
                self.line_start = 0;
                out.push(std::mem::take(&mut self.fields).into_event(raw));
                return Ok(Some(pos));
            }
            self.line_start = self.pending.len();
        }
        self.extend_pending(&bytes[pos..])?;
        Ok(None)
    }

    /// Frames `chunk[pos..]` with nothing buffered: complete events are slices of `chunk`; the
    /// unfinished tail, if any, is copied into the buffer.
    fn frame_in_place(
        &mut self,
        chunk: &Bytes,
        pos: usize,
        skip_lf: bool,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), SseError> {
        let bytes: &[u8] = chunk;
        let mut event_start = pos;
        let mut line_start = if skip_lf { pos + 1 } else { pos };
        while let Some(eol) = find_line_end(bytes, line_start) {
            self.after_cr = eol.lone_cr && eol.next == bytes.len();
            let line = strip_bom(&bytes[line_start..eol.end], &mut self.at_stream_start);
            line_start = eol.next;
            if self.fields.apply_line(line) {
                if eol.next - event_start > self.max_event_bytes {
                    return Err(self.too_large());
                }
                let raw = chunk.slice(event_start..eol.next);
                out.push(std::mem::take(&mut self.fields).into_event(raw));
                event_start = eol.next;
            }
        }
        if event_start < bytes.len() {
            self.extend_pending(&bytes[event_start..])?;
            self.line_start = line_start - event_start;
        }
        Ok(())
    }

    /// Appends to the buffered event, refusing to grow it past the cap.
    fn extend_pending(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.pending.len().saturating_add(bytes.len()) > self.max_event_bytes {
            return Err(self.too_large());
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }
}

// === impl Fields ===

impl Fields {
    /// Applies one line (without its terminator) to the event in progress. Returns `true` if the
    /// line is blank, i.e. the event is to be dispatched.
    fn apply_line(&mut self, line: &[u8]) -> bool {
        if line.is_empty() {
            return true;
        }
        if line.first() == Some(&b':') {
            return false;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let (name, rest) = line.split_at(colon);
                let value = &rest[1..];
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => self.event = Some(text(value)),
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    push_text(data, value);
                }
                None => self.data = Some(text(value)),
            },
            b"id" if !value.contains(&0) => {
                self.id = Some(text(value));
            }
            _ => {}
        }
        false
    }

    fn into_event(self, raw: Bytes) -> SseEvent {
        SseEvent {
            raw,
            event: self.event,
            data: self.data,
            id: self.id,
        }
    }
}

// === helpers ===

/// A field's value as text: valid UTF-8 (every well-behaved upstream) is copied after the
/// standard library's fast validation; anything else has its invalid sequences replaced by
/// U+FFFD, as `String::from_utf8_lossy` does (whose chunked decoding costs more per byte).
fn text(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    push_text(&mut out, value);
    out
}

/// Appends `value` as [`text`] does.
fn push_text(out: &mut String, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(valid) => out.push_str(valid),
        Err(_) => out.push_str(&String::from_utf8_lossy(value)),
    }
}

/// Finds the first line end (CRLF, LF or CR) in `bytes[from..]`.
fn find_line_end(bytes: &[u8], from: usize) -> Option<LineEnd> {
    let end = from + memchr::memchr2(b'\n', b'\r', bytes.get(from..)?)?;
    if bytes[end] == b'\n' {
        return Some(LineEnd {
            end,
            next: end + 1,
            lone_cr: false,
        });
    }
    let crlf = bytes.get(end + 1) == Some(&b'\n');
    Some(LineEnd {
        end,
        next: if crlf { end + 2 } else { end + 1 },
        lone_cr: !crlf,
    })
}

/// Strips a BOM from the first line of the stream; clears `at_stream_start` either way.
fn strip_bom<'a>(line: &'a [u8], at_stream_start: &mut bool) -> &'a [u8] {
    if std::mem::take(at_stream_start) {
        line.strip_prefix(BOM).unwrap_or(line)
    } else {
        line
    }
}

/// Formats one event as SSE bytes: `event: NAME\n` (if a name is given), then `data: LINE\n` for
/// each line of `data`, then the blank line `\n`.
///
/// SSE cannot carry line breaks inside a field, so: `data` is split at every CRLF, LF or CR (a
/// framer joins the lines back with `\n`, so CR and CRLF come back as LF), and CR or LF inside the
/// event name are dropped. Empty `data` still writes one `data: ` line, which parses as
/// `Some("")`.
pub fn encode_event(event: Option<&str>, data: &str) -> Bytes {
    const EVENT: &[u8] = b"event: ";
    const DATA: &[u8] = b"data: ";
    let data = data.as_bytes();
    let lines = 1 + data.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    let capacity = event.map_or(0, |name| EVENT.len() + name.len() + 1)
        + lines * (DATA.len() + 1)
        + data.len()
        + 1;
    let mut buf = BytesMut::with_capacity(capacity);
    if let Some(name) = event {
        buf.extend_from_slice(EVENT);
        for part in name.as_bytes().split(|&b| b == b'\n' || b == b'\r') {
            buf.extend_from_slice(part);
        }
        buf.extend_from_slice(b"\n");
    }
    let mut start = 0;
    loop {
        let eol = find_line_end(data, start);
        let end = eol.map_or(data.len(), |eol| eol.end);
        buf.extend_from_slice(DATA);
        buf.extend_from_slice(&data[start..end]);
        buf.extend_from_slice(b"\n");
        match eol {
            Some(eol) => start = eol.next,
            None => break,
        }
    }
    buf.extend_from_slice(b"\n");
    buf.freeze()
}

#[cfg(test)]
mod tests;
