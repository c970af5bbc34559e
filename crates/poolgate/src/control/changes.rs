//! The publication seam: every committed change is published as a [`Change`] through a
//! [`ChangeFeed`], and every instance rebuilds its snapshot from what it hears. With SQLite the
//! feed is in-process ([`LocalChangeFeed`], a tokio broadcast); with PostgreSQL it is
//! `LISTEN/NOTIFY` ([`super::pg_changes::PgChangeFeed`], with a version check as a backstop), so
//! the changes of other instances enter through the same door as this one's.

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::{BackendId, PoolName};

/// One committed change to what the gateway serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    BackendCreated(BackendId),
    BackendUpdated(BackendId),
    BackendDeleted(BackendId),
    PoolCreated(PoolName),
    ClientKeyCreated(String),
    ClientKeyRevoked(String),
    /// A client key's name or limits changed.
    ClientKeyUpdated(String),
    /// A backend's cooldown and error state were cleared.
    CooldownReset(BackendId),
    /// The config file's pools and backends were written.
    ConfigSynced,
    /// Every upstream key was sealed again with a new master key.
    MasterKeyRotated,
    /// The shared database's configuration changed (to `version`), or may have (`None`: the
    /// feed reconnected, notifications may have been missed).
    Remote {
        version: Option<i64>,
    },
    /// A model alias was created or changed.
    AliasSet(String),
    AliasDeleted(String),
    /// The sticky-routing settings changed.
    StickyChanged,
    /// An admin-API price was set (or removed) for this model id.
    PriceSet(String),
    PriceDeleted(String),
    /// A client key's budgets or a backend's monthly spend cap changed (its id).
    SpendLimitsSet(String),
}

impl Change {
    /// Whether the change alters the snapshot (a reset only touches runtime state).
    pub fn alters_snapshot(&self) -> bool {
        !matches!(self, Change::CooldownReset(_))
    }
}

/// Which gateway instance made a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceId(uuid::Uuid);

impl InstanceId {
    /// The origin of a change whose author is not known (announced by the database itself).
    pub const UNKNOWN: InstanceId = InstanceId(uuid::Uuid::nil());

    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// From its text form (as [`std::fmt::Display`] writes it).
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::parse_str(text).ok().map(Self)
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A change as published: what changed and who changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub origin: InstanceId,
    pub change: Change,
}

/// Where committed changes are announced and heard.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Announces a committed change to every subscriber. Never fails the change: it is already
    /// stored (an implementation logs its own trouble; the version backstop catches up).
    async fn publish(&self, published: Published);
    /// Changes as they are published from now on (a lagging subscriber learns it missed some).
    fn subscribe(&self) -> broadcast::Receiver<Published>;
}

/// The in-process feed.
#[derive(Debug)]
pub struct LocalChangeFeed {
    tx: broadcast::Sender<Published>,
}

impl Default for LocalChangeFeed {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(256).0,
        }
    }
}

#[async_trait]
impl ChangeFeed for LocalChangeFeed {
    async fn publish(&self, published: Published) {
        // No subscriber is not an error: nobody needs to hear it.
        let _ = self.tx.send(published);
    }

    fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_hear_every_change_in_order() {
        let feed = LocalChangeFeed::default();
        let mut early = feed.subscribe();
        let origin = InstanceId::generate();
        for change in [Change::ConfigSynced, Change::MasterKeyRotated] {
            feed.publish(Published {
                origin,
                change: change.clone(),
            })
            .await;
        }
        assert_eq!(early.recv().await.unwrap().change, Change::ConfigSynced);
        assert_eq!(early.recv().await.unwrap().change, Change::MasterKeyRotated);
        assert!(!Change::CooldownReset(BackendId::new("bkd_x")).alters_snapshot());
        assert!(Change::PoolCreated(PoolName::new("p")).alters_snapshot());
    }
}
