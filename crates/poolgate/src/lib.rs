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
//! 0. [`serving`] accepts the connection (capped at `server.max_connections`) and reads the
//!    request under time limits: the head within `server.header_read_timeout_seconds`, the body
//!    at a minimum rate; a client that stops reading the answer is cut after
//!    `server.write_timeout_seconds`.
//! 1. [`api`] assigns the request id, loads the snapshot once, authenticates the client key
//!    against it (bearer token or `x-api-key`, hashed, compared in constant time), takes a slot
//!    under the key's `max_parallel_requests` (else 429) and `proxy.max_in_flight` (else 503) —
//!    held until the answer's body ends — then reads the body (413 at once when `Content-Length`
//!    is over the limit) and parses it in the client's format far enough to know the model and
//!    whether it streams (the body is kept as read: one copy).
//! 2. **route** ([`proxy`]): a request about a stored Responses API response goes only to the
//!    backend that made it (response affinity); otherwise the route of the model — aliases
//!    resolved, exact mappings over wildcards ([`routing::RouteTable`]): pools in priority order,
//!    the backends of each pool in a weighted round-robin order ([`routing`]), a sticky session's
//!    backend first in its pool; the key's allowed models and its own RPM bucket.
//! 3. **select**: each candidate passes the readiness check ([`routing::accept`]): enabled, key
//!    readable, and admitted by its [`runtime`] — not cooling ([`cooldown`]), not broken, a token in
//!    its RPM bucket ([`limits`]).
//! 4. **call**: [`providers`] build the upstream request (mapped model id spliced into the
//!    client's body, the backend's decrypted key, [`translate`]d if the backend speaks the other
//!    format); it is sent with a time-to-first-byte timeout, to an address the [`egress`] policy
//!    allows (checked on the literal and on every resolved address).
//! 5. **classify**: success, rate limited (cooldown with backoff), server error, redirect or
//!    timeout (short error cooldown), bad key (backend `error`), or the client's own fault
//!    (relayed with the key [`scrub`]bed out).
//! 6. **retry**: retryable failures move on to the next candidate — only ever before the first byte
//!    reached the client; with nothing ready, wait up to `max_wait` or answer 429 (rate limited) or
//!    503 (cooling after errors).
//! 7. **relay**: JSON whole (at most `proxy.max_response_bytes`), streams event by event ([`sse`])
//!    after holding back their content-free leading events until the first content, so a stream
//!    that dies after its role chunk still fails over; token usage is read on the way.
//! 8. **record**: one [`usage`] record per request, appended to the crash-safe [`journal`] and
//!    queued (never a wait, never a drop) before the answer completes, stored in batches by the
//!    control plane's writer; a health change is marked dirty for the single health writer.
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
//!   [`logging`]: log output with the instance id on every line.
//! - [`crypto`]: AES-256-GCM for upstream keys at rest; client key hashing.
//! - [`control`]: the control plane — changes (backends, pools, keys, aliases, sticky settings),
//!   the change feed (in-process, or PostgreSQL `LISTEN/NOTIFY` with a version check), snapshot
//!   building, the usage, health and response-owner writers, the RPM bucket checkpoint (single
//!   mode), the master key, and the (private) store: `ConfigStore`, `UsageStore` and
//!   `AffinityStore` opened from the database URL, SQLite or PostgreSQL.
//! - [`state`]: the data plane's context and the `Live` snapshot. [`runtime`]: per-backend and
//!   per-key runtime state behind a narrow API — this instance's own, or in cluster mode the
//!   state every instance shares ([`shared`]: Redis, one atomic script per admission, a local
//!   mirror of the cooldowns, a degraded mode on the instance's share of each limit).
//! - [`routing`], [`limits`], [`cooldown`]: the route table (aliases, wildcards), candidate
//!   selection and readiness; [`routing::affinity`]: sticky-session keys and the affinity maps.
//! - [`providers`], [`translate`], [`sse`], [`proxy`]: wire formats, translation between them, the
//!   SSE framer, and the forwarding pipeline.
//! - [`telemetry`]: the observer (Prometheus registry, OTLP traces, access log), the client
//!   rate-limit headers and the `[metrics]` / `[telemetry]` settings; [`readiness`]: the probes
//!   behind `/health/ready` and the draining flag of a graceful stop.
//! - [`usage`]: the usage sink, usage queries and statistics; [`journal`]: the crash-safe usage
//!   journal the sink appends to and the control plane replays at start.
//! - [`egress`]: where backends may point (address classes, allow/deny lists, the policy-checked
//!   DNS resolver). [`upstream`]: the upstream HTTP client (its own pool of hyper connections
//!   over that resolver, rustls, small fixed HTTP/1 buffers) and its error type. [`scrub`]: removing a backend's key from what its upstream sends back.
//! - [`api`]: the HTTP surface (OpenAI, Anthropic, admin) and error rendering; [`dashboard`]: the
//!   web UI assets; [`serving`]: the client side (accept loop, timeouts, connection cap, drain);
//!   [`server`]: start-up and graceful shutdown; [`cli`]: the command line.

pub mod api;
pub mod boxed;
pub mod cli;
pub mod config;
pub mod control;
pub mod cooldown;
pub mod crypto;
pub mod dashboard;
pub mod domain;
pub mod egress;
pub mod error;
pub mod files;
pub mod journal;
pub mod limits;
pub mod logging;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod readiness;
pub mod routing;
pub mod runtime;
pub mod scrub;
pub mod server;
pub mod serving;
pub mod shared;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod token_count;
pub mod translate;
pub mod upstream;
pub mod usage;
