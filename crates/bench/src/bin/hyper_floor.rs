//! `hyper-floor` — the bench's floor proxy: the Rust stack poolgate is built on, with none of
//! its features. A tokio multi-thread runtime (a worker per core), hyper 1 served through
//! `hyper_util`'s `auto::Builder` with poolgate's HTTP/1 settings, `TCP_NODELAY` on accepted
//! sockets, and a `hyper_util` legacy `Client` (`HttpConnector`, `TCP_NODELAY`, pooled
//! keep-alive, poolgate's pool settings) forwarding every request unchanged (method, path and
//! query, headers minus hop-by-hop ones, body streamed) to one upstream, its answer streamed
//! back. No routing, no JSON, no logging, no usage records, no metrics: what it costs is what
//! "hyper + tokio forwarding" costs on the machine, the floor under poolgate's figures.
//!
//! Prints `listening on ADDR` once bound (like `mock-upstream`); stops on SIGTERM / SIGINT
//! (their default action). An upstream it cannot reach is answered 502 with an empty body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, CONNECTION};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// poolgate's allocator (crates/poolgate/src/main.rs), so the floor differs from poolgate by
/// poolgate's features only.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A minimal reverse proxy on poolgate's stack (tokio, hyper, hyper-util), for the benchmark's
/// floor: what the stack costs with no gateway features.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The upstream every request goes to, `HOST:PORT` (plain HTTP).
    #[arg(long)]
    upstream: Authority,
}

/// poolgate's server settings (`[server]` defaults): hyper's HTTP/1 buffer cap and header
/// timeout.
const MAX_BUF_SIZE: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The settings of poolgate's upstream client when it was hyper-util's pooled client, as the
/// floor still is (poolgate's own pool, crates/poolgate/src/upstream/pool.rs, keeps the same
/// idle limit per host and read buffer, and reuses an idle connection for at most 4 s by
/// default, which the benchmark's busy connections never reach).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
const HTTP1_READ_BUFFER: usize = 8 * 1024;

/// Hop-by-hop headers (RFC 9110, 7.6.1), never forwarded; nor are the headers `Connection`
/// names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

type Answer = Response<Either<Incoming, Empty<Bytes>>>;

/// Where requests go and the client that takes them there.
struct Forward {
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
}

impl Forward {
    fn new(authority: Authority) -> Forward {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .http1_read_buf_exact_size(HTTP1_READ_BUFFER);
        Forward {
            client: builder.build(http),
            authority,
        }
    }

    /// Sends `request` upstream unchanged but for its hop-by-hop headers; its answer likewise.
    async fn forward(&self, request: Request<Incoming>) -> Answer {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = hyper::http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(path);
        parts.uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            Err(_) => return status(StatusCode::BAD_REQUEST),
        };
        strip_hop_by_hop(&mut parts.headers);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(answer) => {
                let (mut parts, body) = answer.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(_) => status(StatusCode::BAD_GATEWAY),
        }
    }
}

fn status(code: StatusCode) -> Answer {
    let mut answer = Response::new(Either::Right(Empty::new()));
    *answer.status_mut() = code;
    answer
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// hyper's connection settings: poolgate's defaults (HTTP/1.1 keep-alive, and HTTP/2 served
/// too, told apart by the connection preface, as poolgate does by default).
fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .max_buf_size(MAX_BUF_SIZE);
    builder.http2().timer(TokioTimer::new());
    builder
}

async fn serve(listener: TcpListener, forward: Arc<Forward>) {
    let builder = Arc::new(server_builder());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors and the like: give the peers a moment to close.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Best effort, as poolgate does.
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let forward = Arc::clone(&forward);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let forward = Arc::clone(&forward);
                async move { Ok::<_, Infallible>(forward.forward(request).await) }
            });
            // A connection that ends with an error (a peer gone) just ends.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("hyper-floor: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("hyper-floor: no local address: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {addr}");
    serve(listener, Arc::new(Forward::new(args.upstream))).await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("authorization", HeaderValue::from_static("Bearer k"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }
}
