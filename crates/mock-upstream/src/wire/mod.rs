//! Wire shapes of the real APIs, encoded as bytes: [`openai`] (and its [`responses`] API),
//! [`anthropic`], and [`azure`]'s error shapes.

pub(crate) mod anthropic;
pub(crate) mod azure;
pub(crate) mod openai;
pub(crate) mod responses;

use bytes::Bytes;
use serde::Serialize;

/// Which API's conventions a response follows (error shape, model list shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Anthropic,
    Azure,
}

/// Identity of one response: `seq` numbers ids (`chatcmpl-mock-{seq}`), `model` is echoed back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta<'a> {
    pub(crate) seq: usize,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    /// Token figures to report instead of the defaults.
    pub(crate) usage: Option<crate::reply::ReportedUsage>,
}

/// The error body for `status` in `flavor`'s shape.
pub(crate) fn error_body(flavor: Flavor, status: u16, message: &str) -> Bytes {
    match flavor {
        Flavor::OpenAi => openai::error(status, message),
        Flavor::Anthropic => anthropic::error(status, message),
        Flavor::Azure => azure::error(status, message),
    }
}

// === encoding ===

const SERIALIZE_FAILED: &[u8] = br#"{"error":"mock-upstream: serialization failed"}"#;

/// Appends `value` as JSON. The wire types here cannot fail to serialize; if one ever did, the
/// body says so instead.
fn write_json<T: Serialize>(buf: &mut Vec<u8>, value: &T) {
    let mark = buf.len();
    if serde_json::to_writer(&mut *buf, value).is_err() {
        buf.truncate(mark);
        buf.extend_from_slice(SERIALIZE_FAILED);
    }
}

/// `value` as a JSON body.
pub(crate) fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    write_json(&mut buf, value);
    Bytes::from(buf)
}

/// `data: {json}\n\n`
pub(crate) fn sse_data<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    write_json(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// `event: {name}\ndata: {json}\n\n`
pub(crate) fn sse_event<T: Serialize>(name: &str, value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    write_json(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}
