//! [`UpstreamError`]: why an upstream call failed — the URL could not be used, the connection
//! could not be made, the exchange failed, or the answer's body broke off. Its text never holds
//! the URL or a header (no key, no query the client sent): neither hyper nor hyper-util's
//! connectors put the request in their errors, and this type never holds it.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io;

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL built for this call is not an `http`/`https` URL (not quoted: it may carry the
    /// client's query).
    #[error("the upstream URL is not a valid http(s) URL")]
    InvalidUrl,
    /// The connection could not be made: name resolution, the egress policy, TCP, TLS, the
    /// connect timeout, the HTTP/2 handshake.
    #[error("the upstream connection failed")]
    Connect(#[source] Box<dyn StdError + Send + Sync>),
    /// The request could not be sent or its answer's head not read.
    #[error("the upstream request failed")]
    Send(#[source] Box<dyn StdError + Send + Sync>),
    /// A new connection closed before it took the request.
    #[error("the upstream request failed: the new connection closed before the request was sent")]
    Unsent,
    /// The answer's body broke off.
    #[error("the upstream body broke off")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
}

impl UpstreamError {
    /// The connection was never made: counted as a connection failure (cooldown, failover).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// A timeout below poolgate's own (the connect timeout, the kernel's TCP timeouts).
    pub fn is_timeout(&self) -> bool {
        let mut current: Option<&(dyn StdError + 'static)> = Some(self);
        while let Some(error) = current {
            if let Some(io) = error.downcast_ref::<io::Error>() {
                if io.kind() == io::ErrorKind::TimedOut {
                    return true;
                }
            }
            if error
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
            {
                return true;
            }
            current = error.source();
        }
        false
    }

    /// The TLS error that ended the handshake, when one did (an untrusted or expired
    /// certificate, a name it is not valid for, a protocol alert). tokio-rustls hands it over
    /// inside an [`io::Error`] (hyper-util wraps that in another), and an `io::Error`'s
    /// `source()` skips the error it wraps: the walk goes through `get_ref()` there.
    pub fn tls_failure(&self) -> Option<&rustls::Error> {
        let mut current: Option<&(dyn StdError + 'static)> = Some(self);
        while let Some(error) = current {
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            current = match error.downcast_ref::<io::Error>() {
                Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
                None => error.source(),
            };
        }
        None
    }

    /// The error and its causes on one line ("the upstream request failed: connection closed
    /// before message completed"), for logs and a backend's `last_error`.
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        text
    }
}

impl From<super::InvalidUrl> for UpstreamError {
    fn from(_: super::InvalidUrl) -> Self {
        UpstreamError::InvalidUrl
    }
}
