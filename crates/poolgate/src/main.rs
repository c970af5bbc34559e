//! The `poolgate` binary: parse the command line, set up logging, run the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use poolgate::cli::{Cli, Command};
use poolgate::config::LogFormat;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("poolgate=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
