//! The upstream HTTP client: poolgate's own HTTP/1.1 exchange ([`h1`]) and hyper's HTTP/2 client
//! connections in poolgate's own pool ([`pool`]), with only the layers a gateway needs —
//! hyper-util's [`HttpConnector`] whose resolver is the egress policy's ([`PolicyResolver`]:
//! every resolved address is checked before it is connected to), rustls with the webpki roots
//! (and the CAs of `proxy.upstream_ca_file`), a connect timeout over the whole connect
//! (resolution, TCP, TLS), keep-alive pooling, and HTTP/1 reads that hold no buffer while an
//! answer waits. No redirects are followed, no proxy is read from the
//! environment, nothing parses a URL per request (the backends' URLs are prebuilt
//! [`http::Uri`]s, [`crate::providers::target`]), and nothing decompresses.
//!
//! [`UpstreamClient::send`] is the one call; [`UpstreamResponse`] reads the answer (whole, chunk
//! by chunk, or as a stream); [`UpstreamError`] says why it failed without quoting the URL.

mod error;
pub(crate) mod h1;
mod pool;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyDataStream, BodyExt};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;

pub use error::UpstreamError;
use pool::PooledBody;
pub use pool::MAX_IDLE_TIMEOUT;

use crate::domain::HttpVersion;
use crate::egress::{EgressPolicy, PolicyResolver};
use crate::providers::body::SplicedBody;

/// A URL that could not become an `http`/`https` [`Uri`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUrl;

/// Where one request goes: its [`Uri`] and, when it was prebuilt with it
/// ([`crate::providers::target`]), the `Host` header value an HTTP/1 request to it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub uri: Uri,
    /// `host[:port]` as hyper-util wrote it (the port only when it is not the scheme's).
    pub host: Option<HeaderValue>,
}

impl From<Uri> for Destination {
    /// A destination whose `Host` header the pool builds when it sends (a `format!` and a
    /// header value per request).
    fn from(uri: Uri) -> Self {
        Destination { uri, host: None }
    }
}

/// The `Host` header value of an HTTP/1 request to `uri`, as hyper-util's client built it
/// when the request has none: the host, and `:port` unless the port is the scheme's default.
pub fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let secure = uri.scheme_str() == Some("https");
    match uri.port() {
        Some(port) if !matches!((port.as_u16(), secure), (443, true) | (80, false)) => {
            HeaderValue::try_from(format!("{host}:{port}")).ok()
        }
        _ => HeaderValue::from_str(host).ok(),
    }
}

/// How the client is built.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Bounds the whole connect: resolution, TCP, TLS.
    pub connect_timeout: Duration,
    /// Every resolved address passes it.
    pub egress: Arc<EgressPolicy>,
    /// `auto` (ALPN `h2` + `http/1.1` on `https://`, HTTP/1.1 on `http://`), `http1` or
    /// `http2` (prior knowledge on `http://`).
    pub version: HttpVersion,
    /// CA certificates trusted on top of the webpki roots (`proxy.upstream_ca_file`).
    pub extra_roots: Arc<[CertificateDer<'static>]>,
    /// How long an idle HTTP/1 connection stays reusable (`proxy.upstream_idle_timeout_ms`).
    pub idle_timeout: Duration,
}

/// A shared HTTP/2 connection's ping interval, and how long a ping may stay unanswered.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(20);

type Connector = ConnectTimeout<HttpsConnector<HttpConnector<PolicyResolver>>>;

/// The upstream client: cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<pool::Pool>,
}

impl UpstreamClient {
    /// A client with `settings`.
    pub fn new(settings: &ClientSettings) -> Result<UpstreamClient, rustls::Error> {
        let mut http =
            HttpConnector::new_with_resolver(PolicyResolver::new(Arc::clone(&settings.egress)));
        // `https://` is the TLS layer's to handle.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        // reqwest's defaults, kept: dead peers are noticed while a stream waits.
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        http.set_tcp_user_timeout(Some(Duration::from_secs(30)));

        let tls = tls_config(&settings.extra_roots)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = match settings.version {
            HttpVersion::Auto => https.enable_http1().enable_http2().wrap_connector(http),
            HttpVersion::Http1 => https.enable_http1().wrap_connector(http),
            HttpVersion::Http2 => https.enable_http2().wrap_connector(http),
        };
        let connector = ConnectTimeout {
            inner: https,
            timeout: settings.connect_timeout,
        };

        Ok(UpstreamClient {
            pool: Arc::new(pool::Pool::new(
                connector,
                settings.version,
                settings.idle_timeout,
            )),
        })
    }

    /// Sends one request; resolves with the answer's head (its body is read from the
    /// [`UpstreamResponse`]). Redirects are answers like any other.
    pub fn send(
        &self,
        method: Method,
        destination: Result<Destination, InvalidUrl>,
        mut headers: HeaderMap,
        body: SplicedBody,
    ) -> impl Future<Output = Result<UpstreamResponse, UpstreamError>> + Send + 'static {
        let pool = Arc::clone(&self.pool);
        // Boxed: the exchange's state (the connection's send, its answer's wait) lives until the
        // answer's head is in, not for as long as the request's own future (a whole stream),
        // and moving the request's future moves a pointer.
        Box::pin(async move {
            let Destination { uri, host } = destination?;
            // What reqwest sent when the request named none.
            headers
                .entry(http::header::ACCEPT)
                .or_insert(HeaderValue::from_static("*/*"));
            let mut request = http::Request::new(body);
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            let response = pool.send(request, host).await?;
            Ok(UpstreamResponse { inner: response })
        })
    }
}

/// The rustls client configuration: ring, the webpki roots (as reqwest's `rustls-tls` had),
/// TLS 1.2 and 1.3; the ALPN protocols are set per client by the connector.
fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in extra_roots {
        roots
            .add(certificate.clone())
            .map_err(|error| rustls::Error::General(format!("upstream CA certificate: {error}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

// === impl UpstreamResponse ===

/// An upstream answer: its head, and its body still to read.
#[derive(Debug)]
pub struct UpstreamResponse {
    inner: http::Response<PooledBody>,
}

/// An answer's body as a stream of chunks.
pub type UpstreamBody = BoxStream<'static, Result<Bytes, UpstreamError>>;

impl UpstreamResponse {
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The declared length of the body (`Content-Length`), if any.
    pub fn content_length(&self) -> Option<u64> {
        http_body::Body::size_hint(self.inner.body()).exact()
    }

    /// The next chunk of the body; `None` at its end (trailers are skipped).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        while let Some(frame) = self.inner.body_mut().frame().await {
            if let Ok(data) = frame.map_err(UpstreamError::Body)?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// The body as a stream of chunks (dropping it closes the upstream connection unless the
    /// body was read to its end).
    pub fn bytes_stream(self) -> UpstreamBody {
        BodyDataStream::new(self.inner.into_body())
            .map_err(UpstreamError::Body)
            .boxed()
    }
}

// === impl ConnectTimeout ===

/// A connector whose whole connect (resolution, TCP with its per-address attempts, TLS) is
/// bounded by `timeout` — what reqwest's `connect_timeout` bounded.
#[derive(Clone)]
pub struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )) as BoxError),
            }
        })
    }
}
