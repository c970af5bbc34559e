//! The `poolgate` binary: parse the command line, set up logging, run the library.

use clap::Parser;

use poolgate::cli::{Cli, Command};
use poolgate::logging;

/// jemalloc, built with `background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,
/// slab_sizes:4097-14336:16` (`.cargo/config.toml`): freed pages go back to the system about a
/// second after a burst (a background thread purges them even while the process is idle), and
/// the 8 KiB buffers allocated per request come from multi-region slabs. With glibc's allocator
/// the RSS reached with 5,000 open streams stayed after they closed (230 MB); see
/// docs/benchmarks.md, "#13 progress" and session 13. `_RJEM_MALLOC_CONF` overrides the
/// settings at run time.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
                logging::init(
                    config.log_format,
                    Some(&config.instance_id),
                    config.telemetry.access_log_flush,
                );
                match poolgate::server::start(config, true).await {
                    Ok(running) => running.wait().await,
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        },
        other => {
            logging::init_for_command();
            poolgate::cli::run_admin_command(other).await
        }
    };
    // The access lines still gathered in the threads' buffers.
    logging::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("poolgate: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
