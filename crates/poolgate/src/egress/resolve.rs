//! The upstream client's DNS resolver with the egress policy applied to every answer: refused
//! addresses are dropped from the answer, and a name left with none fails to resolve with a
//! [`ResolveRefused`] error (which [`refusal_in`] finds again in the client's error, so the
//! proxy can say why instead of "connection failed"). Every resolution is checked — the client
//! connects only to addresses checked a moment before, so a name that rebinds to a forbidden
//! address after a first, harmless answer gains nothing.
//!
//! It is the resolver of [`crate::upstream`]'s `HttpConnector` (a `tower::Service` over
//! hyper-util's `Name`), which reads no proxy from the environment: the policy sees the
//! backend's own addresses. IP-literal hosts are not resolved (checked per snapshot instead).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

use super::{EgressPolicy, Refusal};

/// A resolution whose every address the policy refused.
#[derive(Debug, Clone)]
pub struct ResolveRefused {
    pub host: String,
    /// The first refusal (all addresses of one name are usually of one kind).
    pub refusal: Refusal,
}

impl fmt::Display for ResolveRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the egress policy refuses `{}`: {}",
            self.host, self.refusal
        )
    }
}

impl std::error::Error for ResolveRefused {}

/// The [`ResolveRefused`] inside an upstream client error, if the policy caused it.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ResolveRefused> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refused) = error.downcast_ref::<ResolveRefused>() {
            return Some(refused);
        }
        current = error.source();
    }
    None
}

/// The upstream client's resolver with the policy applied (the system resolver underneath, through
/// tokio's `lookup_host`).
#[derive(Clone, Debug)]
pub struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }

    /// Keeps the allowed addresses of `host`; fails when none is left.
    pub fn filter(
        policy: &EgressPolicy,
        host: &str,
        addresses: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, ResolveRefused> {
        if let Err(refusal) = policy.decide_name(host) {
            return Err(ResolveRefused {
                host: host.to_owned(),
                refusal,
            });
        }
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for address in addresses {
            match policy.decide(address.ip(), Some(host)) {
                Ok(()) => allowed.push(address),
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        match first_refusal {
            Some(refusal) if allowed.is_empty() => Err(ResolveRefused {
                host: host.to_owned(),
                refusal,
            }),
            _ => Ok(allowed),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The connector hands over names only (it connects to IP literals directly), but an
            // all-digits name is still better parsed than looked up.
            let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, 0)],
                Err(_) => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let allowed = PolicyResolver::filter(&policy, &host, found)?;
            if allowed.is_empty() {
                return Err(format!("`{host}` did not resolve to any address").into());
            }
            Ok(allowed.into_iter())
        })
    }
}
