//! Helpers shared by the telemetry tests: backends on mock upstreams, reading `/metrics`, and
//! picking samples out of the exposition text.
#![allow(dead_code)]
#![expect(clippy::unwrap_used, reason = "test helpers")]

use std::collections::BTreeMap;

use mock_upstream::MockUpstream;
use serde_json::{json, Value};

use crate::common::{Gateway, ADMIN_TOKEN};

/// A gateway started with `toml`, and one mock upstream behind backend `alpha` (pool `primary`)
/// serving the model `m-x`.
pub async fn gateway_with_alpha(toml: &str) -> (Gateway, MockUpstream) {
    let gw = Gateway::start_with(toml, None).await;
    let upstream = MockUpstream::start().await;
    backend(
        &gw,
        "alpha",
        &upstream.openai_base_url(),
        "primary",
        "m-x",
        json!({}),
    )
    .await;
    (gw, upstream)
}

/// A backend named `name` in `pool` serving the canonical model `model` as `up-<model>`.
pub async fn backend(gw: &Gateway, name: &str, url: &str, pool: &str, model: &str, extra: Value) {
    let mut body = json!({
        "name": name,
        "api_base_url": url,
        "api_key": format!("sk-{name}-secret-key-0001"),
        "pool": pool,
        "model_mappings": {model: {"upstream_model": format!("up-{model}")}},
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        body[key] = value;
    }
    gw.add_backend(body).await;
}

/// A chat request for `model` with the admin token; `stream` asks for SSE.
pub fn chat(gw: &Gateway, model: &str, stream: bool) -> reqwest::RequestBuilder {
    gw.proxy("/v1/chat/completions").json(&json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }))
}

/// `GET /metrics` with the admin token: (status, content type, body).
pub async fn scrape(gw: &Gateway, token: Option<&str>) -> (u16, String, String) {
    let mut request = gw.client.get(format!("{}/metrics", gw.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.unwrap())
}

/// The gateway's metrics (admin token, 200 asserted).
pub async fn metrics(gw: &Gateway) -> String {
    let (status, _, text) = scrape(gw, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    text
}

/// Every sample of the exposition: (name, labels, value).
pub fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

/// The sum of every sample of `name` whose labels include `labels` (None if there is none).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}
