//! Log output: the `human` or `json` format of `tracing-subscriber`, with this instance's id on
//! every line (`[web-1] …`, or an `"instance"` field in JSON), so the logs of several instances
//! can be merged and still told apart. Access lines are written in batches ([`batched`]).

mod access_line;
mod batched;

pub use access_line::write as write_access_line;
pub use batched::flush;

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use chrono::Datelike;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Log lines (written to stdout) carry colours only when stdout is a terminal, and never with
/// `NO_COLOR` set: a file, a pipe or journald gets plain text.
fn colours_wanted() -> bool {
    colours_wanted_on(&std::io::stdout())
}

/// Colours on `output` when it is a terminal and `NO_COLOR` is not set.
fn colours_wanted_on(output: &impl IsTerminal) -> bool {
    output.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `RUST_LOG`, default `poolgate=info,warn`.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("poolgate=info,warn"))
}

/// Installs the global subscriber (`RUST_LOG`, default `poolgate=info,warn`). `instance`: the id
/// to put on every line (none for one-off commands). Access lines wait up to
/// `access_log_flush` in their thread's buffer (zero: written at once); call [`flush`] before
/// the process exits.
pub fn init(format: LogFormat, instance: Option<&str>, access_log_flush: Duration) {
    let filter = log_filter();
    let colours = colours_wanted();
    let output = batched::LogOutput::new(access_log_flush);
    let builder = tracing_subscriber::fmt()
        .with_writer(output)
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_target(false);
    let instance = instance.map(str::to_owned);
    if !colours {
        // Plain lines: the access line can be written directly, byte for byte the same.
        access_line::init(access_line::LineStyle {
            output,
            json: format == LogFormat::Json,
            instance: match format {
                LogFormat::Json => instance.as_deref().map(json_string),
                LogFormat::Human => instance.clone(),
            },
        });
    }
    match format {
        LogFormat::Json => {
            let inner = json_format(SecondCachedTime);
            builder
                .event_format(WithInstance {
                    inner,
                    instance: instance.map(|id| json_string(&id)),
                    json: true,
                })
                .init();
        }
        LogFormat::Human => {
            let inner = human_format(SecondCachedTime);
            builder
                .fmt_fields(PlainFields)
                .event_format(WithInstance {
                    inner,
                    instance,
                    json: false,
                })
                .init();
        }
    }
}

/// Installs the global subscriber of a one-off command (`poolgate backend list`, …): `human`
/// lines (`RUST_LOG`, default `poolgate=info,warn`) on stderr, so that stdout carries only the
/// command's own output and can be piped (`poolgate backend list | cut -f2`).
pub fn init_for_command() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter())
        .with_ansi(colours_wanted_on(&std::io::stderr()))
        .fmt_fields(PlainFields)
        .event_format(human_format(SecondCachedTime))
        .init();
}

/// The `human` lines' format (its fields: [`PlainFields`]).
fn human_format<T>(timer: T) -> Format<Full, T> {
    tracing_subscriber::fmt::format()
        .with_target(false)
        .with_timer(timer)
}

/// The `json` lines' format.
fn json_format<T>(timer: T) -> Format<Json, T> {
    tracing_subscriber::fmt::format().json().with_timer(timer)
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Wraps an event format, adding the instance id.
struct WithInstance<F> {
    inner: F,
    /// The id (as a JSON literal when `json`).
    instance: Option<String>,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithInstance<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(instance) = &self.instance else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "[{instance}] ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"instance\":{instance},{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// A line's timestamp, byte for byte what `tracing-subscriber`'s default `SystemTime` timer
/// writes (RFC 3339, UTC, microseconds: `2026-11-30T10:59:56.123456Z`), with the part up to the
/// second formatted once per second and thread instead of field by field for every line (the
/// access log writes one line per request, #13).
#[derive(Clone, Copy, Debug, Default)]
struct SecondCachedTime;

thread_local! {
    /// The second last formatted on this thread, and its text up to the `.`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for SecondCachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let since = std::time::SystemTime::now().duration_since(UNIX_EPOCH);
        match since {
            Ok(since) if write_time(w, since)? => Ok(()),
            // Before 1970 or after 9999: the default timer's own text.
            _ => SystemTime.format_time(w),
        }
    }
}

/// Writes the time `since` the Unix epoch; `false` (nothing written) past the year 9999, where
/// the default timer's text has another shape.
fn write_time(w: &mut impl fmt::Write, since: Duration) -> Result<bool, fmt::Error> {
    let seconds = since.as_secs();
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != seconds {
            let time = i64::try_from(seconds)
                .ok()
                .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
                .filter(|time| time.year() <= 9999);
            let Some(time) = time else {
                return Ok(false);
            };
            prefix.clear();
            write!(prefix, "{}", time.format("%Y-%m-%dT%H:%M:%S."))?;
            *cached = seconds;
        }
        write!(w, "{prefix}{:06}Z", since.subsec_micros())?;
        Ok(true)
    })
}

/// The fields of a `human` line, byte for byte what `tracing-subscriber`'s `DefaultFields`
/// writes, with a shortcut for the common fields: a string of plain printable ASCII or an integer
/// is written directly instead of through `Debug` and the (no-op without colours) ANSI styling
/// of the field name — the access log's line (#13) is mostly such fields. Everything else (the
/// message, errors, floats, strings needing escapes, any field when colours are on) goes to
/// `DefaultVisitor` itself.
struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> PlainVisitor<'a> {
        PlainVisitor {
            plain: !writer.has_ansi_escapes(),
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// No colours: the field name is written as is.
    plain: bool,
    is_empty: bool,
    result: fmt::Result,
}

/// A string whose `Debug` form is itself in quotes: printable ASCII without `"`, `\\`, `'`.
fn needs_no_escape(value: &str) -> bool {
    value
        .bytes()
        .all(|byte| (b' '..=b'~').contains(&byte) && !matches!(byte, b'"' | b'\\' | b'\''))
}

impl PlainVisitor<'_> {
    /// A field `DefaultVisitor` writes as `name=<Debug of the value>` with nothing else to do.
    fn is_simple(&self, name: &str) -> bool {
        self.plain && name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
    }

    fn pad(&mut self) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }

    /// Writes `name=` after the separator, then the value (in its `Debug` form) with `value`:
    /// piece by piece, not through a format string (the access line has 16 such fields, #13).
    fn write_simple(&mut self, name: &str, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .pad()
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| value(&mut self.writer));
    }

    /// A field whose `Debug` form is its `Display` form (integers, booleans): written directly
    /// when the field is simple, else by `DefaultVisitor` through `fallback`.
    fn record_plain(
        &mut self,
        field: &Field,
        value: impl fmt::Display,
        fallback: impl FnOnce(&mut DefaultVisitor<'_>),
    ) {
        if self.is_simple(field.name()) {
            self.write_simple(field.name(), |writer| write!(writer, "{value}"));
        } else {
            self.delegate(field, fallback);
        }
    }

    /// Hands one field to `DefaultVisitor`, which writes it exactly as `DefaultFields` would.
    fn delegate(&mut self, field: &Field, visit: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        visit(&mut default);
        self.result = default.finish();
        // `DefaultVisitor` skips `log.*` fields (the `tracing-log` metadata) without a space.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.is_simple(field.name()) && needs_no_escape(value) {
            // Its `Debug` form: in quotes, nothing escaped.
            self.write_simple(field.name(), |writer| {
                writer.write_char('"')?;
                writer.write_str(value)?;
                writer.write_char('"')
            });
        } else {
            self.delegate(field, |default| default.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_plain(field, value, |default| default.record_u64(field, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_plain(field, value, |default| default.record_i64(field, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_plain(field, value, |default| default.record_bool(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |default| default.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.delegate(field, |default| default.record_debug(field, value));
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::MakeWriter;

    use super::PlainFields;
    use crate::domain::Outcome;
    use crate::telemetry::access_log::AccessLogEntry;
    use crate::telemetry::TokenCounts;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn events() {
        // Two access lines: plain fields, and strings that need escapes.
        access_entries()[..2]
            .iter()
            .for_each(AccessLogEntry::emit_event);
        let span = tracing::info_span!("serve", instance = "web 1", port = 8080_u64, r#type = "x");
        let _entered = span.enter();
        let error = std::io::Error::other("disk \u{1b} full");
        tracing::warn!(
            error = &error as &(dyn std::error::Error + 'static),
            ratio = 0.5,
            negative = -3_i64,
            flag = true,
            r#type = "raw",
            "log.target" = "hidden",
            detail = ?Some("debug"),
            empty = "",
            quoted = "say \"hi\"",
            tick = "it's",
            backslash = "a\\b",
            newline = "a\nb",
            "message with {} and \u{1b}[0m escape",
            "an argument"
        );
        tracing::info!(only = "fields");
    }

    fn capture<N>(fields: N, ansi: bool) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(ansi)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let bytes = lines.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// The cached timestamp is the default timer's text: RFC 3339, UTC, microseconds (as
    /// chrono writes it), across second, day, year and leap-day changes and repeated seconds.
    #[test]
    fn the_cached_timestamp_is_the_default_timers_text() {
        use std::time::Duration;
        for (seconds, micros) in [
            (0, 0),
            (1_732_960_796, 123_456),
            (1_732_960_796, 999_999),
            (1_732_960_796, 7),
            (1_732_960_797, 0),
            (951_782_399, 500_000),
            (951_782_400, 1),
            (1_767_225_599, 999_999),
            (1_767_225_600, 0),
            (253_402_300_799, 999_999),
        ] {
            let since = Duration::new(seconds, micros * 1_000 + 999);
            let mut ours = String::new();
            assert!(super::write_time(&mut ours, since).unwrap());
            let chrono = chrono::DateTime::from_timestamp(
                i64::try_from(seconds).unwrap(),
                since.subsec_nanos(),
            )
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(ours, chrono);
        }
        // Year 10000: left to the default timer.
        assert!(
            !super::write_time(&mut String::new(), Duration::from_secs(253_402_300_800)).unwrap()
        );
        // Now: both texts lie between the clock read before and after (fixed-width RFC 3339
        // sorts as text).
        use tracing_subscriber::fmt::format::Writer;
        use tracing_subscriber::fmt::time::FormatTime;
        let read = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let (mut ours, mut theirs) = (String::new(), String::new());
        let before = read();
        super::SecondCachedTime
            .format_time(&mut Writer::new(&mut ours))
            .unwrap();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        let after = read();
        for text in [&ours, &theirs] {
            assert!(before <= *text && *text <= after, "{before} {text} {after}");
        }
        assert_eq!(ours.len(), theirs.len());
    }

    /// Access-log entries covering every field present and absent, strings that need escapes
    /// in either format, and the largest numbers.
    fn access_entries() -> Vec<AccessLogEntry<'static>> {
        let typical = AccessLogEntry {
            request_id: "req_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            client_key_id: Some("dtg9qdxvpm52"),
            model: "gpt-4o-mini",
            backend: Some("mock"),
            pool: Some("primary"),
            attempts: 1,
            status: 200,
            outcome: Outcome::Success,
            error_kind: None,
            latency: Duration::from_millis(12),
            ttfb: Some(Duration::from_millis(3)),
            upstream: Duration::from_millis(9),
            tokens: TokenCounts {
                prompt: Some(10),
                completion: Some(5),
                cached: Some(0),
            },
            trace_id: Some("0af7651916cd43dd8448eb211c80319c"),
        };
        vec![
            typical,
            AccessLogEntry {
                model: "quote\" back\\slash 'tick' tab\t é \u{1b}[31m \u{85} \u{2028}",
                client_key_id: None,
                backend: Some("b\"k"),
                error_kind: Some("upstream_timeout"),
                outcome: Outcome::StreamError,
                ..typical
            },
            AccessLogEntry {
                client_key_id: None,
                backend: None,
                pool: None,
                attempts: 0,
                status: 499,
                outcome: Outcome::Cancelled,
                error_kind: Some("client_closed"),
                latency: Duration::MAX,
                ttfb: None,
                upstream: Duration::ZERO,
                tokens: TokenCounts {
                    prompt: None,
                    completion: None,
                    cached: None,
                },
                trace_id: None,
                ..typical
            },
            AccessLogEntry {
                attempts: u32::MAX,
                status: u16::MAX,
                outcome: Outcome::Error,
                model: "",
                tokens: TokenCounts {
                    prompt: Some(u32::MAX),
                    completion: Some(0),
                    cached: None,
                },
                ..typical
            },
        ]
    }

    /// The access line written directly is byte for byte what the subscriber's formatter
    /// writes for the same event (as `init` sets it up, colours off), in both formats, with and
    /// without an instance id.
    #[test]
    fn direct_access_lines_are_the_formatters_lines() {
        use tracing_subscriber::fmt::format::Writer;
        use tracing_subscriber::fmt::time::FormatTime;

        const TIME: &str = "2026-12-01T00:59:56.123456Z";
        struct FixedTime;
        impl FormatTime for FixedTime {
            fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
                w.write_str(TIME)
            }
        }

        let entries = access_entries();
        let emit_all = || entries.iter().for_each(AccessLogEntry::emit_event);
        for json in [false, true] {
            for instance in [None, Some("web \"1\" é")] {
                let instance = instance.map(|id| {
                    if json {
                        super::json_string(id)
                    } else {
                        id.to_owned()
                    }
                });
                let lines = Lines::default();
                let builder = tracing_subscriber::fmt()
                    .with_writer(lines.clone())
                    .with_ansi(false)
                    .with_target(false);
                if json {
                    let format = super::WithInstance {
                        inner: super::json_format(FixedTime),
                        instance: instance.clone(),
                        json,
                    };
                    tracing::subscriber::with_default(
                        builder.event_format(format).finish(),
                        emit_all,
                    );
                } else {
                    let format = super::WithInstance {
                        inner: super::human_format(FixedTime),
                        instance: instance.clone(),
                        json,
                    };
                    tracing::subscriber::with_default(
                        builder
                            .fmt_fields(PlainFields)
                            .event_format(format)
                            .finish(),
                        emit_all,
                    );
                }
                let expected = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
                assert_eq!(expected.lines().count(), entries.len(), "{expected}");

                let style = super::access_line::LineStyle {
                    output: super::batched::LogOutput::new(Duration::ZERO),
                    json,
                    instance,
                };
                let mut ours = Vec::new();
                for entry in &entries {
                    super::access_line::encode(&mut ours, &style, TIME, entry);
                }
                assert_eq!(String::from_utf8(ours).unwrap(), expected);
            }
        }
    }

    #[test]
    fn plain_fields_write_what_the_default_fields_write() {
        for ansi in [false, true] {
            let expected = capture(DefaultFields::new(), ansi);
            assert_eq!(expected.lines().count(), 4, "{expected}");
            assert!(
                expected.contains("\"req_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b\""),
                "{expected}"
            );
            assert_eq!(capture(PlainFields, ansi), expected);
        }
    }
}
