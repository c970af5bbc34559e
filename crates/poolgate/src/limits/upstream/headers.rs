//! Reading the rate-limit figures an upstream sends on every answer into one
//! [`UpstreamLimits`] with absolute reset moments.
//!
//! - **OpenAI-compatible** (OpenAI, Azure, Groq, many proxies): `x-ratelimit-limit-requests`,
//!   `x-ratelimit-limit-tokens`, `x-ratelimit-remaining-requests`,
//!   `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens`.
//!   Resets are Go-style durations from now: `1s`, `6m0s`, `20ms`, `1h2m3.5s`, `0.5s`, `150us`;
//!   a plain number is read as seconds.
//! - **Anthropic**: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
//!   remaining,reset}`, resets as RFC 3339 times (`2026-11-29T10:00:30Z`).
//!
//! Garbage never fails a request: a value that does not parse is ignored on its own (its window
//! keeps the figures that did parse), counts must be plain non-negative integers, and a reset is
//! clamped to between now and [`MAX_RESET`] ahead (an RFC 3339 time in the past is "now").

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderMap;
use serde::Serialize;
use tokio::time::Instant;

/// The furthest ahead a reset may lie; later ones are clamped (a daily limit resets within a day).
pub const MAX_RESET: Duration = Duration::from_secs(24 * 60 * 60);

/// One moment on both clocks: the monotonic one for deciding, the wall clock for showing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    pub instant: Instant,
    pub at: DateTime<Utc>,
}

impl Moment {
    /// The current moment.
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            at: Utc::now(),
        }
    }

    /// This moment plus `delay`, on both clocks.
    pub fn after(self, delay: Duration) -> Self {
        let wall = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        Self {
            instant: self.instant + delay,
            at: self.at.checked_add_signed(wall).unwrap_or(self.at),
        }
    }
}

/// The figures of one limit window (requests, tokens, …) as last sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LimitWindow {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// When the window refills completely (RFC 3339).
    #[serde(serialize_with = "serialize_reset")]
    #[schema(value_type = Option<String>)]
    pub reset_at: Option<Moment>,
}

fn serialize_reset<S: serde::Serializer>(
    reset: &Option<Moment>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    reset.map(|moment| moment.at).serialize(serializer)
}

impl LimitWindow {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset_at.is_none()
    }
}

/// Everything one answer said about the upstream's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// When the answer was received (resets are relative to it).
    pub observed: Moment,
    pub requests: Option<LimitWindow>,
    /// OpenAI's combined token window; Anthropic's `tokens` (the most restrictive of its input
    /// and output windows).
    pub tokens: Option<LimitWindow>,
    /// Anthropic only.
    pub input_tokens: Option<LimitWindow>,
    /// Anthropic only.
    pub output_tokens: Option<LimitWindow>,
}

/// How one provider family names a window's three headers.
struct Names {
    limit: &'static str,
    remaining: &'static str,
    reset: &'static str,
}

const OPENAI_REQUESTS: Names = Names {
    limit: "x-ratelimit-limit-requests",
    remaining: "x-ratelimit-remaining-requests",
    reset: "x-ratelimit-reset-requests",
};
const OPENAI_TOKENS: Names = Names {
    limit: "x-ratelimit-limit-tokens",
    remaining: "x-ratelimit-remaining-tokens",
    reset: "x-ratelimit-reset-tokens",
};

macro_rules! anthropic_names {
    ($window:literal) => {
        Names {
            limit: concat!("anthropic-ratelimit-", $window, "-limit"),
            remaining: concat!("anthropic-ratelimit-", $window, "-remaining"),
            reset: concat!("anthropic-ratelimit-", $window, "-reset"),
        }
    };
}

const ANTHROPIC_REQUESTS: Names = anthropic_names!("requests");
const ANTHROPIC_TOKENS: Names = anthropic_names!("tokens");
const ANTHROPIC_INPUT_TOKENS: Names = anthropic_names!("input-tokens");
const ANTHROPIC_OUTPUT_TOKENS: Names = anthropic_names!("output-tokens");

/// How a reset header is written.
#[derive(Clone, Copy)]
enum ResetFormat {
    /// A Go duration from now (OpenAI).
    Duration,
    /// An RFC 3339 time (Anthropic).
    Rfc3339,
}

impl UpstreamLimits {
    /// Whether `headers` has a header named like a rate limit at all. Most answers carry none:
    /// one pass over the names (a handful) says so before eighteen lookups by name, each hashing
    /// its name, and before the clocks are read for a [`Moment`].
    pub fn may_be_in(headers: &HeaderMap) -> bool {
        headers.keys().any(|name| {
            let name = name.as_str();
            name.starts_with("x-ratelimit-") || name.starts_with("anthropic-ratelimit-")
        })
    }

    /// The limits in `headers`, received at `observed`; `None` when the answer carries no
    /// rate-limit header that parses.
    pub fn from_headers(headers: &HeaderMap, observed: Moment) -> Option<UpstreamLimits> {
        if !Self::may_be_in(headers) {
            return None;
        }
        let window = |names: &Names, format: ResetFormat| {
            read_window(headers, names, format, observed).filter(|w| !w.is_empty())
        };
        let limits = UpstreamLimits {
            observed,
            requests: window(&OPENAI_REQUESTS, ResetFormat::Duration)
                .or_else(|| window(&ANTHROPIC_REQUESTS, ResetFormat::Rfc3339)),
            tokens: window(&OPENAI_TOKENS, ResetFormat::Duration)
                .or_else(|| window(&ANTHROPIC_TOKENS, ResetFormat::Rfc3339)),
            input_tokens: window(&ANTHROPIC_INPUT_TOKENS, ResetFormat::Rfc3339),
            output_tokens: window(&ANTHROPIC_OUTPUT_TOKENS, ResetFormat::Rfc3339),
        };
        let any = [
            limits.requests,
            limits.tokens,
            limits.input_tokens,
            limits.output_tokens,
        ]
        .iter()
        .any(Option::is_some);
        any.then_some(limits)
    }
}

fn read_window(
    headers: &HeaderMap,
    names: &Names,
    format: ResetFormat,
    observed: Moment,
) -> Option<LimitWindow> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let count = |name: &str| text(name)?.parse::<u64>().ok();
    let reset = text(names.reset).and_then(|value| {
        let delay = match format {
            ResetFormat::Duration => parse_go_duration(value)?,
            ResetFormat::Rfc3339 => {
                let at = DateTime::parse_from_rfc3339(value)
                    .ok()?
                    .with_timezone(&Utc);
                (at - observed.at).to_std().unwrap_or(Duration::ZERO)
            }
        };
        Some(observed.after(delay.min(MAX_RESET)))
    });
    Some(LimitWindow {
        limit: count(names.limit),
        remaining: count(names.remaining),
        reset_at: reset,
    })
}

/// A Go-style duration (`1h2m3.5s`, `6m0s`, `20ms`, `0.5s`, `150us`, `0`), or a plain number
/// of seconds (`1.5`), clamped to [`MAX_RESET`]. No signs or exponents; `None` for anything else.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let max = MAX_RESET.as_nanos();
    let mut rest = text;
    let mut total: u128 = 0;
    let mut components = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            // A bare number is seconds, but only on its own (`1.5`, not `1m30`).
            "" if components == 0 && next.is_empty() => 1_000_000_000,
            _ => return None,
        };
        total = total.saturating_add(scaled_decimal(number, unit_nanos, max)?);
        components += 1;
        rest = next;
    }
    if components == 0 {
        return None;
    }
    Some(Duration::from_nanos(
        u64::try_from(total.min(max)).unwrap_or(u64::MAX),
    ))
}

/// `number` (digits with at most one `.`, at least one digit) × `unit_nanos`, exact to the
/// nanosecond, saturating just above `max`.
fn scaled_decimal(number: &str, unit_nanos: u128, max: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.len() + fraction.len() == 0 || fraction.contains('.') {
        return None;
    }
    let mut nanos: u128 = 0;
    for digit in whole.bytes() {
        nanos = (nanos * 10 + u128::from(digit - b'0') * unit_nanos).min(max + 1);
    }
    let mut place = unit_nanos;
    for digit in fraction.bytes() {
        place /= 10;
        nanos += u128::from(digit - b'0') * place;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::super::{test_headers as headers, test_moment as observed};
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn ms(millis: u64) -> Option<Duration> {
        Some(Duration::from_millis(millis))
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), ms(1_000));
        assert_eq!(parse_go_duration("6m0s"), ms(360_000));
        assert_eq!(parse_go_duration("20ms"), ms(20));
        assert_eq!(parse_go_duration("1h2m3.5s"), ms(3_723_500));
        assert_eq!(parse_go_duration("0.5s"), ms(500));
        assert_eq!(parse_go_duration("2m59.56s"), ms(179_560));
        assert_eq!(parse_go_duration("150us"), Some(Duration::from_micros(150)));
        assert_eq!(parse_go_duration("150µs"), Some(Duration::from_micros(150)));
        assert_eq!(parse_go_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_go_duration(".5s"), ms(500));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(
            parse_go_duration("12"),
            ms(12_000),
            "a bare number is seconds"
        );
        assert_eq!(parse_go_duration("1.25"), ms(1_250));
        assert_eq!(parse_go_duration("48h"), Some(MAX_RESET), "clamped");
        assert_eq!(
            parse_go_duration("99999999999999999999999999999999999h"),
            Some(MAX_RESET)
        );
        for bad in [
            "", "s", "-1s", "+1s", "1x", "1m30", "1..5s", "1.5.s", "1e3s", "1 s", "inf", "1h-2m",
            "ms5", "1sm",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn openai_headers() {
        let now = observed();
        let limits = UpstreamLimits::from_headers(
            &headers(&[
                ("x-ratelimit-limit-requests", "10000"),
                ("x-ratelimit-limit-tokens", "30000000"),
                ("x-ratelimit-remaining-requests", "9999"),
                ("x-ratelimit-remaining-tokens", "29999977"),
                ("x-ratelimit-reset-requests", "6ms"),
                ("x-ratelimit-reset-tokens", "1h2m3.5s"),
            ]),
            now,
        )
        .unwrap();
        let requests = limits.requests.unwrap();
        assert_eq!(requests.limit, Some(10_000));
        assert_eq!(requests.remaining, Some(9_999));
        let reset = requests.reset_at.unwrap();
        assert_eq!(reset.instant, now.instant + Duration::from_millis(6));
        assert_eq!(
            reset
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "2026-11-29T10:00:00.006Z"
        );
        let tokens = limits.tokens.unwrap();
        assert_eq!(tokens.remaining, Some(29_999_977));
        assert_eq!(
            tokens.reset_at.unwrap().instant,
            now.instant + Duration::from_millis(3_723_500)
        );
        assert_eq!(limits.input_tokens, None);
        assert_eq!(limits.observed, now);
    }

    #[test]
    fn anthropic_headers() {
        let now = observed();
        let limits = UpstreamLimits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-11-29T10:00:30Z"),
                ("anthropic-ratelimit-tokens-limit", "80000"),
                ("anthropic-ratelimit-tokens-remaining", "79000"),
                (
                    "anthropic-ratelimit-tokens-reset",
                    "2026-11-29T11:00:00+01:00",
                ),
                ("anthropic-ratelimit-input-tokens-limit", "40000"),
                ("anthropic-ratelimit-input-tokens-remaining", "39000"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2026-11-29T09:59:00Z",
                ),
                ("anthropic-ratelimit-output-tokens-limit", "8000"),
                ("anthropic-ratelimit-output-tokens-remaining", "8000"),
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2026-11-29T10:00:01.5Z",
                ),
            ]),
            now,
        )
        .unwrap();
        let requests = limits.requests.unwrap();
        assert_eq!((requests.limit, requests.remaining), (Some(50), Some(0)));
        assert_eq!(
            requests.reset_at.unwrap().instant,
            now.instant + Duration::from_secs(30)
        );
        // 11:00 at +01:00 is 10:00 UTC: the observation moment itself.
        assert_eq!(
            limits.tokens.unwrap().reset_at.unwrap().instant,
            now.instant
        );
        // A reset in the past (clock skew) is "now", never before it.
        assert_eq!(
            limits.input_tokens.unwrap().reset_at.unwrap().instant,
            now.instant
        );
        assert_eq!(
            limits.output_tokens.unwrap().reset_at.unwrap().instant,
            now.instant + Duration::from_millis(1_500)
        );
    }

    #[test]
    fn garbage_is_ignored_value_by_value() {
        let now = observed();
        assert_eq!(UpstreamLimits::from_headers(&HeaderMap::new(), now), None);
        let unrelated = headers(&[("content-type", "application/json"), ("x-request-id", "r1")]);
        assert_eq!(UpstreamLimits::from_headers(&unrelated, now), None);
        assert_eq!(
            UpstreamLimits::from_headers(
                &headers(&[
                    ("x-ratelimit-remaining-requests", "-3"),
                    ("x-ratelimit-reset-requests", "soon"),
                    ("anthropic-ratelimit-tokens-reset", "tomorrow"),
                ]),
                now
            ),
            None
        );
        let limits = UpstreamLimits::from_headers(
            &headers(&[
                ("x-ratelimit-remaining-tokens", " 12 "),
                ("x-ratelimit-limit-tokens", "1.5"),
                ("x-ratelimit-reset-tokens", "3s"),
            ]),
            now,
        )
        .unwrap();
        let tokens = limits.tokens.unwrap();
        assert_eq!(tokens.remaining, Some(12));
        assert_eq!(tokens.limit, None);
        assert!(tokens.reset_at.is_some());
        assert_eq!(limits.requests, None);
    }

    #[test]
    fn window_serializes_with_wall_clock_reset() {
        let now = observed();
        let window = LimitWindow {
            limit: Some(10),
            remaining: Some(0),
            reset_at: Some(now.after(Duration::from_secs(2))),
        };
        assert_eq!(
            serde_json::to_value(window).unwrap(),
            serde_json::json!({"limit": 10, "remaining": 0, "reset_at": "2026-11-29T10:00:02Z"})
        );
    }

    proptest! {
        #[test]
        fn go_durations_round_trip(h in 0_u64..24, m in 0_u64..60, s in 0_u64..60, ms in 0_u64..1000) {
            let text = format!("{h}h{m}m{s}.{ms:03}s");
            let expected = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            prop_assert_eq!(parse_go_duration(&text), Some(expected));
        }

        /// Any header value, under any of the names, never panics and never yields a reset
        /// before the observation or beyond the clamp.
        #[test]
        fn never_panics_on_garbage(
            values in proptest::collection::vec("[ -~µμ]{0,24}", 12),
            raw in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let now = observed();
            let names = [OPENAI_REQUESTS, OPENAI_TOKENS, ANTHROPIC_REQUESTS, ANTHROPIC_TOKENS];
            let mut map = HeaderMap::new();
            for (i, value) in values.iter().enumerate() {
                let names = &names[i % 4];
                let name = [names.limit, names.remaining, names.reset][i % 3];
                if let Ok(value) = HeaderValue::from_str(value) {
                    map.append(name, value);
                }
            }
            if let Ok(value) = HeaderValue::from_bytes(&raw) {
                map.insert("x-ratelimit-reset-tokens", value.clone());
                map.insert("anthropic-ratelimit-requests-reset", value);
            }
            let _ = parse_go_duration(&String::from_utf8_lossy(&raw));
            if let Some(limits) = UpstreamLimits::from_headers(&map, now) {
                for window in [limits.requests, limits.tokens, limits.input_tokens, limits.output_tokens]
                    .into_iter()
                    .flatten()
                {
                    if let Some(reset) = window.reset_at {
                        prop_assert!(reset.instant >= now.instant);
                        prop_assert!(reset.instant <= now.instant + MAX_RESET);
                    }
                }
            }
        }
    }
}
