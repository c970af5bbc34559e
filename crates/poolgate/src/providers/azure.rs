//! Azure OpenAI: the OpenAI wire format at Azure's URLs, with Azure's key header.
//!
//! - **Deployments** (the classic form): `{base}/openai/deployments/{deployment}/chat/completions`
//!   (and `/completions`, `/embeddings`) `?api-version=…`; the deployment is the mapping's
//!   upstream model. The Responses API is not per deployment: `{base}/openai/responses?api-version=…`
//!   with the deployment as the body's `model` (it needs a `2025-03-01-preview` or later version).
//! - **v1** (the newer, versionless form): `{base}/openai/v1/chat/completions`, `/responses`, …
//!   with the deployment as the body's `model`, as on OpenAI itself; `api-version` only if set.
//!
//! `base` is the resource endpoint (`https://NAME.openai.azure.com`); a trailing `/openai` or
//! `/openai/v1` is tolerated. The key goes in the `api-key` header. Answers, errors and streams
//! are OpenAI's: errors are `{"error": {"code", "message", …}}` (Azure's `code` is a string such as
//! `"429"`, `"DeploymentNotFound"` or `"content_filter"`, and `type` is often missing), and a 429
//! carries `retry-after` and `retry-after-ms` (read by [`crate::cooldown::parse_retry_after`]),
//! plus `x-ratelimit-remaining-requests` / `-tokens` on every answer.

use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::body::SplicedBody;
use super::responses::ResponsesCall;
use super::{Endpoint, UpstreamRequest};
use crate::cooldown::parse_retry_after;
pub use crate::domain::azure::DEFAULT_API_VERSION;
use crate::domain::azure::{is_api_version, is_deployment, is_v1_base};

/// What is wrong with an Azure backend's settings or a value put into its URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AzureError {
    #[error("`{0}` is not an Azure api-version (letters, digits, `.` and `-`)")]
    InvalidApiVersion(String),
    #[error("`{0}` is not an Azure deployment name (1-64 letters, digits, `.`, `_`, `-`)")]
    InvalidDeployment(String),
    #[error("upstream key is not a valid header value")]
    InvalidKey,
}

/// An `api-version` value, checked to be safe in a query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVersion(String);

impl ApiVersion {
    pub fn parse(text: &str) -> Result<ApiVersion, AzureError> {
        if is_api_version(text) {
            Ok(ApiVersion(text.to_owned()))
        } else {
            Err(AzureError::InvalidApiVersion(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which of Azure's URL forms a backend uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureForm {
    /// `/openai/deployments/{deployment}/…?api-version=…`.
    Deployments { api_version: ApiVersion },
    /// `/openai/v1/…`, model in the body.
    V1 { api_version: Option<ApiVersion> },
}

impl AzureForm {
    /// The form a backend's settings name: the v1 form for a base URL ending in `/openai/v1`,
    /// deployment URLs otherwise (with `api_version`, default [`DEFAULT_API_VERSION`]).
    pub fn of(base_url: &str, api_version: Option<&str>) -> Result<AzureForm, AzureError> {
        let version = api_version.map(ApiVersion::parse).transpose()?;
        Ok(if is_v1_base(base_url) {
            AzureForm::V1 {
                api_version: version,
            }
        } else {
            AzureForm::Deployments {
                api_version: match version {
                    Some(version) => version,
                    None => ApiVersion::parse(DEFAULT_API_VERSION)?,
                },
            }
        })
    }
}

/// What an Azure backend is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureOperation {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses(ResponsesCall),
}

impl From<Endpoint> for AzureOperation {
    /// The operation of a plain call (Responses API calls carry their own, with the id).
    fn from(endpoint: Endpoint) -> Self {
        match endpoint {
            Endpoint::Completions => AzureOperation::Completions,
            Endpoint::Embeddings => AzureOperation::Embeddings,
            // Anthropic clients (and Responses clients of backends without it) are served
            // through Chat Completions; count_tokens never reaches an Azure backend.
            Endpoint::ChatCompletions
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Responses
            | Endpoint::ResponsesRetrieve
            | Endpoint::ResponsesDelete
            | Endpoint::ResponsesCancel
            | Endpoint::ResponsesInputItems => AzureOperation::ChatCompletions,
        }
    }
}

impl AzureOperation {
    pub fn method(&self) -> Method {
        match self {
            AzureOperation::Responses(call) => call.method(),
            _ => Method::POST,
        }
    }

    /// The path below `/openai/deployments/{deployment}` or `/openai/v1`.
    fn path(&self) -> String {
        match self {
            AzureOperation::ChatCompletions => "/chat/completions".to_owned(),
            AzureOperation::Completions => "/completions".to_owned(),
            AzureOperation::Embeddings => "/embeddings".to_owned(),
            AzureOperation::Responses(call) => call.path(),
        }
    }
}

/// Deployment names: 1–64 ASCII letters, digits, `.`, `_` and `-` (they go into the URL path).
pub fn check_deployment(name: &str) -> Result<&str, AzureError> {
    if is_deployment(name) {
        Ok(name)
    } else {
        Err(AzureError::InvalidDeployment(name.to_owned()))
    }
}

/// The resource endpoint without a trailing `/`, `/openai` or `/openai/v1`.
fn resource_root(base_url: &str) -> &str {
    let base = base_url.trim_end_matches('/');
    let base = base.strip_suffix("/openai/v1").unwrap_or(base);
    base.strip_suffix("/openai").unwrap_or(base)
}

/// The URL of `operation` on deployment `deployment`.
pub fn url(
    base_url: &str,
    form: &AzureForm,
    deployment: &str,
    operation: &AzureOperation,
) -> Result<String, AzureError> {
    let root = resource_root(base_url);
    let path = operation.path();
    Ok(match form {
        AzureForm::Deployments { api_version } => {
            let version = api_version.as_str();
            match operation {
                AzureOperation::Responses(_) => {
                    format!("{root}/openai{path}?api-version={version}")
                }
                _ => {
                    let deployment = check_deployment(deployment)?;
                    format!("{root}/openai/deployments/{deployment}{path}?api-version={version}")
                }
            }
        }
        AzureForm::V1 { api_version } => match api_version {
            Some(version) => format!("{root}/openai/v1{path}?api-version={}", version.as_str()),
            None => format!("{root}/openai/v1{path}"),
        },
    })
}

/// Builds the upstream request: Azure's URL, `api-key` header, the body as given (with the
/// deployment already as its `model`, which v1 and Responses need and deployment URLs ignore).
pub fn build_request(
    base_url: &str,
    api_key: &secrecy::SecretString,
    form: &AzureForm,
    deployment: &str,
    operation: &AzureOperation,
    body: SplicedBody,
) -> Result<UpstreamRequest, AzureError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut key =
        HeaderValue::from_str(api_key.expose_secret()).map_err(|_| AzureError::InvalidKey)?;
    key.set_sensitive(true);
    headers.insert("api-key", key);
    Ok(UpstreamRequest {
        method: operation.method(),
        url: url(base_url, form, deployment, operation)?.into(),
        headers,
        body,
    })
}

// === reading answers ===

/// What Azure's headers say about its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHints {
    /// `retry-after-ms`, else `retry-after` (seconds or a date).
    pub retry_after: Option<Duration>,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: Option<u64>,
}

/// Reads the rate-limit headers of an Azure answer.
pub fn rate_limit_hints(headers: &HeaderMap, now: SystemTime) -> RateLimitHints {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    };
    RateLimitHints {
        retry_after: parse_retry_after(headers, now),
        remaining_requests: number("x-ratelimit-remaining-requests"),
        remaining_tokens: number("x-ratelimit-remaining-tokens"),
    }
}

/// Azure's error body: OpenAI's shape, with `code` a string and `type` often missing.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AzureErrorBody {
    pub error: AzureErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AzureErrorDetail {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

/// What an Azure error means for routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AzureErrorKind {
    /// 404 `DeploymentNotFound`: the backend's mapping names a deployment that does not exist —
    /// the backend's fault, not the client's (fail over; the backend needs fixing).
    DeploymentNotFound,
    /// 400 `content_filter`: Azure's content filter refused the prompt — the client's request.
    ContentFilter,
    /// Anything else: classified by status like any OpenAI-compatible answer.
    Other,
}

impl AzureErrorBody {
    pub fn parse(body: &[u8]) -> Option<AzureErrorBody> {
        serde_json::from_slice(body).ok()
    }

    pub fn kind(&self) -> AzureErrorKind {
        match self.error.code.as_deref() {
            Some("DeploymentNotFound") => AzureErrorKind::DeploymentNotFound,
            Some("content_filter") => AzureErrorKind::ContentFilter,
            _ => AzureErrorKind::Other,
        }
    }

    /// The wait a 429's message asks for ("Please retry after 6 seconds."), for the rare 429
    /// without `retry-after` headers.
    pub fn retry_after_in_message(&self) -> Option<Duration> {
        let message = self.error.message.to_ascii_lowercase();
        ["retry after ", "try again in "].iter().find_map(|lead| {
            let rest = &message[message.find(lead)? + lead.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let unit = rest[digits.len()..].trim_start();
            let seconds: u64 = digits.parse().ok()?;
            unit.starts_with("second")
                .then(|| Duration::from_secs(seconds))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::responses::ResponseId;
    use bytes::Bytes;
    use secrecy::SecretString;

    fn deployments() -> AzureForm {
        AzureForm::Deployments {
            api_version: ApiVersion::parse(DEFAULT_API_VERSION).unwrap(),
        }
    }

    #[test]
    fn deployment_urls_carry_the_deployment_and_api_version() {
        let base = "https://res.openai.azure.com";
        for (endpoint, path) in [
            (Endpoint::ChatCompletions, "chat/completions"),
            (Endpoint::Messages, "chat/completions"),
            (Endpoint::Completions, "completions"),
            (Endpoint::Embeddings, "embeddings"),
        ] {
            assert_eq!(
                url(base, &deployments(), "gpt4o-prod", &endpoint.into()).unwrap(),
                format!("https://res.openai.azure.com/openai/deployments/gpt4o-prod/{path}?api-version=2024-10-21")
            );
        }
        for tolerated in [
            "https://res.openai.azure.com/",
            "https://res.openai.azure.com/openai",
            "https://res.openai.azure.com/openai/v1/",
        ] {
            assert_eq!(
                url(tolerated, &deployments(), "d", &AzureOperation::Embeddings).unwrap(),
                "https://res.openai.azure.com/openai/deployments/d/embeddings?api-version=2024-10-21"
            );
        }
    }

    #[test]
    fn responses_calls_are_not_per_deployment() {
        let id = ResponseId::parse("resp_1").unwrap();
        let form = AzureForm::Deployments {
            api_version: ApiVersion::parse("2025-04-01-preview").unwrap(),
        };
        let cases = [
            (ResponsesCall::Create, "POST", "/openai/responses"),
            (
                ResponsesCall::Retrieve(id.clone()),
                "GET",
                "/openai/responses/resp_1",
            ),
            (
                ResponsesCall::Delete(id.clone()),
                "DELETE",
                "/openai/responses/resp_1",
            ),
            (
                ResponsesCall::Cancel(id),
                "POST",
                "/openai/responses/resp_1/cancel",
            ),
        ];
        for (call, method, path) in cases {
            let operation = AzureOperation::Responses(call);
            assert_eq!(operation.method().as_str(), method);
            assert_eq!(
                url("https://r.openai.azure.com", &form, "ignored", &operation).unwrap(),
                format!("https://r.openai.azure.com{path}?api-version=2025-04-01-preview")
            );
        }
    }

    #[test]
    fn the_form_follows_the_base_url() {
        assert_eq!(
            AzureForm::of("https://r.openai.azure.com", None).unwrap(),
            deployments()
        );
        assert_eq!(
            AzureForm::of("https://r.openai.azure.com/openai/v1/", None).unwrap(),
            AzureForm::V1 { api_version: None }
        );
        assert!(AzureForm::of("https://r", Some("bad version")).is_err());
    }

    #[test]
    fn v1_urls_have_no_deployment_and_an_optional_version() {
        let plain = AzureForm::V1 { api_version: None };
        assert_eq!(
            url(
                "https://r.openai.azure.com/openai/v1",
                &plain,
                "d",
                &AzureOperation::ChatCompletions
            )
            .unwrap(),
            "https://r.openai.azure.com/openai/v1/chat/completions"
        );
        let versioned = AzureForm::V1 {
            api_version: Some(ApiVersion::parse("preview").unwrap()),
        };
        assert_eq!(
            url(
                "https://r.openai.azure.com",
                &versioned,
                "d",
                &AzureOperation::Responses(ResponsesCall::Create)
            )
            .unwrap(),
            "https://r.openai.azure.com/openai/v1/responses?api-version=preview"
        );
    }

    #[test]
    fn unsafe_names_never_reach_the_url() {
        for bad in ["", "a/b", "a?x=1", "a b", "../x", &"d".repeat(65)] {
            assert_eq!(
                url(
                    "https://r",
                    &deployments(),
                    bad,
                    &AzureOperation::ChatCompletions
                ),
                Err(AzureError::InvalidDeployment(bad.to_owned()))
            );
        }
        for bad in ["", "2024-10-21&x=1", "a b", "v/1"] {
            assert!(ApiVersion::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_send_the_key_in_api_key() {
        let request = build_request(
            "https://r.openai.azure.com",
            &SecretString::from("azure-key-1"),
            &deployments(),
            "gpt4o",
            &AzureOperation::ChatCompletions,
            SplicedBody::whole(Bytes::from_static(b"{}")),
        )
        .unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.headers["api-key"], "azure-key-1");
        assert!(request.headers["api-key"].is_sensitive());
        assert!(request.headers.get("authorization").is_none());
        assert_eq!(request.headers["content-type"], "application/json");
        assert!(build_request(
            "https://r",
            &SecretString::from("bad\nkey"),
            &deployments(),
            "d",
            &AzureOperation::Embeddings,
            SplicedBody::whole(Bytes::new())
        )
        .is_err());
    }

    #[test]
    fn rate_limit_headers_read_like_openai() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("6"));
        headers.insert("retry-after-ms", HeaderValue::from_static("5800"));
        headers.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("0"),
        );
        headers.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("1200"),
        );
        assert_eq!(
            rate_limit_hints(&headers, SystemTime::UNIX_EPOCH),
            RateLimitHints {
                retry_after: Some(Duration::from_millis(5800)),
                remaining_requests: Some(0),
                remaining_tokens: Some(1200),
            }
        );
        assert_eq!(
            rate_limit_hints(&HeaderMap::new(), SystemTime::UNIX_EPOCH),
            RateLimitHints::default()
        );
    }

    #[test]
    fn error_bodies_are_classified() {
        let not_found = AzureErrorBody::parse(br#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#).unwrap();
        assert_eq!(not_found.kind(), AzureErrorKind::DeploymentNotFound);
        let filtered = AzureErrorBody::parse(br#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#).unwrap();
        assert_eq!(filtered.kind(), AzureErrorKind::ContentFilter);
        assert_eq!(filtered.error.param.as_deref(), Some("prompt"));
        let limited = AzureErrorBody::parse(br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."}}"#).unwrap();
        assert_eq!(limited.kind(), AzureErrorKind::Other);
        assert_eq!(
            limited.retry_after_in_message(),
            Some(Duration::from_secs(6))
        );
        let other = AzureErrorBody::parse(br#"{"error":{"code":"429","message":"Rate limit is exceeded. Try again in 59 seconds."}}"#).unwrap();
        assert_eq!(
            other.retry_after_in_message(),
            Some(Duration::from_secs(59))
        );
        let none =
            AzureErrorBody::parse(br#"{"error":{"code":"500","message":"retry after a while"}}"#)
                .unwrap();
        assert_eq!(none.retry_after_in_message(), None);
        // The shared reader sees Azure errors too (used to re-shape them for Anthropic clients).
        let (kind, message) =
            crate::translate::error_parts(br#"{"error":{"code":"429","message":"slow down"}}"#)
                .unwrap();
        assert_eq!(
            (kind.as_str(), message.as_str()),
            ("api_error", "slow down")
        );
    }
}
