//! Response headers clients read: the OpenAI-style rate-limit headers for the client key's own
//! limits (`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets in OpenAI's duration
//! format: `1s`, `6m0s`, `1h2m3s`, `250ms`), and `retry-after-ms` beside `Retry-After`.
//! The limiter's state comes in as plain numbers, so this module knows no limiter.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub const REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
/// Optional routing headers (`proxy.expose_routing_headers`).
pub const POOLGATE_BACKEND: HeaderName = HeaderName::from_static("x-poolgate-backend");
pub const POOLGATE_ATTEMPTS: HeaderName = HeaderName::from_static("x-poolgate-attempts");

/// A limit's state as the headers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitState {
    /// The limit per window (requests or tokens per minute).
    pub limit: u64,
    /// What the bucket would grant now (whole units).
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Formats a duration the way OpenAI's rate-limit headers do: `250ms` under a second, else
/// hours, minutes and seconds with the largest unit first and seconds always present (`1s`,
/// `6m0s`, `1h0m5s`), seconds with up to three decimals (`1.5s`).
pub fn openai_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        // Round up: "0ms" would invite an immediate retry that fails.
        let millis = duration.as_nanos().div_ceil(1_000_000);
        return format!("{millis}ms");
    }
    let millis = duration.as_millis();
    let hours = millis / 3_600_000;
    let minutes = millis / 60_000 % 60;
    let seconds = millis % 60_000;
    let whole = seconds / 1000;
    let fraction = seconds % 1000;
    let seconds = if fraction == 0 {
        format!("{whole}s")
    } else {
        let digits = format!("{fraction:03}");
        format!("{whole}.{}s", digits.trim_end_matches('0'))
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

fn insert_limit(headers: &mut HeaderMap, names: [HeaderName; 3], state: LimitState) {
    let [limit, remaining, reset] = names;
    headers.insert(limit, HeaderValue::from(state.limit));
    headers.insert(
        remaining,
        HeaderValue::from(state.remaining.min(state.limit)),
    );
    if let Ok(value) = HeaderValue::from_str(&openai_duration(state.reset)) {
        headers.insert(reset, value);
    }
}

/// Adds the `x-ratelimit-*-requests` headers.
pub fn insert_request_limit(headers: &mut HeaderMap, state: LimitState) {
    insert_limit(
        headers,
        [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS],
        state,
    );
}

/// Adds the `x-ratelimit-*-tokens` headers (once per-key TPM limits exist).
pub fn insert_token_limit(headers: &mut HeaderMap, state: LimitState) {
    insert_limit(
        headers,
        [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS],
        state,
    );
}

/// The state of a requests-per-minute token bucket: `rpm` capacity refilled continuously at
/// `rpm / 60` per second, holding `available` tokens (fractional) now. The reset is the time
/// until the bucket is full again.
pub fn rpm_bucket_state(rpm: u32, available: f64) -> LimitState {
    let limit = u64::from(rpm);
    let available = if available.is_finite() {
        available.clamp(0.0, f64::from(rpm))
    } else {
        0.0
    };
    let missing = f64::from(rpm) - available;
    let reset = if rpm == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(missing * 60.0 / f64::from(rpm))
    };
    LimitState {
        limit,
        // Whole tokens only: a request needs one.
        remaining: available.floor() as u64,
        reset,
    }
}

/// Adds `retry-after-ms` (exact, in milliseconds, rounded up) beside the `Retry-After` the
/// error renderer sets (whole seconds, rounded up).
pub fn insert_retry_after_ms(headers: &mut HeaderMap, wait: Duration) {
    let millis = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    headers.insert(RETRY_AFTER_MS, HeaderValue::from(millis));
}

/// Adds `x-poolgate-backend` and `x-poolgate-attempts` (only with
/// `proxy.expose_routing_headers`: backend names can tell clients about the deployment).
pub fn insert_routing(headers: &mut HeaderMap, backend: Option<&str>, attempts: u32) {
    if let Some(value) = backend.and_then(|name| HeaderValue::from_str(name).ok()) {
        headers.insert(POOLGATE_BACKEND, value);
    }
    headers.insert(POOLGATE_ATTEMPTS, HeaderValue::from(attempts));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_openai_format() {
        let cases = [
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(1), "1ms"),
            (Duration::ZERO, "0ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(1234), "1.234s"),
            (Duration::from_secs(59), "59s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(6 * 60_000 + 500), "6m0.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3725), "1h2m5s"),
        ];
        for (duration, expected) in cases {
            assert_eq!(openai_duration(duration), expected, "{duration:?}");
        }
    }

    #[test]
    fn request_limit_headers() {
        let mut headers = HeaderMap::new();
        insert_request_limit(&mut headers, rpm_bucket_state(60, 59.5));
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "59");
        // Half a token missing at one token per second.
        assert_eq!(headers["x-ratelimit-reset-requests"], "500ms");

        let mut headers = HeaderMap::new();
        insert_request_limit(&mut headers, rpm_bucket_state(10, 0.0));
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        // An empty bucket of 10/min refills in a whole minute.
        assert_eq!(headers["x-ratelimit-reset-requests"], "1m0s");

        // Out-of-range fills are clamped.
        let state = rpm_bucket_state(10, 25.0);
        assert_eq!((state.remaining, state.reset), (10, Duration::ZERO));
        assert_eq!(rpm_bucket_state(10, f64::NAN).remaining, 0);
    }

    #[test]
    fn token_limit_headers() {
        let mut headers = HeaderMap::new();
        insert_token_limit(
            &mut headers,
            LimitState {
                limit: 150_000,
                remaining: 149_984,
                reset: Duration::from_millis(6),
            },
        );
        assert_eq!(headers["x-ratelimit-limit-tokens"], "150000");
        assert_eq!(headers["x-ratelimit-remaining-tokens"], "149984");
        assert_eq!(headers["x-ratelimit-reset-tokens"], "6ms");
    }

    #[test]
    fn retry_after_ms_rounds_up() {
        let mut headers = HeaderMap::new();
        insert_retry_after_ms(&mut headers, Duration::from_micros(1_500_001));
        assert_eq!(headers["retry-after-ms"], "1501");
        insert_retry_after_ms(&mut headers, Duration::from_secs(2));
        assert_eq!(headers["retry-after-ms"], "2000");
    }

    #[test]
    fn routing_headers() {
        let mut headers = HeaderMap::new();
        insert_routing(&mut headers, Some("openai-eu"), 2);
        assert_eq!(headers["x-poolgate-backend"], "openai-eu");
        assert_eq!(headers["x-poolgate-attempts"], "2");
        let mut headers = HeaderMap::new();
        insert_routing(&mut headers, None, 0);
        assert!(!headers.contains_key("x-poolgate-backend"));
        assert_eq!(headers["x-poolgate-attempts"], "0");
    }
}
