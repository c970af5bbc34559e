//! The `mock-upstream` binary: serves the mock's endpoints with a default reply set from flags,
//! for the benchmark harness.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use mock_upstream::{MockConfig, MockUpstream, Reply, StreamSpec};

/// A fast OpenAI/Anthropic-shaped upstream. Every request gets the default reply; nothing is
/// logged per request and requests are not kept.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Content chunks per streamed response.
    #[arg(long, default_value_t = 20)]
    stream_chunks: usize,
    /// Delay before each content chunk of a stream, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_gap_ms: u64,
    /// Delay before the response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Serve `POST /__mock/replies` to script errors (for tests that run the binary): a body
    /// `{"status": 429, "retry_after": 30, "times": 1}` makes the next `times` requests (default
    /// 1) answer `status`, with `retry-after` if given, in the endpoint's own error shape; 204.
    #[arg(long)]
    control: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let default_reply = if args.latency_ms > 0 {
        Reply::Ok.delayed(args.latency_ms)
    } else {
        Reply::Ok
    };
    let config = MockConfig {
        listen: args.listen,
        default_reply,
        stream_defaults: StreamSpec::new(args.stream_chunks).gap_ms(args.chunk_gap_ms),
        record_requests: false,
        control: args.control,
    };
    let mock = match MockUpstream::start_with(config).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", mock.addr());
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("mock-upstream: cannot wait for ctrl-c: {e}");
    }
    mock.shutdown().await;
    ExitCode::SUCCESS
}
