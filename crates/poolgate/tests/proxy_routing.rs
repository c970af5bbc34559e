//! Routing, rate limits, cooldown, retry/failover and error statuses of the OpenAI-compatible
//! proxy, end to end: a real gateway (router, SQLite, background writers) in front of real mock
//! upstreams on port 0, counting the calls each upstream saw.
//!
//! Every backend here serves the canonical model `m` as upstream model `up-m`; its key is
//! `sk-<name>-secret-key-0001`. Tests that need a cooldown to expire use sub-second cooldowns.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::time::Duration;

use std::ops::RangeInclusive;

use common::{dead_url, eventually, send, Answer, Gateway, ADMIN_TOKEN};
use mock_upstream::{MockUpstream, Reply};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The canonical model every backend in this file serves.
const MODEL: &str = "m";

/// Sub-second cooldowns: 429 backoff 0.3 s (doubling, capped at 5 s), 5xx/timeout 0.3 s.
const FAST: &str = "[cooldown]\nbase_seconds = 0.3\nmax_seconds = 5\nerror_seconds = 0.3\n";

/// Long cooldowns set by `Retry-After` (up to a minute), so a test can act while one runs.
const SLOW: &str = "[cooldown]\nbase_seconds = 0.1\nmax_seconds = 60\n";

// === helpers ===

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// POSTs `body` to `path` with the admin token as client key and extra headers.
async fn post(gw: &Gateway, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = gw.proxy(path).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request).await
}

/// A chat completion for [`MODEL`].
async fn chat(gw: &Gateway) -> Answer {
    post(gw, "/v1/chat/completions", &chat_body(MODEL), &[]).await
}

/// A chat completion for [`MODEL`] with extra headers.
async fn chat_with(gw: &Gateway, headers: &[(&str, &str)]) -> Answer {
    post(gw, "/v1/chat/completions", &chat_body(MODEL), headers).await
}

/// Creates a backend serving [`MODEL`] (as `up-m`) at `url` in `pool`; `extra` fields (weight,
/// rpm_limit, timeout_seconds, enabled, model_mappings …) are merged in. Returns its id.
async fn add(gw: &Gateway, name: &str, url: &str, pool: &str, extra: Value) -> String {
    let mut body = json!({
        "name": name,
        "api_base_url": url,
        "api_key": format!("sk-{name}-secret-key-0001"),
        "pool": pool,
        "model_mappings": {MODEL: {"upstream_model": "up-m"}},
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        body[key] = value;
    }
    let created = gw.add_backend(body).await;
    created["id"].as_str().expect("backend id").to_owned()
}

async fn patch_backend(gw: &Gateway, id: &str, body: Value) -> Value {
    let response = gw
        .admin(Method::PATCH, &format!("/backends/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "PATCH /backends/{id}");
    response.json().await.unwrap()
}

async fn reset_cooldown(gw: &Gateway, id: &str) -> Value {
    let response = gw
        .admin(Method::POST, &format!("/backends/{id}/reset-cooldown"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "POST /backends/{id}/reset-cooldown");
    response.json().await.unwrap()
}

/// Sends chat requests (each must succeed) until `mock` saw `calls` requests; at most `tries`.
async fn chat_until_called(gw: &Gateway, mock: &MockUpstream, calls: usize, tries: usize) {
    for _ in 0..tries {
        if mock.calls() >= calls {
            break;
        }
        let answer = chat(gw).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(
        mock.calls(),
        calls,
        "upstream not reached within {tries} requests"
    );
}

/// Polls until the backend's cooldown deadline has passed (it may still show `cooling` until a
/// probe succeeds).
async fn wait_cooldown_over(gw: &Gateway, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.backend(id).await["cooldown_remaining_ms"].is_null() {
        assert!(Instant::now() < deadline, "cooldown of {id} never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The wall-clock end of a backend's cooldown, Unix ms (`cooldown_until`).
async fn cooldown_until_ms(gw: &Gateway, id: &str) -> i64 {
    let view = gw.backend(id).await;
    let until = view["cooldown_until"]
        .as_str()
        .unwrap_or_else(|| panic!("not cooling: {view}"));
    chrono::DateTime::parse_from_rfc3339(until)
        .unwrap()
        .timestamp_millis()
}

/// How long the cooldown a backend got in the newest of `count` requests lasts, measured from
/// wall-clock stamps rather than from when the test happens to look: it began while that request
/// ran (its usage record's `ts_ms` .. `ts_ms + latency_ms`), so its length lies in the returned
/// range (widened by a few ms for rounding).
async fn cooldown_length(gw: &Gateway, id: &str, count: usize) -> RangeInclusive<i64> {
    let records = gw.usage_records(count).await;
    let newest = &records[0];
    let start = newest["ts_ms"].as_i64().unwrap();
    let end = start + newest["latency_ms"].as_i64().unwrap();
    let until = cooldown_until_ms(gw, id).await;
    (until - end - 5)..=(until - start + 5)
}

/// Sends a chat request in a task that is aborted (the client hangs up) once `mock` has seen
/// `calls` requests: the client leaves while the gateway waits for that upstream.
async fn chat_and_leave(gw: &Gateway, mock: &MockUpstream, calls: usize) {
    let request = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&chat_body(MODEL));
    let client = tokio::spawn(async move { request.send().await });
    eventually("the request reached the upstream", || async {
        mock.calls() >= calls
    })
    .await;
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled(), "the client left");
}

// === 1. the upstream request ===

#[tokio::test]
async fn upstream_request_has_mapped_model_backend_key_and_untouched_fields() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(
        &gw,
        "one",
        &upstream.openai_base_url(),
        "primary",
        json!({}),
    )
    .await;
    let (_, client_key) = gw.create_key(json!({"name": "tester"})).await;

    let body = json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0.25,
        "max_tokens": 7,
        "user": "u-1",
        "seed": 42,
        "metadata": {"a": [1, 2, {"b": null}], "c": "ünïcode"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    });
    let answer = send(
        gw.client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&client_key)
            .json(&body),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["object"], "chat.completion");
    let request_id = answer
        .header("x-request-id")
        .expect("x-request-id")
        .to_owned();
    assert!(!request_id.is_empty());

    assert_eq!(upstream.calls(), 1);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/chat/completions");
    let mut expected = body.clone();
    expected["model"] = json!("up-m");
    assert_eq!(
        seen.body, expected,
        "only `model` may change on the way upstream"
    );
    assert_eq!(
        seen.header_all("authorization"),
        vec!["Bearer sk-one-secret-key-0001"]
    );
    for (name, value) in &seen.headers {
        assert!(
            !value.contains(&client_key) && !value.contains(ADMIN_TOKEN),
            "client credential leaked upstream in `{name}`"
        );
    }

    let records = gw.usage_records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["request_id"], request_id.as_str());
    assert_eq!(records[0]["upstream_model"], "up-m");
    assert_eq!(records[0]["outcome"], "success");
    gw.stop().await;
}

// === 2. balancing inside a pool ===

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_a_pool() {
    let mocks = [
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ];
    let gw = Gateway::start().await;
    for (i, mock) in mocks.iter().enumerate() {
        add(
            &gw,
            &format!("rr{i}"),
            &mock.openai_base_url(),
            "primary",
            json!({}),
        )
        .await;
    }
    for _ in 0..30 {
        let answer = chat(&gw).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let calls: Vec<usize> = mocks.iter().map(MockUpstream::calls).collect();
    assert_eq!(calls.iter().sum::<usize>(), 30, "{calls:?}");
    for count in &calls {
        assert!((9..=11).contains(count), "uneven split {calls:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn weights_split_traffic_in_proportion() {
    let heavy = MockUpstream::start().await;
    let light = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(
        &gw,
        "heavy",
        &heavy.openai_base_url(),
        "primary",
        json!({"weight": 3}),
    )
    .await;
    add(
        &gw,
        "light",
        &light.openai_base_url(),
        "primary",
        json!({"weight": 1}),
    )
    .await;
    for _ in 0..40 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    let (h, l) = (heavy.calls(), light.calls());
    assert_eq!(h + l, 40);
    assert!(
        (28..=32).contains(&h) && (8..=12).contains(&l),
        "expected ~30:10, got {h}:{l}"
    );
    gw.stop().await;
}

// === 3. fallback pool ===

#[tokio::test]
async fn fallback_pool_is_used_only_when_the_primary_has_no_ready_backend() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    let gw = Gateway::start().await;
    let p = add(
        &gw,
        "prim",
        &primary.openai_base_url(),
        "primary",
        json!({}),
    )
    .await;
    add(
        &gw,
        "fall",
        &fallback.openai_base_url(),
        "fallback",
        json!({}),
    )
    .await;

    // Healthy primary: the fallback sees nothing.
    for _ in 0..6 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    assert_eq!((primary.calls(), fallback.calls()), (6, 0));

    // The primary answers 429 (cools for 60 s): that request and the next go to the fallback.
    primary.push(Reply::rate_limited(Some(60)));
    for _ in 0..4 {
        let answer = chat(&gw).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(
        (primary.calls(), fallback.calls()),
        (7, 4),
        "one 429 on the primary, then the fallback only"
    );
    assert_eq!(gw.backend(&p).await["status"], "cooling");
    let records = gw.usage_records(10).await;
    let served_by_fallback = records.iter().filter(|r| r["pool"] == "fallback").count();
    assert_eq!(
        served_by_fallback, 4,
        "usage records name the pool that answered"
    );
    assert!(
        records
            .iter()
            .any(|r| r["pool"] == "fallback" && r["attempts"] == 2),
        "the request that met the 429 made 2 attempts: {records:?}"
    );

    // Primary back: the fallback is idle again.
    reset_cooldown(&gw, &p).await;
    for _ in 0..3 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    assert_eq!((primary.calls(), fallback.calls()), (10, 4));

    // Primary disabled: the fallback serves.
    let view = patch_backend(&gw, &p, json!({"enabled": false})).await;
    assert_eq!(view["status"], "disabled");
    for _ in 0..3 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    assert_eq!((primary.calls(), fallback.calls()), (10, 7));
    gw.stop().await;
}

// === 4. 429 -> cooling -> skipped -> probe -> healthy ===

#[tokio::test]
async fn a_rate_limited_backend_cools_and_is_skipped_while_cooling() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start_with(SLOW, None).await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;

    a.push(Reply::rate_limited(Some(30)));
    chat_until_called(&gw, &a, 1, 2).await;
    // Every request so far ended at b (the one that met the 429 failed over to it).
    let requests = b.calls();
    let view = gw.backend(&a_id).await;
    assert_eq!(view["status"], "cooling", "{view}");
    assert_eq!(view["consecutive_429_count"], 1, "{view}");
    let until = cooldown_until_ms(&gw, &a_id).await;
    assert!(cooldown_length(&gw, &a_id, requests)
        .await
        .contains(&30_000));

    for _ in 0..3 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    // The cooldown is still the same one (to the ms, after conversion), so every request above
    // ran while it did.
    assert!((cooldown_until_ms(&gw, &a_id).await - until).abs() <= 5);
    assert_eq!(a.calls(), 1, "a cooling backend must not be called");
    assert_eq!(
        b.calls(),
        requests + 3,
        "its share went to the other backend"
    );
    gw.stop().await;
}

#[tokio::test]
async fn after_its_cooldown_one_probe_makes_a_rate_limited_backend_healthy() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start_with(FAST, None).await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;

    a.push(Reply::rate_limited(None));
    chat_until_called(&gw, &a, 1, 2).await;
    assert_eq!(gw.backend(&a_id).await["status"], "cooling");

    // After the cooldown: one request probes it; success makes it healthy.
    wait_cooldown_over(&gw, &a_id).await;
    chat_until_called(&gw, &a, 2, 2).await;
    let view = gw.backend(&a_id).await;
    assert_eq!(view["status"], "healthy", "{view}");
    assert_eq!(view["consecutive_429_count"], 0, "{view}");
    assert!(view["cooldown_until"].is_null(), "{view}");
    gw.stop().await;
}

// === 5. Retry-After ===

const RETRY_AFTER_TOML: &str = "[cooldown]\nbase_seconds = 0.1\nmax_seconds = 10\n";

#[tokio::test]
async fn retry_after_sets_the_cooldown_and_a_cooling_route_answers_429_with_retry_after() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start_with(SLOW, None).await;
    let id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;

    a.push(Reply::rate_limited(Some(20)));
    chat(&gw).await;
    assert_eq!(a.calls(), 1);
    let view = gw.backend(&id).await;
    assert_eq!(view["status"], "cooling");
    let length = cooldown_length(&gw, &id, 1).await;
    assert!(
        length.contains(&20_000),
        "Retry-After 20 s with base 0.1 s cools 20 s, got {length:?}"
    );

    // Every backend cooling: 429 at once, Retry-After = the cooldown's end, OpenAI shape.
    let until = cooldown_until_ms(&gw, &id).await;
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    assert_eq!(a.calls(), 1, "a cooling backend must not be called");
    let retry_after = answer.retry_after().expect("Retry-After on 429");
    let left = until - gw.usage_records(2).await[0]["ts_ms"].as_i64().unwrap();
    assert!(
        (1..=20).contains(&retry_after) && retry_after * 1000 >= u64::try_from(left).unwrap(),
        "Retry-After {retry_after} s for a cooldown ending {left} ms after the request"
    );
    answer.assert_openai_error();
    assert_eq!(answer.json["error"]["type"], "rate_limit_error");
    assert_eq!(answer.json["error"]["code"], "rate_limit_exceeded");
    assert!(answer.header("x-request-id").is_some());
    gw.stop().await;
}

#[tokio::test]
async fn when_every_upstream_answers_429_the_client_gets_429_with_the_earliest_retry_after() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start_with(SLOW, None).await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    let b_id = add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;
    a.push(Reply::rate_limited(Some(20)));
    b.push(Reply::rate_limited(Some(40)));

    // The request that meets the two 429s: a rate limit, not an upstream failure.
    let answer = chat(&gw).await;
    assert_eq!((a.calls(), b.calls()), (1, 1));
    assert_eq!(
        answer.status, 429,
        "both upstreams said 429; the client should be told to retry later, got: {}",
        answer.text
    );
    let earliest = |answer: &Answer| answer.retry_after().is_some_and(|s| (1..=20).contains(&s));
    assert!(
        earliest(&answer),
        "the earliest backend (20 s), not 40 s: {:?}",
        answer.header("retry-after")
    );
    answer.assert_openai_error();

    assert!(cooldown_length(&gw, &a_id, 1).await.contains(&20_000));
    assert!(cooldown_length(&gw, &b_id, 1).await.contains(&40_000));

    // The next request is refused without calling anyone.
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    assert!(earliest(&answer), "{:?}", answer.header("retry-after"));
    assert_eq!((a.calls(), b.calls()), (1, 1));

    let records = gw.usage_records(2).await;
    assert!(records.iter().all(|r| r["status"] == 429), "{records:?}");
    gw.stop().await;
}

// === 6. exponential backoff ===

#[tokio::test]
async fn repeated_429s_on_probes_back_off_exponentially() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start_with(FAST, None).await;
    let id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    a.set_default(Reply::rate_limited(None));

    for (count, nominal) in [(1_usize, 300_i64), (2, 600), (3, 1200)] {
        wait_cooldown_over(&gw, &id).await;
        chat(&gw).await;
        assert_eq!(a.calls(), count, "one probe each");
        let view = gw.backend(&id).await;
        assert_eq!(view["consecutive_429_count"], count, "{view}");
        let length = cooldown_length(&gw, &id, count).await;
        assert!(
            length.contains(&nominal),
            "429 #{count}: expected {nominal} ms, got {length:?}"
        );
    }
    gw.stop().await;
}

// === 7. restart ===

#[tokio::test]
async fn cooldown_survives_a_restart() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start().await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;
    a.push(Reply::rate_limited(Some(30)));
    chat_until_called(&gw, &a, 1, 2).await;
    assert_eq!(gw.backend(&a_id).await["status"], "cooling");
    let until = cooldown_until_ms(&gw, &a_id).await;

    let dir = gw.stop().await;
    let gw = Gateway::start_with("", Some(dir)).await;
    let view = gw.backend(&a_id).await;
    assert_eq!(view["status"], "cooling", "after restart: {view}");
    let after = cooldown_until_ms(&gw, &a_id).await;
    assert!(
        (after - until).abs() <= 5,
        "the cooldown ends when it did before the restart: {until} then {after}"
    );
    assert_eq!(view["consecutive_429_count"], 1, "{view}");

    let b_before = b.calls();
    for _ in 0..6 {
        let answer = chat(&gw).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(a.calls(), 1, "still cooling after the restart: not called");
    assert_eq!(b.calls(), b_before + 6);
    gw.stop().await;
}

// === 8. RPM buckets ===

#[tokio::test]
async fn rpm_limit_caps_a_backend_and_the_rest_go_elsewhere() {
    let limited = MockUpstream::start().await;
    let free = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(
        &gw,
        "limited",
        &limited.openai_base_url(),
        "primary",
        json!({"rpm_limit": 2}),
    )
    .await;
    add(&gw, "free", &free.openai_base_url(), "primary", json!({})).await;
    for _ in 0..10 {
        let answer = chat(&gw).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert!(
        (1..=2).contains(&limited.calls()),
        "rpm 2 allows at most 2, got {}",
        limited.calls()
    );
    assert_eq!(limited.calls() + free.calls(), 10);
    gw.stop().await;
}

#[tokio::test]
async fn a_single_backend_out_of_tokens_gives_429_with_retry_after() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(
        &gw,
        "a",
        &a.openai_base_url(),
        "primary",
        json!({"rpm_limit": 1}),
    )
    .await;
    assert_eq!(chat(&gw).await.status, 200);
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    let retry_after = answer.retry_after().expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    answer.assert_openai_error();
    assert_eq!(answer.json["error"]["code"], "rate_limit_exceeded");
    assert_eq!(a.calls(), 1);
    gw.stop().await;
}

// === 9. x-poolgate-max-wait-ms ===

#[tokio::test]
async fn max_wait_header_waits_for_a_token_and_bad_values_are_refused() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(
        &gw,
        "a",
        &a.openai_base_url(),
        "primary",
        json!({"rpm_limit": 60}),
    )
    .await;

    // The bucket holds 60 tokens (capacity = rpm) and refills 1/s: drain it.
    let mut drained = None;
    for _ in 0..120 {
        let answer = chat(&gw).await;
        if answer.status != 200 {
            drained = Some(answer);
            break;
        }
    }
    // Without the header a request does not wait: it would have got the next token (< 1 s
    // away) and succeeded.
    let refused = drained.expect("the bucket never ran dry");
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(
        refused.retry_after(),
        Some(1),
        "the next token is < 1 s away"
    );

    // With the header it may wait (up to 3 s) for that token, and succeeds.
    let calls = a.calls();
    let answer = chat_with(&gw, &[("x-poolgate-max-wait-ms", "3000")]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(a.calls(), calls + 1);

    for bad in ["soon", "-1", "1.5", "700000"] {
        let answer = chat_with(&gw, &[("x-poolgate-max-wait-ms", bad)]).await;
        assert_eq!(answer.status, 400, "`{bad}`: {}", answer.text);
        answer.assert_openai_error();
    }
    assert_eq!(a.calls(), calls + 1, "refused requests reach no upstream");

    gw.stop().await;
}

// === 10. retryable failures move to the next backend ===

/// Two backends `bad` (scripted by `setup`) and `good`; two requests must both succeed and
/// `bad` must see exactly one call (it cools after failing). Returns the gateway and `bad`'s id.
async fn failover_case(
    bad_url: Option<&str>,
    bad_extra: Value,
    setup: impl FnOnce(&MockUpstream),
) -> (Gateway, MockUpstream, MockUpstream, String) {
    let bad = MockUpstream::start().await;
    let good = MockUpstream::start().await;
    setup(&bad);
    let gw = Gateway::start().await;
    let url = bad_url.map_or_else(|| bad.openai_base_url(), str::to_owned);
    let id = add(&gw, "bad", &url, "primary", bad_extra).await;
    add(&gw, "good", &good.openai_base_url(), "primary", json!({})).await;
    for _ in 0..2 {
        let answer = chat(&gw).await;
        assert_eq!(answer.status, 200, "failover expected: {}", answer.text);
    }
    assert_eq!(good.calls(), 2);
    let view = gw.backend(&id).await;
    assert_eq!(view["status"], "cooling", "{view}");
    assert!(view["last_error"].is_string(), "{view}");
    (gw, bad, good, id)
}

#[tokio::test]
async fn server_error_is_retried_on_the_next_backend() {
    let (gw, bad, _good, _) =
        failover_case(None, json!({}), |m| m.set_default(Reply::server_error())).await;
    assert_eq!(bad.calls(), 1);
    let records = gw.usage_records(2).await;
    assert!(
        records.iter().any(|r| r["attempts"] == 2),
        "the failed-over request counts 2 attempts: {records:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn connection_refused_is_retried_on_the_next_backend() {
    let dead = dead_url();
    let (gw, bad, _good, id) = failover_case(Some(&dead), json!({}), |_| {}).await;
    assert_eq!(bad.calls(), 0);
    let view = gw.backend(&id).await;
    assert!(
        !view["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{view}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn dropped_connection_is_retried_on_the_next_backend() {
    let (gw, bad, _good, _) = failover_case(None, json!({}), |m| m.set_default(Reply::Drop)).await;
    assert_eq!(bad.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn timeout_is_retried_on_the_next_backend() {
    // `bad` never answers: the requests succeed only because its 1 s timeout abandons it.
    let (gw, bad, _good, _) = failover_case(None, json!({"timeout_seconds": 1}), |m| {
        m.set_default(Reply::Hang);
    })
    .await;
    assert_eq!(bad.calls(), 1);
    let records = gw.usage_records(2).await;
    let failed_over = records
        .iter()
        .find(|r| r["attempts"] == 2)
        .expect("one request tried both");
    assert!(
        failed_over["latency_ms"].as_u64().unwrap() >= 1000,
        "it waited for the timeout: {failed_over}"
    );
    gw.stop().await;
}

// === 11. the request's own 4xx is relayed, not retried ===

#[tokio::test]
async fn upstream_client_errors_are_relayed_verbatim_and_not_retried() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start().await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    let b_id = add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;

    let error_of = |who: &str, status: u16| {
        json!({"error": {
            "message": format!("{who} refuses this ({status})"),
            "type": "invalid_request_error",
            "param": "messages",
            "code": format!("upstream_{status}"),
            "extra": {"nested": [1, 2, 3]},
        }})
    };
    for status in [400_u16, 404, 422] {
        let a_body = error_of("a", status);
        let b_body = error_of("b", status);
        a.set_default(Reply::status(status, a_body.clone()));
        b.set_default(Reply::status(status, b_body.clone()));
        let before = (a.calls(), b.calls());

        let answer = chat(&gw).await;
        assert_eq!(answer.status, status, "{}", answer.text);
        let after = (a.calls(), b.calls());
        assert_eq!(
            after.0 + after.1,
            before.0 + before.1 + 1,
            "{status} must not be retried"
        );
        let expected = if after.0 > before.0 { &a_body } else { &b_body };
        assert_eq!(&answer.json, expected, "{status} body relayed as is");
        assert!(answer.header("x-request-id").is_some());

        for id in [&a_id, &b_id] {
            let view = gw.backend(id).await;
            assert_eq!(view["status"], "healthy", "after {status}: {view}");
        }
    }
    let records = gw.usage_records(3).await;
    let mut statuses: Vec<u64> = records
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![400, 404, 422]);
    gw.stop().await;
}

// === 12. a refused key ===

#[tokio::test]
async fn upstream_401_puts_the_backend_in_error_until_reset() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start_with(FAST, None).await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;
    a.set_default(Reply::unauthorized());

    chat_until_called(&gw, &a, 1, 2).await;
    let view = gw.backend(&a_id).await;
    assert_eq!(view["status"], "error", "{view}");

    // Longer than every cooldown of this config: still out of rotation.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..4 {
        let answer = chat(&gw).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(a.calls(), 1, "a backend in error is not called");
    assert_eq!(gw.backend(&a_id).await["status"], "error");

    a.set_default(Reply::Ok);
    let view = reset_cooldown(&gw, &a_id).await;
    assert_eq!(view["status"], "healthy", "{view}");
    chat_until_called(&gw, &a, 2, 2).await;
    gw.stop().await;
}

// === 13. max_attempts ===

#[tokio::test]
async fn max_attempts_caps_the_upstream_calls_of_one_request() {
    let mocks = [
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ];
    let gw = Gateway::start_with("[proxy]\nmax_attempts = 2\n", None).await;
    for (i, mock) in mocks.iter().enumerate() {
        mock.set_default(Reply::server_error());
        add(
            &gw,
            &format!("f{i}"),
            &mock.openai_base_url(),
            "primary",
            json!({}),
        )
        .await;
    }
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 502, "{}", answer.text);
    answer.assert_openai_error();
    let total: usize = mocks.iter().map(MockUpstream::calls).sum();
    assert_eq!(total, 2, "max_attempts = 2");
    let records = gw.usage_records(1).await;
    assert_eq!(records[0]["attempts"], 2);
    gw.stop().await;
}

// === 14. everything fails ===

#[tokio::test]
async fn all_backends_failing_gives_502_with_a_usage_record() {
    let mocks = [
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ];
    let gw = Gateway::start().await;
    for (i, mock) in mocks.iter().enumerate() {
        mock.set_default(Reply::server_error());
        add(
            &gw,
            &format!("f{i}"),
            &mock.openai_base_url(),
            "primary",
            json!({}),
        )
        .await;
    }
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 502, "{}", answer.text);
    answer.assert_openai_error();
    let request_id = answer.header("x-request-id").expect("x-request-id");
    assert_eq!(
        answer.json["error"]["message"],
        format!("upstream failed (request id {request_id})"),
        "a 5xx body is generic and names the request id"
    );
    for mock in &mocks {
        assert_eq!(mock.calls(), 1);
        let port = mock.addr().port().to_string();
        assert!(
            !answer.text.contains(&port),
            "the 502 body names an upstream"
        );
    }
    assert!(!answer.text.contains("sk-"), "the 502 body shows a key");
    let records = gw.usage_records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], 502);
    assert_eq!(records[0]["outcome"], "error");
    assert_eq!(records[0]["attempts"], 3);
    assert_eq!(records[0]["request_id"], request_id, "one id per request");
    gw.stop().await;
}

#[tokio::test]
async fn all_backends_timing_out_gives_504_with_a_usage_record() {
    let mocks = [MockUpstream::start().await, MockUpstream::start().await];
    let gw = Gateway::start().await;
    for (i, mock) in mocks.iter().enumerate() {
        mock.set_default(Reply::Hang);
        add(
            &gw,
            &format!("slow{i}"),
            &mock.openai_base_url(),
            "primary",
            json!({"timeout_seconds": 1}),
        )
        .await;
    }
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 504, "{}", answer.text);
    answer.assert_openai_error();
    assert!(
        answer.took >= Duration::from_millis(2000),
        "two 1 s timeouts, one after the other: {:?}",
        answer.took
    );
    for mock in &mocks {
        assert_eq!(mock.calls(), 1);
    }
    let records = gw.usage_records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], 504);
    assert_eq!(records[0]["outcome"], "error");
    assert_eq!(records[0]["attempts"], 2);
    gw.stop().await;
}

// === 15. the client's own errors ===

#[tokio::test]
async fn client_errors_get_openai_shaped_answers_and_usage_records() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start_with("[proxy]\nmax_body_bytes = 2048\n", None).await;
    add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let send = |request: reqwest::RequestBuilder| async move { common::send(request).await };

    // No key.
    let answer = send(gw.client.post(&url).json(&chat_body(MODEL))).await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    answer.assert_openai_error();
    assert_eq!(answer.json["error"]["code"], "invalid_api_key");
    assert!(answer.header("x-request-id").is_some());

    // Wrong keys.
    for wrong in [
        "pgk-nosuchid-nosuchsecret",
        "sk-not-ours",
        &ADMIN_TOKEN[1..],
    ] {
        let answer = send(
            gw.client
                .post(&url)
                .bearer_auth(wrong)
                .json(&chat_body(MODEL)),
        )
        .await;
        assert_eq!(answer.status, 401, "`{wrong}`: {}", answer.text);
        assert_eq!(answer.json["error"]["code"], "invalid_api_key");
    }

    // Unknown model.
    let answer = post(&gw, "/v1/chat/completions", &chat_body("nope"), &[]).await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    answer.assert_openai_error();
    assert_eq!(answer.json["error"]["code"], "model_not_found");

    // Missing model.
    let answer = post(
        &gw,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
        &[],
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    answer.assert_openai_error();
    assert_eq!(answer.json["error"]["param"], "model");

    // Invalid JSON.
    let answer = send(
        gw.proxy("/v1/chat/completions")
            .header("content-type", "application/json")
            .body("{\"model\": \"m\", "),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    answer.assert_openai_error();
    assert_eq!(answer.json["error"]["type"], "invalid_request_error");

    // Too large.
    let big = json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let answer = post(&gw, "/v1/chat/completions", &big, &[]).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    answer.assert_openai_error();
    assert_eq!(answer.json["error"]["code"], "payload_too_large");

    assert_eq!(a.calls(), 0, "no client error reaches an upstream");

    // Unknown model, missing model and invalid JSON are recorded with their status.
    let records = gw.usage_records(3).await;
    let has = |status: u64, model: Option<&str>| {
        records.iter().any(|r| {
            r["status"] == status
                && r["outcome"] == "error"
                && model.map_or(r["canonical_model"].is_null(), |m| {
                    r["canonical_model"] == m
                })
        })
    };
    assert!(
        has(404, Some("nope")),
        "unknown model recorded: {records:?}"
    );
    assert!(has(400, None), "missing model recorded: {records:?}");
    let bad_requests = records.iter().filter(|r| r["status"] == 400).count();
    assert_eq!(bad_requests, 2, "missing model + invalid JSON: {records:?}");

    // A chat completion without a `messages` array, an embedding without `input`: OpenAI's
    // 400, naming the field, and no upstream call.
    for (path, body, param, code) in [
        (
            "/v1/chat/completions",
            json!({"model": MODEL}),
            "messages",
            "missing_required_parameter",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": null}),
            "messages",
            "missing_required_parameter",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": "hi"}),
            "messages",
            "invalid_type",
        ),
        (
            "/v1/embeddings",
            json!({"model": MODEL}),
            "input",
            "missing_required_parameter",
        ),
    ] {
        let answer = post(&gw, path, &body, &[]).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        answer.assert_openai_error();
        assert_eq!(
            answer.json["error"]["param"], param,
            "{body}: {}",
            answer.text
        );
        assert_eq!(
            answer.json["error"]["code"], code,
            "{body}: {}",
            answer.text
        );
    }
    assert_eq!(a.calls(), 0, "no client error reaches an upstream");
    // Each is a client request with its usage record, as a missing `model` is.
    let records = gw.usage_records(7).await;
    let bad_requests = records
        .iter()
        .filter(|r| r["status"] == 400 && r["outcome"] == "error")
        .count();
    assert_eq!(bad_requests, 6, "{records:?}");
    gw.stop().await;
}

/// The pipeline promises "exactly one usage record per client request, whatever happened":
/// an authenticated request refused for its size or its headers is a client request too.
#[tokio::test]
async fn authenticated_requests_refused_before_parsing_are_recorded_too() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start_with("[proxy]\nmax_body_bytes = 2048\n", None).await;
    add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    let big = json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    assert_eq!(
        post(&gw, "/v1/chat/completions", &big, &[]).await.status,
        413
    );
    assert_eq!(
        chat_with(&gw, &[("x-poolgate-max-wait-ms", "soon")])
            .await
            .status,
        400
    );
    let records = gw.usage_records_within(2, Duration::from_secs(3)).await;
    let mut statuses: Vec<u64> = records
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec![400, 413],
        "one usage record per client request"
    );
    gw.stop().await;
}

// === 16. /v1/models ===

#[tokio::test]
async fn models_lists_the_canonical_models_of_enabled_backends() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start().await;
    let url = up.openai_base_url();
    gw.add_openai_backend("one", &url, "primary", &["m1", "m2"])
        .await;
    let two = gw
        .add_openai_backend("two", &url, "fallback", &["m2", "m3"])
        .await;
    add(
        &gw,
        "three",
        &url,
        "primary",
        json!({"enabled": false, "model_mappings": {"m4": "up-m4"}}),
    )
    .await;

    let list = |auth: bool| {
        let mut request = gw.client.get(format!("{}/v1/models", gw.url));
        if auth {
            request = request.bearer_auth(ADMIN_TOKEN);
        }
        async move { common::send(request).await }
    };
    let ids = |answer: &Answer| -> Vec<String> {
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.json["object"], "list");
        let data = answer.json["data"].as_array().expect("data array");
        let mut ids: Vec<String> = data
            .iter()
            .map(|entry| {
                assert_eq!(entry["object"], "model", "{entry}");
                entry["id"].as_str().expect("id").to_owned()
            })
            .collect();
        ids.sort();
        ids
    };

    assert_eq!(ids(&list(true).await), ["m1", "m2", "m3"]);
    let answer = list(false).await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    answer.assert_openai_error();

    patch_backend(&gw, two["id"].as_str().unwrap(), json!({"enabled": false})).await;
    assert_eq!(ids(&list(true).await), ["m1", "m2"]);
    assert_eq!(up.calls(), 0, "the list is served by the gateway itself");
    gw.stop().await;
}

// === 17. other endpoints ===

#[tokio::test]
async fn embeddings_and_completions_go_to_their_upstream_paths_with_the_mapped_model() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(&gw, "a", &up.openai_base_url(), "primary", json!({})).await;

    let body = json!({"model": MODEL, "input": ["alpha", "beta"], "encoding_format": "float"});
    let answer = post(&gw, "/v1/embeddings", &body, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["data"].as_array().map(Vec::len), Some(2));
    let seen = up.last_request().unwrap();
    assert_eq!(seen.path, "/v1/embeddings");
    let mut expected = body;
    expected["model"] = json!("up-m");
    assert_eq!(seen.body, expected);

    let body = json!({"model": MODEL, "prompt": "once upon", "max_tokens": 5});
    let answer = post(&gw, "/v1/completions", &body, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["object"], "text_completion");
    let seen = up.last_request().unwrap();
    assert_eq!(seen.path, "/v1/completions");
    let mut expected = body;
    expected["model"] = json!("up-m");
    assert_eq!(seen.body, expected);
    assert_eq!(up.calls(), 2);

    let records = gw.usage_records(2).await;
    let mut endpoints: Vec<&str> = records
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    endpoints.sort_unstable();
    assert_eq!(endpoints, ["completions", "embeddings"]);
    gw.stop().await;
}

// === 18. concurrency ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_all_succeed_and_are_all_recorded() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start().await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    let b_id = add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;

    let url = format!("{}/v1/chat/completions", gw.url);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = gw.client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&chat_body(MODEL))
                .send()
                .await?;
            let status = response.status().as_u16();
            response.bytes().await?;
            Ok::<u16, reqwest::Error>(status)
        });
    }
    let mut ok = 0;
    while let Some(joined) = tasks.join_next().await {
        let status = joined.expect("task").expect("request");
        assert_eq!(status, 200);
        ok += 1;
    }
    assert_eq!(ok, 200);
    assert_eq!(a.calls() + b.calls(), 200);
    assert!(
        (90..=110).contains(&a.calls()),
        "{} / {}",
        a.calls(),
        b.calls()
    );

    let records = gw.usage_records(200).await;
    assert_eq!(records.len(), 200, "every request recorded");
    for id in [&a_id, &b_id] {
        assert_eq!(
            gw.backend(id).await["in_flight"],
            0,
            "in-flight slots released"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.usage_records(201).await.len(), 200, "and only once");
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200, "distinct request ids");
    gw.stop().await;
}

// === 19. half-open: a single probe ===

#[tokio::test]
async fn after_a_cooldown_only_one_request_probes_the_backend() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start_with(FAST, None).await;
    // Every request tries `a` first; `b` takes what `a` cannot.
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    add(&gw, "b", &b.openai_base_url(), "fallback", json!({})).await;

    a.push(Reply::rate_limited(None));
    chat_until_called(&gw, &a, 1, 2).await;
    wait_cooldown_over(&gw, &a_id).await;
    assert_eq!(gw.backend(&a_id).await["status"], "cooling", "half-open");

    // The probe is held at `a` while four more requests come in.
    a.set_default(Reply::Delay {
        ms: 2000,
        then: Box::new(Reply::Ok),
    });
    let b_before = b.calls();
    let probe = tokio::spawn(
        gw.proxy("/v1/chat/completions")
            .json(&chat_body(MODEL))
            .send(),
    );
    eventually("the probe reached the recovering backend", || async {
        a.calls() == 2
    })
    .await;
    let answers = futures_util::future::join_all((0..4).map(|_| chat(&gw))).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(
        a.calls(),
        2,
        "exactly one probe goes to the recovering backend"
    );
    assert_eq!(b.calls(), b_before + 4);
    assert_eq!(probe.await.unwrap().unwrap().status(), 200);
    assert_eq!(gw.backend(&a_id).await["status"], "healthy");
    gw.stop().await;
}

// === more: client keys, waiting, error states, caps ===

#[tokio::test]
async fn client_key_model_allow_list_and_rpm_limit_are_enforced_before_any_upstream() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start().await;
    gw.add_openai_backend("one", &up.openai_base_url(), "primary", &["m", "m2"])
        .await;
    let (_, only_m) = gw
        .create_key(json!({"name": "only-m", "allowed_models": ["m"]}))
        .await;
    let (_, slow) = gw.create_key(json!({"name": "slow", "rpm_limit": 1})).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let send = |key: &str, model: &str| {
        let request = gw
            .client
            .post(&url)
            .bearer_auth(key)
            .json(&chat_body(model));
        async move { common::send(request).await }
    };

    assert_eq!(send(&only_m, "m").await.status, 200);
    let answer = send(&only_m, "m2").await;
    assert_eq!(answer.status, 403, "{}", answer.text);
    answer.assert_openai_error();
    assert_eq!(up.calls(), 1);

    assert_eq!(send(&slow, "m").await.status, 200);
    let answer = send(&slow, "m2").await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    answer.assert_openai_error();
    let retry_after = answer.retry_after().expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        up.calls(),
        2,
        "the key's own limit is checked before any upstream"
    );
    gw.stop().await;
}

/// A key restricted to some models should not be told about the others.
#[tokio::test]
async fn models_list_shows_a_restricted_key_only_its_models() {
    let up = MockUpstream::start().await;
    let gw = Gateway::start().await;
    gw.add_openai_backend("one", &up.openai_base_url(), "primary", &["m", "m2"])
        .await;
    let (_, only_m) = gw
        .create_key(json!({"name": "only-m", "allowed_models": ["m"]}))
        .await;
    let answer = send(
        gw.client
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(&only_m),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let ids: Vec<&str> = answer.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m"], "a key limited to `m` is shown other models");
    gw.stop().await;
}

#[tokio::test]
async fn configured_max_wait_waits_for_a_cooling_backend() {
    let a = MockUpstream::start().await;
    let toml = format!("{FAST}[proxy]\nmax_wait_ms = 5000\n");
    let gw = Gateway::start_with(&toml, None).await;
    let id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    a.push(Reply::rate_limited(Some(2)));
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    assert_eq!(gw.backend(&id).await["status"], "cooling");
    let until = cooldown_until_ms(&gw, &id).await;

    // Cooling for 2 s, within the 5 s the config lets a request wait: it waits, then probes.
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(a.calls(), 2);
    let waiting = &gw.usage_records(2).await[0];
    let arrived = waiting["ts_ms"].as_i64().unwrap();
    assert!(
        arrived < until,
        "the request arrived while the backend cooled"
    );
    assert!(
        arrived + waiting["latency_ms"].as_i64().unwrap() + 5 >= until,
        "it was answered only after the cooldown ended: {waiting}"
    );
    assert_eq!(gw.backend(&id).await["status"], "healthy");
    gw.stop().await;
}

#[tokio::test]
async fn a_route_whose_only_backend_has_a_refused_key_answers_503() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    a.set_default(Reply::unauthorized());
    let first = chat(&gw).await;
    assert!(
        first.status == 502 || first.status == 503,
        "{}: {}",
        first.status,
        first.text
    );
    first.assert_openai_error();
    assert!(
        !first.text.contains("sk-a-secret"),
        "the upstream key must not leak"
    );
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    answer.assert_openai_error();
    assert!(answer.header("retry-after").is_none());
    assert!(answer.header("retry-after-ms").is_none());
    assert_eq!(a.calls(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn retry_after_is_capped_at_max_seconds() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start_with(RETRY_AFTER_TOML, None).await;
    let id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    a.push(Reply::rate_limited(Some(3600)));
    chat(&gw).await;
    let length = cooldown_length(&gw, &id, 1).await;
    assert!(
        length.contains(&10_000),
        "max_seconds = 10 caps it: {length:?}"
    );
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 429);
    assert!(
        answer.retry_after().is_some_and(|s| (1..=10).contains(&s)),
        "{:?}",
        answer.header("retry-after")
    );
    gw.stop().await;
}

#[tokio::test]
async fn primary_out_of_rpm_tokens_spills_over_to_the_fallback_pool() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    let gw = Gateway::start().await;
    add(
        &gw,
        "prim",
        &primary.openai_base_url(),
        "primary",
        json!({"rpm_limit": 2}),
    )
    .await;
    add(
        &gw,
        "fall",
        &fallback.openai_base_url(),
        "fallback",
        json!({}),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    assert_eq!((primary.calls(), fallback.calls()), (2, 3));
    gw.stop().await;
}

#[tokio::test]
async fn refused_key_state_survives_a_restart() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start().await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;
    a.set_default(Reply::unauthorized());
    chat_until_called(&gw, &a, 1, 2).await;
    assert_eq!(gw.backend(&a_id).await["status"], "error");

    let dir = gw.stop().await;
    let gw = Gateway::start_with("", Some(dir)).await;
    assert_eq!(gw.backend(&a_id).await["status"], "error", "after restart");
    for _ in 0..4 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    assert_eq!(a.calls(), 1, "still out of rotation after the restart");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_proxy_route_is_an_openai_shaped_404_with_a_request_id() {
    let gw = Gateway::start().await;
    let answer = post(&gw, "/v1/chat/completion", &chat_body(MODEL), &[]).await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    answer.assert_openai_error();
    assert!(
        answer.header("x-request-id").is_some(),
        "every answer carries x-request-id"
    );
    gw.stop().await;
}

#[tokio::test]
async fn retry_after_ms_and_http_date_hints_set_the_cooldown() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let gw = Gateway::start_with(SLOW, None).await;
    let a_id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    let b_id = add(&gw, "b", &b.openai_base_url(), "primary", json!({})).await;
    a.push(Reply::rate_limited(None).with_header("retry-after-ms", "15000"));
    let date = std::time::SystemTime::now() + Duration::from_secs(40);
    b.push(Reply::rate_limited(None).with_header("retry-after", httpdate::fmt_http_date(date)));
    let answer = chat(&gw).await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    let length = cooldown_length(&gw, &a_id, 1).await;
    assert!(length.contains(&15_000), "retry-after-ms 15000: {length:?}");
    // An HTTP date names the end itself (to the second).
    let date_ms = httpdate::parse_http_date(&httpdate::fmt_http_date(date))
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let until = cooldown_until_ms(&gw, &b_id).await;
    assert!(
        (i64::try_from(date_ms).unwrap() - until).abs() <= 20,
        "HTTP-date {date_ms}: cooling until {until}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn upstream_403_408_and_529_are_handled_like_their_classes() {
    let forbidden = MockUpstream::start().await;
    let slow = MockUpstream::start().await;
    let overloaded = MockUpstream::start().await;
    let good = MockUpstream::start().await;
    forbidden.set_default(Reply::error(403));
    slow.set_default(Reply::error(408));
    overloaded.set_default(Reply::overloaded());
    let gw = Gateway::start().await;
    let f = add(&gw, "f", &forbidden.openai_base_url(), "primary", json!({})).await;
    let s = add(&gw, "s", &slow.openai_base_url(), "primary", json!({})).await;
    let o = add(
        &gw,
        "o",
        &overloaded.openai_base_url(),
        "primary",
        json!({}),
    )
    .await;
    add(&gw, "g", &good.openai_base_url(), "primary", json!({})).await;
    for _ in 0..4 {
        let answer = chat(&gw).await;
        assert_eq!(answer.status, 200, "retried: {}", answer.text);
    }
    assert_eq!(
        (forbidden.calls(), slow.calls(), overloaded.calls()),
        (1, 1, 1)
    );
    assert_eq!(gw.backend(&f).await["status"], "error", "403: key refused");
    assert_eq!(
        gw.backend(&s).await["status"],
        "cooling",
        "408: error cooldown"
    );
    assert_eq!(
        gw.backend(&o).await["status"],
        "cooling",
        "529: error cooldown"
    );
    gw.stop().await;
}

#[tokio::test]
async fn admin_edits_keep_a_backends_cooldown_and_token_bucket() {
    let limited = MockUpstream::start().await;
    let cooling = MockUpstream::start().await;
    let good = MockUpstream::start().await;
    let gw = Gateway::start().await;
    let l = add(
        &gw,
        "limited",
        &limited.openai_base_url(),
        "primary",
        json!({"rpm_limit": 1}),
    )
    .await;
    let c = add(
        &gw,
        "cooling",
        &cooling.openai_base_url(),
        "primary",
        json!({}),
    )
    .await;
    add(&gw, "good", &good.openai_base_url(), "primary", json!({})).await;
    cooling.push(Reply::rate_limited(Some(60)));
    for _ in 0..3 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    assert_eq!((limited.calls(), cooling.calls()), (1, 1));

    patch_backend(&gw, &l, json!({"label": "renamed", "weight": 2})).await;
    patch_backend(&gw, &c, json!({"label": "renamed", "weight": 2})).await;
    assert_eq!(
        gw.backend(&c).await["status"],
        "cooling",
        "edit kept the cooldown"
    );
    for _ in 0..6 {
        assert_eq!(chat(&gw).await.status, 200);
    }
    assert_eq!(
        (limited.calls(), cooling.calls()),
        (1, 1),
        "an edit must not refill the bucket or end the cooldown"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_still_gets_one_cancelled_usage_record() {
    let a = MockUpstream::start().await;
    a.set_default(Reply::Hang);
    let gw = Gateway::start().await;
    let id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    chat_and_leave(&gw, &a, 1).await;

    let records = gw.usage_records_within(1, Duration::from_secs(3)).await;
    assert_eq!(
        records.len(),
        1,
        "one usage record per client request, even when the client leaves: {records:?}"
    );
    assert_eq!(records[0]["outcome"], "cancelled");
    assert_eq!(records[0]["status"], 499);
    assert_eq!(gw.backend(&id).await["in_flight"], 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_probe_abandoned_by_its_client_does_not_block_the_backend() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start_with(FAST, None).await;
    let id = add(&gw, "a", &a.openai_base_url(), "primary", json!({})).await;
    a.push(Reply::rate_limited(None));
    assert_eq!(chat(&gw).await.status, 429);
    wait_cooldown_over(&gw, &id).await;

    // The probe's client leaves while the upstream is still thinking.
    a.push(Reply::Hang);
    chat_and_leave(&gw, &a, 2).await;
    assert_eq!(a.calls(), 2, "that request was the probe");

    // Another request may probe, as soon as the gateway noticed the client left.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = chat(&gw).await;
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backend stays blocked after its probe was abandoned: {}",
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = gw.backend(&id).await;
    assert_eq!(view["status"], "healthy", "{view}");
    assert_eq!(view["in_flight"], 0, "{view}");
    gw.stop().await;
}

/// `proxy.upstream_idle_timeout_ms`: an upstream connection idle for longer is not reused (an
/// upstream closing its own idle connections on its clock, as uvicorn does after 5 s, would
/// race the next request on it); within it, it is.
#[tokio::test]
async fn idle_upstream_connections_are_not_reused_past_the_idle_timeout() {
    let upstream = MockUpstream::start().await;
    // One per-core runtime, so one upstream pool whichever connection a request comes on.
    let gw = Gateway::start_with(
        "[server]\nper_core_threads = 1\n[proxy]\nupstream_idle_timeout_ms = 1000\n",
        None,
    )
    .await;
    gw.add_openai_backend("one", &upstream.openai_base_url(), "primary", &[MODEL])
        .await;
    for _ in 0..2 {
        assert_eq!(gw.chat(MODEL).await.0, 200);
    }
    assert_eq!(upstream.connections(), 1, "reused within the timeout");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.chat(MODEL).await.0, 200);
    assert_eq!(upstream.connections(), 2, "a new connection after it");
    gw.stop().await;
}
