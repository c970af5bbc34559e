//! A record line written by hand, straight into its batch's buffer: the same bytes `serde_json`
//! writes for `{"s":<seq>,"r":<UsageRecord>}` (field order, escapes, `null`s, the cost's float),
//! without a generic serializer pass and a fresh `Vec` per request. The replay still reads it with
//! `serde_json` (`super::Line`); the tests hold the two byte-identical.

use serde_json::ser::{CompactFormatter, Formatter};

use crate::domain::UsageRecord;

/// `{"s":<seq>,"r":{…}}\n`, the fields in `UsageRecord`'s declaration order (serde's).
pub(super) fn encode(out: &mut Vec<u8>, seq: u64, r: &UsageRecord) {
    out.extend_from_slice(b"{\"s\":");
    push_u64(out, seq);
    out.extend_from_slice(b",\"r\":{\"request_id\":");
    push_str(out, &r.request_id);
    out.extend_from_slice(b",\"ts_ms\":");
    push_i64(out, r.ts_ms);
    out.extend_from_slice(b",\"client_key_id\":");
    push_opt_str(out, r.client_key_id.as_deref());
    out.extend_from_slice(b",\"endpoint\":");
    push_str(out, &r.endpoint);
    out.extend_from_slice(b",\"canonical_model\":");
    push_opt_str(out, r.canonical_model.as_deref());
    out.extend_from_slice(b",\"backend_id\":");
    push_opt_str(out, r.backend_id.as_deref());
    out.extend_from_slice(b",\"upstream_model\":");
    push_opt_str(out, r.upstream_model.as_deref());
    out.extend_from_slice(b",\"pool\":");
    push_opt_str(out, r.pool.as_deref());
    out.extend_from_slice(b",\"attempts\":");
    push_u64(out, u64::from(r.attempts));
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(r.status));
    out.extend_from_slice(b",\"outcome\":\"");
    out.extend_from_slice(r.outcome.as_str().as_bytes());
    out.extend_from_slice(b"\",\"error_kind\":");
    push_opt_str(out, r.error_kind.as_deref());
    out.extend_from_slice(b",\"prompt_tokens\":");
    push_opt_u64(out, r.prompt_tokens.map(u64::from));
    out.extend_from_slice(b",\"completion_tokens\":");
    push_opt_u64(out, r.completion_tokens.map(u64::from));
    out.extend_from_slice(b",\"total_tokens\":");
    push_opt_u64(out, r.total_tokens.map(u64::from));
    out.extend_from_slice(b",\"cached_tokens\":");
    push_opt_u64(out, r.cached_tokens.map(u64::from));
    out.extend_from_slice(b",\"latency_ms\":");
    push_u64(out, r.latency_ms);
    out.extend_from_slice(b",\"ttfb_ms\":");
    push_opt_u64(out, r.ttfb_ms);
    out.extend_from_slice(b",\"streamed\":");
    push_bool(out, r.streamed);
    out.extend_from_slice(b",\"tokens_estimated\":");
    push_bool(out, r.tokens_estimated);
    out.extend_from_slice(b",\"cost_usd\":");
    match r.cost {
        // The amount's own serde (a float of dollars, serde_json's shortest text): rare enough
        // per line to keep the one definition of how an amount becomes a JSON number.
        Some(cost) => {
            if serde_json::to_writer(&mut *out, &cost).is_err() {
                out.extend_from_slice(b"null");
            }
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cache_write_tokens\":");
    push_opt_u64(out, r.cache_write_tokens.map(u64::from));
    out.extend_from_slice(b"}}\n");
}

// The pieces below are serde_json's own (its `CompactFormatter`, and its serializer for one
// string): the same digits and escapes as a serialised record, without the generic pass over
// the record around them. Writing into a `Vec` cannot fail.

fn push_bool(out: &mut Vec<u8>, value: bool) {
    let _ = CompactFormatter.write_bool(out, value);
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    let _ = CompactFormatter.write_u64(out, value);
}

fn push_i64(out: &mut Vec<u8>, value: i64) {
    let _ = CompactFormatter.write_i64(out, value);
}

fn push_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => push_u64(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => push_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string exactly as `serde_json` escapes it: copied between quotes when nothing in it
/// needs an escape (ids, model names — nearly always), else through `serde_json`.
fn push_str(out: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
    {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, value);
    }
}
