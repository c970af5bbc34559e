//! The `poolgate` binary: parse the command line, set up logging, run the library.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use poolgate::cli::{Cli, Command};
use poolgate::config::LogFormat;

/// Log lines (written to stdout) carry colours only when stdout is a terminal, and never with
/// `NO_COLOR` set: a file, a pipe or journald gets plain text.
fn colours_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("poolgate=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours_wanted())
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        // Use what the administrator allowed (the connection cap's default derives from it).
        poolgate::serving::limits::raise_open_file_limit();
    }
    let result = match cli.command {
        Command::Serve(args) => match args.config() {
            Ok(config) => {
                init_logging(config.log_format);
                match poolgate::server::start(config, true).await {
                    Ok(running) => running.wait().await,
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        },
        other => {
            init_logging(LogFormat::Human);
            poolgate::cli::run_admin_command(other).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("poolgate: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
