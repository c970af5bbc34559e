//! Limits learned from the upstream: the rate-limit headers of every answer ([`headers`]) feed a
//! small per-backend [`UpstreamLimitState`] that says "not ready until the reset" once the
//! upstream has said it has nothing left — so the next request goes elsewhere instead of earning
//! a 429 — and a serializable view (`upstream_limits` in the admin API).
//!
//! # When a backend is not ready
//! For each window the last answer described, with `remaining` counted down by what poolgate has
//! sent since that answer (a burst after "3 left" sends 3, not 300):
//! - **requests**: not ready while nothing is left;
//! - **tokens** (OpenAI's combined window, Anthropic's `tokens`) and **input tokens**: not ready
//!   while fewer tokens are left than the request's prompt estimate (at least 1, at most the
//!   window's limit, so a prompt larger than the whole window does not block forever);
//! - **output tokens**: not ready while nothing is left;
//!
//! until that window's reset. A window that says "0 left" without a reset blocks for
//! [`FALLBACK_RESET`]. Once a reset has passed its figures no longer block. Each new answer
//! replaces everything (an answer received earlier than the stored one is ignored).

pub mod headers;

use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

pub use headers::{parse_go_duration, LimitWindow, Moment, UpstreamLimits};

/// How long a window that says "0 left" but not when it refills keeps the backend out.
pub const FALLBACK_RESET: Duration = Duration::from_secs(1);

/// The last limits one backend's upstream sent, and what was sent since.
#[derive(Debug, Default)]
pub struct UpstreamLimitState {
    learned: Mutex<Option<Learned>>,
}

#[derive(Clone, Copy, Debug)]
struct Learned {
    limits: UpstreamLimits,
    /// Requests sent since `limits` was observed.
    sent_requests: u64,
    /// Prompt tokens (estimated) sent since `limits` was observed.
    sent_tokens: u64,
}

/// The `upstream_limits` of a backend in the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UpstreamLimitsView {
    /// When the figures were received (RFC 3339).
    #[schema(value_type = String)]
    pub observed_at: DateTime<Utc>,
    pub requests: Option<LimitWindow>,
    pub tokens: Option<LimitWindow>,
    pub input_tokens: Option<LimitWindow>,
    pub output_tokens: Option<LimitWindow>,
    /// Requests poolgate sent since (counted against `remaining` until the next answer).
    pub sent_since: u64,
    /// Not sent to before this moment (`null` when ready; RFC 3339).
    #[schema(value_type = Option<String>)]
    pub blocked_until: Option<DateTime<Utc>>,
}

impl UpstreamLimitState {
    /// Takes the figures of a new answer (ignored if an answer received later is already held).
    pub fn observe(&self, limits: UpstreamLimits) {
        let mut learned = self.learned.lock();
        if learned
            .as_ref()
            .is_some_and(|held| held.limits.observed.instant > limits.observed.instant)
        {
            return;
        }
        *learned = Some(Learned {
            limits,
            sent_requests: 0,
            sent_tokens: 0,
        });
    }

    /// Forgets what was learned (an admin reset: try the backend now; the next answer teaches
    /// again).
    pub fn clear(&self) {
        *self.learned.lock() = None;
    }

    /// A request of `prompt_tokens` (estimated) was sent to this backend.
    pub fn note_sent(&self, prompt_tokens: u64) {
        if let Some(learned) = self.learned.lock().as_mut() {
            learned.sent_requests = learned.sent_requests.saturating_add(1);
            learned.sent_tokens = learned.sent_tokens.saturating_add(prompt_tokens);
        }
    }

    /// `None` when a request of `prompt_tokens` may go now; otherwise the moment the upstream
    /// said it would have room again.
    pub fn ready_at(&self, prompt_tokens: u64, now: Instant) -> Option<Instant> {
        self.learned
            .lock()
            .as_ref()
            .and_then(|learned| learned.blocked_until(prompt_tokens, now))
            .map(|moment| moment.instant)
    }

    /// The figures for the admin API; `None` before any answer carried rate-limit headers.
    pub fn view(&self, now: Instant) -> Option<UpstreamLimitsView> {
        let learned = *self.learned.lock().as_ref()?;
        let limits = learned.limits;
        Some(UpstreamLimitsView {
            observed_at: limits.observed.at,
            requests: limits.requests,
            tokens: limits.tokens,
            input_tokens: limits.input_tokens,
            output_tokens: limits.output_tokens,
            sent_since: learned.sent_requests,
            blocked_until: learned.blocked_until(1, now).map(|moment| moment.at),
        })
    }
}

impl Learned {
    /// The latest reset among the windows that block a request of `prompt_tokens` at `now`.
    fn blocked_until(&self, prompt_tokens: u64, now: Instant) -> Option<Moment> {
        let limits = &self.limits;
        let tokens_needed = prompt_tokens.max(1);
        [
            (limits.requests, self.sent_requests, 1),
            (limits.tokens, self.sent_tokens, tokens_needed),
            (limits.input_tokens, self.sent_tokens, tokens_needed),
            (limits.output_tokens, 0, 1),
        ]
        .into_iter()
        .filter_map(|(window, sent, needed)| {
            let window = window?;
            let remaining = window.remaining?.saturating_sub(sent);
            let needed = needed.min(window.limit.unwrap_or(u64::MAX)).max(1);
            if remaining >= needed {
                return None;
            }
            let reset = window
                .reset_at
                .unwrap_or_else(|| limits.observed.after(FALLBACK_RESET));
            (reset.instant > now).then_some(reset)
        })
        .max_by_key(|moment| moment.instant)
    }
}

/// 2026-11-29T10:00:00Z on the wall clock, now on the (paused) monotonic one.
#[cfg(test)]
fn test_moment() -> Moment {
    Moment {
        instant: Instant::now(),
        at: DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or_default(),
    }
}

/// A header map of `(name, value)` pairs.
#[cfg(test)]
fn test_headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            map.insert(*name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests;
