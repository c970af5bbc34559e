//! What an upstream answer means for the request and for the backend: success, the request's own
//! fault (relayed as is), or a [`Failure`] worth trying elsewhere, with the cooldown outcome it
//! feeds to the backend's runtime.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::respond::{read_error_body, ErrorBodyError};
use crate::cooldown::{parse_retry_after, Outcome as UpstreamOutcome};
use crate::providers::azure::{AzureErrorBody, AzureErrorKind};
use crate::telemetry::AttemptResult;
use crate::upstream::{UpstreamError, UpstreamResponse};

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
    /// A 3xx: poolgate never follows an upstream's redirect (it would carry the key elsewhere).
    Redirect {
        status: u16,
    },
    /// The answer was larger than `proxy.max_response_bytes`: final (another backend would send
    /// the same), and no fault of the backend's health.
    TooLarge {
        limit: usize,
    },
    /// The egress policy refused the backend's resolved address.
    EgressRefused {
        detail: String,
    },
    /// The backend's own settings are wrong (an Azure mapping naming a deployment that does
    /// not exist): out of rotation until an admin fixes and resets it, like a refused key.
    Misconfigured {
        detail: String,
    },
}

/// An upstream error answer to relay: still to be read, or already read (to classify it).
pub enum ErrorAnswer {
    Pending(UpstreamResponse),
    Read {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

impl From<UpstreamResponse> for ErrorAnswer {
    fn from(response: UpstreamResponse) -> Self {
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
            Failure::Redirect { status } => {
                format!("upstream answered with a redirect ({status}), not followed")
            }
            Failure::TooLarge { limit } => format!("upstream answer larger than {limit} bytes"),
            Failure::EgressRefused { detail } => detail.clone(),
            Failure::Misconfigured { detail } => detail.clone(),
        }
    }

    /// What the failure means for the backend's cooldown.
    pub fn outcome(&self) -> UpstreamOutcome {
        match self {
            Failure::RateLimited { retry_after } => UpstreamOutcome::RateLimited {
                retry_after: *retry_after,
            },
            Failure::Server { .. }
            | Failure::Connect { .. }
            | Failure::Timeout
            | Failure::Redirect { .. } => UpstreamOutcome::ServerError,
            Failure::AuthRejected { .. } | Failure::Misconfigured { .. } => {
                UpstreamOutcome::AuthFailed
            }
            Failure::TooLarge { .. } | Failure::EgressRefused { .. } => {
                UpstreamOutcome::Inconclusive
            }
        }
    }

    /// How the attempt ended, for the metrics and the attempt's span. A redirect is the
    /// upstream misbehaving (`server_error`, like the cooldown sees it); an answer over
    /// `proxy.max_response_bytes` too (the upstream answered, poolgate could not take it); an
    /// address the egress policy refuses is a connection that could not be made
    /// (`connect_error`).
    pub fn attempt_result(&self) -> AttemptResult {
        match self {
            Failure::RateLimited { .. } => AttemptResult::RateLimited,
            Failure::Server { .. } | Failure::Redirect { .. } | Failure::TooLarge { .. } => {
                AttemptResult::ServerError
            }
            Failure::Connect { .. } | Failure::EgressRefused { .. } => AttemptResult::ConnectError,
            Failure::Timeout => AttemptResult::Timeout,
            Failure::AuthRejected { .. } => AttemptResult::BadKey,
            Failure::Misconfigured { .. } => AttemptResult::Misconfigured,
        }
    }

    /// Without the backend's key in its text (a detail may quote what the upstream sent).
    pub fn scrubbed(self, scrubber: &crate::scrub::KeyScrubber) -> Failure {
        let scrub = |detail: String| {
            String::from_utf8_lossy(&scrubber.scrub(detail.as_bytes())).into_owned()
        };
        match self {
            Failure::Server { status, detail } => Failure::Server {
                status,
                detail: scrub(detail),
            },
            Failure::Misconfigured { detail } => Failure::Misconfigured {
                detail: scrub(detail),
            },
            Failure::Connect { detail } => Failure::Connect {
                detail: scrub(detail),
            },
            other => other,
        }
    }

    /// A failure of the connection or body, with the error's text (which never holds the URL).
    pub fn transport(context: &str, error: &UpstreamError) -> Failure {
        Failure::Server {
            status: None,
            detail: format!("{context}: {}", error.detail()),
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
        300..=399 => Some(Failure::Redirect {
            status: status.as_u16(),
        }),
        _ => None,
    }
}

/// Classifies an Azure OpenAI error answer: as [`classify`], and from its body — a 429 without
/// `retry-after` headers waits what its message says ("Please retry after 6 seconds"); a 404
/// `DeploymentNotFound` is the backend's fault (its mapping names no deployment), not the
/// client's. Err hands back what to relay. A body is read within `read_timeout` and up to
/// `max_bytes` (capped at the error-body limit).
pub async fn azure_failure(
    response: UpstreamResponse,
    read_timeout: Duration,
    max_bytes: usize,
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
    let body = match read_error_body(response, max_bytes, read_timeout).await {
        Ok(body) => body,
        Err(ErrorBodyError::Failed(error)) => {
            return Ok(Failure::transport("error body was cut off", &error))
        }
        Err(ErrorBodyError::Timeout) => return Ok(Failure::Timeout),
        Err(ErrorBodyError::TooLarge) => return Ok(Failure::TooLarge { limit: max_bytes }),
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

/// The most characters of an upstream's reason kept for a log line and a backend's
/// `last_error`.
const REASON_CHARS: usize = 200;

/// An upstream's reason (an error message, a TLS alert), cut to [`REASON_CHARS`] characters.
pub fn shorten_reason(text: &str) -> String {
    text.chars().take(REASON_CHARS).collect()
}

/// Why sending the request failed, without the upstream's address.
pub fn connection_failure(error: &UpstreamError) -> Failure {
    if let Some(refused) = crate::egress::refusal_in(error) {
        return Failure::EgressRefused {
            detail: refused.to_string(),
        };
    }
    if error.is_connect() {
        // The TLS reason is worth a backend's `last_error` (an internal CA not trusted, an
        // expired certificate), shortened as upstream error texts are (rustls lists every name
        // a certificate holds when none fits); other connect errors stay generic.
        let detail = match error.tls_failure() {
            Some(tls) => shorten_reason(&format!("TLS handshake failed: {tls}")),
            None => "connection failed".to_owned(),
        };
        return Failure::Connect { detail };
    }
    let detail = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.detail()
    };
    Failure::Server {
        status: None,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_cut_at_200_characters_not_bytes() {
        assert_eq!(shorten_reason("short"), "short");
        let long = "é".repeat(250);
        let cut = shorten_reason(&long);
        assert_eq!(cut.chars().count(), 200);
        assert!(long.starts_with(&cut));
    }

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
        assert!(matches!(
            class(302),
            Some(Failure::Redirect { status: 302 })
        ));
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
        // #14's endings: a redirect and an oversized answer are the upstream's (server_error);
        // an address the egress policy refuses is a connection not made.
        assert_eq!(result(302), Some(AttemptResult::ServerError));
        assert_eq!(
            Failure::TooLarge { limit: 1024 }.attempt_result(),
            AttemptResult::ServerError
        );
        let egress = Failure::EgressRefused {
            detail: "refused".into(),
        };
        assert_eq!(egress.attempt_result(), AttemptResult::ConnectError);
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
