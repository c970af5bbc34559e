//! Scrubbing a backend's upstream key out of what an upstream sends back (error bodies, header
//! values) before it leaves poolgate. A [`KeyScrubber`] is built once per backend key (at
//! snapshot time) and finds, in one pass over the text (an Aho-Corasick automaton of every
//! form below), and replaces with `[REDACTED]`:
//!
//! - the raw key — and so `Bearer <key>`, `x-api-key: <key>`, `?key=<key>`;
//! - **partial echoes**: any run of at least [`PARTIAL_ECHO_LEN`] (12) consecutive characters
//!   of the key (an upstream that prints `sk-proj-abcdefgh…` or the key's tail). Twelve
//!   characters of a random key carry ~70 bits; shorter runs say little about the key and would
//!   start to match ordinary text. Keys of 8 to 12 characters are matched whole only;
//! - HTTP Basic forms: the base64 (standard and URL-safe alphabets) of any `user:key`, `key:`
//!   or `key` — for each of the three byte alignments the key can have inside the encoded text,
//!   the part of the encoding that depends on the key alone is searched, and a match removes the
//!   whole base64 token around it (so `Basic dXNlcjpzay0…` becomes `Basic [REDACTED]`);
//! - URL-encoded forms (`%XX` with upper- or lower-case hex) and JSON-escaped forms (`\"`,
//!   `\\`, `\/`, `\uXXXX`) of the whole key, when they differ from the raw key.
//!
//! Keys shorter than [`MIN_SCRUBBED_KEY_LEN`] (8) are not scrubbed: they are placeholders
//! (`EMPTY`, `ollama`, `none`) that local model servers accept, not secrets, and scrubbing them
//! would mangle ordinary words in error messages.
//!
//! Scrubbing never panics and, when no form of the key is present, returns the input as is
//! (borrowed, no copy) after that one pass.

use std::borrow::Cow;
use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

/// What a found key is replaced with.
pub const REDACTED: &str = "[REDACTED]";
/// Keys shorter than this are not scrubbed (placeholders, not secrets).
pub const MIN_SCRUBBED_KEY_LEN: usize = 8;
/// The shortest run of key characters that counts as a (partial) echo of the key.
pub const PARTIAL_ECHO_LEN: usize = 12;
/// The shortest base64 run searched for (shorter ones would match too much).
const MIN_BASE64_CORE: usize = 16;

/// How a match of one pattern is widened before it is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Widen {
    /// Replace exactly the match.
    Exact,
    /// Replace the whole run of base64 characters around the match.
    Base64Token,
}

/// Finds and removes every form of one key. Cheap to share (build once per backend key).
#[derive(Clone, Debug)]
pub struct KeyScrubber {
    /// `None` for keys too short to scrub.
    automaton: Option<AhoCorasick>,
    /// Per pattern id.
    widen: Vec<Widen>,
}

impl KeyScrubber {
    /// The scrubber of `key` (an upstream API key as sent to the backend).
    pub fn new(key: &str) -> Self {
        if key.len() < MIN_SCRUBBED_KEY_LEN {
            return Self {
                automaton: None,
                widen: Vec::new(),
            };
        }
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut widen = Vec::new();
        let mut add = |pattern: Vec<u8>, how: Widen| {
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
                widen.push(how);
            }
        };
        for window in raw_windows(key.as_bytes()) {
            add(window.to_vec(), Widen::Exact);
        }
        for variant in encoded_variants(key) {
            if variant != key {
                add(variant.into_bytes(), Widen::Exact);
            }
        }
        for core in base64_cores(key.as_bytes()) {
            add(core.into_bytes(), Widen::Base64Token);
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .ok();
        Self { automaton, widen }
    }

    /// Whether `text` holds any form of the key (one pass).
    pub fn is_present(&self, text: &[u8]) -> bool {
        self.automaton
            .as_ref()
            .is_some_and(|automaton| automaton.find(text).is_some())
    }

    /// `text` with every form of the key replaced by [`REDACTED`]; borrowed when none is found.
    pub fn scrub<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(automaton) = &self.automaton else {
            return Cow::Borrowed(text);
        };
        if automaton.find(text).is_none() {
            return Cow::Borrowed(text);
        }
        let mut ranges: Vec<Range<usize>> = automaton
            .find_overlapping_iter(text)
            .map(|found| {
                let range = found.range();
                match self.widen.get(found.pattern().as_usize()) {
                    Some(Widen::Base64Token) => base64_token(text, range),
                    _ => range,
                }
            })
            .collect();
        ranges.sort_by_key(|range| range.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        let mut out = Vec::with_capacity(text.len());
        let mut copied = 0;
        for range in merged {
            out.extend_from_slice(text.get(copied..range.start).unwrap_or_default());
            out.extend_from_slice(REDACTED.as_bytes());
            copied = range.end;
        }
        out.extend_from_slice(text.get(copied..).unwrap_or_default());
        Cow::Owned(out)
    }

    /// A body without the key; the same buffer (no copy) when it held none.
    pub fn scrub_bytes(&self, body: Bytes) -> Bytes {
        match self.scrub(&body) {
            Cow::Borrowed(_) => body,
            Cow::Owned(scrubbed) => Bytes::from(scrubbed),
        }
    }

    /// Every header value without the key.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            if let Cow::Owned(scrubbed) = self.scrub(value.as_bytes()) {
                // Only bytes were removed and ASCII inserted: still a valid value. Should it
                // not be, the value goes rather than the key.
                *value = HeaderValue::from_bytes(&scrubbed)
                    .unwrap_or_else(|_| HeaderValue::from_static(REDACTED));
            }
        }
    }
}

/// Every run of [`PARTIAL_ECHO_LEN`] bytes of the key (the whole key when it is shorter).
fn raw_windows(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let len = PARTIAL_ECHO_LEN.min(key.len());
    key.windows(len)
}

/// URL-encoded and JSON-escaped spellings of the whole key.
fn encoded_variants(key: &str) -> Vec<String> {
    let mut variants = Vec::new();
    let percent_upper = percent_encode(key, false);
    variants.push(percent_encode(key, true));
    variants.push(percent_upper);
    if let Ok(json) = serde_json::to_string(key) {
        let inner = json
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or(&json)
            .to_owned();
        variants.push(inner.replace('/', "\\/"));
        variants.push(inner);
    }
    variants.push(json_ascii(key));
    variants
}

/// Every byte outside RFC 3986's unreserved set as `%XX`.
fn percent_encode(key: &str, lower: bool) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else if lower {
            out.push_str(&format!("%{byte:02x}"));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// JSON string contents with every non-ASCII character as `\uXXXX` (Python's `ensure_ascii`).
fn json_ascii(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0_u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

/// The parts of base64 encodings that depend on the key's bytes alone, for each alignment the
/// key can have in the encoded text (after a prefix of 0, 2 or 1 bytes mod 3), in both
/// alphabets.
fn base64_cores(key: &[u8]) -> Vec<String> {
    let mut cores = Vec::new();
    for skip in 0..3 {
        let Some(rest) = key.get(skip..) else {
            continue;
        };
        let whole = rest.len() / 3 * 3;
        let Some(aligned) = rest.get(..whole) else {
            continue;
        };
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let core = engine.encode(aligned);
            if core.len() >= MIN_BASE64_CORE {
                cores.push(core);
            }
        }
    }
    cores
}

/// The run of base64 characters (either alphabet, with `=` padding) around `range`.
fn base64_token(text: &[u8], range: Range<usize>) -> Range<usize> {
    let is_base64 =
        |byte: &u8| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'-' | b'_');
    let start = text.get(..range.start).map_or(range.start, |before| {
        before
            .iter()
            .rposition(|byte| !is_base64(byte))
            .map_or(0, |at| at + 1)
    });
    let mut end = text.get(range.end..).map_or(range.end, |after| {
        after
            .iter()
            .position(|byte| !is_base64(byte))
            .map_or(text.len(), |at| range.end + at)
    });
    while text.get(end) == Some(&b'=') {
        end += 1;
    }
    start..end
}

#[cfg(test)]
mod tests;
