//! `POST /v1/messages/count_tokens` passed through to an Anthropic backend: the client's body
//! with the upstream model id, sent to `{api_base_url}/v1/messages/count_tokens` with the same
//! headers as a Messages call. The answer (`{"input_tokens": N}`) goes back as it is; it costs no
//! tokens, so its usage record has none.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::anthropic::{self, Envelope};
use super::body::SplicedBody;
use super::target::{UpstreamTarget, ANTHROPIC_COUNT_TOKENS};
use super::UpstreamRequest;

/// What is wrong with a count_tokens request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountTokensError {
    /// 400.
    #[error("{message}")]
    InvalidBody {
        message: String,
        param: Option<&'static str>,
    },
    /// 500: the backend's key cannot be sent as a header, or the body cannot be encoded.
    #[error("cannot build the upstream request")]
    Build,
}

/// A client's count_tokens body, parsed far enough to route it.
#[derive(Debug)]
pub struct CountTokensRequest {
    pub model: String,
    envelope: Envelope,
}

impl CountTokensRequest {
    pub fn parse(body: &[u8]) -> Result<CountTokensRequest, CountTokensError> {
        let envelope = Envelope::parse(body).map_err(|error| CountTokensError::InvalidBody {
            param: error
                .param
                .as_deref()
                .and_then(|param| ["model", "stream"].into_iter().find(|name| *name == param)),
            message: error.message,
        })?;
        let model = match &envelope.model {
            Some(Value::String(model)) if model.len() > crate::domain::MAX_MODEL_NAME_BYTES => {
                return Err(CountTokensError::InvalidBody {
                    message: format!(
                        "model: at most {} bytes",
                        crate::domain::MAX_MODEL_NAME_BYTES
                    ),
                    param: Some("model"),
                })
            }
            Some(Value::String(model)) if !model.is_empty() => model.clone(),
            _ => {
                return Err(CountTokensError::InvalidBody {
                    message: "model: field required (a string)".to_owned(),
                    param: Some("model"),
                })
            }
        };
        Ok(CountTokensRequest { model, envelope })
    }

    /// The upstream request for an Anthropic backend; `raw` is the body this request was parsed
    /// from (sent as slices of it around the model id).
    pub fn build(
        &self,
        raw: &Bytes,
        target: &UpstreamTarget,
        upstream_model: &str,
        client_headers: &[(HeaderName, HeaderValue)],
    ) -> Result<UpstreamRequest, CountTokensError> {
        // count_tokens never streams: a `stream` the client sent is left out (rare: the body is
        // re-encoded for it).
        let body = if self.envelope.stream.is_some() {
            let mut fields: Map<String, Value> =
                serde_json::from_slice(raw).map_err(|_| CountTokensError::Build)?;
            fields.remove("stream");
            fields.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
            let body = serde_json::to_vec(&fields).map_err(|_| CountTokensError::Build)?;
            SplicedBody::whole(Bytes::from(body))
        } else {
            self.envelope
                .passthrough_body(raw, upstream_model, false)
                .map_err(|_| CountTokensError::Build)?
        };
        let mut request = anthropic::build_request(target, body, client_headers)
            .map_err(|_| CountTokensError::Build)?;
        request.url = target.url(ANTHROPIC_COUNT_TOKENS);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn builds_the_count_tokens_call_with_the_upstream_model() {
        let raw = Bytes::from_static(
            br#"{"model":"sonnet","system":"Be brief.","messages":[{"role":"user","content":"Hello"}],"tools":[]}"#,
        );
        let request = CountTokensRequest::parse(&raw).unwrap();
        assert_eq!(request.model, "sonnet");
        let upstream = request
            .build(
                &raw,
                &UpstreamTarget::new(
                    crate::domain::ApiKind::Anthropic,
                    "https://api.anthropic.com",
                    &SecretString::from("sk-ant-1"),
                ),
                "claude-sonnet-4-5",
                &[(
                    HeaderName::from_static("anthropic-beta"),
                    HeaderValue::from_static("token-counting-2024-11-01"),
                )],
            )
            .unwrap();
        assert_eq!(
            upstream.url,
            "https://api.anthropic.com/v1/messages/count_tokens"
        );
        assert_eq!(upstream.headers["x-api-key"], "sk-ant-1");
        assert_eq!(
            upstream.headers["anthropic-version"],
            anthropic::ANTHROPIC_VERSION
        );
        assert_eq!(
            upstream.headers["anthropic-beta"],
            "token-counting-2024-11-01"
        );
        let body: Value = serde_json::from_slice(&upstream.body.to_vec()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model": "claude-sonnet-4-5", "system": "Be brief.",
                "messages": [{"role": "user", "content": "Hello"}], "tools": []})
        );
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        assert!(matches!(
            CountTokensRequest::parse(br#"{"messages":[]}"#),
            Err(CountTokensError::InvalidBody {
                param: Some("model"),
                ..
            })
        ));
        assert!(matches!(
            CountTokensRequest::parse(b"nope"),
            Err(CountTokensError::InvalidBody { param: None, .. })
        ));
    }
}
