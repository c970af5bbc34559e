//! What the mock saw: one [`RecordedRequest`] per request received.

/// A request as received, recorded before the mock replies.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The HTTP version it came over: `HTTP/1.1`, or `HTTP/2.0` (prior knowledge).
    pub version: String,
    /// The URI path, without the query (`/v1/chat/completions`).
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Header names lowercased, in the order received; values lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; `Null` if it was empty or not JSON.
    pub body: serde_json::Value,
}

// === impl RecordedRequest ===

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub(crate) fn from_parts(parts: &hyper::http::request::Parts, body: &[u8]) -> RecordedRequest {
        RecordedRequest {
            method: parts.method.as_str().to_owned(),
            version: format!("{:?}", parts.version),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
        }
    }
}
