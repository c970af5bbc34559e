//! The OpenAI wire format: parsing a client's request just far enough to route it (model,
//! stream, stream options — every other field passes through untouched), building the upstream
//! request for an OpenAI-compatible backend, and reading `usage` from answers and stream chunks.

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::HeaderMap;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{model_and_stream, Endpoint, ProviderError, TokenUsage, UpstreamRequest};
use crate::domain::InvalidRequest;

/// A client request in OpenAI format. `rest` keeps every field poolgate does not interpret.
#[derive(Debug, Deserialize)]
pub struct OpenAiRequest {
    pub model: Option<Value>,
    #[serde(default)]
    pub stream: Option<Value>,
    #[serde(default)]
    pub stream_options: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The parsed request with its routing facts checked.
#[derive(Debug)]
pub struct ParsedRequest {
    pub model: String,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    stream_options: Option<Map<String, Value>>,
    rest: Map<String, Value>,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<&'a Map<String, Value>>,
    #[serde(flatten)]
    rest: &'a Map<String, Value>,
}

impl ParsedRequest {
    /// Parses and checks a client body: JSON object, string `model`, boolean `stream`.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<ParsedRequest, InvalidRequest> {
        let request: OpenAiRequest = serde_json::from_slice(body).map_err(|error| {
            InvalidRequest::new(format!(
                "request body is not valid JSON for this endpoint: {error}"
            ))
        })?;
        let (model, stream) = model_and_stream(request.model, request.stream)?;
        if stream && !endpoint.can_stream() {
            return Err(InvalidRequest::param(
                format!("`{}` does not support streaming", endpoint.name()),
                "stream",
                "invalid_value",
            ));
        }
        let client_wants_usage = request
            .stream_options
            .as_ref()
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(ParsedRequest {
            model,
            stream,
            client_wants_usage,
            stream_options: request.stream_options,
            rest: request.rest,
        })
    }

    /// Whether poolgate should add `include_usage` upstream (and strip the usage chunk after).
    pub fn should_inject_usage(&self, inject_enabled: bool) -> bool {
        inject_enabled && self.stream && !self.client_wants_usage
    }

    /// The body for an OpenAI-compatible upstream, with the upstream model id.
    pub fn upstream_body(
        &self,
        upstream_model: &str,
        inject_usage: bool,
    ) -> Result<Bytes, ProviderError> {
        let injected;
        let stream_options = if inject_usage {
            let mut options = self.stream_options.clone().unwrap_or_default();
            options.insert("include_usage".into(), Value::Bool(true));
            injected = options;
            Some(&injected)
        } else {
            self.stream_options.as_ref()
        };
        let outgoing = Outgoing {
            model: upstream_model,
            stream: self.stream,
            stream_options,
            rest: &self.rest,
        };
        Ok(Bytes::from(serde_json::to_vec(&outgoing)?))
    }
}

/// Builds the upstream request for an OpenAI-compatible backend.
pub fn build_request(
    base_url: &str,
    api_key: &secrecy::SecretString,
    endpoint: Endpoint,
    body: Bytes,
) -> Result<UpstreamRequest, ProviderError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", api_key.expose_secret()))
        .map_err(|_| ProviderError::InvalidKey)?;
    auth.set_sensitive(true);
    headers.insert(AUTHORIZATION, auth);
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: format!("{base_url}{}", endpoint.openai_path()),
        headers,
        body,
    })
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<TokenUsage>,
}

/// `usage` of a JSON answer, if present.
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    serde_json::from_slice::<UsageOnly>(body).ok()?.usage
}

/// What a stream chunk says about usage.
#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    usage: Option<TokenUsage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// Reads a stream chunk's `data`: its usage, and whether it is the usage-only chunk
/// (`"choices": []`) that `include_usage` adds. Cheap for chunks without usage.
pub fn chunk_usage(data: &str) -> Option<(TokenUsage, bool)> {
    if !data.contains("\"usage\"") {
        return None;
    }
    let chunk: ChunkUsage = serde_json::from_str(data).ok()?;
    let usage = chunk.usage?;
    let usage_only = chunk.choices.as_ref().is_some_and(Vec::is_empty);
    Some((usage, usage_only))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_and_stream_and_keeps_other_fields() {
        let parsed = ParsedRequest::parse(
            Endpoint::ChatCompletions,
            br#"{"model":"gpt","stream":true,"messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        )
        .unwrap();
        assert_eq!(parsed.model, "gpt");
        assert!(parsed.stream);
        let body = parsed.upstream_body("up-1", true).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["model"], "up-1");
        assert_eq!(value["stream"], true);
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["temperature"], 0.5);
        assert_eq!(value["messages"][0]["content"], "hi");
    }

    #[test]
    fn client_stream_options_are_kept() {
        let parsed = ParsedRequest::parse(
            Endpoint::ChatCompletions,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(parsed.client_wants_usage);
        assert!(!parsed.should_inject_usage(true));
        let value: Value =
            serde_json::from_slice(&parsed.upstream_body("u", false).unwrap()).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
    }

    #[test]
    fn bad_requests_are_refused_with_the_param() {
        for (body, param) in [
            (&br#"{"messages":[]}"#[..], Some("model")),
            (br#"{"model":7}"#, Some("model")),
            (br#"{"model":"m","stream":"yes"}"#, Some("stream")),
            (br#"not json"#, None),
            (br#"[1,2]"#, None),
        ] {
            match ParsedRequest::parse(Endpoint::ChatCompletions, body) {
                Err(error) => assert_eq!(error.param.as_deref(), param),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            ParsedRequest::parse(Endpoint::Embeddings, br#"{"model":"m","stream":true}"#).is_err()
        );
    }

    #[test]
    fn reads_usage_from_chunks() {
        assert_eq!(
            chunk_usage(r#"{"choices":[{"delta":{}}],"usage":null}"#),
            None
        );
        let (usage, usage_only) = chunk_usage(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(usage.total_tokens, 7);
        assert!(usage_only);
        assert_eq!(
            usage_of_body(
                br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
            )
            .unwrap()
            .completion_tokens,
            2
        );
    }
}
