//! The per-backend cooldown state machine (healthy / cooling / half-open probe / broken) and
//! Retry-After parsing.
//!
//! ```text
//!            429 / 5xx                      until passes
//!  Healthy ─────────────▶ Cooling{until} ─────────────────▶ half-open: the first admit() is
//!     ▲                     ▲                                the single Probe, the others get
//!     │ Success             │ probe: 429 (longer) / 5xx      ProbeInFlight
//!     └─────────────────────┴────────────────────────────────┘
//!  any state ── 401/403 ──▶ Broken ── reset() or Success ──▶ Healthy
//! ```
//!
//! A 429 backs off exponentially (`base * 2^(n-1)` for the n-th consecutive 429, or the
//! upstream's Retry-After if longer, capped at `max`), plus up to `jitter` of random extra time.
//! A cooldown is never shortened by a later outcome; only a success or an admin reset ends it.
//!
//! Outcomes that arrive while a cooldown is still running come from requests admitted before it
//! began (admission refuses requests while cooling), so they belong to the same episode: a 429
//! does not raise the consecutive count again (a burst of concurrent 429s is one event, not ten
//! doublings) but its Retry-After can still lengthen the cooldown, and a success does not end
//! the cooldown early. Only outcomes seen after the cooldown expired — normally the probe's —
//! move the machine on.
//!
//! The state owns its data and takes `now` and the RNG from the caller, so it is deterministic in
//! tests (`#[tokio::test(start_paused = true)]`, seeded `StdRng`).

mod retry_after;

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

pub use retry_after::parse_retry_after;

/// The hint [`CooldownState::ready_at`] gives while another request is probing.
const PROBE_HINT: Duration = Duration::from_secs(1);

/// Tunables for cooldowns; the same for every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct CooldownPolicy {
    /// The first 429 backoff; doubled on each consecutive 429. Default 5 s.
    pub base: Duration,
    /// The cap for the 429 backoff, Retry-After included. Default 600 s.
    pub max: Duration,
    /// Fraction in `[0, 1]` (values outside are clamped; NaN counts as 0). A random extra of up to
    /// `jitter * d` is added to a cooldown of `d`; jitter never shortens. Default 0.2.
    pub jitter: f64,
    /// The cooldown after a 5xx, connection error or timeout (not capped by `max`). Default 5 s.
    pub error_cooldown: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            base: Duration::from_secs(5),
            max: Duration::from_secs(600),
            jitter: 0.2,
            error_cooldown: Duration::from_secs(5),
        }
    }
}

impl CooldownPolicy {
    /// The 429 cooldown before jitter: `max(retry_after, base * 2^(count-1))`, capped at `max`.
    fn rate_limit_delay(&self, count: u32, retry_after: Option<Duration>) -> Duration {
        let mut backoff = self.base;
        // Doubling stops at the cap (or at zero), so this runs at most ~128 times.
        for _ in 1..count {
            if backoff >= self.max || backoff.is_zero() {
                break;
            }
            backoff = backoff.saturating_mul(2);
        }
        backoff
            .max(retry_after.unwrap_or(Duration::ZERO))
            .min(self.max)
    }

    /// `d` plus a uniform random extra in `[0, jitter * d]`.
    fn with_jitter(&self, d: Duration, rng: &mut impl Rng) -> Duration {
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        if jitter == 0.0 || d.is_zero() {
            return d;
        }
        // A factor in [0, 1] times a valid Duration cannot overflow, so mul_f64 cannot panic.
        let extra = d.mul_f64(rng.gen_range(0.0..=jitter));
        d.saturating_add(extra)
    }
}

/// What happened to a request sent to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (including the client's own 4xx faults).
    Success,
    /// 429, with the upstream's Retry-After hint if any ([`parse_retry_after`]).
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, connection error or timeout.
    ServerError,
    /// 401/403: the upstream key is bad.
    AuthFailed,
    /// The upstream answered with the request's own fault (a 4xx other than 401/403/408/429) or
    /// could not be reached for a reason of poolgate's policy: it says nothing about the
    /// backend's health. It ends a half-open probe without closing the cooldown, so the next
    /// request probes again.
    Inconclusive,
}

/// Why the backend last cooled down or broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownReason {
    RateLimited,
    ServerError,
    AuthFailed,
}

/// The answer to "may I send a request to this backend now?"
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Healthy: send.
    Ready,
    /// The cooldown expired and this caller is the single half-open probe: send, then
    /// [`CooldownState::record`] the outcome or [`CooldownState::release_probe`].
    Probe,
    /// Another request is probing: not ready.
    ProbeInFlight,
    /// Still cooling until the given instant.
    Cooling { until: Instant },
    /// The key failed authentication; not ready until reset (or a success).
    Broken,
}

impl Admission {
    /// Whether the caller may send (`Ready` or `Probe`).
    pub fn may_send(self) -> bool {
        matches!(self, Admission::Ready | Admission::Probe)
    }
}

/// When a backend will next admit a request, without admitting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyAt {
    /// Ready now, or a probe is available now.
    Now,
    /// Cooling until this instant; or, while another request probes, a hint one second ahead.
    At(Instant),
    /// Broken: only an admin reset (or a success) makes it ready again.
    Never,
}

/// The state shown on the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Cooling down, or waiting for a half-open probe to succeed.
    Cooling,
    /// Broken: authentication failed.
    Error,
}

/// The persisted fields plus the last reason, for the status page and write-behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownSnapshot {
    pub consecutive_429: u32,
    pub until: Option<Instant>,
    pub broken: bool,
    pub last_reason: Option<CooldownReason>,
}

// === impl CooldownState ===

/// The cooldown of one backend. Not thread-safe by itself: keep it behind the caller's lock.
#[derive(Debug, Clone, Default)]
pub struct CooldownState {
    consecutive_429: u32,
    /// The end of the current cooldown. Stays set after it passes (half-open) until an outcome
    /// ends or renews it.
    until: Option<Instant>,
    broken: bool,
    /// A half-open probe has been handed out and has not reported back.
    probe_in_flight: bool,
    last_reason: Option<CooldownReason>,
}

impl CooldownState {
    /// A healthy backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuild from persisted data at start-up (`until` already converted to an `Instant` by the
    /// caller). A restored state whose `until` is in the past goes to half-open (probe) like any
    /// expired cooldown. The last reason is not persisted, so it is `None` (`AuthFailed` if
    /// broken).
    pub fn restore(consecutive_429: u32, until: Option<Instant>, broken: bool) -> Self {
        CooldownState {
            consecutive_429,
            until,
            broken,
            probe_in_flight: false,
            last_reason: broken.then_some(CooldownReason::AuthFailed),
        }
    }

    /// Asked before sending a request to this backend; see [`Admission`]. Returns `Probe` to
    /// exactly one caller after a cooldown expires, and records that a probe is in flight.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if self.broken {
            return Admission::Broken;
        }
        match self.until {
            None => Admission::Ready,
            Some(until) if now < until => Admission::Cooling { until },
            Some(_) if self.probe_in_flight => Admission::ProbeInFlight,
            Some(_) => {
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    /// Peek at when a request could be admitted, without changing state: `Now` if ready or a
    /// probe is available, `At(until)` while cooling, `At(now + 1 s)` as a hint while another
    /// request probes, `Never` while broken.
    pub fn ready_at(&self, now: Instant) -> ReadyAt {
        if self.broken {
            return ReadyAt::Never;
        }
        match self.until {
            None => ReadyAt::Now,
            Some(until) if now < until => ReadyAt::At(until),
            Some(_) if self.probe_in_flight => ReadyAt::At(now + PROBE_HINT),
            Some(_) => ReadyAt::Now,
        }
    }

    /// Record the outcome of a request that was sent. Ends a probe in flight. Returns true if
    /// the persisted fields (`consecutive_429`, `until`, `broken`) changed, so the caller knows
    /// to write them behind.
    pub fn record(
        &mut self,
        outcome: Outcome,
        now: Instant,
        policy: &CooldownPolicy,
        rng: &mut impl Rng,
    ) -> bool {
        let before = self.persisted();
        self.probe_in_flight = false;
        let running = self.until.is_some_and(|until| now < until);
        match outcome {
            Outcome::Success => {
                // Any answer proves the key works.
                self.broken = false;
                if !running {
                    self.consecutive_429 = 0;
                    self.until = None;
                    self.last_reason = None;
                }
            }
            Outcome::RateLimited { retry_after } => {
                let delay = if running {
                    // Same episode: only an explicit Retry-After may lengthen it.
                    retry_after.map_or(Duration::ZERO, |r| r.min(policy.max))
                } else {
                    self.consecutive_429 = self.consecutive_429.saturating_add(1);
                    policy.rate_limit_delay(self.consecutive_429, retry_after)
                };
                if self.extend(now, policy.with_jitter(delay, rng)) {
                    self.last_reason = Some(CooldownReason::RateLimited);
                }
            }
            Outcome::ServerError => {
                if self.extend(now, policy.with_jitter(policy.error_cooldown, rng)) {
                    self.last_reason = Some(CooldownReason::ServerError);
                }
            }
            Outcome::AuthFailed => {
                self.broken = true;
                self.last_reason = Some(CooldownReason::AuthFailed);
            }
            Outcome::Inconclusive => {}
        }
        self.persisted() != before
    }

    /// The probe request ended without an outcome (client cancelled): let another request probe.
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }

    /// Admin reset: healthy, count 0.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    pub fn snapshot(&self) -> CooldownSnapshot {
        CooldownSnapshot {
            consecutive_429: self.consecutive_429,
            until: self.until,
            broken: self.broken,
            last_reason: self.last_reason,
        }
    }

    /// For the status page: `Error` if broken, `Cooling` while cooling or half-open (until a
    /// probe succeeds), else `Healthy`. `now` is accepted for symmetry with the other queries;
    /// the answer does not depend on it.
    pub fn health(&self, _now: Instant) -> Health {
        if self.broken {
            Health::Error
        } else if self.until.is_some() {
            Health::Cooling
        } else {
            Health::Healthy
        }
    }

    /// Why the backend is cooling (or waiting for its probe): the last reason, or for a state
    /// restored at start-up (which has none), a rate limit if 429s were counted.
    pub fn cooling_reason(&self) -> CooldownReason {
        self.last_reason.unwrap_or(if self.consecutive_429 > 0 {
            CooldownReason::RateLimited
        } else {
            CooldownReason::ServerError
        })
    }

    pub fn consecutive_429(&self) -> u32 {
        self.consecutive_429
    }

    fn persisted(&self) -> (u32, Option<Instant>, bool) {
        (self.consecutive_429, self.until, self.broken)
    }

    /// `until = max(until, now + d)`: a cooldown is never shortened. Returns whether it moved.
    fn extend(&mut self, now: Instant, d: Duration) -> bool {
        let end = saturating_add(now, d);
        let new = Some(self.until.map_or(end, |until| until.max(end)));
        let moved = new != self.until;
        self.until = new;
        moved
    }
}

/// `now + d`, or a far but representable future if that overflows.
fn saturating_add(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests;
