//! The closed vocabularies of metric labels (every value a `&'static str`, so label cardinality
//! is bounded by construction) and the histogram bucket layouts.

use crate::domain::Outcome;

/// How one upstream attempt ended (`poolgate_upstream_attempts_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptResult {
    /// A 2xx answer (for a stream: the stream completed).
    Success,
    /// 429 (or Anthropic's 529 `overloaded_error`): the backend cools down.
    RateLimited,
    /// 5xx or 408 from the upstream, or a broken body.
    ServerError,
    /// No first byte within the backend's `timeout_seconds`.
    Timeout,
    /// The TCP/TLS connection could not be made.
    ConnectError,
    /// 401/403: the upstream refused the key.
    BadKey,
    /// The backend's own settings are wrong (Azure: the mapping names no deployment).
    Misconfigured,
    /// Another 4xx: the request's own fault, relayed to the client as is.
    ClientError,
    /// A stream that started but died before its end.
    StreamError,
    /// The client went away while the attempt was under way.
    Cancelled,
}

impl AttemptResult {
    pub const ALL: [AttemptResult; 10] = [
        AttemptResult::Success,
        AttemptResult::RateLimited,
        AttemptResult::ServerError,
        AttemptResult::Timeout,
        AttemptResult::ConnectError,
        AttemptResult::BadKey,
        AttemptResult::Misconfigured,
        AttemptResult::ClientError,
        AttemptResult::StreamError,
        AttemptResult::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Success => "success",
            AttemptResult::RateLimited => "rate_limited",
            AttemptResult::ServerError => "server_error",
            AttemptResult::Timeout => "timeout",
            AttemptResult::ConnectError => "connect_error",
            AttemptResult::BadKey => "bad_key",
            AttemptResult::Misconfigured => "misconfigured",
            AttemptResult::ClientError => "client_error",
            AttemptResult::StreamError => "stream_error",
            AttemptResult::Cancelled => "cancelled",
        }
    }

    /// Position in [`AttemptResult::ALL`] (for per-backend handle arrays).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the upstream answered as it should (the span status stays unset).
    pub fn is_success(self) -> bool {
        matches!(self, AttemptResult::Success | AttemptResult::ClientError)
    }
}

/// The class of the HTTP status the client got (`status_class` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub const COUNT: usize = 5;

    /// 499 (client went away) is a 4xx; anything outside 100–599 counts as a 5xx.
    pub fn of(status: u16) -> StatusClass {
        match status / 100 {
            1 => StatusClass::Informational,
            2 => StatusClass::Success,
            3 => StatusClass::Redirection,
            4 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Kinds of tokens counted (`poolgate_tokens_total{kind}`). `cached` is the part of `prompt`
/// the upstream served from its prompt cache (a subset, not an addition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Prompt,
    Completion,
    Cached,
}

impl TokenKind {
    pub const ALL: [TokenKind; 3] = [TokenKind::Prompt, TokenKind::Completion, TokenKind::Cached];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Prompt => "prompt",
            TokenKind::Completion => "completion",
            TokenKind::Cached => "cached",
        }
    }
}

/// Every client-request outcome, in a fixed order (`outcome` label).
pub(crate) const OUTCOMES: [Outcome; 4] = [
    Outcome::Success,
    Outcome::Error,
    Outcome::StreamError,
    Outcome::Cancelled,
];

pub(crate) fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Success => 0,
        Outcome::Error => 1,
        Outcome::StreamError => 2,
        Outcome::Cancelled => 3,
    }
}

/// What a client request asked for, in GenAI semantic-convention terms
/// (`gen_ai.operation.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Chat,
    TextCompletion,
    Embeddings,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }
}

impl From<crate::providers::Endpoint> for Operation {
    fn from(endpoint: crate::providers::Endpoint) -> Self {
        use crate::providers::Endpoint;
        match endpoint {
            // A Responses API call generates (or reads) a model response: `chat`, as OpenAI's
            // own instrumentation names it. Counting tokens has no GenAI operation name of its
            // own; it is a call about a chat request.
            Endpoint::ChatCompletions
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Responses
            | Endpoint::ResponsesRetrieve
            | Endpoint::ResponsesDelete
            | Endpoint::ResponsesCancel
            | Endpoint::ResponsesInputItems => Operation::Chat,
            Endpoint::Completions => Operation::TextCompletion,
            Endpoint::Embeddings => Operation::Embeddings,
        }
    }
}

/// Whole-request durations (`poolgate_request_duration_seconds`): LLM answers take from tens of
/// milliseconds (embeddings) to minutes (long streams).
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Time to the first byte sent to the client (`poolgate_request_ttfb_seconds`) and upstream
/// attempt durations up to their first byte or end.
pub const TTFB_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0,
];

/// The time poolgate itself adds (`poolgate_overhead_seconds`): sub-millisecond when all is
/// well, up to `max_wait` when a request waited for a ready backend.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_the_range() {
        assert_eq!(StatusClass::of(200).as_str(), "2xx");
        assert_eq!(StatusClass::of(499).as_str(), "4xx");
        assert_eq!(StatusClass::of(503).as_str(), "5xx");
        assert_eq!(StatusClass::of(101).as_str(), "1xx");
        assert_eq!(StatusClass::of(0).as_str(), "5xx");
        assert_eq!(StatusClass::of(700).as_str(), "5xx");
    }

    #[test]
    fn attempt_results_are_indexed_in_order() {
        for (index, result) in AttemptResult::ALL.iter().enumerate() {
            assert_eq!(result.index(), index);
        }
        let names: Vec<_> = AttemptResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "success",
                "rate_limited",
                "server_error",
                "timeout",
                "connect_error",
                "bad_key",
                "misconfigured",
                "client_error",
                "stream_error",
                "cancelled"
            ]
        );
    }

    #[test]
    fn outcomes_are_indexed_in_order() {
        for (index, outcome) in OUTCOMES.iter().enumerate() {
            assert_eq!(outcome_index(*outcome), index);
        }
    }

    #[test]
    fn buckets_are_strictly_increasing_and_in_seconds() {
        for buckets in [REQUEST_DURATION_BUCKETS, TTFB_BUCKETS, OVERHEAD_BUCKETS] {
            assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]));
            assert!(buckets.iter().all(|b| *b > 0.0 && *b <= 600.0));
        }
        // The overhead histogram resolves a tenth of a millisecond.
        assert_eq!(OVERHEAD_BUCKETS[0], 0.0001);
    }

    #[test]
    fn operations_use_semconv_names() {
        use crate::providers::Endpoint;
        assert_eq!(Operation::from(Endpoint::Messages).as_str(), "chat");
        assert_eq!(Operation::from(Endpoint::Responses).as_str(), "chat");
        assert_eq!(
            Operation::from(Endpoint::Completions).as_str(),
            "text_completion"
        );
        assert_eq!(Operation::from(Endpoint::Embeddings).as_str(), "embeddings");
    }
}
