//! The rules for values users hand us — admin API, config file and command line alike: one
//! validator per field, each naming the field (its JSON path) when the value breaks a rule.

use super::{ModelMappings, ModelPattern, UpstreamTemplate};

/// A rule a user-supplied value broke; `field` is the JSON path of the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A config value that is either literal or `env:VAR` (read from `env`); a variable that is not
/// set is an error naming `field`.
pub fn literal_or_env(
    field: &str,
    value: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Invalid> {
    match value.strip_prefix("env:") {
        Some(var) => env(var)
            .ok_or_else(|| Invalid::new(field, format!("environment variable `{var}` is not set"))),
        None => Ok(value),
    }
}

/// Backend and pool names: 1–64 chars of letters, digits, `-`, `_`, `.`.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 64 {
        return Err(Invalid::new(field, "must be 1 to 64 characters long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Invalid::new(
            field,
            "may contain only letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}

/// An absolute `http(s)` URL with a host and no query or fragment; returned without a trailing `/`.
pub fn normalize_base_url(field: &str, text: &str) -> Result<String, Invalid> {
    let parsed = url::Url::parse(text.trim())
        .map_err(|error| Invalid::new(field, format!("is not a valid URL ({error})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Invalid::new(field, "must use http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new(field, "must have a host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Invalid::new(field, "must not have a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Invalid::new(
            field,
            "must not carry credentials; use `api_key`",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Model names: 1–256 printable characters without whitespace.
pub fn validate_model_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 256 {
        return Err(Invalid::new(field, "must be 1 to 256 characters long"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// `timeout_seconds`: 1 to 3600.
pub fn validate_timeout(field: &str, seconds: i64) -> Result<u32, Invalid> {
    if !(1..=3600).contains(&seconds) {
        return Err(Invalid::new(field, "must be between 1 and 3600 seconds"));
    }
    u32::try_from(seconds).map_err(|_| Invalid::new(field, "out of range"))
}

/// `rpm_limit`: 0 (unlimited) to 10 000 000.
/// `max_parallel_requests`: 0 (unlimited) to 100000.
pub fn validate_concurrency(field: &str, limit: i64) -> Result<u32, Invalid> {
    if !(0..=100_000).contains(&limit) {
        return Err(Invalid::new(
            field,
            "must be between 0 and 100000 (0 means unlimited)",
        ));
    }
    u32::try_from(limit).map_err(|_| Invalid::new(field, "out of range"))
}

pub fn validate_rpm(field: &str, rpm: i64) -> Result<u32, Invalid> {
    if rpm < 0 {
        return Err(Invalid::new(
            field,
            "must not be negative (0 means unlimited)",
        ));
    }
    if rpm > 10_000_000 {
        return Err(Invalid::new(field, "must be at most 10000000"));
    }
    u32::try_from(rpm).map_err(|_| Invalid::new(field, "out of range"))
}

/// The largest `tpm_limit`: what a shared (Redis) bucket keeps exactly
/// ([`crate::shared::MAX_PER_MINUTE`]), so a limit means the same in single and cluster mode.
pub const MAX_TPM_LIMIT: i64 = 150_000_000;

/// `tpm_limit`: 0 (unlimited) to [`MAX_TPM_LIMIT`] tokens per minute.
pub fn validate_tpm(field: &str, tpm: i64) -> Result<u32, Invalid> {
    if tpm < 0 {
        return Err(Invalid::new(
            field,
            "must not be negative (0 means unlimited)",
        ));
    }
    if tpm > MAX_TPM_LIMIT {
        return Err(Invalid::new(
            field,
            "must be at most 150000000 tokens per minute",
        ));
    }
    u32::try_from(tpm).map_err(|_| Invalid::new(field, "out of range"))
}

/// `weight`: 1 to 100.
pub fn validate_weight(field: &str, weight: i64) -> Result<u32, Invalid> {
    if !(1..=100).contains(&weight) {
        return Err(Invalid::new(field, "must be between 1 and 100"));
    }
    u32::try_from(weight).map_err(|_| Invalid::new(field, "out of range"))
}

/// Upstream API key: 1–4096 chars, no whitespace or control characters.
pub fn validate_api_key(field: &str, key: &str) -> Result<(), Invalid> {
    if key.is_empty() || key.len() > 4096 {
        return Err(Invalid::new(field, "must be 1 to 4096 characters long"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// A client key's name: 1–128 characters (trimmed); returns it trimmed.
pub fn validate_key_name(field: &str, name: &str) -> Result<String, Invalid> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(Invalid::new(field, "must be 1 to 128 characters long"));
    }
    Ok(name.to_owned())
}

/// A pool's priority: -1 000 000 to 1 000 000.
pub fn validate_priority(field: &str, priority: i64) -> Result<i64, Invalid> {
    if !(-1_000_000..=1_000_000).contains(&priority) {
        return Err(Invalid::new(field, "must be between -1000000 and 1000000"));
    }
    Ok(priority)
}

/// Every mapping's names are valid; a key ending in `*` is a wildcard whose upstream model may
/// end in `*` too (the matched rest).
pub fn validate_mappings(field: &str, mappings: &ModelMappings) -> Result<(), Invalid> {
    for (canonical, mapping) in mappings {
        let key_field = format!("{field}.{canonical}");
        validate_model_name(&key_field, canonical.as_str())?;
        let upstream_field = format!("{key_field}.upstream_model");
        let upstream = mapping.upstream_model.as_str();
        let pattern = ModelPattern::parse(canonical.as_str())
            .map_err(|error| Invalid::new(&key_field, error.to_string()))?;
        UpstreamTemplate::parse(pattern, upstream)
            .map_err(|error| Invalid::new(&upstream_field, error.to_string()))?;
        validate_model_name(&upstream_field, upstream)?;
    }
    Ok(())
}

/// `metadata` must be a JSON object of at most 16 KiB.
pub fn validate_metadata(field: &str, metadata: &serde_json::Value) -> Result<(), Invalid> {
    if !metadata.is_object() {
        return Err(Invalid::new(field, "must be a JSON object"));
    }
    if metadata.to_string().len() > 16 * 1024 {
        return Err(Invalid::new(field, "must be at most 16 KiB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_normalized_and_checked() {
        assert_eq!(
            normalize_base_url("u", "https://api.openai.com/v1/").unwrap(),
            "https://api.openai.com/v1"
        );
        assert!(normalize_base_url("u", "ftp://x").is_err());
        assert!(normalize_base_url("u", "not a url").is_err());
        assert!(normalize_base_url("u", "http://h/v1?x=1").is_err());
        assert!(normalize_base_url("u", "http://user:pw@h/v1").is_err());
    }

    #[test]
    fn names_and_numbers_are_checked() {
        assert!(validate_name("n", "openai-1").is_ok());
        assert!(validate_name("n", "").is_err());
        assert!(validate_name("n", "a b").is_err());
        assert_eq!(validate_rpm("r", 0).unwrap(), 0);
        assert!(validate_rpm("r", -1).is_err());
        assert!(validate_timeout("t", 0).is_err());
        assert!(validate_weight("w", 101).is_err());
    }
}
