//! Where affinity lives while the gateway runs: which backend made each Responses API response
//! (response affinity) and which backend each sticky session goes to, behind one trait,
//! [`AffinityMaps`].
//!
//! [`LocalAffinity`] keeps both in this process's memory (bounded [`TtlMap`]s) and hands every
//! new or forgotten response owner to an [`OwnerSink`] — an unbounded queue the control plane's
//! writer drains into the store in batches, so the request path never waits on the database —
//! and is filled from the store at start. Sticky sessions are not persisted: they are a cache
//! hint, rebuilt by traffic.
//!
//! Cluster mode (issue #10) is the seam: with several instances the maps must be shared, so a
//! Redis implementation of [`AffinityMaps`] keeps `pg:resp:{id}` and `pg:sticky:{key}` with a
//! TTL (`SET … EX`), with this local map as its first level and its degraded mode. Lookups are
//! `async` for that reason; writes are fire-and-forget.

use std::num::NonZeroUsize;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::map::TtlMap;
use super::AffinityKey;
use crate::domain::{now_ms, BackendId, ResponseOwnerRecord};

/// Who made a response: the backend, and the caller (client key id or `admin`) it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseOwner {
    pub backend: BackendId,
    pub caller: String,
}

/// The affinity maps the data plane reads and writes.
#[async_trait]
pub trait AffinityMaps: Send + Sync + 'static {
    /// The backend (and caller) that made response `id`, if known and not expired.
    async fn response_owner(&self, id: &str) -> Option<ResponseOwner>;
    /// Remembers who made response `id` (written behind to the store).
    fn remember_response(&self, id: &str, owner: ResponseOwner);
    /// Forgets response `id` (after a successful `DELETE`).
    fn forget_response(&self, id: &str);
    /// The backend a sticky session goes to; a hit keeps the session `ttl` longer.
    async fn session_backend(&self, key: &AffinityKey, ttl: Duration) -> Option<BackendId>;
    /// The session went to `backend` (its first request, or it moved).
    fn remember_session(&self, key: AffinityKey, backend: &BackendId, ttl: Duration);
}

/// A change to the stored response owners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerChange {
    Remember(ResponseOwnerRecord),
    Forget(String),
}

/// The data plane's side of the owner queue; cheap to clone, never waits.
#[derive(Clone)]
pub struct OwnerSink {
    tx: mpsc::UnboundedSender<OwnerChange>,
}

/// The control plane's side of the owner queue.
pub struct OwnerQueue {
    pub rx: mpsc::UnboundedReceiver<OwnerChange>,
}

/// A new owner queue.
pub fn owner_channel() -> (OwnerSink, OwnerQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (OwnerSink { tx }, OwnerQueue { rx })
}

impl OwnerSink {
    fn send(&self, change: OwnerChange) {
        if self.tx.send(change).is_err() {
            tracing::warn!("the response-owner writer is gone; an owner is kept in memory only");
        }
    }
}

/// Bounds of the in-memory maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityLimits {
    /// How long a response's owner is remembered (OpenAI keeps stored responses 30 days).
    pub owner_ttl: Duration,
    pub owner_entries: NonZeroUsize,
    pub session_entries: NonZeroUsize,
}

/// Both maps in this process's memory; response owners are also written behind to the store.
pub struct LocalAffinity {
    owners: TtlMap<String, ResponseOwner>,
    owner_ttl: Duration,
    sessions: TtlMap<AffinityKey, BackendId>,
    sink: OwnerSink,
}

const SHARDS: NonZeroUsize = match NonZeroUsize::new(16) {
    Some(shards) => shards,
    None => NonZeroUsize::MIN,
};

impl LocalAffinity {
    pub fn new(limits: AffinityLimits, sink: OwnerSink) -> Self {
        Self {
            owners: TtlMap::new(limits.owner_entries, SHARDS, limits.owner_ttl),
            owner_ttl: limits.owner_ttl,
            // Sessions live by the sticky setting's ttl, passed with each call.
            sessions: TtlMap::new(limits.session_entries, SHARDS, Duration::from_secs(3600)),
            sink,
        }
    }

    /// Loads stored owners (at start), each living until its stored expiry.
    pub fn preload(&self, records: Vec<ResponseOwnerRecord>) {
        let (now, now_wall) = (Instant::now(), now_ms());
        for record in records {
            let left = u64::try_from(record.expires_at_ms.saturating_sub(now_wall)).unwrap_or(0);
            let owner = ResponseOwner {
                backend: record.backend_id,
                caller: record.caller,
            };
            self.owners
                .insert_until(record.response_id, owner, now + Duration::from_millis(left));
        }
    }

    /// Drops the expired entries of both maps (reads drop the ones they meet).
    pub fn purge_expired(&self) {
        let now = Instant::now();
        self.owners.purge_expired(now);
        self.sessions.purge_expired(now);
    }

    /// Response owners held in memory.
    pub fn owners_len(&self) -> usize {
        self.owners.len()
    }
}

#[async_trait]
impl AffinityMaps for LocalAffinity {
    async fn response_owner(&self, id: &str) -> Option<ResponseOwner> {
        self.owners.get(&id.to_owned(), Instant::now())
    }

    fn remember_response(&self, id: &str, owner: ResponseOwner) {
        let now = now_ms();
        let ttl_ms = i64::try_from(self.owner_ttl.as_millis()).unwrap_or(i64::MAX);
        self.sink.send(OwnerChange::Remember(ResponseOwnerRecord {
            response_id: id.to_owned(),
            backend_id: owner.backend.clone(),
            caller: owner.caller.clone(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
        }));
        self.owners.insert(id.to_owned(), owner, Instant::now());
    }

    fn forget_response(&self, id: &str) {
        self.owners.remove(&id.to_owned());
        self.sink.send(OwnerChange::Forget(id.to_owned()));
    }

    async fn session_backend(&self, key: &AffinityKey, ttl: Duration) -> Option<BackendId> {
        self.sessions.get_and_touch_for(key, Instant::now(), ttl)
    }

    fn remember_session(&self, key: AffinityKey, backend: &BackendId, ttl: Duration) {
        self.sessions
            .insert_until(key, backend.clone(), Instant::now() + ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AffinityLimits {
        AffinityLimits {
            owner_ttl: Duration::from_secs(60),
            owner_entries: NonZeroUsize::new(100).unwrap(),
            session_entries: NonZeroUsize::new(100).unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn owners_are_written_behind_and_forgotten() {
        let (sink, mut queue) = owner_channel();
        let maps = LocalAffinity::new(limits(), sink);
        let owner = ResponseOwner {
            backend: BackendId::new("bkd_a"),
            caller: "key_1".into(),
        };
        maps.remember_response("resp_1", owner.clone());
        assert_eq!(maps.response_owner("resp_1").await, Some(owner));
        match queue.rx.try_recv().unwrap() {
            OwnerChange::Remember(record) => {
                assert_eq!(record.response_id, "resp_1");
                assert_eq!(record.expires_at_ms - record.created_at_ms, 60_000);
            }
            other => panic!("{other:?}"),
        }
        maps.forget_response("resp_1");
        assert_eq!(maps.response_owner("resp_1").await, None);
        assert_eq!(
            queue.rx.try_recv().unwrap(),
            OwnerChange::Forget("resp_1".into())
        );
        tokio::time::advance(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn preloaded_owners_keep_their_stored_expiry() {
        let (sink, _queue) = owner_channel();
        let maps = LocalAffinity::new(limits(), sink);
        let now = now_ms();
        let record = |id: &str, left_ms: i64| ResponseOwnerRecord {
            response_id: id.to_owned(),
            backend_id: BackendId::new("bkd_b"),
            caller: "admin".into(),
            created_at_ms: now,
            expires_at_ms: now + left_ms,
        };
        maps.preload(vec![record("short", 5_000), record("long", 50_000)]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(maps.response_owner("short").await, None);
        assert_eq!(
            maps.response_owner("long").await.map(|o| o.backend),
            Some(BackendId::new("bkd_b"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_slide_with_their_ttl() {
        let (sink, _queue) = owner_channel();
        let maps = LocalAffinity::new(limits(), sink);
        let key = AffinityKey::from_bytes([7; 16]);
        let ttl = Duration::from_secs(30);
        maps.remember_session(key, &BackendId::new("bkd_c"), ttl);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            maps.session_backend(&key, ttl).await.is_some(),
            "used: kept"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            maps.session_backend(&key, ttl).await.is_some(),
            "renewed by the hit"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(maps.session_backend(&key, ttl).await, None);
    }
}
