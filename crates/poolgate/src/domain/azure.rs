//! The rules of Azure OpenAI backends (`api = "azure"`): which URL form the base URL names, the
//! `api-version` values poolgate puts into URLs, deployment names, and whether the backend has
//! the Responses API by default. [`crate::providers::azure`] builds the requests from them.

use super::Invalid;

/// The latest generally available data-plane version for deployment URLs (the default).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The first `api-version` with the Responses API on deployment-form resources.
pub const FIRST_RESPONSES_API_VERSION: &str = "2025-03-01-preview";

/// Whether the base URL names Azure's versionless v1 form (`…/openai/v1`, model in the body);
/// otherwise it is the resource endpoint and requests use deployment URLs.
pub fn is_v1_base(base_url: &str) -> bool {
    base_url.trim_end_matches('/').ends_with("/openai/v1")
}

/// `api-version` values: 1–32 ASCII letters, digits, `.` and `-` (they go into a query string).
pub fn is_api_version(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Deployment names: 1–64 ASCII letters, digits, `.`, `_` and `-` (they go into the URL path).
pub fn is_deployment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether a version is `2025-03-01-preview` or later (dates compare as text).
pub fn version_has_responses(version: &str) -> bool {
    version
        .get(..10)
        .is_some_and(|date| date >= &FIRST_RESPONSES_API_VERSION[..10])
}

/// Whether an Azure backend has the Responses API unless told otherwise: the v1 form always, the
/// deployment form from `2025-03-01-preview` on.
pub fn responses_by_default(base_url: &str, api_version: Option<&str>) -> bool {
    is_v1_base(base_url) || version_has_responses(api_version.unwrap_or(DEFAULT_API_VERSION))
}

/// Checks an `api_version` field.
pub fn validate_api_version(field: &str, version: &str) -> Result<(), Invalid> {
    if is_api_version(version) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be an Azure api-version such as `2024-10-21` (letters, digits, `.` and `-`)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_versions_and_the_responses_default() {
        assert!(is_v1_base("https://r.openai.azure.com/openai/v1"));
        assert!(!is_v1_base("https://r.openai.azure.com"));
        assert!(is_api_version("2025-04-01-preview"));
        assert!(!is_api_version("2024-10-21&x=1"));
        assert!(!is_deployment("a/b"));
        assert!(is_deployment("gpt4o-prod_1.2"));
        assert!(version_has_responses("2025-03-01-preview"));
        assert!(version_has_responses("2025-04-01-preview"));
        assert!(!version_has_responses("2024-10-21"));
        assert!(!version_has_responses("latest"));
        assert!(responses_by_default("https://r/openai/v1", None));
        assert!(!responses_by_default("https://r", None));
        assert!(responses_by_default(
            "https://r",
            Some("2025-03-01-preview")
        ));
    }
}
