//! Tokens-per-minute limits: a token bucket that admits a request by **reserving** its estimated
//! tokens and **settles** with the real usage when the answer ends — a refund when the estimate
//! was high, an extra charge when it was low. The thread-safe [`TpmLimiter`] is kept per backend
//! and per client key, beside the RPM limiters.
//!
//! # Exact arithmetic
//! As in [`super::TokenBucket`], one token is [`UNITS_PER_TOKEN`] units (the nanoseconds in a
//! minute), so a bucket of `tpm` tokens per minute gains exactly `tpm` units per nanosecond and
//! no fraction of a token is lost or invented. The level is an `i128` of units: capacity
//! `tpm × 60·10^9` units is below 2^100 for any `u64` rate.
//!
//! # Admission, debt and the bound
//! - A reservation of `n` tokens is admitted when the bucket holds at least `n` tokens; it takes
//!   them. A request larger than the whole bucket (`n > tpm`) can never be admitted and is
//!   refused as [`TpmRefusal::TooLarge`] (a backend skips it, a client key answers it with an
//!   error that says so), never queued forever.
//! - Settling with the real count gives back the difference (never above capacity) or takes the
//!   extra, which may push the level below zero: the bucket is **in debt**. A debt of `d`
//!   tokens delays the next admission of `n` tokens until the refill has covered `d + n`, i.e.
//!   by `(d + n) / (tpm / 60 s)`; [`TpmBucket::wait_time`] says exactly how long.
//! - Bound: whatever happened before, everything charged up to any admission (reservations +
//!   extra charges − refunds) is at most `capacity + refill` over that time, because the level
//!   after an admission is never negative. Only extra charges settled after the last admission
//!   can go beyond it, and they are repaid (as debt) before anything else is admitted.
//!
//! Every method takes `now` from the caller, so tests drive time with paused tokio time.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Units in one token: the nanoseconds in a minute, so that `tpm` units accrue per nanosecond.
const UNITS_PER_TOKEN: i128 = 60_000_000_000;

/// Tokens as bucket units.
fn units(tokens: u64) -> i128 {
    i128::from(tokens) * UNITS_PER_TOKEN
}

/// Why a reservation was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmRefusal {
    /// Not enough tokens yet (or the bucket is in debt): admitted after this wait.
    Wait(Duration),
    /// More tokens than the bucket ever holds: never admitted by this limit.
    TooLarge { requested: u64, tpm: u64 },
}

/// Tokens taken from a bucket for one request, to be settled with the real count.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "settle the reservation with the real usage (or 0 when nothing was sent)"]
pub struct TpmReservation {
    tokens: u64,
    /// Whether a bucket took the tokens (false when the limiter was unlimited).
    taken: bool,
}

impl TpmReservation {
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// What settling did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Exact,
    /// The estimate was high: this many tokens went back (before the capacity cap).
    Refunded(u64),
    /// The estimate was low: this many more tokens were taken (possibly into debt).
    Charged(u64),
}

// === impl TpmBucket ===

/// A token bucket of `tpm` tokens per minute: capacity `tpm`, refilled continuously, starts
/// full, may go into debt when a request used more than it reserved.
#[derive(Debug, Clone)]
pub struct TpmBucket {
    /// Tokens per minute; never zero.
    tpm: u64,
    /// Fill in units, at most `capacity()`; negative while in debt.
    level: i128,
    /// The instant `level` was last brought up to date.
    last: Instant,
}

impl TpmBucket {
    /// A full bucket of `tpm` tokens per minute (0 is treated as 1; use [`TpmLimiter`] for
    /// "unlimited").
    pub fn per_minute(tpm: u64, now: Instant) -> TpmBucket {
        let tpm = tpm.max(1);
        TpmBucket {
            tpm,
            level: units(tpm),
            last: now,
        }
    }

    /// Takes `tokens` for a request, or says why not.
    pub fn reserve(&mut self, tokens: u64, now: Instant) -> Result<TpmReservation, TpmRefusal> {
        if tokens > self.tpm {
            return Err(TpmRefusal::TooLarge {
                requested: tokens,
                tpm: self.tpm,
            });
        }
        self.refill(now);
        if self.level >= units(tokens) {
            self.level -= units(tokens);
            Ok(TpmReservation {
                tokens,
                taken: true,
            })
        } else {
            Err(TpmRefusal::Wait(self.wait_for(tokens, self.level)))
        }
    }

    /// Settles a reservation with the tokens the request really used: refunds the difference
    /// (never above capacity) or charges the extra (possibly into debt).
    pub fn settle(&mut self, reservation: TpmReservation, actual: u64, now: Instant) -> Settled {
        self.refill(now);
        let reserved = if reservation.taken {
            reservation.tokens
        } else {
            0
        };
        if actual < reserved {
            self.level = (self.level + units(reserved - actual)).min(units(self.tpm));
            Settled::Refunded(reserved - actual)
        } else if actual > reserved {
            self.level -= units(actual - reserved);
            Settled::Charged(actual - reserved)
        } else {
            Settled::Exact
        }
    }

    /// How long until `tokens` can be reserved (zero if now); `None` if never (more than the
    /// bucket holds). Takes nothing.
    pub fn wait_time(&self, tokens: u64, now: Instant) -> Option<Duration> {
        (tokens <= self.tpm).then(|| self.wait_for(tokens, self.level_at(now)))
    }

    /// Whole tokens in the bucket at `now`; negative while in debt.
    pub fn available(&self, now: Instant) -> i64 {
        let tokens = self.level_at(now).div_euclid(UNITS_PER_TOKEN);
        i64::try_from(tokens).unwrap_or(if tokens < 0 { i64::MIN } else { i64::MAX })
    }

    /// Changes the rate keeping the current fill (clamped to the new capacity; a debt stays).
    pub fn set_tpm(&mut self, tpm: u64, now: Instant) {
        self.refill(now);
        self.tpm = tpm.max(1);
        self.level = self.level.min(units(self.tpm));
    }

    /// The configured tokens per minute.
    pub fn tpm(&self) -> u64 {
        self.tpm
    }

    /// The fill at `now` without storing it; an instant before the last update refills nothing.
    fn level_at(&self, now: Instant) -> i128 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let gained = i128::try_from(elapsed)
            .unwrap_or(i128::MAX)
            .saturating_mul(i128::from(self.tpm));
        self.level.saturating_add(gained).min(units(self.tpm))
    }

    fn refill(&mut self, now: Instant) {
        self.level = self.level_at(now);
        if now > self.last {
            self.last = now;
        }
    }

    /// Time until `level` reaches `tokens`: the deficit divided by the rate, rounded up so that
    /// waiting exactly this long is always enough.
    fn wait_for(&self, tokens: u64, level: i128) -> Duration {
        let deficit = (units(tokens) - level).max(0);
        let nanos = deficit.div_euclid(i128::from(self.tpm))
            + i128::from(deficit.rem_euclid(i128::from(self.tpm)) != 0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

// === impl TpmLimiter ===

/// Thread-safe TPM limiter; 0 means unlimited. Uses `parking_lot::Mutex` (never held across an
/// await).
#[derive(Debug)]
pub struct TpmLimiter {
    /// `None` when unlimited.
    bucket: Mutex<Option<TpmBucket>>,
}

impl TpmLimiter {
    /// A limiter of `tpm` tokens per minute (0 = unlimited), full as of `now`.
    pub fn new(tpm: u64, now: Instant) -> TpmLimiter {
        TpmLimiter {
            bucket: Mutex::new((tpm > 0).then(|| TpmBucket::per_minute(tpm, now))),
        }
    }

    /// Reserves `tokens`; always admitted when unlimited.
    pub fn reserve(&self, tokens: u64, now: Instant) -> Result<TpmReservation, TpmRefusal> {
        match self.bucket.lock().as_mut() {
            Some(bucket) => bucket.reserve(tokens, now),
            None => Ok(TpmReservation {
                tokens,
                taken: false,
            }),
        }
    }

    /// Settles a reservation with the real count. A reservation made while unlimited charges its
    /// whole real count if a limit has been set since; with no limit it does nothing.
    pub fn settle(&self, reservation: TpmReservation, actual: u64, now: Instant) -> Settled {
        match self.bucket.lock().as_mut() {
            Some(bucket) => bucket.settle(reservation, actual, now),
            None => Settled::Exact,
        }
    }

    /// How long until `tokens` can be reserved; zero when unlimited, `None` if never.
    pub fn wait_time(&self, tokens: u64, now: Instant) -> Option<Duration> {
        self.bucket
            .lock()
            .as_ref()
            .map_or(Some(Duration::ZERO), |bucket| bucket.wait_time(tokens, now))
    }

    /// Whole tokens available (negative while in debt); `None` when unlimited.
    pub fn available(&self, now: Instant) -> Option<i64> {
        self.bucket
            .lock()
            .as_ref()
            .map(|bucket| bucket.available(now))
    }

    /// Changes the rate. 0 makes the limiter unlimited; going from unlimited to `tpm` starts a
    /// full bucket; changing a limited rate keeps the fill (clamped) and any debt.
    pub fn reconfigure(&self, tpm: u64, now: Instant) {
        let mut guard = self.bucket.lock();
        match (guard.as_mut(), tpm) {
            (_, 0) => *guard = None,
            (Some(bucket), tpm) => bucket.set_tpm(tpm, now),
            (None, tpm) => *guard = Some(TpmBucket::per_minute(tpm, now)),
        }
    }

    /// The configured tokens per minute; 0 when unlimited.
    pub fn tpm(&self) -> u64 {
        self.bucket.lock().as_ref().map_or(0, TpmBucket::tpm)
    }
}

#[cfg(test)]
mod tests;
