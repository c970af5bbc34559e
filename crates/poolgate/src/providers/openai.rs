//! The OpenAI wire format: parsing a client's request just far enough to route it (model,
//! stream, stream options — every other field passes through untouched), building the upstream
//! request for an OpenAI-compatible backend, and reading `usage` from answers and stream chunks.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::HeaderMap;
use memchr::memmem::{Finder, FinderRev};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::body::{Required, SplicedBody, TopLevel};
use super::target::UpstreamTarget;
use super::{model_and_stream, Endpoint, ProviderError, TokenUsage, UpstreamRequest};
use crate::domain::InvalidRequest;

/// The parsed request with its routing facts checked. Only `model`, `stream` and
/// `stream_options` are read (and the first byte of the endpoint's required content, see
/// `check_required_content`); the body itself is kept as the client sent it and sent upstream
/// with the model replaced ([`ParsedRequest::upstream_body`]), never re-serialised.
#[derive(Debug)]
pub struct ParsedRequest {
    pub model: String,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    stream_options: Option<Map<String, Value>>,
    top: TopLevel,
}

/// The top-level fields poolgate reads from an OpenAI-format body. `messages` and `input` are
/// only looked at, not parsed: whether the endpoint's required one is there and of its type.
const FIELDS: &[&str] = &["model", "stream", "stream_options", "messages", "input"];

/// The endpoint's required content, as OpenAI checks it: a chat completion needs a `messages`
/// array, an embedding an `input` — or `messages`, vLLM's chat-embeddings form
/// ([`TopLevel::require`]). Refused here, such a request gets OpenAI's 400 without an upstream
/// call.
fn check_required_content(
    endpoint: Endpoint,
    top: &TopLevel,
    body: &[u8],
) -> Result<(), InvalidRequest> {
    match endpoint {
        Endpoint::ChatCompletions => top.require(body, "messages", Required::Array),
        Endpoint::Embeddings if top.span("input").is_none() && top.span("messages").is_some() => {
            top.require(body, "messages", Required::Array)
        }
        Endpoint::Embeddings => top.require(body, "input", Required::Present),
        _ => Ok(()),
    }
}

impl ParsedRequest {
    /// Parses and checks a client body: JSON object, string `model`, boolean `stream`, the
    /// endpoint's required content there.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<ParsedRequest, InvalidRequest> {
        let top = TopLevel::parse(body, FIELDS)?;
        let field = |name: &str| top.parse_value(body, name);
        let (model, stream) = model_and_stream(field("model")?, field("stream")?)?;
        check_required_content(endpoint, &top, body)?;
        if stream && !endpoint.can_stream() {
            return Err(InvalidRequest::param(
                format!("`{}` does not support streaming", endpoint.name()),
                "stream",
                "invalid_value",
            ));
        }
        let stream_options = match field("stream_options")? {
            None | Some(Value::Null) => None,
            Some(Value::Object(options)) => Some(options),
            Some(_) => {
                return Err(InvalidRequest::param(
                    "`stream_options` must be an object",
                    "stream_options",
                    "invalid_type",
                ))
            }
        };
        let client_wants_usage = stream_options
            .as_ref()
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(ParsedRequest {
            model,
            stream,
            client_wants_usage,
            stream_options,
            top,
        })
    }

    /// Whether poolgate should add `include_usage` upstream (and strip the usage chunk after).
    pub fn should_inject_usage(&self, inject_enabled: bool) -> bool {
        inject_enabled && self.stream && !self.client_wants_usage
    }

    /// The body for an OpenAI-compatible upstream: the client's `raw` body (which this request
    /// was parsed from) with the upstream model id, and `stream_options.include_usage` when
    /// injecting — slices of `raw` around the changed values, not a copy.
    pub fn upstream_body(
        &self,
        raw: &Bytes,
        upstream_model: &str,
        inject_usage: bool,
    ) -> Result<SplicedBody, ProviderError> {
        let mut edits = Vec::with_capacity(2);
        if let Some(span) = self.top.span("model") {
            edits.push((span, Bytes::from(serde_json::to_vec(upstream_model)?)));
        }
        if inject_usage {
            let mut options = self.stream_options.clone().unwrap_or_default();
            options.insert("include_usage".into(), Value::Bool(true));
            let options = serde_json::to_vec(&options)?;
            match self.top.span("stream_options") {
                Some(span) => edits.push((span, Bytes::from(options))),
                None => {
                    let mut field = b",\"stream_options\":".to_vec();
                    field.extend_from_slice(&options);
                    edits.push((self.top.end()..self.top.end(), Bytes::from(field)));
                }
            }
        }
        Ok(SplicedBody::splice(raw, edits))
    }
}

/// Builds the upstream request for an OpenAI-compatible backend (its URL and auth header
/// prebuilt in `target`).
pub fn build_request(
    target: &UpstreamTarget,
    endpoint: Endpoint,
    body: SplicedBody,
) -> Result<UpstreamRequest, ProviderError> {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(AUTHORIZATION, target.auth()?);
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: target.url(endpoint.openai_path()),
        headers,
        body,
    })
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<TokenUsage>,
}

/// `usage` of a JSON answer, if present: read at the end of the answer, where OpenAI and the
/// servers that follow it put it ([`trailing_usage`]), else by parsing the whole answer.
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    if let Some(usage) = trailing_usage(body) {
        return usage;
    }
    serde_json::from_slice::<UsageOnly>(body).ok()?.usage
}

/// The `"usage"` key, searched for from the end of an answer.
static USAGE_KEY_FROM_END: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"usage\""));

/// The answer's top-level `usage` when it is the answer's last member: the last `"usage"` in
/// the text, then a colon, a value, and the closing brace of the answer. `None` when the answer
/// is not written that way (the whole answer is parsed then). Exact for valid JSON: a `"`
/// preceded by an even run of backslashes opens a string, and `"usage"` followed by a colon is
/// then a key; a value followed by a single `}` and the end of the text is the top-level
/// object's last member. The whole answer is not checked (it was forwarded as it is), and a
/// second top-level `usage` earlier in the answer (which the full parse refuses) is not seen.
fn trailing_usage(body: &[u8]) -> Option<Option<TokenUsage>> {
    let at = USAGE_KEY_FROM_END.rfind(body)?;
    let escapes = body[..at]
        .iter()
        .rev()
        .take_while(|&&byte| byte == b'\\')
        .count();
    if escapes % 2 == 1 {
        return None;
    }
    let value = body[at + USAGE_KEY_FROM_END.needle().len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?;
    let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Option<TokenUsage>>();
    let usage = values.next()?.ok()?;
    let after = value.get(values.byte_offset()..)?.trim_ascii();
    (after == b"}").then_some(usage)
}

/// What a stream chunk says about usage.
#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    usage: Option<TokenUsage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// The `"usage"` key, searched for in every stream chunk.
static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

/// Reads a stream chunk's `data`: its usage, and whether it is the usage-only chunk
/// (`"choices": []`) that `include_usage` adds. Cheap for chunks without usage, and for the
/// chunks `include_usage` marks `"usage":null` (every one but the last).
pub fn chunk_usage(data: &str) -> Option<(TokenUsage, bool)> {
    if !may_carry_usage(data.as_bytes()) {
        return None;
    }
    let chunk: ChunkUsage = serde_json::from_str(data).ok()?;
    let usage = chunk.usage?;
    let usage_only = chunk.choices.as_ref().is_some_and(Vec::is_empty);
    Some((usage, usage_only))
}

/// Whether a chunk can have a non-null `usage` (then it is parsed). No when it never names
/// `"usage"` — as before — and when every `"usage"` in it is directly followed by `:null` and
/// nothing in it is written with a `\u` escape. Exact: a `"` inside a JSON string is always
/// escaped, so a `"usage"` that is not a key is in invalid JSON (no usage either); a top-level
/// `usage` key with a value is `"usage"`, then a colon, then the value — unless the key itself is
/// spelt with `\u` escapes (`"us\u0061ge"`), which only the full parse sees.
fn may_carry_usage(data: &[u8]) -> bool {
    const NULL: &[u8] = b":null";
    let mut named = false;
    for at in USAGE_KEY.find_iter(data) {
        if !data[at + USAGE_KEY.needle().len()..].starts_with(NULL) {
            return true;
        }
        named = true;
    }
    named && memchr::memchr_iter(b'\\', data).any(|at| data.get(at + 1) == Some(&b'u'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole-answer parse, as `usage_of_body` did before the read from the end.
    fn parsed_whole(body: &[u8]) -> Option<TokenUsage> {
        serde_json::from_slice::<UsageOnly>(body).ok()?.usage
    }

    #[test]
    fn usage_is_read_from_the_end_when_it_is_the_answers_last_member() {
        let answers: &[&str] = &[
            r#"{"id":"c","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
            "{\"id\":\"c\",\n \"usage\" :\n {\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":1}}\n}\n",
            r#"{"choices":[],"usage":null}"#,
        ];
        for answer in answers {
            let fast = trailing_usage(answer.as_bytes());
            assert!(fast.is_some(), "read from the end: {answer}");
            assert_eq!(fast.unwrap(), parsed_whole(answer.as_bytes()), "{answer}");
            assert_eq!(
                usage_of_body(answer.as_bytes()),
                parsed_whole(answer.as_bytes())
            );
        }
        let usage = usage_of_body(answers[0].as_bytes()).unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 5));
    }

    #[test]
    fn usage_not_last_nested_or_in_a_string_is_left_to_the_whole_parse() {
        let answers: &[&str] = &[
            // Top level but not last.
            r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8},"id":"c"}"#,
            // Nested, last of its object and of the answer.
            r#"{"id":"c","meta":{"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}}"#,
            r#"{"id":"c","list":[{"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}]}"#,
            // Inside a string (escaped quotes), and a key whose name ends in an escaped `"usage`.
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"text":"say \"usage\":{\"prompt_tokens\":7}}"}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"x\"usage":{"prompt_tokens":7}}"#,
            // The top-level one, spelt with an escape: only the whole parse sees it.
            r#"{"id":"c","us\u0061ge":{"prompt_tokens":4,"completion_tokens":4,"total_tokens":8}}"#,
            // No usage, or not JSON.
            r#"{"id":"c","choices":[]}"#,
            "not json",
        ];
        for answer in answers {
            assert_eq!(trailing_usage(answer.as_bytes()), None, "{answer}");
            assert_eq!(
                usage_of_body(answer.as_bytes()),
                parsed_whole(answer.as_bytes()),
                "{answer}"
            );
        }
        // A key preceded by an escaped backslash (`\\`) is a real key.
        let answer =
            r#"{"path":"C:\\","usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}"#;
        assert!(trailing_usage(answer.as_bytes()).is_some());
        assert_eq!(
            usage_of_body(answer.as_bytes()),
            parsed_whole(answer.as_bytes())
        );
        assert_eq!(usage_of_body(answer.as_bytes()).unwrap().total_tokens, 4);
    }

    #[test]
    fn parses_model_and_stream_and_keeps_other_fields() {
        let raw = Bytes::from_static(
            br#"{"model":"gpt","stream":true,"messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        );
        let parsed = ParsedRequest::parse(Endpoint::ChatCompletions, &raw).unwrap();
        assert_eq!(parsed.model, "gpt");
        assert!(parsed.stream);
        let body = parsed.upstream_body(&raw, "up-1", true).unwrap().to_vec();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["model"], "up-1");
        assert_eq!(value["stream"], true);
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["temperature"], 0.5);
        assert_eq!(value["messages"][0]["content"], "hi");
    }

    #[test]
    fn the_upstream_body_is_the_clients_bytes_with_only_the_model_changed() {
        // `model` not first and escaped, unicode and escapes around it, odd whitespace, a nested
        // `model`, duplicate keys poolgate does not read: everything else kept byte for byte.
        let raw = Bytes::from_static(
            "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"h\\u00e9 \\\"q\\\" \u{1F600}\\n\",\"model\":\"inner\"} ],\n\t\"model\"\t:  \"gpt\\u002d4o\" , \"x\":1, \"x\":2,\"temperature\": 0.50 }\n"
                .as_bytes(),
        );
        let parsed = ParsedRequest::parse(Endpoint::ChatCompletions, &raw).unwrap();
        assert_eq!(parsed.model, "gpt-4o");
        let sent = parsed
            .upstream_body(&raw, "up/\"é\"", false)
            .unwrap()
            .to_vec();
        let expected = std::str::from_utf8(&raw)
            .unwrap()
            .replace(r#""gpt\u002d4o""#, r#""up/\"é\"""#);
        assert_ne!(expected.as_bytes(), &raw[..]);
        assert_eq!(String::from_utf8(sent).unwrap(), expected);
        // A duplicate `model` is refused (routing must read the model the upstream gets).
        let twice = Bytes::from_static(br#"{"model":"a","messages":[],"model":"b"}"#);
        let refused = ParsedRequest::parse(Endpoint::ChatCompletions, &twice).unwrap_err();
        assert_eq!(refused.param.as_deref(), Some("model"));
    }

    #[test]
    fn client_stream_options_are_kept() {
        let raw = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        );
        let parsed = ParsedRequest::parse(Endpoint::ChatCompletions, &raw).unwrap();
        assert!(parsed.client_wants_usage);
        assert!(!parsed.should_inject_usage(true));
        let body = parsed.upstream_body(&raw, "u", false).unwrap().to_vec();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["model"], "u");
    }

    #[test]
    fn injected_usage_merges_into_the_clients_stream_options() {
        let raw = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"chunk":1},"n":2,"messages":[]}"#,
        );
        let parsed = ParsedRequest::parse(Endpoint::ChatCompletions, &raw).unwrap();
        assert!(parsed.should_inject_usage(true));
        let body = parsed.upstream_body(&raw, "u", true).unwrap().to_vec();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value["stream_options"],
            serde_json::json!({"chunk":1,"include_usage":true})
        );
        assert_eq!(value["n"], 2);
    }

    #[test]
    fn bad_requests_are_refused_with_the_param() {
        for (body, param) in [
            (&br#"{"messages":[]}"#[..], Some("model")),
            (br#"{"model":7}"#, Some("model")),
            (
                br#"{"model":"m","stream":"yes","messages":[]}"#,
                Some("stream"),
            ),
            (br#"{"model":"m"}"#, Some("messages")),
            (br#"{"model":"m","messages":null}"#, Some("messages")),
            (br#"{"model":"m","messages":"hi"}"#, Some("messages")),
            (
                br#"{"model":"m","messages":{"role":"user"}}"#,
                Some("messages"),
            ),
            (br#"not json"#, None),
            (br#"[1,2]"#, None),
        ] {
            match ParsedRequest::parse(Endpoint::ChatCompletions, body) {
                Err(error) => assert_eq!(error.param.as_deref(), param),
                other => panic!("{other:?}"),
            }
        }
        let streamed = ParsedRequest::parse(
            Endpoint::Embeddings,
            br#"{"model":"m","stream":true,"input":"x"}"#,
        )
        .unwrap_err();
        assert_eq!(streamed.param.as_deref(), Some("stream"));
        for body in [&br#"{"model":"m"}"#[..], br#"{"model":"m","input":null}"#] {
            let error = ParsedRequest::parse(Endpoint::Embeddings, body).unwrap_err();
            assert_eq!(error.param.as_deref(), Some("input"), "{error:?}");
            assert_eq!(error.code, Some("missing_required_parameter"));
            assert_eq!(error.message, "missing required parameter: `input`");
        }
        // What is in them is the upstream's to judge; completions' `prompt` is not required.
        for (endpoint, body) in [
            (
                Endpoint::ChatCompletions,
                &br#"{"model":"m","messages":[]}"#[..],
            ),
            (Endpoint::Embeddings, br#"{"model":"m","input":"x"}"#),
            (Endpoint::Embeddings, br#"{"model":"m","input":[[1,2]]}"#),
            // vLLM's chat embeddings.
            (Endpoint::Embeddings, br#"{"model":"m","messages":[]}"#),
            (Endpoint::Completions, br#"{"model":"m"}"#),
            (
                Endpoint::ChatCompletions,
                b"{\"model\":\"m\",\"messages\" :\n\t [ ]}",
            ),
        ] {
            assert!(ParsedRequest::parse(endpoint, body).is_ok());
        }
    }

    /// What `chunk_usage` did before it skipped `"usage":null` chunks: the parse of every chunk
    /// that names `"usage"`.
    fn chunk_usage_parsed(data: &str) -> Option<(TokenUsage, bool)> {
        if !data.contains("\"usage\"") {
            return None;
        }
        let chunk: ChunkUsage = serde_json::from_str(data).ok()?;
        Some((
            chunk.usage?,
            chunk.choices.as_ref().is_some_and(Vec::is_empty),
        ))
    }

    #[test]
    fn skipping_null_usage_chunks_gives_what_the_parse_gives() {
        let usage = r#"{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}"#;
        let chunks = [
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#.to_string(),
            r#"{"choices":[],"usage":null}"#.into(),
            format!(r#"{{"choices":[],"usage":{usage}}}"#),
            format!(r#"{{"choices":[{{"delta":{{}}}}],"usage":{usage}}}"#),
            format!(r#"{{"usage" : {usage},"choices":[]}}"#),
            r#"{"usage": null,"choices":[]}"#.into(),
            r#"{"usage":nul}"#.into(),
            r#"{"usage":nullx,"choices":[]}"#.into(),
            // A nested null usage, the real one after it.
            format!(r#"{{"x":{{"usage":null}},"usage":{usage}}}"#),
            format!(r#"{{"usage":null,"x":{{"usage":{usage}}}}}"#),
            // Duplicate keys: serde refuses the chunk.
            format!(r#"{{"usage":null,"usage":{usage}}}"#),
            r#"{"usage":null,"usage":null}"#.into(),
            // The key spelt with an escape, next to a null one.
            format!(r#"{{"x":{{"usage":null}},"usage":{usage},"choices":[]}}"#),
            format!(r#"{{"usage":{usage}}}"#),
            // The word in the text, escaped quotes, unicode.
            r#"{"choices":[{"delta":{"content":""usage":null é 😀 \u"}}],"usage":null}"#.into(),
            format!(r#"{{"choices":[{{"delta":{{"content":""usage":{usage}"}}}}],"usage":null}}"#),
            r#"{"choices":[{"delta":{"content":"usage"}}],"usage":null}"#.into(),
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"usage","arguments":"{"usage":null}"}}]}}],"usage":null}"#.into(),
            format!(r#"{{"choices":[{{"index":0}},{{"index":1}}],"usage":{usage}}}"#),
            r#"not json "usage":null"#.into(),
            String::new(),
        ];
        for chunk in &chunks {
            assert_eq!(chunk_usage(chunk), chunk_usage_parsed(chunk), "{chunk}");
        }
        // The chunks `include_usage` marks null are not parsed at all.
        assert!(!may_carry_usage(chunks[0].as_bytes()));
        assert!(!may_carry_usage(chunks[1].as_bytes()));
        assert!(may_carry_usage(chunks[2].as_bytes()));
        // Both paths are exercised: some chunks carry usage.
        assert!(chunks.iter().filter(|c| chunk_usage(c).is_some()).count() >= 5);
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
