//! Issue #11 part B — prices, cost and budgets end to end: a real gateway (router, SQLite file,
//! writers) in front of mock upstreams on 127.0.0.1 that report usage with cached and
//! cache-write tokens. The cost of each record is checked against the price table by hand; the
//! prices API round trip; a key's budget refusal in both wire formats; 200 concurrent requests
//! against a small budget (the upstream calls counted); spend kept across a restart; a backend
//! skipped at its monthly cap; 200 concurrent requests against small backend caps (reserved
//! per attempt: the rest go to the fallback or get the 429); a failed attempt gives its
//! reservation back, and a stream the client left early still lands its cost on the cap.
#![expect(clippy::unwrap_used, reason = "test")]

mod common;

use common::{send, Gateway};
use mock_upstream::{MockUpstream, ReportedUsage};
use poolgate::token_count::{estimate_request, EstimateSettings, TokenCounter, WireFormat};
use reqwest::Method;
use serde_json::{json, Value};

/// Prices (USD per million tokens) the tests bill with, from the config file.
const PRICES: &str = r#"
[prices."up-gpt"]
input_per_mtok = 2.5
output_per_mtok = 10
cached_input_per_mtok = 1.25

[prices."claude-up"]
input_per_mtok = 3
output_per_mtok = 15
cached_input_per_mtok = "0.3"
cache_write_per_mtok = 3.75
"#;

async fn anthropic_backend(gateway: &Gateway, upstream: &MockUpstream, model: &str) -> Value {
    gateway
        .add_backend(json!({
            "name": "claude",
            "api": "anthropic",
            "api_base_url": upstream.base_url(),
            "api_key": "sk-ant-claude-key-0001",
            "model_mappings": { model: { "upstream_model": "claude-up" } },
        }))
        .await
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 10,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// The record of `request_id`, waiting for the writer.
async fn record_of(gateway: &Gateway, request_id: &str) -> Value {
    for _ in 0..200 {
        let records = gateway.usage_records(1).await;
        if let Some(record) = records.iter().find(|r| r["request_id"] == request_id) {
            return record.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no usage record for {request_id}");
}

fn request_id(answer: &common::Answer) -> String {
    answer.header("x-request-id").unwrap().to_owned()
}

/// A gateway with the test prices, an OpenAI backend serving `gpt` and an Anthropic one serving
/// `claude`.
async fn gateway_with_gpt_and_claude() -> (Gateway, MockUpstream, MockUpstream) {
    let openai = MockUpstream::start().await;
    let anthropic = MockUpstream::start().await;
    let gateway = Gateway::start_with(PRICES, None).await;
    gateway
        .add_openai_backend("gpt", &openai.openai_base_url(), "primary", &["gpt"])
        .await;
    anthropic_backend(&gateway, &anthropic, "claude").await;
    (gateway, openai, anthropic)
}

#[tokio::test]
async fn cost_of_records_with_cached_tokens_matches_the_table_by_hand() {
    let (gateway, openai, anthropic) = gateway_with_gpt_and_claude().await;
    // OpenAI: 1 000 prompt tokens of which 400 cached, 50 completion tokens.
    openai.set_usage(Some(ReportedUsage {
        prompt_tokens: 1_000,
        cached_tokens: 400,
        completion_tokens: 50,
        cache_write_tokens: 0,
    }));
    // Anthropic: 12 050 input tokens — 50 uncached, 10 000 read, 2 000 written — and 400 out.
    anthropic.set_usage(Some(ReportedUsage {
        prompt_tokens: 12_050,
        cached_tokens: 10_000,
        completion_tokens: 400,
        cache_write_tokens: 2_000,
    }));

    // By hand, in nano-dollars (= USD per Mtok × 1000 per token):
    //   OpenAI: 600 × 2 500 + 400 × 1 250 + 50 × 10 000 = 2 500 000 → $0.0025
    //   Anthropic: 50 × 3 000 + 10 000 × 300 + 2 000 × 3 750 + 400 × 15 000 = 16 650 000
    //              → $0.01665
    let cases = [
        (
            "/v1/chat/completions",
            "gpt",
            false,
            0.0025,
            1_000,
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            "gpt",
            true,
            0.0025,
            1_000,
            400,
            None,
        ),
        (
            "/v1/messages",
            "claude",
            false,
            0.01665,
            12_050,
            10_000,
            Some(2_000),
        ),
        (
            "/v1/messages",
            "claude",
            true,
            0.01665,
            12_050,
            10_000,
            Some(2_000),
        ),
        // An OpenAI client served by the Anthropic backend (translated): the same figures.
        (
            "/v1/chat/completions",
            "claude",
            true,
            0.01665,
            12_050,
            10_000,
            Some(2_000),
        ),
    ];
    let mut ids = Vec::new();
    for (path, model, stream, cost, prompt, cached, written) in cases {
        let mut body = chat_body(model, stream);
        if stream && path == "/v1/chat/completions" {
            body["stream_options"] = json!({"include_usage": true});
        }
        let answer = send(gateway.proxy(path).json(&body)).await;
        assert_eq!(answer.status, 200, "{path} {model}: {answer}");
        let id = request_id(&answer);
        let record = record_of(&gateway, &id).await;
        assert_eq!(
            record["cost_usd"],
            json!(cost),
            "{path} {model} {stream}: {record}"
        );
        assert_eq!(record["prompt_tokens"], json!(prompt), "{record}");
        assert_eq!(record["cached_tokens"], json!(cached), "{record}");
        assert_eq!(
            record["cache_write_tokens"],
            written.map_or(Value::Null, |w: u64| json!(w)),
            "{record}"
        );
        assert_eq!(record["tokens_estimated"], false);
        ids.push(id);
    }

    // The stats sum the exact integers: 2 × 0.0025 + 3 × 0.01665 = 0.05495.
    let stats: Value = gateway.admin_get("/stats").await;
    assert_eq!(
        stats["total"]["cost_usd"],
        json!(0.05495),
        "{}",
        stats["total"]
    );
    assert_eq!(stats["by_key"]["admin"]["cost_usd"], json!(0.05495));
    assert_eq!(stats["by_model"]["gpt"]["cost_usd"], json!(0.005));
    let bucketed: f64 = stats["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cost_usd"].as_f64().unwrap())
        .sum();
    assert!((bucketed - 0.05495).abs() < 1e-12, "{bucketed}");
    assert!(stats["series_by_key"]["admin"].is_array());

    // A model without a price: cost null, tokens still recorded.
    let unpriced = MockUpstream::start().await;
    gateway
        .add_openai_backend("free", &unpriced.openai_base_url(), "primary", &["free"])
        .await;
    let answer = send(
        gateway
            .proxy("/v1/chat/completions")
            .json(&chat_body("free", false)),
    )
    .await;
    assert_eq!(answer.status, 200);
    let record = record_of(&gateway, &request_id(&answer)).await;
    assert_eq!(record["cost_usd"], Value::Null, "{record}");
    assert_eq!(record["prompt_tokens"], json!(10));
}

#[tokio::test]
async fn prices_api_round_trip_refusals_and_fallback() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start_with(PRICES, None).await;
    gateway
        .add_openai_backend("gpt", &upstream.openai_base_url(), "primary", &["gpt"])
        .await;
    let prices = || gateway.admin_get::<Value>("/prices");
    let row = |table: &Value, model: &str| {
        table["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["model"] == model)
            .cloned()
    };
    let table = prices().await;
    assert_eq!(table["taken"], "2026-11-29");
    let default = row(&table, "gpt-4o").expect("gpt-4o has a default price");
    assert_eq!(default["source"], "default");
    let configured = row(&table, "up-gpt").unwrap();
    assert_eq!(
        configured,
        json!({"model": "up-gpt", "input_per_mtok": 2.5, "output_per_mtok": 10.0,
               "cached_input_per_mtok": 1.25, "cache_write_per_mtok": null, "source": "config"})
    );

    // Refusals name the field.
    for (body, param) in [
        (
            json!({"input_per_mtok": "0.0025", "output_per_mtok": 1}),
            "input_per_mtok",
        ),
        (
            json!({"input_per_mtok": 1, "output_per_mtok": -1}),
            "output_per_mtok",
        ),
        (
            json!({"input_per_mtok": 1, "output_per_mtok": 1, "cached_input_per_mtok": "abc"}),
            "cached_input_per_mtok",
        ),
    ] {
        let answer = send(gateway.admin(Method::PUT, "/prices/up-gpt").json(&body)).await;
        assert_eq!(answer.status, 400, "{body}: {answer}");
        assert_eq!(answer.json["error"]["param"], param, "{answer}");
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(param),
            "{answer}"
        );
    }
    let answer = send(
        gateway
            .admin(Method::PUT, "/prices/up-gpt")
            .json(&json!({"input_per_mtok": 1})),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(answer.text.contains("output_per_mtok"), "{answer}");
    let answer = send(
        gateway
            .admin(Method::PUT, "/prices/up-gpt")
            .json(&json!({"input_per_mtok": 1, "output_per_mtok": 1, "bogus": 1})),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    assert!(answer.text.contains("bogus"), "{answer}");

    // An API price over the config's: exact decimals back, and the next request costs it.
    let answer = send(gateway.admin(Method::PUT, "/prices/up-gpt").json(
        &json!({"input_per_mtok": "0.001", "output_per_mtok": 1000000, "cached_input_per_mtok": 0}),
    ))
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(
        answer.json,
        json!({"model": "up-gpt", "input_per_mtok": 0.001, "output_per_mtok": 1000000.0,
               "cached_input_per_mtok": 0.0, "cache_write_per_mtok": null, "source": "api"})
    );
    assert_eq!(row(&prices().await, "up-gpt").unwrap()["source"], "api");
    let answer = send(
        gateway
            .proxy("/v1/chat/completions")
            .json(&chat_body("gpt", false)),
    )
    .await;
    assert_eq!(answer.status, 200);
    // The mock's 10 prompt tokens × 1 + its 3 completion tokens × 1 000 000 000 nano-dollars.
    let record = record_of(&gateway, &request_id(&answer)).await;
    assert_eq!(record["completion_tokens"], 3);
    assert_eq!(record["cost_usd"], json!(3.00000001), "{record}");

    // DELETE: the config's price shows through again; a second DELETE is a 404.
    let answer = send(gateway.admin(Method::DELETE, "/prices/up-gpt")).await;
    assert_eq!(answer.status, 204, "{answer}");
    assert_eq!(row(&prices().await, "up-gpt").unwrap(), configured);
    let answer = send(gateway.admin(Method::DELETE, "/prices/up-gpt")).await;
    assert_eq!(answer.status, 404, "{answer}");
    // Overriding a default and deleting it brings the default back.
    let answer = send(
        gateway
            .admin(Method::PUT, "/prices/gpt-4o")
            .json(&json!({"input_per_mtok": 9, "output_per_mtok": 9})),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        send(gateway.admin(Method::DELETE, "/prices/gpt-4o"))
            .await
            .status,
        204
    );
    assert_eq!(row(&prices().await, "gpt-4o").unwrap(), default);
    // A new model id.
    let answer = send(
        gateway
            .admin(Method::PUT, "/prices/openai%2Fmy-finetune")
            .json(&json!({"input_per_mtok": 1, "output_per_mtok": 2})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["model"], "openai/my-finetune");

    // The OpenAPI document lists the routes.
    let doc: Value = gateway
        .client
        .get(format!("{}/admin/api/openapi.json", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/admin/api/prices"]["get"].is_object());
    assert!(doc["paths"]["/admin/api/prices/{model}"]["put"].is_object());
    assert!(doc["paths"]["/admin/api/prices/{model}"]["delete"].is_object());
    assert!(doc["paths"]["/admin/api/keys/{id}"]["patch"].is_object());
}

#[tokio::test]
async fn a_spent_budget_is_a_429_the_sdks_do_not_retry_in_both_formats() {
    let (gateway, openai, anthropic) = gateway_with_gpt_and_claude().await;
    openai.set_usage(Some(ReportedUsage {
        prompt_tokens: 10,
        completion_tokens: 2,
        ..ReportedUsage::default()
    }));
    let (id, key) = gateway
        .create_key(json!({"name": "budgeted", "budget_daily_usd": "0.0002"}))
        .await;

    // The first request fits (estimate: a few prompt tokens at $2.50 + 10 output at $10, about
    // 120 000 nano-dollars); it costs 10 × 2 500 + 2 × 10 000 = 45 000 of the 200 000.
    let chat = |body: Value| {
        gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&body)
    };
    assert_eq!(send(chat(chat_body("gpt", false))).await.status, 200);
    // An estimate past what is left: refused before any upstream call.
    let mut greedy = chat_body("gpt", false);
    greedy["max_tokens"] = json!(100_000);
    let answer = send(chat(greedy)).await;
    assert_eq!(answer.status, 429, "{answer}");
    assert!(
        answer.text.contains("cannot cover this request"),
        "{answer}"
    );
    assert_eq!(openai.calls(), 1);
    // A second request fits (45 000 + estimate ≤ 200 000), a third does not (90 000 + estimate).
    assert_eq!(send(chat(chat_body("gpt", false))).await.status, 200);
    let answer = send(chat(chat_body("gpt", false))).await;
    let message = answer.assert_budget_exceeded();
    let tomorrow = (chrono::Utc::now().date_naive() + chrono::Days::new(1)).format("%Y-%m-%d");
    assert!(
        message.starts_with("this key's daily budget of $0.0002")
            && message.ends_with(&format!("it resets at {tomorrow}T00:00:00Z")),
        "{message}"
    );
    assert_eq!(
        openai.calls(),
        2,
        "refused requests never reach an upstream"
    );

    // Anthropic's shape, same status and header.
    let answer = send(
        gateway
            .client
            .post(format!("{}/v1/messages", gateway.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&chat_body("claude", false)),
    )
    .await;
    assert!(answer
        .assert_anthropic_rate_limited()
        .contains("daily budget"));
    assert_eq!(answer.header("x-should-retry"), Some("false"));
    assert_eq!(anthropic.calls(), 0);
    // Counting tokens costs nothing upstream: a spent budget does not refuse it.
    let counted = send(
        gateway
            .client
            .post(format!("{}/v1/messages/count_tokens", gateway.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&chat_body("claude", false)),
    )
    .await;
    assert_eq!(counted.status, 200, "{counted}");
    assert_eq!(anthropic.calls(), 1);

    // The key shows its spend; raising the budget lets it through again at once.
    let view = gateway.key(&id).await;
    assert_eq!(view["budget_daily_usd"], json!(0.0002));
    assert_eq!(view["budget_monthly_usd"], Value::Null);
    assert_eq!(view["spend"]["daily"]["spent_usd"], json!(0.00009));
    assert_eq!(view["spend"]["daily"]["reserved_usd"], json!(0.0));
    assert_eq!(view["spend"]["daily"]["limit_usd"], json!(0.0002));
    assert_eq!(
        view["spend"]["daily"]["resets_at"],
        json!(format!("{tomorrow}T00:00:00Z"))
    );
    assert_eq!(view["spend"]["total"]["resets_at"], Value::Null);
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/keys/{id}"))
            .json(&json!({"budget_daily_usd": null, "budget_monthly_usd": 1})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["budget_daily_usd"], Value::Null);
    assert_eq!(answer.json["budget_monthly_usd"], json!(1.0));
    assert_eq!(answer.json["spend"]["monthly"]["spent_usd"], json!(0.00009));
    assert_eq!(send(chat(chat_body("gpt", false))).await.status, 200);
    // Bad budgets name the field.
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/keys/{id}"))
            .json(&json!({"budget_total_usd": "1.0000000001"})),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    assert_eq!(answer.json["error"]["param"], "budget_total_usd");
    let answer = send(
        gateway
            .admin(Method::PATCH, "/keys/pgk-none")
            .json(&json!({"budget_total_usd": 1})),
    )
    .await;
    assert_eq!(answer.status, 404, "{answer}");
    // Removing every budget: the key has no ledger any more.
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/keys/{id}"))
            .json(&json!({"budget_monthly_usd": null})),
    )
    .await;
    assert_eq!(answer.json["spend"], Value::Null, "{answer}");
}

#[tokio::test]
async fn concurrent_requests_overrun_a_budget_by_at_most_the_documented_bound() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start_with(
        "[prices.\"up-gpt\"]\ninput_per_mtok = 1\noutput_per_mtok = 1\n",
        None,
    )
    .await;
    gateway
        .add_openai_backend("gpt", &upstream.openai_base_url(), "primary", &["gpt"])
        .await;
    // Every answer reports 10 prompt and 12 completion tokens: more than the estimate (the
    // request's prompt counted by poolgate + its `max_tokens` of 10), so each request in flight
    // may overrun its reservation.
    upstream.set_usage(Some(ReportedUsage {
        prompt_tokens: 10,
        completion_tokens: 12,
        cached_tokens: 0,
        cache_write_tokens: 0,
    }));
    let body = chat_body("gpt", false);
    let estimate = estimate_request(
        WireFormat::ChatCompletions,
        body.to_string().as_bytes(),
        TokenCounter::for_model("up-gpt"),
        &EstimateSettings::default(),
    );
    // $1 / Mtok = 1 000 nano-dollars per token.
    let estimate_cost = (estimate.prompt.tokens + estimate.output_reserve) * 1_000;
    let actual_cost = 22 * 1_000;
    assert!(
        actual_cost > estimate_cost,
        "the test needs an overrun to bound"
    );
    let limit: u64 = 100_000; // $0.0001
    let (id, key) = gateway
        .create_key(json!({"name": "small", "budget_total_usd": "0.0001"}))
        .await;

    let started = std::time::Instant::now();
    let requests = (0..200).map(|_| {
        let request = gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&body);
        async move { send(request).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers
        .iter()
        .filter(|a| a.status == 429 && a.json["error"]["code"] == "budget_exceeded")
        .count();
    assert_eq!(
        ok + refused,
        200,
        "every request is served or refused for the budget"
    );
    let calls = upstream.calls();
    assert_eq!(calls, ok, "only admitted requests reach the upstream");
    assert!(ok >= 1);
    // Admission never lets reservations pass the limit: admitted × estimate ≤ limit.
    assert!(
        (calls as u64) * estimate_cost <= limit,
        "{calls} admitted × {estimate_cost} > {limit}"
    );
    // The documented bound: spend ≤ limit + Σ over requests in flight of (actual − estimate).
    let records = gateway.usage_records(200).await;
    let spent: u64 = records
        .iter()
        .filter(|r| r["client_key_id"] == id.as_str())
        .filter_map(|r| r["cost_usd"].as_f64())
        .map(|usd| (usd * 1e9).round() as u64)
        .sum();
    assert_eq!(spent, calls as u64 * actual_cost);
    assert!(
        spent <= limit + (calls as u64) * (actual_cost - estimate_cost),
        "spent {spent} past the bound ({calls} calls)"
    );
    eprintln!(
        "200 concurrent requests against $0.0001: {ok} admitted, spent {spent} nano-dollars, \
         in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn spend_survives_a_restart() {
    let upstream = MockUpstream::start().await;
    let toml = "[prices.\"up-gpt\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n";
    let gateway = Gateway::start_with(toml, None).await;
    gateway
        .add_openai_backend("gpt", &upstream.openai_base_url(), "primary", &["gpt"])
        .await;
    upstream.set_usage(Some(ReportedUsage {
        prompt_tokens: 10,
        completion_tokens: 2,
        ..ReportedUsage::default()
    }));
    // 12 tokens × $1 000 / Mtok = $0.012 per request; a monthly budget of $0.02 fits two
    // estimates of ~$0.01 only while nothing is spent.
    let (id, key) = gateway
        .create_key(json!({"name": "persisted", "budget_monthly_usd": 0.02}))
        .await;
    let chat = |gateway: &Gateway| {
        gateway
            .client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt", "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]}))
    };
    assert_eq!(send(chat(&gateway)).await.status, 200);
    gateway.usage_records(1).await;
    let dir = gateway.stop().await;

    let gateway = Gateway::start_with(toml, Some(dir)).await;
    let view = gateway.key(&id).await;
    assert_eq!(
        view["spend"]["monthly"]["spent_usd"],
        json!(0.012),
        "{view}"
    );
    assert_eq!(view["spend"]["daily"]["spent_usd"], json!(0.012));
    assert_eq!(view["spend"]["total"]["spent_usd"], json!(0.012));
    // $0.012 spent + an estimate of ~$0.01 is past $0.02: refused, as before the restart.
    send(chat(&gateway)).await.assert_budget_exceeded();
    assert_eq!(upstream.calls(), 1);
}

/// A budget or cap set right after requests counts them, though their usage records still
/// wait in the writer's queue (here for a minute): the new ledger has the queue stored first.
#[tokio::test]
async fn a_budget_or_cap_set_right_after_requests_counts_them() {
    let upstream = MockUpstream::start().await;
    let toml = "[usage]\nflush_interval_ms = 60000\n\n\
                [prices.\"up-gpt\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n";
    let gateway = Gateway::start_with(toml, None).await;
    let backend = gateway
        .add_openai_backend("gpt", &upstream.openai_base_url(), "primary", &["gpt"])
        .await;
    let backend = backend["id"].as_str().unwrap().to_owned();
    report_usage(&upstream, 10, 2);
    let (id, key) = gateway.create_key(json!({"name": "unbudgeted"})).await;
    for _ in 0..3 {
        let answer = send(
            gateway
                .client
                .post(format!("{}/v1/chat/completions", gateway.url))
                .bearer_auth(&key)
                .json(&json!({"model": "gpt", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
        assert_eq!(answer.status, 200, "{answer}");
    }
    // 3 × 12 tokens × $1 000 / Mtok.
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/keys/{id}"))
            .json(&json!({"budget_total_usd": 1})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["spend"]["total"]["spent_usd"], json!(0.036));
    set_cap(&gateway, &backend, 1_000_000_000).await;
    assert_eq!(settled_spend(&gateway, &backend).await, json!(0.036));
}

/// The request's estimate (tokens, and its cost in nano-dollars at `nanos_per_token` for input
/// and output alike), as poolgate makes it for `upstream_model`.
fn estimate_of(body: &Value, upstream_model: &str, nanos_per_token: u64) -> (u64, u64, u64) {
    let estimate = estimate_request(
        WireFormat::ChatCompletions,
        body.to_string().as_bytes(),
        TokenCounter::for_model(upstream_model),
        &EstimateSettings::default(),
    );
    (
        estimate.prompt.tokens,
        estimate.output_reserve,
        estimate.total() * nanos_per_token,
    )
}

/// Nano-dollars as the decimal string the admin API takes.
fn usd(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// Nano-dollars as the admin API shows them (a USD number).
fn usd_number(nanos: u64) -> Value {
    json!(usd(nanos).parse::<f64>().unwrap())
}

/// The pool `spare` (priority 10), the OpenAI backend `capped` in `primary` and `spare` in it,
/// both serving `gpt` (upstream `up-gpt`).
async fn add_capped_and_spare(gateway: &Gateway, capped: &MockUpstream, spare: &MockUpstream) {
    gateway.add_pool("spare", 10).await;
    gateway
        .add_openai_backend("capped", &capped.openai_base_url(), "primary", &["gpt"])
        .await;
    gateway
        .add_openai_backend("spare", &spare.openai_base_url(), "spare", &["gpt"])
        .await;
}

/// `upstream` reports exactly this usage on every answer.
fn report_usage(upstream: &MockUpstream, prompt: u64, output: u64) {
    upstream.set_usage(Some(ReportedUsage {
        prompt_tokens: prompt,
        completion_tokens: output,
        ..ReportedUsage::default()
    }));
}

async fn set_cap(gateway: &Gateway, id: &str, nanos: u64) {
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/backends/{id}"))
            .json(&json!({"monthly_spend_cap_usd": usd(nanos)})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
}

/// A backend's monthly `(spent, reserved)` in the admin view, once nothing is reserved (a
/// settle lands just after the answer).
async fn settled_spend(gateway: &Gateway, id: &str) -> Value {
    for _ in 0..200 {
        let view = gateway.backend(id).await;
        if view["spend"]["monthly"]["reserved_usd"] == json!(0.0) {
            return view["spend"]["monthly"]["spent_usd"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("backend {id} still holds a reservation");
}

#[tokio::test]
async fn a_backend_at_its_monthly_cap_is_skipped() {
    let capped = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    let gateway = Gateway::start_with(
        "[prices.\"up-gpt\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n",
        None,
    )
    .await;
    let created = gateway.add_pool("spare", 10).await;
    assert_eq!(created["name"], "spare");
    let first = gateway
        .add_openai_backend("capped", &capped.openai_base_url(), "primary", &["gpt"])
        .await;
    gateway
        .add_openai_backend("spare", &spare.openai_base_url(), "spare", &["gpt"])
        .await;
    let id = first["id"].as_str().unwrap();
    for upstream in [&capped, &spare] {
        upstream.set_usage(Some(ReportedUsage {
            prompt_tokens: 10,
            completion_tokens: 2,
            ..ReportedUsage::default()
        }));
    }
    // One request costs 12 tokens × $0.001 = $0.012; its estimate (the prompt as poolgate
    // counts it + `max_tokens` of 1) must fit the cap, which the request then spends.
    let body = json!({"model": "gpt", "max_tokens": 1,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (_, _, estimate) = estimate_of(&body, "up-gpt", 1_000_000);
    assert!(estimate <= 12_000_000, "the test needs the estimate to fit");
    let cap = estimate.max(10_000_000);
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/backends/{id}"))
            .json(&json!({"monthly_spend_cap_usd": usd(cap)})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["monthly_spend_cap_usd"], usd_number(cap));
    assert_eq!(
        answer.json["spend"]["monthly"]["limit_usd"],
        usd_number(cap)
    );
    for _ in 0..3 {
        let answer = send(gateway.proxy("/v1/chat/completions").json(&body)).await;
        assert_eq!(answer.status, 200, "{answer}");
    }
    assert_eq!((capped.calls(), spare.calls()), (1, 2));
    let view = gateway.backend(id).await;
    assert_eq!(
        view["spend"]["monthly"]["spent_usd"],
        json!(0.012),
        "{view}"
    );
    // With the spare disabled, every candidate is capped: 429 `budget_exceeded`, not retried,
    // saying when the cap resets (cluster mode answers the same).
    let spare_id = gateway.backend_id("spare").await;
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/backends/{spare_id}"))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    let answer = send(
        gateway
            .proxy("/v1/chat/completions")
            .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    let message = answer.assert_budget_exceeded();
    assert!(
        message.starts_with(
            "every backend for this model has used up its monthly spend cap ($0.012 spent of $0.0"
        ) && message.contains("); the first resets at "),
        "{message}"
    );
    assert_eq!((capped.calls(), spare.calls()), (1, 2));
    // Unknown fields are still refused next to the cap; removing the cap routes to it again.
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/backends/{id}"))
            .json(&json!({"monthly_spend_cap_usd": null, "bogus": 1})),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer}");
    let answer = send(
        gateway
            .admin(Method::PATCH, &format!("/backends/{id}"))
            .json(&json!({"monthly_spend_cap_usd": null})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.json["spend"], Value::Null);
    let (status, _) = gateway.chat("gpt").await;
    assert_eq!(status, 200);
    assert_eq!(capped.calls(), 2);
}

/// A backend's monthly cap is reserved per attempt: of 200 simultaneous requests against two
/// capped backends, exactly as many as the caps hold whole estimates are served by them (the
/// mocks report exactly the estimated usage, so the documented bound — the in-flight requests'
/// cost beyond their estimates — is zero and the spend never passes the cap); the rest go to
/// the fallback pool, or, where there is none, get the 429 `budget_exceeded` not to retry.
#[tokio::test]
async fn concurrent_requests_never_overrun_a_backend_cap_reserved_per_attempt() {
    let capped = MockUpstream::start().await;
    let solo = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    let gateway = Gateway::start_with(
        "[prices.\"up-gpt\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n\
         [prices.\"up-solo\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n",
        None,
    )
    .await;
    add_capped_and_spare(&gateway, &capped, &spare).await;
    gateway
        .add_openai_backend("solo", &solo.openai_base_url(), "primary", &["solo"])
        .await;
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 5,
               "messages": [{"role": "user", "content": "hi"}]})
    };
    let mut estimates = Vec::new();
    for (upstream, model) in [(&capped, "gpt"), (&solo, "solo"), (&spare, "gpt")] {
        let (prompt, output, cost) = estimate_of(&body(model), &format!("up-{model}"), 1_000_000);
        report_usage(upstream, prompt, output);
        estimates.push(cost);
    }
    let (gpt_estimate, solo_estimate) = (estimates[0], estimates[1]);
    // Room for 3 and for 2 whole estimates.
    let capped_id = gateway.backend_id("capped").await;
    let solo_id = gateway.backend_id("solo").await;
    set_cap(&gateway, &capped_id, 3 * gpt_estimate + gpt_estimate / 2).await;
    set_cap(&gateway, &solo_id, 2 * solo_estimate + solo_estimate / 2).await;

    let started = std::time::Instant::now();
    let requests = (0..200).map(|n| {
        let model = if n % 2 == 0 { "gpt" } else { "solo" };
        let request = gateway.proxy("/v1/chat/completions").json(&body(model));
        async move { (model, send(request).await) }
    });
    let answers = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    for (model, answer) in &answers {
        if *model == "gpt" {
            assert_eq!(answer.status, 200, "{answer}");
        }
    }
    let solo_served = answers
        .iter()
        .filter(|(model, answer)| *model == "solo" && answer.status == 200)
        .count();
    for (_, answer) in answers
        .iter()
        .filter(|(model, answer)| *model == "solo" && answer.status != 200)
    {
        let message = answer.assert_budget_exceeded();
        assert!(
            message.starts_with("every backend for this model is at its monthly spend cap"),
            "{message}"
        );
    }
    assert_eq!(
        (capped.calls(), spare.calls()),
        (3, 97),
        "the capped backend serves exactly what its cap holds, the fallback the rest"
    );
    assert_eq!((solo.calls(), solo_served), (2, 2));
    // Zero overrun: each cap spent exactly its admitted estimates, nothing left reserved.
    assert_eq!(
        settled_spend(&gateway, &capped_id).await,
        usd_number(3 * gpt_estimate)
    );
    assert_eq!(
        settled_spend(&gateway, &solo_id).await,
        usd_number(2 * solo_estimate)
    );
    eprintln!("200 concurrent requests against backend caps of 3 and 2 estimates: {elapsed:?}");
}

/// A failed attempt gives its reservation back (the cap is not eaten by failures), and the
/// attempt that serves carries its hold to the record: a stream the client leaves before the
/// usage frame still lands its cost on the cap (read in the grace after it left).
#[tokio::test]
async fn a_failed_attempt_releases_its_backend_cap_reservation() {
    let capped = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    let gateway = Gateway::start_with(
        "[proxy]\nusage_grace_ms = 5000\n\
         [prices.\"up-gpt\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n",
        None,
    )
    .await;
    add_capped_and_spare(&gateway, &capped, &spare).await;
    let body = json!({"model": "gpt", "stream": true, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (prompt, output, estimate) = estimate_of(&body, "up-gpt", 1_000_000);
    for upstream in [&capped, &spare] {
        report_usage(upstream, prompt, output);
    }
    let id = gateway.backend_id("capped").await;
    // Room for one estimate and a half.
    set_cap(&gateway, &id, estimate + estimate / 2).await;
    let stream = |gateway: &Gateway| gateway.proxy("/v1/chat/completions").json(&body);

    // The capped backend fails: the request fails over to the spare, and the cap holds nothing.
    capped.push(mock_upstream::Reply::Error {
        status: 500,
        message: "boom".into(),
        headers: Vec::new(),
    });
    let answer = send(stream(&gateway)).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!((capped.calls(), spare.calls()), (1, 1));
    assert_eq!(settled_spend(&gateway, &id).await, usd_number(0));

    // Back from its cooldown, the capped backend serves a stream whose client hangs up after
    // the content, before the usage frame (sent 300 ms later): the record is billed from the
    // frame read in the grace, and the cap gets exactly that cost.
    let answer = send(gateway.admin(Method::POST, &format!("/backends/{id}/reset-cooldown"))).await;
    assert!(answer.status < 300, "{answer}");
    capped.push(mock_upstream::Reply::Stream(mock_upstream::StreamSpec {
        chunks: 3,
        tail_gap_ms: 300,
        content: Some("alpha beta omega".into()),
        ..mock_upstream::StreamSpec::default()
    }));
    let response = stream(&gateway).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut chunks = futures_util::StreamExt::fuse(response.bytes_stream());
    let mut seen = String::new();
    while !seen.contains("omega") {
        match futures_util::StreamExt::next(&mut chunks).await {
            Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the stream ended early: {other:?} after {seen}"),
        }
    }
    drop(chunks);
    let record = record_of(&gateway, &request_id).await;
    assert_eq!(record["backend_id"], id.as_str(), "{record}");
    assert_eq!(record["cost_usd"], usd_number(estimate), "{record}");
    assert_eq!(capped.calls(), 2);
    assert_eq!(settled_spend(&gateway, &id).await, usd_number(estimate));

    // One estimate spent, half of one left: the next request cannot be reserved there.
    let answer = send(stream(&gateway)).await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!((capped.calls(), spare.calls()), (2, 2));
}
