//! poolgate — a self-hosted LLM API gateway: one OpenAI-compatible endpoint over many upstream keys.
//!
//! # The request pipeline, in order
//! 1. [`api`] authenticates the client key (bearer token, hashed, compared in constant time) and
//!    parses the body far enough to know the model and whether it streams.
//! 2. [`proxy`] checks the key's own RPM bucket and allowed models, then asks [`routing`] for the
//!    route of the canonical model: pools in priority order, the backends of each pool in a
//!    weighted round-robin order.
//! 3. Each candidate passes the readiness check ([`routing::accept`]): enabled, not cooling
//!    ([`cooldown`]), not broken, and its RPM token bucket ([`limits`]) gives a token.
//! 4. [`providers`] builds the upstream request (mapped model id, the backend's decrypted key)
//!    and [`proxy`] sends it, with a time-to-first-byte timeout.
//! 5. The upstream answer is classified: success, rate limited (cooldown with backoff), server
//!    error or timeout (short error cooldown), bad key (backend `error`), or the client's own fault
//!    (returned as is). Retryable failures move on to the next candidate — only ever before the
//!    first byte reached the client.
//! 6. Streams pass through event by event ([`proxy::sse`]); token usage is read on the way.
//! 7. One [`usage`] record per request goes through a bounded channel to a batched writer.
//!
//! Nothing on this path touches the database: routes, keys and limits live in one
//! [`state::Live`] snapshot swapped atomically when the admin API changes something.
//!
//! # Modules
//! - [`config`]: command line, TOML file, environment; raw then validated.
//! - [`domain`]: ids and records shared by every layer.
//! - [`error`]: `InitError` at start-up, `ApiError` per request; the one place errors become HTTP.
//! - [`crypto`]: AES-256-GCM for upstream keys at rest; client key hashing.
//! - [`store`]: the storage trait and its SQLite implementation.
//! - [`routing`], [`limits`], [`cooldown`]: candidate selection and readiness.
//! - [`providers`], [`translate`], [`proxy`]: wire formats, translation between them, and the
//!   forwarding pipeline.
//! - [`usage`]: usage records and statistics.
//! - [`api`]: the HTTP surface (OpenAI-compatible, admin), [`dashboard`]: the web UI assets.
//! - [`state`]: `AppState` and the live snapshot; [`server`]: start-up and graceful shutdown.

pub mod api;
pub mod cli;
pub mod config;
pub mod cooldown;
pub mod crypto;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod limits;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod translate;
pub mod usage;
