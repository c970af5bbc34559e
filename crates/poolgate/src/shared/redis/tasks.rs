//! The background tasks of [`super::RedisShared`]: the heartbeat (registry, live-instance count,
//! the breaker's trial call when no request comes, the resync after an outage) and the change
//! feed (a pub/sub subscriber applying every published cooldown change to the local mirror, and
//! keeping the upstream blocks other instances announce).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};

use super::{scripts, Inner};

/// The longest pause between two attempts to (re)connect the change feed.
const FEED_MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(super) async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.options.heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        inner.heartbeat().await;
        if inner.breaker.is_closed() && inner.resync_needed.swap(false, Ordering::Relaxed) {
            inner.sync_all().await;
        }
    }
}

/// Subscribes to the cooldown channel; after each (re)subscription, resyncs every known backend
/// (changes published while disconnected were missed). While disconnected, the mirror is not
/// trusted for "healthy" (every attempt asks Redis), see `Authority::Mirror`.
pub(super) async fn change_feed_loop(inner: Arc<Inner>) {
    let channel = inner.keys.channel();
    let connect_timeout = inner.options.connect_timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        let subscribed = async {
            let mut pubsub = timeout(connect_timeout, inner.client.get_async_pubsub())
                .await
                .ok()?
                .ok()?;
            timeout(connect_timeout, pubsub.subscribe(&channel))
                .await
                .ok()?
                .ok()?;
            Some(pubsub)
        }
        .await;
        if let Some(mut pubsub) = subscribed {
            // Connected before the resync, so a change racing it is applied too (by seq).
            inner.feed_connected.store(true, Ordering::Relaxed);
            backoff = Duration::from_millis(50);
            inner.sync_all().await;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                if inner.take_upstream_block(&payload) {
                    continue;
                }
                match scripts::parse_message(&payload) {
                    Some((backend, cooldown)) => {
                        let shared = cooldown.to_local(Instant::now());
                        inner.mirror(&backend, &shared, false);
                    }
                    None => tracing::debug!(%payload, "ignored a cooldown message"),
                }
            }
            inner.feed_connected.store(false, Ordering::Relaxed);
            tracing::debug!(instance = %inner.instance_id, "cooldown change feed disconnected");
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(FEED_MAX_BACKOFF);
    }
}
