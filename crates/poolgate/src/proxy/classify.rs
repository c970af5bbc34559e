//! What an upstream answer means for the request and for the backend: success, the request's own
//! fault (relayed as is), or a [`Failure`] worth trying elsewhere, with the cooldown outcome it
//! feeds to the backend's runtime.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::cooldown::{parse_retry_after, Outcome as UpstreamOutcome};
use crate::providers::azure::{AzureErrorBody, AzureErrorKind};
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
    /// The backend's own settings are wrong (an Azure mapping naming a deployment that does
    /// not exist): out of rotation until an admin fixes and resets it, like a refused key.
    Misconfigured {
        detail: String,
    },
}

/// An upstream error answer to relay: still to be read, or already read (to classify it).
pub enum ErrorAnswer {
    Pending(reqwest::Response),
    Read {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

impl From<reqwest::Response> for ErrorAnswer {
    fn from(response: reqwest::Response) -> Self {
        ErrorAnswer::Pending(response)
    }
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
            Failure::Misconfigured { detail } => detail.clone(),
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
            Failure::AuthRejected { .. } | Failure::Misconfigured { .. } => {
                UpstreamOutcome::AuthFailed
            }
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
            Failure::Misconfigured { .. } => AttemptResult::Misconfigured,
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

/// Classifies an Azure OpenAI error answer: as [`classify`], and from its body — a 429 without
/// `retry-after` headers waits what its message says ("Please retry after 6 seconds"); a 404
/// `DeploymentNotFound` is the backend's fault (its mapping names no deployment), not the
/// client's. Err hands back what to relay.
pub async fn azure_failure(
    response: reqwest::Response,
    read_timeout: Duration,
) -> Result<Failure, ErrorAnswer> {
    let status = response.status();
    let headers = response.headers();
    let reads_body = match status.as_u16() {
        429 => parse_retry_after(headers, std::time::SystemTime::now()).is_none(),
        404 => true,
        _ => false,
    };
    if !reads_body {
        return classify(status, headers).ok_or(ErrorAnswer::Pending(response));
    }
    let content_type = headers.get(http::header::CONTENT_TYPE).cloned();
    let body = match tokio::time::timeout(read_timeout, response.bytes()).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return Ok(Failure::transport("error body was cut off", &error)),
        Err(_) => return Ok(Failure::Timeout),
    };
    let parsed = AzureErrorBody::parse(&body);
    match status.as_u16() {
        429 => Ok(Failure::RateLimited {
            retry_after: parsed.and_then(|error| error.retry_after_in_message()),
        }),
        _ if parsed.is_some_and(|error| error.kind() == AzureErrorKind::DeploymentNotFound) => {
            Ok(Failure::Misconfigured {
                detail: "Azure has no such deployment (404 DeploymentNotFound): check the \
                         backend's model mappings"
                    .to_owned(),
            })
        }
        _ => Err(ErrorAnswer::Read {
            status,
            content_type,
            body,
        }),
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
        let misconfigured = Failure::Misconfigured {
            detail: "no such deployment".into(),
        };
        assert_eq!(misconfigured.attempt_result(), AttemptResult::Misconfigured);
        assert_eq!(misconfigured.outcome(), UpstreamOutcome::AuthFailed);
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
