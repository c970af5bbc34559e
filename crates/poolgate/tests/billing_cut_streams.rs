//! Issue #14, item 11 — delivered output is billed: a client that hangs up before the usage
//! chunk (or a stream whose upstream breaks after its content) still gets a usage record with
//! tokens. The real binary, real sockets, the mock upstream: its usage frame late (read in the
//! grace after the client left), later than the grace (estimated with the tokenizer), or never
//! (the upstream dies after the content).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::ADMIN_TOKEN;
use futures_util::StreamExt;
use mock_upstream::{MockUpstream, Reply, StreamSpec};
use poolgate::token_count::{estimate_request, EstimateSettings, TokenCounter, WireFormat};
use serde_json::{json, Value};

const CONTENT: &str = "alpha beta gamma omega";
/// `usage_grace_ms` of the gateway under test.
const GRACE_MS: u64 = 800;

fn chat() -> Value {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

fn messages() -> Value {
    json!({"model": "claude", "stream": true, "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}]})
}

fn messages_request(gateway: &Binary) -> reqwest::RequestBuilder {
    gateway
        .client
        .post(format!("{}/v1/messages", gateway.url))
        .header("x-api-key", ADMIN_TOKEN)
        .json(&messages())
}

/// Sends a streamed request and reads until every content word arrived; then either hangs up
/// (`hang_up`) or reads to the end. Returns the request id and what was read.
async fn read_content(request: reqwest::RequestBuilder, hang_up: bool) -> (String, String) {
    let response = request.send().await.unwrap();
    if response.status() != 200 {
        let status = response.status();
        panic!("{status}: {}", response.text().await.unwrap());
    }
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    loop {
        if hang_up && seen.contains("omega") {
            break;
        }
        let next = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the stream went on");
        match next {
            Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    drop(body);
    (request_id, seen)
}

/// The usage record of `request_id`, from the admin API (polling up to 10 s).
async fn record_of(gateway: &Binary, request_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = gateway.usage_records(0).await;
        if let Some(record) = records.iter().find(|r| r["request_id"] == request_id) {
            return record.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no record for {request_id}: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What poolgate's tokenizer makes of the delivered text and of the prompt, for `gpt-4o`.
fn gpt_4o_counts() -> (u64, u64) {
    let counter = TokenCounter::for_model("gpt-4o");
    let encoding = counter.encoding().unwrap();
    let output = encoding.load_blocking().unwrap().encode_ordinary(CONTENT);
    let body = serde_json::to_vec(&chat()).unwrap();
    let prompt = estimate_request(
        WireFormat::ChatCompletions,
        &body,
        counter,
        &EstimateSettings::default(),
    );
    (prompt.prompt.tokens, output.len() as u64)
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_usage_chunk_is_still_billed() {
    let openai = MockUpstream::start().await;
    let anthropic = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[proxy]\nusage_grace_ms = {GRACE_MS}\n");
    let gateway = Binary::start(dir.path(), &toml).await;
    gateway
        .add_backend(
            json!({"name": "oa", "api_base_url": openai.openai_base_url(),
            "api_key": "sk-oa-secret-key-0001", "model_mappings": {"m": "gpt-4o"}}),
        )
        .await;
    gateway
        .add_backend(json!({"name": "an", "api": "anthropic",
            "api_base_url": anthropic.base_url(), "api_key": "sk-an-secret-key-0001",
            "model_mappings": {"claude": "claude-test"}}))
        .await;
    let (prompt_estimate, output_estimate) =
        tokio::task::spawn_blocking(gpt_4o_counts).await.unwrap();
    let spec = || StreamSpec::new(4).content(CONTENT);

    // 1. The usage chunk comes 300 ms after the content, inside the grace: the client is gone,
    //    the upstream is read on, and the record has the upstream's own figures.
    openai.push(Reply::Stream(spec().tail_gap_ms(300)));
    let (id, seen) = read_content(gateway.proxy("/v1/chat/completions").json(&chat()), true).await;
    assert!(!seen.contains("[DONE]"), "the client hung up first: {seen}");
    let record = record_of(&gateway, &id).await;
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["prompt_tokens"], 10, "the mock's figures: {record}");
    assert_eq!(record["completion_tokens"], 4, "{record}");
    assert_eq!(record["tokens_estimated"], false, "{record}");

    // 2. The usage chunk would come after the grace: the upstream is dropped when the grace
    //    ends, and the prompt and the delivered output are counted with the tokenizer.
    openai.push(Reply::Stream(spec().tail_gap_ms(30_000)));
    let left = tokio::time::Instant::now();
    let (id, _) = read_content(gateway.proxy("/v1/chat/completions").json(&chat()), true).await;
    let record = record_of(&gateway, &id).await;
    let waited = left.elapsed();
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["tokens_estimated"], true, "{record}");
    assert_eq!(record["prompt_tokens"], prompt_estimate, "{record}");
    assert_eq!(record["completion_tokens"], output_estimate, "{record}");
    assert_eq!(
        record["total_tokens"],
        prompt_estimate + output_estimate,
        "{record}"
    );
    assert!(
        waited >= Duration::from_millis(GRACE_MS),
        "the upstream was read for the grace first ({waited:?})"
    );
    let up = &openai;
    common::eventually("the upstream is dropped after the grace", || async move {
        up.cancelled_streams() == 1
    })
    .await;
    assert_eq!(
        openai.completed_streams(),
        1,
        "only the first stream ran out"
    );

    // 3. A stream read to its end: the upstream's usage, not estimated.
    openai.push(Reply::Stream(spec()));
    let (id, seen) = read_content(gateway.proxy("/v1/chat/completions").json(&chat()), false).await;
    assert!(seen.contains("[DONE]"), "{seen}");
    let record = record_of(&gateway, &id).await;
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["tokens_estimated"], false, "{record}");
    assert_eq!(record["completion_tokens"], 4, "{record}");

    // 4. Anthropic, the client hangs up before `message_delta`, which comes inside the grace:
    //    the upstream's own output count.
    anthropic.push(Reply::Stream(spec().tail_gap_ms(300)));
    let (id, _) = read_content(messages_request(&gateway), true).await;
    let record = record_of(&gateway, &id).await;
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["tokens_estimated"], false, "{record}");
    assert_eq!(record["prompt_tokens"], 10, "{record}");
    assert_eq!(record["completion_tokens"], 4, "{record}");

    // A stream that breaks cools its backend down: the broken streams come last.
    // 5. The upstream dies right after the content (no usage chunk, no `[DONE]`): the client
    //    gets the error event, the record is billed for what was delivered.
    openai.push(Reply::Stream(spec().die_after(4)));
    let (id, seen) = read_content(gateway.proxy("/v1/chat/completions").json(&chat()), false).await;
    assert!(seen.contains("upstream_stream_error"), "{seen}");
    let record = record_of(&gateway, &id).await;
    assert_eq!(record["outcome"], "stream_error", "{record}");
    assert_eq!(record["tokens_estimated"], true, "{record}");
    assert_eq!(record["prompt_tokens"], prompt_estimate, "{record}");
    assert_eq!(record["completion_tokens"], output_estimate, "{record}");

    // 6. Anthropic: `message_start` reported the input, the upstream dies before
    //    `message_delta`: the input is the upstream's, the output is estimated (a model without
    //    a known tokenizer: a third of the bytes, rounded up).
    anthropic.push(Reply::Stream(spec().die_after(4)));
    let (id, seen) = read_content(messages_request(&gateway), false).await;
    assert!(seen.contains("event: error"), "{seen}");
    let record = record_of(&gateway, &id).await;
    assert_eq!(record["outcome"], "stream_error", "{record}");
    assert_eq!(record["tokens_estimated"], true, "{record}");
    assert_eq!(record["prompt_tokens"], 10, "from message_start: {record}");
    assert_eq!(
        record["completion_tokens"],
        CONTENT.len().div_ceil(3),
        "{record}"
    );
    gateway.stop().await;
}
