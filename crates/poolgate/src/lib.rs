//! poolgate — a self-hosted LLM API gateway: one OpenAI- and Anthropic-compatible endpoint over
//! many upstream keys.
//!
//! # Two halves
//! The gateway is two parts that meet in one place, the published [`state::Live`] snapshot (every
//! route, decrypted upstream key and client key, swapped atomically):
//!
//! - The **data plane** answers requests: the [`api`] proxy handlers, [`proxy`], [`routing`],
//!   [`limits`], [`cooldown`], [`runtime`], [`providers`], [`translate`], [`sse`]. Its context,
//!   [`state::DataPlane`], holds the snapshot (read-only), the upstream HTTP client, two sinks —
//!   usage records and backend health — that it writes to without waiting, and the affinity maps
//!   (which backend made each Responses API response, where each sticky session goes), whose
//!   owners are written behind to the store. It holds no store and cannot name one: the store is
//!   a private module of [`control`].
//! - The **control plane**, [`control::ControlPlane`], owns every change — admin API, command
//!   line and config file alike: validate once ([`domain`]'s rules), seal upstream keys, write in
//!   one transaction, publish the change ([`control::ChangeFeed`]), rebuild the snapshot. It also
//!   runs the writers behind the data plane's sinks and answers the admin API's reads.
//!
//! ```text
//!   api (proxy handlers) ─► proxy ─► routing / runtime / providers / translate / sse
//!         │                   │                      (reads one Live per request)
//!         │                   └─► UsageSink, HealthSink ──┐
//!   api (admin), cli, config ─► control ─► store (private) │
//!                                  ▲  └─► publishes Live ──┘ writers drain the sinks
//! ```
//! (`docs/architecture.md` draws the parts and their dependencies in full.)
//!
//! # The request pipeline, in order
//! 1. [`api`] assigns the request id, loads the snapshot once, authenticates the client key
//!    against it (bearer token or `x-api-key`, hashed, compared in constant time) and parses the
//!    body in the client's format far enough to know the model and whether it streams.
//! 2. **route** ([`proxy`]): a request about a stored Responses API response goes only to the
//!    backend that made it (response affinity); otherwise the route of the model — aliases
//!    resolved, exact mappings over wildcards ([`routing::RouteTable`]): pools in priority order,
//!    the backends of each pool in a weighted round-robin order ([`routing`]), a sticky session's
//!    backend first in its pool; the key's allowed models and its own RPM bucket.
//! 3. **select**: each candidate passes the readiness check ([`routing::accept`]): enabled, key
//!    readable, and admitted by its [`runtime`] — not cooling ([`cooldown`]), not broken, a token in
//!    its RPM bucket ([`limits`]).
//! 4. **call**: [`providers`] build the upstream request (mapped model id, the backend's
//!    decrypted key, [`translate`]d if the backend speaks the other format); it is sent with a
//!    time-to-first-byte timeout.
//! 5. **classify**: success, rate limited (cooldown with backoff), server error or timeout (short
//!    error cooldown), bad key (backend `error`), or the client's own fault (relayed as is).
//! 6. **retry**: retryable failures move on to the next candidate — only ever before the first byte
//!    reached the client; with nothing ready, wait up to `max_wait` or answer 429.
//! 7. **relay**: JSON whole, streams event by event ([`sse`]); token usage is read on the way.
//! 8. **record**: one [`usage`] record per request into an unbounded queue (never a wait, never a
//!    drop), stored in batches by the control plane's writer; a health change is marked dirty
//!    for the single health writer.
//!
//! Every phase also feeds the request's [`telemetry`] observation — attempts started (trace
//! context injected upstream) and ended with their result, the first byte, the finish where the
//! record is written — which turns them into Prometheus metrics, OpenTelemetry spans and the
//! access-log line; backend state is read at scrape time from the snapshot.
//!
//! Errors belong to their layer ([`proxy::ProxyError`], [`control::ControlError`],
//! [`providers::ProviderError`], [`translate::TranslateError`]) and become HTTP once, in
//! [`api::error`], in the client's format; 5xx bodies are generic and name the request id.
//!
//! # Modules
//! - [`config`]: command line, TOML file, environment; raw then validated (`database_url`
//!   included).
//! - [`domain`]: ids, records, and the validation rules for what users hand us.
//! - [`error`]: `InitError` at start-up. [`files`]: the data dir, its lock, secret files.
//! - [`crypto`]: AES-256-GCM for upstream keys at rest; client key hashing.
//! - [`control`]: the control plane — changes (backends, pools, keys, aliases, sticky settings),
//!   the change feed, snapshot building, the usage, health and response-owner writers, the
//!   master key, and the (private) store: `ConfigStore`, `UsageStore` and `AffinityStore` opened
//!   from the database URL, SQLite today.
//! - [`state`]: the data plane's context and the `Live` snapshot. [`runtime`]: per-backend and
//!   per-key runtime state behind a narrow API.
//! - [`routing`], [`limits`], [`cooldown`]: the route table (aliases, wildcards), candidate
//!   selection and readiness; [`routing::affinity`]: sticky-session keys and the affinity maps.
//! - [`providers`], [`translate`], [`sse`], [`proxy`]: wire formats, translation between them, the
//!   SSE framer, and the forwarding pipeline.
//! - [`usage`]: the usage sink, usage queries and statistics.
//! - [`telemetry`]: the observer (Prometheus registry, OTLP traces, access log), the client
//!   rate-limit headers and the `[metrics]` / `[telemetry]` settings; [`readiness`]: the probes
//!   behind `/health/ready` and the draining flag of a graceful stop.
//! - [`api`]: the HTTP surface (OpenAI, Anthropic, admin) and error rendering; [`dashboard`]: the
//!   web UI assets; [`server`]: start-up and graceful shutdown; [`cli`]: the command line.

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod cooldown;
pub mod crypto;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod files;
pub mod limits;
pub mod providers;
pub mod proxy;
pub mod readiness;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod translate;
pub mod usage;
