//! What every request to one backend shares, built once when the snapshot is built instead of
//! per attempt: the upstream URLs of its usual calls, parsed into the [`Uri`]s the client sends
//! to (a `format!` and a `Url::parse` with IDNA per attempt otherwise) with their HTTP/1 `Host`
//! header values (a `format!` per request in the client otherwise), and its auth header value,
//! marked sensitive.

use std::borrow::Cow;

use http::{HeaderValue, Uri};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::ProviderError;
use crate::domain::ApiKind;
use crate::upstream::{host_header, Destination, InvalidUrl};

/// The paths (after the base URL) of an OpenAI-format backend's calls that carry no id.
const OPENAI_PATHS: &[&str] = &[
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
];

/// The paths of an Anthropic backend's calls.
pub const ANTHROPIC_MESSAGES: &str = "/v1/messages";
pub const ANTHROPIC_COUNT_TOKENS: &str = "/v1/messages/count_tokens";
const ANTHROPIC_PATHS: &[&str] = &[ANTHROPIC_MESSAGES, ANTHROPIC_COUNT_TOKENS];

/// Where an upstream request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamUrl {
    /// Parsed when the snapshot was built ([`UpstreamTarget`]), with its `Host` value.
    Parsed(Destination),
    /// Built for this call (a path with an id, Azure's URL forms): parsed when it is sent.
    Text(String),
}

impl UpstreamUrl {
    /// The URL as text.
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            UpstreamUrl::Parsed(destination) => Cow::Owned(destination.uri.to_string()),
            UpstreamUrl::Text(text) => Cow::Borrowed(text),
        }
    }

    /// Where to send: the prebuilt destination as it is, a built URL parsed now (its `Host`
    /// left to the client).
    pub fn into_destination(self) -> Result<Destination, InvalidUrl> {
        match self {
            UpstreamUrl::Parsed(destination) => Ok(destination),
            UpstreamUrl::Text(text) => to_uri(&text).map(Destination::from).ok_or(InvalidUrl),
        }
    }
}

/// An `http`/`https` URL parsed as a browser (and reqwest) would — IDNA host, percent-encoding,
/// dot segments — then as the [`Uri`] the client sends to.
fn to_uri(text: &str) -> Option<Uri> {
    let url = Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Uri::try_from(url.as_str()).ok()
}

impl From<String> for UpstreamUrl {
    fn from(text: String) -> Self {
        UpstreamUrl::Text(text)
    }
}

impl PartialEq<str> for UpstreamUrl {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for UpstreamUrl {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for UpstreamUrl {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One backend's base URL, prebuilt URLs and auth header value.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    base_url: String,
    /// `path → base_url + path`, parsed, with its `Host` value; a path whose URL does not parse
    /// is left out (the request then fails as it is sent, as it did when every attempt parsed
    /// it).
    urls: Vec<(&'static str, Destination)>,
    /// `Bearer <key>` (OpenAI) or the key (Anthropic's `x-api-key`); `None` when the key
    /// cannot be a header value (and for Azure, whose requests are built whole per call).
    auth: Option<HeaderValue>,
}

impl UpstreamTarget {
    /// The target of a backend of kind `api` at `base_url` with `key`.
    pub fn new(api: ApiKind, base_url: &str, key: &SecretString) -> Self {
        let (paths, auth) = match api {
            ApiKind::Openai => (
                OPENAI_PATHS,
                HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).ok(),
            ),
            ApiKind::Anthropic => (
                ANTHROPIC_PATHS,
                HeaderValue::from_str(key.expose_secret()).ok(),
            ),
            // Azure's URLs depend on the deployment (the upstream model), and its requests are
            // still built whole per call (`providers::azure`): nothing prebuilt.
            ApiKind::Azure => (&[][..], None),
        };
        let urls = paths
            .iter()
            .filter_map(|path| {
                let uri = to_uri(&format!("{base_url}{path}"))?;
                let host = host_header(&uri);
                Some((*path, Destination { uri, host }))
            })
            .collect();
        let auth = auth.map(|mut value| {
            value.set_sensitive(true);
            value
        });
        Self {
            base_url: base_url.to_owned(),
            urls,
            auth,
        }
    }

    /// The base URL the backend was configured with.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url + path`: the prebuilt URL when there is one, else built now.
    pub fn url(&self, path: &str) -> UpstreamUrl {
        match self.urls.iter().find(|(known, _)| *known == path) {
            Some((_, destination)) => UpstreamUrl::Parsed(destination.clone()),
            None => UpstreamUrl::Text(format!("{}{path}", self.base_url)),
        }
    }

    /// The auth header value (sensitive), or the error when the key cannot be one.
    pub fn auth(&self) -> Result<HeaderValue, ProviderError> {
        self.auth.clone().ok_or(ProviderError::InvalidKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_prebuilt_for_the_usual_calls_and_built_for_the_rest() {
        let key = SecretString::from("sk-1");
        let target = UpstreamTarget::new(ApiKind::Openai, "http://up.example/v1", &key);
        let chat = target.url("/chat/completions");
        assert!(matches!(chat, UpstreamUrl::Parsed(_)));
        assert_eq!(chat, "http://up.example/v1/chat/completions");
        let call = target.url("/responses/resp_1/cancel");
        assert_eq!(
            call,
            UpstreamUrl::Text("http://up.example/v1/responses/resp_1/cancel".into())
        );
        let auth = target.auth().unwrap();
        assert_eq!(auth, "Bearer sk-1");
        assert!(auth.is_sensitive());

        let anthropic = UpstreamTarget::new(ApiKind::Anthropic, "https://api.anthropic.com", &key);
        let messages = anthropic.url(ANTHROPIC_MESSAGES);
        assert!(matches!(messages, UpstreamUrl::Parsed(_)));
        assert_eq!(messages, "https://api.anthropic.com/v1/messages");
        assert_eq!(anthropic.auth().unwrap(), "sk-1");
    }

    #[test]
    fn the_prebuilt_url_is_what_parsing_per_attempt_gave() {
        // The IDNA host and the percent-encoding come out as `Url::parse` of the text does.
        let key = SecretString::from("k");
        let base = "http://BÜCHER.example:8080/v1";
        let target = UpstreamTarget::new(ApiKind::Openai, base, &key);
        let expected = Url::parse(&format!("{base}/embeddings")).unwrap();
        let prebuilt = target.url("/embeddings");
        assert_eq!(prebuilt, expected.as_str());
        assert_eq!(prebuilt, "http://xn--bcher-kva.example:8080/v1/embeddings");
        // A URL built per call (a path with an id) comes out the same when it is sent.
        let built = UpstreamUrl::Text(format!("{base}/embeddings"));
        let built = built.into_destination().unwrap();
        let prebuilt = target.url("/embeddings").into_destination().unwrap();
        assert_eq!(built.uri, prebuilt.uri);
        assert_eq!(built.host, None, "the client builds it");
        assert_eq!(
            prebuilt.host.unwrap(),
            "xn--bcher-kva.example:8080",
            "the port is not http's"
        );
    }

    #[test]
    fn an_unusable_key_or_url_fails_as_before() {
        let target = UpstreamTarget::new(
            ApiKind::Openai,
            "not a url",
            &SecretString::from("bad\nkey"),
        );
        assert!(matches!(target.auth(), Err(ProviderError::InvalidKey)));
        let url = target.url("/chat/completions");
        assert_eq!(url, UpstreamUrl::Text("not a url/chat/completions".into()));
        assert!(url.into_destination().is_err());
        // Only http(s) is sent to.
        let other = UpstreamTarget::new(
            ApiKind::Openai,
            "ftp://up.example",
            &SecretString::from("k"),
        );
        assert!(other.url("/chat/completions").into_destination().is_err());
    }
}
