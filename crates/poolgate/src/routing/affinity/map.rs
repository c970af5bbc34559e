//! A bounded map with a time to live, shared by every request: N shards, each a
//! least-recently-used map (`hashlink::LruCache`, already in the tree through sqlx) behind its
//! own short lock — never held across an await. Time is passed in (`tokio::time::Instant`), so
//! tests drive it without sleeping.
//!
//! Used for sticky sessions (affinity key → backend) and for response affinity (response id →
//! backend). Full shards drop their least recently used entry; expired entries are dropped when
//! met, or by [`TtlMap::purge_expired`].

use std::hash::{BuildHasher, Hash, RandomState};
use std::num::NonZeroUsize;
use std::time::Duration;

use hashlink::LruCache;
use parking_lot::Mutex;
use tokio::time::Instant;

struct Entry<V> {
    value: V,
    expires: Instant,
}

/// One shard: an LRU map behind its own lock.
type Shard<K, V> = Mutex<LruCache<K, Entry<V>>>;

/// A bounded, sharded LRU map whose entries expire `ttl` after they were written (or, with
/// [`get_and_touch`](TtlMap::get_and_touch), last used).
pub struct TtlMap<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: RandomState,
    ttl: Duration,
}

impl<K: Hash + Eq, V: Clone> TtlMap<K, V> {
    /// At most `capacity` entries (rounded up to a multiple of `shards`), each living `ttl`.
    pub fn new(capacity: NonZeroUsize, shards: NonZeroUsize, ttl: Duration) -> Self {
        let per_shard = capacity.get().div_ceil(shards.get());
        Self {
            shards: (0..shards.get())
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
            ttl,
        }
    }

    fn shard(&self, key: &K) -> &Shard<K, V> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[index]
    }

    /// Writes `key → value`, living `ttl` from `now`.
    pub fn insert(&self, key: K, value: V, now: Instant) {
        self.insert_until(key, value, now + self.ttl);
    }

    /// Writes `key → value`, living until `expires`.
    pub fn insert_until(&self, key: K, value: V, expires: Instant) {
        self.shard(&key)
            .lock()
            .insert(key, Entry { value, expires });
    }

    /// The live value of `key`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.read(key, now, None)
    }

    /// The live value of `key`, whose life starts again at `now` (a session in use stays).
    pub fn get_and_touch(&self, key: &K, now: Instant) -> Option<V> {
        self.read(key, now, Some(self.ttl))
    }

    /// The live value of `key`, which now lives `ttl` from `now` (for maps whose time to live
    /// is a setting that can change while they run).
    pub fn get_and_touch_for(&self, key: &K, now: Instant, ttl: Duration) -> Option<V> {
        self.read(key, now, Some(ttl))
    }

    fn read(&self, key: &K, now: Instant, touch: Option<Duration>) -> Option<V> {
        let mut shard = self.shard(key).lock();
        let entry = shard.get_mut(key)?;
        if entry.expires <= now {
            shard.remove(key);
            return None;
        }
        if let Some(ttl) = touch {
            entry.expires = now + ttl;
        }
        Some(entry.value.clone())
    }

    pub fn remove(&self, key: &K) -> Option<V> {
        self.shard(key).lock().remove(key).map(|entry| entry.value)
    }

    /// Drops every expired entry (for a periodic sweep; reads drop the ones they meet).
    pub fn purge_expired(&self, now: Instant)
    where
        K: Clone,
    {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let expired: Vec<K> = shard
                .iter()
                .filter(|(_, entry)| entry.expires <= now)
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                shard.remove(&key);
            }
        }
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the map holds.
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().capacity())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(capacity: usize, shards: usize, ttl_secs: u64) -> TtlMap<u32, u32> {
        TtlMap::new(
            NonZeroUsize::new(capacity).unwrap(),
            NonZeroUsize::new(shards).unwrap(),
            Duration::from_secs(ttl_secs),
        )
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let map = map(10, 2, 60);
        let t0 = Instant::now();
        map.insert(1, 100, t0);
        assert_eq!(map.get(&1, t0 + Duration::from_secs(59)), Some(100));
        assert_eq!(map.get(&1, t0 + Duration::from_secs(60)), None);
        assert!(map.is_empty(), "the expired entry was dropped when met");
    }

    #[test]
    fn touching_extends_the_life_reading_does_not() {
        let map = map(10, 1, 60);
        let t0 = Instant::now();
        map.insert(1, 100, t0);
        map.insert(2, 200, t0);
        assert_eq!(
            map.get_and_touch(&1, t0 + Duration::from_secs(50)),
            Some(100)
        );
        assert_eq!(map.get(&2, t0 + Duration::from_secs(50)), Some(200));
        assert_eq!(map.get(&1, t0 + Duration::from_secs(100)), Some(100));
        assert_eq!(map.get(&2, t0 + Duration::from_secs(100)), None);
    }

    #[test]
    fn overwriting_moves_the_key_and_restarts_its_life() {
        let map = map(10, 1, 60);
        let t0 = Instant::now();
        map.insert(1, 100, t0);
        map.insert(1, 101, t0 + Duration::from_secs(30));
        assert_eq!(map.get(&1, t0 + Duration::from_secs(80)), Some(101));
        assert_eq!(map.remove(&1), Some(101));
        assert_eq!(map.get(&1, t0), None);
    }

    #[test]
    fn a_full_shard_drops_its_least_recently_used_entry() {
        let map = map(3, 1, 60);
        let t0 = Instant::now();
        for key in 1..=3 {
            map.insert(key, key, t0);
        }
        assert_eq!(map.get(&1, t0), Some(1)); // 2 is now the least recently used
        map.insert(4, 4, t0);
        assert_eq!(map.get(&2, t0), None);
        for key in [1, 3, 4] {
            assert_eq!(map.get(&key, t0), Some(key));
        }
    }

    #[test]
    fn purge_drops_only_expired_entries() {
        let map = map(10, 4, 60);
        let t0 = Instant::now();
        map.insert(1, 1, t0);
        map.insert(2, 2, t0 + Duration::from_secs(30));
        map.purge_expired(t0 + Duration::from_secs(61));
        assert_eq!(map.len(), 1);
        assert_eq!(map.get(&2, t0 + Duration::from_secs(61)), Some(2));
    }

    proptest! {
        #[test]
        fn never_holds_more_than_its_capacity(
            capacity in 1_usize..64,
            shards in 1_usize..8,
            keys in proptest::collection::vec(0_u32..500, 0..400),
        ) {
            let map = map(capacity, shards, 60);
            let now = Instant::now();
            for key in &keys {
                map.insert(*key, *key, now);
            }
            let bound = capacity.div_ceil(shards) * shards;
            prop_assert_eq!(map.capacity(), bound);
            prop_assert!(map.len() <= bound);
            // The last key written is always there.
            if let Some(last) = keys.last() {
                prop_assert_eq!(map.get(last, now), Some(*last));
            }
        }
    }
}
