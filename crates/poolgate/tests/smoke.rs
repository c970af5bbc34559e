//! Smoke test of the harness: a backend, a chat completion through a mock upstream.

mod common;

use common::Gateway;
use mock_upstream::MockUpstream;

#[tokio::test]
async fn chat_completion_goes_to_the_mapped_upstream_model_with_the_backend_key() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    gateway
        .add_openai_backend("one", &upstream.openai_base_url(), "primary", &["gpt-test"])
        .await;
    let (status, body) = gateway.chat("gpt-test").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.body["model"], "up-gpt-test");
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-one-secret-key-0001")
    );
    let records = gateway.usage_records(1).await;
    assert_eq!(records[0]["outcome"], "success");
    assert_eq!(records[0]["total_tokens"], body["usage"]["total_tokens"]);
    gateway.stop().await;
}
