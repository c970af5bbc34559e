//! The Lua scripts (versioned; see the header of each), the keys they touch, and their replies
//! turned into Rust values. Scripts run with EVALSHA; on `NOSCRIPT` (a restarted or failed-over
//! Redis, `SCRIPT FLUSH`) redis-rs loads the script and retries once (`Script::invoke_async`).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use tokio::time::Instant;

use crate::cooldown::CooldownReason;
use crate::domain::BackendId;
use crate::shared::local::SharedCooldown;
use crate::shared::{BucketKey, CooldownView};

pub(super) static ADMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("admit.lua")));
pub(super) static REPORT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("report.lua")));
pub(super) static IN_FLIGHT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("inflight.lua")));
pub(super) static BUDGET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("budget.lua")));
pub(super) static HEARTBEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("heartbeat.lua")));

/// The layout version of the data the scripts keep, part of every key: a script whose data
/// layout changes bumps it, so instances of two versions never read each other's data.
const SCHEMA: &str = "v1";

/// Key names under one prefix. The default prefix is a hash tag (`{poolgate}:`), so that every key
/// lives in one Redis Cluster slot and multi-key scripts stay legal there too.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: format!("{prefix}{SCHEMA}:"),
        }
    }

    pub fn cooldown(&self, backend: &BackendId) -> String {
        format!("{}cd:{}", self.prefix, backend.as_str())
    }

    pub fn probe(&self, backend: &BackendId) -> String {
        format!("{}probe:{}", self.prefix, backend.as_str())
    }

    pub fn in_flight(&self, backend: &BackendId) -> String {
        format!("{}inflight:{}", self.prefix, backend.as_str())
    }

    pub fn bucket(&self, key: &BucketKey) -> String {
        format!("{}bucket:{}", self.prefix, key.as_str())
    }

    /// One window (`d:<yyyymmdd>`, `m:<yyyymm>`, `t`) of a client key's budget, or (owner
    /// `backend:<id>`) the month of a backend's spend cap.
    pub fn budget(&self, owner: &str, window: &str) -> String {
        format!("{}budget:{owner}:{window}", self.prefix)
    }

    pub fn instances(&self) -> String {
        format!("{}instances", self.prefix)
    }

    /// The pub/sub channel of cooldown changes.
    pub fn channel(&self) -> String {
        format!("{}cooldown", self.prefix)
    }
}

/// The cooldown fields every admit and report reply carries, in Redis time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RemoteCooldown {
    pub now_ms: i64,
    pub until_ms: i64,
    pub level: i64,
    pub broken: i64,
    pub seq: i64,
    pub reason: i64,
}

impl RemoteCooldown {
    /// From `[now_ms, until_ms, level, broken, seq, reason]`.
    pub fn from_fields(fields: &[i64]) -> Option<RemoteCooldown> {
        let &[now_ms, until_ms, level, broken, seq, reason] = fields else {
            return None;
        };
        Some(RemoteCooldown {
            now_ms,
            until_ms,
            level,
            broken,
            seq,
            reason,
        })
    }

    /// The same deadline in this instance's monotonic time: `until - redis now` from `now`, so
    /// clock differences between hosts do not matter (only the reply's travel time does).
    pub fn to_local(self, now: Instant) -> SharedCooldown {
        let until = (self.until_ms >= 0).then(|| {
            let delta = self.until_ms - self.now_ms;
            let magnitude = Duration::from_millis(delta.unsigned_abs());
            if delta >= 0 {
                now + magnitude
            } else {
                // Expired (half-open): keep it in the past.
                now.checked_sub(magnitude).unwrap_or(now)
            }
        });
        SharedCooldown {
            view: CooldownView {
                until,
                level: u32::try_from(self.level).unwrap_or(u32::MAX),
                broken: self.broken == 1,
                reason: reason_from_code(self.reason),
            },
            seq: u64::try_from(self.seq).unwrap_or(0),
        }
    }
}

fn reason_from_code(code: i64) -> Option<CooldownReason> {
    match code {
        1 => Some(CooldownReason::RateLimited),
        2 => Some(CooldownReason::ServerError),
        3 => Some(CooldownReason::AuthFailed),
        _ => None,
    }
}

/// The admit script's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AdmitReply {
    /// `tokens_left` and `granted` (the allowance granted) hold one figure per bucket.
    Admitted {
        probe: bool,
        tokens_left: Vec<i64>,
        granted: Vec<i64>,
    },
    Limited {
        bucket: usize,
        wait: Duration,
    },
    Cooling,
    ProbeInFlight {
        held_for: Duration,
    },
    Broken,
    GivenBack,
}

/// Parses `{code, detail, now_ms, until_ms, level, broken, seq, reason, extra...}` of an
/// admission of `buckets` buckets.
pub(super) fn parse_admit(reply: &[i64], buckets: usize) -> Option<(AdmitReply, RemoteCooldown)> {
    let (&code, rest) = reply.split_first()?;
    let (&detail, rest) = rest.split_first()?;
    let cooldown = RemoteCooldown::from_fields(rest.get(..6)?)?;
    let extra = rest.get(6..)?;
    let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let parsed = match code {
        0 | 1 => {
            if extra.len() != 2 * buckets {
                return None;
            }
            let (tokens_left, granted) = extra.split_at(buckets);
            AdmitReply::Admitted {
                probe: code == 1,
                tokens_left: tokens_left.to_vec(),
                granted: granted.to_vec(),
            }
        }
        2 => AdmitReply::Limited {
            // 1-based in Lua.
            bucket: usize::try_from(detail).ok()?.checked_sub(1)?,
            wait: Duration::from_micros(u64::try_from(*extra.first()?).unwrap_or(0)),
        },
        3 => AdmitReply::Cooling,
        4 => AdmitReply::ProbeInFlight {
            held_for: millis(detail),
        },
        5 => AdmitReply::Broken,
        6 => AdmitReply::GivenBack,
        _ => return None,
    };
    Some((parsed, cooldown))
}

/// Parses a report reply `{changed, now_ms, until_ms, level, broken, seq, reason}`.
pub(super) fn parse_report(reply: &[i64]) -> Option<RemoteCooldown> {
    RemoteCooldown::from_fields(reply.get(1..7)?)
}

/// Parses a change message `v1 <seq> <now_ms> <until_ms> <level> <broken> <reason> <backend>`.
pub(super) fn parse_message(payload: &str) -> Option<(BackendId, RemoteCooldown)> {
    let mut parts = payload.splitn(8, ' ');
    if parts.next()? != "v1" {
        return None;
    }
    let mut fields = [0_i64; 6];
    for field in &mut fields {
        *field = parts.next()?.parse().ok()?;
    }
    let [seq, now_ms, until_ms, level, broken, reason] = fields;
    let backend = BackendId::new(parts.next()?);
    let cooldown = RemoteCooldown::from_fields(&[now_ms, until_ms, level, broken, seq, reason])?;
    Some((backend, cooldown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_foreign_versions_are_ignored() {
        let (backend, cooldown) =
            parse_message("v1 17 1000 4000 2 0 1 backend with spaces").unwrap();
        assert_eq!(backend.as_str(), "backend with spaces");
        assert_eq!(
            cooldown,
            RemoteCooldown {
                now_ms: 1000,
                until_ms: 4000,
                level: 2,
                broken: 0,
                seq: 17,
                reason: 1
            }
        );
        assert!(parse_message("v2 17 1000 4000 2 0 1 b").is_none());
        assert!(parse_message("v1 17 1000").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_become_local_instants_relative_to_the_redis_clock() {
        let now = Instant::now();
        let remote = |until_ms| RemoteCooldown {
            now_ms: 10_000,
            until_ms,
            level: 1,
            broken: 0,
            seq: 3,
            reason: 1,
        };
        let running = remote(13_000).to_local(now);
        assert_eq!(running.view.until, Some(now + Duration::from_secs(3)));
        assert_eq!(running.view.reason, Some(CooldownReason::RateLimited));
        assert_eq!(running.seq, 3);
        let expired = remote(9_000).to_local(now);
        assert!(expired.view.until.is_some_and(|until| until <= now));
        assert_eq!(remote(-1).to_local(now).view.until, None);
    }

    #[test]
    fn admit_replies_parse() {
        let cooldown = [5, -1, 0, 0, 0, 0];
        let with = |head: &[i64], extra: &[i64]| {
            let mut reply = head.to_vec();
            reply.extend_from_slice(&cooldown);
            reply.extend_from_slice(extra);
            parse_admit(&reply, 2).unwrap().0
        };
        assert_eq!(
            with(&[1, 0], &[3, 9, 0, 4]),
            AdmitReply::Admitted {
                probe: true,
                tokens_left: vec![3, 9],
                granted: vec![0, 4]
            }
        );
        assert_eq!(
            with(&[2, 2], &[1_500]),
            AdmitReply::Limited {
                bucket: 1,
                wait: Duration::from_micros(1_500)
            }
        );
        assert!(parse_admit(&[0, 0, 1], 2).is_none());
        assert!(parse_admit(&[9, 0, 5, -1, 0, 0, 0, 0], 2).is_none());
        // An admission's figures must cover every bucket (a v1 reply has no grants).
        assert!(parse_admit(&[0, 0, 5, -1, 0, 0, 0, 0, 3, 9], 2).is_none());
    }
}
