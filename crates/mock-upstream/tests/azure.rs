//! The Azure-shaped routes of a real `MockUpstream`: deployment URLs with `api-version`, the
//! v1 form, the `api-key` check, Azure's error shapes and rate-limit headers.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, like the tests that call them"
)]

use mock_upstream::{MockUpstream, Reply};
use serde_json::{json, Value};

async fn post(url: String, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(key) = key {
        request = request.header("api-key", key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn deployment_urls_answer_like_openai_with_azure_headers() {
    let mock = MockUpstream::start().await;
    let url = format!(
        "{}/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
        mock.azure_endpoint()
    );
    let response = post(
        url,
        Some("k1"),
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "99");
    assert_eq!(response.headers()["x-ratelimit-remaining-tokens"], "9990");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["model"], "gpt4o-prod",
        "the deployment stands in for the model"
    );
    let recorded = mock.last_request().unwrap();
    assert_eq!(
        recorded.path,
        "/openai/deployments/gpt4o-prod/chat/completions"
    );
    assert_eq!(recorded.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(recorded.header("api-key"), Some("k1"));

    for (operation, object) in [("embeddings", "list"), ("completions", "text_completion")] {
        let url = format!(
            "{}/openai/deployments/d/{operation}?api-version=2024-10-21",
            mock.azure_endpoint()
        );
        let body: Value = post(url, Some("k1"), json!({"input": "x", "prompt": "x"}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["object"], object);
    }
}

#[tokio::test]
async fn deployment_streams_work() {
    let mock = MockUpstream::start().await;
    let url = format!(
        "{}/openai/deployments/d/chat/completions?api-version=2024-10-21",
        mock.azure_endpoint()
    );
    let response = post(url, Some("k"), json!({"stream": true})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn the_api_key_is_checked_first() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::content("not used by refused requests"));
    let url = format!(
        "{}/openai/deployments/d/chat/completions?api-version=2024-10-21",
        mock.azure_endpoint()
    );
    let missing = post(url.clone(), None, json!({})).await;
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "401");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Access denied"));
    assert!(body["error"].get("type").is_none());

    // A Bearer token is not Azure's key header.
    let bearer = reqwest::Client::new()
        .post(url.clone())
        .bearer_auth("k")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);

    mock.set_azure_api_key("right");
    assert_eq!(
        post(url.clone(), Some("wrong"), json!({})).await.status(),
        401
    );
    let ok: Value = post(url, Some("right"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        ok["choices"][0]["message"]["content"],
        "not used by refused requests"
    );
    assert_eq!(mock.calls(), 4, "refused requests are still recorded");
    assert_eq!(mock.queued(), 0);
}

#[tokio::test]
async fn api_version_and_deployment_are_required() {
    let mock = MockUpstream::start().await;
    let base = mock.azure_endpoint();
    let no_version = post(
        format!("{base}/openai/deployments/d/chat/completions"),
        Some("k"),
        json!({}),
    )
    .await;
    assert_eq!(no_version.status(), 404);
    let body: Value = no_version.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "404", "message": "Resource not found"}})
    );

    mock.set_azure_deployments(["gpt4o"]);
    let unknown = post(
        format!("{base}/openai/deployments/gpt5/chat/completions?api-version=2024-10-21"),
        Some("k"),
        json!({}),
    )
    .await;
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "DeploymentNotFound");
    let known = post(
        format!("{base}/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"),
        Some("k"),
        json!({}),
    )
    .await;
    assert_eq!(known.status(), 200);
}

#[tokio::test]
async fn responses_and_the_v1_form() {
    let mock = MockUpstream::start().await;
    let base = mock.azure_endpoint();
    let created: Value = post(
        format!("{base}/openai/responses?api-version=2025-04-01-preview"),
        Some("k"),
        json!({"model": "gpt4o-prod", "input": "Hi"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(created["object"], "response");
    assert_eq!(created["model"], "gpt4o-prod");
    let id = created["id"].as_str().unwrap();
    let fetched = reqwest::Client::new()
        .get(format!(
            "{base}/openai/responses/{id}?api-version=2025-04-01-preview"
        ))
        .header("api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let no_version = post(
        format!("{base}/openai/responses"),
        Some("k"),
        json!({"model": "m"}),
    )
    .await;
    assert_eq!(no_version.status(), 404);

    // v1: OpenAI's paths below /openai/v1, no api-version needed.
    let chat = post(
        format!("{base}/openai/v1/chat/completions"),
        Some("k"),
        json!({"model": "d"}),
    )
    .await;
    assert_eq!(chat.status(), 200);
    let response = post(
        format!("{base}/openai/v1/responses"),
        Some("k"),
        json!({"model": "d", "input": "x"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let unknown = post(
        format!("{base}/openai/chat/completions?api-version=x"),
        Some("k"),
        json!({}),
    )
    .await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn scripted_errors_take_azures_shape() {
    let mock = MockUpstream::start().await;
    mock.push(
        Reply::rate_limited(Some(6))
            .with_header("retry-after-ms", "5800")
            .with_header("x-ratelimit-remaining-requests", "0"),
    );
    let response = post(
        format!(
            "{}/openai/deployments/d/chat/completions?api-version=2024-10-21",
            mock.azure_endpoint()
        ),
        Some("k"),
        json!({}),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "6");
    assert_eq!(response.headers()["retry-after-ms"], "5800");
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "429");
    assert!(body["error"].get("type").is_none());
}
