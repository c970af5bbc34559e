//! Azure OpenAI's error shapes: `{"error": {"code": "<string>", "message"}}`, no `type`.

use bytes::Bytes;
use serde::Serialize;

use super::json_bytes;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

fn body(code: &str, message: &str) -> Bytes {
    json_bytes(&ErrorBody {
        error: ErrorDetail { code, message },
    })
}

/// A scripted error: `code` is the status as a string, as Azure sends for 401 and 429.
pub(crate) fn error(status: u16, message: &str) -> Bytes {
    body(&status.to_string(), message)
}

/// 401 without a (valid) `api-key`.
pub(crate) fn unauthorized() -> Bytes {
    body(
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
    )
}

/// 404 for a deployment URL without `api-version`.
pub(crate) fn resource_not_found() -> Bytes {
    body("404", "Resource not found")
}

/// 404 for a deployment the resource does not have.
pub(crate) fn deployment_not_found() -> Bytes {
    body(
        "DeploymentNotFound",
        "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
    )
}
