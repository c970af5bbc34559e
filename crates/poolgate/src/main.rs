//! The `poolgate` binary: parse the command line, set up logging, run the library.

use clap::Parser;

use poolgate::cli::{Cli, Command};
use poolgate::config::LogFormat;
use poolgate::logging;

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
                logging::init(config.log_format, Some(&config.instance_id));
                match poolgate::server::start(config, true).await {
                    Ok(running) => running.wait().await,
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        },
        other => {
            logging::init(LogFormat::Human, None);
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
