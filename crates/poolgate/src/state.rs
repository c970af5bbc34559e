//! The data plane's context: [`DataPlane`] (a cheap `Clone`) is everything the request path
//! holds — the published [`Live`] snapshot (read-only), the upstream HTTP client, the usage and
//! health sinks, the observer (metrics, traces, access log), the configuration's policies, the
//! admin token and the stream-cancel signal. It
//! holds no store and cannot name one: the store is private to [`crate::control`], which builds
//! the snapshot, swaps it in, and runs the writers the sinks feed.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::crypto::TokenDigest;
use crate::domain::sticky::StickySettings;
use crate::domain::{BackendId, ClientKeyRecord, HttpVersion, Pool};
use crate::error::InitError;
use crate::limits::ConcurrencyLimit;
use crate::pricing::{PriceTable, SpendLedger};
use crate::routing::affinity::AffinityMaps;
use crate::routing::models::ListedModel;
use crate::routing::{LiveBackend, RouteTable};
use crate::runtime::{ClientKeyRuntime, HealthSink};
use crate::telemetry::{BackendStats, BackendStatsSource, Observer};
use crate::upstream::{ClientSettings, UpstreamClient};
use crate::usage::UsageSink;

/// A client key as the hot path sees it.
pub struct LiveClientKey {
    pub record: ClientKeyRecord,
    pub runtime: Arc<ClientKeyRuntime>,
    /// Its daily / monthly / total budget and what is spent of it; `None` without a budget.
    pub spend: Option<Arc<SpendLedger>>,
}

/// Everything the hot path reads, as one immutable snapshot.
#[derive(Default)]
pub struct Live {
    /// Every backend, enabled or not, in creation order.
    pub backends: Vec<Arc<LiveBackend>>,
    pub by_id: HashMap<BackendId, Arc<LiveBackend>>,
    /// Requested model name (alias, exact or wildcard-served) → route.
    pub routes: RouteTable,
    pub pools: Vec<Pool>,
    /// Unrevoked client keys by id.
    pub client_keys: HashMap<String, Arc<LiveClientKey>>,
    /// What `/v1/models` lists: exactly mapped models of enabled backends, and the aliases
    /// (with their targets) whose target is served, sorted.
    pub models: Vec<ListedModel>,
    /// Backends whose key could not be decrypted (kept out of routing), with the reason.
    pub unreadable: Vec<(BackendId, String)>,
    /// Sticky routing.
    pub sticky: StickySettings,
    /// Prices by upstream model id: the embedded defaults, the config file's `[prices]` and the
    /// admin API's, merged (a lookup is a map probe; nothing is read from the store).
    pub prices: Arc<PriceTable>,
}

/// The read side of the published snapshot: load it, never store it.
#[derive(Clone)]
pub struct LiveReader(Arc<ArcSwap<Live>>);

impl LiveReader {
    /// A reader of the cell the control plane publishes into.
    pub fn new(cell: Arc<ArcSwap<Live>>) -> Self {
        Self(cell)
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> Arc<Live> {
        self.0.load_full()
    }
}

/// What the request path holds (behind [`DataPlane`]).
pub struct DataShared {
    pub config: Arc<Config>,
    /// The upstream client of requests on the work-stealing runtime (and of everything else).
    http: UpstreamClient,
    /// With `server.runtime = "thread_per_core"`: one client per per-core runtime, so that the
    /// upstream connections a thread uses live on that thread.
    per_core_http: Vec<UpstreamClient>,
    /// The clients of backends whose `http_version` is not `auto`.
    pinned_http: PinnedClients,
    pub usage: UsageSink,
    pub health: HealthSink,
    /// Response owners and sticky sessions (kept across snapshot swaps).
    pub affinity: Arc<dyn AffinityMaps>,
    pub admin_token: SecretString,
    /// The admin token's digest: a proxy request's token is checked against it with one
    /// SHA-256 instead of two.
    pub admin_token_digest: TokenDigest,
    /// Fed by the request phases: metrics, traces, the access log.
    pub observer: Observer,
    /// Requests on the proxy routes right now, under `proxy.max_in_flight`.
    pub in_flight: Arc<ConcurrencyLimit>,
    live: LiveReader,
    /// Set when the shutdown grace period ran out: open streams end themselves.
    stream_cancel: tokio::sync::watch::Sender<bool>,
}

/// The request path's context; cloning is one `Arc` increment.
#[derive(Clone)]
pub struct DataPlane {
    shared: Arc<DataShared>,
}

impl std::ops::Deref for DataPlane {
    type Target = DataShared;
    fn deref(&self) -> &DataShared {
        &self.shared
    }
}

impl DataPlane {
    /// The data plane over a snapshot and the control plane's writers.
    pub fn new(
        config: Arc<Config>,
        live: LiveReader,
        usage: UsageSink,
        health: HealthSink,
        affinity: Arc<dyn AffinityMaps>,
        admin_token: SecretString,
        observer: Observer,
    ) -> Result<DataPlane, InitError> {
        let http = upstream_client(&config)?;
        let per_core_http = (0..config.server.runtime.per_core_threads())
            .map(|_| upstream_client(&config))
            .collect::<Result<_, _>>()?;
        let pinned_http = PinnedClients::new(config.server.runtime.per_core_threads());
        let in_flight = Arc::new(ConcurrencyLimit::new(
            u32::try_from(config.proxy.max_in_flight).unwrap_or(u32::MAX),
        ));
        Ok(DataPlane {
            shared: Arc::new(DataShared {
                config,
                http,
                per_core_http,
                pinned_http,
                usage,
                health,
                affinity,
                admin_token_digest: TokenDigest::of(admin_token.expose_secret()),
                admin_token,
                observer,
                in_flight,
                live,
                stream_cancel: tokio::sync::watch::channel(false).0,
            }),
        })
    }

    /// The upstream client for a request on this thread: the per-core runtime's own, else the
    /// shared one.
    pub fn http(&self) -> &UpstreamClient {
        crate::serving::per_core::worker_index()
            .and_then(|index| self.shared.per_core_http.get(index))
            .unwrap_or(&self.shared.http)
    }

    /// The upstream client for a backend's `http_version` on this thread (`auto`: [`Self::http`]).
    /// `http1` / `http2` clients are built on first use; no allocation after that.
    pub fn http_for(&self, version: HttpVersion) -> &UpstreamClient {
        if version == HttpVersion::Auto {
            return self.http();
        }
        let pair = crate::serving::per_core::worker_index()
            .and_then(|index| self.shared.pinned_http.per_core.get(index))
            .unwrap_or(&self.shared.pinned_http.shared);
        pair.get(version, &self.shared.config)
            .unwrap_or_else(|| self.http())
    }

    /// The current snapshot (lock-free). A request loads it once and keeps it.
    pub fn live(&self) -> Arc<Live> {
        self.shared.live.load()
    }

    /// Ends every open stream (with an error event and a usage record): the grace period of a
    /// shutdown is over.
    pub fn cancel_streams(&self) {
        self.shared.stream_cancel.send_replace(true);
    }

    /// Resolves when [`DataPlane::cancel_streams`] was called.
    pub fn streams_cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.shared.stream_cancel.subscribe();
        async move {
            let _ = receiver.wait_for(|cancelled| *cancelled).await;
        }
    }
}

/// The client of upstream calls ([`crate::upstream`]): pooled keep-alive connections, no
/// redirects, the egress policy on every resolved address, no proxy from the environment.
fn upstream_client(config: &Config) -> Result<UpstreamClient, InitError> {
    upstream_client_for(config, HttpVersion::Auto)
}

/// [`upstream_client`] speaking only `version`: `http1` sends no ALPN on `https://` (so the
/// server speaks HTTP/1.1); `http2` speaks HTTP/2 from the first byte on `http://` (h2c prior
/// knowledge), offers only `h2` on `https://`, and keeps one connection per upstream host that
/// every stream shares (pinged every 20 s, so a dead peer is noticed).
fn upstream_client_for(config: &Config, version: HttpVersion) -> Result<UpstreamClient, InitError> {
    UpstreamClient::new(&ClientSettings {
        connect_timeout: config.proxy.connect_timeout,
        egress: Arc::new(config.network.clone()),
        version,
        extra_roots: Arc::clone(&config.proxy.upstream_ca),
        idle_timeout: config.proxy.upstream_idle_timeout,
    })
    .map_err(|error| InitError::Invalid(format!("HTTP client: {error}")))
}

// === impl PinnedClients ===

/// The `http1` and `http2` upstream clients: one pair for the work-stealing runtime and one
/// per per-core runtime (like [`DataShared`]'s `auto` clients), each built when a backend
/// first needs it, so deployments that never set `http_version` pay nothing for them.
struct PinnedClients {
    shared: VersionedClients,
    per_core: Vec<VersionedClients>,
}

#[derive(Default)]
struct VersionedClients {
    http1: OnceLock<UpstreamClient>,
    http2: OnceLock<UpstreamClient>,
}

impl PinnedClients {
    fn new(per_core_threads: usize) -> Self {
        Self {
            shared: VersionedClients::default(),
            per_core: (0..per_core_threads)
                .map(|_| VersionedClients::default())
                .collect(),
        }
    }
}

impl VersionedClients {
    /// The client of `version` (`None` for `auto`, or if it cannot be built: the same
    /// settings built the `auto` client at start, so that is logged and `auto` serves).
    fn get(&self, version: HttpVersion, config: &Config) -> Option<&UpstreamClient> {
        let cell = match version {
            HttpVersion::Auto => return None,
            HttpVersion::Http1 => &self.http1,
            HttpVersion::Http2 => &self.http2,
        };
        if let Some(client) = cell.get() {
            return Some(client);
        }
        match upstream_client_for(config, version) {
            // A racing thread may have set it first; either client is as good.
            Ok(client) => Some(cell.get_or_init(|| client)),
            Err(error) => {
                tracing::error!(%error, http_version = version.as_str(), "cannot build the upstream client; using `auto`");
                None
            }
        }
    }
}

// === impl BackendStatsSource for LiveReader ===

/// A scrape reads every backend of the current snapshot: its status, the cooldown left, its RPM
/// bucket and the upstream requests in flight (nothing is kept per request for this).
impl BackendStatsSource for LiveReader {
    fn for_each_backend(&self, visit: &mut dyn FnMut(BackendStats<'_>)) {
        let live = self.load();
        let now = tokio::time::Instant::now();
        for backend in &live.backends {
            let runtime = backend.runtime.snapshot(now);
            let state = backend.status(now);
            let cooldown_remaining = match state {
                crate::domain::BackendStatus::Cooling => runtime
                    .cooldown_until
                    .map_or(Duration::ZERO, |until| until.saturating_duration_since(now)),
                _ => Duration::ZERO,
            };
            let rpm = backend.runtime.rpm_state(now);
            visit(BackendStats {
                backend: &backend.record.name,
                pool: backend.record.pool.as_str(),
                state,
                cooldown_remaining,
                rpm_limit: rpm.map(|(limit, _)| limit),
                rpm_tokens_remaining: rpm.map(|(_, tokens)| tokens.floor()),
                in_flight: runtime.in_flight,
            });
        }
    }
}
