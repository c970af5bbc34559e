//! Which endpoint a request is for: OpenAI's paths (`/v1/…`), Anthropic's (`/v1/messages…`),
//! and Azure OpenAI's — deployment URLs (`/openai/deployments/{deployment}/…?api-version=…`),
//! the Responses API (`/openai/responses…?api-version=…`) and the v1 form (`/openai/v1/…`).

use hyper::Method;

use crate::wire::Flavor;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    Model(String),
    Messages,
    CountTokens,
    /// `POST /v1/responses`.
    CreateResponse,
    /// `GET /v1/responses/{id}`.
    GetResponse(String),
    /// `DELETE /v1/responses/{id}`.
    DeleteResponse(String),
    /// `POST /v1/responses/{id}/cancel`.
    CancelResponse(String),
    Unknown,
}

/// A request's endpoint and, for Azure's URLs, what Azure checks first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) endpoint: Endpoint,
    pub(crate) azure: Option<AzureRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AzureRoute {
    /// The deployment of a deployment URL.
    pub(crate) deployment: Option<String>,
    /// The URL needs `?api-version=` (every form but v1).
    pub(crate) needs_api_version: bool,
}

impl Route {
    pub(crate) fn of(method: &Method, path: &str) -> Route {
        if let Some(rest) = path.strip_prefix("/openai/v1") {
            return Route {
                endpoint: endpoint(method, rest),
                azure: Some(AzureRoute {
                    deployment: None,
                    needs_api_version: false,
                }),
            };
        }
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let (deployment, operation) = rest.split_once('/').unwrap_or((rest, ""));
            let endpoint = match (method, operation) {
                (&Method::POST, "chat/completions") => Endpoint::ChatCompletions,
                (&Method::POST, "completions") => Endpoint::Completions,
                (&Method::POST, "embeddings") => Endpoint::Embeddings,
                _ => Endpoint::Unknown,
            };
            return Route {
                endpoint,
                azure: Some(AzureRoute {
                    deployment: Some(deployment.to_owned()),
                    needs_api_version: true,
                }),
            };
        }
        if let Some(rest) = path.strip_prefix("/openai") {
            let endpoint = match endpoint(method, rest) {
                responses @ (Endpoint::CreateResponse
                | Endpoint::GetResponse(_)
                | Endpoint::DeleteResponse(_)
                | Endpoint::CancelResponse(_)) => responses,
                _ => Endpoint::Unknown,
            };
            return Route {
                endpoint,
                azure: Some(AzureRoute {
                    deployment: None,
                    needs_api_version: true,
                }),
            };
        }
        match path.strip_prefix("/v1") {
            Some(rest) => Route {
                endpoint: endpoint(method, rest),
                azure: None,
            },
            None => Route {
                endpoint: Endpoint::Unknown,
                azure: None,
            },
        }
    }

    /// Whose conventions the answer follows.
    pub(crate) fn flavor(&self, anthropic_version_sent: bool) -> Flavor {
        if self.azure.is_some() {
            return Flavor::Azure;
        }
        match self.endpoint {
            Endpoint::Messages | Endpoint::CountTokens => Flavor::Anthropic,
            Endpoint::Models | Endpoint::Model(_) | Endpoint::Unknown if anthropic_version_sent => {
                Flavor::Anthropic
            }
            _ => Flavor::OpenAi,
        }
    }
}

/// The endpoint of a path below the API root (`/v1` or `/openai/v1`).
fn endpoint(method: &Method, path: &str) -> Endpoint {
    match (method, path) {
        (&Method::POST, "/chat/completions") => Endpoint::ChatCompletions,
        (&Method::POST, "/completions") => Endpoint::Completions,
        (&Method::POST, "/embeddings") => Endpoint::Embeddings,
        (&Method::GET, "/models") => Endpoint::Models,
        (&Method::POST, "/messages") => Endpoint::Messages,
        (&Method::POST, "/messages/count_tokens") => Endpoint::CountTokens,
        (&Method::POST, "/responses") => Endpoint::CreateResponse,
        _ => {
            if let Some(id) = segment(path, "/models/") {
                if method == Method::GET {
                    return Endpoint::Model(id.to_owned());
                }
            }
            if let Some(rest) = path.strip_prefix("/responses/") {
                if let Some(id) = rest.strip_suffix("/cancel").filter(|id| is_segment(id)) {
                    if method == Method::POST {
                        return Endpoint::CancelResponse(id.to_owned());
                    }
                }
                if is_segment(rest) {
                    match *method {
                        Method::GET => return Endpoint::GetResponse(rest.to_owned()),
                        Method::DELETE => return Endpoint::DeleteResponse(rest.to_owned()),
                        _ => {}
                    }
                }
            }
            Endpoint::Unknown
        }
    }
}

/// `{id}` of `{prefix}{id}`, one non-empty path segment.
fn segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix).filter(|id| is_segment(id))
}

fn is_segment(text: &str) -> bool {
    !text.is_empty() && !text.contains('/')
}

/// The value of `name` in a query string.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_and_anthropic_paths() {
        assert_eq!(
            Route::of(&Method::POST, "/v1/chat/completions").endpoint,
            Endpoint::ChatCompletions
        );
        assert_eq!(
            Route::of(&Method::GET, "/v1/models/gpt").endpoint,
            Endpoint::Model("gpt".into())
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/messages/count_tokens").endpoint,
            Endpoint::CountTokens
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/responses").endpoint,
            Endpoint::CreateResponse
        );
        assert_eq!(
            Route::of(&Method::GET, "/v1/responses/r1").endpoint,
            Endpoint::GetResponse("r1".into())
        );
        assert_eq!(
            Route::of(&Method::DELETE, "/v1/responses/r1").endpoint,
            Endpoint::DeleteResponse("r1".into())
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/responses/r1/cancel").endpoint,
            Endpoint::CancelResponse("r1".into())
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/responses/r1").endpoint,
            Endpoint::Unknown
        );
        assert_eq!(
            Route::of(&Method::GET, "/v1/responses/a/b").endpoint,
            Endpoint::Unknown
        );
        assert!(Route::of(&Method::POST, "/v1/responses").azure.is_none());
    }

    #[test]
    fn azure_paths() {
        let route = Route::of(&Method::POST, "/openai/deployments/gpt4o/chat/completions");
        assert_eq!(route.endpoint, Endpoint::ChatCompletions);
        let azure = route.azure.unwrap();
        assert_eq!(azure.deployment.as_deref(), Some("gpt4o"));
        assert!(azure.needs_api_version);
        assert_eq!(
            Route::of(&Method::POST, "/openai/deployments/d/embeddings").endpoint,
            Endpoint::Embeddings
        );
        assert_eq!(
            Route::of(&Method::POST, "/openai/deployments/d/messages").endpoint,
            Endpoint::Unknown
        );
        let responses = Route::of(&Method::GET, "/openai/responses/r1");
        assert_eq!(responses.endpoint, Endpoint::GetResponse("r1".into()));
        assert!(responses.azure.unwrap().needs_api_version);
        let v1 = Route::of(&Method::POST, "/openai/v1/responses");
        assert_eq!(v1.endpoint, Endpoint::CreateResponse);
        assert!(!v1.azure.unwrap().needs_api_version);
        assert_eq!(
            Route::of(&Method::POST, "/openai/chat/completions").endpoint,
            Endpoint::Unknown
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&api-version=2024-10-21"), "api-version"),
            Some("2024-10-21")
        );
        assert_eq!(query_param(Some("a=1"), "api-version"), None);
        assert_eq!(query_param(None, "api-version"), None);
    }
}
