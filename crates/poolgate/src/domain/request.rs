//! What is wrong with a client's request body or header, said the way clients read it: a message,
//! the parameter at fault and a short code. Every layer that reads what a client sent (the wire
//! formats, translation, the proxy, the admin API) reports it with [`InvalidRequest`]; the API
//! layer renders it as a 400 in the client's format.

use super::Invalid;

/// The client's request is wrong (HTTP 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub message: String,
    /// The parameter at fault (a JSON path or a header name).
    pub param: Option<String>,
    /// A short machine-readable code (`missing_required_parameter`, `invalid_type`, …).
    pub code: Option<&'static str>,
}

impl InvalidRequest {
    /// An error without a parameter or code.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// An error naming the parameter at fault.
    pub fn param(message: impl Into<String>, param: &str, code: &'static str) -> Self {
        Self {
            message: message.into(),
            param: Some(param.to_owned()),
            code: Some(code),
        }
    }
}

impl From<Invalid> for InvalidRequest {
    fn from(invalid: Invalid) -> Self {
        InvalidRequest {
            message: invalid.to_string(),
            param: Some(invalid.field),
            code: Some("invalid_value"),
        }
    }
}

/// Parses a JSON body, naming the path of the first problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InvalidRequest> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid value at `{path}`: {inner}")
        };
        InvalidRequest {
            message,
            param: (path != ".").then_some(path),
            code: Some("invalid_body"),
        }
    })?;
    deserializer
        .end()
        .map_err(|error| InvalidRequest::new(format!("request body is not valid JSON: {error}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Body {
        rpm: u32,
    }

    #[test]
    fn json_errors_name_the_path() {
        let error = parse_json::<Body>(br#"{"rpm": "x"}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("rpm"));
        assert_eq!(error.code, Some("invalid_body"));
        let error = parse_json::<Body>(br#"{"rpm": 1"#).unwrap_err();
        assert!(error.message.contains("not valid JSON"), "{error}");
        let error = parse_json::<Body>(br#"{"rpm": 1} {}"#).unwrap_err();
        assert!(error.message.contains("not valid JSON"), "{error}");
        assert!(parse_json::<Body>(br#"{"rpm": 1}"#).is_ok());
    }

    #[test]
    fn field_rules_become_invalid_value_errors() {
        let error = InvalidRequest::from(Invalid::new("weight", "must be between 1 and 100"));
        assert_eq!(error.param.as_deref(), Some("weight"));
        assert_eq!(error.code, Some("invalid_value"));
        assert_eq!(error.message, "`weight`: must be between 1 and 100");
    }
}
