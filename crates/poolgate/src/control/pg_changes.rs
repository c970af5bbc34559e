//! The change feed of instances sharing one PostgreSQL database. A configuration write announces
//! itself: the schema's trigger bumps `config_version` and notifies [`CONFIG_CHANNEL`] with
//! `config <version>` in the writing transaction (delivered at commit, never for a rolled-back
//! write). A cooldown reset writes no configuration, so [`PgChangeFeed::publish`] notifies it
//! (`reset <origin> <backend id>`). A listening task (its own connection, `LISTEN`) turns what it
//! hears into [`Published`] changes for the follower; after every (re)connection it publishes a
//! version check, since notifications sent while it was away are lost. The same connection
//! listens to [`OWNERS_CHANNEL`]: the response owners other instances stored, handed to
//! [`PgChangeFeed::subscribe_owners`] (with a [`OwnerFeed::Reconnected`] after a reconnection,
//! so the subscriber reloads what it may have missed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::changes::{Change, ChangeFeed, InstanceId, Published};
use super::store::postgres::{OwnerNotice, CONFIG_CHANNEL, OWNERS_CHANNEL};
use crate::domain::BackendId;

/// The longest pause between two attempts to reconnect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the owners channel says.
#[derive(Debug)]
pub enum OwnerFeed {
    /// Owners another instance stored (or deleted).
    Notice(OwnerNotice),
    /// The listener connected again: announcements may have been missed meanwhile.
    Reconnected,
}

/// See the module doc.
pub struct PgChangeFeed {
    pool: PgPool,
    tx: broadcast::Sender<Published>,
    owners: broadcast::Sender<Arc<OwnerFeed>>,
    connected: Arc<AtomicBool>,
    listener: JoinHandle<()>,
}

impl PgChangeFeed {
    /// Starts listening (in the background; [`PgChangeFeed::connected`] says when it is).
    pub fn start(pool: PgPool) -> Self {
        let tx = broadcast::channel(1024).0;
        let owners = broadcast::channel(4096).0;
        let connected = Arc::new(AtomicBool::new(false));
        let listener = tokio::spawn(listen(
            pool.clone(),
            tx.clone(),
            owners.clone(),
            Arc::clone(&connected),
        ));
        Self {
            pool,
            tx,
            owners,
            connected,
            listener,
        }
    }

    /// Whether the listening connection is up (no notification can be missed).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The response owners other instances store, as they are announced.
    pub fn subscribe_owners(&self) -> broadcast::Receiver<Arc<OwnerFeed>> {
        self.owners.subscribe()
    }
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn publish(&self, published: Published) {
        if let Change::CooldownReset(backend) = &published.change {
            let payload = format!("reset {} {backend}", published.origin);
            if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CONFIG_CHANNEL)
                .bind(payload)
                .execute(&self.pool)
                .await
            {
                tracing::warn!(%error, backend = %backend, "could not announce a cooldown reset to the other instances");
            }
        }
        // This instance's own subscribers (the follower skips its own changes).
        let _ = self.tx.send(published);
    }

    fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }
}

/// What a notification says, as a change.
fn parse(payload: &str) -> Option<Published> {
    let mut parts = payload.splitn(3, ' ');
    match parts.next()? {
        "config" => Some(Published {
            origin: InstanceId::UNKNOWN,
            change: Change::Remote {
                version: Some(parts.next()?.parse().ok()?),
            },
        }),
        "reset" => Some(Published {
            origin: InstanceId::parse(parts.next()?)?,
            change: Change::CooldownReset(BackendId::new(parts.next()?)),
        }),
        _ => None,
    }
}

async fn listen(
    pool: PgPool,
    tx: broadcast::Sender<Published>,
    owners: broadcast::Sender<Arc<OwnerFeed>>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    let mut first = true;
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([CONFIG_CHANNEL, OWNERS_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(mut listener) => {
                connected.store(true, Ordering::Relaxed);
                if warned {
                    tracing::info!("configuration change feed connected again");
                    warned = false;
                }
                backoff = Duration::from_millis(50);
                // Whatever was announced while not listening: compare versions now.
                let _ = tx.send(Published {
                    origin: InstanceId::UNKNOWN,
                    change: Change::Remote { version: None },
                });
                if !std::mem::take(&mut first) {
                    let _ = owners.send(Arc::new(OwnerFeed::Reconnected));
                }
                // `try_recv` answers `None` when the connection is lost (it does not reconnect).
                while let Ok(Some(notification)) = listener.try_recv().await {
                    if notification.channel() == OWNERS_CHANNEL {
                        match OwnerNotice::parse(notification.payload()) {
                            Some(notice) => {
                                let _ = owners.send(Arc::new(OwnerFeed::Notice(notice)));
                            }
                            None => tracing::debug!("ignored a malformed owners notification"),
                        }
                        continue;
                    }
                    match parse(notification.payload()) {
                        Some(published) => {
                            let _ = tx.send(published);
                        }
                        None => tracing::debug!(
                            payload = notification.payload(),
                            "ignored a notification"
                        ),
                    }
                }
                connected.store(false, Ordering::Relaxed);
            }
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "configuration change feed disconnected; retrying (changes are picked up by the version check meanwhile)");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_into_changes() {
        let config = parse("config 42").unwrap();
        assert_eq!(config.change, Change::Remote { version: Some(42) });
        assert_eq!(config.origin, InstanceId::UNKNOWN);
        let origin = InstanceId::generate();
        let reset = parse(&format!("reset {origin} bkd_a b")).unwrap();
        assert_eq!(reset.origin, origin);
        assert_eq!(
            reset.change,
            Change::CooldownReset(BackendId::new("bkd_a b"))
        );
        assert!(parse("config x").is_none());
        assert!(parse("reset not-a-uuid bkd").is_none());
        assert!(parse("other").is_none());
    }
}
