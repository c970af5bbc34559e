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
/// The longest model name a request may carry, in bytes. Real ones (provider ids, Hugging Face
/// repositories, Azure deployments, cloud ARNs) are far shorter; a longer one is refused before
/// it is routed, so a made-up name cannot weigh on the kept wildcard routes or the log lines.
pub const MAX_MODEL_NAME_BYTES: usize = 1024;

/// Refuses a model name over [`MAX_MODEL_NAME_BYTES`] (400, `param: model`).
pub fn check_model_name_length(model: &str) -> Result<(), InvalidRequest> {
    if model.len() > MAX_MODEL_NAME_BYTES {
        return Err(InvalidRequest::param(
            format!(
                "`model` is {} bytes long; a model name has at most {MAX_MODEL_NAME_BYTES}",
                model.len()
            ),
            "model",
            "invalid_value",
        ));
    }
    Ok(())
}

pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InvalidRequest> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        // serde_json reports a value of the wrong JSON type for an enum (`"api": 2`) as a
        // syntax error; when the body parses, say which value is wrong instead.
        let wrong_kind = error
            .inner()
            .is_syntax()
            .then(|| kind_at(body, error.path()))
            .flatten();
        let path = error.path().to_string();
        let inner = error.into_inner();
        if wrong_kind.is_none() && (inner.is_syntax() || inner.is_eof()) {
            // Not JSON: there is no parameter to name (the path would be a guess, `?`).
            return InvalidRequest::new(format!("request body is not valid JSON: {inner}"));
        }
        invalid_field(path, &inner, wrong_kind)
    })?;
    deserializer
        .end()
        .map_err(|error| InvalidRequest::new(format!("request body is not valid JSON: {error}")))?;
    Ok(value)
}

/// [`parse_json`] of a body already read as JSON (part of one, as the admin API reads a
/// backend beside its spend cap): the same errors, naming the same paths.
pub fn parse_json_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, InvalidRequest> {
    serde_path_to_error::deserialize(value)
        .map_err(|error| invalid_field(error.path().to_string(), error.inner(), None))
}

/// The error of a value serde refused at `path` (`.` for the body itself); `wrong_kind`: the
/// JSON kind found there, when serde's message would not say it.
fn invalid_field(
    path: String,
    inner: &serde_json::Error,
    wrong_kind: Option<&str>,
) -> InvalidRequest {
    let plain = in_plain_words(&inner.to_string());
    let message = if let Some(kind) = wrong_kind {
        format!("invalid value at `{path}`: {kind} is not accepted here")
    } else if path == "." {
        format!("invalid request body: {plain}")
    } else {
        format!("invalid value at `{path}`: {plain}")
    };
    // serde's message for an absent field is "missing field `name`" (`Error::missing_field`).
    let missing = inner
        .to_string()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field.to_owned());
    match missing {
        Some(field) => InvalidRequest {
            message,
            param: Some(if path == "." {
                field
            } else {
                format!("{path}.{field}")
            }),
            code: Some("missing_required_parameter"),
        },
        None => InvalidRequest {
            message,
            param: (path != ".").then_some(path),
            code: Some("invalid_body"),
        },
    }
}

/// serde's message with Rust's type names said as JSON's. A value of the wrong JSON type
/// (`invalid type: floating point \`1.5\`, expected i64`) expected "a whole number" or "a
/// number"; a whole number out of range (`invalid value: integer \`-1\`, expected u32`)
/// expected one in the type's range.
fn in_plain_words(message: &str) -> String {
    const WHOLE: [(&str, i128, i128); 10] = [
        ("u8", 0, u8::MAX as i128),
        ("u16", 0, u16::MAX as i128),
        ("u32", 0, u32::MAX as i128),
        ("u64", 0, u64::MAX as i128),
        ("usize", 0, usize::MAX as i128),
        ("i8", i8::MIN as i128, i8::MAX as i128),
        ("i16", i16::MIN as i128, i16::MAX as i128),
        ("i32", i32::MIN as i128, i32::MAX as i128),
        ("i64", i64::MIN as i128, i64::MAX as i128),
        ("isize", isize::MIN as i128, isize::MAX as i128),
    ];
    let wrong_type = message.starts_with("invalid type:");
    let mut plain = message.to_owned();
    for (name, min, max) in WHOLE {
        let expected = if wrong_type {
            "expected a whole number".to_owned()
        } else {
            format!("expected a whole number from {min} to {max}")
        };
        plain = replace_word(&plain, &format!("expected {name}"), &expected);
    }
    if wrong_type {
        for name in ["f32", "f64"] {
            plain = replace_word(&plain, &format!("expected {name}"), "expected a number");
        }
    }
    plain
}

/// `text` with `from` replaced by `to` where `from` is not followed by a letter or digit (so
/// `expected u8` is not found in `expected u80`).
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// What kind of JSON value `body` holds at `path` ("a number", "an object", …), if `body` is
/// valid JSON and has a value there (below the root).
fn kind_at(body: &[u8], path: &serde_path_to_error::Path) -> Option<&'static str> {
    use serde_path_to_error::Segment;
    // An error at the root is about the body as a whole, not one value in it.
    path.iter().next()?;
    let document: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut value = &document;
    for segment in path {
        value = match segment {
            Segment::Map { key } => value.get(key.as_str())?,
            Segment::Seq { index } => value.get(*index)?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    })
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
        // Not JSON at all: no parameter (serde_path_to_error's path there is `?`).
        let error = parse_json::<Body>(br#"{bad json"#).unwrap_err();
        assert!(error.message.contains("not valid JSON"), "{error}");
        assert_eq!(error.param, None);
        // An absent field is named, at the root and below it.
        let error = parse_json::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("rpm"), "{error}");
        assert_eq!(error.code, Some("missing_required_parameter"));
        assert!(error.message.contains("missing field `rpm`"), "{error}");
        let error = parse_json::<Nested>(br#"{"api": "openai", "list": [{}]}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("list[0].rpm"), "{error}");
        let error = parse_json::<Body>(br#"{"rpm": 1} {}"#).unwrap_err();
        assert!(error.message.contains("not valid JSON"), "{error}");
        assert!(parse_json::<Body>(br#"{"rpm": 1}"#).is_ok());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Openai,
    }

    #[derive(Debug, serde::Deserialize)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Nested {
        api: Kind,
        list: Vec<Body>,
    }

    #[test]
    fn a_value_of_the_wrong_type_for_an_enum_is_not_called_invalid_json() {
        let error = parse_json::<Nested>(br#"{"api": 2, "list": []}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("api"));
        assert_eq!(
            error.message,
            "invalid value at `api`: a number is not accepted here"
        );
        let error =
            parse_json::<Nested>(br#"{"api": "openai", "list": [{"rpm": 1}, []]}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("list[1]"), "{error}");
        assert!(!error.message.contains("not valid JSON"), "{error}");
        // A body that does not parse is still reported as such.
        let error = parse_json::<Nested>(br#"{"api": 2"#).unwrap_err();
        assert!(error.message.contains("not valid JSON"), "{error}");
    }

    #[test]
    fn rust_type_names_are_said_as_json_kinds() {
        assert_eq!(
            in_plain_words("invalid type: floating point `1.5`, expected i64"),
            "invalid type: floating point `1.5`, expected a whole number"
        );
        assert_eq!(
            in_plain_words("invalid type: string \"x\", expected f64 at line 1 column 9"),
            "invalid type: string \"x\", expected a number at line 1 column 9"
        );
        // A whole number out of the type's range: the range, not "a whole number".
        assert_eq!(
            in_plain_words("invalid value: integer `-1`, expected u32"),
            "invalid value: integer `-1`, expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            in_plain_words("invalid value: integer `300`, expected i8 at line 1 column 4"),
            "invalid value: integer `300`, expected a whole number from -128 to 127 at line 1 \
             column 4"
        );
        // Only whole words: a longer name is left alone.
        assert_eq!(
            in_plain_words("invalid type: expected u80 or u8"),
            "invalid type: expected u80 or u8"
        );
        assert_eq!(
            in_plain_words("invalid type: null, expected u8."),
            "invalid type: null, expected a whole number."
        );
    }

    #[test]
    fn field_rules_become_invalid_value_errors() {
        let error = InvalidRequest::from(Invalid::new("weight", "must be between 1 and 100"));
        assert_eq!(error.param.as_deref(), Some("weight"));
        assert_eq!(error.code, Some("invalid_value"));
        assert_eq!(error.message, "`weight`: must be between 1 and 100");
    }
}
