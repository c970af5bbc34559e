//! Request bodies sent upstream without a second copy. A client's JSON body is read once into a
//! [`Bytes`] buffer; poolgate needs only a few of its top-level values (`model`, `stream`,
//! `stream_options`, and where the endpoint's required content lies), so [`TopLevel::parse`] finds where each of those values lies in the buffer
//! (validating the whole document on the way, allocating nothing per value), and
//! [`SplicedBody`] sends the buffer with those values replaced or one field added: slices of the
//! original (reference-counted, not copied) around the few bytes that changed.
//!
//! A named key that appears twice is refused: routing must read the same `model` the upstream
//! will (a second `model` would otherwise let a client pass the allow-list with one model and be
//! served another).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::domain::InvalidRequest;

/// Where the named top-level values of a JSON object lie in its text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopLevel {
    spans: Vec<(&'static str, Range<usize>)>,
    /// The offset of the object's closing `}`.
    end: usize,
}

impl TopLevel {
    /// Parses `body` (which must be one JSON object) and records the byte range of the value of
    /// every key in `names`. Errors say what is wrong in the client's terms.
    pub fn parse(body: &[u8], names: &[&'static str]) -> Result<TopLevel, InvalidRequest> {
        let invalid = |error: serde_json::Error| {
            InvalidRequest::new(format!(
                "request body is not valid JSON for this endpoint: {error}"
            ))
        };
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let found = deserializer
            .deserialize_map(FieldsVisitor { names })
            .map_err(invalid)?;
        deserializer.end().map_err(invalid)?;
        let base = body.as_ptr().addr();
        let mut spans = Vec::with_capacity(found.len());
        for (name, value) in found {
            if spans.iter().any(|(seen, _)| *seen == name) {
                return Err(InvalidRequest::param(
                    format!("`{name}` appears more than once in the request body"),
                    name,
                    "duplicate_parameter",
                ));
            }
            let start = value.get().as_ptr().addr().saturating_sub(base);
            spans.push((name, start..start + value.get().len()));
        }
        let end = body
            .iter()
            .rposition(|byte| *byte == b'}')
            .ok_or_else(|| InvalidRequest::new("request body must be a JSON object"))?;
        Ok(TopLevel { spans, end })
    }

    /// The byte range of a named value, if the key was present.
    pub fn span(&self, name: &str) -> Option<Range<usize>> {
        self.spans
            .iter()
            .find(|(seen, _)| *seen == name)
            .map(|(_, span)| span.clone())
    }

    /// The text of a named value, if the key was present.
    pub fn value<'b>(&self, body: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.span(name).and_then(|span| body.get(span))
    }

    /// A named value parsed as JSON (`None` when the key was absent).
    pub fn parse_value(
        &self,
        body: &[u8],
        name: &str,
    ) -> Result<Option<serde_json::Value>, InvalidRequest> {
        self.value(body, name)
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|error| InvalidRequest::new(format!("`{name}`: {error}")))
    }

    /// Checks that a field the request must carry is there (not absent, not `null`) and of its
    /// kind, from the value's first byte only — what is in it is the upstream's to judge. The
    /// errors name the field (`missing_required_parameter`, `invalid_type`).
    pub fn require(&self, body: &[u8], name: &str, kind: Required) -> Result<(), InvalidRequest> {
        let first = self
            .value(body, name)
            .and_then(|value| value.first().copied());
        let fits = match (first, kind) {
            (None | Some(b'n'), _) => {
                return Err(InvalidRequest::param(
                    format!("missing required parameter: `{name}`"),
                    name,
                    "missing_required_parameter",
                ))
            }
            (Some(_), Required::Present) => true,
            (Some(byte), Required::Array) => byte == b'[',
            // A negative or fractional count is the upstream's to refuse, as any other value.
            (Some(byte), Required::Number) => byte == b'-' || byte.is_ascii_digit(),
        };
        if fits {
            Ok(())
        } else {
            Err(InvalidRequest::param(
                format!("`{name}` must be {}", kind.described()),
                name,
                "invalid_type",
            ))
        }
    }

    /// Where a new `,"key":value` goes: just before the closing `}`.
    pub fn end(&self) -> usize {
        self.end
    }
}

/// What [`TopLevel::require`] asks of a field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Required {
    /// Any value but `null`.
    Present,
    Array,
    Number,
}

impl Required {
    fn described(self) -> &'static str {
        match self {
            Required::Present => "present",
            Required::Array => "an array",
            Required::Number => "a number",
        }
    }
}

/// Visits the top-level object, keeping (name, raw value) for the named keys only.
struct FieldsVisitor<'n> {
    names: &'n [&'static str],
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Vec<(&'static str, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if let Some(name) = self.names.iter().find(|name| **name == key.0.as_ref()) {
                found.push((*name, value));
            }
        }
        Ok(found)
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

// === impl SplicedBody ===

/// An upstream request body made of slices of the client's body and the few bytes poolgate
/// changed, sent with its exact length (`Content-Length`, never chunked).
#[derive(Debug, Clone, Default)]
pub struct SplicedBody {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl SplicedBody {
    /// A body of one buffer (a translated request, built new).
    pub fn whole(bytes: Bytes) -> Self {
        Self::from_chunks([bytes])
    }

    /// `original` with each `(range, replacement)` applied; an empty range inserts. Edits must
    /// not overlap; they are applied in order of position.
    pub fn splice(original: &Bytes, mut edits: Vec<(Range<usize>, Bytes)>) -> Self {
        edits.sort_by_key(|(range, _)| range.start);
        let mut chunks = Vec::with_capacity(edits.len() * 2 + 1);
        let mut at = 0;
        for (range, replacement) in edits {
            let start = range.start.clamp(at, original.len());
            chunks.push(original.slice(at..start));
            chunks.push(replacement);
            at = range.end.clamp(start, original.len());
        }
        chunks.push(original.slice(at..));
        Self::from_chunks(chunks)
    }

    fn from_chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks
            .iter()
            .map(|chunk| u64::try_from(chunk.len()).unwrap_or(u64::MAX))
            .sum();
        Self { chunks, remaining }
    }

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// The body's buffers, in order (an HTTP/1 request writes them as they are).
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.chunks.iter()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The whole body in one buffer (tests and logs only: this is the copy the type avoids).
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }
}

impl http_body::Body for SplicedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match this.chunks.pop_front() {
            Some(chunk) => {
                this.remaining = this
                    .remaining
                    .saturating_sub(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["model", "stream"];

    #[test]
    fn spans_point_at_the_values() {
        let body = br#" { "messages": [{"model": "inner"}], "model" : "gpt-4o", "stream":true } "#;
        let top = TopLevel::parse(body, NAMES).unwrap();
        assert_eq!(top.value(body, "model").unwrap(), br#""gpt-4o""#);
        assert_eq!(top.value(body, "stream").unwrap(), b"true");
        assert_eq!(body[top.end()], b'}');
        assert!(top.span("stream_options").is_none());
    }

    #[test]
    fn escaped_keys_and_values_are_found() {
        let body = br#"{"mod\u0065l":"a\"b","x":1}"#;
        let top = TopLevel::parse(body, NAMES).unwrap();
        assert_eq!(top.value(body, "model").unwrap(), br#""a\"b""#);
    }

    #[test]
    fn duplicates_non_objects_and_bad_json_are_refused() {
        let twice = TopLevel::parse(br#"{"model":"a","model":"b"}"#, NAMES).unwrap_err();
        assert_eq!(twice.param.as_deref(), Some("model"));
        for bad in [
            &b"[1]"[..],
            b"\"x\"",
            b"{\"model\":",
            b"{} {}",
            b"{\"a\":tru}",
        ] {
            assert!(TopLevel::parse(bad, NAMES).is_err(), "{bad:?}");
        }
        // Duplicates of keys poolgate does not read pass through as the client sent them.
        assert!(TopLevel::parse(br#"{"x":1,"x":2,"model":"m"}"#, NAMES).is_ok());
    }

    #[test]
    fn a_spliced_body_replaces_inserts_and_keeps_the_rest_shared() {
        let original = Bytes::from_static(br#"{"model":"m","stream":true}"#);
        let top = TopLevel::parse(&original, NAMES).unwrap();
        let body = SplicedBody::splice(
            &original,
            vec![
                (top.end()..top.end(), Bytes::from_static(br#","extra":1"#)),
                (top.span("model").unwrap(), Bytes::from_static(br#""up""#)),
            ],
        );
        let text = body.to_vec();
        assert_eq!(text, br#"{"model":"up","stream":true,"extra":1}"#);
        assert_eq!(body.len(), text.len() as u64);
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["model"], "up");
    }
}
