//! What an upstream answer means for the request and for the backend: success, the request's own
//! fault (relayed as is), or a [`Failure`] worth trying elsewhere, with the cooldown outcome it
//! feeds to the backend's runtime.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::cooldown::{parse_retry_after, Outcome as UpstreamOutcome};
use crate::telemetry::AttemptResult;

/// Why one upstream attempt failed in a way worth trying elsewhere.
#[derive(Debug)]
pub enum Failure {
    RateLimited {
        retry_after: Option<Duration>,
    },
    Server {
        status: Option<u16>,
        detail: String,
    },
    /// The TCP or TLS connection could not be made.
    Connect {
        detail: String,
    },
    Timeout,
    AuthRejected {
        status: u16,
    },
}

impl Failure {
    /// A short description for logs and the backend's `last_error` (never a URL or a key).
    pub fn describe(&self) -> String {
        match self {
            Failure::RateLimited { .. } => "upstream rate limited (429)".to_owned(),
            Failure::Server {
                status: Some(status),
                ..
            } => format!("upstream error {status}"),
            Failure::Server { detail, .. } | Failure::Connect { detail } => {
                format!("upstream unreachable: {detail}")
            }
            Failure::Timeout => "upstream timed out".to_owned(),
            Failure::AuthRejected { status } => format!("upstream refused the key ({status})"),
        }
    }

    /// What the failure means for the backend's cooldown.
    pub fn outcome(&self) -> UpstreamOutcome {
        match self {
            Failure::RateLimited { retry_after } => UpstreamOutcome::RateLimited {
                retry_after: *retry_after,
            },
            Failure::Server { .. } | Failure::Connect { .. } | Failure::Timeout => {
                UpstreamOutcome::ServerError
            }
            Failure::AuthRejected { .. } => UpstreamOutcome::AuthFailed,
        }
    }

    /// How the attempt ended, for the metrics and the attempt's span.
    pub fn attempt_result(&self) -> AttemptResult {
        match self {
            Failure::RateLimited { .. } => AttemptResult::RateLimited,
            Failure::Server { .. } => AttemptResult::ServerError,
            Failure::Connect { .. } => AttemptResult::ConnectError,
            Failure::Timeout => AttemptResult::Timeout,
            Failure::AuthRejected { .. } => AttemptResult::BadKey,
        }
    }

    /// A failure of the connection or body, with reqwest's text (its URL replaced).
    pub fn transport(context: &str, error: &reqwest::Error) -> Failure {
        Failure::Server {
            status: None,
            detail: format!("{context}: {}", without_url(error)),
        }
    }
}

/// Classifies a non-2xx upstream status; None = the client's own fault (relay it).
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Option<Failure> {
    match status.as_u16() {
        // 529: Anthropic's `overloaded_error`, cooled down like a rate limit.
        429 | 529 => Some(Failure::RateLimited {
            retry_after: parse_retry_after(headers, std::time::SystemTime::now()),
        }),
        401 | 403 => Some(Failure::AuthRejected {
            status: status.as_u16(),
        }),
        408 | 500..=599 => Some(Failure::Server {
            status: Some(status.as_u16()),
            detail: String::new(),
        }),
        _ => None,
    }
}

/// Why sending the request failed, without the upstream's address.
pub fn connection_failure(error: &reqwest::Error) -> Failure {
    if error.is_connect() {
        return Failure::Connect {
            detail: "connection failed".to_owned(),
        };
    }
    let detail = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        without_url(error)
    };
    Failure::Server {
        status: None,
        detail,
    }
}

/// reqwest's text with the URL replaced (its Display never includes headers, so no key leaks).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<upstream>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_class() {
        let headers = HeaderMap::new();
        let class = |code: u16| classify(StatusCode::from_u16(code).unwrap(), &headers);
        assert!(matches!(class(429), Some(Failure::RateLimited { .. })));
        assert!(matches!(class(529), Some(Failure::RateLimited { .. })));
        assert!(matches!(
            class(401),
            Some(Failure::AuthRejected { status: 401 })
        ));
        assert!(matches!(
            class(403),
            Some(Failure::AuthRejected { status: 403 })
        ));
        for code in [408, 500, 502, 503, 599] {
            assert!(
                matches!(class(code), Some(Failure::Server { .. })),
                "{code}"
            );
        }
        for code in [400, 404, 413, 422] {
            assert!(class(code).is_none(), "{code} is the request's own fault");
        }
    }

    #[test]
    fn failures_name_their_attempt_result() {
        let headers = HeaderMap::new();
        let result = |code: u16| {
            classify(StatusCode::from_u16(code).unwrap(), &headers)
                .map(|failure| failure.attempt_result())
        };
        assert_eq!(result(429), Some(AttemptResult::RateLimited));
        assert_eq!(result(529), Some(AttemptResult::RateLimited));
        assert_eq!(result(401), Some(AttemptResult::BadKey));
        assert_eq!(result(503), Some(AttemptResult::ServerError));
        assert_eq!(result(400), None);
        assert_eq!(Failure::Timeout.attempt_result(), AttemptResult::Timeout);
        let refused = Failure::Connect {
            detail: "connection failed".into(),
        };
        assert_eq!(refused.attempt_result(), AttemptResult::ConnectError);
        assert_eq!(refused.outcome(), UpstreamOutcome::ServerError);
        assert_eq!(
            refused.describe(),
            "upstream unreachable: connection failed"
        );
    }

    #[test]
    fn failures_feed_the_matching_cooldown_outcome() {
        assert_eq!(Failure::Timeout.outcome(), UpstreamOutcome::ServerError);
        assert_eq!(
            Failure::AuthRejected { status: 401 }.outcome(),
            UpstreamOutcome::AuthFailed
        );
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            Failure::RateLimited { retry_after: wait }.outcome(),
            UpstreamOutcome::RateLimited { retry_after: wait }
        );
    }
}
