//! Issue #11 part A end to end: tokens-per-minute limits on client keys and backends (reserve the
//! estimate, settle with the usage the upstream reports — refund or extra charge), the refusal
//! shapes, and limits learned from the upstream's rate-limit headers. A real gateway in front of
//! mock upstreams on port 0 whose answers carry scripted usage and headers; every test counts the
//! calls each upstream saw.
//!
//! Every backend serves the canonical model `m` as `up-m` (no known tokenizer: the prompt is
//! estimated as `ceil(bytes / 3)` of its text plus per-message overhead — a few tokens for "hi");
//! requests declare `max_tokens: 100`, so each reserves a little over 100 tokens.
#![expect(clippy::unwrap_used, reason = "test")]

mod common;

use std::time::Duration;

use common::{send, Answer, Gateway};
use mock_upstream::{MockUpstream, Reply};
use reqwest::Method;
use serde_json::{json, Value};

const MODEL: &str = "m";

/// A chat completion body the mock sends back verbatim, reporting `total` tokens of usage.
fn answer_using(total: u64) -> Value {
    json!({
        "id": "chatcmpl-tpm",
        "object": "chat.completion",
        "created": 1,
        "model": "up-m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": total - 1, "completion_tokens": 1, "total_tokens": total}
    })
}

fn chat_body(max_tokens: u64) -> Value {
    json!({"model": MODEL, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "hi"}]})
}

async fn add(gw: &Gateway, name: &str, url: &str, pool: &str, tpm: u64) -> String {
    let created = gw
        .add_backend(json!({
            "name": name,
            "api_base_url": url,
            "api_key": format!("sk-{name}-secret-key-0001"),
            "pool": pool,
            "tpm_limit": tpm,
            "model_mappings": {MODEL: "up-m"},
        }))
        .await;
    assert_eq!(created["tpm_limit"], tpm, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn gateway_with_fallback_pool() -> Gateway {
    let gw = Gateway::start().await;
    let pool = gw
        .admin(Method::POST, "/pools")
        .json(&json!({"name": "fallback", "priority": 10}))
        .send()
        .await
        .unwrap();
    assert!(
        pool.status().is_success() || pool.status() == 409,
        "{pool:?}"
    );
    gw
}

async fn chat_as(gw: &Gateway, key: &str, max_tokens: u64) -> Answer {
    send(
        gw.client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .json(&chat_body(max_tokens)),
    )
    .await
}

#[tokio::test]
async fn a_keys_tpm_settles_with_real_usage_and_refuses_in_openai_and_anthropic_shapes() {
    let gw = Gateway::start().await;
    let upstream = MockUpstream::start().await;
    add(&gw, "a", &upstream.openai_base_url(), "primary", 0).await;
    let (_, key) = gw
        .create_key(json!({"name": "tpm", "tpm_limit": 1000}))
        .await;

    // Under-estimates refunded: each request reserves ~105 tokens and settles at 10, so 20 in a
    // row fit in 1000 (without the refund the 10th would be refused).
    upstream.set_default(Reply::status(200, answer_using(10)));
    for i in 0..20 {
        let answer = chat_as(&gw, &key, 100).await;
        assert_eq!(answer.status, 200, "request {i}: {answer}");
    }

    // An over-estimate is charged: one answer that used 990 tokens, after the ~200 the 20
    // requests used, puts the bucket ~190 into debt (it refills ~17 a second), so the next
    // ~105-token request waits ~17 s.
    upstream.push(Reply::status(200, answer_using(990)));
    assert_eq!(chat_as(&gw, &key, 100).await.status, 200);
    let calls = upstream.calls();
    let refused = chat_as(&gw, &key, 100).await;
    assert_eq!(refused.status, 429, "{refused}");
    refused.assert_openai_error();
    assert_eq!(refused.json["error"]["type"], "rate_limit_error");
    assert_eq!(refused.json["error"]["code"], "rate_limit_exceeded");
    let message = refused.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("1000 tokens per minute"), "{message}");
    let wait = refused.retry_after().expect("Retry-After");
    assert!((10..=20).contains(&wait), "Retry-After {wait}");
    assert!(refused.header("x-should-retry").is_none());
    assert_eq!(
        upstream.calls(),
        calls,
        "a refused request never reaches the upstream"
    );

    // Larger than the whole limit: never admitted, and SDKs are told not to retry.
    let too_large = chat_as(&gw, &key, 5000).await;
    assert_eq!(too_large.status, 429, "{too_large}");
    too_large.assert_openai_error();
    assert_eq!(too_large.json["error"]["code"], "tpm_request_too_large");
    let message = too_large.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("tpm_limit of 1000"), "{message}");
    assert_eq!(too_large.header("x-should-retry"), Some("false"));
    assert!(too_large.header("retry-after").is_none());

    // An Anthropic-format client gets the same refusal in Anthropic's shape.
    let anthropic = send(
        gw.client
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": MODEL, "max_tokens": 100,
                          "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert!(anthropic
        .assert_anthropic_rate_limited()
        .contains("1000 tokens per minute"));
    assert!(anthropic.retry_after().is_some());
    assert_eq!(upstream.calls(), calls);

    // The limit shows on the key and can be changed (0 = none: admitted again at once).
    let keys = gw.keys().await;
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(keys[0]["tpm_limit"], 1000);
    let patch_key = |body: Value| {
        let request = gw.admin(Method::PATCH, &format!("/keys/{id}")).json(&body);
        async move {
            let answer = request.send().await.unwrap();
            (answer.status(), answer.json::<Value>().await.unwrap())
        }
    };
    let (status, bad) = patch_key(json!({"tpm_limit": -5})).await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"]["param"], "tpm_limit", "{bad}");
    // `null` would read as "left out" and change nothing: refused, naming the field.
    let (status, bad) = patch_key(json!({"tpm_limit": null})).await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"]["param"], "tpm_limit", "{bad}");
    let message = bad["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("may not be null"), "{bad}");
    assert_eq!(gw.keys().await[0]["tpm_limit"], 1000);
    let (status, changed) = patch_key(json!({"tpm_limit": 0})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["tpm_limit"], 0);
    assert_eq!(chat_as(&gw, &key, 5000).await.status, 200);
}

#[tokio::test]
async fn a_backend_over_its_tpm_is_skipped_until_its_bucket_refills() {
    let gw = gateway_with_fallback_pool().await;
    let limited = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    // 6000 tokens a minute = 100 a second.
    add(&gw, "limited", &limited.openai_base_url(), "primary", 6000).await;
    add(&gw, "spare", &spare.openai_base_url(), "fallback", 0).await;

    // Under-estimates refunded: 60 requests reserving ~105 each fit only because each settles
    // at 1 (without the refund the bucket would be empty after 57).
    limited.set_default(Reply::status(200, answer_using(1)));
    for i in 0..60 {
        let answer = send(gw.proxy("/v1/chat/completions").json(&chat_body(100))).await;
        assert_eq!(answer.status, 200, "request {i}: {answer}");
    }
    assert_eq!((limited.calls(), spare.calls()), (60, 0));

    // An answer that used 5990 tokens spends the bucket: the next request goes to the spare.
    limited.push(Reply::status(200, answer_using(5990)));
    assert_eq!(
        send(gw.proxy("/v1/chat/completions").json(&chat_body(100)))
            .await
            .status,
        200
    );
    assert_eq!(
        send(gw.proxy("/v1/chat/completions").json(&chat_body(100)))
            .await
            .status,
        200
    );
    assert_eq!((limited.calls(), spare.calls()), (61, 1));

    // After the refill (at most ~1.6 s for what it lacks: it held 5940–6000 before), it is
    // used again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        send(gw.proxy("/v1/chat/completions").json(&chat_body(100)))
            .await
            .status,
        200
    );
    assert_eq!((limited.calls(), spare.calls()), (62, 1));
}

#[tokio::test]
async fn an_upstream_that_says_no_tokens_are_left_gets_nothing_until_its_reset() {
    let gw = gateway_with_fallback_pool().await;
    let announcing = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    let id = add(
        &gw,
        "announcing",
        &announcing.openai_base_url(),
        "primary",
        0,
    )
    .await;
    add(&gw, "spare", &spare.openai_base_url(), "fallback", 0).await;

    // Its first answer says: 0 tokens left until 1.5 s from now. Later answers have room.
    announcing.push(
        Reply::status(200, answer_using(10))
            .with_header("x-ratelimit-limit-tokens", "30000")
            .with_header("x-ratelimit-remaining-tokens", "0")
            .with_header("x-ratelimit-reset-tokens", "1.5s")
            .with_header("x-ratelimit-limit-requests", "500")
            .with_header("x-ratelimit-remaining-requests", "499")
            .with_header("x-ratelimit-reset-requests", "120ms"),
    );
    announcing.set_default(Reply::status(200, answer_using(10)));
    assert_eq!(gw.chat(MODEL).await.0, 200);
    assert_eq!(announcing.calls(), 1);

    // Until the reset every request goes to the spare: the announcing upstream sees none (so it
    // never has to answer 429).
    for _ in 0..5 {
        assert_eq!(gw.chat(MODEL).await.0, 200);
    }
    assert_eq!((announcing.calls(), spare.calls()), (1, 5));
    let view = gw.backend(&id).await;
    let limits = &view["upstream_limits"];
    assert_eq!(limits["tokens"]["limit"], 30000, "{view}");
    assert_eq!(limits["tokens"]["remaining"], 0);
    assert!(limits["tokens"]["reset_at"].is_string());
    assert_eq!(limits["requests"]["remaining"], 499);
    assert!(limits["observed_at"].is_string());
    assert!(limits["blocked_until"].is_string(), "{limits}");

    // After the reset it is sent to again.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(gw.chat(MODEL).await.0, 200);
    assert_eq!((announcing.calls(), spare.calls()), (2, 5));
    assert!(gw.backend(&id).await["upstream_limits"]["blocked_until"].is_null());
    assert!(announcing
        .requests()
        .iter()
        .all(|request| request.path.ends_with("/chat/completions")));
}

/// A request larger than the whole `tpm_limit` of every backend that could serve it can never
/// be sent: 429 `tpm_request_too_large`, not to retry, with no upstream call — while a route
/// with a backend that can take it serves it there.
#[tokio::test]
async fn a_request_larger_than_every_backends_tpm_is_a_429_not_to_retry() {
    let gw = gateway_with_fallback_pool().await;
    let small = MockUpstream::start().await;
    let smaller = MockUpstream::start().await;
    add(&gw, "small", &small.openai_base_url(), "primary", 800).await;
    add(&gw, "smaller", &smaller.openai_base_url(), "fallback", 500).await;
    for upstream in [&small, &smaller] {
        upstream.set_default(Reply::status(200, answer_using(10)));
    }

    let too_large = send(gw.proxy("/v1/chat/completions").json(&chat_body(5000))).await;
    assert_eq!(too_large.status, 429, "{too_large}");
    too_large.assert_openai_error();
    assert_eq!(too_large.json["error"]["type"], "rate_limit_error");
    assert_eq!(too_large.json["error"]["code"], "tpm_request_too_large");
    assert_eq!(too_large.header("x-should-retry"), Some("false"));
    assert!(too_large.header("retry-after").is_none());
    let message = too_large.json["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("this request needs about ")
            && message.ends_with(
                " tokens, more than the tpm_limit of every backend for this model (the largest: 800)"
            ),
        "{message}"
    );
    // In the Anthropic format too.
    let anthropic = send(
        gw.proxy("/v1/messages")
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": MODEL, "max_tokens": 5000,
                          "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    anthropic.assert_anthropic_rate_limited();
    assert_eq!(anthropic.header("x-should-retry"), Some("false"));
    // Small enough for the larger limit: served.
    let fits = send(gw.proxy("/v1/chat/completions").json(&chat_body(600))).await;
    assert_eq!(fits.status, 200, "{fits}");
    assert_eq!((small.calls(), smaller.calls()), (1, 0));

    // A backend without a TPM limit serves the large request.
    let open = MockUpstream::start().await;
    open.set_default(Reply::status(200, answer_using(10)));
    add(&gw, "open", &open.openai_base_url(), "fallback", 0).await;
    let served = send(gw.proxy("/v1/chat/completions").json(&chat_body(5000))).await;
    assert_eq!(served.status, 200, "{served}");
    assert_eq!((small.calls(), smaller.calls(), open.calls()), (1, 0, 1));
}
