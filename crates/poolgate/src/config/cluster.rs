//! The settings of running several instances together: this instance's id, the database pool and
//! its change backstop (`[database]`), and the shared runtime state in Redis (`[redis]`,
//! `--redis-url`). Errors name the key (`redis.call_timeout_ms`).

use std::time::Duration;

use secrecy::SecretString;

use super::raw::{RawDatabase, RawRedis};
use crate::domain::Invalid;

/// `hostname-pid`, the default instance id.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "poolgate".to_owned());
    format!("{host}-{}", std::process::id())
}

/// An instance id: 1–100 visible ASCII characters without spaces (it ends up in logs, in Redis
/// keys' members and in the admin API).
pub fn validate_instance_id(field: &str, id: &str) -> Result<String, Invalid> {
    let id = id.trim();
    if id.is_empty() || id.len() > 100 || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Invalid::new(
            field,
            "must be 1 to 100 visible ASCII characters without spaces",
        ));
    }
    Ok(id.to_owned())
}

/// The database connection pool and the change backstop.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    /// Connections of a PostgreSQL pool (SQLite keeps its own small pool).
    pub max_connections: u32,
    /// How often the stored configuration version is compared with the loaded one (PostgreSQL).
    pub config_poll: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            config_poll: Duration::from_secs(1),
        }
    }
}

pub fn validate_database(raw: RawDatabase) -> Result<DatabaseSettings, Invalid> {
    let defaults = DatabaseSettings::default();
    let max_connections = raw.max_connections.unwrap_or(defaults.max_connections);
    if !(2..=1000).contains(&max_connections) {
        return Err(Invalid::new(
            "database.max_connections",
            "must be between 2 and 1000",
        ));
    }
    let config_poll = millis(
        "database.config_poll_ms",
        raw.config_poll_ms,
        defaults.config_poll,
        100..=60_000,
    )?;
    Ok(DatabaseSettings {
        max_connections,
        config_poll,
    })
}

/// Shared runtime state in Redis (present when a Redis URL is configured).
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// May hold a password: never printed.
    pub url: SecretString,
    pub key_prefix: String,
    /// The longest one Redis call may take before the instance answers locally.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// Consecutive failed calls that switch the instance to degraded mode.
    pub breaker_failures: u32,
    /// How long degraded mode lasts before one trial call.
    pub breaker_open_for: Duration,
    pub heartbeat_interval: Duration,
    /// Limits refuse (503) instead of using this instance's share while Redis is unreachable.
    pub fail_closed: bool,
    /// The largest token allowance per bucket leased to this instance (a bucket of `n`/min
    /// leases `min(allowance_max, n / 6000)`); 0 = off, every limited admission calls Redis.
    pub allowance_max: u32,
}

/// The `[redis]` table with `url` (the command line and environment win); `None` without a URL.
pub fn validate_redis(
    raw: Option<RawRedis>,
    url_override: Option<String>,
) -> Result<Option<RedisSettings>, Invalid> {
    let raw = raw.unwrap_or_default();
    let Some(url) = url_override.or(raw.url) else {
        return Ok(None);
    };
    let url = url.trim().to_owned();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(Invalid::new(
            "redis.url",
            "must be a `redis://host:port` URL (or `rediss://` for TLS)",
        ));
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "{poolgate}:".to_owned());
    if key_prefix.is_empty() || key_prefix.len() > 64 || key_prefix.contains(char::is_whitespace) {
        return Err(Invalid::new(
            "redis.key_prefix",
            "must be 1 to 64 characters without spaces",
        ));
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(3);
    if !(1..=100).contains(&breaker_failures) {
        return Err(Invalid::new(
            "redis.breaker_failures",
            "must be between 1 and 100",
        ));
    }
    let allowance_max = raw.allowance_max.unwrap_or(32);
    if allowance_max > 1_000 {
        return Err(Invalid::new(
            "redis.allowance_max",
            "must be between 0 (off) and 1000",
        ));
    }
    Ok(Some(RedisSettings {
        url: SecretString::from(url),
        allowance_max,
        key_prefix,
        call_timeout: millis(
            "redis.call_timeout_ms",
            raw.call_timeout_ms,
            Duration::from_millis(50),
            1..=5_000,
        )?,
        connect_timeout: millis(
            "redis.connect_timeout_ms",
            raw.connect_timeout_ms,
            Duration::from_millis(500),
            1..=30_000,
        )?,
        breaker_failures,
        breaker_open_for: millis(
            "redis.breaker_open_ms",
            raw.breaker_open_ms,
            Duration::from_secs(1),
            10..=60_000,
        )?,
        heartbeat_interval: millis(
            "redis.heartbeat_ms",
            raw.heartbeat_ms,
            Duration::from_secs(1),
            100..=60_000,
        )?,
        fail_closed: raw.fail_closed.unwrap_or(false),
    }))
}

fn millis(
    field: &str,
    value: Option<u64>,
    default: Duration,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, Invalid> {
    match value {
        None => Ok(default),
        Some(ms) if range.contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(_) => Err(Invalid::new(
            field,
            format!(
                "must be between {} and {} milliseconds",
                range.start(),
                range.end()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn redis_is_off_without_a_url_and_the_command_line_wins() {
        assert!(validate_redis(None, None).unwrap().is_none());
        let raw = RawRedis {
            url: Some("redis://file:6379".into()),
            fail_closed: Some(true),
            ..RawRedis::default()
        };
        let settings = validate_redis(Some(raw), Some("redis://flag:6379/2".into()))
            .unwrap()
            .unwrap();
        assert_eq!(settings.url.expose_secret(), "redis://flag:6379/2");
        assert!(settings.fail_closed);
        assert_eq!(settings.call_timeout, Duration::from_millis(50));
        assert_eq!(settings.allowance_max, 32);
        let off = RawRedis {
            allowance_max: Some(0),
            ..RawRedis::default()
        };
        let settings = validate_redis(Some(off), Some("redis://x".into()))
            .unwrap()
            .unwrap();
        assert_eq!(settings.allowance_max, 0);
        let huge = RawRedis {
            allowance_max: Some(1_001),
            ..RawRedis::default()
        };
        let error = validate_redis(Some(huge), Some("redis://x".into())).unwrap_err();
        assert_eq!(error.field, "redis.allowance_max");
    }

    #[test]
    fn bad_values_name_their_key() {
        let error = validate_redis(None, Some("http://x".into())).unwrap_err();
        assert_eq!(error.field, "redis.url");
        let raw = RawRedis {
            call_timeout_ms: Some(0),
            ..RawRedis::default()
        };
        let error = validate_redis(Some(raw), Some("redis://x".into())).unwrap_err();
        assert_eq!(error.field, "redis.call_timeout_ms");
        let raw = RawDatabase {
            max_connections: Some(1),
            ..RawDatabase::default()
        };
        assert_eq!(
            validate_database(raw).unwrap_err().field,
            "database.max_connections"
        );
        assert!(validate_instance_id("instance_id", "a b").is_err());
        assert_eq!(
            validate_instance_id("instance_id", " web-1 ").unwrap(),
            "web-1"
        );
    }
}
