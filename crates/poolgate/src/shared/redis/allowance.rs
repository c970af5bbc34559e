//! Token allowances (local quota leasing, as in Google's Doorman): when the admit script takes a
//! request's tokens from buckets that are comfortably full, it also takes a few more for this
//! instance, which then admits the next requests on those buckets from them with no Redis call.
//!
//! What keeps the limits exact:
//! - granted tokens are taken from the shared buckets in the same atomic call, so all instances
//!   together never get more than a limit allows;
//! - the script grants only while every bucket of the admission keeps at least half its
//!   capacity after the grant: near a limit every request asks Redis, and admission is exact;
//! - one ask is at most [`Allowances::size`] tokens (`min(allowance_max, limit / 6000)`), and an
//!   instance holds at most [`OUTSTANDING`] of them per bucket, asks in flight included (so that
//!   concurrent admissions each lease some); unused tokens lapse [`LIFETIME`] after the last
//!   grant. What an instance can waste of a bucket is therefore at most `4 × size` tokens per
//!   second — 4 % of the bucket's refill — and only tokens leased while it was more than half
//!   full;
//! - only admissions whose every claim costs 1 token (RPM) are paid from allowances; TPM claims
//!   and everything about cooldowns and probes go to Redis as before (the caller checks the
//!   mirror: a backend cooling, broken or half-open is never admitted from an allowance).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::shared::{BucketClaim, BucketKey};

/// How long granted tokens stay usable after the last grant.
pub(super) const LIFETIME: Duration = Duration::from_secs(1);

/// How many allowances of one bucket an instance holds at most (granted and asked together).
pub(super) const OUTSTANDING: u64 = 4;

/// An allowance is at most this fraction of its bucket's per-minute limit: `limit / 6,000`
/// tokens, 1 % of what the bucket refills per second.
const SHARE_OF_LIMIT: u64 = 6_000;

#[derive(Debug, Clone, Copy)]
struct Held {
    /// Tokens granted and not used yet (usable until `expires`).
    tokens: u64,
    expires: Instant,
    /// Tokens asked for by admissions still waiting for their reply.
    pending: u64,
}

/// The fewest entries the allowance map holds before it is first swept.
const FIRST_SWEEP_AT: usize = 64;

/// The allowances by bucket. Entries of buckets no longer leased (lapsed, nothing asked) are
/// swept whenever the map has doubled since the last sweep, so it stays in proportion to the
/// buckets in use, not to every bucket ever leased (amortised O(1) per admission).
#[derive(Debug)]
struct HeldMap {
    by_bucket: HashMap<BucketKey, Held>,
    sweep_at: usize,
}

impl HeldMap {
    fn sweep_if_grown(&mut self, now: Instant) {
        if self.by_bucket.len() < self.sweep_at {
            return;
        }
        self.by_bucket
            .retain(|_, held| held.pending > 0 || (held.expires > now && held.tokens > 0));
        self.sweep_at = (self.by_bucket.len() * 2).max(FIRST_SWEEP_AT);
    }
}

/// This instance's allowances, by bucket.
#[derive(Debug)]
pub(super) struct Allowances {
    /// The largest allowance of any bucket (`redis.allowance_max`; 0 = off).
    max: u64,
    held: Mutex<HeldMap>,
}

impl Allowances {
    pub fn new(max: u32) -> Allowances {
        Allowances {
            max: u64::from(max),
            held: Mutex::new(HeldMap {
                by_bucket: HashMap::new(),
                sweep_at: FIRST_SWEEP_AT,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// The allowance of a bucket of `per_minute` (0: too small a limit to lease any).
    pub fn size(&self, per_minute: u64) -> u64 {
        (per_minute / SHARE_OF_LIMIT).min(self.max)
    }

    /// Admits one attempt from the allowances: one token from each claim's bucket, all or none.
    /// False (nothing taken) when any claim costs more than 1, its limit is (now) too small to
    /// lease, or its allowance is short or lapsed.
    pub fn take(&self, claims: &[BucketClaim], now: Instant) -> bool {
        if !self.enabled()
            || claims.is_empty()
            || claims.iter().any(|claim| {
                let (per_minute, cost) = claim.clamped();
                cost != 1 || self.size(per_minute) == 0
            })
        {
            return false;
        }
        let held = &mut self.held.lock().by_bucket;
        for (i, claim) in claims.iter().enumerate() {
            // (A bucket named twice pays twice.)
            let need = claims[..=i].iter().filter(|c| c.key == claim.key).count();
            let need = u64::try_from(need).unwrap_or(u64::MAX);
            match held.get(&claim.key) {
                Some(h) if h.expires > now && h.tokens >= need => {}
                _ => return false,
            }
        }
        for claim in claims {
            if let Some(h) = held.get_mut(&claim.key) {
                h.tokens -= 1;
            }
        }
        true
    }

    /// What an admission going to Redis asks for, per bucket of `merged` (key, limit, cost): one
    /// allowance, less what the instance would then hold beyond [`OUTSTANDING`] allowances
    /// (granted and asked), or nothing when any claim costs more than 1 or any bucket's limit is
    /// too small to lease.
    pub fn ask<'a>(&'a self, merged: &[(&BucketKey, u64, u64)], now: Instant) -> Ask<'a> {
        let eligible = self.enabled()
            && merged
                .iter()
                .all(|&(_, per_minute, cost)| cost == 1 && self.size(per_minute) > 0);
        if !eligible {
            return Ask {
                allowances: self,
                asked: Vec::new(),
            };
        }
        let mut map = self.held.lock();
        map.sweep_if_grown(now);
        let held = &mut map.by_bucket;
        let asked = merged
            .iter()
            .map(|&(key, per_minute, _)| {
                let entry = held.entry(key.clone()).or_insert(Held {
                    tokens: 0,
                    expires: now,
                    pending: 0,
                });
                let usable = if entry.expires > now { entry.tokens } else { 0 };
                let size = self.size(per_minute);
                let amount = (OUTSTANDING * size)
                    .saturating_sub(usable + entry.pending)
                    .min(size);
                entry.pending += amount;
                (key.clone(), amount)
            })
            .collect();
        Ask {
            allowances: self,
            asked,
        }
    }

    /// Drops the allowance of `key` (its backend cools down, is broken or needs a probe).
    pub fn forget(&self, key: &BucketKey) {
        if let Some(entry) = self.held.lock().by_bucket.get_mut(key) {
            entry.tokens = 0;
        }
    }

    /// Drops every allowance (the shared state became unreachable, or reachable again).
    pub fn clear(&self) {
        for entry in self.held.lock().by_bucket.values_mut() {
            entry.tokens = 0;
        }
    }

    /// Tokens usable now from `key`'s allowance.
    #[cfg(test)]
    fn usable(&self, key: &BucketKey, now: Instant) -> u64 {
        self.held
            .lock()
            .by_bucket
            .get(key)
            .filter(|entry| entry.expires > now)
            .map_or(0, |entry| entry.tokens)
    }
}

/// What one admission asked for; settled by [`Ask::granted`], or released when dropped (the call
/// failed or was refused).
#[derive(Debug)]
pub(super) struct Ask<'a> {
    allowances: &'a Allowances,
    /// Per merged bucket, in order; empty when nothing is asked.
    asked: Vec<(BucketKey, u64)>,
}

impl Ask<'_> {
    /// Tokens asked for bucket `index` of the admission.
    pub fn amount(&self, index: usize) -> u64 {
        self.asked.get(index).map_or(0, |(_, amount)| *amount)
    }

    /// The script granted `granted` (one figure per bucket, all or none).
    pub fn granted(mut self, granted: &[i64], now: Instant) {
        let asked = std::mem::take(&mut self.asked);
        let held = &mut self.allowances.held.lock().by_bucket;
        for ((key, amount), &granted) in asked.iter().zip(granted) {
            let Some(entry) = held.get_mut(key) else {
                continue;
            };
            entry.pending = entry.pending.saturating_sub(*amount);
            let granted = u64::try_from(granted).unwrap_or(0).min(*amount);
            if granted > 0 {
                let usable = if entry.expires > now { entry.tokens } else { 0 };
                entry.tokens = usable + granted;
                entry.expires = now + LIFETIME;
            }
        }
    }
}

impl Drop for Ask<'_> {
    fn drop(&mut self) {
        if self.asked.is_empty() {
            return;
        }
        let held = &mut self.allowances.held.lock().by_bucket;
        for (key, amount) in &self.asked {
            if let Some(entry) = held.get_mut(key) {
                entry.pending = entry.pending.saturating_sub(*amount);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BackendId;

    fn claim(key: &BucketKey, per_minute: u64) -> BucketClaim {
        BucketClaim::one(key.clone(), per_minute)
    }

    #[test]
    fn the_size_scales_with_the_limit_up_to_the_setting_and_small_limits_get_none() {
        let allowances = Allowances::new(32);
        assert_eq!(allowances.size(60), 0);
        assert_eq!(allowances.size(5_999), 0);
        assert_eq!(allowances.size(6_000), 1);
        assert_eq!(allowances.size(60_000), 10);
        assert_eq!(allowances.size(10_000_000), 32);
        assert_eq!(Allowances::new(0).size(10_000_000), 0);
        assert!(!Allowances::new(0).enabled());
    }

    #[tokio::test(start_paused = true)]
    async fn granted_tokens_admit_all_or_nothing_until_used_up_or_lapsed() {
        let now = Instant::now();
        let allowances = Allowances::new(32);
        let backend = BucketKey::backend_rpm(&BackendId::new("b"));
        let key = BucketKey::client_rpm("k");
        let claims = [claim(&key, 600_000), claim(&backend, 60_000)];
        assert!(!allowances.take(&claims, now), "nothing granted yet");

        let merged = [(&key, 600_000, 1), (&backend, 60_000, 1)];
        let ask = allowances.ask(&merged, now);
        assert_eq!((ask.amount(0), ask.amount(1)), (32, 10));
        ask.granted(&[32, 10], now);
        for _ in 0..10 {
            assert!(allowances.take(&claims, now));
        }
        // The backend's allowance is used up: nothing is taken from the key's either.
        assert!(!allowances.take(&claims, now));
        assert_eq!(allowances.usable(&key, now), 22);
        assert_eq!(allowances.usable(&backend, now), 0);

        // Another grant adds to what is held; its tokens lapse a second after the grant.
        let ask = allowances.ask(&merged, now);
        assert_eq!((ask.amount(0), ask.amount(1)), (32, 10));
        ask.granted(&[32, 10], now);
        assert_eq!(allowances.usable(&key, now), 54);
        assert!(allowances.take(&claims, now + LIFETIME - Duration::from_millis(1)));
        assert!(!allowances.take(&claims, now + LIFETIME));
        assert_eq!(allowances.usable(&key, now + LIFETIME), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn asks_in_flight_count_so_concurrent_admissions_never_hold_more_than_four_allowances() {
        let now = Instant::now();
        let allowances = Allowances::new(32);
        let bucket = BucketKey::backend_rpm(&BackendId::new("b"));
        let merged = [(&bucket, 10_000_000, 1)];
        let asks: Vec<_> = (0..5).map(|_| allowances.ask(&merged, now)).collect();
        let amounts: Vec<u64> = asks.iter().map(|ask| ask.amount(0)).collect();
        assert_eq!(amounts, [32, 32, 32, 32, 0]);
        // A refused or failed call gives its ask back.
        drop(asks);
        let third = allowances.ask(&merged, now);
        assert_eq!(third.amount(0), 32);
        // The script granted nothing (the bucket is below half): nothing to take from.
        third.granted(&[0], now);
        assert!(!allowances.take(&[claim(&bucket, 10_000_000)], now));
        // A grant is never taken for more than was asked; what is held counts against the asks.
        let fourth = allowances.ask(&merged, now);
        fourth.granted(&[1_000], now);
        assert_eq!(allowances.usable(&bucket, now), 32);
        for _ in 0..3 {
            let ask = allowances.ask(&merged, now);
            assert_eq!(ask.amount(0), 32);
            ask.granted(&[32], now);
        }
        assert_eq!(allowances.ask(&merged, now).amount(0), 0);
        assert_eq!(allowances.usable(&bucket, now), 128);
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_token_claims_on_leasable_limits_ask_and_forgetting_drops_the_tokens() {
        let now = Instant::now();
        let allowances = Allowances::new(32);
        let rpm = BucketKey::backend_rpm(&BackendId::new("b"));
        let tpm = BucketKey::backend_tpm(&BackendId::new("b"));
        // A TPM claim of 500 tokens: no allowance for any bucket of the admission.
        let ask = allowances.ask(&[(&rpm, 600_000, 1), (&tpm, 1_000_000, 500)], now);
        assert_eq!((ask.amount(0), ask.amount(1)), (0, 0));
        // A small limit anywhere in the admission: none either.
        let ask = allowances.ask(&[(&rpm, 600_000, 1), (&tpm, 60, 1)], now);
        assert_eq!((ask.amount(0), ask.amount(1)), (0, 0));
        // Off: nothing.
        let off = Allowances::new(0);
        assert_eq!(off.ask(&[(&rpm, 600_000, 1)], now).amount(0), 0);

        allowances
            .ask(&[(&rpm, 600_000, 1)], now)
            .granted(&[32], now);
        let mut heavy = claim(&rpm, 600_000);
        heavy.cost = 2;
        assert!(!allowances.take(&[heavy], now), "a claim of 2 tokens");
        // The limit was lowered below what leases: what is held is not used.
        assert!(!allowances.take(&[claim(&rpm, 600)], now));
        assert!(allowances.take(&[claim(&rpm, 600_000)], now));
        allowances.forget(&rpm);
        assert!(!allowances.take(&[claim(&rpm, 600_000)], now));
        allowances
            .ask(&[(&rpm, 600_000, 1)], now)
            .granted(&[32], now);
        allowances.clear();
        assert!(!allowances.take(&[claim(&rpm, 600_000)], now));
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_no_longer_leased_are_swept_while_live_ones_stay() {
        let start = Instant::now();
        let allowances = Allowances::new(32);
        let entries = || allowances.held.lock().by_bucket.len();
        let lease = |name: &str, now: Instant| {
            let key = BucketKey::client_rpm(name);
            allowances
                .ask(&[(&key, 600_000, 1)], now)
                .granted(&[32], now);
        };
        // One bucket kept busy, and an ask still waiting for its reply.
        lease("busy", start);
        let waiting = BucketKey::client_rpm("waiting");
        let ask = allowances.ask(&[(&waiting, 600_000, 1)], start);
        for i in 0..1_000 {
            lease(&format!("once-{i}"), start);
        }
        assert_eq!(entries(), 1_002, "nothing lapsed yet: every entry is live");
        // A second later the one-off leases have lapsed; the busy bucket is leased again.
        let later = start + LIFETIME + Duration::from_millis(1);
        lease("busy", later);
        for i in 0..3_000 {
            lease(&format!("next-{i}"), later);
        }
        let later_still = later + LIFETIME + Duration::from_millis(1);
        lease("busy", later_still);
        for i in 0..3_000 {
            lease(&format!("last-{i}"), later_still);
        }
        let held = |name: &str| {
            allowances
                .held
                .lock()
                .by_bucket
                .contains_key(&BucketKey::client_rpm(name))
        };
        assert!(!held("once-0") && !held("next-0") && !held("next-2999"));
        assert!(held("busy") && held("waiting") && held("last-2999"));
        assert!(entries() <= 3_002, "{} entries", entries());
        assert_eq!(
            allowances.usable(&BucketKey::client_rpm("busy"), later_still),
            32
        );
        ask.granted(&[32], later_still);
        assert_eq!(allowances.usable(&waiting, later_still), 32);
    }
}
