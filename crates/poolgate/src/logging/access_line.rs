//! The access line written straight into the log output, without `tracing`'s event machinery:
//! the same bytes the subscriber's formatter writes for [`AccessLogEntry::emit`]'s event (both
//! `human` and `json`, with the instance id), but composed into one reused buffer with no field
//! visitor, no `dyn fmt::Write` per piece and no copy through the formatter's own buffer (the
//! access line was ≈ 3 % of poolgate's CPU, #13). `RUST_LOG` still decides whether the line is
//! written. [`init`] turns it on for the process's log output; without it (tests, other
//! subscribers, colours on a terminal) the line goes through `tracing` as before.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::OnceLock;

use serde_json::ser::{CompactFormatter, Formatter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use super::batched::LogOutput;
use super::SecondCachedTime;
use crate::telemetry::access_log::{AccessLogEntry, ACCESS_LOG_TARGET};

/// How the process's log lines look (what `logging::init` configured).
#[derive(Debug)]
pub(super) struct LineStyle {
    /// Where the process's log lines go (access lines gathered or not).
    pub output: LogOutput,
    pub json: bool,
    /// The instance id: as is for `human`, a JSON string literal for `json`.
    pub instance: Option<String>,
}

static STYLE: OnceLock<LineStyle> = OnceLock::new();

thread_local! {
    /// One line and one timestamp buffer per thread, reused for every access line on it.
    static LINE: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

/// From now on, access lines are written directly in `style` (the first call wins).
pub(super) fn init(style: LineStyle) {
    let _ = STYLE.set(style);
}

/// Writes `entry`'s line directly if [`init`] was called: `true` when it was taken care of
/// (written, or filtered out by `RUST_LOG`), `false` to leave it to `tracing`.
pub fn write(entry: &AccessLogEntry<'_>) -> bool {
    let Some(style) = STYLE.get() else {
        return false;
    };
    if !tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO) {
        return true;
    }
    LINE.with_borrow_mut(|(line, time)| {
        time.clear();
        // Writing into a `String` cannot fail.
        let _ = SecondCachedTime.format_time(&mut Writer::new(time));
        line.clear();
        encode(line, style, time, entry);
        // Nowhere to report a failed log write (as for every other line).
        let _ = style.output.access_writer().write_all(line);
    });
    true
}

/// The line of `entry` at `time` (the timer's text), newline included.
pub(super) fn encode(out: &mut Vec<u8>, style: &LineStyle, time: &str, entry: &AccessLogEntry<'_>) {
    if style.json {
        encode_json(out, style.instance.as_deref(), time, entry);
    } else {
        encode_human(out, style.instance.as_deref(), time, entry);
    }
}

/// `[instance] <time>  INFO request name=value …`: `tracing-subscriber`'s full format without
/// target and colours, with `PlainFields` (strings in their `Debug` form, numbers as is, absent
/// options left out).
fn encode_human(out: &mut Vec<u8>, instance: Option<&str>, time: &str, e: &AccessLogEntry<'_>) {
    if let Some(instance) = instance {
        out.push(b'[');
        out.extend_from_slice(instance.as_bytes());
        out.extend_from_slice(b"] ");
    }
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"  INFO request");
    for (name, value) in fields(e) {
        let Some(value) = value else { continue };
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        match value {
            Value::Number(number) => {
                let _ = CompactFormatter.write_u64(out, number);
            }
            Value::Text(text) if super::needs_no_escape(text) => {
                out.push(b'"');
                out.extend_from_slice(text.as_bytes());
                out.push(b'"');
            }
            Value::Text(text) => {
                let _ = write!(out, "{text:?}");
            }
        }
    }
    out.push(b'\n');
}

/// `{"instance":…,"timestamp":…,"level":"INFO","fields":{"message":"request",…},"target":…}`:
/// `tracing-subscriber`'s JSON format (absent options left out of `fields`).
fn encode_json(out: &mut Vec<u8>, instance: Option<&str>, time: &str, e: &AccessLogEntry<'_>) {
    out.push(b'{');
    if let Some(instance) = instance {
        out.extend_from_slice(b"\"instance\":");
        out.extend_from_slice(instance.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"timestamp\":");
    json_str(out, time);
    out.extend_from_slice(b",\"level\":\"INFO\",\"fields\":{\"message\":\"request\"");
    for (name, value) in fields(e) {
        let Some(value) = value else { continue };
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            Value::Number(number) => {
                let _ = CompactFormatter.write_u64(out, number);
            }
            Value::Text(text) => json_str(out, text),
        }
    }
    out.extend_from_slice(b"},\"target\":");
    json_str(out, ACCESS_LOG_TARGET);
    out.extend_from_slice(b"}\n");
}

/// A JSON string exactly as `serde_json` escapes it.
fn json_str(out: &mut Vec<u8>, value: &str) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// A field's value.
#[derive(Clone, Copy)]
enum Value<'a> {
    Text(&'a str),
    Number(u64),
}

/// The event's fields after its message, in [`AccessLogEntry::emit`]'s order (`None`: not
/// recorded, left out of the line).
fn fields<'a>(e: &AccessLogEntry<'a>) -> [(&'static str, Option<Value<'a>>); 16] {
    use crate::telemetry::access_log::millis;
    let number = |value: Option<u64>| value.map(Value::Number);
    [
        ("request_id", Some(Value::Text(e.request_id))),
        ("client_key_id", e.client_key_id.map(Value::Text)),
        ("model", Some(Value::Text(e.model))),
        ("backend", e.backend.map(Value::Text)),
        ("pool", e.pool.map(Value::Text)),
        ("attempts", number(Some(u64::from(e.attempts)))),
        ("status", number(Some(u64::from(e.status)))),
        ("outcome", Some(Value::Text(e.outcome.as_str()))),
        ("error_kind", e.error_kind.map(Value::Text)),
        ("latency_ms", number(Some(millis(e.latency)))),
        ("ttfb_ms", number(e.ttfb.map(millis))),
        ("upstream_ms", number(Some(millis(e.upstream)))),
        ("prompt_tokens", number(e.tokens.prompt.map(u64::from))),
        (
            "completion_tokens",
            number(e.tokens.completion.map(u64::from)),
        ),
        ("cached_tokens", number(e.tokens.cached.map(u64::from))),
        ("trace_id", e.trace_id.map(Value::Text)),
    ]
}
