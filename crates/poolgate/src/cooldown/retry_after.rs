//! Parsing of the upstream's "come back later" hint: `retry-after-ms`, then `Retry-After`.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The longest wait a header may ask for; anything longer is clamped to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
const NANOS_PER_SECOND: u64 = 1_000_000_000;
const NANOS_PER_MILLI: u64 = 1_000_000;

/// How long the upstream asks us to wait, from the response headers.
///
/// - `retry-after-ms` (OpenAI-style): milliseconds, integer or decimal; honoured first.
/// - `Retry-After` (RFC 9110): delta-seconds (integer or decimal) or an HTTP-date, taken
///   relative to `now`; a date in the past means zero.
///
/// Results are clamped to at most one day. A header that is missing, not ASCII, negative or
/// otherwise malformed is ignored (`retry-after-ms` garbage falls back to `Retry-After`); with
/// nothing usable the answer is `None`.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) =
        header("retry-after-ms").and_then(|v| parse_decimal(v.trim(), NANOS_PER_MILLI))
    {
        return Some(ms);
    }
    let value = header("retry-after")?.trim();
    if let Some(delay) = parse_decimal(value, NANOS_PER_SECOND) {
        return Some(delay);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let delay = date.duration_since(now).unwrap_or(Duration::ZERO);
    Some(delay.min(MAX_RETRY_AFTER))
}

/// A plain non-negative decimal number of units (`12`, `1.5`, `.5`, `3.`), each unit being
/// `unit_nanos` nanoseconds; exact to the nanosecond (further digits are dropped) and clamped to
/// [`MAX_RETRY_AFTER`]. No signs, exponents, `inf` or `NaN`.
fn parse_decimal(value: &str, unit_nanos: u64) -> Option<Duration> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !is_digits(whole) || !is_digits(fraction) {
        return None;
    }
    let max_nanos = MAX_RETRY_AFTER.as_nanos();
    let mut nanos: u128 = 0;
    for digit in whole.bytes() {
        nanos = (nanos * 10 + u128::from(digit - b'0') * u128::from(unit_nanos)).min(max_nanos + 1);
    }
    let mut place = u128::from(unit_nanos);
    for digit in fraction.bytes() {
        place /= 10;
        nanos += u128::from(digit - b'0') * place;
    }
    let nanos = u64::try_from(nanos.min(max_nanos)).unwrap_or(u64::MAX);
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn parse(pairs: &[(&'static str, &str)]) -> Option<Duration> {
        parse_retry_after(&headers(pairs), SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(
            parse(&[("retry-after", "30")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse(&[("retry-after", " 0 ")]), Some(Duration::ZERO));
        assert_eq!(
            parse(&[("retry-after", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse(&[("retry-after", ".25")]),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn milliseconds_win_over_seconds() {
        let both = [("retry-after-ms", "250"), ("retry-after", "30")];
        assert_eq!(parse(&both), Some(Duration::from_millis(250)));
        let fractional = [("retry-after-ms", "12.5")];
        assert_eq!(parse(&fractional), Some(Duration::from_micros(12_500)));
        let bad_ms = [("retry-after-ms", "soon"), ("retry-after", "7")];
        assert_eq!(parse(&bad_ms), Some(Duration::from_secs(7)));
    }

    #[test]
    fn http_date_relative_to_now() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let map = headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]);
        assert_eq!(parse_retry_after(&map, now), Some(Duration::from_secs(30)));
        let past = headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]);
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        let far = headers(&[("retry-after", "Fri, 31 Dec 1999 23:59:59 GMT")]);
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn clamped_to_one_day() {
        assert_eq!(parse(&[("retry-after", "86401")]), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse(&[("retry-after", "99999999999999999999999999999999999")]),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse(&[("retry-after-ms", "1e400")]), None);
        assert_eq!(
            parse(&[("retry-after-ms", "90000000")]),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn garbage_is_none() {
        for bad in [
            "", "soon", "-1", "+5", "1e3", "inf", "NaN", "1.2.3", ".", "5s", "0x10",
        ] {
            assert_eq!(parse(&[("retry-after", bad)]), None, "{bad:?}");
            assert_eq!(parse(&[("retry-after-ms", bad)]), None, "{bad:?}");
        }
        assert_eq!(parse(&[]), None);
        let mut map = HeaderMap::new();
        map.insert("retry-after", HeaderValue::from_bytes(b"\xff10").unwrap());
        assert_eq!(parse_retry_after(&map, SystemTime::UNIX_EPOCH), None);
    }

    proptest! {
        #[test]
        fn never_panics(ms in "\\PC*", secs in "\\PC*", now in 0u64..8_000_000_000) {
            let mut map = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&ms) {
                map.insert("retry-after-ms", v);
            }
            if let Ok(v) = HeaderValue::from_str(&secs) {
                map.insert("retry-after", v);
            }
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
            if let Some(d) = parse_retry_after(&map, now) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn integers_round_trip(n in 0u64..200_000) {
            let expected = Duration::from_secs(n).min(MAX_RETRY_AFTER);
            prop_assert_eq!(parse(&[("retry-after", &n.to_string())]), Some(expected));
            let expected_ms = Duration::from_millis(n).min(MAX_RETRY_AFTER);
            prop_assert_eq!(parse(&[("retry-after-ms", &n.to_string())]), Some(expected_ms));
        }

        #[test]
        fn http_dates_round_trip(now in 0u64..4_000_000_000, delta in 0u64..200_000) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
            let date = httpdate::fmt_http_date(now + Duration::from_secs(delta));
            let map = headers(&[("retry-after", &date)]);
            let expected = Duration::from_secs(delta).min(MAX_RETRY_AFTER);
            prop_assert_eq!(parse_retry_after(&map, now), Some(expected));
        }
    }
}
