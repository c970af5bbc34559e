//! Validation of the raw config sections into their settings; errors name the path
//! (`proxy.max_attempts`, `backends[1].rpm_limit`).

use std::time::Duration;

use secrecy::SecretString;

use super::raw::{RawBackend, RawCooldown, RawProxy};
use super::{BackendSpec, ProxySettings, DEFAULT_TIMEOUT_SECONDS};
use crate::cooldown::CooldownPolicy;
use crate::domain::{
    normalize_base_url, validate_api_key, validate_mappings, validate_metadata,
    validate_model_name, validate_name, validate_rpm, validate_timeout, validate_weight,
    CanonicalModel, Invalid, ModelMappings, PoolName,
};

pub fn validate_proxy(raw: RawProxy) -> Result<ProxySettings, Invalid> {
    let defaults = ProxySettings::default();
    let max_attempts = raw.max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=20).contains(&max_attempts) {
        return Err(Invalid::new(
            "proxy.max_attempts",
            "must be between 1 and 20",
        ));
    }
    let max_wait_ms = raw.max_wait_ms.unwrap_or(0);
    if max_wait_ms > 600_000 {
        return Err(Invalid::new("proxy.max_wait_ms", "must be at most 600000"));
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(defaults.max_body_bytes);
    if !(1024..=1024 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(Invalid::new(
            "proxy.max_body_bytes",
            "must be between 1024 and 1073741824",
        ));
    }
    let seconds = |field: &str, value: Option<u64>, default: Duration| match value {
        None => Ok(default),
        Some(0) => Err(Invalid::new(field, "must be at least 1 second")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    };
    let anthropic_default_max_tokens = raw
        .anthropic_default_max_tokens
        .unwrap_or(defaults.anthropic_default_max_tokens);
    if anthropic_default_max_tokens == 0 {
        return Err(Invalid::new(
            "proxy.anthropic_default_max_tokens",
            "must be at least 1",
        ));
    }
    Ok(ProxySettings {
        max_attempts,
        max_wait: Duration::from_millis(max_wait_ms),
        max_body_bytes,
        connect_timeout: seconds(
            "proxy.connect_timeout_seconds",
            raw.connect_timeout_seconds,
            defaults.connect_timeout,
        )?,
        stream_idle_timeout: seconds(
            "proxy.stream_idle_timeout_seconds",
            raw.stream_idle_timeout_seconds,
            defaults.stream_idle_timeout,
        )?,
        inject_stream_usage: raw
            .inject_stream_usage
            .unwrap_or(defaults.inject_stream_usage),
        shutdown_grace: seconds(
            "proxy.shutdown_grace_seconds",
            raw.shutdown_grace_seconds,
            defaults.shutdown_grace,
        )?,
        anthropic_default_max_tokens,
    })
}

pub fn validate_cooldown(raw: RawCooldown) -> Result<CooldownPolicy, Invalid> {
    let defaults = CooldownPolicy::default();
    let duration = |field: &str, value: Option<f64>, default: Duration| match value {
        None => Ok(default),
        Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
            Ok(Duration::from_secs_f64(secs))
        }
        Some(_) => Err(Invalid::new(
            field,
            "must be a number of seconds in (0, 86400]",
        )),
    };
    let base = duration("cooldown.base_seconds", raw.base_seconds, defaults.base)?;
    let max = duration("cooldown.max_seconds", raw.max_seconds, defaults.max)?;
    if max < base {
        return Err(Invalid::new(
            "cooldown.max_seconds",
            "must not be smaller than `cooldown.base_seconds`",
        ));
    }
    let jitter = raw.jitter.unwrap_or(defaults.jitter);
    if !(0.0..=1.0).contains(&jitter) {
        return Err(Invalid::new("cooldown.jitter", "must be between 0 and 1"));
    }
    Ok(CooldownPolicy {
        base,
        max,
        jitter,
        error_cooldown: duration(
            "cooldown.error_seconds",
            raw.error_seconds,
            defaults.error_cooldown,
        )?,
    })
}

pub fn validate_backend(
    i: usize,
    raw: RawBackend,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BackendSpec, Invalid> {
    let at = |field: &str| format!("backends[{i}].{field}");
    validate_name(&at("name"), &raw.name)?;
    let api_base_url = normalize_base_url(&at("api_base_url"), &raw.api_base_url)?;
    let api_key = match raw.api_key.strip_prefix("env:") {
        Some(var) => env(var).ok_or_else(|| {
            Invalid::new(
                at("api_key"),
                format!("environment variable `{var}` is not set"),
            )
        })?,
        None => raw.api_key,
    };
    validate_api_key(&at("api_key"), &api_key)?;
    let pool = raw.pool.unwrap_or_else(|| "primary".to_owned());
    validate_name(&at("pool"), &pool)?;
    let mut model_mappings = ModelMappings::new();
    for (canonical, mapping) in raw.model_mappings {
        validate_model_name(&at(&format!("model_mappings.{canonical}")), &canonical)?;
        model_mappings.insert(CanonicalModel::new(canonical), mapping.into_mapping());
    }
    validate_mappings(&at("model_mappings"), &model_mappings)?;
    let metadata = raw
        .metadata
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    validate_metadata(&at("metadata"), &metadata)?;
    Ok(BackendSpec {
        label: if raw.label.is_empty() {
            raw.name.clone()
        } else {
            raw.label
        },
        name: raw.name,
        api_base_url,
        api_key: SecretString::from(api_key),
        api: raw.api,
        timeout_seconds: validate_timeout(
            &at("timeout_seconds"),
            raw.timeout_seconds
                .unwrap_or(i64::from(DEFAULT_TIMEOUT_SECONDS)),
        )?,
        rpm_limit: validate_rpm(&at("rpm_limit"), raw.rpm_limit)?,
        weight: validate_weight(&at("weight"), raw.weight.unwrap_or(1))?,
        pool: PoolName::new(pool),
        enabled: raw.enabled.unwrap_or(true),
        model_mappings,
        metadata,
    })
}
