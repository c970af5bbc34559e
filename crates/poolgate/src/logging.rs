//! Log output: the `human` or `json` format of `tracing-subscriber`, with this instance's id on
//! every line (`[web-1] …`, or an `"instance"` field in JSON), so the logs of several instances
//! can be merged and still told apart.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Log lines (written to stdout) carry colours only when stdout is a terminal, and never with
/// `NO_COLOR` set: a file, a pipe or journald gets plain text.
fn colours_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber (`RUST_LOG`, default `poolgate=info,warn`). `instance`: the id
/// to put on every line (none for one-off commands).
pub fn init(format: LogFormat, instance: Option<&str>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("poolgate=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours_wanted())
        .with_target(false);
    let instance = instance.map(str::to_owned);
    match format {
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format().json();
            builder
                .event_format(WithInstance {
                    inner,
                    instance: instance.map(|id| json_string(&id)),
                    json: true,
                })
                .init();
        }
        LogFormat::Human => {
            let inner = tracing_subscriber::fmt::format().with_target(false);
            builder
                .event_format(WithInstance {
                    inner,
                    instance,
                    json: false,
                })
                .init();
        }
    }
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
