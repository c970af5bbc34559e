//! Requests-per-minute limits: the token bucket, and the thread-safe [`RpmLimiter`] kept per
//! backend and per client key; concurrency limits ([`ConcurrencyLimit`]); tokens-per-minute
//! limits ([`tpm`]) and the limits learned from upstream answers ([`upstream`]).
//!
//! Tokens are counted in exact integer units so that no fraction of a token is ever lost or
//! invented: one token is [`UNITS_PER_TOKEN`] units and a bucket of `rpm` requests per minute gains
//! exactly `rpm` units per nanosecond. Over any window of `T` the bucket therefore grants at most
//! `rpm + floor(rpm * T / 60 s)` tokens, and [`TokenBucket::wait_time`] is exact: after waiting
//! that long, [`TokenBucket::try_take`] succeeds.
//!
//! Every method takes `now` from the caller (a [`tokio::time::Instant`]), so tests drive time with
//! `#[tokio::test(start_paused = true)]` or plain arithmetic on instants.

mod concurrency;
pub mod tpm;
pub mod upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

pub use concurrency::{ConcurrencyLimit, ConcurrencyPermit};
use tokio::time::Instant;

/// Units in one token: the nanoseconds in a minute, so that `rpm` units accrue per nanosecond.
pub const UNITS_PER_TOKEN: u128 = 60_000_000_000;

// === impl TokenBucket ===

/// A classic token bucket: capacity = rpm, refilled continuously at rpm/60 tokens per second,
/// starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Requests per minute; never zero.
    rpm: u32,
    /// Current fill in units (see [`UNITS_PER_TOKEN`]), at most `capacity()`.
    level: u128,
    /// The instant `level` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `rpm` requests per minute.
    ///
    /// `rpm` must be positive; 0 is treated as 1 (use [`RpmLimiter`] for "unlimited").
    pub fn per_minute(rpm: u32, now: Instant) -> TokenBucket {
        let rpm = rpm.max(1);
        TokenBucket {
            rpm,
            level: capacity(rpm),
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= UNITS_PER_TOKEN {
            self.level -= UNITS_PER_TOKEN;
            Ok(())
        } else {
            Err(self.wait_for(self.level))
        }
    }

    /// Takes `n` tokens at once (a TPM claim's estimate), or says how long until `n` are there
    /// (longer than a minute when `n` is above the capacity: never, in practice).
    pub fn try_take_n(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = u128::from(n).saturating_mul(UNITS_PER_TOKEN);
        if self.level >= need {
            self.level -= need;
            Ok(())
        } else {
            let nanos = (need - self.level).div_ceil(u128::from(self.rpm));
            Err(Duration::from_nanos(
                u64::try_from(nanos).unwrap_or(u64::MAX),
            ))
        }
    }

    /// Gives back `n` tokens (never above capacity).
    pub fn give_n(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level = self
            .level
            .saturating_add(u128::from(n).saturating_mul(UNITS_PER_TOKEN))
            .min(capacity(self.rpm));
    }

    /// Takes up to `n` more tokens for what was used beyond a reservation; this bucket has no
    /// debt, so it stops at empty.
    pub fn take_up_to(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level = self
            .level
            .saturating_sub(u128::from(n).saturating_mul(UNITS_PER_TOKEN));
    }

    /// How long until a token is available (zero if one is there now); takes nothing.
    pub fn wait_time(&self, now: Instant) -> Duration {
        self.wait_for(self.level_at(now))
    }

    /// Gives back one token taken by `try_take` that was not used (never above capacity).
    pub fn refund(&mut self, now: Instant) {
        self.refill(now);
        self.level = (self.level + UNITS_PER_TOKEN).min(capacity(self.rpm));
    }

    /// Changes the rate keeping the current fill (clamped to the new capacity).
    ///
    /// The fill is first brought up to date at the old rate. `rpm` 0 is treated as 1.
    pub fn set_rpm(&mut self, rpm: u32, now: Instant) {
        self.refill(now);
        self.rpm = rpm.max(1);
        self.level = self.level.min(capacity(self.rpm));
    }

    /// The configured requests per minute.
    pub fn rpm(&self) -> u32 {
        self.rpm
    }

    /// Tokens in the bucket at `now`, fractions included; takes nothing.
    pub fn available(&self, now: Instant) -> f64 {
        // Whole tokens and the fraction separately: exact up to 2^53 tokens.
        let level = self.level_at(now);
        let whole = level / UNITS_PER_TOKEN;
        let fraction = level % UNITS_PER_TOKEN;
        whole as f64 + fraction as f64 / UNITS_PER_TOKEN as f64
    }

    /// The fill at `now`, in units of 1/[`UNITS_PER_TOKEN`] of a token (what a checkpoint
    /// stores).
    pub fn level(&self, now: Instant) -> u128 {
        self.level_at(now)
    }

    /// A bucket of `rpm` whose fill was `level` units `elapsed` ago (a checkpoint from before a
    /// restart): refilled for the time since, never above capacity.
    pub fn restored(rpm: u32, level: u128, elapsed: Duration, now: Instant) -> TokenBucket {
        let rpm = rpm.max(1);
        let gained = elapsed.as_nanos().saturating_mul(u128::from(rpm));
        TokenBucket {
            rpm,
            level: level.saturating_add(gained).min(capacity(rpm)),
            last: now,
        }
    }

    /// The fill at `now` without storing it. An instant earlier than the last update refills
    /// nothing (time never runs backwards for a bucket).
    fn level_at(&self, now: Instant) -> u128 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let gained = elapsed.saturating_mul(u128::from(self.rpm));
        self.level.saturating_add(gained).min(capacity(self.rpm))
    }

    fn refill(&mut self, now: Instant) {
        self.level = self.level_at(now);
        if now > self.last {
            self.last = now;
        }
    }

    /// Time until `level` reaches one token: the deficit divided by the rate, rounded up so that
    /// waiting exactly this long is always enough.
    fn wait_for(&self, level: u128) -> Duration {
        let deficit = UNITS_PER_TOKEN.saturating_sub(level);
        let nanos = deficit.div_ceil(u128::from(self.rpm));
        // At most 60 s worth of nanoseconds, so it always fits.
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

fn capacity(rpm: u32) -> u128 {
    u128::from(rpm) * UNITS_PER_TOKEN
}

// === impl RpmLimiter ===

/// Thread-safe RPM limiter; rpm 0 means unlimited (never limits). Uses `parking_lot::Mutex`
/// (never held across an await). It remembers whether a token was taken or given back since
/// its last [`RpmLimiter::checkpoint`], so a checkpoint writes only buckets that changed.
#[derive(Debug)]
pub struct RpmLimiter {
    /// `None` when unlimited.
    bucket: Mutex<Option<TokenBucket>>,
    changed: AtomicBool,
}

/// A bucket's fill at one moment, for a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketLevel {
    pub rpm: u32,
    /// Units of 1/60,000,000,000 of a token.
    pub level: u128,
}

impl RpmLimiter {
    /// A limiter of `rpm` requests per minute (0 = unlimited), full as of `Instant::now()`.
    pub fn new(rpm: u32) -> RpmLimiter {
        let now = Instant::now();
        RpmLimiter {
            bucket: Mutex::new((rpm > 0).then(|| TokenBucket::per_minute(rpm, now))),
            changed: AtomicBool::new(false),
        }
    }

    /// Takes one token, or says how long until one is available. Always `Ok` when unlimited.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        self.try_acquire_at(|| now)
    }

    /// [`RpmLimiter::try_acquire`] at the time `now` gives, asked only when there is a limit
    /// (an unlimited key's request reads no clock).
    pub fn try_acquire_at(&self, now: impl FnOnce() -> Instant) -> Result<(), Duration> {
        match self.bucket.lock().as_mut() {
            Some(bucket) => {
                bucket.try_take(now())?;
                self.changed.store(true, Ordering::Relaxed);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The fill at `now` if a token was taken or given back since the last checkpoint (or
    /// always, with `all`); `None` when unlimited.
    pub fn checkpoint(&self, now: Instant, all: bool) -> Option<BucketLevel> {
        let changed = self.changed.swap(false, Ordering::Relaxed);
        if !changed && !all {
            return None;
        }
        let bucket = self.bucket.lock();
        let bucket = bucket.as_ref()?;
        Some(BucketLevel {
            rpm: bucket.rpm(),
            level: bucket.level(now),
        })
    }

    /// Continues from a checkpoint taken `elapsed` ago (refilled for that time at the stored
    /// rate, then set to the current rate). Unlimited limiters ignore it.
    pub fn restore(&self, stored: BucketLevel, elapsed: Duration, now: Instant) {
        let mut guard = self.bucket.lock();
        if let Some(bucket) = guard.as_mut() {
            let rpm = bucket.rpm();
            let mut restored = TokenBucket::restored(stored.rpm, stored.level, elapsed, now);
            restored.set_rpm(rpm, now);
            *bucket = restored;
        }
    }

    /// How long until a token is available (zero if one is there now, or when unlimited).
    pub fn wait_time(&self, now: Instant) -> Duration {
        self.bucket
            .lock()
            .as_ref()
            .map_or(Duration::ZERO, |bucket| bucket.wait_time(now))
    }

    /// Gives back one token taken by `try_acquire` that was not used.
    pub fn refund(&self, now: Instant) {
        if let Some(bucket) = self.bucket.lock().as_mut() {
            bucket.refund(now);
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// Changes the rate. 0 makes the limiter unlimited; going from unlimited to `rpm` starts a
    /// full bucket; changing a limited rate keeps the current fill (clamped to the new capacity).
    pub fn reconfigure(&self, rpm: u32, now: Instant) {
        let mut guard = self.bucket.lock();
        match (guard.as_mut(), rpm) {
            (_, 0) => *guard = None,
            (Some(bucket), rpm) => bucket.set_rpm(rpm, now),
            (None, rpm) => *guard = Some(TokenBucket::per_minute(rpm, now)),
        }
    }

    /// The configured requests per minute; 0 when unlimited.
    pub fn rpm(&self) -> u32 {
        self.bucket.lock().as_ref().map_or(0, TokenBucket::rpm)
    }

    /// The limit and the tokens in the bucket at `now` (fractions included); `None` when
    /// unlimited. Takes nothing.
    pub fn state(&self, now: Instant) -> Option<(u32, f64)> {
        self.state_at(|| now)
    }

    /// [`RpmLimiter::state`] at the time `now` gives, asked only when there is a limit.
    pub fn state_at(&self, now: impl FnOnce() -> Instant) -> Option<(u32, f64)> {
        self.bucket
            .lock()
            .as_ref()
            .map(|bucket| (bucket.rpm(), bucket.available(now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn a_restored_limiter_continues_from_its_checkpoint() {
        let limiter = RpmLimiter::new(60);
        let now = Instant::now();
        assert_eq!(limiter.checkpoint(now, false), None, "nothing taken yet");
        for _ in 0..40 {
            limiter.try_acquire(now).unwrap();
        }
        let level = limiter.checkpoint(now, false).unwrap();
        assert_eq!(level.level, 20 * UNITS_PER_TOKEN);
        assert_eq!(limiter.checkpoint(now, false), None, "unchanged since");
        assert_eq!(limiter.checkpoint(now, true), Some(level));

        // A restart right away: 20 left.
        let restarted = RpmLimiter::new(60);
        restarted.restore(level, Duration::ZERO, now);
        let mut taken = 0;
        while restarted.try_acquire(now).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 20);

        // From a checkpoint 5 s old: 5 more refilled meanwhile; a lower limit clamps.
        let later = RpmLimiter::new(60);
        later.restore(level, Duration::from_secs(5), now);
        assert_eq!(
            later.checkpoint(now, true).unwrap().level,
            25 * UNITS_PER_TOKEN
        );
        let lowered = RpmLimiter::new(10);
        lowered.restore(level, Duration::ZERO, now);
        assert_eq!(
            lowered.checkpoint(now, true).unwrap().level,
            10 * UNITS_PER_TOKEN
        );
        let unlimited = RpmLimiter::new(0);
        unlimited.restore(level, Duration::ZERO, now);
        assert_eq!(unlimited.checkpoint(now, true), None);
    }

    fn drain(bucket: &mut TokenBucket, now: Instant) -> u32 {
        let mut taken = 0;
        while bucket.try_take(now).is_ok() {
            taken += 1;
        }
        taken
    }

    #[tokio::test(start_paused = true)]
    async fn available_counts_whole_tokens_and_the_fraction() {
        let limiter = RpmLimiter::new(60);
        assert_eq!(limiter.state(Instant::now()), Some((60, 60.0)));
        for _ in 0..60 {
            limiter.try_acquire(Instant::now()).unwrap();
        }
        assert_eq!(limiter.state(Instant::now()), Some((60, 0.0)));
        advance(Duration::from_millis(1500)).await;
        assert_eq!(limiter.state(Instant::now()), Some((60, 1.5)));
        assert_eq!(RpmLimiter::new(0).state(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_full_then_refills_at_rpm_per_minute() {
        let mut bucket = TokenBucket::per_minute(60, Instant::now());
        assert_eq!(drain(&mut bucket, Instant::now()), 60);
        assert_eq!(bucket.try_take(Instant::now()), Err(Duration::from_secs(1)));

        advance(Duration::from_millis(999)).await;
        assert_eq!(
            bucket.try_take(Instant::now()),
            Err(Duration::from_millis(1))
        );
        advance(Duration::from_millis(1)).await;
        assert_eq!(bucket.try_take(Instant::now()), Ok(()));

        advance(Duration::from_secs(10)).await;
        assert_eq!(drain(&mut bucket, Instant::now()), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn refill_never_exceeds_capacity() {
        let mut bucket = TokenBucket::per_minute(5, Instant::now());
        advance(Duration::from_secs(3600)).await;
        assert_eq!(drain(&mut bucket, Instant::now()), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_refill_is_not_lost() {
        // 7 rpm: one token every 60/7 s, which is not a whole number of nanoseconds.
        let start = Instant::now();
        let mut bucket = TokenBucket::per_minute(7, start);
        assert_eq!(drain(&mut bucket, start), 7);
        let mut granted = 0;
        for _ in 0..60_000 {
            advance(Duration::from_millis(1)).await;
            if bucket.try_take(Instant::now()).is_ok() {
                granted += 1;
            }
        }
        assert_eq!(granted, 7, "exactly one minute of refill in 1 ms steps");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_time_is_exact_and_takes_nothing() {
        let mut bucket = TokenBucket::per_minute(120, Instant::now());
        assert_eq!(bucket.wait_time(Instant::now()), Duration::ZERO);
        assert_eq!(drain(&mut bucket, Instant::now()), 120);
        assert_eq!(bucket.wait_time(Instant::now()), Duration::from_millis(500));
        advance(Duration::from_millis(200)).await;
        assert_eq!(bucket.wait_time(Instant::now()), Duration::from_millis(300));
        assert_eq!(bucket.wait_time(Instant::now()), Duration::from_millis(300));
        advance(Duration::from_millis(300)).await;
        assert_eq!(bucket.wait_time(Instant::now()), Duration::ZERO);
        assert_eq!(bucket.try_take(Instant::now()), Ok(()));
        assert_eq!(bucket.wait_time(Instant::now()), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn refund_gives_back_one_token_up_to_capacity() {
        let now = Instant::now();
        let mut bucket = TokenBucket::per_minute(2, now);
        assert_eq!(drain(&mut bucket, now), 2);
        bucket.refund(now);
        assert_eq!(bucket.try_take(now), Ok(()));
        assert!(bucket.try_take(now).is_err());

        let mut full = TokenBucket::per_minute(2, now);
        full.refund(now);
        full.refund(now);
        assert_eq!(drain(&mut full, now), 2, "refund never overfills");
    }

    #[tokio::test(start_paused = true)]
    async fn set_rpm_keeps_fill_and_clamps() {
        let now = Instant::now();
        let mut bucket = TokenBucket::per_minute(10, now);
        for _ in 0..4 {
            assert_eq!(bucket.try_take(now), Ok(()));
        }
        // Up: the 6 remaining tokens stay, the refill gets faster.
        bucket.set_rpm(600, now);
        assert_eq!(bucket.rpm(), 600);
        assert_eq!(drain(&mut bucket, now), 6);
        assert_eq!(bucket.wait_time(now), Duration::from_millis(100));

        // Down: a full bucket of 600 clamps to the new capacity of 3.
        advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        bucket.set_rpm(3, now);
        assert_eq!(drain(&mut bucket, now), 3);
        assert_eq!(bucket.wait_time(now), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_zero_is_unlimited() {
        let limiter = RpmLimiter::new(0);
        let now = Instant::now();
        assert_eq!(limiter.rpm(), 0);
        for _ in 0..10_000 {
            assert_eq!(limiter.try_acquire(now), Ok(()));
        }
        assert_eq!(limiter.wait_time(now), Duration::ZERO);
        limiter.refund(now);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_limits_and_refunds() {
        let limiter = RpmLimiter::new(2);
        let now = Instant::now();
        assert_eq!(limiter.try_acquire(now), Ok(()));
        assert_eq!(limiter.try_acquire(now), Ok(()));
        assert_eq!(limiter.try_acquire(now), Err(Duration::from_secs(30)));
        assert_eq!(limiter.wait_time(now), Duration::from_secs(30));
        limiter.refund(now);
        assert_eq!(limiter.wait_time(now), Duration::ZERO);
        assert_eq!(limiter.try_acquire(now), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_reconfigure_between_limited_and_unlimited() {
        let limiter = RpmLimiter::new(1);
        let now = Instant::now();
        assert_eq!(limiter.try_acquire(now), Ok(()));
        assert!(limiter.try_acquire(now).is_err());

        // Limited -> limited keeps the (empty) fill.
        limiter.reconfigure(60, now);
        assert_eq!(limiter.rpm(), 60);
        assert_eq!(limiter.try_acquire(now), Err(Duration::from_secs(1)));

        // Limited -> unlimited -> limited starts full.
        limiter.reconfigure(0, now);
        assert_eq!(limiter.rpm(), 0);
        assert_eq!(limiter.try_acquire(now), Ok(()));
        limiter.reconfigure(3, now);
        assert_eq!(limiter.rpm(), 3);
        for _ in 0..3 {
            assert_eq!(limiter.try_acquire(now), Ok(()));
        }
        assert!(limiter.try_acquire(now).is_err());
    }

    #[test]
    fn per_minute_zero_is_treated_as_one() {
        let now = Instant::now();
        let mut bucket = TokenBucket::per_minute(0, now);
        assert_eq!(bucket.rpm(), 1);
        assert_eq!(bucket.try_take(now), Ok(()));
        assert_eq!(bucket.try_take(now), Err(Duration::from_secs(60)));
    }

    #[test]
    fn earlier_instant_refills_nothing() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let mut bucket = TokenBucket::per_minute(60, start);
        assert_eq!(drain(&mut bucket, later), 60);
        assert!(bucket.try_take(start).is_err());
        assert_eq!(bucket.wait_time(start), Duration::from_secs(1));
    }

    /// Time steps at several scales, so that both sub-token and multi-token refills happen.
    fn time_step() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..1_000).prop_map(Duration::from_nanos),
            (0u64..2_000).prop_map(Duration::from_millis),
            (0u64..90).prop_map(Duration::from_secs),
        ]
    }

    proptest! {
        /// Never more than `rpm + floor(rpm * t / 60 s) + 1` tokens in `[0, t]`, and `wait_time`
        /// agrees with `try_take`. Each step advances time, then tries up to `attempts` takes,
        /// stopping at the first refusal (later ones at the same instant would be identical).
        #[test]
        fn grants_bounded_and_wait_time_consistent(
            rpm in prop_oneof![1u32..100, 1u32..10_000],
            steps in proptest::collection::vec((time_step(), 0u32..20_000), 1..60),
        ) {
            let start = Instant::now();
            let mut bucket = TokenBucket::per_minute(rpm, start);
            let mut elapsed = Duration::ZERO;
            let mut granted: u128 = 0;
            for (step, attempts) in steps {
                elapsed += step;
                let now = start + elapsed;
                for _ in 0..attempts {
                    let wait = bucket.wait_time(now);
                    let before = bucket.clone();
                    match bucket.try_take(now) {
                        Ok(()) => {
                            prop_assert_eq!(wait, Duration::ZERO);
                            granted += 1;
                        }
                        Err(retry_in) => {
                            prop_assert!(wait > Duration::ZERO);
                            prop_assert_eq!(retry_in, wait);
                            let too_early = now + wait - Duration::from_nanos(1);
                            prop_assert!(before.clone().try_take(too_early).is_err());
                            prop_assert_eq!(before.clone().try_take(now + wait), Ok(()));
                            break;
                        }
                    }
                }
                let bound = u128::from(rpm)
                    + u128::from(rpm) * elapsed.as_nanos() / UNITS_PER_TOKEN
                    + 1;
                prop_assert!(granted <= bound, "granted {granted} > bound {bound} at {elapsed:?}");
            }
        }
    }
}
