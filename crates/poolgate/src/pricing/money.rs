//! Exact money: amounts in integer nano-dollars, prices in integer nano-dollars per token, and
//! the decimal text (`"2.50"`, `0.075`) users and the API write them in. No float ever enters a
//! sum: floats appear only when a finished amount is rendered as a JSON number.
//!
//! # Units, and why
//! - An amount is a whole number of **nano-dollars** (1 USD = 10^9). Stored as `u64` in memory and
//!   as SQL `INTEGER`/`BIGINT` (`i64`), it holds up to 9.2 × 10^18 nano-dollars = **$9.2 billion**,
//!   so a `SUM()` over every usage row of a large deployment cannot overflow.
//! - A price is a whole number of **nano-dollars per token**, which is the same number as
//!   "thousandths of a dollar per million tokens": `$2.50 / Mtok` = 2 500. Every standard OpenAI
//!   and Anthropic price is a multiple of $0.001 / Mtok (the finest in the default table is
//!   `gpt-5-nano` cached input, $0.005 / Mtok), so prices are exact, and the cost of a request,
//!   `tokens × price`, is an exact integer with no rounding at all. A price with more than three
//!   decimals per million tokens is refused, never silently rounded.
//! - Bounds: tokens of one kind in one request ≤ `u32::MAX` (4.3 × 10^9) and a price ≤
//!   [`MAX_PRICE_PER_MTOK_USD`] ($1 000 000 / Mtok = 10^6 nano-dollars per token) make one term at
//!   most 4.3 × 10^15 nano-dollars ($4.3 M); the sum of a request's four terms is computed in
//!   `u128` and saturates at `u64::MAX`, so nothing can wrap.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places of a USD amount: nano-dollars.
const AMOUNT_SCALE: u32 = 9;
/// Decimal places of a price in USD per million tokens: thousandths (nano-dollars per token).
const PRICE_SCALE: u32 = 3;
/// The highest price accepted, in USD per million tokens.
pub const MAX_PRICE_PER_MTOK_USD: u64 = 1_000_000;
/// The highest amount accepted from users (budgets), in USD.
pub const MAX_AMOUNT_USD: u64 = 1_000_000_000;

// === impl Nanodollars ===

/// An exact amount of US dollars: a whole number of nano-dollars (10^-9 USD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanodollars(u64);

impl Nanodollars {
    pub const ZERO: Nanodollars = Nanodollars(0);

    pub const fn new(nanodollars: u64) -> Self {
        Self(nanodollars)
    }

    /// Whole dollars (a convenience for tests and defaults).
    pub const fn from_usd(dollars: u64) -> Self {
        Self(dollars.saturating_mul(10_u64.pow(AMOUNT_SCALE)))
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub const fn saturating_add(self, other: Nanodollars) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    pub const fn saturating_sub(self, other: Nanodollars) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Nanodollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.to_usd_string())
    }
}

impl std::iter::Sum for Nanodollars {
    fn sum<I: Iterator<Item = Nanodollars>>(iter: I) -> Self {
        iter.fold(Nanodollars::ZERO, Nanodollars::saturating_add)
    }
}

// === impl PricePerToken ===

/// A price: a whole number of nano-dollars per token, i.e. thousandths of a dollar per million
/// tokens. Written by users in USD per million tokens (`2.5` = $2.50 / Mtok = 2 500).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PricePerToken(u64);

impl PricePerToken {
    pub const ZERO: PricePerToken = PricePerToken(0);

    pub const fn from_nanodollars(per_token: u64) -> Self {
        Self(per_token)
    }

    pub const fn nanodollars(self) -> u64 {
        self.0
    }

    /// The exact cost of `tokens` tokens at this price.
    pub fn cost_of(self, tokens: u64) -> Nanodollars {
        let product = u128::from(tokens) * u128::from(self.0);
        Nanodollars(u64::try_from(product).unwrap_or(u64::MAX))
    }
}

// === decimal text ===

/// Decimal text, floats for JSON output, and serde (a JSON / TOML number or a decimal string in,
/// a JSON number out) for a newtype holding a whole number of 10^-`scale` units.
macro_rules! decimal_units {
    (
        $type:ident, scale: $scale:expr, max: $max:expr,
        $(#[$parse_doc:meta])* $parse:ident,
        $(#[$text_doc:meta])* $to_text:ident,
        $(#[$float_doc:meta])* $to_f64:ident
    ) => {
        impl $type {
            $(#[$parse_doc])*
            pub fn $parse(text: &str) -> Result<Self, MoneyError> {
                parse_scaled(text, $scale, $max).map(Self)
            }

            $(#[$text_doc])*
            pub fn $to_text(self) -> String {
                format_scaled(self.0, $scale)
            }

            $(#[$float_doc])*
            pub fn $to_f64(self) -> f64 {
                scaled_to_f64(self.0, $scale)
            }
        }

        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_f64(self.$to_f64())
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = deserializer.deserialize_any(DecimalText)?;
                parse_scaled(&text, $scale, $max)
                    .map(Self)
                    .map_err(de::Error::custom)
            }
        }
    };
}

decimal_units!(
    Nanodollars, scale: AMOUNT_SCALE, max: MAX_AMOUNT_USD,
    /// Parses a non-negative USD decimal with at most nine decimals (`"5"`, `"0.25"`,
    /// `"0.000000001"`); at most [`MAX_AMOUNT_USD`].
    parse_usd,
    /// The exact decimal in USD, trailing zeros dropped (`"0.00125"`, `"5"`).
    to_usd_string,
    /// The amount as a float of dollars, for rendering one finished amount as a JSON number
    /// (`cost_usd`). It is the float nearest to the exact decimal, so its shortest round-trip
    /// text is that decimal whenever the decimal has at most 15 significant digits — every
    /// amount below 10^15 nano-dollars ($1 000 000). Never sum these floats; sum the integers.
    as_usd_f64
);

decimal_units!(
    PricePerToken, scale: PRICE_SCALE, max: MAX_PRICE_PER_MTOK_USD,
    /// Parses USD per million tokens with at most three decimals (`"2.5"`, `"0.075"`), at most
    /// [`MAX_PRICE_PER_MTOK_USD`].
    parse_per_mtok,
    /// USD per million tokens as exact decimal text (`"2.5"`).
    to_per_mtok_string,
    /// USD per million tokens as a float, for JSON output only (exact text below 10^15).
    as_per_mtok_f64
);

/// What is wrong with a money value a user wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a non-negative decimal number like `2.5` (no sign, exponent or spaces)")]
    NotADecimal,
    #[error("has more decimal places than supported ({0} at most)")]
    TooPrecise(u32),
    #[error("is too large")]
    TooLarge,
}

/// Accepts a JSON/TOML number or a string and hands back its decimal text. A float is written
/// with Rust's shortest round-trip formatting (never an exponent), which gives back exactly the
/// decimal the user wrote as long as it had at most 15 significant digits.
struct DecimalText;

impl Visitor<'_> for DecimalText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative decimal number, as a number or a string")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<String, E> {
        if value.is_finite() {
            Ok(value.to_string())
        } else {
            Err(E::custom(MoneyError::NotADecimal))
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        Ok(value.to_owned())
    }
}

/// `text` × 10^`scale` as an integer, exactly (`"1.25"` at scale 3 is 1 250), at most
/// `max_whole` × 10^`scale`. Extra decimals are accepted only when they are zeros.
fn parse_scaled(text: &str, scale: u32, max_whole: u64) -> Result<u64, MoneyError> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(MoneyError::NotADecimal);
    }
    let scale_len = usize::try_from(scale).unwrap_or(usize::MAX);
    let (kept, extra) = fraction.split_at(fraction.len().min(scale_len));
    if extra.bytes().any(|b| b != b'0') {
        return Err(MoneyError::TooPrecise(scale));
    }
    let whole = whole.trim_start_matches('0');
    if whole.len() > 20 {
        return Err(MoneyError::TooLarge);
    }
    let mut value: u128 = 0;
    for digit in whole.bytes() {
        value = value * 10 + u128::from(digit - b'0');
    }
    for position in 0..scale_len {
        let digit = kept.as_bytes().get(position).map_or(0, |b| b - b'0');
        value = value * 10 + u128::from(digit);
    }
    if value > u128::from(max_whole) * 10_u128.pow(scale) {
        return Err(MoneyError::TooLarge);
    }
    u64::try_from(value).map_err(|_| MoneyError::TooLarge)
}

/// The float nearest to a decimal produced by [`format_scaled`] (always parseable).
fn decimal_to_f64(decimal: &str) -> f64 {
    decimal.parse().unwrap_or(f64::NAN)
}

/// The float nearest to `value` × 10^-`scale`, as [`decimal_to_f64`] of its text, without the
/// text (every usage record's cost goes through here, #13): below 2^53 the integer and the power
/// of ten (exact up to 10^15) are both exact floats and IEEE division rounds correctly, so the
/// quotient is the float nearest to the exact decimal. Larger values take the text's way.
fn scaled_to_f64(value: u64, scale: u32) -> f64 {
    const EXACT_BELOW: u64 = 1 << 53;
    if value < EXACT_BELOW && scale <= 15 {
        // Both are below 2^53: exact as floats.
        return value as f64 / 10_u64.pow(scale) as f64;
    }
    decimal_to_f64(&format_scaled(value, scale))
}

/// An integer of 10^-`scale` units as decimal text without trailing zeros.
fn format_scaled(value: u64, scale: u32) -> String {
    let unit = 10_u64.pow(scale);
    let whole = value / unit;
    let fraction = value % unit;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = usize::try_from(scale).unwrap_or(0);
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prices_parse_exactly_in_thousandths_per_mtok() {
        let price = |text| PricePerToken::parse_per_mtok(text).map(PricePerToken::nanodollars);
        assert_eq!(price("2.5"), Ok(2_500));
        assert_eq!(price("2.50"), Ok(2_500));
        assert_eq!(price("0.075"), Ok(75));
        assert_eq!(price("0.005"), Ok(5));
        assert_eq!(price("0.0050000"), Ok(5), "trailing zeros are fine");
        assert_eq!(price("18.75"), Ok(18_750));
        assert_eq!(price("0"), Ok(0));
        assert_eq!(price("007"), Ok(7_000));
        assert_eq!(price("0.0025"), Err(MoneyError::TooPrecise(3)));
        assert_eq!(price("1."), Ok(1_000));
        for bad in [
            "", ".5", "-1", "+1", "1e3", "1,5", " 1", "NaN", "inf", "1.2.3",
        ] {
            assert_eq!(price(bad), Err(MoneyError::NotADecimal), "{bad:?}");
        }
        assert_eq!(price("1000000"), Ok(1_000_000_000));
        assert_eq!(price("1000000.001"), Err(MoneyError::TooLarge));
        assert_eq!(
            price("99999999999999999999999999999"),
            Err(MoneyError::TooLarge)
        );
    }

    #[test]
    fn amounts_parse_and_print_exactly() {
        let amount = Nanodollars::parse_usd("5.25").unwrap();
        assert_eq!(amount.get(), 5_250_000_000);
        assert_eq!(amount.to_usd_string(), "5.25");
        assert_eq!(amount.to_string(), "$5.25");
        assert_eq!(Nanodollars::new(1).to_usd_string(), "0.000000001");
        assert_eq!(Nanodollars::ZERO.to_usd_string(), "0");
        assert_eq!(Nanodollars::from_usd(3).to_usd_string(), "3");
        assert_eq!(
            Nanodollars::parse_usd("0.0000000001"),
            Err(MoneyError::TooPrecise(9))
        );
        assert_eq!(
            Nanodollars::parse_usd("1000000000.000000001"),
            Err(MoneyError::TooLarge)
        );
    }

    #[test]
    fn serde_reads_numbers_and_strings_and_writes_numbers() {
        #[derive(Deserialize, Serialize)]
        struct Price {
            input_per_mtok: PricePerToken,
            budget_usd: Nanodollars,
        }
        let price: Price =
            serde_json::from_str(r#"{"input_per_mtok": 0.075, "budget_usd": "12.5"}"#).unwrap();
        assert_eq!(price.input_per_mtok.nanodollars(), 75);
        assert_eq!(price.budget_usd.get(), 12_500_000_000);
        assert_eq!(
            serde_json::to_string(&price).unwrap(),
            r#"{"input_per_mtok":0.075,"budget_usd":12.5}"#
        );
        let error = serde_json::from_str::<Price>(r#"{"input_per_mtok": -1, "budget_usd": 1}"#)
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("non-negative decimal"),
            "{error}"
        );
        let error = serde_json::from_str::<Price>(r#"{"input_per_mtok": 1, "budget_usd": 1e-12}"#)
            .err()
            .unwrap();
        assert!(error.to_string().contains("decimal places"), "{error}");
    }

    #[test]
    fn cost_is_tokens_times_price_and_saturates() {
        let price = PricePerToken::parse_per_mtok("2.5").unwrap();
        // 1 000 000 tokens at $2.50 / Mtok = $2.50.
        assert_eq!(
            price.cost_of(1_000_000),
            Nanodollars::parse_usd("2.5").unwrap()
        );
        assert_eq!(price.cost_of(1).get(), 2_500);
        assert_eq!(
            PricePerToken::from_nanodollars(u64::MAX).cost_of(u64::MAX),
            Nanodollars::new(u64::MAX)
        );
    }

    proptest! {
        /// Rendering an amount as a JSON number and reading that number back gives the same
        /// integer, for every amount below 10^15 nano-dollars ($1 000 000).
        #[test]
        fn json_number_round_trips(nanos in prop_oneof![0_u64..1_000_000_000, 0_u64..1_000_000_000_000_000]) {
            let amount = Nanodollars::new(nanos);
            let json = serde_json::to_string(&amount).unwrap();
            let back: Nanodollars = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, amount, "{}", json);
            prop_assert_eq!(Nanodollars::parse_usd(&amount.to_usd_string()).unwrap(), amount);
        }

        #[test]
        fn price_text_round_trips(thousandths in 0_u64..1_000_000_000) {
            let price = PricePerToken::from_nanodollars(thousandths);
            prop_assert_eq!(PricePerToken::parse_per_mtok(&price.to_per_mtok_string()), Ok(price));
            let json = serde_json::to_string(&price).unwrap();
            prop_assert_eq!(serde_json::from_str::<PricePerToken>(&json).unwrap(), price);
        }

        /// The float of an amount or a price is the one its decimal text parses to, whichever
        /// way it is computed (the division below 2^53, the text above).
        #[test]
        fn floats_are_the_nearest_to_the_decimal(value in prop_oneof![0_u64..1_000_000_000_000, 0_u64..(1 << 53) + 1_000, any::<u64>()]) {
            for scale in [3, 9] {
                let from_text = decimal_to_f64(&format_scaled(value, scale));
                prop_assert_eq!(scaled_to_f64(value, scale).to_bits(), from_text.to_bits(), "{} at scale {}", value, scale);
            }
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = Nanodollars::parse_usd(&text);
            let _ = PricePerToken::parse_per_mtok(&text);
        }
    }
}
