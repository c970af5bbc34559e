//! A request's id, `req_` + a time-ordered UUID: the `x-request-id` of its answer, and the id
//! its usage record, log lines and a 5xx body name. Generated here for every layer that answers
//! (`api::request_id` gives the app's requests theirs; the HTTP server its own refusals).

use std::sync::Arc;

/// `x-request-id`: the header every answer names its request in.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What every generated request id starts with.
const PREFIX: &str = "req_";

/// A request id, `req_` + a time-ordered UUID (shared, not copied, by the extensions, the
/// task-local and the handler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A new id: the one generator for every answer. A UUID v7 (milliseconds since the epoch,
    /// then 74 random bits) whose random part comes from the thread's CSPRNG (`rand`'s
    /// `thread_rng`, seeded from the OS and reseeded by it): `Uuid::now_v7` asked the OS for
    /// fresh bytes with two `getrandom` system calls per request (#13).
    pub fn generate() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let random: [u8; 10] = rand::random();
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let mut text = [0_u8; PREFIX.len() + uuid::fmt::Simple::LENGTH];
        let (prefix, hex) = text.split_at_mut(PREFIX.len());
        prefix.copy_from_slice(PREFIX.as_bytes());
        id.simple().encode_lower(hex);
        // ASCII only: always valid UTF-8.
        Self(Arc::from(std::str::from_utf8(&text).unwrap_or(PREFIX)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
